"""Neural style transfer (Gatys, Ecker & Bethge 2016) with the ImageNet VGG19 conv weights.

The image is optimised in the network's input space (RGB 0..255 minus the ImageNet mean)
with L-BFGS or Adam, one forward and ONE backward per evaluation through a frozen VGG19
cut at the deepest loss layer.  Key names follow jcjohnson/neural-style.
"""
from __future__ import annotations

import math
import time

import numpy

from ..config import Field
from ..errors import XnnError
from ..files import read_npz, require_keys, save_npz
from ..models.vgg import check_input_size, deepest_layer, unknown_layers_problem as _layers_ok
from .base import blend_weights, stylisation_fields

KIND = "style"

SCHEMA = {
    **stylisation_fields("the photo to repaint"),
    "image_size": Field("int", 512, "longer side of the output in pixels", min=16, max=16384),
    "style_scale": Field("float", 1.0, "style images are resized to image_size * style_scale", gt=0, max=8),
    "num_iterations": Field("int", 300, "optimiser iterations (0: only evaluate and save the start image)",
                            min=0),
    "optimizer": Field("str", "lbfgs", "lbfgs or adam", choices=("lbfgs", "adam")),
    "lbfgs_backend": Field("str", "auto", "scipy (L-BFGS-B on the host), device (L-BFGS on the array's "
                           "device, no host copies), auto (scipy on the CPU, device on the GPU)",
                           choices=("auto", "scipy", "device")),
    "learning_rate": Field("float", 10.0, "Adam step size in pixel units (0..255)", gt=0),
    "content_weight": Field("float", 1.0, "weight of the content loss", min=0),
    "style_weight": Field("float", 1000.0, "weight of the style loss", min=0),
    "tv_weight": Field("float", 10.0, "weight of the total-variation smoothness loss", min=0),
    "content_layers": Field("str|list[str]", ["relu4_2"], "VGG19 layers of the content loss", check=_layers_ok),
    "style_layers": Field("str|list[str]", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
                          "VGG19 layers of the style loss", check=_layers_ok),
    "init": Field("str", "image", "start from the content image or from noise", choices=("image", "random")),
    "init_image": Field("path", None, "start from this image instead (overrides init)", nullable=True),
    "pooling": Field("str", "max", "VGG pooling: max or avg", choices=("max", "avg")),
    "print_iter": Field("int", 10, "log losses every N iterations (0: only first and last)", min=0),
    "save_iter": Field("int", 100, "save an intermediate image and a checkpoint every N iterations (0: never)",
                       min=0),
    "weights": Field("str", "vgg19-imagenet-notop", "VGG19 weights: a registered name or a path"),
}

#: peak memory of a run = FIXED_BYTES + BYTES_PER_PIXEL * pixels: a line through the measured
#: peaks of the CPU runs at 512 px (1.14 GB) and 1024 px (3.33 GB), float32, layers to relu5_1
BYTES_PER_PIXEL = 4200
FIXED_BYTES = 400 * 2**20


def prepare(cfg, device, resume_dir=None):
    from ..data.images import load_image, longer_side_shape, resize_longer_side, resize_to
    from ..models import vgg19

    styles = cfg["style_image"]
    blend = blend_weights(cfg)
    content_raw = load_image(cfg["content_image"])
    style_raws = [load_image(p) for p in styles]
    # sizes first, then the checks, and only then the (slow for large sizes) resampling
    h, w = longer_side_shape(content_raw.shape[:2], cfg["image_size"])
    style_size = max(16, round(cfg["image_size"] * cfg["style_scale"]))
    style_shapes = [longer_side_shape(s.shape[:2], style_size) for s in style_raws]
    deepest = deepest_layer(cfg["content_layers"] + cfg["style_layers"])
    check_input_size(h, w, deepest, f"content image {cfg['content_image']}")  # the optimised image
    for path, (sh, sw) in zip(styles, style_shapes):
        check_input_size(sh, sw, deepest_layer(cfg["style_layers"]), f"style image {path}")
    _check_memory(device, (h, w), style_shapes, cfg)
    content = resize_longer_side(content_raw, cfg["image_size"])
    style_imgs = [resize_longer_side(s, style_size) for s in style_raws]
    init_img = None
    if cfg["init_image"]:
        init_img = resize_to(load_image(cfg["init_image"]), (h, w))

    vgg = vgg19(weights=cfg["weights"], device=device, include_top=False, pooling=cfg["pooling"])
    vgg.truncate(deepest)
    state = {"cfg": cfg, "vgg": vgg, "content": content, "styles": style_imgs, "blend": blend,
             "init_img": init_img, "checkpoint": None}
    if resume_dir is not None:
        path = resume_dir / "checkpoint.npz"
        if not path.exists():
            raise XnnError(f"--resume {resume_dir}: no checkpoint.npz there (it is written every save_iter "
                           "iterations and when a run is stopped)")
        ck = read_npz(path, "checkpoint")
        require_keys(ck, ("image", "iteration", "elapsed_s"), "checkpoint", path)
        if ck["image"].shape != (1, 3, h, w):
            raise XnnError(f"--resume {resume_dir}: the checkpoint image has shape {ck['image'].shape} but the "
                           f"config gives (1, 3, {h}, {w}); keep image_size and content_image as they were")
        ck["image"] = ck["image"].astype(numpy.float32)
        state["checkpoint"] = ck
    return state


def _check_memory(device, content_shape, style_shapes, cfg):
    """Refuse, before any resampling, a run whose largest image would not fit, naming its cause:
    the output (image_size) or a style image (image_size * style_scale)."""
    free = device.memory_available()
    if free is None:
        return
    candidates = [(content_shape, "image_size", f"image_size = {cfg['image_size']}", "the output")]
    candidates += [(shape, "style_scale", f"style_scale = {cfg['style_scale']:g} (with image_size = "
                    f"{cfg['image_size']})", f"style image {path} resized") for shape, path in zip(style_shapes, cfg["style_image"])]
    (h, w), key, setting, what = max(candidates, key=lambda c: c[0][0] * c[0][1])
    need = FIXED_BYTES + BYTES_PER_PIXEL * h * w
    if need > 0.9 * free:
        raise XnnError(f"{setting}: {what} to {h}x{w} px needs about {need / 2**30:.1f} GiB for one optimisation "
                       f"step but only {free / 2**30:.1f} GiB are free on the {device.name}; use a smaller {key}")


def run(state, ctx):
    from ..data.images import side_by_side
    from ..style import StyleTransferObjective, adam_minimize, lbfgs_device_minimize, lbfgs_minimize
    from ..style.losses import losses_to_host
    from ..optim import Adam

    cfg, vgg, dev = state["cfg"], state["vgg"], ctx.device
    obj = StyleTransferObjective(vgg, cfg["content_layers"], cfg["style_layers"],
                                 content_weight=cfg["content_weight"], style_weight=cfg["style_weight"],
                                 tv_weight=cfg["tv_weight"])
    content_x = vgg.preprocess(state["content"])
    obj.set_targets(content_x, [vgg.preprocess(s) for s in state["styles"]], state["blend"])
    lo = dev.asarray((0.0 - vgg.mean_rgb).reshape(1, 3, 1, 1).astype(numpy.float32))
    hi = dev.asarray((255.0 - vgg.mean_rgb).reshape(1, 3, 1, 1).astype(numpy.float32))

    ck = state["checkpoint"]
    start_iter, elapsed_before = 0, 0.0
    if ck is not None:
        x = dev.asarray(ck["image"])
        start_iter, elapsed_before = int(ck["iteration"]), float(ck["elapsed_s"])
        ctx.info(f"resuming at iteration {start_iter}")
    elif state["init_img"] is not None:
        x = vgg.preprocess(state["init_img"])
    elif cfg["init"] == "random":
        noise = numpy.random.default_rng(cfg["seed"]).standard_normal(content_x.shape).astype(numpy.float32)
        x = dev.asarray(noise)
    else:
        x = content_x.copy()

    total = cfg["num_iterations"]
    out_name = cfg["output_image"]
    bar = ctx.progress(total, "style", unit="it", initial=start_iter)
    t0 = time.perf_counter()
    shown = {}
    adam = Adam({"image": x}, lr=cfg["learning_rate"]) if cfg["optimizer"] == "adam" else None
    if adam is not None and ck is not None and "adam/t" in ck:
        adam.load_state_dict({k[5:]: v for k, v in ck.items() if k.startswith("adam/")})

    def elapsed():
        return elapsed_before + time.perf_counter() - t0

    def checkpoint(img, it):
        arrays = {"image": dev.to_numpy(img), "iteration": numpy.asarray(it),
                  "elapsed_s": numpy.asarray(elapsed())}
        if adam is not None:
            arrays.update({f"adam/{k}": v for k, v in adam.state_dict().items()})
        save_npz(ctx.path("checkpoint.npz"), arrays)

    def callback(i, img, losses):
        it = start_iter + i
        if i > 0:
            bar.update(1, **shown)
        last = it == total
        if (i == 0 and ck is None) or last or (cfg["print_iter"] and it % cfg["print_iter"] == 0 and i > 0):
            host = losses_to_host(losses) if isinstance(losses, dict) else {"total": float(losses)}
            row = {"iter": it, "content_loss": host["content"], "style_loss": host["style"],
                   "tv_loss": host["tv"], "total_loss": host["total"], "elapsed_s": elapsed()}
            ctx.log(**row)
            shown.update(loss=host["total"], s_it=elapsed() / max(it, 1))
            if not all(math.isfinite(v) for v in host.values()):
                raise XnnError("the losses became NaN/inf; lower learning_rate or the loss weights")
        if cfg["save_iter"] and i > 0 and it % cfg["save_iter"] == 0 and not last:
            _save(ctx, f"iter_{it:05d}.png", img)
            checkpoint(img, it)
        return False

    def _save(ctx_, name, img):
        rgb = vgg.deprocess(img) / 255.0
        if cfg["original_colors"]:
            from ..data.images import transfer_luminance
            rgb = transfer_luminance(state["content"] / 255.0, rgb)
        ctx_.save_image(name, rgb)
        return rgb

    fun = lambda z: obj.loss_and_grad(z, to_host=False)  # noqa: E731  (one sync per log line)
    remaining = total - start_iter
    backend = cfg["lbfgs_backend"]
    if backend == "auto":
        backend = "device" if dev.kind == "gpu" else "scipy"
    if adam is not None:
        res = adam_minimize(fun, x, lr=cfg["learning_rate"], max_iter=remaining, bounds=(lo, hi),
                            callback=callback, should_stop=ctx.stop, optimizer=adam,
                            losses_fn=lambda z: obj.losses(z, to_host=False))
    elif backend == "device":
        res = lbfgs_device_minimize(fun, x, bounds=(lo, hi), max_iter=remaining, callback=callback,
                                    should_stop=ctx.stop)
    else:
        res = lbfgs_minimize(obj.loss_and_grad, x, bounds=(lo, hi), max_iter=remaining,
                             callback=callback, should_stop=ctx.stop)
    bar.close()
    done = start_iter + res.iterations
    dev.synchronize()
    run_s = elapsed()
    result = _save(ctx, out_name, res.x)
    checkpoint(res.x, done)
    final = losses_to_host(obj.losses(res.x, to_host=False))
    if res.stopped and ctx.stop_requested:
        ctx.info(f"stopped at iteration {done}; image and checkpoint saved")
    panels = [state["content"]] + state["styles"] + [(result * 255).round().astype(numpy.uint8)]
    titles = ["content"] + [f"style {i + 1}" if len(state["styles"]) > 1 else "style"
                            for i in range(len(state["styles"]))] + ["result"]
    ctx.save_image("summary.png", side_by_side(panels, titles=titles, height=min(384, result.shape[0])))
    if len(ctx.read_metrics()) > 1:
        ctx.plot("losses.png", "iter", {"total (log)": ["total_loss"],
                                         "terms (log)": ["content_loss", "style_loss", "tv_loss"]},
                 title="style transfer losses")
    iters_this_run = done - start_iter
    summary = {"iterations": done, "content_loss": final["content"], "style_loss": final["style"],
               "tv_loss": final["tv"], "total_loss": final["total"], "total_time_s": run_s,
               "seconds_per_iteration": (run_s - elapsed_before) / iters_this_run if iters_this_run else None,
               "evaluations": res.evaluations, "optimizer": cfg["optimizer"] +
               (f" ({backend})" if adam is None else ""), "image_size": list(result.shape[:2]),
               "stopped": bool(res.stopped and ctx.stop_requested), "device": dev.name,
               "output": str(ctx.path(out_name))}
    ctx.save_json("summary.json", summary)
    ctx.info(f"{done} iterations in {run_s:.1f} s; total loss {final['total']:.4g}; wrote {ctx.path(out_name)}")
    return summary
