"""Apply a trained fast style network (a model.npz from ``configs/train_fast_style.yaml``) to one
image, a folder of images, or a video: one forward pass per picture.

A folder gives outputs/ with one output per input (same names), through the engine the config
names (``local`` or ``ray``); a video file goes through the video experiment's machinery (its
segments, temporal modes, resume and frame check) with the network in place of AdaIN.
"""
from __future__ import annotations

import pathlib
import statistics
import time

import numpy

from .. import engines
from ..config import Field
from ..errors import XnnError
from ..style.feedforward import FastStyleJob
from . import video
from .base import engine_fields, stylisation_fields

KIND = "fast_style"

#: inputs with these suffixes are videos; anything else is an image (or a folder of images)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif")


def _temporal_problem(v):
    return "stats smooths AdaIN's statistics; a network's video takes none or flow" if v == "stats" else None


SCHEMA = {
    "input": Field("path", "examples/chelsea.png", "an image, a folder of images (outputs/ gets one output per "
                   "input, same names) or a video (" + " ".join(VIDEO_SUFFIXES) + ")"),
    "model": Field("path", "examples/models/starry_night.npz", "a trained network's model.npz (from "
                   "configs/train_fast_style.yaml)"),
    "image_size": Field("int", 512, "longer side of the output; null keeps the input's size (videos: both sides "
                        "rounded to even numbers)", min=16, max=16384, nullable=True),
    "original_colors": stylisation_fields("")["original_colors"],
    "output_image": stylisation_fields("")["output_image"],
    "output": video.SCHEMA["output"],
    "fps": video.SCHEMA["fps"],
    "temporal": Field("str", "flow", "videos: none (each frame on its own) or flow (blend in the previous output "
                      "along the optical flow)", choices=("none", "flow", "stats"), check=_temporal_problem),
    "flow_weight": video.SCHEMA["flow_weight"],
    "batch_size": Field("int", 4, "videos: frames per network pass", min=1, max=256),
    "save_frames": video.SCHEMA["save_frames"],
    **engine_fields("images or frames in order"),
    "chunk_frames": video.SCHEMA["chunk_frames"],
    "warmup_frames": video.SCHEMA["warmup_frames"],
}


def _is_video(path) -> bool:
    return pathlib.Path(path).suffix.lower() in VIDEO_SUFFIXES


def _model(cfg) -> str:
    path = pathlib.Path(cfg["model"])
    if not path.is_file():
        raise XnnError(f"model {path} not found (train one with configs/train_fast_style.yaml; it writes "
                       "model.npz in its run folder)")
    return str(path)


def prepare(cfg, device, resume_dir=None):
    from ..data.images import IMAGE_SUFFIXES, image_files, load_image
    from ..style.feedforward import sized_content
    model = _model(cfg)
    if _is_video(cfg["input"]):
        state = video.prepare_source(cfg, device, resume_dir, lambda: FastStyleJob(model, dict(cfg)))
        state["video"] = True
        return state
    if resume_dir is not None:
        raise XnnError("fast_style runs on images take seconds and have nothing to resume; start a new run")
    p = pathlib.Path(cfg["input"])
    if p.is_dir():
        files, batch = image_files(p), True
        if not files:
            raise XnnError(f"input folder {p} has no images ({', '.join(IMAGE_SUFFIXES)})")
    else:
        files, batch = [p], False
        sized_content(load_image(p), cfg, p)            # fail now, before the run folder exists
    job = FastStyleJob(model, dict(cfg))
    engine = engines.get(cfg["engine"] if batch else "local")
    engine.check(cfg)
    return {"cfg": cfg, "job": job, "stylizer": job.stylizer(device), "files": files, "batch": batch,
            "engine": engine, "video": False}


def run(state, ctx):
    if state["video"]:
        return video.run(state, ctx)
    from ..data.images import decode_image, load_image, side_by_side
    from ..files import write_bytes
    from ..style.feedforward import output_suffix, sized_content
    cfg, files, batch, engine = state["cfg"], state["files"], state["batch"], state["engine"]
    if batch:
        ctx.path("outputs").mkdir(exist_ok=True)
    bar = ctx.progress(len(files), "fast_style", unit="img") if batch else None
    times, first, stopped = [], None, False
    t_all = time.perf_counter()
    with engine.session(cfg, ctx.device):
        for r in engine.images(state["job"], files, ctx.device, lambda: ctx.stop_requested, state["stylizer"]):
            f = pathlib.Path(r.path)
            if r.error:
                if not batch:
                    raise XnnError(r.error)
                ctx.info(f"skipping {f.name}: {r.error}")
                continue
            name = f"outputs/{f.stem}{output_suffix(f)}" if batch else cfg["output_image"]
            if r.image is None:                    # encoded by a Ray actor
                write_bytes(ctx.path(name), r.data)
                out = decode_image(r.data, name)
            else:
                out = r.image
                ctx.save_image(name, out)
            times.append(r.seconds)
            ctx.log(image=f.name, output=name, seconds=r.seconds, size=list(out.shape[:2]))
            first = first or (f, out)
            if bar is not None:
                bar.update(1, s_per_img=r.seconds)
            if ctx.stop_requested:
                stopped = len(times) < len(files)
                break
    wall_s = time.perf_counter() - t_all
    if bar is not None:
        bar.close()
    if first is None:
        raise XnnError("no image could be stylised")
    content, out = sized_content(load_image(first[0]), cfg, first[0]), first[1]
    out8 = out if out.dtype == numpy.uint8 else (out * 255).round().astype(numpy.uint8)
    ctx.save_image("summary.png", side_by_side([content, out8], titles=["content", "result"],
                                               height=min(384, out8.shape[0])))
    summary = {"images": len(times), "seconds_per_image_median": statistics.median(times),
               "seconds_first_image": times[0], "output_size": list(out8.shape[:2]), "model": cfg["model"],
               "device": ctx.device.name, "engine": cfg["engine"] if batch else "local", "wall_s": wall_s,
               "stopped": stopped}
    ctx.save_json("summary.json", summary)
    ctx.info(f"stylised {len(times)} image(s), median {summary['seconds_per_image_median']:.2f} s per image "
             f"(first {times[0]:.2f} s, includes warm-up)")
    return summary
