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

from .. import engines
from ..config import Field
from ..errors import XnnError
from ..style.feedforward import AdaINJob, build_stylizer, load_styles, output_suffix, sized_content, weight_files
from .base import blend_weights, engine_fields, stylisation_fields, tile_size_field

KIND = "adain"

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


def _contents(path):
    from ..data.images import IMAGE_SUFFIXES, image_files
    p = pathlib.Path(path)
    if p.is_dir():
        files = image_files(p)
        if not files:
            raise XnnError(f"content_image folder {p} has no images ({', '.join(IMAGE_SUFFIXES)})")
        return files, True
    return [p], False


def _load_content(path, cfg):
    """A content image, resized as the config says and checked for size."""
    from ..data.images import load_image
    return sized_content(load_image(path), cfg, path)


def prepare(cfg, device, resume_dir=None):
    if resume_dir is not None:
        raise XnnError("adain runs take seconds and have nothing to resume; start a new run")
    blend = blend_weights(cfg)
    files, batch = _contents(cfg["content_image"])
    if not batch:
        _load_content(files[0], cfg)  # fail now, before the run folder exists
    style_imgs = load_styles(cfg)
    weights = weight_files(cfg)
    engine = engines.get(cfg["engine"] if batch else "local")   # one image: no pool to start
    engine.check(cfg)
    return {"cfg": cfg, "stylizer": build_stylizer(weights, device), "files": files, "batch": batch,
            "styles": style_imgs, "engine": engine, "job": AdaINJob(weights, style_imgs, blend, dict(cfg))}


def _output_name(f, batch, cfg) -> str:
    if not batch:
        return cfg["output_image"]
    return f"outputs/{f.stem}{output_suffix(f)}"


def _results(state, ctx, target):
    """(file, output image or file bytes, seconds, tile side) per content image, from the engine, in
    order.  A result that has arrived is kept, also when a stop came in meanwhile; ``state["stopped"]``
    says whether images were left undone."""
    cfg, engine = state["cfg"], state["engine"]
    seen = 0
    with engine.session(cfg, ctx.device):
        for r in engine.images(state["job"], state["files"], ctx.device, lambda: ctx.stop_requested,
                               (state["stylizer"], target)):
            seen += 1
            if r.error:
                if not state["batch"]:
                    raise XnnError(r.error)
                ctx.info(f"skipping {pathlib.Path(r.path).name}: {r.error}")
            else:
                yield pathlib.Path(r.path), (r.data if r.image is None else r.image), r.seconds, r.tile
            if ctx.stop_requested:
                break
    state["stopped"] = ctx.stop_requested and seen < len(state["files"])


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
    target = StyleStats(*blend_stats(stats, state["job"].blend))
    for f, out, seconds, tile in _results(state, ctx, target):
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
