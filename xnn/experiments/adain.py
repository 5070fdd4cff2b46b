"""Real-time arbitrary style transfer (AdaIN, Huang & Belongie 2017): one forward pass per image.

``content_image`` may be one image or a folder: every image in the folder (e.g. the frames
of a video) is stylised with the same cached style statistics, one output per input with
the same name.
"""
from __future__ import annotations

import pathlib
import statistics
import time

import numpy

from ..config import Field
from ..errors import XnnError
from .base import blend_weights, stylisation_fields, tile_size_field

KIND = "adain"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

SCHEMA = {
    **stylisation_fields("an image, or a folder of images (batch mode: outputs/ gets one output per "
                         "input, same names)"),
    "alpha": Field("float", 1.0, "content / style trade-off: 0 = content, 1 = full style", min=0, max=1),
    "image_size": Field("int", 512, "longer side of the content (the output has exactly this size); "
                        "null keeps each image's own size", min=16, max=16384, nullable=True),
    "style_size": Field("int", 512, "longer side the style images are resized to; null keeps their size",
                        min=16, max=16384, nullable=True),
    "weights": Field("str", "adain", "'adain' (the released encoder + decoder in $XNN_HOME/weights) or a "
                     "folder holding adain_vgg_normalised_to_relu4_1.npz and adain_decoder.npz"),
    "tile_size": tile_size_field("encode and decode"),
}

#: peak memory of one untiled stylisation = FIXED_BYTES + BYTES_PER_PIXEL * pixels: a line through
#: the measured CPU peaks at 1024 px (1.46 GB, 0.70 Mpx) and 2048 px (4.84 GB, 2.79 Mpx)
FIXED_BYTES = 330 * 2**20
BYTES_PER_PIXEL = 1700
#: arrays that span the whole image when tiled: input, output, relu4_1 features and their AdaIN
WHOLE_IMAGE_BYTES_PER_PIXEL = 90
#: the encoder's halo (its receptive-field margin, 30 px, on the 8 px pooling grid)
TILE_HALO = 32


def tile_for(h: int, w: int, tile_size, free_bytes):
    """The tile side for an h x w content (None: whole image), or an XnnError naming the cause."""
    budget = 0.9 * free_bytes if free_bytes is not None else float("inf")
    whole = WHOLE_IMAGE_BYTES_PER_PIXEL * h * w
    if tile_size == "auto":
        if FIXED_BYTES + BYTES_PER_PIXEL * h * w <= budget:
            return None
        tile = int(((max(budget - whole - FIXED_BYTES, 0) / BYTES_PER_PIXEL) ** 0.5 - 2 * TILE_HALO) // 16) * 16
        if tile < 64:
            raise XnnError(f"image_size: a {h}x{w} px image needs about {whole / 2**30:.1f} GiB for its whole-image "
                           f"arrays alone, more than the {free_bytes / 2**30:.1f} GiB free; use a smaller image_size")
        return tile
    return tile_size

ENCODER_FILE, DECODER_FILE = "adain_vgg_normalised_to_relu4_1.npz", "adain_decoder.npz"


def _contents(path):
    p = pathlib.Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise XnnError(f"content_image folder {p} has no images ({', '.join(IMAGE_SUFFIXES)})")
        return files, True
    return [p], False


def _load_content(path, cfg):
    """A content image, resized as the config says and checked for size."""
    from ..data.images import load_image, resize_longer_side
    from ..models.adain import check_image_size
    content = load_image(path)
    if cfg["image_size"]:
        content = resize_longer_side(content, cfg["image_size"])
    check_image_size(*content.shape[:2], f"content image {path}")
    return content


def prepare(cfg, device, resume_dir=None):
    from ..data.images import load_image, resize_longer_side
    from ..models import AdaINStylizer, adain_decoder, adain_encoder
    from ..models.adain import check_image_size
    if resume_dir is not None:
        raise XnnError("adain runs take seconds and have nothing to resume; start a new run")
    styles = cfg["style_image"]
    blend = blend_weights(cfg)
    files, batch = _contents(cfg["content_image"])
    if not batch:
        _load_content(files[0], cfg)  # fail now, before the run folder exists
    style_imgs = [load_image(p) for p in styles]
    if cfg["style_size"]:
        style_imgs = [resize_longer_side(s, cfg["style_size"]) for s in style_imgs]
    for path, s in zip(styles, style_imgs):
        check_image_size(*s.shape[:2], f"style image {path}")
    if cfg["weights"] == "adain":
        enc_w = dec_w = "adain"
    else:
        folder = pathlib.Path(cfg["weights"])
        enc_w, dec_w = folder / ENCODER_FILE, folder / DECODER_FILE
        for f in (enc_w, dec_w):
            if not f.is_file():
                raise XnnError(f"config: weights = {cfg['weights']!r}: {f} not found (give 'adain' or a folder "
                               f"with {ENCODER_FILE} and {DECODER_FILE})")
    stylizer = AdaINStylizer(adain_encoder(enc_w, device=device), adain_decoder(dec_w, device=device))
    return {"cfg": cfg, "stylizer": stylizer, "files": files, "batch": batch, "styles": style_imgs, "blend": blend}


def run(state, ctx):
    from ..data.images import side_by_side, transfer_luminance
    cfg, st = state["cfg"], state["stylizer"]
    dev = ctx.device
    t0 = time.perf_counter()
    stats = [st.encode_style(s) for s in state["styles"]]
    dev.synchronize()
    style_s = time.perf_counter() - t0
    files, batch = state["files"], state["batch"]
    if batch:
        ctx.path("outputs").mkdir(exist_ok=True)
    bar = ctx.progress(len(files), "adain", unit="img") if batch else None
    times, first = [], None
    for f in files:
        if ctx.stop_requested:
            break
        try:
            content = _load_content(f, cfg)
        except XnnError as e:
            if not batch:
                raise
            ctx.info(f"skipping {f.name}: {e}")
            continue
        t = time.perf_counter()
        tile = tile_for(*content.shape[:2], cfg["tile_size"], dev.memory_available()) if cfg["tile_size"] else None
        out = st.stylize(content, stats, state["blend"], alpha=cfg["alpha"], tile_size=tile)
        times.append(time.perf_counter() - t)
        if cfg["original_colors"]:
            out = transfer_luminance(content / 255.0, out)
        name = f"outputs/{f.stem}{f.suffix if f.suffix.lower() in ('.png', '.jpg', '.jpeg') else '.png'}" \
            if batch else cfg["output_image"]
        ctx.save_image(name, out)
        ctx.log(image=f.name, output=name, seconds=times[-1], size=list(out.shape[:2]), tile_size=tile)
        if first is None:
            first = (content, out)
        if bar is not None:
            bar.update(1, s_per_img=times[-1])
    if bar is not None:
        bar.close()
    if first is None:
        raise XnnError("no image could be stylised")
    content, out = first
    panels = [content] + state["styles"] + [(out * 255).round().astype(numpy.uint8)]
    titles = ["content"] + [f"style {i + 1}" if len(stats) > 1 else "style" for i in range(len(stats))] + ["result"]
    ctx.save_image("summary.png", side_by_side(panels, titles=titles, height=min(384, out.shape[0])))
    summary = {"images": len(times), "seconds_per_image_median": statistics.median(times),
               "seconds_per_image_mean": sum(times) / len(times),
               "seconds_first_image": times[0], "style_encoding_s": style_s, "alpha": cfg["alpha"],
               "output_size": list(out.shape[:2]), "device": dev.name,
               "stopped": bool(ctx.stop_requested)}
    ctx.save_json("summary.json", summary)
    ctx.info(f"stylised {len(times)} image(s), median {summary['seconds_per_image_median']:.2f} s per image "
             f"(first {times[0]:.2f} s, includes warm-up); style encoding {style_s:.2f} s")
    return summary
