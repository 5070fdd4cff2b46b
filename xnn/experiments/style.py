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
from .base import blend_weights, stylisation_fields, tile_size_field

KIND = "style"
#: progress.png, the picture so far, is written after this many seconds of optimising (or sooner
#: when preview_s is shorter), then every preview_s (and at the end of each stage), so a user sees
#: a picture within the first minute
PREVIEW_FIRST_S = 10.0


def _stages_grow(sizes):
    if isinstance(sizes, list) and any(b < a for a, b in zip(sizes, sizes[1:])):
        return "the stages of a schedule must not shrink (e.g. [512, 1024, 2048])"
    return None


SCHEMA = {
    **stylisation_fields("the photo to repaint"),
    "image_size": Field("int|list[int]", 512, "longer side of the output in pixels; a list is a coarse-to-fine "
                        "schedule (each stage starts from the previous one's output, upsampled)",
                        min=16, max=16384, check=_stages_grow),
    "style_scale": Field("float", 1.0, "style images are resized to image_size * style_scale", gt=0, max=8),
    "num_iterations": Field("int|list[int]", 300, "optimiser iterations (0: only evaluate and save the start "
                            "image); a list gives one count per image_size stage", min=0),
    "tile_size": tile_size_field("evaluate the losses"),
    "loss_scaling": Field("str", "gatys", "how the losses are scaled: gatys (Gatys et al.; xnn's defaults) or "
                          "jcjohnson (jcjohnson/neural-style's formulas, so his weights mean what they mean there)",
                          choices=("gatys", "jcjohnson")),
    "optimizer": Field("str", "lbfgs", "lbfgs or adam", choices=("lbfgs", "adam")),
    "lbfgs_backend": Field("str", "auto", "device (xnn's L-BFGS-B on the array's device, float32, no host "
                           "copies), scipy (SciPy's L-BFGS-B on the host, float64), auto (device, unless its "
                           "history would crowd a GPU: then scipy)", choices=("auto", "scipy", "device")),
    "lbfgs_num_correction": Field("int", 50, "L-BFGS's memory: the number of (step, gradient change) pairs "
                                  "kept (neural-style's key; 24 B per pixel each on the device)", min=1, max=1000),
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
    "preview_s": Field("float", 30.0, "seconds between updates of progress.png, the picture so far (the first "
                       "after 10 s); the studio sets 2", gt=0, max=86400),
    "save_iter": Field("int", 100, "save an intermediate image and a checkpoint every N iterations (0: never)",
                       min=0),
    "weights": Field("str", "vgg19-imagenet-notop", "VGG19 weights: a registered name or a path"),
}



def stages(cfg) -> list[tuple[int, int]]:
    """[(image_size, num_iterations)] per stage; a config error when the lists disagree."""
    sizes, iters = cfg["image_size"], cfg["num_iterations"]
    if not isinstance(sizes, list):
        if isinstance(iters, list):
            raise XnnError(f"config: num_iterations = {iters} is a list but image_size = {sizes} is one size; "
                           "give image_size a list of the same length (one stage per size)")
        return [(sizes, iters)]
    if isinstance(iters, list) and len(iters) != len(sizes):
        raise XnnError(f"config: image_size has {len(sizes)} stages but num_iterations has {len(iters)} values; "
                       "give one count per stage (or one number for all)")
    return list(zip(sizes, iters if isinstance(iters, list) else [iters] * len(sizes)))


def _lbfgs_backend(cfg, device, pixels: int, free) -> str:
    """"scipy" or "device": auto takes xnn's L-BFGS-B on the device (the same method as SciPy's,
    its bookkeeping about 4x cheaper on a CPU), unless on a GPU its history (lbfgs_num_correction
    pairs of whole images) would crowd the device: then SciPy's, whose state lives in host memory."""
    from ..style import memory
    backend = cfg["lbfgs_backend"]
    if backend != "auto":
        return backend
    if device.kind != "gpu":
        return "device"
    need = (memory.whole_image_bytes(pixels, "lbfgs-device", cfg["lbfgs_num_correction"])
            + memory.evaluation_bytes(256 ** 2))
    return "device" if free is None or need <= 0.9 * free else "scipy"


def _lbfgs_history(cfg, memory_key: str, pixels: int, free) -> int:
    """lbfgs_num_correction, or fewer pairs (at least 5) when that many would take more than half
    of the free memory for a very large image (the rest is for the evaluation's tiles)."""
    from ..style import memory
    wanted = cfg["lbfgs_num_correction"]
    if cfg["optimizer"] != "lbfgs" or free is None:
        return wanted
    return memory.pairs_that_fit(pixels, memory_key, wanted, 0.5 * free)


def _optimizer_memory_key(cfg, device, backend) -> str:
    """Which optimiser state lives on ``device`` (see xnn.style.memory)."""
    if cfg["optimizer"] == "adam":
        return "adam"
    if backend == "device":
        return "lbfgs-device"
    return "lbfgs-scipy" if device.kind == "cpu" else "host"


def prepare(cfg, device, resume_dir=None):
    from ..data.images import load_image, longer_side_shape, resize_to
    from ..models import vgg19
    from ..models.vgg import min_input_side, tile_halo
    from ..style import memory

    styles = cfg["style_image"]
    blend = blend_weights(cfg)
    plan = stages(cfg)
    content_raw = load_image(cfg["content_image"])
    style_raws = [load_image(p) for p in styles]
    deepest = deepest_layer(cfg["content_layers"] + cfg["style_layers"])
    # sizes first, then the checks, and only then the (slow for large sizes) resampling
    shapes, tiles = [], []
    free = device.memory_available()
    largest = max(longer_side_shape(content_raw.shape[:2], size) for size, _ in plan)
    halo = tile_halo(cfg["content_layers"] + cfg["style_layers"])     # as TiledStyleObjective derives it
    backend = _lbfgs_backend(cfg, device, largest[0] * largest[1], free)
    memory_key = _optimizer_memory_key(cfg, device, backend)
    history = _lbfgs_history(cfg, memory_key, largest[0] * largest[1], free)
    for size, _ in plan:
        h, w = longer_side_shape(content_raw.shape[:2], size)
        style_size = max(16, round(size * cfg["style_scale"]))
        style_shapes = [longer_side_shape(s.shape[:2], style_size) for s in style_raws]
        check_input_size(h, w, deepest, f"content image {cfg['content_image']}")  # the optimised image
        for path, (sh, sw) in zip(styles, style_shapes):
            check_input_size(sh, sw, deepest_layer(cfg["style_layers"]), f"style image {path}")
        setting = f"image_size = {size}"
        style_settings = [(sh, sw, f"style_scale = {cfg['style_scale']:g} (style image {path}, with image_size = "
                           f"{size})", "style_scale") for path, (sh, sw) in zip(styles, style_shapes)]
        align = min_input_side(deepest)
        tiles.append(memory.plan_tiles(h, w, free, memory_key, cfg["tile_size"], halo, align, setting,
                                       style_settings, history=history))
        shapes.append((h, w))
    init_img = None
    if cfg["init_image"]:
        init_img = resize_to(load_image(cfg["init_image"]), shapes[0])

    vgg = vgg19(weights=cfg["weights"], device=device, include_top=False, pooling=cfg["pooling"])
    vgg.truncate(deepest)
    state = {"cfg": cfg, "vgg": vgg, "content_raw": content_raw, "style_raws": style_raws, "blend": blend,
             "init_img": init_img, "checkpoint": None, "stages": plan, "shapes": shapes, "tiles": tiles,
             "lbfgs_backend": backend, "lbfgs_history": history}
    if resume_dir is not None:
        path = resume_dir / "checkpoint.npz"
        if not path.exists():
            raise XnnError(f"--resume {resume_dir}: no checkpoint.npz there (it is written every save_iter "
                           "iterations and when a run is stopped)")
        ck = read_npz(path, "checkpoint")
        require_keys(ck, ("image", "iteration", "elapsed_s"), "checkpoint", path)
        stage = int(ck["stage"]) if "stage" in ck else 0
        if not 0 <= stage < len(plan):
            raise XnnError(f"--resume {resume_dir}: the checkpoint is from stage {stage + 1} but the config has "
                           f"{len(plan)} stage(s); keep image_size as it was")
        h, w = shapes[stage]
        if ck["image"].shape != (1, 3, h, w):
            raise XnnError(f"--resume {resume_dir}: the checkpoint image has shape {ck['image'].shape} but the "
                           f"config gives (1, 3, {h}, {w}); keep image_size and content_image as they were")
        ck["image"] = ck["image"].astype(numpy.float32)
        ck["stage"] = stage
        state["checkpoint"] = ck
    return state


def run(state, ctx):
    from ..data.images import resize_longer_side, resize_to, side_by_side
    from ..optim import Adam
    from ..style import StyleTransferObjective, adam_minimize, lbfgs_device_minimize, lbfgs_minimize
    from ..style.losses import losses_to_host
    from ..style.tiled import TiledStyleObjective

    cfg, vgg, dev = state["cfg"], state["vgg"], ctx.device
    plan, ck = state["stages"], state["checkpoint"]
    first_stage = ck["stage"] if ck is not None else 0
    # the bar counts places in the plan (a stage L-BFGS ends early jumps to its end); ``done``
    # counts the iterations that ran (the checkpoint keeps it; older checkpoints: their place)
    place = sum(n for _, n in plan[:first_stage]) + (int(ck["iteration"]) if ck is not None else 0)
    done_before = int(ck["done"]) if ck is not None and "done" in ck else place
    elapsed_before = float(ck["elapsed_s"]) if ck is not None else 0.0
    if ck is not None:   # rows an aborted run logged after its checkpoint are logged again now
        ctx.keep_metrics(lambda r: (r.get("stage", 1) - 1, r.get("iter", -1)) <= (first_stage, int(ck["iteration"])))
    total = sum(n for _, n in plan)
    bar = ctx.progress(total, "style", unit="it", initial=place)
    done = done_before
    t0 = time.perf_counter()
    lo = dev.asarray((0.0 - vgg.mean_rgb).reshape(1, 3, 1, 1).astype(numpy.float32))
    hi = dev.asarray((255.0 - vgg.mean_rgb).reshape(1, 3, 1, 1).astype(numpy.float32))
    backend = state["lbfgs_backend"]
    if cfg["optimizer"] == "lbfgs" and cfg["lbfgs_backend"] == "auto" and dev.kind == "gpu" and backend == "scipy":
        ctx.info("L-BFGS runs on the host (SciPy): its history for this image size would crowd the GPU's memory")
    if cfg["optimizer"] == "lbfgs" and state["lbfgs_history"] < cfg["lbfgs_num_correction"]:
        ctx.info(f"L-BFGS keeps {state['lbfgs_history']} pairs (lbfgs_num_correction = "
                 f"{cfg['lbfgs_num_correction']} would take more than half of the free memory at this size)")
    multi = len(plan) > 1

    def elapsed():
        return elapsed_before + time.perf_counter() - t0

    def to_rgb(img, content, deprocessed=None):
        rgb = (vgg.deprocess(img) if deprocessed is None else deprocessed) / 255.0
        if cfg["original_colors"]:
            from ..data.images import transfer_luminance
            rgb = transfer_luminance(content / 255.0, rgb)
        return rgb

    stage_outputs, previous, evaluations, stopped, final_losses = [], None, 0, False, None
    preview = {"next": time.perf_counter() + min(PREVIEW_FIRST_S, cfg["preview_s"]), "path": None}

    def save_preview(rgb):
        ctx.save_image("progress.png", rgb)
        preview["next"] = time.perf_counter() + cfg["preview_s"]
        preview["path"] = str(ctx.path("progress.png"))

    for si in range(first_stage, len(plan)):
        size, iters = plan[si]
        h, w = state["shapes"][si]
        content = resize_longer_side(state["content_raw"], size)
        style_size = max(16, round(size * cfg["style_scale"]))
        styles = [resize_longer_side(s, style_size) for s in state["style_raws"]]
        obj = StyleTransferObjective(vgg, cfg["content_layers"], cfg["style_layers"],
                                     content_weight=cfg["content_weight"], style_weight=cfg["style_weight"],
                                     tv_weight=cfg["tv_weight"], loss_scaling=cfg["loss_scaling"])
        tile = state["tiles"][si]
        if tile:
            obj = TiledStyleObjective(obj, tile)
            ctx.info((f"stage {si + 1}: " if multi else "") + f"{h}x{w} px in {len(obj.tiles((1, 3, h, w)))} "
                     f"tiles of {tile} px (+{obj.halo} px halo)")
        content_x = vgg.preprocess(content)
        obj.set_targets(content_x, [vgg.preprocess(s) for s in styles], state["blend"])
        resumed_here = ck is not None and si == first_stage
        start_iter = int(ck["iteration"]) if resumed_here else 0
        if resumed_here:
            x = dev.asarray(ck["image"])
            ctx.info(f"resuming at iteration {start_iter}" + (f" of stage {si + 1}" if multi else ""))
        elif previous is not None:     # the previous stage's optimised image (before original_colors), upsampled
            x = vgg.preprocess(resize_to(previous.round().clip(0, 255).astype(numpy.uint8), (h, w)))
        elif state["init_img"] is not None:
            x = vgg.preprocess(state["init_img"])
        elif cfg["init"] == "random":
            noise = numpy.random.default_rng(cfg["seed"]).standard_normal(content_x.shape).astype(numpy.float32)
            x = dev.asarray(noise)
        else:
            x = content_x.copy()
        adam = Adam({"image": x}, lr=cfg["learning_rate"]) if cfg["optimizer"] == "adam" else None
        if adam is not None and resumed_here and "adam/t" in ck:
            adam.load_state_dict({k[5:]: v for k, v in ck.items() if k.startswith("adam/")})
        stage_tag = {"stage": si + 1, "image_size": size} if multi else {}
        out_name = cfg["output_image"] if si == len(plan) - 1 else f"stage{si + 1}_{size}px.png"

        def checkpoint(img, it):
            arrays = {"image": dev.to_numpy(img), "iteration": numpy.asarray(it), "stage": numpy.asarray(si),
                      "elapsed_s": numpy.asarray(elapsed()), "done": numpy.asarray(done)}
            if adam is not None:
                arrays.update({f"adam/{k}": v for k, v in adam.state_dict().items()})
            save_npz(ctx.path("checkpoint.npz"), arrays)

        logged = None                  # this stage's last metrics row, by iteration

        def log_row(it, host):
            nonlocal logged
            ctx.log(**stage_tag, iter=it, content_loss=host["content"], style_loss=host["style"],
                    tv_loss=host["tv"], total_loss=host["total"], elapsed_s=elapsed())
            logged = it

        def callback(i, img, losses):
            nonlocal done
            it = start_iter + i
            host = losses_to_host(losses)
            if not all(math.isfinite(v) for v in host.values()):
                raise XnnError("the losses became NaN/inf; lower learning_rate or the loss weights")
            if i > 0:   # the bar shows this iteration's loss: one number from the device per iteration
                done += 1
                if time.perf_counter() >= preview["next"]:
                    save_preview(to_rgb(img, content))
                shown = {"preview": preview["path"]} if preview["path"] else {}
                bar.update(1, loss=host["total"], s_it=(elapsed() - elapsed_before) / (done - done_before), **shown)
            last = it == iters
            if (i == 0 and not resumed_here) or last or (cfg["print_iter"] and it % cfg["print_iter"] == 0 and i > 0):
                log_row(it, host)
            if cfg["save_iter"] and i > 0 and it % cfg["save_iter"] == 0 and not last:
                ctx.save_image(f"iter_{it:05d}.png" if not multi else f"stage{si + 1}_iter_{it:05d}.png",
                               to_rgb(img, content))
                checkpoint(img, it)
            return False

        if resumed_here and start_iter >= iters:   # resumed where this stage had ended: on to the next
            x_final, final_losses = x, None
            previous = vgg.deprocess(x)
            stage_outputs.append((si, size, to_rgb(x, content, previous)))
            continue

        fun = lambda z: obj.loss_and_grad(z, to_host=False)  # noqa: E731
        remaining = iters - start_iter
        if adam is not None:
            res = adam_minimize(fun, x, lr=cfg["learning_rate"], max_iter=remaining, bounds=(lo, hi),
                                callback=callback, should_stop=ctx.stop, optimizer=adam,
                                losses_fn=lambda z: obj.losses(z, to_host=False))
        elif backend == "device":
            res = lbfgs_device_minimize(fun, x, bounds=(lo, hi), max_iter=remaining, callback=callback,
                                        should_stop=ctx.stop, history=state["lbfgs_history"])
        else:
            res = lbfgs_minimize(obj.loss_and_grad, x, bounds=(lo, hi), max_iter=remaining,
                                 callback=callback, should_stop=ctx.stop, history=state["lbfgs_history"])
        evaluations += res.evaluations
        x_final, final_losses, end = res.x, res.losses, start_iter + res.iterations
        stage_name = f" of stage {si + 1}" if multi else ""
        previous = vgg.deprocess(res.x)
        shown = to_rgb(res.x, content, previous)
        ctx.save_image(out_name, shown)
        save_preview(shown)
        stage_outputs.append((si, size, shown))
        if res.stopped:                # stopped by the user (a second Ctrl-C does not come back here)
            checkpoint(res.x, end)
            stopped = True
            ctx.info(f"stopped at iteration {end}{stage_name}; image and checkpoint saved (continue with --resume)")
            break
        if end < iters:                # L-BFGS ended early: converged, or no decrease left to find
            ctx.info(f"L-BFGS ended at iteration {end}{stage_name}: {res.message}")
            bar.update(iters - end)
            if res.losses is not None and logged != end:
                log_row(end, losses_to_host(res.losses))
        checkpoint(res.x, iters)       # this stage is over: a resume starts the next one
        if ctx.stop_requested and si + 1 < len(plan):
            stopped = True
            ctx.info(f"stopped after stage {si + 1}; its image and a checkpoint are saved (continue with --resume)")
            break
    bar.close()
    dev.synchronize()
    run_s = elapsed()
    # the optimisers return the losses of the image they return; a skipped stage has none
    final = losses_to_host(final_losses if final_losses is not None else obj.losses(x_final, to_host=False))
    written = out_name
    result = stage_outputs[-1][2]
    panels = [content] + styles + [(img * 255).round().astype(numpy.uint8) for _, _, img in stage_outputs]
    titles = (["content"] + [f"style {i + 1}" if len(styles) > 1 else "style" for i in range(len(styles))]
              + [f"stage {i + 1}: {s} px" if multi else "result" for i, s, _ in stage_outputs])
    ctx.save_image("summary.png", side_by_side(panels, titles=titles, height=min(384, result.shape[0])))
    if len(ctx.read_metrics()) > 1:
        ctx.plot("losses.png", "iter", {"total (log)": ["total_loss"],
                                         "terms (log)": ["content_loss", "style_loss", "tv_loss"]},
                 title="style transfer losses")
    iters_this_run = done - done_before
    summary = {"iterations": done, "content_loss": final["content"], "style_loss": final["style"],
               "tv_loss": final["tv"], "total_loss": final["total"], "loss_scaling": cfg["loss_scaling"],
               "total_time_s": run_s,
               "seconds_per_iteration": (run_s - elapsed_before) / iters_this_run if iters_this_run else None,
               "evaluations": evaluations, "optimizer": cfg["optimizer"] + (f" ({backend})" if cfg["optimizer"] ==
                                                                            "lbfgs" else ""),
               "image_size": list(result.shape[:2]), "stages": [s for s, _ in plan], "tile_size": state["tiles"],
               "stopped": stopped, "device": dev.name, "output": str(ctx.path(written))}
    ctx.save_json("summary.json", summary)
    ctx.info(f"{done} iterations in {run_s:.1f} s; total loss {final['total']:.4g}; wrote {ctx.path(written)}")
    return summary
