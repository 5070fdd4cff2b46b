"""The CuPy stand-in fails where CuPy fails, and counts what would cost a GPU round trip.

If the stand-in were lax, every ``standin`` test would pass for nothing: these tests
pin down each rule it enforces (tests/standin/fakecupy.py)."""
import json
import pathlib

import numpy
import pytest

import xnn
from xnn.backends.cupy_backend import CupyDevice

from .conftest import STANDIN
from .standin import fakecupy as cp
from .standin import recording


def test_the_standin_device_is_xnns_real_cupy_backend():
    assert isinstance(STANDIN, CupyDevice) and STANDIN.kind == "gpu" and STANDIN.xp is cp
    assert xnn.device("standin") is STANDIN
    a = STANDIN.asarray(numpy.ones(3))
    assert xnn.backends.device_of(a) is STANDIN and isinstance(a, cp.ndarray)


def test_device_arrays_refuse_implicit_host_conversion():
    a = cp.asarray(numpy.ones((2, 2)))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        numpy.asarray(a)
    with pytest.raises(TypeError, match="numpy.sum was given a GPU array"):
        numpy.sum(a)


def test_host_arrays_are_refused_as_operands_and_in_assignments():
    a = cp.asarray(numpy.ones((2, 2)))
    host = numpy.ones((2, 2))
    for op in (lambda: a + host, lambda: host * a, lambda: cp.maximum(a, host), lambda: a @ host):
        with pytest.raises(TypeError, match="host numpy.ndarray"):
            op()
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        a[...] = host
    a += numpy.float32(2.0)             # NumPy and Python scalars are fine, as in CuPy
    assert float(a.sum()) == 12.0


def test_only_names_that_cupy_has_are_offered():
    names = json.loads(pathlib.Path(cp.__file__).with_name("cupy_names.json").read_text())
    assert names["cupy_version"].startswith("14.")
    for name in ("matmul", "copyto", "pad", "empty_like", "vdot", "where"):
        assert callable(getattr(cp, name))
    for name in ("geomspace", "nditer", "insert"):     # NumPy has them, CuPy 14 does not
        assert hasattr(numpy, name)
        with pytest.raises(AttributeError, match="has no attribute"):
            getattr(cp, name)
    with pytest.raises(AttributeError):
        cp.asarray(numpy.ones(2)).tofile_not_a_method   # noqa: B018


def test_fresh_results_are_c_ordered_except_order_k_functions():
    nhwc = cp.asarray(numpy.arange(24.0).reshape(1, 2, 3, 4)).transpose(0, 3, 1, 2)
    assert not nhwc.flags.c_contiguous                  # an NCHW view of NHWC memory
    assert (nhwc * 2).flags.c_contiguous                # CuPy: element-wise results are C-ordered
    assert cp.maximum(nhwc, 0).flags.c_contiguous
    assert cp.empty_like(nhwc).transpose(0, 2, 3, 1).flags.c_contiguous   # order "K" keeps it
    out = cp.empty_like(nhwc)
    assert cp.maximum(nhwc, 0, out=out) is out
    assert nhwc.transpose(0, 2, 3, 1).flags.c_contiguous                  # views stay views


def test_reductions_give_device_scalars():
    s = cp.asarray(numpy.ones(4)).sum()
    assert isinstance(s, cp.ndarray) and s.ndim == 0


def test_recorder_counts_syncs_copies_and_transposing_copies_per_site():
    a = cp.asarray(numpy.arange(6.0).reshape(2, 3))
    with recording() as rec:
        float(a.sum())
        a[a > 2]                                         # boolean mask: the result size needs the host
        a.get()
        cp.asarray(numpy.ones(2))
        cp.ascontiguousarray(a.T)
        STANDIN.synchronize()
    assert (rec.syncs, rec.copies, rec.relayouts) == (4, 1, 1)
    assert "test_standin.py" in rec.table()
    with recording() as rec:
        cp.ascontiguousarray(a[:, ::2])                 # a strided (not transposed) view: no relayout
    assert rec.relayouts == 0
