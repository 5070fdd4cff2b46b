"""The strict CuPy stand-in device for tests (see :mod:`tests.standin.fakecupy`)."""
from . import fakecupy
from .fakecupy import Recorder, recording

__all__ = ["fakecupy", "Recorder", "recording", "make_device"]


def make_device():
    """xnn's real GPU backend, built on the stand-in namespace; named "standin"."""
    from xnn.backends.cupy_backend import CupyDevice
    return CupyDevice(fakecupy, name="standin")
