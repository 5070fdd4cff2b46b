"""Hostile input, one test per class of fault: every one is a single ``xnn: error:`` line,
exit code 2, no traceback, and nothing half-written left behind (issue 13)."""
import errno
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys

import numpy
import pytest
from PIL import Image

import xnn
from xnn.cli import main
from xnn.errors import XnnError

from .conftest import weights_path
from .helpers import assert_one_line_error, assert_one_line_stderr

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST = REPO / "configs" / "mnist_mlp.yaml"
STYLE = REPO / "configs" / "style.yaml"
ADAIN = REPO / "configs" / "adain.yaml"
QUICK = ["--set", "train.limit=600", "--set", "train.val_size=100", "--set", "test_limit=100",
         "--set", "train.batch_size=50", "--set", "model.hidden=[16]", "--set", "train.epochs=1",
         "--device", "cpu", "--quiet"]
TINY_STYLE = ["--set", "image_size=40", "--set", "num_iterations=0", "--device", "cpu", "--quiet"]


def notop():
    weights_path("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")


def quick_mnist(tmp_path, name="run", *extra):
    out = tmp_path / name
    assert main([str(MNIST), *QUICK, *extra, "--out", str(out)]) == 0
    return out


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def subprocess_run(args, fsize=None):
    """run.py in a child process; ``fsize`` caps every file it writes (a full disk, for real)."""
    def limit():
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the cap fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return subprocess.run([sys.executable, str(REPO / "run.py"), *map(str, args)], cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)


# ---------------------------------------------------------------- the contract, per experiment
@pytest.mark.parametrize("config,override,needle", [
    (STYLE, ["content_image=nope.jpg"], "nope.jpg"),
    (STYLE, ["style_layers=[relu9_1]"], "unknown VGG19 layer 'relu9_1'"),
    (STYLE, ["style_weight=-1"], "style_weight = -1.0 is out of range"),
    (STYLE, ["style_blend_weights=[1, 2]"], "2 weights for 1 style images"),
    (STYLE, ["image_size=16384"], "needs about"),
    (STYLE, ["output_image=/tmp/x.png"], "inside the run folder"),
    (ADAIN, ["style_blend_weights=[1, 2, 3]"], "3 weights for 1 style images"),
    (ADAIN, ["alpha=1.5"], "alpha = 1.5 is out of range"),
    (ADAIN, ["content_image=missing.png"], "missing.png"),
    (ADAIN, ["output_image=../x.png"], "inside the run folder"),
    (ADAIN, ["weights=/nonexistent"], "not found"),
], ids=lambda v: v.stem if isinstance(v, pathlib.Path) else None)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, config, override, needle):
    sets = [arg for o in override for arg in ("--set", o)]
    assert_one_line_error(capsys, [config, "--device", "cpu", "--out", tmp_path / "run", *sets], needle,
                          absent=[tmp_path / "run"])


def test_style_schedule_tile_and_scaling_keys_are_checked(tmp_path, capsys):
    tile_rule = "a tile side must be a multiple of 16 and at least 64"
    cases = {
        ("tile_size=100",): tile_rule,
        ("tile_size=48",): tile_rule,
        ("image_size=[256, 512]", "num_iterations=[10, 20, 30]"): "image_size has 2 stages but num_iterations",
        ("num_iterations=[10, 20]",): "num_iterations = [10, 20] is a list but image_size = 512 is one size",
        ("image_size=[512, 256]",): "the stages of a schedule must not shrink",
        ("loss_scaling=johnson",): "loss_scaling = 'johnson' is not valid: must be one of gatys, jcjohnson",
    }
    for overrides, needle in cases.items():
        sets = [arg for o in overrides for arg in ("--set", o)]
        assert_one_line_error(capsys, [STYLE, "--device", "cpu", "--out", tmp_path / "run", *sets], needle,
                              absent=[tmp_path / "run"])


# ---------------------------------------------------------------- NaN and +-inf
@pytest.mark.parametrize("config,key,value", [
    (MNIST, "train.learning_rate", ".nan"), (MNIST, "train.learning_rate", ".inf"),
    (MNIST, "train.momentum", "-.inf"), (STYLE, "learning_rate", ".inf"), (STYLE, "style_weight", ".inf"),
    (STYLE, "style_scale", ".nan"), (STYLE, "style_blend_weights", "[1, .nan]"), (ADAIN, "alpha", ".nan"),
])
def test_non_finite_numbers_are_refused_by_the_schema(tmp_path, capsys, config, key, value):
    assert_one_line_error(capsys, [config, "--set", f"{key}={value}", "--device", "cpu", "--out", tmp_path / "r"],
                          f"config: {key} = ", "finite", absent=[tmp_path / "r"])
    cfg = tmp_path / "nan.yaml"                      # the same in a file, nested keys included
    section, _, leaf = key.rpartition(".")
    body = f"{section}:\n  {leaf}: {value}\n" if section else f"{leaf}: {value}\n"
    cfg.write_text(f"experiment: {config.stem.split('_')[0]}\n{body}")
    assert_one_line_error(capsys, [cfg, "--out", tmp_path / "r"], f"config: {key} = ", absent=[tmp_path / "r"])


def test_a_diverging_run_stops_with_valid_json_and_keeps_its_metrics(tmp_path):
    out = tmp_path / "r"                       # a child process: its real stderr, warnings included
    p = subprocess_run([MNIST, *QUICK, "--set", "train.learning_rate=1e30", "--set", "train.optimizer=adam",
                        "--out", out])
    assert p.returncode == 2
    err = assert_one_line_stderr(p.stderr, "diverged", "train.learning_rate", str(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]  # strict JSON
    assert rows and rows[0]["train_loss"] is None and "NaN" not in (out / "metrics.jsonl").read_text()
    assert "metrics.jsonl" in err


def test_json_files_never_hold_nan(tmp_path):
    from xnn.experiments.base import RunContext
    ctx = RunContext(tmp_path / "r", {}, xnn.device("cpu"))
    ctx.save_json("summary.json", {"loss": float("nan"), "rows": [float("inf"), 1.5]})
    ctx.log(loss=float("-inf"))
    ctx.close()
    assert json.loads((tmp_path / "r" / "summary.json").read_text()) == {"loss": None, "rows": [None, 1.5]}
    assert ctx.read_metrics() == [{"loss": None}]


# ---------------------------------------------------------------- config structure
def test_config_structure_faults_are_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    r = tmp_path / "r"
    cfg.write_text("experiment: [style]\n")
    assert_one_line_error(capsys, [cfg, "--out", r], "experiment = ['style'] is not valid", absent=[r])
    cfg.write_text("experiment: mnist\ntrain: 0\n")
    assert_one_line_error(capsys, [cfg, "--out", r], "train must be a mapping", absent=[r])
    cfg.write_text("experiment: mnist\nmode: [train]\n")
    assert_one_line_error(capsys, [cfg, "--out", r], "mode = ['train'] is not valid", absent=[r])
    cfg.write_bytes(b"experiment: mnist\n# caf\xe9 in Latin-1\n")
    assert_one_line_error(capsys, [cfg, "--out", r], "not UTF-8", absent=[r])
    assert_one_line_error(capsys, [STYLE, "--set", "style_image=[a.jpg", "--out", r],
                          "--set style_image=[a.jpg: the value is not valid YAML", absent=[r])
    assert_one_line_error(capsys, [MNIST, "--set", "experiment=style", "--out", r], "cannot be changed", absent=[r])


def test_bad_command_line_arguments_are_one_line(tmp_path, capsys):
    r = tmp_path / "r"
    assert_one_line_error(capsys, [MNIST, "--device", "tpu", "--out", r], "device = 'tpu'", "unknown device",
                          absent=[r])
    assert_one_line_error(capsys, [MNIST, "--seed", "abc", "--out", r], "--seed", "invalid int", absent=[r])
    assert_one_line_error(capsys, [MNIST, "--no-such-option"], "unrecognized arguments")


# ---------------------------------------------------------------- resume
def test_resume_refuses_damaged_checkpoints_and_leaves_the_run_as_it_was(tmp_path, capsys):
    out = quick_mnist(tmp_path)
    good = (out / "last.npz").read_bytes()
    damaged = {
        "truncated": good[: len(good) // 2],
        "not a zip": b"PK\x03\x04 this is not really a zip archive",
        "plain text": b"hello\n",
    }
    for what, data in damaged.items():
        (out / "last.npz").write_bytes(data)
        before = snapshot(out)
        assert_one_line_error(capsys, ["--resume", out, "--set", "train.epochs=2", "--quiet"], "last.npz")
        assert snapshot(out) == before, what
    (out / "last.npz").write_bytes(good)
    numpy.savez(out / "train_state.npz", epoch=numpy.array([object()], dtype=object), t=1, best_acc=0.5,
                train_time=1.0)
    before = snapshot(out)
    assert_one_line_error(capsys, ["--resume", out, "--set", "train.epochs=2"], "train_state.npz", "objects")
    numpy.savez(out / "train_state.npz", t=1)
    assert_one_line_error(capsys, ["--resume", out, "--set", "train.epochs=2"], "lacks 'epoch'")
    assert {k for k in snapshot(out)} == set(before)


def test_resume_refuses_a_config_or_out_it_would_ignore(tmp_path, capsys):
    out = quick_mnist(tmp_path)
    before = snapshot(out)
    assert_one_line_error(capsys, [STYLE, "--resume", out], "drop", str(STYLE))
    assert_one_line_error(capsys, ["--resume", out, "--out", tmp_path / "elsewhere"], "drop --out",
                          absent=[tmp_path / "elsewhere"])
    assert snapshot(out) == before


def test_style_resume_refuses_a_damaged_checkpoint(tmp_path, capsys):
    notop()
    out = tmp_path / "s"
    assert main([str(STYLE), *TINY_STYLE, "--out", str(out)]) == 0
    numpy.savez(out / "checkpoint.npz", image=numpy.array(["a", "b"]), iteration=0, elapsed_s=0.0)
    before = snapshot(out)
    assert_one_line_error(capsys, ["--resume", out, "--quiet"], "checkpoint.npz", "'image' has dtype <U1")
    (out / "checkpoint.npz").write_bytes(b"\x93NUMPY garbage")
    assert_one_line_error(capsys, ["--resume", out, "--quiet"], "checkpoint.npz", "truncated or corrupt")
    assert snapshot(out).keys() == before.keys()


def test_a_torn_last_metrics_line_is_tolerated_by_readers_and_resume(tmp_path):
    out = quick_mnist(tmp_path)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')          # a crash in the middle of an append
    assert main(["--resume", str(out), "--set", "train.epochs=2", "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


# ---------------------------------------------------------------- run folder and disk
def test_out_that_is_a_file_or_below_one_is_one_line(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert_one_line_error(capsys, [MNIST, *QUICK, "--out", f], "is a file")
    assert_one_line_error(capsys, [MNIST, *QUICK, "--out", f / "sub" / "run"], "is a file")
    assert f.read_text() == "x"


def test_a_run_refused_inside_run_leaves_an_existing_empty_out_empty(tmp_path, capsys, monkeypatch):
    out = tmp_path / "empty"
    out.mkdir()
    from xnn.experiments import mnist

    def refuse(state, ctx):
        raise XnnError("refused at the start of run")
    monkeypatch.setattr(mnist, "run", refuse)
    assert_one_line_error(capsys, [MNIST, *QUICK, "--out", out], "refused at the start")
    assert out.is_dir() and list(out.iterdir()) == []
    assert_one_line_error(capsys, [MNIST, *QUICK, "--out", tmp_path / "new"], "refused", absent=[tmp_path / "new"])


def test_full_disk_is_one_line_keeps_finished_files_and_leaves_no_tmp(tmp_path):
    out = tmp_path / "r"   # config.yaml and metrics fit under the cap; the 200 KB model does not
    p = subprocess_run([MNIST, *QUICK, "--set", "model.hidden=[64]", "--out", out], fsize=64 * 1024)
    assert p.returncode == 2, p.stderr
    assert_one_line_stderr(p.stderr, "best.npz", "File too large", "kept in", "metrics.jsonl")
    names = {q.name for q in out.iterdir()}
    assert {"config.yaml", "metrics.jsonl"} <= names and not [n for n in names if "tmp" in n], names
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1


def test_every_whole_file_writer_cleans_up_and_says_why(tmp_path, monkeypatch):
    """Model, VGG and array saves go through the one atomic write: a full disk mid-write is one
    line naming the file, the old file stays, and no temporary file is left."""
    from xnn.files import save_npy
    net = xnn.models.mlp([4])
    vgg = xnn.models.vgg19(weights=None, include_top=False, channels=(2, 2, 2, 2, 2))
    writers = {"model.npz": net.save, "vgg.npz": vgg.save, "a.npy": lambda p: save_npy(p, numpy.zeros(3))}

    def full_disk(file, *args, **kwargs):
        (open(file, "wb") if isinstance(file, (str, os.PathLike)) else file).write(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(numpy, "savez", full_disk)
    monkeypatch.setattr(numpy, "save", full_disk)
    for name, write in writers.items():
        target = tmp_path / name
        target.write_bytes(b"old")
        with pytest.raises(XnnError, match=f"cannot write .*{name}: No space left") as e:
            write(target)
        assert "\n" not in str(e.value) and target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == sorted(writers)


# ---------------------------------------------------------------- degenerate shapes
def test_an_image_too_thin_for_vgg_is_refused_before_the_run_folder(tmp_path, capsys):
    notop()
    thin = tmp_path / "thin.png"
    Image.fromarray(numpy.full((4, 400, 3), 128, numpy.uint8)).save(thin)
    r = tmp_path / "r"
    assert_one_line_error(capsys, [STYLE, *TINY_STYLE, "--set", f"content_image={thin}", "--out", r],
                          "thin.png", "relu5_1 needs at least 16 px", absent=[r])
    assert_one_line_error(capsys, [STYLE, *TINY_STYLE, "--set", f"style_image={thin}", "--out", r],
                          "style image", "thin.png", absent=[r])


def test_an_image_too_thin_for_adain_is_refused_before_the_run_folder(tmp_path, capsys):
    thin = tmp_path / "thin.png"
    Image.fromarray(numpy.full((3, 300, 3), 128, numpy.uint8)).save(thin)
    r = tmp_path / "r"
    for key in ("content_image", "style_image"):
        assert_one_line_error(capsys, [ADAIN, "--set", f"{key}={thin}", "--set", "weights=adain", "--device", "cpu",
                                       "--out", r], "thin.png", "AdaIN needs at least 9x9", absent=[r])


def test_memory_refusal_names_style_scale_and_comes_before_resizing(tmp_path, capsys, monkeypatch):
    from xnn.data import images
    monkeypatch.setattr(type(xnn.device("cpu")), "memory_available", lambda self: 3 * 2**30)
    real_resize = images.resize_to

    def no_huge_resize(img, shape):
        assert max(shape) <= 2048, f"resized to {shape} before the memory check"
        return real_resize(img, shape)
    monkeypatch.setattr(images, "resize_to", no_huge_resize)
    r = tmp_path / "r"
    # untiled (tile_size: null) the style image is what does not fit; tile_size: auto would tile it instead
    err = assert_one_line_error(capsys, [STYLE, "--set", "image_size=512", "--set", "style_scale=8", "--set",
                                         "tile_size=null", "--device", "cpu", "--out", r],
                                "style_scale = 8", "use a smaller style_scale", absent=[r])
    assert "smaller image_size" not in err
    assert_one_line_error(capsys, [STYLE, "--set", "image_size=4096", "--device", "cpu", "--out", r],
                          "image_size = 4096", "use a smaller image_size", absent=[r])


# ---------------------------------------------------------------- weights of the wrong dtype
@pytest.mark.parametrize("dtype", ["str", "object"])
def test_weights_with_right_names_and_shapes_but_wrong_dtype(tmp_path, capsys, dtype):
    net = xnn.models.mlp([16])
    state = {k: (v.astype(str) if dtype == "str" else v.astype(object)) for k, v in net.state_dict().items()}
    ck = tmp_path / "bad.npz"
    numpy.savez(ck, **state)
    needle = "has dtype <U" if dtype == "str" else "objects"
    assert_one_line_error(capsys, [MNIST, *QUICK, "--set", "mode=evaluate", "--set", f"checkpoint={ck}",
                                   "--out", tmp_path / "r"], "bad.npz", needle, absent=[tmp_path / "r"])
    with pytest.raises(XnnError, match="fc1.W has dtype"):     # a state dict handed over directly
        net.load_state_dict({k: v.astype(str) for k, v in net.state_dict().items()})
    small = dict(channels=(2, 2, 2, 2, 2))
    vgg = xnn.models.vgg19(weights=None, include_top=False, **small)
    numpy.savez(tmp_path / "vgg.npz", **{k: (v.astype(str) if dtype == "str" else v.astype(object))
                                         for k, v in vgg.net.state_dict().items()})
    with pytest.raises(XnnError, match="vgg.npz") as e:
        xnn.models.vgg19(weights=tmp_path / "vgg.npz", include_top=False, **small)
    assert "\n" not in str(e.value)
    from xnn.models.adain import adain_decoder, load_adain_weights
    dec = adain_decoder(weights=None)
    numpy.savez(tmp_path / "dec.npz", **{f"{n}.{s}": numpy.zeros(dec[n].params[p].shape).astype(dtype)
                                         for n, l in dec if "W" in l.params for s, p in (("weight", "W"), ("bias", "b"))})
    with pytest.raises(XnnError, match="dec.npz"):
        load_adain_weights(dec, tmp_path / "dec.npz", "decoder")


# ---------------------------------------------------------------- one mechanism per concern
def test_the_stop_handlers_are_restored_after_a_run(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    quick_mnist(tmp_path)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("weights,needle", [
    ([1, -1], "must be finite numbers >= 0, not all 0"), ([0, 0], "not all 0"), ([1, 2, 3], "3 weights for 2"),
])
def test_blend_weights_follow_one_rule_everywhere(tmp_path, capsys, weights, needle):
    from xnn.layers.adain import blend_stats
    from xnn.models import AdaINStylizer
    two = "[examples/starry_night.jpg, examples/the_scream.jpg]"
    for cfg in (STYLE, ADAIN):
        assert_one_line_error(capsys, [cfg, "--set", f"style_image={two}", "--set", f"style_blend_weights={weights}",
                                       "--device", "cpu", "--out", tmp_path / "r"], needle, absent=[tmp_path / "r"])
    stats = [(numpy.zeros((1, 2, 1, 1)), numpy.ones((1, 2, 1, 1)))] * 2
    with pytest.raises(XnnError, match=needle):
        blend_stats(stats, weights)
    st = AdaINStylizer(xnn.models.adain_encoder(weights=None), xnn.models.adain_decoder(weights=None))
    img = numpy.zeros((16, 16, 3), numpy.uint8)
    with pytest.raises(XnnError, match=needle):
        st.stylize(img, [img, img], weights)


def test_the_stylizer_uses_the_adain_function(rng):
    """AdaINStylizer.stylize = decoder(adain_mix(encoder(content), encoder(styles))), cropped."""
    from xnn.layers.adain import adain_mix
    from xnn.models import AdaINStylizer
    enc, dec = xnn.models.adain_encoder(weights=None), xnn.models.adain_decoder(weights=None)
    st = AdaINStylizer(enc, dec)
    c, s1, s2 = (rng.integers(0, 255, shape, dtype=numpy.uint8) for shape in [(16, 24, 3), (24, 16, 3), (16, 16, 3)])
    got = st.stylize(c, [s1, s2], [1, 3], alpha=0.5)

    def feats(img):
        return enc.forward(numpy.ascontiguousarray((img / 255.0).astype(numpy.float32).transpose(2, 0, 1))[None])
    t = adain_mix(feats(c), [feats(s1), feats(s2)], [0.25, 0.75], alpha=0.5)
    want = dec.forward(t)[0].clip(0, 1).transpose(1, 2, 0)
    numpy.testing.assert_allclose(got, want, atol=1e-5)


def test_vgg_layer_names_come_from_one_list():
    from xnn.experiments import style, vgg19
    from xnn.models.vgg import FEATURE_LAYERS, TOP_LAYERS
    from .test_vgg import NAMES
    assert list(FEATURE_LAYERS + TOP_LAYERS) == NAMES
    net = xnn.models.vgg19(weights=None, include_top=True, channels=(2, 2, 2, 2, 2), fc=(4, 4), num_classes=3,
                           input_size=32)
    assert tuple(net.names) == FEATURE_LAYERS + TOP_LAYERS
    for schema, key in ((style.SCHEMA, "style_layers"), (vgg19.SCHEMA, "feature_layers")):
        assert "unknown VGG19 layer 'fc6'" in schema[key].check(["relu1_1", "fc6"])
