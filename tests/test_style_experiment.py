"""The style experiment end to end with the real VGG19 conv weights, on tiny images."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy
import pytest

from xnn.cli import main
from xnn.data.images import load_image, resize_longer_side, rgb_to_yiq

from .conftest import weights_path
from .helpers import assert_one_line_error

REPO = pathlib.Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs" / "style.yaml")
TINY = ["--set", "image_size=40", "--set", "print_iter=1", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def need_weights():
    weights_path("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")


def run(tmp_path, name, *overrides):
    out = tmp_path / name
    argv = [CFG, *TINY, "--out", str(out)]
    for o in overrides:
        argv += ["--set", o]
    assert main(argv) == 0
    return out


def metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_iteration_zero_losses_match_an_independent_computation(tmp_path):
    out = run(tmp_path, "r", "num_iterations=0", "init=random", "tv_weight=0.5", "content_weight=2",
              "style_weight=3")
    row = metrics(out)[0]
    assert row["iter"] == 0 and set(row) == {"iter", "content_loss", "style_loss", "tv_loss", "total_loss", "elapsed_s"}
    # independent: float64 features from the model, losses from the formulas written here
    from xnn.models import vgg19
    vgg = vgg19(weights="vgg19-imagenet-notop", include_top=False)
    vgg.net.to(None, numpy.float64)
    content = resize_longer_side(load_image(REPO / "examples" / "chelsea.png"), 40)
    style = resize_longer_side(load_image(REPO / "examples" / "starry_night.jpg"), 40)
    x0 = numpy.random.default_rng(0).standard_normal((1, 3) + content.shape[:2]).astype(numpy.float32)
    x0 = x0.astype(numpy.float64)
    prep = lambda im: vgg.preprocess(im).astype(numpy.float64)  # noqa: E731
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    fx = {k: v.copy() for k, v in vgg.features(x0, layers + ["relu4_2"]).items()}
    fc = vgg.features(prep(content), ["relu4_2"])["relu4_2"].copy()
    fs = {k: v.copy() for k, v in vgg.features(prep(style), layers).items()}
    lc = 0.5 * ((fx["relu4_2"] - fc) ** 2).sum()
    ls = 0.0
    for name in layers:
        _, c, h, w = fx[name].shape
        g = numpy.einsum("cm,dm->cd", fx[name].reshape(c, -1), fx[name].reshape(c, -1))
        a = numpy.einsum("cm,dm->cd", fs[name].reshape(c, -1), fs[name].reshape(c, -1))
        ms = fs[name].shape[2] * fs[name].shape[3]       # each Gram per its own positions
        ls += ((g / (h * w) - a / ms) ** 2).sum() / (4 * c ** 2) / len(layers)
    img = x0[0]
    tv = ((img[:, 1:, :] - img[:, :-1, :]) ** 2).sum() + ((img[:, :, 1:] - img[:, :, :-1]) ** 2).sum()
    assert row["content_loss"] == pytest.approx(2 * lc, rel=1e-4)
    assert row["style_loss"] == pytest.approx(3 * ls, rel=1e-4)
    assert row["tv_loss"] == pytest.approx(0.5 * tv, rel=1e-4)
    assert row["total_loss"] == pytest.approx(2 * lc + 3 * ls + 0.5 * tv, rel=1e-4)


@pytest.mark.parametrize("opt", [["optimizer=lbfgs"], ["optimizer=lbfgs", "lbfgs_backend=device"],
                                 ["optimizer=adam", "learning_rate=5"]])
def test_optimisers_reduce_the_loss_and_write_the_run_folder(tmp_path, opt):
    out = run(tmp_path, "r", "num_iterations=6", "save_iter=3", *opt)
    rows = metrics(out)
    assert [r["iter"] for r in rows] == list(range(7))
    assert rows[-1]["total_loss"] < 0.8 * rows[0]["total_loss"]
    names = {p.name for p in out.iterdir()}
    assert {"output.png", "summary.png", "losses.png", "summary.json", "config.yaml", "iter_00003.png",
            "checkpoint.npz"} <= names
    assert not [n for n in names if ".tmp" in n]
    s = json.loads((out / "summary.json").read_text())
    assert s["iterations"] == 6 and s["seconds_per_iteration"] > 0 and s["total_loss"] <= rows[0]["total_loss"]
    assert load_image(out / "output.png").shape == (27, 40, 3)


def test_adam_resume_gives_the_uninterrupted_result(tmp_path):
    full = run(tmp_path, "full", "optimizer=adam", "num_iterations=6", "save_iter=0")
    part = run(tmp_path, "part", "optimizer=adam", "num_iterations=3", "save_iter=0")
    assert main(["--resume", str(part), "--set", "num_iterations=6", "--quiet"]) == 0
    with numpy.load(full / "checkpoint.npz") as a, numpy.load(part / "checkpoint.npz") as b:
        assert int(a["iteration"]) == int(b["iteration"]) == 6
        numpy.testing.assert_array_equal(a["image"], b["image"])
    assert [r["iter"] for r in metrics(part)] == list(range(7))
    assert metrics(part)[-1]["total_loss"] == metrics(full)[-1]["total_loss"]


def test_same_seed_same_numbers(tmp_path):
    a = run(tmp_path, "a", "init=random", "num_iterations=2")
    b = run(tmp_path, "b", "init=random", "num_iterations=2")
    assert [r["total_loss"] for r in metrics(a)] == [r["total_loss"] for r in metrics(b)]


def test_original_colors_keep_the_content_chroma(tmp_path):
    out = run(tmp_path, "r", "num_iterations=3", "original_colors=true")
    result = load_image(out / "output.png") / 255.0
    content = resize_longer_side(load_image(REPO / "examples" / "chelsea.png"), 40) / 255.0
    yr, yc = rgb_to_yiq(result), rgb_to_yiq(content)
    assert numpy.abs(yr[..., 1:] - yc[..., 1:]).mean() < 0.03  # chroma from the content (up to clipping, 8-bit)


def test_blend_weights_select_styles(tmp_path):
    one = run(tmp_path, "one", "num_iterations=0")
    two = run(tmp_path, "two", "num_iterations=0",
              "style_image=[examples/starry_night.jpg, examples/the_scream.jpg]", "style_blend_weights=[1, 0]")
    mix = run(tmp_path, "mix", "num_iterations=0",
              "style_image=[examples/starry_night.jpg, examples/the_scream.jpg]", "style_blend_weights=[1, 1]")
    assert metrics(two)[0]["style_loss"] == pytest.approx(metrics(one)[0]["style_loss"], rel=1e-5)
    assert metrics(mix)[0]["style_loss"] != pytest.approx(metrics(one)[0]["style_loss"], rel=1e-3)


def test_corrupt_image_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert_one_line_error(capsys, [CFG, "--set", f"style_image={bad}", "--out", tmp_path / "run"], "bad.jpg",
                          absent=[tmp_path / "run"])


def test_sigint_saves_image_and_checkpoint_then_resume(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, str(REPO / "run.py"), CFG, *TINY, "--set", "num_iterations=500",
                          "--set", "optimizer=adam", "--out", str(out)], env=env, cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        m = out / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 3:
            break
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err.decode()
    assert (out / "output.png").exists() and (out / "checkpoint.npz").exists()
    assert b"--resume" in err
    with numpy.load(out / "checkpoint.npz") as f:
        stopped_at = int(f["iteration"])
    assert 2 <= stopped_at < 500
    assert main(["--resume", str(out), "--set", f"num_iterations={stopped_at + 2}", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["iterations"] == stopped_at + 2


def test_coarse_to_fine_stages_write_each_stage_and_log_it(tmp_path):
    out = run(tmp_path, "r", "image_size=[32, 48]", "num_iterations=[2, 3]", "optimizer=adam", "learning_rate=5",
              "save_iter=0")
    rows = metrics(out)
    assert [(r["stage"], r["image_size"]) for r in rows][0] == (1, 32)
    assert {(r["stage"], r["image_size"]) for r in rows} == {(1, 32), (2, 48)}
    assert max(r["iter"] for r in rows if r["stage"] == 2) == 3
    stage1, final = load_image(out / "stage1_32px.png"), load_image(out / "output.png")
    assert max(stage1.shape[:2]) == 32 and max(final.shape[:2]) == 48
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 5 and summary["stages"] == [32, 48] and summary["image_size"] == list(final.shape[:2])
    assert (out / "summary.png").exists()


def test_a_forced_tile_gives_the_untiled_losses(tmp_path):
    """tile_size: 64 on a 176 px image (4 tiles) logs the same losses as the whole image."""
    common = ["image_size=176", "num_iterations=1", "optimizer=adam", "save_iter=0"]
    whole = metrics(run(tmp_path, "whole", *common, "tile_size=null"))
    tiled = metrics(run(tmp_path, "tiled", *common, "tile_size=64"))
    for a, b in zip(whole, tiled):
        # iteration 0 evaluates the same forward; after Adam's first step, which moves each pixel by
        # about lr * sign(g), pixels with a rounding-sized gradient move either way: the whole image and
        # the tiles may take different algorithms for the input gradient (F(6x6) needs many tiles), so
        # 1e-3 there (the gradients themselves: tests/test_style_tiled.py, to 1e-4 in float32)
        for k in ("content_loss", "style_loss", "tv_loss", "total_loss"):
            assert b[k] == pytest.approx(a[k], rel=1e-4 if a["iter"] == 0 else 1e-3), k
    summary = json.loads((tmp_path / "tiled" / "summary.json").read_text())
    assert summary["tile_size"] == [64]


def test_jcjohnson_scaling_reports_its_own_terms(tmp_path):
    common = ["num_iterations=0", "init=random", "content_weight=5", "style_weight=100", "tv_weight=0.001"]
    out = run(tmp_path, "r", *common, "loss_scaling=jcjohnson")
    row, gatys = metrics(out)[0], metrics(run(tmp_path, "g", *common))[0]
    h, w = load_image(out / "output.png").shape[:2]
    numel = 512 * (h // 8) * (w // 8)                                         # relu4_2's elements
    assert row["content_loss"] == pytest.approx(gatys["content_loss"] * 2 / numel, rel=1e-5)   # mean, not 1/2 sum
    assert row["tv_loss"] == pytest.approx(gatys["tv_loss"] / 2, rel=1e-5)     # 1/2 sum of squares
    assert json.loads((out / "summary.json").read_text())["loss_scaling"] == "jcjohnson"


def test_lbfgs_history_moves_to_the_host_when_the_gpu_is_short():
    import xnn
    from xnn.experiments.style import _lbfgs_backend

    from .conftest import STANDIN
    cfg = {"lbfgs_backend": "auto", "lbfgs_num_correction": 50}
    assert _lbfgs_backend(cfg, STANDIN, 512 * 341, 8 * 2**30) == "device"
    assert _lbfgs_backend(cfg, STANDIN, 4096 * 2731, 2 * 2**30) == "scipy"    # 15 GB of history on a 2 GB GPU
    # 2048x1365 on an 8 GB GPU: 50 pairs (3.4 GB) fit, 100 (6.7 GB, with the rest over 7.2 GB) do not
    assert _lbfgs_backend(cfg, STANDIN, 2048 * 1365, 8 * 2**30) == "device"
    assert _lbfgs_backend(dict(cfg, lbfgs_num_correction=100), STANDIN, 2048 * 1365, 8 * 2**30) == "scipy"
    assert _lbfgs_backend(cfg, xnn.device("cpu"), 512 * 341, 8 * 2**30) == "device"
    assert _lbfgs_backend({"lbfgs_backend": "device"}, STANDIN, 4096 * 2731, 2 * 2**30) == "device"
    assert _lbfgs_backend({"lbfgs_backend": "scipy"}, xnn.device("cpu"), 512 * 341, None) == "scipy"


def test_lbfgs_keeps_fewer_pairs_only_when_they_would_crowd_memory():
    from xnn.experiments.style import _lbfgs_history
    cfg = {"optimizer": "lbfgs", "lbfgs_num_correction": 50}
    gib = 2**30
    assert _lbfgs_history(cfg, "lbfgs-device", 512 * 341, 8 * gib) == 50
    # 4096x2731 on 24 GiB: the fixed arrays take 2.5 GiB, a pair 0.25 GiB, half of 24 GiB is 12
    assert _lbfgs_history(cfg, "lbfgs-device", 4096 * 2731, 24 * gib) == int((12 * gib - 236 * 4096 * 2731)
                                                                            // (24 * 4096 * 2731))
    assert _lbfgs_history(cfg, "lbfgs-device", 16384 * 10923, 24 * gib) == 5          # the floor
    assert _lbfgs_history(dict(cfg, optimizer="adam"), "adam", 16384 * 10923, 24 * gib) == 50
    assert _lbfgs_history(cfg, "host", 4096 * 2731, 2 * gib) == 50     # SciPy's state is in host memory
    assert _lbfgs_history(cfg, "lbfgs-device", 4096 * 2731, None) == 50


def _stop_when_saving(monkeypatch, name):
    """Set the run's stop flag when it saves ``name`` (a Ctrl-C that lands at that moment)."""
    from xnn.experiments.base import RunContext
    save = RunContext.save_image

    def save_and_stop(self, file, image):
        save(self, file, image)
        if file == name:
            self.stop.set("test")
    monkeypatch.setattr(RunContext, "save_image", save_and_stop)


def test_a_stop_after_the_last_step_is_no_stop(tmp_path, monkeypatch):
    _stop_when_saving(monkeypatch, "summary.png")
    out = run(tmp_path, "r", "num_iterations=2")          # run() asserts exit code 0, not 130
    s = json.loads((out / "summary.json").read_text())
    assert s["stopped"] is False and s["iterations"] == 2


def test_a_stop_between_stages_resumes_with_the_next_stage(tmp_path, monkeypatch):
    common = ["--set", "image_size=[32, 48]", "--set", "num_iterations=[2, 3]", "--set", "optimizer=adam",
              "--set", "learning_rate=5", "--set", "save_iter=0"]
    full = run(tmp_path, "full", *[a for a in common if a != "--set"])
    _stop_when_saving(monkeypatch, "stage1_32px.png")
    out = tmp_path / "part"
    assert main([CFG, *TINY, *common, "--out", str(out)]) == 130
    assert not (out / "output.png").exists()              # stage 2 did not start
    with numpy.load(out / "checkpoint.npz") as ck:
        assert (int(ck["stage"]), int(ck["iteration"])) == (0, 2)
    monkeypatch.undo()
    assert main(["--resume", str(out), "--quiet"]) == 0
    rows = metrics(out)
    assert [(r["stage"], r["iter"]) for r in rows] == [(1, i) for i in range(3)] + [(2, i) for i in range(4)]
    assert json.loads((out / "summary.json").read_text())["iterations"] == 5
    # stage 2 started from the same stage-1 image as in the uninterrupted run: the same result
    numpy.testing.assert_array_equal(load_image(out / "output.png"), load_image(full / "output.png"))
    assert [r["total_loss"] for r in rows] == [r["total_loss"] for r in metrics(full)]


def test_resume_after_an_abort_drops_the_rows_past_the_checkpoint(tmp_path, monkeypatch):
    """An abort (second Ctrl-C, a kill) after iteration 5 with checkpoints every 3: the resumed
    run repeats iterations 4 and 5, and metrics.jsonl holds each iteration once."""
    from xnn.experiments.base import RunContext
    log = RunContext.log

    def log_then_abort(self, **row):
        log(self, **row)
        if row.get("iter") == 5:
            raise KeyboardInterrupt
    common = ["optimizer=adam", "num_iterations=8", "save_iter=3"]
    full = run(tmp_path, "full", *common)
    monkeypatch.setattr(RunContext, "log", log_then_abort)
    out = tmp_path / "part"
    argv = [CFG, *TINY, "--out", str(out)]
    for o in common:
        argv += ["--set", o]
    assert main(argv) == 130
    assert [r["iter"] for r in metrics(out)] == list(range(6))
    monkeypatch.undo()
    assert main(["--resume", str(out), "--quiet"]) == 0
    assert [r["iter"] for r in metrics(out)] == list(range(9))
    assert [r["total_loss"] for r in metrics(out)] == [r["total_loss"] for r in metrics(full)]


def test_lbfgs_that_ends_early_logs_its_last_row_and_counts_what_ran(tmp_path):
    """Content loss only, starting at the content: the gradient is zero and L-BFGS-B ends at
    iteration 0 of 5. The stage counts as done (a resume adds nothing) and 0 iterations ran."""
    common = ["num_iterations=5", "style_weight=0", "tv_weight=0", "init=image", "print_iter=0"]
    out = run(tmp_path, "r", *common)
    s = json.loads((out / "summary.json").read_text())
    assert s["iterations"] == 0 and s["stopped"] is False
    with numpy.load(out / "checkpoint.npz") as ck:
        assert int(ck["iteration"]) == 5 and int(ck["done"]) == 0
    assert [r["iter"] for r in metrics(out)] == [0]
    assert main(["--resume", str(out), "--quiet"]) == 0    # nothing left to do: no new rows
    assert [r["iter"] for r in metrics(out)] == [0]
    assert json.loads((out / "summary.json").read_text())["iterations"] == 0


def test_lbfgs_that_ends_early_in_a_middle_stage_logs_the_stage_end(tmp_path, monkeypatch):
    """A stage whose L-BFGS returns after 2 of 4 iterations: its last row is logged with
    print_iter 0 (first and last), the bar and the next stage go on, 2 + 2 iterations ran."""
    import xnn.style
    real = xnn.style.lbfgs_device_minimize       # lbfgs_backend auto on the CPU

    def two_at_most(fun, x, *, max_iter, **kw):
        res = real(fun, x, max_iter=min(max_iter, 2), **kw)
        res.message = "test: ended early"
        return res
    monkeypatch.setattr(xnn.style, "lbfgs_device_minimize", two_at_most)
    out = run(tmp_path, "r", "image_size=[32, 48]", "num_iterations=[4, 2]", "print_iter=0", "save_iter=0")
    assert [(r["stage"], r["iter"]) for r in metrics(out)] == [(1, 0), (1, 2), (2, 0), (2, 2)]
    assert json.loads((out / "summary.json").read_text())["iterations"] == 4


def test_progress_png_shows_the_picture_so_far_and_the_bar_names_it(tmp_path, monkeypatch):
    """progress.png is written once the first PREVIEW_FIRST_S have passed (here at once), then
    every preview_s, and at the end of each stage; the progress line carries its path."""
    from xnn.experiments import base as experiment_base
    from xnn.experiments import style
    previews, bars = [], []
    real_save = experiment_base.RunContext.save_image

    def spy(self, name, image):
        if name == "progress.png":
            previews.append(numpy.asarray(image).copy())
        return real_save(self, name, image)

    class Bar(experiment_base.Progress):
        def update(self, n=1, **postfix):
            bars.append(postfix.get("preview"))
            return super().update(n, **postfix)
    monkeypatch.setattr(experiment_base.RunContext, "save_image", spy)
    monkeypatch.setattr(experiment_base, "Progress", Bar)
    monkeypatch.setattr(style, "PREVIEW_FIRST_S", 0.0)
    out = run(tmp_path, "r", "num_iterations=3", "optimizer=adam", "preview_s=3600")
    # one after the first iteration, then none until the stage ends (an hour apart here)
    assert len(previews) == 2 and bars == [str(out / "progress.png")] * 3
    final = load_image(out / "progress.png")
    numpy.testing.assert_array_equal(final, load_image(out / "output.png"))
    assert not numpy.array_equal((previews[0] * 255).round().astype(numpy.uint8), final)   # an earlier picture


def test_preview_s_sets_how_often_progress_png_is_written(tmp_path, monkeypatch):
    """preview_s shorter than the first wait: the first preview comes after preview_s, then every
    preview_s (here: every iteration)."""
    from xnn.experiments import base as experiment_base
    previews = []
    real_save = experiment_base.RunContext.save_image

    def spy(self, name, image):
        previews.append(name)
        return real_save(self, name, image)
    monkeypatch.setattr(experiment_base.RunContext, "save_image", spy)
    run(tmp_path, "r", "num_iterations=4", "optimizer=adam", "preview_s=1e-9")
    assert previews.count("progress.png") == 4 + 1     # after each iteration, and at the stage's end
