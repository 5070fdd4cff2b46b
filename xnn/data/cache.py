"""The data and weights cache: ``$XNN_HOME`` (default ``~/.cache/xnn``).

Layout inside it is the same as the development copy ``../shared/data``:

    mnist/train-images-idx3-ubyte.gz ...
    weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5 ...

so ``XNN_HOME=../shared/data`` makes everything work offline.  A registered file
that is missing is downloaded once, checked against its published checksum, and
moved into place only when complete (pooch downloads to a temporary file), so a
failed download never leaves a partial file behind.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

from ..errors import XnnError


@dataclass(frozen=True)
class RemoteFile:
    relpath: str          # path inside XNN_HOME
    url: str              # canonical source
    md5: str | None       # of the downloaded bytes, where one is published
    about: str = ""


_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
_MATCONVNET = "https://www.vlfeat.org/matconvnet/models/"
_KODAK = "http://r0k.us/graphics/kodak/kodak/"
#: The Kodak Lossless True Color Image Suite (24 photos, 768x512, released for unrestricted use):
#: the offline training and preview set of the fast style network (``dataset: kodak``)
KODAK_MD5 = {
    "kodim01.png": "02abfa3bf18ae21ed932bfcdb15a1fa9",
    "kodim02.png": "b9092ba16d8fa44967ef3b1351af1559",
    "kodim03.png": "c365268cc1e0afcd68eaf421eadebc82",
    "kodim04.png": "c1cb79f2256beace37724dda67a247b8",
    "kodim05.png": "5cac931933f9304457042a0000c42429",
    "kodim06.png": "633dfca900df851d3cbd2438660accd0",
    "kodim07.png": "70b7e0b612e50f4d9da6c02ea4f06910",
    "kodim08.png": "ceb5bb8b3aeaee454a9a422dd8b9470b",
    "kodim09.png": "66f5667e9afc6184e8af953b559403e5",
    "kodim10.png": "58961ea985c508fb8f3229d406fd6b19",
    "kodim11.png": "d827aad59e17120880986c932c160113",
    "kodim12.png": "97239b0c0b2df2425e2c7e73e905efbf",
    "kodim13.png": "2070d64c0957776791bce41c1a01a387",
    "kodim14.png": "c0798cde7b20cf51c954736c160bd403",
    "kodim15.png": "d97b760064e592489695234d392247be",
    "kodim16.png": "fbedf7f4e8b39e1a67132b8bc6e8e4d7",
    "kodim17.png": "e13ea68bbc03805901881c4256cbafaa",
    "kodim18.png": "e8de0c990dd993d6a02cd9ec7118fdeb",
    "kodim19.png": "e9641bc6f3a50775ca33ca73de80d81c",
    "kodim20.png": "c3c611b8b25732c9a70f2efc82f9d0d5",
    "kodim21.png": "d11b562b985a0b379ef4c133ceba27b4",
    "kodim22.png": "6f7b80b0faf37eade33d362fda9050b9",
    "kodim23.png": "1d3955f7cbf7eef0b49c2cb3e136d31f",
    "kodim24.png": "e56e3be0b6c6331410a4cefca2134833",
}

REGISTRY = {f.relpath: f for f in [
    RemoteFile("mnist/train-images-idx3-ubyte.gz", _MNIST + "train-images-idx3-ubyte.gz",
               "f68b3c2dcbeaaa9fbdd348bbdeb94873", "MNIST training images"),
    RemoteFile("mnist/train-labels-idx1-ubyte.gz", _MNIST + "train-labels-idx1-ubyte.gz",
               "d53e105ee54ea40749a09fcbcd1e9432", "MNIST training labels"),
    RemoteFile("mnist/t10k-images-idx3-ubyte.gz", _MNIST + "t10k-images-idx3-ubyte.gz",
               "9fb629c4189551a2d022fa330f9573f3", "MNIST test images"),
    RemoteFile("mnist/t10k-labels-idx1-ubyte.gz", _MNIST + "t10k-labels-idx1-ubyte.gz",
               "ec29112dd5afa0611ce80d1b7f02629c", "MNIST test labels"),
    RemoteFile("weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
               _KERAS + "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
               "253f8cb515780f3b799900260a226db6", "Keras VGG19 ImageNet weights, conv layers only (80 MB)"),
    RemoteFile("weights/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
               _KERAS + "vgg19_weights_tf_dim_ordering_tf_kernels.h5",
               "cbe5617147190e668d6c5d5026f83318", "Keras VGG19 ImageNet weights with fc layers (549 MB)"),
    RemoteFile("weights/imagenet-vgg-verydeep-19.mat", _MATCONVNET + "imagenet-vgg-verydeep-19.mat",
               None, "MatConvNet VGG19 ImageNet weights with fc layers (535 MB)"),
]} | {f"images/kodak/{name}": RemoteFile(f"images/kodak/{name}", _KODAK + name, md5, "a Kodak photo")
     for name, md5 in KODAK_MD5.items()}

#: Known md5 checksums by file name, for verifying files a user points at directly.
KNOWN_MD5 = {pathlib.PurePosixPath(f.relpath).name: f.md5 for f in REGISTRY.values() if f.md5}


def home() -> pathlib.Path:
    """The cache root: $XNN_HOME, else ~/.cache/xnn."""
    return pathlib.Path(os.environ.get("XNN_HOME") or "~/.cache/xnn").expanduser()


def md5sum(path, chunk: int = 1 << 20) -> str:
    import hashlib
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def fetch(relpath: str, download: bool = True) -> pathlib.Path:
    """Path of a cache file, downloading a registered one on first use.

    Raises XnnError with one line saying what is missing, where to put it and how
    to set XNN_HOME, when the file is absent and cannot be downloaded.
    """
    path = home() / relpath
    if path.exists():
        return path
    remote = REGISTRY.get(relpath)
    where = (f"put it at {path}, or set XNN_HOME to a folder that holds {relpath} "
             f"(the development copy: XNN_HOME=../shared/data)")
    if remote is None or not download:
        raise XnnError(f"{relpath} is missing: {where}")
    try:
        import pooch
        path.parent.mkdir(parents=True, exist_ok=True)
        pooch.retrieve(remote.url, known_hash=f"md5:{remote.md5}" if remote.md5 else None,
                       fname=path.name, path=path.parent, progressbar=_progress())
    except Exception as e:  # network down, checksum mismatch, disk full ...
        raise XnnError(f"{relpath} is missing and downloading it from {remote.url} failed "
                       f"({_short_reason(e)}); {where}") from None
    return path


def _short_reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    if "ConnectionError" in type(e).__name__ or "Max retries" in text or "NameResolution" in text:
        return "no connection to the server"
    return f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__


def _progress() -> bool:
    import importlib.util
    return importlib.util.find_spec("tqdm") is not None
