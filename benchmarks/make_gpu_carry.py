#!/usr/bin/env python3
"""Pack the data and weights that benchmarks/gpu_check.sh needs into .carry/ (git-ignored),
small enough for the device tool's 64 MiB limit: the weights as float16 compressed .npz
(xnn converts them back to float32 on load; VGG19 features differ by ~3e-4 relative),
MNIST as it is.

    XNN_HOME=../shared/data python benchmarks/make_gpu_carry.py      # then: XNN_HOME=.carry
"""
import pathlib
import shutil
import sys

import numpy

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xnn.data.cache import fetch  # noqa: E402
from xnn.models import vgg19  # noqa: E402

OUT = REPO / ".carry"


def to_f16(src, dst):
    with numpy.load(src, allow_pickle=False) as f:
        # weights and biases to float16; small constants (the mean colour) stay exact
        arrays = {k: (f[k].astype(numpy.float16) if f[k].dtype == numpy.float32 and f[k].size > 16 else f[k])
                  for k in f.files}
    numpy.savez_compressed(dst, **arrays)


def main():
    (OUT / "weights").mkdir(parents=True, exist_ok=True)
    (OUT / "mnist").mkdir(exist_ok=True)
    tmp = OUT / "vgg19_notop_f32.npz"
    vgg19(weights="vgg19-imagenet-notop").save(tmp)
    to_f16(tmp, OUT / "weights" / "vgg19_notop_f16.npz")
    tmp.unlink()
    for name in ("adain_vgg_normalised_to_relu4_1.npz", "adain_decoder.npz"):
        to_f16(fetch(f"weights/{name}"), OUT / "weights" / name)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(fetch(f"mnist/{name}"), OUT / "mnist" / name)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{OUT}: {total / 2**20:.1f} MiB; run with XNN_HOME=.carry and carry ['.carry']")


if __name__ == "__main__":
    main()
