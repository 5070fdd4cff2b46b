"""Render the style-transfer gallery and its contact sheet: 3 photos x 4 paintings x 2 presets.

    python docs/make_gallery.py                          # configs/style.yaml and style_jcjohnson.yaml as they are
    python docs/make_gallery.py --device gpu             # the same on a GPU (minutes instead of hours)
    python docs/make_gallery.py --set image_size=256 --sheet /tmp/quick.jpg    # a quick look, not the gallery

Each image is a normal run (`run.py PRESET --set content_image=... --set style_image=... --seed 0`)
in `runs/gallery/<preset>/<photo>-<painting>/`; finished runs are skipped, so an interrupted
gallery goes on where it stopped.  The sheet has one row per photo and preset and one column
per painting, each cell the run's output.png downscaled to ``--cell`` px, and a caption with
the settings (any --set is part of it).  Same seeds, same sheet: the runs are deterministic on a
CPU.  Costs on 2 CPU cores: style.yaml about 10 minutes per image, style_jcjohnson.yaml about
40 (docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png"]
PAINTINGS = ["starry_night.jpg", "the_scream.jpg", "shipwreck.jpg", "kandinsky_composition_vii.jpg"]
PRESETS = ["style", "style_jcjohnson"]


def run_dir(out, preset, photo, painting):
    return out / preset / f"{pathlib.Path(photo).stem}-{pathlib.Path(painting).stem}"


def render(args):
    total = len(PRESETS) * len(PHOTOS) * len(PAINTINGS)
    n = 0
    for preset in PRESETS:
        for photo in PHOTOS:
            for painting in PAINTINGS:
                n += 1
                folder = run_dir(args.out, preset, photo, painting)
                if (folder / "output.png").is_file() and (folder / "summary.json").is_file():
                    continue
                cmd = [sys.executable, str(ROOT / "run.py"), str(ROOT / "configs" / f"{preset}.yaml"),
                       "--set", f"content_image=examples/{photo}", "--set", f"style_image=examples/{painting}",
                       "--seed", "0", "--device", args.device, "--quiet"]
                for s in args.set:
                    cmd += ["--set", s]
                if folder.exists():   # an unfinished run: continue it
                    cmd = [sys.executable, str(ROOT / "run.py"), "--resume", str(folder), "--quiet"]
                else:
                    cmd += ["--out", str(folder)]
                print(f"[{n}/{total}] {preset}: {photo} x {painting}", flush=True)
                subprocess.run(cmd, check=True, cwd=ROOT)


def contact_sheet(args):
    from PIL import Image, ImageDraw
    cell, pad, label_w = args.cell, 6, 150
    head = cell // 2 + 24             # the paintings, half size, above their columns
    rows = [(preset, photo) for photo in PHOTOS for preset in PRESETS]
    sheet = Image.new("RGB", (label_w + len(PAINTINGS) * (cell + pad), head + len(rows) * (cell + pad) + 24), "white")
    draw = ImageDraw.Draw(sheet)
    for j, painting in enumerate(PAINTINGS):
        thumb = Image.open(ROOT / "examples" / painting).convert("RGB")
        thumb.thumbnail((cell, cell // 2), Image.Resampling.LANCZOS)
        sheet.paste(thumb, (label_w + j * (cell + pad), 4))
        draw.text((label_w + j * (cell + pad), cell // 2 + 6), pathlib.Path(painting).stem.replace("_", " "),
                  fill="black")
    for i, (preset, photo) in enumerate(rows):
        y = head + i * (cell + pad)
        draw.text((6, y + cell // 2 - 12), f"{pathlib.Path(photo).stem}\n{preset}.yaml", fill="black")
        for j, painting in enumerate(PAINTINGS):
            out = run_dir(args.out, preset, photo, painting) / "output.png"
            if not out.is_file():
                continue
            thumb = Image.open(out).convert("RGB")
            thumb.thumbnail((cell, cell), Image.Resampling.LANCZOS)
            sheet.paste(thumb, (label_w + j * (cell + pad), y))
    caption = "seed 0" + ("; " + ", ".join(args.set) if args.set else "; presets as committed")
    draw.text((6, sheet.height - 20), f"xnn style transfer gallery ({caption})", fill="black")
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.sheet, quality=88)
    print(f"wrote {args.sheet}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every run")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "gallery")
    p.add_argument("--sheet", type=pathlib.Path, default=ROOT / "docs" / "gallery.jpg")
    p.add_argument("--cell", type=int, default=220, help="thumbnail side in the sheet")
    p.add_argument("--sheet-only", action="store_true", help="only rebuild the sheet from finished runs")
    args = p.parse_args(argv)
    if not args.sheet_only:
        render(args)
    contact_sheet(args)


if __name__ == "__main__":
    main()
