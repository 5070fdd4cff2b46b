"""Render the style-transfer gallery and its contact sheet: 3 photos x 4 paintings x 2 presets.

    python docs/make_gallery.py                          # configs/style.yaml and style_jcjohnson.yaml as they are
    python docs/make_gallery.py --jobs 2                 # two renders at once, one core each (faster on 2+ cores)
    python docs/make_gallery.py --device gpu             # the same on a GPU (not measured yet)
    python docs/make_gallery.py --preset style           # one preset's rows only
    python docs/make_gallery.py --set image_size=256 --sheet /tmp/quick.jpg    # a quick look, not the gallery
    python docs/make_gallery.py --preset style --out runs/gallery_new --keep-rows-from docs/gallery.jpg
                                                         # re-render style.yaml's rows, keep the others' cells

Each image is a normal run (`run.py PRESET --set content_image=... --set style_image=... --seed 0`)
in `runs/gallery/<preset>/<photo>-<painting>/`; finished runs are skipped and unfinished ones
resumed, so an interrupted gallery goes on where it stopped.  The sheet has one row per photo
and preset, the photo first and then one column per painting, each cell the run's output.png
downscaled to ``--cell`` px; cells not rendered yet are grey and say so, and rows with
nothing rendered yet are left out (the caption counts what is missing).  Same seeds, same
sheet: the runs are deterministic for a given machine and thread count.  Costs on 2 CPU
cores with ``--jobs 2``, measured: 12-18 minutes per 512x341 style.yaml image (23 for a
square one) and 30-34 per 512x341 style_jcjohnson.yaml image (53-68 for the square one), two at
a time (docs/style.md).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))     # xnn from this checkout, installed or not
from xnn.backends.numpy_backend import usable_cores  # noqa: E402
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png"]
PAINTINGS = ["starry_night.jpg", "the_scream.jpg", "shipwreck.jpg", "kandinsky_composition_vii.jpg"]
PRESETS = ["style", "style_jcjohnson"]


def run_dir(out, preset, photo, painting):
    return out / preset / f"{pathlib.Path(photo).stem}-{pathlib.Path(painting).stem}"


def finished(folder):
    """The run ended on its own (a stopped run also writes output.png and summary.json)."""
    summary = folder / "summary.json"
    if not ((folder / "output.png").is_file() and summary.is_file()):
        return False
    try:
        return not json.loads(summary.read_text()).get("stopped", False)
    except ValueError:          # a summary cut short: not finished
        return False


def commands(args):
    """(label, folder, command) for every cell of the chosen presets that is not finished."""
    todo = []
    for preset in args.preset:
        for photo in PHOTOS:
            for painting in PAINTINGS:
                folder = run_dir(args.out, preset, photo, painting)
                if finished(folder):
                    continue
                if folder.exists():   # an unfinished run: continue it
                    cmd = [sys.executable, str(ROOT / "run.py"), "--resume", str(folder), "--quiet",
                           "--device", args.device]
                else:
                    cmd = [sys.executable, str(ROOT / "run.py"), str(ROOT / "configs" / f"{preset}.yaml"),
                           "--set", f"content_image=examples/{photo}", "--set", f"style_image=examples/{painting}",
                           "--seed", "0", "--device", args.device, "--quiet", "--out", str(folder)]
                    for s in args.set:
                        cmd += ["--set", s]
                todo.append((f"{preset}: {photo} x {painting}", folder, cmd))
    return todo


def render(args):
    todo = commands(args)
    env = dict(os.environ)
    if args.jobs > 1:             # N runs side by side, each with its share of the cores
        share = str(max(1, usable_cores() // args.jobs))
        env.update(XNN_THREADS=share, XNN_BLAS_THREADS=share, OMP_NUM_THREADS=share)

    stop = threading.Event()      # set by Ctrl-C or SIGTERM: queued runs are not started
    running, lock = set(), threading.Lock()

    def one(n_item):
        n, (label, folder, cmd) = n_item
        if stop.is_set():
            return label, None
        print(f"[{n}/{len(todo)}] {label}\n", end="", flush=True)     # one write: lines stay whole
        # its own session: a terminal's Ctrl-C reaches only this script, which passes it on once
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
        with lock:
            running.add(proc)
            if stop.is_set():     # stopped while it was starting
                proc.send_signal(signal.SIGINT)
        rc = proc.wait()
        with lock:
            running.discard(proc)
        if rc == 130:             # the run was interrupted; it saved a checkpoint
            stop.set()
        return label, rc

    def interrupt_runs():         # each run saves a checkpoint and stops; a second time stops it at once
        stop.set()
        with lock:
            for proc in running:
                proc.send_signal(signal.SIGINT)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    # SIGINT too: a gallery started in the background (nohup ... &) inherits SIGINT ignored
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    pool, items, futures = ThreadPoolExecutor(max(1, args.jobs)), list(enumerate(todo, 1)), []
    try:
        while True:               # a signal may come at any point; once stopped, queued runs return at once
            try:
                while len(futures) < len(items):
                    futures.append(pool.submit(one, items[len(futures)]))
                # Python runs signal handlers in the main thread only, and a Ctrl-C the kernel hands
                # to a worker thread does not wake a main thread blocked on a result: wake up often
                while wait(futures, timeout=0.2).not_done:
                    pass
                results = [f.result() for f in futures]
                break
            except KeyboardInterrupt:
                interrupt_runs()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)   # however it ends, no queued run starts later
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop.is_set():
        print("stopped; the same command goes on from where each run stopped", file=sys.stderr)
        raise SystemExit(130)
    failed = [label for label, rc in results if rc]
    if failed:
        sys.exit(f"{len(failed)} run(s) failed: {', '.join(failed)}; run the same command again to resume them")


def row_height(photo, cell):
    """A row's height: the photo's thumbnail height in a cell x cell box (the outputs have its shape)."""
    from PIL import Image
    with Image.open(photo) as im:
        w, h = im.size
    return cell if h >= w else max(1, round(cell * h / w))


def contact_sheet(args):
    from PIL import Image, ImageDraw
    cell, pad, label_w = args.cell, 6, 110
    head = cell // 2 + 24             # the paintings, half size, above their columns
    if args.keep_rows_from:           # every row, the other presets' from the old sheet
        rows = [(preset, photo) for photo in PHOTOS for preset in PRESETS]
    else:
        rows = [(preset, photo) for photo in PHOTOS for preset in args.preset
                if any(finished(run_dir(args.out, preset, photo, p)) for p in PAINTINGS)]   # rows with nothing yet: left out
    heights = [row_height(ROOT / "examples" / photo, cell) for _, photo in rows]   # landscape rows are lower
    width = label_w + (1 + len(PAINTINGS)) * (cell + pad)
    sheet = Image.new("RGB", (width, head + sum(h + pad for h in heights) + 24), "white")
    draw = ImageDraw.Draw(sheet)
    old = None
    if args.keep_rows_from:
        old = Image.open(args.keep_rows_from).convert("RGB")
        if old.size != sheet.size:
            sys.exit(f"{args.keep_rows_from} is {old.size[0]}x{old.size[1]}, not a whole sheet of this layout "
                     f"({sheet.width}x{sheet.height} with --cell {cell}); its rows cannot be kept")

    def x_of(column):                 # column 0 is the photo, 1.. the paintings
        return label_w + column * (cell + pad)

    def paste(path, x, y, box):
        thumb = Image.open(path).convert("RGB")
        thumb.thumbnail(box, Image.Resampling.LANCZOS)
        sheet.paste(thumb, (x, y))

    draw.text((x_of(0), cell // 2 + 6), "photo", fill="black")
    for j, painting in enumerate(PAINTINGS, 1):
        paste(ROOT / "examples" / painting, x_of(j), 4, (cell, cell // 2))
        draw.text((x_of(j), cell // 2 + 6), pathlib.Path(painting).stem.replace("_", " "), fill="black")
    missing = len(args.preset) * len(PHOTOS) * len(PAINTINGS)
    kept_cells = []
    y = head
    for (preset, photo), h in zip(rows, heights):
        if preset not in args.preset:   # a row kept from the old sheet as it was
            sheet.paste(old.crop((0, y, width, y + h + pad)), (0, y))
            y += h + pad
            continue
        draw.text((6, y + h // 2 - 6), f"{preset}.yaml", fill="black")
        paste(ROOT / "examples" / photo, x_of(0), y, (cell, h))
        for j, painting in enumerate(PAINTINGS, 1):
            folder = run_dir(args.out, preset, photo, painting)
            if finished(folder):
                missing -= 1
                paste(folder / "output.png", x_of(j), y, (cell, h))
            elif old is not None:       # not re-rendered (yet): the old sheet's cell stays
                sheet.paste(old.crop((x_of(j), y, x_of(j) + cell, y + h)), (x_of(j), y))
                kept_cells.append(f"{pathlib.Path(photo).stem} x {pathlib.Path(painting).stem}")
            else:
                draw.rectangle([x_of(j), y, x_of(j) + cell - 1, y + h - 1], fill=(200, 200, 200))
                draw.text((x_of(j) + 8, y + h // 2 - 6), "not rendered yet", fill="black")
        y += h + pad
    caption = "seed 0; " + (", ".join(args.set) if args.set else "presets as committed")
    if kept_cells:
        caption += f"; {', '.join(args.preset)}: {len(kept_cells)} cell(s) from the earlier sheet"
    elif missing:
        caption += f"; {missing} of {len(args.preset) * len(PHOTOS) * len(PAINTINGS)} images not rendered yet"
    draw.text((6, sheet.height - 20), f"xnn style transfer gallery ({caption})", fill="black")
    args.sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.sheet, quality=88)
    print(f"wrote {args.sheet}")
    return sheet


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", action="append", choices=PRESETS, help="render only this preset's rows (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to every new run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, the CPU cores shared between them")
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "runs" / "gallery")
    p.add_argument("--sheet", type=pathlib.Path, default=ROOT / "docs" / "gallery.jpg")
    p.add_argument("--cell", type=int, default=220, help="thumbnail side in the sheet")
    p.add_argument("--sheet-only", action="store_true", help="only rebuild the sheet from finished runs")
    p.add_argument("--keep-rows-from", type=pathlib.Path, metavar="SHEET",
                   help="a whole sheet this script made (every preset, the same --cell): the rows of the presets "
                        "not chosen with --preset, and their cells not rendered yet, are copied from it, so one "
                        "preset can be re-rendered alone")
    args = p.parse_args(argv)
    args.preset = args.preset or PRESETS
    args.out, args.sheet = args.out.resolve(), args.sheet.resolve()   # the runs start in ROOT, not here
    return args


def main(argv=None):
    args = parse_args(argv)
    if not args.sheet_only:
        render(args)
    contact_sheet(args)


if __name__ == "__main__":
    main()
