"""The fast style network next to style.yaml (Gatys) and AdaIN, on photos held out of its training.

    python docs/make_fast_style_gallery.py --model runs/train_fast_style-.../model.npz
    python docs/make_fast_style_gallery.py --model examples/models/starry_night.npz --jobs 2
    python docs/make_fast_style_gallery.py --model ... --skip-gatys       # AdaIN and the network only

For each of the held-out Kodak photos (the first four, which configs/train_fast_style.yaml never
trains on) and the model's style image, three normal runs at 512 px in runs/fast_gallery/:
configs/style.yaml (minutes a photo), configs/adain.yaml and configs/fast_style.yaml (under a
second).  Finished runs are skipped, so an interrupted gallery goes on where it stopped.  Then
each output is scored with one yardstick, VGG19 (the ImageNet weights) on the output at its size:

* style loss: sum over relu1_1, relu2_1, relu3_1, relu4_1 of mean((G(out) - G(style))^2), G the Gram
  matrix normalised by C*H*W (xnn.style.perceptual.gram_batch), the style image at 512 px;
* content loss: mean((F(out) - F(photo))^2) at relu4_2 (the layer style.yaml keeps the content at).

Writes docs/fast_style_gallery.jpg (a row per photo: photo | style.yaml | AdaIN | fast network,
each column headed with its mean seconds a photo) and docs/fast_style_gallery.json (the scores).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = {"style": "style.yaml (Gatys)", "adain": "AdaIN", "fast_style": "fast network"}
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]
CONTENT_LAYER = "relu4_2"
SIZE = 512


def held_out_photos(n=4):
    from xnn.data.photos import kodak_folder
    from xnn.data.images import image_files
    return image_files(kodak_folder())[:n]


def run_folder(out, method, photo):
    return out / method / photo.stem


def command(method, photo, folder, args):
    cfg = str(ROOT / "configs" / f"{method}.yaml")
    cmd = [sys.executable, str(ROOT / "run.py"), cfg, "--seed", "0", "--device", args.device, "--quiet",
           "--out", str(folder)]
    if method == "fast_style":
        return cmd + ["--set", f"input={photo}", "--set", f"model={args.model}", "--set", f"image_size={SIZE}"]
    return cmd + ["--set", f"content_image={photo}", "--set", f"style_image={args.style}",
                  "--set", f"image_size={SIZE}"]


def render(args, photos):
    todo = []
    for method in args.methods:
        for photo in photos:
            folder = run_folder(args.out, method, photo)
            if (folder / "summary.json").is_file():
                continue
            if folder.exists():         # a run that did not finish: start it again
                import shutil
                shutil.rmtree(folder)
            todo.append((method, photo, folder))
    env = dict(os.environ)
    if args.jobs > 1:
        env["XNN_THREADS"] = env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 2) // args.jobs))

    def one(item):
        method, photo, folder = item
        print(f"{method}: {photo.name}", flush=True)
        subprocess.run(command(method, photo, folder, args), cwd=ROOT, env=env, check=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))


def scores(args, photos):
    """{method: {photo: {"style_loss", "content_loss", "seconds"}}} for every finished run."""
    import numpy
    from xnn.data.images import load_image, resize_longer_side
    from xnn.models import vgg19
    from xnn.style.perceptual import gram_batch
    vgg = vgg19(device="cpu", include_top=False).truncate(CONTENT_LAYER)
    style = resize_longer_side(load_image(args.style), SIZE)
    feats = vgg.features(vgg.preprocess(style), STYLE_LAYERS)
    targets = {k: gram_batch(f)[0].copy() for k, f in feats.items()}
    table = {}
    for method in args.methods:
        for photo in photos:
            folder = run_folder(args.out, method, photo)
            out_path = folder / "output.png"
            if not out_path.is_file():
                continue
            out = load_image(out_path)
            content = load_image(photo)
            content = numpy.asarray(resize_longer_side(content, SIZE))
            if content.shape != out.shape:
                from xnn.data.images import resize_to
                content = resize_to(content, out.shape[:2])
            fo = {k: v.copy() for k, v in vgg.features(vgg.preprocess(out), STYLE_LAYERS + [CONTENT_LAYER]).items()}
            fc = vgg.features(vgg.preprocess(content), [CONTENT_LAYER])[CONTENT_LAYER]
            style_loss = sum(float(((gram_batch(fo[k])[0] - targets[k]) ** 2).mean()) for k in STYLE_LAYERS)
            content_loss = float(((fo[CONTENT_LAYER] - fc) ** 2).mean())
            summary = json.loads((folder / "summary.json").read_text())
            seconds = summary.get("total_time_s", summary.get("seconds_per_image_median"))
            table.setdefault(method, {})[photo.name] = {"style_loss": style_loss, "content_loss": content_loss,
                                                        "seconds": seconds}
    return table


def sheet(args, photos, table):
    from PIL import Image, ImageDraw
    cell, pad, head = args.cell, 6, 40
    columns = ["photo"] + [m for m in args.methods]
    rows = []
    for photo in photos:
        with Image.open(photo) as im:
            w, h = im.size
        rows.append(cell if h >= w else round(cell * h / w))
    img = Image.new("RGB", (len(columns) * (cell + pad), head + sum(r + pad for r in rows) + 22), "white")
    draw = ImageDraw.Draw(img)
    for j, name in enumerate(columns):
        label = "photo (held out)" if name == "photo" else METHODS[name]
        if name in table:
            secs = [v["seconds"] for v in table[name].values() if v["seconds"] is not None]
            if secs:
                mean = sum(secs) / len(secs)
                label += f", {mean:.0f} s a photo" if mean >= 10 else f", {mean:.2g} s a photo"
        draw.text((j * (cell + pad) + 4, 12), label, fill="black")
    y = head
    for photo, h in zip(photos, rows):
        for j, name in enumerate(columns):
            path = photo if name == "photo" else run_folder(args.out, name, photo) / "output.png"
            if path.is_file():
                thumb = Image.open(path).convert("RGB")
                thumb.thumbnail((cell, h), Image.Resampling.LANCZOS)
                img.paste(thumb, (j * (cell + pad), y))
        y += h + pad
    draw.text((4, img.height - 18), f"held-out Kodak photos at {SIZE} px; style {pathlib.Path(args.style).name}; "
              f"model {pathlib.Path(args.model).name}", fill="black")
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.sheet, quality=90)
    print(f"wrote {args.sheet}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=pathlib.Path, required=True, help="the fast style network's model.npz")
    p.add_argument("--style", type=pathlib.Path, default=ROOT / "examples" / "starry_night.jpg",
                   help="the style it was trained on (for style.yaml, AdaIN and the scores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, the cores shared between them")
    p.add_argument("--skip-gatys", action="store_true", help="leave out style.yaml (minutes a photo)")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "fast_gallery")
    p.add_argument("--sheet", type=pathlib.Path, default=ROOT / "docs" / "fast_style_gallery.jpg")
    p.add_argument("--cell", type=int, default=300)
    args = p.parse_args(argv)
    args.model, args.style = args.model.resolve(), args.style.resolve()
    args.out, args.sheet = args.out.resolve(), args.sheet.resolve()
    args.methods = [m for m in METHODS if not (args.skip_gatys and m == "style")]
    photos = held_out_photos()
    render(args, photos)
    table = scores(args, photos)
    sheet(args, photos, table)
    path = args.sheet.with_suffix(".json")
    path.write_text(json.dumps({"size": SIZE, "style": args.style.name, "model": str(args.model),
                                "style_layers": STYLE_LAYERS, "content_layer": CONTENT_LAYER, "scores": table},
                               indent=2) + "\n")
    print(f"wrote {path}")
    for method, rows in table.items():
        s = [v["style_loss"] for v in rows.values()]
        c = [v["content_loss"] for v in rows.values()]
        print(f"{METHODS[method]:20s} style loss {sum(s) / len(s):.4g}  content loss {sum(c) / len(c):.4g}  "
              f"({len(s)} photos)")


if __name__ == "__main__":
    main()
