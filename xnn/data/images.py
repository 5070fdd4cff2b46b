"""Image files and small host-side image operations (Pillow + NumPy).

Conventions: an image is a host NumPy array (H, W, 3), either uint8 0..255 or
float in [0, 1]. Functions that resample (``resize_*``) work on uint8 and turn a
float image into uint8 first (:func:`to_uint8`). Arrays from another backend are
brought to the host with :func:`xnn.to_numpy`.
"""
from __future__ import annotations

import io
import math
import pathlib

import numpy
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from ..backends import to_numpy
from ..errors import XnnError
from ..files import atomic_write

_RESAMPLE = Image.Resampling.LANCZOS


def _host(a) -> numpy.ndarray:
    return numpy.asarray(a) if isinstance(a, (list, tuple)) else to_numpy(a)


# ----------------------------------------------------------------------------- files

#: the files a folder of images is read for (AdaIN's folder mode, training photos)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def image_files(folder) -> list:
    """The image files (by IMAGE_SUFFIXES) directly in ``folder``, sorted by name."""
    return sorted(f for f in pathlib.Path(folder).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def load_image(path) -> numpy.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB.

    EXIF orientation is applied; grey, palette, CMYK and 16-bit images become RGB;
    transparency is composited on white. Any file that is missing or not a
    complete, readable image raises a one-line XnnError naming the path.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise XnnError(f"image not found: {path}")
    if path.is_dir():
        raise XnnError(f"{path} is a directory, not an image file")
    return _decode(path, path)


def decode_image(data: bytes, name: str = "image") -> numpy.ndarray:
    """:func:`load_image` of an image file's bytes (``name`` is used in messages)."""
    return _decode(io.BytesIO(data), name)


def _decode(source, name) -> numpy.ndarray:
    try:
        with Image.open(source) as im:
            im.load()  # decode now, so a truncated or corrupt file fails here
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise XnnError(f"cannot read image {name}: {reason}") from None


def _to_rgb(im: Image.Image) -> numpy.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):   # 16-bit grey: scale 0..65535 -> 0..255
        grey = numpy.asarray(im, dtype=numpy.float64) / 257.0
        grey = numpy.clip(numpy.rint(grey), 0, 255).astype(numpy.uint8)
        return numpy.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise ValueError("floating-point (mode F) images are not supported")
    has_alpha = im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return numpy.array(im.convert("RGB"), dtype=numpy.uint8)


def save_image(path, image) -> pathlib.Path:
    """Write an image (uint8 or float in [0, 1], (H, W, 3) or (H, W)) to PNG, JPEG...

    The format follows the extension. The file is written to a temporary file in
    the same folder and moved into place, so a failure never leaves a partial
    file; the parent folder is created. Float values are clipped to [0, 1].
    """
    path = pathlib.Path(path)
    pil, fmt, options = _to_pil(image, path.suffix, str(path))
    with atomic_write(path) as f:
        pil.save(f, format=fmt, **options)
    return path


def encode_image(image, suffix: str, name: str = "image") -> bytes:
    """The bytes of an image file in the format of ``suffix`` (".png", ".jpg"...), as
    :func:`save_image` writes it."""
    pil, fmt, options = _to_pil(image, suffix, name)
    buf = io.BytesIO()
    pil.save(buf, format=fmt, **options)
    return buf.getvalue()


def _to_pil(image, suffix, name):
    fmt = Image.registered_extensions().get(suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise XnnError(f"cannot save {name}: unknown image extension {suffix!r} "
                       "(use .png or .jpg)")
    array = to_uint8(image)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        raise XnnError(f"cannot save {name}: expected an (H, W, 3) or (H, W) image, "
                       f"got shape {array.shape}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    options = {"quality": 95} if fmt == "JPEG" else {}
    return Image.fromarray(numpy.ascontiguousarray(array)), fmt, options


def to_uint8(image) -> numpy.ndarray:
    """float in [0, 1] -> uint8 0..255 (clipped, rounded); uint8 is returned as is.

    NaN or infinite values raise XnnError (a diverged optimisation should not be
    saved as a silently black image).
    """
    a = _host(image)
    if a.dtype == numpy.uint8:
        return a
    if a.dtype.kind in "iub":
        return numpy.clip(a, 0, 255).astype(numpy.uint8)
    if a.dtype.kind != "f":
        raise XnnError(f"not an image array: dtype {a.dtype}")
    if not numpy.isfinite(a).all():
        raise XnnError("image has NaN or infinite values (did the optimisation diverge? "
                       "try a smaller learning rate)")
    return numpy.rint(numpy.clip(a, 0.0, 1.0) * 255.0).astype(numpy.uint8)


# ----------------------------------------------------------------------------- geometry

def _size_arg(size, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, numpy.integer)) or size < 1:
        raise XnnError(f"{what} must be a positive integer, got {size!r}")
    return int(size)


def _image_arg(img) -> numpy.ndarray:
    a = to_uint8(img)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise XnnError(f"expected an (H, W, 3) image, got shape {a.shape}")
    return a


def resize_to(img, shape) -> numpy.ndarray:
    """Resize to exactly ``shape = (h, w)`` (Lanczos); identity if already that size."""
    a = _image_arg(img)
    h, w = (_size_arg(s, "target height/width") for s in shape)
    if a.shape[:2] == (h, w):
        return a
    squeeze = a.ndim == 3 and a.shape[2] == 1
    pil = Image.fromarray(a[:, :, 0] if squeeze else a).resize((w, h), _RESAMPLE)
    out = numpy.asarray(pil)
    return out[:, :, None] if squeeze else out


def resize_longer_side(img, size: int) -> numpy.ndarray:
    """Resize keeping the aspect ratio so that max(H, W) == size.

    Returns the input itself (no resampling) when it already has that longer side.
    """
    a = _image_arg(img)
    return resize_to(a, longer_side_shape(a.shape[:2], size))


def longer_side_shape(shape, size: int) -> tuple:
    """The (h, w) that :func:`resize_longer_side` gives an image of ``shape`` (h, w, ...): cheap
    to compute before deciding whether to resample at all."""
    size = _size_arg(size, "image size")
    h, w = shape[:2]
    scale = size / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def resize_shorter_side(img, size: int) -> numpy.ndarray:
    """Resize keeping the aspect ratio so that min(H, W) == size."""
    a = _image_arg(img)
    size = _size_arg(size, "image size")
    h, w = a.shape[:2]
    scale = size / min(h, w)
    return resize_to(a, (max(1, round(h * scale)), max(1, round(w * scale))))


def center_crop(img, size) -> numpy.ndarray:
    """The central ``size`` x ``size`` (or ``(h, w)``) window; top/left offset = (H - h) // 2."""
    a = _host(img)
    h, w = (size, size) if numpy.isscalar(size) else size
    h, w = _size_arg(h, "crop height"), _size_arg(w, "crop width")
    H, W = a.shape[:2]
    if h > H or w > W:
        raise XnnError(f"cannot crop {h}x{w} from a {H}x{W} image; resize it first")
    top, left = (H - h) // 2, (W - w) // 2
    return numpy.ascontiguousarray(a[top:top + h, left:left + w])


def resize_and_center_crop(img, size: int = 224, shorter: int | None = None) -> numpy.ndarray:
    """Classifier input: resize the shorter side to ``shorter`` (default ``size``),
    keeping the aspect ratio, then take the central size x size crop.

    With the default the whole shorter extent is kept (what VGG's single-crop
    evaluation at 224 sees). The common torchvision ImageNet eval transform is
    ``shorter=256, size=224`` (a 0.875 crop).
    """
    size = _size_arg(size, "crop size")
    shorter = size if shorter is None else _size_arg(shorter, "shorter side")
    if shorter < size:
        raise XnnError(f"shorter side {shorter} must be >= crop size {size}")
    return center_crop(resize_shorter_side(img, shorter), size)


# ----------------------------------------------------------------------------- colour

#: NTSC (FCC) RGB -> YIQ. Y is luma; I and Q carry the chroma.
RGB_TO_YIQ = numpy.array([[0.299, 0.587, 0.114],
                          [0.595716, -0.274453, -0.321263],
                          [0.211456, -0.522591, 0.311135]])
YIQ_TO_RGB = numpy.linalg.inv(RGB_TO_YIQ)  # exact inverse, so the round trip is lossless


def rgb_to_yiq(rgb) -> numpy.ndarray:
    """(H, W, 3) RGB float -> (H, W, 3) YIQ: yiq[..., k] = sum_c M[k, c] rgb[..., c]."""
    rgb = _host(rgb)
    return rgb @ _matrix_for(RGB_TO_YIQ, rgb).T


def yiq_to_rgb(yiq) -> numpy.ndarray:
    """Inverse of :func:`rgb_to_yiq` (no clipping)."""
    yiq = _host(yiq)
    return yiq @ _matrix_for(YIQ_TO_RGB, yiq).T


def _matrix_for(matrix, a):
    """The colour matrix in float32 for float32 input (keeps the dtype), else float64."""
    return matrix.astype(numpy.float32) if a.dtype == numpy.float32 else matrix


def transfer_luminance(content_rgb, stylised_rgb, clip: bool = True) -> numpy.ndarray:
    """Keep the content's colours: Y from the stylised image, I and Q from the content.

    This is the "original colors" / luminance-only option of Gatys et al.,
    "Preserving Color in Neural Artistic Style Transfer" (2016); jcjohnson's
    neural-style does the same in YUV. Inputs are float RGB in [0, 1], (H, W, 3);
    when the sizes differ the content's chroma is resized (bicubic) to the stylised
    image's size. The result has the stylised image's shape, clipped to [0, 1]
    unless ``clip=False``.
    """
    content = numpy.asarray(_host(content_rgb), dtype=numpy.float64)
    stylised = _host(stylised_rgb)
    out_dtype = stylised.dtype if stylised.dtype.kind == "f" else numpy.float32
    stylised = numpy.asarray(stylised, dtype=numpy.float64)
    for name, a in (("content", content), ("stylised", stylised)):
        if a.ndim != 3 or a.shape[2] != 3:
            raise XnnError(f"transfer_luminance: {name} image must be (H, W, 3), got {a.shape}")
    iq = rgb_to_yiq(content)[:, :, 1:]
    h, w = stylised.shape[:2]
    if iq.shape[:2] != (h, w):
        iq = numpy.stack([numpy.asarray(Image.fromarray(iq[:, :, k].astype(numpy.float32))
                                        .resize((w, h), Image.Resampling.BICUBIC))
                          for k in range(2)], axis=2).astype(numpy.float64)
    y = rgb_to_yiq(stylised)[:, :, :1]
    out = yiq_to_rgb(numpy.concatenate([y, iq], axis=2))
    if clip:
        out = numpy.clip(out, 0.0, 1.0)
    return out.astype(out_dtype)


# ----------------------------------------------------------------------------- figures

def side_by_side(images, titles=None, height: int = 256, gap: int = 8) -> numpy.ndarray:
    """Resize every image to ``height`` (aspect kept) and join them left to right
    with ``gap`` white pixels between; optional titles are written in a white
    strip underneath. Returns uint8 (H, W, 3)."""
    height = _size_arg(height, "height")
    if len(images) == 0:
        raise XnnError("side_by_side needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise XnnError(f"side_by_side: {len(images)} images but {len(titles)} titles")
    tiles = []
    for img in images:
        a = _image_arg(img)
        if a.ndim == 2 or a.shape[2] == 1:
            a = numpy.repeat(a.reshape(*a.shape[:2], 1), 3, axis=2)
        a = a[:, :, :3]
        h, w = a.shape[:2]
        tiles.append(resize_to(a, (height, max(1, round(w * height / h)))))
    white = numpy.full((height, gap, 3), 255, numpy.uint8)
    parts = [tiles[0]]
    for t in tiles[1:]:
        parts += [white, t]
    row = numpy.concatenate(parts, axis=1)
    if not titles:
        return row
    try:
        font = ImageFont.load_default(size=15)   # scalable when Pillow has FreeType
    except (TypeError, ImportError, OSError):
        font = ImageFont.load_default()
    strip_h = 24
    canvas = Image.new("RGB", (row.shape[1], height + strip_h), (255, 255, 255))
    canvas.paste(Image.fromarray(row), (0, 0))
    draw = ImageDraw.Draw(canvas)
    left = 0
    for tile, title in zip(tiles, titles):
        box = draw.textbbox((0, 0), str(title), font=font)
        x = left + max(0, (tile.shape[1] - (box[2] - box[0])) // 2)
        y = height + (strip_h - (box[3] - box[1])) // 2 - box[1]
        draw.text((x, y), str(title), fill=(0, 0, 0), font=font)
        left += tile.shape[1] + gap
    return numpy.asarray(canvas)


def feature_map_grid(fmap, max_maps: int = 64, pad: int = 2, min_cell: int = 32) -> numpy.ndarray:
    """Tile the first ``max_maps`` channels of a (C, H, W) (or (1, C, H, W))
    feature map into a near-square grid, each map scaled to [0, 1] by its own
    min and max (a constant map shows black), separated by ``pad`` white pixels
    and enlarged by an integer factor (nearest) so a cell is at least ``min_cell``
    pixels. Returns uint8 (rows*(h+pad)-pad, cols*(w+pad)-pad, 3)."""
    f = _host(fmap)
    if f.ndim == 4 and f.shape[0] == 1:
        f = f[0]
    if f.ndim != 3:
        raise XnnError(f"feature_map_grid expects (C, H, W), got shape {f.shape}")
    f = numpy.asarray(f[:_size_arg(max_maps, "max_maps")], dtype=numpy.float64)
    n, h, w = f.shape
    lo = f.min(axis=(1, 2), keepdims=True)
    span = f.max(axis=(1, 2), keepdims=True) - lo
    f = numpy.where(span > 0, (f - lo) / numpy.where(span > 0, span, 1.0), 0.0)
    k = max(1, math.ceil(min_cell / max(h, w)))
    f = f.repeat(k, axis=1).repeat(k, axis=2)
    h, w = h * k, w * k
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cells = numpy.ones((rows * cols, h + pad, w + pad))
    cells[:n, :h, :w] = f
    grid = cells.reshape(rows, cols, h + pad, w + pad).transpose(0, 2, 1, 3)
    grid = grid.reshape(rows * (h + pad), cols * (w + pad))[:rows * (h + pad) - pad,
                                                            :cols * (w + pad) - pad]
    return numpy.repeat(to_uint8(grid)[:, :, None], 3, axis=2)
