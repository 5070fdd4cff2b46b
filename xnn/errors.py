"""The one exception type for mistakes a user can fix.

Anything raised as :class:`XnnError` is printed by the CLI as a single line
(``xnn: error: ...``) with a non-zero exit and no traceback. Every other
exception is a bug in xnn and keeps its traceback.
"""
import argparse


class XnnError(Exception):
    """A user error: wrong path, bad config value, weights that do not fit..."""


class DeviceMismatchError(XnnError, TypeError):
    """Arrays from two devices met in one operation (xnn never copies silently)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is an XnnError (one line) instead of a usage block."""

    def error(self, message):
        raise XnnError(f"{message} (see {self.prog} --help)")
