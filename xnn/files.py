"""Files xnn writes and reads: ONE atomic write, ONE way to read an .npz.

Every whole file xnn writes (configs, JSON, images, plots, checkpoints, models,
weights, arrays) goes through :func:`atomic_write`: the bytes go to a temporary
file in the same folder, which is renamed over the target only when complete.
A failure (a full disk, a read-only folder, an error in the writer) leaves the
old file, or none, and never the temporary file; an ``OSError`` becomes an
:class:`XnnError` naming the file.

    with atomic_write("out/model.npz") as f:
        numpy.savez(f, **arrays)
    write_bytes("out/summary.json", text.encode())
    arrays = read_npz("out/model.npz", "checkpoint")   # one-line XnnError on any bad file
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
import zipfile

import numpy

from .errors import XnnError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: what a file that is not an .npz archive usually is, by its first bytes
_SIGNATURES = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"\x89HDF", "an HDF5 file (Keras .h5 weights?)"), (b"MATLAB", "a MATLAB .mat file"),
               (b"\x80", "a Python pickle"))


def _not_zip(path) -> str | None:
    """Why ``path`` cannot be an .npz (a zip archive) from its first bytes, or None when it may be one.
    NumPy would otherwise try anything that is neither zip nor .npy as a pickle, and say so."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None                 # numpy.load says what is wrong
    if head[:2] == b"PK" or head.startswith(b"\x93NUMPY"):   # a zip, or an .npy (numpy.load tells)
        return None
    if not head:
        return "the file is empty"
    kind = next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)
    return f"it is {kind}, not an .npz archive" if kind else "it is not an .npz archive (a zip file)"


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


@contextlib.contextmanager
def atomic_write(path):
    """Yield a binary file object; on a clean exit it replaces ``path`` in one rename,
    after an fsync, so that not even a power cut leaves a half-written ``path``.

    The parent folder is created.  Whatever happens, the temporary file is removed;
    an ``OSError`` (in the body or in the rename) is raised as a one-line XnnError.
    """
    path = pathlib.Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())          # the data reach the disk before the rename can
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise XnnError(f"cannot write {path}: {_reason(e)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)


def write_bytes(path, data: bytes) -> None:
    with atomic_write(path) as f:
        f.write(data)


def save_npz(path, arrays: dict) -> None:
    """``numpy.savez`` of host arrays, atomically."""
    with atomic_write(path) as f:
        numpy.savez(f, **arrays)


def save_npy(path, array) -> None:
    with atomic_write(path) as f:
        numpy.save(f, numpy.asarray(array))


def read_npz(path, what: str, text_keys=()) -> dict:
    """All arrays of an .npz file, as a dict; any unreadable file is a one-line XnnError.

    ``what`` names the file in messages ("checkpoint", "weight file"...).  Arrays must
    hold numbers (bool, int, float), except ``text_keys`` (which may hold strings):
    a truncated or non-zip file, pickled objects or strings where numbers belong are
    refused, naming the entry.
    """
    if isinstance(path, (str, os.PathLike)) and pathlib.Path(path).is_file() and (why := _not_zip(path)):
        raise XnnError(f"cannot read {what} {path}: {why}")
    try:
        data = numpy.load(path, allow_pickle=False)
        if not isinstance(data, numpy.lib.npyio.NpzFile):  # a plain .npy array
            raise ValueError("not an .npz archive")
        with data:
            arrays = {}
            for key in data.files:
                try:
                    arrays[key] = data[key]
                except ValueError as e:
                    if "allow_pickle" in str(e):
                        raise XnnError(f"{what} {path}: entry {key!r} holds Python objects, not numbers; "
                                       "xnn never loads pickled data") from None
                    raise
    except XnnError:
        raise
    except FileNotFoundError:
        raise XnnError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise XnnError(f"{what} {path} is a directory, not an .npz file") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise XnnError(f"cannot read {what} {path}: it is truncated or corrupt, or not an .npz file "
                       f"({_reason(e)})") from None
    for key, a in arrays.items():
        if not (key in text_keys and a.dtype.kind in "US"):
            as_numbers(a, f"{what} {path}: entry {key!r}")
    return arrays


def as_numbers(value, where: str):
    """``value`` itself when it holds numbers (bool, int, float; an array, an h5py dataset or a
    list), else a one-line XnnError saying ``where`` it came from: strings or objects are never
    converted."""
    dtype = getattr(value, "dtype", None)   # arrays and h5py datasets are checked unread
    if dtype is None:
        value = numpy.asarray(value)
        dtype = value.dtype
    if dtype.kind not in "biuf":
        raise XnnError(f"{where} has dtype {dtype}, not numbers")
    return value


def require_keys(arrays: dict, keys, what: str, path) -> None:
    """XnnError naming the first of ``keys`` that ``arrays`` lacks."""
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise XnnError(f"{what} {path} lacks {', '.join(map(repr, missing))}; it was not written by this "
                       "version of xnn or is damaged")
