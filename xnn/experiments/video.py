"""Video stylisation with AdaIN and temporal consistency (``configs/video.yaml``).

The input (a video file, or a folder of frames played at ``fps``) is stylised frame by frame in
order by :class:`xnn.video.stylize.VideoStylizer` and encoded into ``output`` in the run folder:
same frame count and frame rate, the size of ``image_size`` (or the input's), the input's audio.

Frames are encoded in segments of ``chunk_frames`` (``segments/NNNNNN.mp4``, named by their
first frame) that are joined, without re-encoding, into the output at the end and then removed.
A stop (Ctrl-C) closes the current segment and joins what is done into the output; ``--resume``
re-reads ``warmup_frames`` frames before the first missing one to restore the temporal state and
carries on.  With ``engine: ray`` each segment is a chunk stylised by a Ray actor after its own
warm-up frames (:mod:`xnn.engines.ray`).
"""
from __future__ import annotations

import pathlib
import statistics
import time

import numpy

from ..config import Field, read_yaml
from ..errors import XnnError
from ..video.stylize import TEMPORAL_MODES
from .. import engines
from ..style.feedforward import AdaINJob, load_styles, weight_files
from . import adain
from .base import blend_weights, engine_fields, stylisation_fields

KIND = "video"

#: keys that may change on --resume (they do not change the frames)
RESUMABLE = ("device", "engine", "ray_address", "ray_actors", "ray_wait_s", "batch_size", "save_frames",
             "chunk_frames")


def _output_problem(name: str):
    from ..video.io import CONTAINERS
    p = pathlib.PurePath(name)
    if p.is_absolute() or ".." in p.parts or p.suffix.lower() not in CONTAINERS:
        return f"must be a file name inside the run folder ending in {', '.join(CONTAINERS)}"
    return None


SCHEMA = {
    "input": Field("path", "examples/coffee_pan.mp4", "a video file (.mp4 .m4v .mov .mkv .webm .avi .gif) or a "
                   "folder of frames (.png .jpg ..., sorted by name, one size)"),
    "fps": Field("float", 24.0, "frame rate of a folder of frames (a video keeps its own)", gt=0, max=1000),
    **{k: f for k, f in stylisation_fields("").items() if k in ("style_image", "style_blend_weights",
                                                                 "original_colors")},
    "alpha": adain.SCHEMA["alpha"],
    "image_size": Field("int", 512, "longer side of the output frames, both sides rounded to even numbers as video "
                        "codecs want; null keeps the input's size", min=16, max=8192, nullable=True),
    "style_size": adain.SCHEMA["style_size"],
    "weights": adain.SCHEMA["weights"],
    "temporal": Field("str", "flow", "none: each frame on its own; stats: smooth the content statistics over "
                      "frames; flow: also blend in the previous output along the optical flow", choices=TEMPORAL_MODES),
    "flow_weight": Field("float", 0.7, "temporal: flow: share of the previous output kept where the flow is "
                         "consistent (higher: steadier, softer)", min=0, max=0.95),
    "stats_momentum": Field("float", 0.8, "temporal: stats / flow: how slowly the content statistics follow the "
                            "frames (0: not smoothed)", min=0, max=0.99),
    "batch_size": Field("int", 4, "frames per encoder / decoder pass", min=1, max=256),
    "output": Field("path", "output.mp4", "the video file in the run folder (.mp4 .m4v .mov .mkv: H.264; "
                    ".webm: VP9)", check=_output_problem),
    "save_frames": Field("bool", False, "also write every output frame as frames/NNNNNN.png"),
    **engine_fields("frames in order"),
    "chunk_frames": Field("int", 120, "frames per segment (and per Ray task)", min=1),
    "warmup_frames": Field("int", 8, "frames before a chunk (Ray) or a resume point that are stylised only to "
                           "carry the temporal state over", min=0),
}


def output_size(size, image_size):
    """(h, w) of the output frames: the longer side ``image_size``, both sides even; or ``size``."""
    h, w = size
    if image_size is None:
        return h, w
    scale = image_size / max(h, w)
    even = lambda v: max(2, 2 * round(v / 2))   # noqa: E731
    return even(h * scale), even(w * scale)


def _segments(folder: pathlib.Path):
    """[(first frame, frames, path)] of the finished segments that follow on from frame 0."""
    from ..video.io import probe
    found = []
    for p in sorted(folder.glob("[0-9]" * 6 + ".*")) if folder.is_dir() else []:
        try:
            found.append((int(p.stem), probe(p).frames, p))
        except XnnError:
            break
    done, out = 0, []
    for start, n, p in found:
        if start != done:
            break
        out.append((start, n, p))
        done += n
    return out


def prepare(cfg, device, resume_dir=None):
    def adain_job():
        blend = blend_weights(cfg)
        return AdaINJob(weight_files(cfg), load_styles(cfg), blend, dict(cfg))
    return prepare_source(cfg, device, resume_dir, adain_job)


def prepare_source(cfg, device, resume_dir, make_job):
    """The state :func:`run` takes for the config's input video and the job ``make_job()`` builds
    (after the input has been probed): every check before the run folder exists."""
    from ..models.adain import check_image_size
    from ..video.io import probe, require_av
    from ..video.temporal import require_cv2
    require_av()
    require_cv2()
    src = probe(cfg["input"], cfg["fps"])
    size = output_size(src.size, cfg["image_size"])
    check_image_size(*size, f"the frames of {src.path.name}")
    job = make_job()
    engine = engines.get(cfg["engine"])
    engine.check(cfg)
    done = []
    if resume_dir is not None:
        before = read_yaml(pathlib.Path(resume_dir) / "config.yaml")
        changed = [k for k in cfg if k not in RESUMABLE and before.get(k, cfg[k]) != cfg[k]]
        if changed:
            raise XnnError(f"--resume: {', '.join(changed)} changed; the frames done would not match the rest "
                           "(start a new run instead)")
        if (pathlib.Path(resume_dir) / "summary.json").is_file() and not (pathlib.Path(resume_dir) / "segments").is_dir():
            raise XnnError(f"--resume {resume_dir}: that run is complete")
        done = _segments(pathlib.Path(resume_dir) / "segments")
    return {"cfg": cfg, "source": src, "size": size, "engine": engine, "job": job,
            "stylizer": job.stylizer(device), "done": done}


def run(state, ctx):
    """Stylise ``state["source"]`` with ``state["job"]`` (an AdaINJob here, a FastStyleJob from the
    fast_style experiment) whose stylizer ``state["stylizer"]`` was built in prepare."""
    from ..video.io import SegmentWriter, join_segments
    cfg, src, size = state["cfg"], state["source"], state["size"]
    seg_dir = ctx.path("segments")
    seg_dir.mkdir(exist_ok=True)
    for tmp in seg_dir.glob(".*.tmp*"):   # a segment a crash left unfinished
        tmp.unlink()
    done = [(a, n) for a, n, _ in state["done"]]
    first = sum(n for _, n in done)
    ctx.keep_metrics(lambda r: r.get("frame", -1) < first)   # rows of frames whose segment was lost
    ctx.info(f"{src.describe()} -> {size[1]}x{size[0]}, temporal {cfg['temporal']}, engine {cfg['engine']}"
             + (f"; resuming at frame {first}" if first else ""))
    suffix = pathlib.PurePath(cfg["output"]).suffix
    bar = ctx.progress(src.frames, "video", unit="frame", initial=first)
    i, t0 = first, time.perf_counter()
    wanted = {t + d for t in _sample_times(src.frames) for d in (-1, 0)}
    state["kept"] = {}
    seg = seg_start = None
    engine = state["engine"]
    try:
        with engine.session(cfg, ctx.device):
            results = engine.frames(state["job"], src, size, first, ctx.device, lambda: ctx.stop_requested,
                                    state["stylizer"])
            for start, out, row in results:
                if seg is None or start != seg_start:       # a new chunk: a new segment
                    if seg is not None:
                        seg.close()
                        done.append((seg_start, seg.count))
                    seg, seg_start = SegmentWriter(seg_dir / f"{start:06d}{suffix}", src.fps, size), start
                seg.write(out)
                if i in wanted:
                    state["kept"][i] = out
                ctx.log(frame=i, **row)
                if cfg["save_frames"]:
                    ctx.save_image(f"frames/{i:06d}.png", out)
                i += 1
                bar.update(1)
    except XnnError as e:     # a frame that cannot be read: what is done before it is kept, then it is named
        failure = e
    except BaseException:
        if seg is not None:   # the frames of this segment are lost; the finished ones stay
            seg.abort()
        raise
    else:
        failure = None
    if seg is not None:
        seg.close()
        done.append((seg_start, seg.count))
    bar.close()
    seconds = time.perf_counter() - t0
    frames_done = sum(n for _, n in done)
    if frames_done == 0:
        raise failure or XnnError("no frame was stylised")
    parts = [seg_dir / f"{a:06d}{suffix}" for a, _ in done]
    join_segments(parts, ctx.path(cfg["output"]), src.fps, audio_from=src, frame_counts=[n for _, n in done])
    complete = frames_done == src.frames
    if complete:
        for p in parts:
            p.unlink()
        seg_dir.rmdir()
    summary = _summary(state, ctx, frames_done, i - first, seconds, complete)
    summary["frame_check"] = check = _frame_check(state, ctx, frames_done)
    if failure is not None:
        summary["error"] = str(failure)
    ctx.save_json("summary.json", summary)
    if failure is not None:
        raise XnnError(f"{failure}; frames 0-{frames_done - 1} are in {cfg['output']} (mend or replace that "
                       f"frame, then --resume {ctx.dir} goes on from frame {frames_done})")
    if not check["passed"]:
        raise XnnError(f"the output does not show its input: {check['problem']}; see frame_check in summary.json")
    ctx.info(f"{frames_done} of {src.frames} frames in {cfg['output']}; {summary['frames_per_s']:.2f} frames/s; "
             f"temporal error {_fmt(summary['temporal_error_mean'])}; frames checked against the input "
             f"(structure correlation at least {_fmt(check['structure_correlation_min'])})")
    return summary


#: an output frame whose edges correlate less than this with its input frame's does not show it.  Measured
#: (docs/benchmarks.md): stylised frames of their own input 0.26-0.86 on two real clips at 512 px
#: (0.78-0.9 on the example pan), 0.28-0.54 in the tests' 80 px clips; frames decoded into blocks from
#: the wrong place -0.2 to 0.19.
MATCH_THRESHOLD = 0.2
#: the run fails the check when at least this share of the judged samples (and at least 2) fail: one odd
#: frame is reported, a run of wrong frames (a segment decoded from the wrong place) is an error
MATCH_FAILING_SHARE = 0.05
#: how many frames, spread over the video, the check compares
MATCH_SAMPLES = 64


def _frame_check(state, ctx, frames_done):
    """Does each output frame show its input frame?  Both videos are decoded again from their start
    (no seek, so this is independent of how the run entered the input), and at up to MATCH_SAMPLES
    frames spread over the video the :func:`~xnn.video.temporal.structure_correlation` of output and
    input is measured (inputs with too little structure to judge are counted, not judged).  The check
    fails when the output does not hold exactly ``frames_done`` frames, or when at least 2 and at least
    MATCH_FAILING_SHARE of the judged samples correlate less than MATCH_THRESHOLD."""
    from ..video.io import probe, read_frames
    from ..video.temporal import structure_correlation
    src, size = state["source"], state["size"]
    out = probe(ctx.path(state["cfg"]["output"]))
    sampled = set(numpy.linspace(0, frames_done - 1, min(MATCH_SAMPLES, frames_done)).round().astype(int).tolist())
    scores, count = {}, 0
    for i, (a, b) in enumerate(zip(read_frames(out), read_frames(src, 0, frames_done, size))):
        count += 1
        if i in sampled:
            scores[i] = structure_correlation(a, b)
    measured = {i: c for i, c in scores.items() if c is not None}
    failing = sorted(i for i, c in measured.items() if c < MATCH_THRESHOLD)
    check = {"sampled": len(scores), "weak_inputs": len(scores) - len(measured), "threshold": MATCH_THRESHOLD,
             "frames_in_output": out.frames,
             "structure_correlation_min": min(measured.values(), default=None),
             "structure_correlation_median": statistics.median(measured.values()) if measured else None,
             "failing_frames": failing, "problem": None}
    if out.frames != frames_done or count != frames_done:
        check["problem"] = f"{out.frames} frames in {out.path.name}, {frames_done} stylised"
    elif len(failing) >= max(2, MATCH_FAILING_SHARE * len(measured)):
        worst = min(failing, key=measured.get)
        check["problem"] = (f"{len(failing)} of {len(measured)} sampled frames do not match their input frames "
                            f"(from frame {failing[0]}; frame {worst}: structure correlation {measured[worst]:.2f}, "
                            f"at least {MATCH_THRESHOLD} expected)")
    check["passed"] = check["problem"] is None
    return check


def _fmt(v):
    return "n/a" if v is None else f"{v:.2f}"


def _summary(state, ctx, frames_done, frames_now, seconds, complete):
    cfg, src = state["cfg"], state["source"]
    last = {}
    for r in ctx.read_metrics():
        if "frame" in r and r["frame"] < frames_done:
            last[r["frame"]] = r
    errors = [r["temporal_error"] for r in last.values() if r.get("temporal_error") is not None]
    summary = {"frames": frames_done, "frames_in_input": src.frames, "complete": complete,
               "fps": float(src.fps), "size": list(state["size"]), "temporal": cfg["temporal"],
               "engine": cfg["engine"], "device": ctx.device.name,
               "seconds": seconds, "frames_per_s": frames_now / seconds if seconds > 0 else 0.0,
               "temporal_error_mean": statistics.fmean(errors) if errors else None,
               "temporal_error_median": statistics.median(errors) if errors else None,
               "scene_cuts": sum(1 for r in last.values() if r.get("scene_cut")),
               "stopped": bool(ctx.stop_requested) and not complete}
    summary["samples"] = _summary_strip(state, ctx, frames_done)
    return summary


def _sample_times(frames: int) -> list:
    """The frames summary.png shows (each with the one before it)."""
    return sorted({max(1, min(frames - 1, round(frames * q))) for q in (0.25, 0.5, 0.75)}) if frames > 1 else []


def _summary_strip(state, ctx, frames_done):
    """summary.png: at three times t, the input, the per-frame (none) and this run's output, and
    their flicker maps |out_t - warp(out_t-1)| (x4) on flow-consistent pixels; the same numbers."""
    import dataclasses
    from ..data.images import side_by_side
    from ..video.io import probe, read_frames
    from ..video.temporal import Flow, grey, temporal_error, warp
    cfg, job, size = state["cfg"], state["job"], state["size"]
    if frames_done < 2:
        return []
    times = [t for t in _sample_times(state["source"].frames) if t < frames_done] or [frames_done - 1]
    kept = state.get("kept", {})
    out_src = None   # the output video is read only for frames made before a --resume
    score = job.style_score(state["stylizer"])          # None: the job has no style measure
    per_frame = dataclasses.replace(job, cfg={**job.cfg, "temporal": "none"})
    rows, samples = [], []
    flow = Flow()
    for t in times:
        inputs = list(read_frames(state["source"], t - 1, t + 1, size))
        # this run's frames as they were made; frames made before a --resume from the video file
        in_memory = t - 1 in kept and t in kept
        if not in_memory and out_src is None:
            out_src = probe(ctx.path(cfg["output"]))
        outs = [kept[t - 1], kept[t]] if in_memory else list(read_frames(out_src, t - 1, t + 1))
        nones = [out for out, _ in per_frame.video_stylizer(ctx.device, state["stylizer"]).process(inputs)]
        backward, mask = flow.between(grey(inputs[0]), grey(inputs[1]))
        sample = {"frame": t, "consistent_fraction": float(mask.mean()), "output_from_video": not in_memory}
        panels, titles = [inputs[1]], [f"input, frame {t}"]
        for name, pair in (("none", nones), (cfg["temporal"], outs)) if cfg["temporal"] != "none" else \
                (("none", outs),):
            err = temporal_error(pair[0], pair[1], backward, mask)
            sample[f"temporal_error_{name}"] = err
            if score is not None:
                sample[f"style_loss_{name}"] = score(pair[1])
            flicker = numpy.abs(pair[1].astype(numpy.float32) - warp(pair[0].astype(numpy.float32), backward))
            flicker = (numpy.clip(flicker.mean(axis=2) * 4, 0, 255) * mask).astype(numpy.uint8)
            flicker = numpy.repeat(flicker[:, :, None], 3, axis=2)
            panels += [pair[1], flicker]
            titles += [name, f"{name}: flicker x4 ({_fmt(err)})"]
        if score is not None:
            sample["style_loss_input"] = score(inputs[1])
        if score is not None and cfg["temporal"] != "none":
            photo = sample["style_loss_input"]   # how far from the photo towards the per-frame output this run goes
            none, this = sample["style_loss_none"], sample[f"style_loss_{cfg['temporal']}"]
            sample["stylisation_kept"] = (photo - this) / (photo - none) if photo > none else None
        samples.append(sample)
        rows.append(side_by_side(panels, titles=titles, height=min(288, size[0])))
    width = max(r.shape[1] for r in rows)
    rows = [numpy.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    ctx.save_image("summary.png", numpy.concatenate(rows, axis=0))
    return samples

