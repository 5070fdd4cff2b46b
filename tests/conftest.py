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


#: weight files the development data does not hold (too large): tests that need them skip
EXPECTED_ABSENT = {"vgg19_weights_tf_dim_ordering_tf_kernels.h5", "imagenet-vgg-verydeep-19.mat"}
#: float16 copies that benchmarks/make_gpu_carry.py packs for GPU machines (XNN_HOME=.carry)
CARRIED = {"vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5": "vgg19_notop_f16.npz"}


def weights_path(name: str) -> pathlib.Path:
    """A real weight file from XNN_HOME (or its carried float16 copy).

    Missing data is loud: the test fails and says where to put the file, unless the file
    is one the development data never holds (the test skips with the reason) or
    XNN_TESTS_ALLOW_MISSING_DATA=1 is set (skips, e.g. for a machine without the data).
    """
    folder = xnn_home() / "weights"
    path = folder / name
    if path.exists():
        return path
    if name in CARRIED and (folder / CARRIED[name]).exists():
        return folder / CARRIED[name]
    why = f"{path} not present (set XNN_HOME to a folder holding weights/{name}, e.g. ../shared/data)"
    if name in EXPECTED_ABSENT or os.environ.get("XNN_TESTS_ALLOW_MISSING_DATA") == "1":
        pytest.skip(why)
    pytest.fail(why + "; or set XNN_TESTS_ALLOW_MISSING_DATA=1 to skip the tests that need it", pytrace=False)
