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
from .base import blend_weights, engine_fields, stylisation_fields, tile_size_field

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
    **engine_fields("images one after another"),
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
    from ..data.images import load_image
    return sized_content(load_image(path), cfg, path)


def sized_content(content, cfg, name):
    """A decoded content image resized to the config's image_size and checked for size."""
    from ..data.images import resize_longer_side
    from ..models.adain import check_image_size
    if cfg["image_size"]:
        content = resize_longer_side(content, cfg["image_size"])
    check_image_size(*content.shape[:2], f"content image {name}")
    return content


def stylise_content(st, content, target, cfg):
    """(float output image, seconds, tile side) of one sized content image: AdaIN to ``target``
    (blended StyleStats), tiled when cfg's tile_size says so, original colours if asked.  The
    one path of engine: local and of the Ray actors."""
    from ..data.images import transfer_luminance
    t = time.perf_counter()
    tile = tile_for(*content.shape[:2], cfg["tile_size"], st.device.memory_available()) if cfg["tile_size"] else None
    out = st.stylize(content, target, alpha=cfg["alpha"], tile_size=tile)
    seconds = time.perf_counter() - t
    if cfg["original_colors"]:
        out = transfer_luminance(content / 255.0, out)
    return out, seconds, tile


def output_suffix(name) -> str:
    """A batch output keeps its input's suffix when it is .png / .jpg / .jpeg, else becomes .png."""
    suffix = pathlib.PurePath(name).suffix
    return suffix if suffix.lower() in (".png", ".jpg", ".jpeg") else ".png"


def load_styles(cfg) -> list:
    """The config's style images, resized to style_size and checked (uint8 HxWx3 each)."""
    from ..data.images import load_image, resize_longer_side
    from ..models.adain import check_image_size
    style_imgs = [load_image(p) for p in cfg["style_image"]]
    if cfg["style_size"]:
        style_imgs = [resize_longer_side(s, cfg["style_size"]) for s in style_imgs]
    for path, s in zip(cfg["style_image"], style_imgs):
        check_image_size(*s.shape[:2], f"style image {path}")
    return style_imgs


def weight_files(cfg) -> tuple:
    """(encoder, decoder) weights as adain_encoder / adain_decoder take them, checked."""
    if cfg["weights"] == "adain":
        return "adain", "adain"
    folder = pathlib.Path(cfg["weights"])
    enc_w, dec_w = folder / ENCODER_FILE, folder / DECODER_FILE
    for f in (enc_w, dec_w):
        if not f.is_file():
            raise XnnError(f"config: weights = {cfg['weights']!r}: {f} not found (give 'adain' or a folder "
                           f"with {ENCODER_FILE} and {DECODER_FILE})")
    return str(enc_w), str(dec_w)


def build_stylizer(weights, device):
    from ..models import AdaINStylizer, adain_decoder, adain_encoder
    enc_w, dec_w = weights
    return AdaINStylizer(adain_encoder(enc_w, device=device), adain_decoder(dec_w, device=device))


def prepare(cfg, device, resume_dir=None):
    if resume_dir is not None:
        raise XnnError("adain runs take seconds and have nothing to resume; start a new run")
    blend = blend_weights(cfg)
    files, batch = _contents(cfg["content_image"])
    if not batch:
        _load_content(files[0], cfg)  # fail now, before the run folder exists
    style_imgs = load_styles(cfg)
    weights = weight_files(cfg)
    if cfg["engine"] == "ray" and batch:
        from ..ray_engine import check_address, ray_address, require_ray
        require_ray()
        check_address(ray_address(cfg))
    stylizer = build_stylizer(weights, device)
    return {"cfg": cfg, "stylizer": stylizer, "files": files, "batch": batch, "styles": style_imgs, "blend": blend,
            "weights": weights}


def _output_name(f, batch, cfg) -> str:
    if not batch:
        return cfg["output_image"]
    return f"outputs/{f.stem}{output_suffix(f)}"


def _local_results(state, ctx, target):
    """(file, float output image, seconds, tile side) per content image, stylised here."""
    cfg, st = state["cfg"], state["stylizer"]
    for f in state["files"]:
        if ctx.stop_requested:
            state["stopped"] = True     # images left undone
            return
        try:
            content = _load_content(f, cfg)
        except XnnError as e:
            if not state["batch"]:
                raise
            ctx.info(f"skipping {f.name}: {e}")
            continue
        yield (f,) + stylise_content(st, content, target, cfg)


def _ray_results(state, ctx):
    """The same for a folder on Ray Data: (file, output file bytes, seconds, None), in order."""
    from ..ray_engine import ray_session, stylise_images
    with ray_session(state["cfg"], ctx.device):
        results = stylise_images(state["cfg"], ctx.device, state["files"], state["weights"], state["styles"],
                                 state["blend"])
        for seen, (path, data, error, seconds, _) in enumerate(results, 1):
            if error:
                ctx.info(f"skipping {pathlib.Path(path).name}: {error}")
            else:     # a result that has arrived is kept, also when a stop came in meanwhile
                yield pathlib.Path(path), data, seconds, None
            if ctx.stop_requested:
                state["stopped"] = seen < len(state["files"])
                return


def run(state, ctx):
    from ..data.images import decode_image, side_by_side
    from ..files import write_bytes
    from ..layers.adain import blend_stats
    from ..models.adain import StyleStats
    cfg, st = state["cfg"], state["stylizer"]
    dev = ctx.device
    t0 = time.perf_counter()
    stats = [st.encode_style(s) for s in state["styles"]]
    dev.synchronize()
    style_s = time.perf_counter() - t0
    files, batch = state["files"], state["batch"]
    if batch:
        ctx.path("outputs").mkdir(exist_ok=True)
    on_ray = batch and cfg["engine"] == "ray"
    bar = ctx.progress(len(files), "adain" + (" on ray" if on_ray else ""), unit="img") if batch else None
    times, first = [], None
    t_all = time.perf_counter()
    target = StyleStats(*blend_stats(stats, state["blend"]))
    for f, out, seconds, tile in (_ray_results(state, ctx) if on_ray else _local_results(state, ctx, target)):
        times.append(seconds)
        name = _output_name(f, batch, cfg)
        if isinstance(out, bytes):      # encoded by a Ray actor
            write_bytes(ctx.path(name), out)
            out = decode_image(out, name)
        else:
            ctx.save_image(name, out)
        ctx.log(image=f.name, output=name, seconds=seconds, size=list(out.shape[:2]), tile_size=tile)
        if first is None:
            first = (f, out)
        if bar is not None:
            bar.update(1, s_per_img=seconds)
    wall_s = time.perf_counter() - t_all
    if bar is not None:
        bar.close()
    if first is None:
        raise XnnError("no image could be stylised")
    content, out = _load_content(first[0], cfg), first[1]
    panels = [content] + state["styles"] + [out if out.dtype == numpy.uint8 else (out * 255).round().astype(numpy.uint8)]
    titles = ["content"] + [f"style {i + 1}" if len(stats) > 1 else "style" for i in range(len(stats))] + ["result"]
    ctx.save_image("summary.png", side_by_side(panels, titles=titles, height=min(384, out.shape[0])))
    summary = {"images": len(times), "seconds_per_image_median": statistics.median(times),
               "seconds_per_image_mean": sum(times) / len(times),
               "seconds_first_image": times[0], "style_encoding_s": style_s, "alpha": cfg["alpha"],
               "output_size": list(out.shape[:2]), "device": dev.name, "engine": "ray" if on_ray else "local",
               "wall_s": wall_s, "images_per_s": len(times) / wall_s if wall_s > 0 else None,
               "stopped": state.get("stopped", False)}
    ctx.save_json("summary.json", summary)
    ctx.info(f"stylised {len(times)} image(s), median {summary['seconds_per_image_median']:.2f} s per image "
             f"(first {times[0]:.2f} s, includes warm-up); style encoding {style_s:.2f} s")
    return summary
