"""Training a fast style network (experiment train_style) and applying one (experiment fast_style):
the run folders, stop and resume, one training step against float64, and bad inputs."""
import json
import pathlib

import numpy
import pytest
from PIL import Image

import xnn
from xnn.cli import main
from xnn.data.images import load_image
from xnn.models import fast_style

from .conftest import weights_path
from .gradcheck import sampled_grad
from .helpers import assert_one_line_error

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "configs" / "train_fast_style.yaml")
APPLY = str(REPO / "configs" / "fast_style.yaml")
#: a training run small enough for a test: 32 px crops, a width-1/8 network, VGG19 to relu2_2
TINY = ["--set", "image_size=32", "--set", "width=0.125", "--set", "batch_size=2", "--set", "style_size=32",
        "--set", "preview_size=40", "--set", "hold_out=1", "--set", "content_layers=[relu2_2]",
        "--set", "style_layers=[relu1_2, relu2_2]", "--set", "print_iter=1", "--set", "preview_iter=2",
        "--set", "checkpoint_iter=2", "--set", "num_iterations=4", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def need_weights():
    weights_path("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")


@pytest.fixture
def photos(tmp_path):
    """A folder of 5 small photos (smooth colour fields with edges) and one file that is not an image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = numpy.random.default_rng(3)
    yy, xx = numpy.mgrid[0:48, 0:64]
    for i in range(5):
        img = numpy.stack([(xx * (i + 1) * 3) % 255, (yy * 4 + 40 * i) % 255,
                           ((xx + yy) > 50 + 5 * i) * 200], axis=2) + rng.integers(0, 30, (48, 64, 1))
        Image.fromarray(img.clip(0, 255).astype(numpy.uint8)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def train(photos, out, *extra):
    return main([TRAIN, "--set", f"dataset={photos}", *TINY, *extra, "--out", str(out)])


def test_training_writes_a_model_previews_and_curves(tmp_path, photos):
    out = tmp_path / "run"
    assert train(photos, out) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.npz", "train_state.npz", "preview.png", "previews", "losses.png", "summary.png",
            "summary.json", "metrics.jsonl", "config.yaml"} <= names
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["iter_00002.png", "iter_00004.png"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    assert all(r["total_loss"] == pytest.approx(r["content_loss"] + r["style_loss"] + r["tv_loss"], rel=1e-5)
               for r in rows)
    s = json.loads((out / "summary.json").read_text())
    assert s["iterations"] == 4 and s["held_out"] == ["p0.png"] and s["photos"] == 4
    assert s["skipped_files"][0].startswith("broken.jpg: ")    # sorted first, unreadable: not a preview
    net, width = fast_style.load_model(out / "model.npz")
    assert width == 0.125
    preview = load_image(out / "previews" / "iter_00004.png")
    assert preview.shape[0] >= 30 and preview.std() > 1


def test_style_normalisation_reaches_the_objective(tmp_path, photos):
    """style_normalisation reaches the run's config and its objective: the same content loss at the first
    step, another style loss (the weights w_l themselves: tests/test_perceptual.py)."""
    from xnn.config import read_yaml
    rows = {}
    for mode in ("none", "target"):
        out = tmp_path / mode
        assert train(photos, out, "--set", f"style_normalisation={mode}") == 0
        assert read_yaml(out / "config.yaml")["style_normalisation"] == mode
        rows[mode] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][0]
    assert rows["none"]["content_loss"] == pytest.approx(rows["target"]["content_loss"], rel=1e-6)
    assert not rows["none"]["style_loss"] == pytest.approx(rows["target"]["style_loss"], rel=1e-2)


def test_a_stopped_run_resumes_to_the_same_model(tmp_path, photos, monkeypatch):
    """4 iterations straight, or stopped after 3 (saved at 3) and resumed: the same weights, since each
    iteration's batch is drawn from (seed, iteration) and Adam's moments are saved."""
    from xnn.experiments.base import RunContext
    straight = tmp_path / "straight"
    assert train(photos, straight) == 0
    log = RunContext.log

    def log_then_stop(self, **row):
        log(self, **row)
        if row.get("iter") == 3:
            self.stop.set("test")
    monkeypatch.setattr(RunContext, "log", log_then_stop)
    parts = tmp_path / "parts"
    assert train(photos, parts) == 130
    assert json.loads((parts / "summary.json").read_text())["iterations"] == 3
    monkeypatch.setattr(RunContext, "log", log)
    assert main(["--resume", str(parts), "--quiet"]) == 0
    a, b = numpy.load(straight / "model.npz"), numpy.load(parts / "model.npz")
    assert a.files == b.files and str(a["arch"]) == str(b["arch"])
    for k in a.files:
        if k != "arch":
            numpy.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    rows = [json.loads(line) for line in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]


def test_one_training_step_against_float64(rng):
    """The experiment's train_step in float32 against the same step in float64, and the float64
    gradient against central differences of the whole objective (through VGG and the network):
    Adam's first step moves each weight by lr * g / (|g| + eps) for that gradient g."""
    from xnn.experiments.train_style import train_step
    from xnn.models import vgg19
    from xnn.optim import Adam
    from xnn.style.perceptual import PerceptualObjective
    dev = xnn.device("cpu")
    x = rng.uniform(0, 255, (2, 3, 16, 16))
    style = rng.uniform(-100, 100, (1, 3, 16, 16))

    def setup(dtype):
        vgg = vgg19(weights=None, device=dev, include_top=False, channels=(4, 4, 4, 4, 4), seed=2)
        vgg.truncate("relu2_2")
        vgg.net.to(dev, dtype)
        obj = PerceptualObjective(vgg, ["relu2_1"], ["relu1_2", "relu2_2"], content_weight=1.0,
                                  style_weight=3.0, tv_weight=1e-4)
        obj.set_style(dev.asarray(style.astype(dtype)))
        net = fast_style.transformer(1 / 16, seed=4).to(dev, dtype)
        return net, obj
    results = {}
    for dtype in (numpy.float32, numpy.float64):
        net, obj = setup(dtype)
        before = {k: xnn.to_numpy(v).copy() for k, v in net.params.items()}
        opt = Adam(net.trainable_params(), lr=1e-3)
        terms = train_step(net, obj, opt, dev.asarray(x.astype(dtype)))
        results[dtype] = (float(terms["total"]), {k: xnn.to_numpy(v) - before[k] for k, v in net.params.items()},
                          {k: xnn.to_numpy(g) for k, g in net.grads.items()})
    (l32, step32, _), (l64, step64, grads64) = results[numpy.float32], results[numpy.float64]
    assert l32 == pytest.approx(l64, rel=1e-4)
    net, obj = setup(numpy.float64)
    x64 = dev.asarray(x)

    def total():
        return obj.loss_and_grad(net.forward(x64), x64)[0]["total"]
    for name in ("conv1.W", "res3.conv_a.W", "in2.gamma", "conv6.b"):
        idx, num = sampled_grad(total, net.params[name], numpy.random.default_rng(1), count=6, eps=1e-6)
        got = grads64[name].reshape(-1)[idx]
        numpy.testing.assert_allclose(got, num, rtol=2e-4, atol=1e-6 * numpy.abs(num).max(), err_msg=name)
        numpy.testing.assert_allclose(step64[name].reshape(-1)[idx], -1e-3 * num / (numpy.abs(num) + 1e-8),
                                      rtol=1e-3, atol=1e-7, err_msg=name)
    for name in step64:
        if name.endswith("in_b.beta"):   # no effect on the output, gradient 0 up to rounding: Adam follows noise
            continue
        big = numpy.abs(grads64[name]) > 1e-3 * numpy.abs(grads64[name]).max()   # sign(g) well defined
        numpy.testing.assert_allclose(step32[name][big], step64[name][big], rtol=2e-2, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("parts", [2, 3])
def test_a_step_in_parts_equals_the_whole_step_in_float64(dev, rng, parts):
    """train_step with twins (train_style's parts): the terms and every weight gradient equal the whole
    batch's, with a TV term (a sum over the batch, unlike the content and style means) that matters."""
    from xnn.experiments.train_style import make_twins, train_step
    from xnn.models import vgg19
    from xnn.optim import SGD
    from xnn.style.perceptual import PerceptualObjective
    x = dev.asarray(rng.uniform(0, 255, (3, 3, 16, 16)))
    style = dev.asarray(rng.uniform(-100, 100, (1, 3, 16, 16)))
    results = []
    for k in (1, parts):
        vgg = vgg19(weights=None, device=dev, include_top=False, channels=(4, 4, 4, 4, 4), seed=2)
        vgg.truncate("relu2_2")
        vgg.net.to(dev, numpy.float64)
        obj = PerceptualObjective(vgg, ["relu2_1"], ["relu1_2", "relu2_2"], content_weight=1.0,
                                  style_weight=3.0, tv_weight=0.05).set_style(style)
        net = fast_style.transformer(1 / 16, seed=4).to(dev, numpy.float64)
        before = {n: xnn.to_numpy(v).copy() for n, v in net.params.items()}
        twins = make_twins(net, obj, k)
        assert len(twins.twins) == k and twins.twins[0] == (net, obj)
        terms = train_step(net, obj, SGD(net.trainable_params(), lr=1.0), x, twins)
        grads = {n: before[n] - xnn.to_numpy(v) for n, v in net.params.items()}     # SGD, lr 1: the gradient
        results.append(({n: float(v) for n, v in terms.items()}, grads))
    (terms1, grads1), (terms_k, grads_k) = results
    assert terms1["tv"] > 0.01 * terms1["total"]
    for n in terms1:
        assert terms_k[n] == pytest.approx(terms1[n], rel=1e-10), n
    for n in grads1:
        if n.endswith("in_b.beta"):      # no effect on the output: a gradient of 0 up to rounding
            assert numpy.abs(grads_k[n]).max() < 1e-6 * numpy.abs(grads1["conv6.b"]).max()
            continue
        assert numpy.abs(grads_k[n] - grads1[n]).max() <= 1e-8 * numpy.abs(grads1[n]).max(), n


# ---------------------------------------------------------------- applying a model
@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.npz"
    fast_style.save_model(fast_style.transformer(0.25, seed=7), 0.25, path)
    return path


def test_one_image_is_the_network_output(tmp_path, model):
    out = tmp_path / "run"
    assert main([APPLY, "--set", f"model={model}", "--set", "image_size=90", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    from xnn.data.images import resize_longer_side
    content = resize_longer_side(load_image(REPO / "examples" / "chelsea.png"), 90)
    net, _ = fast_style.load_model(model)
    expected = (fast_style.stylise(net, content) * 255).round()
    got = load_image(out / "output.png").astype(numpy.float64)
    assert got.shape == content.shape and content.shape[1] % 4 != 0   # 60x90: padded to 60x92 inside
    assert numpy.abs(got - expected).max() <= 1
    assert {"summary.png", "summary.json", "metrics.jsonl"} <= {p.name for p in out.iterdir()}


def test_a_folder_keeps_names_and_sizes_and_skips_a_bad_file(tmp_path, model, photos):
    out = tmp_path / "run"
    assert main([APPLY, "--set", f"model={model}", "--set", f"input={photos}", "--set", "image_size=null",
                 "--set", "original_colors=true", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "outputs").iterdir()) == [f"p{i}.png" for i in range(5)]
    assert load_image(out / "outputs" / "p2.png").shape == (48, 64, 3)
    assert json.loads((out / "summary.json").read_text())["images"] == 5


def test_a_video_goes_through_the_video_pipeline(tmp_path, model):
    pytest.importorskip("av")
    pytest.importorskip("cv2")
    from xnn.video import io as vio
    from xnn.video.clips import pan_frames, write_clip
    clip = write_clip(pan_frames(load_image(REPO / "examples" / "coffee.png"), 10, (64, 96)), tmp_path / "c.mp4",
                      fps=10)
    out = tmp_path / "run"
    assert main([APPLY, "--set", f"model={model}", "--set", f"input={clip}", "--set", "image_size=null",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    src = vio.probe(out / "output.mp4")
    assert (src.frames, src.size) == (10, (64, 96))
    s = json.loads((out / "summary.json").read_text())
    assert s["frames"] == 10 and s["temporal"] == "flow" and s["frame_check"]["passed"]


# ---------------------------------------------------------------- bad input
def test_bad_inputs_are_one_line_and_leave_no_run_folder(tmp_path, capsys, photos, model):
    out = tmp_path / "run"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no photos here")
    assert_one_line_error(capsys, [TRAIN, "--set", f"dataset={empty}", *TINY, "--out", out],
                          f"dataset {empty} has 0 image file(s)", absent=[out])
    not_image = tmp_path / "style.jpg"
    not_image.write_text("this is text")
    assert_one_line_error(capsys, [TRAIN, "--set", f"dataset={photos}", "--set", f"style_image={not_image}", *TINY,
                                   "--out", out], "style.jpg", absent=[out])
    other = tmp_path / "other.npz"
    numpy.savez(other, arch=numpy.array("something-else"), version=numpy.array(1), width=numpy.array(1.0))
    assert_one_line_error(capsys, [APPLY, "--set", f"model={other}", "--device", "cpu", "--out", out],
                          "is a something-else model", absent=[out])
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(model.read_bytes()[:5000])
    assert_one_line_error(capsys, [APPLY, "--set", f"model={truncated}", "--device", "cpu", "--out", out],
                          "truncated.npz", absent=[out])
    assert_one_line_error(capsys, [APPLY, "--set", f"model={tmp_path / 'nope.npz'}", "--device", "cpu", "--out", out],
                          "not found", absent=[out])
    # a picture given as the model: said so, not NumPy's advice to load it as a pickle
    line = assert_one_line_error(capsys, [APPLY, "--set", f"model={REPO / 'examples' / 'chelsea.png'}", "--device",
                                          "cpu", "--out", out], "chelsea.png: it is a PNG image, not an .npz archive",
                                 absent=[out])
    assert "pickle" not in line
    empty_model = tmp_path / "empty.npz"
    empty_model.write_bytes(b"")
    assert_one_line_error(capsys, [APPLY, "--set", f"model={empty_model}", "--device", "cpu", "--out", out],
                          "empty.npz: the file is empty", absent=[out])
    assert_one_line_error(capsys, [APPLY, "--set", f"model={model}", "--set", "temporal=stats", "--device", "cpu",
                                   "--out", out], "a network's video takes none or flow", absent=[out])


def test_the_shipped_model_loads_and_paints():
    """examples/models/starry_night.npz: a width-0.5 network of this architecture whose output on a photo
    keeps the photo's structure (edges where its edges are) and changes its colours."""
    from xnn.data.images import resize_longer_side
    from xnn.video.temporal import structure_correlation
    net, width = fast_style.load_model(REPO / "examples" / "models" / "starry_night.npz")
    assert width == 0.5 and sum(v.size for v in net.params.values()) == 424_099
    photo = resize_longer_side(load_image(REPO / "examples" / "chelsea.png"), 96)
    out = fast_style.stylise(net, photo)
    assert out.shape == photo.shape and numpy.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    out8 = (out * 255).round().astype(numpy.uint8)
    assert structure_correlation(out8, photo) > 0.5
    assert numpy.abs(out8.astype(int) - photo).mean() > 10


def test_the_training_config_states_the_schema_defaults():
    """configs/train_fast_style.yaml, the studio's Train tab and the schema give one set of CPU defaults
    (the shipped model's recipe: 6000 iterations, style weight 2e5, 128 px crops)."""
    from xnn.config import read_yaml
    from xnn.experiments.train_style import SCHEMA
    cfg = read_yaml(TRAIN)
    for key in cfg.keys() & SCHEMA.keys():           # the schema's (experiment, device, seed are every experiment's)
        assert SCHEMA[key].default == cfg[key], key
    assert (cfg["num_iterations"], cfg["style_weight"], cfg["image_size"]) == (6000, 2e5, 128)
    service = pytest.importorskip("xnn.studio.service")
    assert service.TRAIN_DEFAULTS == {k: cfg[k] for k in ("num_iterations", "image_size", "style_weight")}
