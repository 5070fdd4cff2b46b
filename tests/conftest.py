"""Shared fixtures: every test that takes ``dev`` runs on each backend present."""
import os
import pathlib

import numpy
import pytest

import xnn
from xnn.backends import gpu_status, register

from .standin import make_device as make_standin_device

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests read data and weights from the development copy next to the checkout
# unless XNN_HOME already points elsewhere.
if "XNN_HOME" not in os.environ and SHARED_DATA.is_dir():
    os.environ["XNN_HOME"] = str(SHARED_DATA)


# xnn's CuPy backend on the strict host-memory stand-in for CuPy: the GPU code path,
# checked in CI without a GPU (tests/standin/fakecupy.py says what it enforces)
STANDIN = register(make_standin_device())


def _device_params():
    gpu, reason = gpu_status()
    return [pytest.param("cpu", id="cpu"),
            pytest.param("standin", id="standin"),
            pytest.param("gpu", id="gpu",
                         marks=pytest.mark.skipif(gpu is None, reason=f"no usable GPU: {reason}"))]


@pytest.fixture(params=_device_params())
def dev(request):
    """Every backend present: the CPU, the CuPy stand-in, and a real GPU where one exists."""
    return xnn.device(request.param, strict=True)


@pytest.fixture(params=[p for p in _device_params() if p.values[0] != "cpu"])
def gpu_dev(request):
    """The GPU code path: the stand-in always, a real GPU where one exists."""
    return xnn.device(request.param, strict=True)


@pytest.fixture
def rng():
    return numpy.random.default_rng(1234)


def xnn_home() -> pathlib.Path:
    return pathlib.Path(os.environ.get("XNN_HOME", SHARED_DATA))


def weights_path(name: str) -> pathlib.Path:
    """A real weight file from XNN_HOME, or skip the test cleanly."""
    path = xnn_home() / "weights" / name
    if not path.exists():
        pytest.skip(f"{path} not present (set XNN_HOME to a folder holding weights/{name})")
    return path
