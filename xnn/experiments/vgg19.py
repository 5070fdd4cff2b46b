"""VGG19 on one image: ImageNet top-k classification, or feature extraction (conv weights only)."""
from __future__ import annotations

import time

import numpy

from ..config import Field
from ..errors import XnnError
from ..files import save_npy
from ..models.vgg import unknown_layers_problem

KIND = "vgg19"
SCHEMA = {
    "image": Field("path", "examples/chelsea.png", "the image to classify"),
    "weights": Field("str", "vgg19-imagenet",
                     "a path (.h5 / .mat / .npz) or a registered name: vgg19-imagenet (Keras, with fc layers), "
                     "vgg19-imagenet-notop (conv layers only), vgg19-imagenet-matconvnet"),
    "mode": Field("str", "auto", "classify (needs fc weights), features, or auto (classify when the "
                  "weights have fc layers)", choices=("auto", "classify", "features")),
    "top_k": Field("int", 5, "how many classes to report", min=1, max=1000),
    "image_size": Field("int", 224, "side of the network input (classification needs 224)", min=32, max=4096),
    "crop": Field("str", "center", "center: resize the shorter side and centre-crop a square; "
                  "none: resize the whole image to a square", choices=("center", "none")),
    "feature_layers": Field("list[str]", ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"],
                            "layers whose maps are drawn in features mode", check=unknown_layers_problem),
}


def prepare(cfg, device, resume_dir=None):
    from ..data.images import load_image, resize_and_center_crop, resize_to
    from ..models import vgg19
    img = load_image(cfg["image"])
    s = cfg["image_size"]
    net_input = resize_and_center_crop(img, s) if cfg["crop"] == "center" else resize_to(img, (s, s))
    include_top = {"classify": True, "features": False, "auto": None}[cfg["mode"]]
    t0 = time.perf_counter()
    vgg = vgg19(weights=cfg["weights"], device=device, include_top=include_top)
    load_s = time.perf_counter() - t0
    if not vgg.include_top and cfg["mode"] == "auto":
        print("xnn: note: these weights have no fc layers; running feature extraction "
              "(use weights: vgg19-imagenet for classification)", flush=True)
    if vgg.include_top and s != vgg.arch.input_size:
        raise XnnError(f"config: image_size = {s}: classification with the fc layers needs "
                       f"{vgg.arch.input_size} (or mode: features)")
    return {"cfg": cfg, "vgg": vgg, "image": net_input, "load_s": load_s}


def run(state, ctx):
    vgg = state["vgg"]
    ctx.save_image("input.png", state["image"])
    x = vgg.preprocess(state["image"])
    if vgg.include_top:
        return _classify(state, ctx, vgg, x)
    return _features(state, ctx, vgg, x)


def _classify(state, ctx, vgg, x):
    vgg.predict(x)  # warm-up
    vgg.device.synchronize()
    t0 = time.perf_counter()
    probs = vgg.predict(x)
    vgg.device.synchronize()
    forward_s = time.perf_counter() - t0
    p = ctx.device.to_numpy(probs)[0]
    top = numpy.argsort(-p, kind="stable")[:state["cfg"]["top_k"]]
    preds = [{"index": int(i), "name": vgg.class_names[i], "probability": float(p[i])} for i in top]
    ctx.save_json("predictions.json", preds)
    for r in preds:
        print(f"{r['index']:4d}  {r['probability']:.4f}  {r['name']}")
    summary = {"mode": "classify", "top1_index": preds[0]["index"], "top1_name": preds[0]["name"],
               "top1_probability": preds[0]["probability"], "forward_s": forward_s,
               "weights_load_s": state["load_s"], "weights": vgg.source, "device": vgg.device.name}
    ctx.log(**summary)
    ctx.save_json("summary.json", summary)
    return summary


def _features(state, ctx, vgg, x):
    from ..data.images import feature_map_grid, side_by_side
    names = list(dict.fromkeys(state["cfg"]["feature_layers"] + ["pool5"]))
    vgg.features(x, names)  # warm-up
    vgg.device.synchronize()
    t0 = time.perf_counter()
    feats = vgg.features(x, names)
    vgg.device.synchronize()
    forward_s = time.perf_counter() - t0
    grids = [feature_map_grid(ctx.device.to_numpy(feats[n])[0], max_maps=16) for n in state["cfg"]["feature_layers"]]
    ctx.save_image("features.png", side_by_side(grids, titles=state["cfg"]["feature_layers"], height=320))
    pool5 = ctx.device.to_numpy(feats["pool5"])[0].astype(numpy.float64)
    per_channel = pool5.mean(axis=(1, 2))
    stats = {"shape": list(pool5.shape), "mean": float(pool5.mean()), "std": float(pool5.std()),
             "max": float(pool5.max()), "fraction_zero": float((pool5 == 0).mean()),
             "top_channels": [int(c) for c in numpy.argsort(-per_channel)[:10]],
             "top_channel_means": [float(v) for v in numpy.sort(per_channel)[::-1][:10]]}
    ctx.save_json("pool5_stats.json", stats)
    save_npy(ctx.path("pool5.npy"), pool5.astype(numpy.float32))
    print(f"pool5 {tuple(pool5.shape)}: mean {stats['mean']:.3f}, max {stats['max']:.1f}, "
          f"{100 * stats['fraction_zero']:.0f} % zeros; feature maps in {ctx.path('features.png')}")
    summary = {"mode": "features", "forward_s": forward_s, "weights_load_s": state["load_s"],
               "weights": vgg.source, "device": vgg.device.name, "pool5_mean": stats["mean"]}
    ctx.log(**summary)
    ctx.save_json("summary.json", summary)
    return summary
