"""Regenerate ``cupy_names.json``, the frozen list of names the CuPy stand-in may offer.

Run with a CuPy wheel installed (it imports without a GPU), e.g.

    python -m venv /tmp/cupyenv && /tmp/cupyenv/bin/pip install cupy-cuda13x
    /tmp/cupyenv/bin/python tests/standin/freeze_cupy_names.py

The stand-in dispatches a NumPy function only when CuPy has a function of that name,
so code that would hit an AttributeError on a real GPU fails the same way in CI.
"""
import json
import pathlib

import cupy


def public(obj):
    return sorted(n for n in dir(obj) if not n.startswith("_"))


names = {
    "cupy_version": cupy.__version__,
    "namespace": public(cupy),
    "ufuncs": sorted(n for n in public(cupy) if isinstance(getattr(cupy, n), cupy.ufunc)),
    "ndarray": public(cupy.ndarray),
    "random": public(cupy.random),
    "random_generator": public(cupy.random.Generator),
    "linalg": public(cupy.linalg),
    "fft": public(cupy.fft),
}
out = pathlib.Path(__file__).with_name("cupy_names.json")
out.write_text(json.dumps(names, indent=0) + "\n")
print(f"wrote {out} (CuPy {cupy.__version__}, {len(names['namespace'])} names)")
