"""docs/make_gallery.py: which runs it starts, and where each output lands on the contact sheet."""
import importlib.util
import json
import pathlib
import signal
import threading

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def gallery():
    spec = importlib.util.spec_from_file_location("make_gallery", ROOT / "docs" / "make_gallery.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(folder, colour, done=True, stopped=False):
    folder.mkdir(parents=True)
    Image.new("RGB", (300, 200), colour).save(folder / "output.png")
    if done or stopped:          # a stopped run writes its output and summary too
        (folder / "summary.json").write_text(json.dumps({"iterations": 1, "stopped": stopped}))


def test_commands_skip_finished_resume_unfinished_and_start_the_rest(gallery, tmp_path):
    args = gallery.parse_args(["--out", str(tmp_path), "--preset", "style", "--set", "image_size=64"])
    fake_run(gallery.run_dir(tmp_path, "style", "chelsea.png", "starry_night.jpg"), "red")
    fake_run(gallery.run_dir(tmp_path, "style", "coffee.png", "the_scream.jpg"), "red", done=False)
    fake_run(gallery.run_dir(tmp_path, "style", "chelsea.png", "shipwreck.jpg"), "red", stopped=True)
    todo = gallery.commands(args)
    assert len(todo) == len(gallery.PHOTOS) * len(gallery.PAINTINGS) - 1
    assert "--resume" in {label: cmd for label, _, cmd in todo}["style: chelsea.png x shipwreck.jpg"]
    by_label = {label: cmd for label, _, cmd in todo}
    resumed = by_label["style: coffee.png x the_scream.jpg"]
    assert "--resume" in resumed and "image_size=64" not in resumed
    assert resumed[resumed.index("--device") + 1] == "auto"     # a GPU, if there is one now, takes over
    new = by_label["style: astronaut.png x shipwreck.jpg"]
    assert new[2].endswith("configs/style.yaml")
    for flag in ("content_image=examples/astronaut.png", "style_image=examples/shipwreck.jpg", "image_size=64"):
        assert new[new.index(flag) - 1] == "--set"
    assert new[new.index("--seed") + 1] == "0"
    assert new[new.index("--out") + 1] == str(gallery.run_dir(tmp_path, "style", "astronaut.png", "shipwreck.jpg"))


def test_sheet_puts_each_output_in_its_cell_and_greys_the_missing(gallery, tmp_path):
    cell = 60
    args = gallery.parse_args(["--out", str(tmp_path / "runs"), "--sheet", str(tmp_path / "sheet.jpg"),
                               "--cell", str(cell), "--sheet-only"])
    fake_run(gallery.run_dir(args.out, "style", "coffee.png", "shipwreck.jpg"), (255, 0, 0))
    fake_run(gallery.run_dir(args.out, "style_jcjohnson", "astronaut.png", "starry_night.jpg"), (0, 0, 255))
    gallery.contact_sheet(args)
    sheet = np.asarray(Image.open(args.sheet).convert("RGB")).astype(int)
    rows = [("style", "coffee.png"), ("style_jcjohnson", "astronaut.png")]   # the others have nothing yet
    heights = [40, 60]                # coffee.png is 600x400, so its row is 2/3 of a cell; astronaut.png is square
    pad, label_w, head = 6, 110, cell // 2 + 24

    def corner(preset, photo, painting, dy=4):   # inside the thumbnail of that cell, clear of any text
        i = rows.index((preset, photo))
        j = 1 + gallery.PAINTINGS.index(painting)
        return sheet[head + sum(heights[:i]) + i * pad + dy, label_w + j * (cell + pad) + 4]

    assert np.abs(corner("style", "coffee.png", "shipwreck.jpg") - [255, 0, 0]).max() < 40
    assert np.abs(corner("style", "coffee.png", "shipwreck.jpg", dy=heights[0] + 2) - 255).max() < 20   # the gap
    assert np.abs(corner("style_jcjohnson", "astronaut.png", "starry_night.jpg") - [0, 0, 255]).max() < 40
    assert np.abs(corner("style", "coffee.png", "starry_night.jpg") - 200).max() < 20   # not rendered: grey
    assert np.abs(corner("style", "coffee.png", "starry_night.jpg", dy=heights[0] - 3) - 200).max() < 20
    assert sheet.shape[0] == head + sum(heights) + len(rows) * pad + 24
    assert sheet.shape[1] == label_w + (1 + len(gallery.PAINTINGS)) * (cell + pad)


def test_jobs_share_the_cores_this_process_may_use(gallery, tmp_path, monkeypatch):
    args = gallery.parse_args(["--out", str(tmp_path), "--preset", "style", "--jobs", "2"])
    envs = []
    monkeypatch.setattr(gallery, "usable_cores", lambda: 6)
    done = type("Done", (), {"wait": lambda self: 0})()
    monkeypatch.setattr(gallery.subprocess, "Popen", lambda cmd, env, **kw: envs.append(env) or done)
    gallery.render(args)
    assert len(envs) == len(gallery.PHOTOS) * len(gallery.PAINTINGS)
    assert {e["XNN_THREADS"] for e in envs} == {"3"}


class FakeRun:
    """A run that goes on until it is sent SIGINT, then exits 130 as xnn does after its checkpoint."""
    started = []

    def __init__(self, cmd, env=None, start_new_session=False, **kw):
        self.env, self.own_session, self.signals = env, start_new_session, []
        self.stopped = threading.Event()
        FakeRun.started.append(self)

    def send_signal(self, signum):
        self.signals.append(signum)
        self.stopped.set()

    def wait(self):
        assert self.stopped.wait(10), "the run was never stopped"
        return 130


@pytest.mark.parametrize("sigint_ignored", [False, True])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_each_run_once_and_starts_no_more(gallery, tmp_path, monkeypatch, signum,
                                                                   sigint_ignored):
    """The runs have their own session (a terminal's Ctrl-C reaches only the gallery); the
    gallery passes one SIGINT to each running run, so each saves a checkpoint, and starts no
    queued run.  The same when the signal is sent to the gallery alone (kill -INT / -TERM PID)."""
    args = gallery.parse_args(["--out", str(tmp_path), "--preset", "style", "--jobs", "2"])
    FakeRun.started = []

    def first_run_then_signal(*a, **kw):
        run = FakeRun(*a, **kw)
        if len(FakeRun.started) == 1:
            # to another thread, once the gallery waits: the kernel may hand a terminal's Ctrl-C
            # to any thread, and Python runs the handler in the main thread only when it wakes up
            threading.Timer(0.5, lambda: signal.pthread_kill(threading.get_ident(), signum)).start()
        return run
    monkeypatch.setattr(gallery.subprocess, "Popen", first_run_then_signal)
    original = signal.signal(signal.SIGINT, signal.SIG_IGN if sigint_ignored else signal.default_int_handler)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)   # SIG_IGN: as under nohup ... &
    try:
        with pytest.raises(SystemExit) as stop:
            gallery.render(args)
        after = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, original)
    assert stop.value.code == 130
    assert 1 <= len(FakeRun.started) <= 2 < len(gallery.PHOTOS) * len(gallery.PAINTINGS)
    assert all(run.own_session and run.signals == [signal.SIGINT] for run in FakeRun.started)
    assert after == before                 # the gallery's handlers are gone again


def test_a_relative_out_folder_means_the_same_to_the_runs_and_the_sheet(gallery, tmp_path, monkeypatch):
    """The runs start in the repository root; a relative --out given elsewhere must not split."""
    monkeypatch.chdir(tmp_path)
    args = gallery.parse_args(["--out", "relout", "--sheet", "sheet.jpg", "--preset", "style"])
    assert args.out == tmp_path / "relout" and args.sheet == tmp_path / "sheet.jpg"
    fake_run(gallery.run_dir(args.out, "style", "chelsea.png", "starry_night.jpg"), "red")
    todo = gallery.commands(args)
    assert len(todo) == len(gallery.PHOTOS) * len(gallery.PAINTINGS) - 1
    assert all(cmd[cmd.index("--out") + 1].startswith(str(tmp_path / "relout")) for _, _, cmd in todo)


def test_one_preset_re_rendered_keeps_the_other_rows_of_the_old_sheet(gallery, tmp_path):
    """--keep-rows-from: the chosen preset's rows come from its new runs (a cell not rendered yet keeps
    the old one), every other row is copied from the old whole sheet; a sheet of another layout is
    refused with one line."""
    cell = 60
    old_runs, new_runs = tmp_path / "old", tmp_path / "new"
    for preset in gallery.PRESETS:
        for photo in gallery.PHOTOS:
            for painting in gallery.PAINTINGS:
                fake_run(gallery.run_dir(old_runs, preset, photo, painting), (0, 0, 255))
    old_sheet = tmp_path / "old.jpg"
    gallery.contact_sheet(gallery.parse_args(["--out", str(old_runs), "--sheet", str(old_sheet), "--cell", str(cell)]))
    fake_run(gallery.run_dir(new_runs, "style", "coffee.png", "shipwreck.jpg"), (255, 0, 0))
    new_sheet = tmp_path / "new.jpg"
    gallery.contact_sheet(gallery.parse_args(["--out", str(new_runs), "--sheet", str(new_sheet), "--cell", str(cell),
                                              "--preset", "style", "--keep-rows-from", str(old_sheet)]))
    old, new = (np.asarray(Image.open(p).convert("RGB")).astype(int) for p in (old_sheet, new_sheet))
    assert old.shape == new.shape
    heights = {"chelsea.png": 40, "coffee.png": 40, "astronaut.png": 60}
    pad, label_w, head = 6, 110, cell // 2 + 24
    y, tops = head, {}
    for photo in gallery.PHOTOS:
        for preset in gallery.PRESETS:
            tops[preset, photo] = y
            y += heights[photo] + pad

    def at(sheet, preset, photo, painting):
        return sheet[tops[preset, photo] + 4, label_w + (1 + gallery.PAINTINGS.index(painting)) * (cell + pad) + 4]

    for photo in gallery.PHOTOS:
        for painting in gallery.PAINTINGS:
            assert np.abs(at(new, "style_jcjohnson", photo, painting) - [0, 0, 255]).max() < 40   # kept
            expected = [255, 0, 0] if (photo, painting) == ("coffee.png", "shipwreck.jpg") else [0, 0, 255]
            assert np.abs(at(new, "style", photo, painting) - expected).max() < 40      # new, or the old cell
    with pytest.raises(SystemExit, match="not a whole sheet"):
        gallery.contact_sheet(gallery.parse_args(["--out", str(new_runs), "--sheet", str(new_sheet), "--cell", "80",
                                                  "--preset", "style", "--keep-rows-from", str(old_sheet)]))
