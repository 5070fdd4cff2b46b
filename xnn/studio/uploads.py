"""Uploads are bad input like any other: checked, decoded by xnn's own readers, and copied under
names the studio chooses.

An uploaded file's own name never becomes a path: an image is decoded (one ``XnnError`` line
for a file that is not a complete image or is too large) and written again as
``<folder>/<role>.png``; a video keeps only a suffix from a fixed list.  Nothing is written
outside the folder the studio gives.
"""
from __future__ import annotations

import pathlib
import secrets
import shutil

from PIL import Image, UnidentifiedImageError

from ..errors import XnnError

#: the largest image the studio decodes (a 10000 x 6400 photo); PIL's own bomb limit is ~179 Mpx
MAX_IMAGE_PIXELS = 64_000_000
#: video uploads the studio takes; longer clips belong to the CLI (README "Video")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
MAX_VIDEO_FRAMES = 3000
MAX_VIDEO_PIXELS = 3840 * 2160


def new_folder(root) -> pathlib.Path:
    """A fresh folder for one request's inputs: ``root/<random hex>``."""
    folder = pathlib.Path(root) / secrets.token_hex(8)
    folder.mkdir(parents=True)
    return folder


def check_image_header(path, what: str) -> None:
    """Refuse a file that is not an image, or one too large to decode, from its header alone."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, UnidentifiedImageError):
            reason = "not an image file PIL can read (PNG, JPEG, WebP, TIFF, BMP, GIF ...)"
        raise XnnError(f"the {what} is not a readable image: {reason}") from None
    if w * h > MAX_IMAGE_PIXELS:
        raise XnnError(f"the {what} is {w}x{h} px ({w * h / 1e6:.0f} Mpx); the studio takes up to "
                       f"{MAX_IMAGE_PIXELS / 1e6:.0f} Mpx: make it smaller first")


def read_image(path, what: str):
    """An uploaded image as uint8 HxWx3, or a one-line XnnError that names ``what`` (e.g. "photo")."""
    from ..data.images import load_image
    if path is None:
        raise XnnError(f"no {what}: upload one or pick an example")
    check_image_header(path, what)
    try:
        return load_image(path)
    except XnnError as e:
        raise XnnError(f"the {what} cannot be used: {str(e).split(': ', 1)[-1]}") from None


def keep_image(path, folder, role: str, what: str) -> pathlib.Path:
    """Check an uploaded image and write it again as ``folder/<role>.png``; that path."""
    from ..data.images import save_image
    img = read_image(path, what)
    return save_image(pathlib.Path(folder) / f"{role}.png", img)


def keep_video(path, folder, what: str = "video") -> tuple[pathlib.Path, int]:
    """Check an uploaded clip (suffix, decodable, length, frame size), copy it as ``folder/input<suffix>``;
    (that path, its frame count)."""
    from ..video.io import probe, require_av
    require_av()
    if path is None:
        raise XnnError(f"no {what}: upload a clip or pick the example")
    suffix = pathlib.PurePath(str(path)).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise XnnError(f"the {what} must be a video file ({' '.join(VIDEO_SUFFIXES)}), not '{suffix or 'no suffix'}'")
    dest = pathlib.Path(folder) / f"input{suffix}"
    shutil.copyfile(path, dest)
    try:
        src = probe(dest)
    except XnnError as e:
        dest.unlink()
        raise XnnError(f"the {what} cannot be read: {str(e).split(': ', 1)[-1]}") from None
    frames, (h, w) = src.frames, src.size
    if frames > MAX_VIDEO_FRAMES or h * w > MAX_VIDEO_PIXELS:
        dest.unlink()
        raise XnnError(f"the {what} has {frames} frames of {w}x{h}; the studio takes up to {MAX_VIDEO_FRAMES} "
                       f"frames of at most 3840x2160: cut it, or run it with the CLI (configs/video.yaml)")
    return dest, frames
