"""The one stop mechanism: Ctrl-C / SIGTERM become a stop request that work polls.

    flag = StopFlag()
    with flag.installed():              # first signal sets the flag; the old handlers come back after
        lbfgs_minimize(..., should_stop=flag)
    if flag: save and exit

A second signal while the flag is set raises KeyboardInterrupt (a forced stop).
The CLI installs one around an experiment's ``run``; runners read it as
``ctx.stop_requested``, optimisers take it as ``should_stop``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys


class StopFlag:
    """A stop request, callable as ``should_stop``; ``message`` is printed on stderr when a
    signal sets it (None: silent)."""

    def __init__(self, message: str | None = None):
        self.reason = None
        self.message = message

    def set(self, reason: str = "stop requested"):
        self.reason = reason

    def __call__(self) -> bool:
        return self.reason is not None

    __bool__ = __call__

    def _handler(self, signum, frame):
        if self.reason is not None:  # second request: stop now
            raise KeyboardInterrupt
        self.set(f"received {signal.Signals(signum).name}")
        if self.message:   # os.write: print() here could re-enter a stderr write it interrupted
            try:
                os.write(sys.stderr.fileno(), f"\n{self.message}\n".encode())
            except (OSError, ValueError, AttributeError):   # no usable stderr (closed, or not a file)
                pass

    @contextlib.contextmanager
    def installed(self, signals=(signal.SIGINT, signal.SIGTERM)):
        """Route ``signals`` to this flag inside the block; the previous handlers are
        restored on the way out, however the block ends."""
        handler, previous = self._handler, {}   # one object for every signal
        try:
            for s in signals:
                previous[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread: signals cannot be caught here
            pass
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
