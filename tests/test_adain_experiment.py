"""The adain experiment: one image, a folder of images (batch mode), and its errors."""
import json
import pathlib

import numpy
import pytest
from PIL import Image

from xnn.cli import main
from xnn.data.images import load_image

from .conftest import weights_path

REPO = pathlib.Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs" / "adain.yaml")


@pytest.fixture(autouse=True)
def need_weights():
    weights_path("adain_vgg_normalised_to_relu4_1.npz")
    weights_path("adain_decoder.npz")


def test_single_image_run_folder(tmp_path):
    out = tmp_path / "run"
    assert main([CFG, "--set", "image_size=72", "--set", "style_size=64", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    assert {"output.png", "summary.png", "summary.json", "config.yaml", "metrics.jsonl"} <= {p.name for p in out.iterdir()}
    img = load_image(out / "output.png")
    content = load_image(REPO / "examples" / "chelsea.png")
    assert img.shape == (48, 72, 3)  # 451x300 resized to a longer side of 72, exactly
    assert content.shape[1] * 48 // content.shape[0] in (71, 72)
    s = json.loads((out / "summary.json").read_text())
    assert s["images"] == 1 and s["seconds_per_image_median"] > 0 and s["output_size"] == [48, 72]


def test_batch_mode_keeps_names_and_sizes(tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = numpy.random.default_rng(0)
    sizes = {"f001.png": (40, 56), "f002.jpg": (33, 47), "f003.png": (50, 50)}
    for name, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=numpy.uint8)).save(frames / name)
    (frames / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    assert main([CFG, "--set", f"content_image={frames}", "--set", "image_size=null", "--set", "style_size=48",
                 "--set", "alpha=0.5", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    produced = sorted(p.name for p in (out / "outputs").iterdir())
    assert produced == sorted(sizes)
    for name, (h, w) in sizes.items():
        assert load_image(out / "outputs" / name).shape == (h, w, 3)
    assert json.loads((out / "summary.json").read_text())["images"] == 3


@pytest.mark.parametrize("stop_after, code, left", [(1, 130, 1), (2, 0, 0)])
def test_batch_stop_leaves_the_rest_and_a_late_stop_is_none(tmp_path, monkeypatch, stop_after, code, left):
    """Ctrl-C after the first of two images: the second is not done, exit 130, stopped; after
    the last one: nothing was left undone, exit 0."""
    from xnn.experiments.base import RunContext
    frames = tmp_path / "frames"
    frames.mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(numpy.full((32, 40, 3), 90, numpy.uint8)).save(frames / name)
    log = RunContext.log

    def log_then_stop(self, **row):
        log(self, **row)
        if row.get("image") == ("a.png", "b.png")[stop_after - 1]:
            self.stop.set("test")
    monkeypatch.setattr(RunContext, "log", log_then_stop)
    out = tmp_path / "run"
    assert main([CFG, "--set", f"content_image={frames}", "--set", "image_size=null", "--set", "style_size=48",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == code
    s = json.loads((out / "summary.json").read_text())
    assert s["images"] == 2 - left and s["stopped"] is bool(left)


def test_two_styles_and_original_colors(tmp_path):
    out = tmp_path / "run"
    assert main([CFG, "--set", "image_size=48", "--set", "style_size=48",
                 "--set", "style_image=[examples/starry_night.jpg, examples/the_scream.jpg]",
                 "--set", "style_blend_weights=[0.7, 0.3]", "--set", "original_colors=true",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert load_image(out / "output.png").shape[:2] == (32, 48)


def test_tiled_run_gives_the_whole_image_result(tmp_path):
    """tile_size: 64 on a 240 px image (many tiles, halos in both passes) against tile_size: null."""
    outs = {}
    for tile in ("null", "64"):
        out = tmp_path / f"tile_{tile}"
        assert main([CFG, "--set", "image_size=240", "--set", "style_size=128", "--set", f"tile_size={tile}",
                     "--device", "cpu", "--quiet", "--out", str(out)]) == 0
        outs[tile] = load_image(out / "output.png").astype(numpy.float64)
        row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert row["tile_size"] == (None if tile == "null" else 64)
    mse = numpy.mean((outs["64"] - outs["null"]) ** 2)
    assert mse == 0 or 10 * numpy.log10(255.0 ** 2 / mse) >= 45


def test_auto_tiles_only_when_the_image_does_not_fit():
    from xnn.style.feedforward import tile_for
    assert tile_for(512, 512, "auto", 8 * 2**30) is None
    t = tile_for(4096, 4096, "auto", 4 * 2**30)
    assert t % 16 == 0 and 64 <= t < 4096
    assert tile_for(4096, 4096, 256, 4 * 2**30) == 256
    with pytest.raises(Exception, match="whole-image arrays alone"):
        tile_for(16384, 16384, "auto", 2 * 2**30)


def test_a_ray_result_that_arrived_before_a_stop_is_kept(monkeypatch):
    """engine: ray: a stop that comes in while a result is on its way still keeps that result; the run is
    stopped only if images are left (the Ray session and pool are replaced by a list of results here)."""
    import contextlib
    import types

    from xnn.engines import ImageResult
    from xnn.engines import ray as ray_engine
    from xnn.experiments import adain
    files = ["a.png", "b.png", "c.png"]
    ctx = types.SimpleNamespace(stop_requested=False, device=None, info=lambda *a: None)

    def results(*args):
        for name in files:
            yield ImageResult(name, data=b"bytes of " + name.encode(), seconds=0.5)
            ctx.stop_requested = name == "a.png" or ctx.stop_requested   # Ctrl-C while b is on its way
    monkeypatch.setattr(ray_engine, "session", lambda cfg, dev: contextlib.nullcontext())
    monkeypatch.setattr(ray_engine, "images", results)
    state = {"cfg": {}, "files": files, "job": None, "stylizer": None, "batch": True, "engine": ray_engine}
    got = [(str(p), data) for p, data, _, _ in adain._results(state, ctx, None)]
    assert got == [("a.png", b"bytes of a.png"), ("b.png", b"bytes of b.png")] and state["stopped"]
    ctx.stop_requested, files[:] = False, ["a.png"]
    state = {"cfg": {}, "files": files, "job": None, "stylizer": None, "batch": True, "engine": ray_engine}
    assert len(list(adain._results(state, ctx, None))) == 1 and not state.get("stopped")
