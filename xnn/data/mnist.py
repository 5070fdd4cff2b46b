"""MNIST: the IDX file reader, the loader and a mini-batch index generator.

IDX layout (LeCun's format, all integers big-endian)::

    byte 0, 1   0x00 0x00
    byte 2      element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                0x0D float32, 0x0E float64
    byte 3      number of dimensions d
    4 * d       the dimensions, uint32 each
    payload     prod(dims) elements, row-major, big-endian

The four MNIST files come gzip-compressed; :func:`read_idx` tells gzip from raw
by the magic bytes ``1f 8b``, not by the file name.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import pathlib
import zlib

import numpy

from ..errors import XnnError
from .cache import fetch

#: IDX type code -> big-endian NumPy dtype.
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

#: md5 of the DECOMPRESSED official files (the same for every mirror and re-compression).
CONTENT_MD5 = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}


def read_idx(path, md5: str | None = None) -> numpy.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian, writable NumPy array.

    ``md5``, when given, is checked against the decompressed bytes. Every problem
    (missing file, corrupt gzip, bad magic or type code, payload size that does
    not match the dimensions, checksum mismatch) raises a one-line XnnError that
    names the file.
    """
    path = pathlib.Path(path)

    def fail(what: str):
        return XnnError(f"{path}: {what}")

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise fail("file not found") from None
    except IsADirectoryError:
        raise fail("is a directory, not an IDX file") from None
    except OSError as e:
        raise fail(f"cannot read ({e.strerror or e})") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise fail(f"corrupt gzip stream ({reason}); delete the file and fetch it again") \
                from None
    if len(data) < 4:
        raise fail(f"too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise fail(f"not an IDX file (magic bytes {data[:2].hex()} instead of 0000)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise fail(f"unknown IDX element type code 0x{code:02x} "
                   f"(known: {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)})")
    if ndim == 0:
        raise fail("IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise fail(f"truncated IDX header: {ndim} dimensions need {header} bytes, "
                   f"the file has {len(data)}")
    dims = tuple(int(d) for d in numpy.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = numpy.dtype(IDX_DTYPES[code])
    need = math.prod(dims) * dtype.itemsize
    have = len(data) - header
    if have < need:
        raise fail(f"truncated: dimensions {dims} need {need} payload bytes, the file has {have}")
    if have > need:
        raise fail(f"{have - need} unexpected trailing bytes after the {need} payload bytes "
                   f"of dimensions {dims}")
    if md5 is not None:
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            raise fail(f"content md5 {got} differs from the expected {md5} (damaged or "
                       "not the official file); delete it and fetch it again")
    array = numpy.frombuffer(data, dtype, count=math.prod(dims), offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a native-endian, writable copy


def load_mnist(split: str = "train", limit: int | None = None, verify: bool = True):
    """MNIST ``split`` ("train": 60000, "test": 10000) as (images, labels).

    images: float32 (N, 1, 28, 28), pixel / 255 in [0, 1]; labels: int64 (N,) in 0..9.
    Files come from ``fetch("mnist/<name>")`` (downloaded into $XNN_HOME on first
    use). ``verify`` checks the md5 of the decompressed content (about 0.05 s for
    the 47 MB training images). The decoded arrays are cached in-process and
    returned READ-ONLY (shared between calls; copy before changing them in place);
    ``limit`` takes the first ``limit`` examples (a view, no copy).
    """
    if split not in FILES:
        raise XnnError(f"unknown MNIST split {split!r}; choose 'train' or 'test'")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise XnnError(f"MNIST limit must be a non-negative integer or None, got {limit!r}")
    paths = [fetch(f"mnist/{name}") for name in FILES[split]]
    stamps = tuple((str(p), os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths)
    images, labels = _decode(stamps, bool(verify))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images, labels


@functools.lru_cache(maxsize=4)
def _decode(stamps, verify: bool):
    """Decode one split; keyed on (path, mtime, size) of both files, so a changed
    XNN_HOME or a replaced file is read again."""
    (img_path, _, _), (lbl_path, _, _) = stamps
    img_path, lbl_path = pathlib.Path(img_path), pathlib.Path(lbl_path)
    md5 = (lambda p: CONTENT_MD5.get(p.name)) if verify else (lambda p: None)
    raw_images = read_idx(img_path, md5(img_path))
    raw_labels = read_idx(lbl_path, md5(lbl_path))
    both = f"{img_path} and {lbl_path}"
    if raw_images.dtype != numpy.uint8 or raw_images.ndim != 3 or raw_images.shape[1:] != (28, 28):
        raise XnnError(f"MNIST images must be uint8 (N, 28, 28), got {raw_images.dtype} "
                       f"{raw_images.shape} in {img_path} (labels: {lbl_path})")
    if raw_labels.dtype != numpy.uint8 or raw_labels.ndim != 1:
        raise XnnError(f"MNIST labels must be uint8 (N,), got {raw_labels.dtype} "
                       f"{raw_labels.shape} in {lbl_path} (images: {img_path})")
    if len(raw_images) != len(raw_labels):
        raise XnnError(f"MNIST files disagree: {len(raw_images)} images but "
                       f"{len(raw_labels)} labels in {both}")
    if raw_labels.size and raw_labels.max() > 9:
        raise XnnError(f"MNIST labels must be 0..9, found {int(raw_labels.max())} in {lbl_path} "
                       f"(images: {img_path})")
    images = numpy.empty((len(raw_images), 1, 28, 28), numpy.float32)
    numpy.divide(raw_images[:, None], numpy.float32(255), out=images)
    labels = raw_labels.astype(numpy.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def batches(n: int, batch_size: int, rng=None, shuffle: bool = True, drop_last: bool = False):
    """Yield int64 index arrays that cover range(n) in mini-batches.

    ``rng``: a numpy Generator or an int seed (None: a fresh unseeded Generator),
    used only when ``shuffle``. The last batch is smaller when batch_size does
    not divide n, unless ``drop_last``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, numpy.integer)) \
            or batch_size < 1:
        raise XnnError(f"batch_size must be a positive integer, got {batch_size!r}")
    if n < 0:
        raise XnnError(f"number of examples must be >= 0, got {n}")
    if shuffle:
        if not isinstance(rng, numpy.random.Generator):
            rng = numpy.random.default_rng(rng)
        order = rng.permutation(n)
    else:
        order = numpy.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]
