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
]}

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
