"""Train a fast style network (Johnson et al. 2016) for one style on a folder of photos.

Each iteration draws ``batch_size`` random square crops (several scales, flipped at random),
runs them through the transformer network, scores the outputs with the perceptual objective
(xnn.style.perceptual: a frozen VGG19, content against the photos, style against the style
image's Grams) and takes one Adam step on the network's parameters.  The run folder gets
model.npz (the latest network: every ``checkpoint_iter``, at a stop and at the end), previews of
held-out photos, losses.png and metrics.jsonl; ``--resume`` continues from model.npz and
train_state.npz.
"""
from __future__ import annotations

import math
import time

import numpy

from ..config import Field
from ..data_parallel import DataParallel, default_parts, sum_by_key
from ..errors import XnnError
from ..files import read_npz, require_keys, save_npz
from ..models.vgg import check_input_size, deepest_layer, unknown_layers_problem as _layers_ok

KIND = "train_style"

SCHEMA = {
    "dataset": Field("path", "kodak", "a folder of content photos (COCO train2014 is the papers'), or kodak: the "
                     "24 Kodak photos (downloaded into $XNN_HOME on first use)"),
    "hold_out": Field("int", 4, "the first N photos (sorted by name) are never trained on: the previews", min=1,
                      max=16),
    "style_image": Field("path", "examples/starry_night.jpg", "the style to learn"),
    "style_size": Field("int", 256, "longer side the style image is resized to (the scale of its strokes); "
                        "null keeps its size", min=16, max=4096, nullable=True),
    "width": Field("float", 0.5, "network width: 1 is the papers' 1.7 M parameters, 0.5 (the CPU default) "
                   "0.42 M", gt=0, max=4),
    "image_size": Field("int", 128, "side of the square training crops (a multiple of 4; 256 is the papers')",
                        min=32, max=1024, check=lambda v: None if v % 4 == 0 else "must be a multiple of 4"),
    "crop_scale": Field("list[float]", [0.25, 0.5], "crops take a random square of [min, max] times a photo's "
                        "shorter side, resized to image_size: the scale at which the network learns to paint (the "
                        "default matches applying it at about 512 px to a photo of a few hundred pixels or more)",
                        check=lambda v: None if len(v) == 2 and 0 < v[0] <= v[1] <= 1 else "[min, max] with "
                        "0 < min <= max <= 1"),
    "batch_size": Field("int", 4, "crops per step", min=1),
    "num_iterations": Field("int", 6000, "Adam steps", min=1),
    "learning_rate": Field("float", 1e-3, "Adam step size", gt=0),
    "content_weight": Field("float", 1.0, "weight of the content loss (mean square feature difference)", min=0),
    "style_weight": Field("float", 2e5, "weight of the style loss (mean square difference of Grams normalised "
                          "by C*H*W, each layer's divided by its target's mean square with style_normalisation: "
                          "target)", min=0),
    "style_normalisation": Field("str", "target", "none: each style layer's Gram error as it comes (Johnson et al.); "
                                 "target: divided by its target's mean square, so every layer counts alike",
                                 choices=("none", "target")),
    "tv_weight": Field("float", 0.0, "weight of the total-variation smoothness loss", min=0),
    "content_layers": Field("str|list[str]", ["relu2_2"], "VGG19 layers of the content loss", check=_layers_ok),
    "style_layers": Field("str|list[str]", ["relu1_2", "relu2_2", "relu3_4", "relu4_4"],
                          "VGG19 layers of the style loss", check=_layers_ok),
    "weights": Field("str", "vgg19-imagenet-notop", "VGG19 weights of the loss network: a registered name or a path"),
    "print_iter": Field("int", 10, "log the mean losses every N iterations", min=1),
    "preview_iter": Field("int", 250, "stylise the held-out photos every N iterations (previews/)", min=1),
    "preview_size": Field("int", 512, "longer side of the preview photos (the size a result is usually made at)",
                          min=32, max=2048),
    "parts": Field("int|auto", "auto", "cut each batch into this many parts, run side by side on the CPU's cores "
                   "through twins of the network and of VGG19 (the same step up to float rounding); auto: one per "
                   "core on the CPU, 1 on a GPU", min=1),
    "checkpoint_iter": Field("int", 500, "write model.npz and train_state.npz every N iterations", min=1),
}


def _style_image(cfg):
    from ..data.images import load_image, resize_longer_side
    style = load_image(cfg["style_image"])
    if cfg["style_size"]:
        style = resize_longer_side(style, cfg["style_size"])
    check_input_size(*style.shape[:2], deepest_layer(cfg["style_layers"]), f"style image {cfg['style_image']}")
    return style


def prepare(cfg, device, resume_dir=None):
    from ..data.images import resize_longer_side
    from ..data.photos import PhotoFolder, kodak_folder
    from ..models import fast_style, vgg19
    from ..style.perceptual import PerceptualObjective

    check_input_size(cfg["image_size"], cfg["image_size"], deepest_layer(cfg["content_layers"] +
                                                                         cfg["style_layers"]), "image_size")
    style = _style_image(cfg)
    folder = kodak_folder() if cfg["dataset"] == "kodak" else cfg["dataset"]
    photos = PhotoFolder(folder, hold_out=cfg["hold_out"], min_scale=cfg["crop_scale"][0],
                         max_scale=cfg["crop_scale"][1])
    previews = [(path.name, resize_longer_side(img, cfg["preview_size"]))
                for path, img in zip(photos.held_out, photos.held_out_images)]
    vgg = vgg19(weights=cfg["weights"], device=device, include_top=False)
    vgg.truncate(deepest_layer(cfg["content_layers"] + cfg["style_layers"]))
    objective = PerceptualObjective(vgg, cfg["content_layers"], cfg["style_layers"], cfg["content_weight"],
                                    cfg["style_weight"], cfg["tv_weight"], cfg["style_normalisation"])
    objective.set_style(vgg.preprocess(style))
    state = {"cfg": cfg, "photos": photos, "previews": previews, "style": style, "objective": objective,
             "net": fast_style.transformer(cfg["width"], seed=cfg["seed"]).to(device), "resume": None}
    if resume_dir is not None:
        model_path, state_path = resume_dir / "model.npz", resume_dir / "train_state.npz"
        if not state_path.exists():
            raise XnnError(f"--resume {resume_dir}: no train_state.npz there (it is written every checkpoint_iter "
                           "iterations and when a run is stopped); start it again instead")
        net, width = fast_style.load_model(model_path, device)
        if width != cfg["width"]:
            raise XnnError(f"--resume {resume_dir}: its model has width {width:g} but the config says "
                           f"{cfg['width']:g}; keep width as it was")
        st = read_npz(state_path, "training state")
        require_keys(st, ("iteration", "elapsed_s"), "training state", state_path)
        state["net"], state["resume"] = net, st
    state["net"]["conv1"].needs_input_grad = False     # nothing upstream of the photos to train
    return state


def make_twins(net, objective, parts: int) -> DataParallel:
    """The network and the objective for ``parts`` parts of each batch (:class:`xnn.DataParallel`):
    the given pair first, then twins that share the network's weights and the objective's targets
    (``replica()``), with caches of their own."""
    return DataParallel(net, objective, parts)


def train_step(net, objective, opt, x, twins=None) -> dict:
    """One step on a batch of photos x (N, 3, H, W), 0..255 RGB on the device: y = net(x), the
    objective's terms and dL/dy, backward through the network, one optimiser step.  Returns the
    terms (0-d device arrays, before the step).

    ``twins`` (:func:`make_twins`) cuts the batch into one part per pair, run side by side on the
    device's workers (on the CPU: whole layers a core instead of each layer in bands).  Part k of
    n_k photos weighs its mean terms (content, style) by n_k / N and its TV (a sum) by 1, so the
    parts' terms and weight gradients add up to the whole batch's (tested in float64)."""
    twins = make_twins(net, objective, 1) if twins is None else twins
    n = x.shape[0]

    def run(part_net, part_objective, a, b):
        y = part_net.forward(x[a:b])
        terms, dy = part_objective.loss_and_grad(y, x[a:b], (b - a) / n)
        part_net.backward(dy)
        return terms, part_net.grads

    results = twins.map_parts(run, n)
    opt.step(sum_by_key(r[1] for r in results))
    return sum_by_key(r[0] for r in results)


def _save(ctx, net, cfg, opt, iteration, elapsed_s):
    """model.npz (a usable model) and train_state.npz (Adam's moments, the iteration), both atomic."""
    from ..models.fast_style import save_model
    save_model(net, cfg["width"], ctx.path("model.npz"))
    st = {f"adam/{k}": v for k, v in opt.state_dict().items()}
    st.update(iteration=numpy.asarray(iteration), elapsed_s=numpy.asarray(elapsed_s))
    save_npz(ctx.path("train_state.npz"), st)


def _preview(ctx, net, previews, iteration):
    """Stylise the held-out photos; previews/iter_NNNNN.png and preview.png (the latest)."""
    from ..data.images import side_by_side
    from ..models.fast_style import stylise
    outs = [stylise(net, img) for _, img in previews]
    grid = side_by_side([(o * 255).round().astype(numpy.uint8) for o in outs],
                        titles=[f"{name}, iteration {iteration}" for name, _ in previews],
                        height=max(o.shape[0] for o in outs))
    ctx.path("previews").mkdir(exist_ok=True)
    ctx.save_image(f"previews/iter_{iteration:05d}.png", grid)
    ctx.save_image("preview.png", grid)
    return outs


def run(state, ctx):
    from ..models.fast_style import to_input
    from ..optim import Adam
    from ..style.losses import losses_to_host

    cfg, net, obj, photos, dev = state["cfg"], state["net"], state["objective"], state["photos"], ctx.device
    opt = Adam(net.trainable_params(), cfg["learning_rate"])
    parts = default_parts(dev) if cfg["parts"] == "auto" else cfg["parts"]
    twins = make_twins(net, obj, min(parts, cfg["batch_size"]))
    start, elapsed_before = 0, 0.0
    if state["resume"] is not None:
        st = state["resume"]
        start, elapsed_before = int(st["iteration"]), float(st["elapsed_s"])
        try:
            opt.load_state_dict({k[5:]: v for k, v in st.items() if k.startswith("adam/")})
        except (KeyError, ValueError) as e:
            raise XnnError(f"--resume: the optimiser state in train_state.npz does not fit this network "
                           f"({type(e).__name__}: {e}); keep width as it was") from None
        ctx.keep_metrics(lambda r: r.get("iter", 0) <= start)
        ctx.info(f"resuming at iteration {start}")
    total = cfg["num_iterations"]
    bar = ctx.progress(total, "train", unit="it", initial=start)
    t0 = time.perf_counter()
    sums, n_sum, t_row, shown = None, 0, time.perf_counter(), {}
    stopped, it = False, start

    def elapsed():
        return elapsed_before + time.perf_counter() - t0

    while it < total:
        if ctx.stop_requested:
            stopped = True
            break
        rng = numpy.random.default_rng([cfg["seed"], it])            # batch it is the same on a resume
        terms = train_step(net, obj, opt, to_input(photos.batch(cfg["batch_size"], cfg["image_size"], rng), dev), twins)
        it += 1
        sums = dict(terms) if sums is None else {k: sums[k] + v for k, v in terms.items()}
        n_sum += 1
        if it % cfg["print_iter"] == 0 or it == total:
            host = {k: v / n_sum for k, v in losses_to_host(sums).items()}      # one device sync per row
            if not math.isfinite(host["total"]):
                raise XnnError(f"training diverged at iteration {it}: the loss is {host['total']}; lower "
                               "learning_rate or the loss weights")
            now = time.perf_counter()
            ctx.log(iter=it, content_loss=host["content"], style_loss=host["style"], tv_loss=host["tv"],
                    total_loss=host["total"], elapsed_s=elapsed(),
                    images_per_s=n_sum * cfg["batch_size"] / (now - t_row), skipped=len(photos.skipped))
            shown = {"loss": host["total"], "style": host["style"], "content": host["content"]}
            sums, n_sum, t_row = None, 0, now
        if it % cfg["preview_iter"] == 0 or it == total:
            _preview(ctx, net, state["previews"], it)
            shown["preview"] = str(ctx.path("preview.png"))
            if len(ctx.read_metrics()) > 1:
                _plot(ctx)
        if it % cfg["checkpoint_iter"] == 0 and it < total:
            _save(ctx, net, cfg, opt, it, elapsed())
        bar.update(1, **shown)
    bar.close()
    _save(ctx, net, cfg, opt, it, elapsed())
    if stopped:
        ctx.info(f"stopped at iteration {it}; model.npz and train_state.npz are saved (continue with --resume)")
    outs = _preview(ctx, net, state["previews"], it)
    if len(ctx.read_metrics()) > 1:
        _plot(ctx)
    _summary_image(ctx, state, outs)
    rows = [r for r in ctx.read_metrics() if "iter" in r]
    run_s = elapsed()
    summary = {"iterations": it, "stopped": stopped, "train_time_s": run_s,
               "seconds_per_iteration": (run_s - elapsed_before) / (it - start) if it > start else None,
               "final_losses": {k: rows[-1][k] for k in ("content_loss", "style_loss", "tv_loss", "total_loss")}
               if rows else None,
               "photos": len(photos), "held_out": [name for name, _ in state["previews"]],
               "skipped_files": photos.skipped, "width": cfg["width"], "device": dev.name, "parts": twins.parts,
               "model": str(ctx.path("model.npz"))}
    ctx.save_json("summary.json", summary)
    if photos.skipped:
        ctx.info(f"skipped {len(photos.skipped)} unreadable file(s) in the dataset, e.g. {photos.skipped[0]}")
    ctx.info(f"{it} iterations in {run_s:.0f} s; wrote {ctx.path('model.npz')} (apply it with "
             f"configs/fast_style.yaml: model={ctx.path('model.npz')})")
    return summary


def _plot(ctx):
    ctx.plot("losses.png", "iter", {"total (log)": ["total_loss"],
                                     "terms (log)": ["content_loss", "style_loss", "tv_loss"]},
             title="fast style network: training losses")


def _summary_image(ctx, state, outs):
    """Two rows: the style and the held-out photos; a blank and their stylisations."""
    from ..data.images import side_by_side
    height = min(256, outs[0].shape[0])
    style = state["style"]
    blank = numpy.full_like(style, 255)
    top = side_by_side([style] + [img for _, img in state["previews"]], height=height,
                       titles=["style"] + [f"held out: {n}" for n, _ in state["previews"]])
    bottom = side_by_side([blank] + [(o * 255).round().astype(numpy.uint8) for o in outs], height=height,
                          titles=[" "] + ["stylised"] * len(outs))
    ctx.save_image("summary.png", numpy.concatenate([top, numpy.full((8,) + top.shape[1:], 255, numpy.uint8),
                                                     bottom]))
