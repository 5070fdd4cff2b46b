"""The vgg19 experiment: feature extraction with the real conv weights, classification
through a synthetic full-weight file of the official Keras structure."""
import functools
import json
import pathlib

import numpy
import pytest

import xnn.models
from xnn.cli import main

from .conftest import weights_path
from .helpers import assert_one_line_error
from .test_vgg import SMALL, keras_reference, random_weights, write_keras_h5

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_features_mode_with_real_notop_weights(tmp_path):
    weights_path("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
    out = tmp_path / "run"
    assert main([str(REPO / "configs" / "vgg19_features.yaml"), "--set", "image_size=64",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"features.png", "input.png", "pool5_stats.json", "pool5.npy", "summary.json", "config.yaml"} <= names
    stats = json.loads((out / "pool5_stats.json").read_text())
    assert stats["shape"] == [512, 2, 2] and stats["max"] > 0


@pytest.fixture
def small_full_weights(tmp_path, monkeypatch):
    """A reduced VGG19 (64 px input) with a synthetic full Keras file of the official structure;
    xnn.models.vgg19 is patched to build that reduced architecture."""
    rng = numpy.random.default_rng(3)
    convs, fcs = random_weights(rng, SMALL["channels"], SMALL["fc"], SMALL["num_classes"], 2)
    path = tmp_path / "synthetic_full.h5"
    write_keras_h5(path, convs, fcs)
    monkeypatch.setattr(xnn.models, "vgg19", functools.partial(xnn.models.vgg19, **SMALL))
    return path, convs, fcs


def test_classify_mode_writes_top_k_predictions(tmp_path, small_full_weights, capsys):
    path, convs, fcs = small_full_weights
    out = tmp_path / "run"
    assert main([str(REPO / "configs" / "vgg19.yaml"), "--set", f"weights={path}", "--set", "image_size=64",
                 "--set", "top_k=3", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    preds = json.loads((out / "predictions.json").read_text())
    assert [set(p) for p in preds] == [{"index", "name", "probability"}] * 3
    # independent reference on the same 64x64 network input the run saved
    from xnn.data.images import load_image
    ref = keras_reference(load_image(out / "input.png"), convs, fcs)["prob"]
    want = numpy.argsort(-ref)[:3]
    assert [p["index"] for p in preds] == list(want)
    numpy.testing.assert_allclose([p["probability"] for p in preds], ref[want], atol=1e-5)
    assert f"{want[0]:4d}" in capsys.readouterr().out


def test_classify_with_wrong_size_is_refused(tmp_path, small_full_weights, capsys):
    path, _, _ = small_full_weights
    assert_one_line_error(capsys, [REPO / "configs" / "vgg19.yaml", "--set", f"weights={path}", "--set",
                                   "image_size=96", "--device", "cpu", "--out", tmp_path / "run"], "needs 64",
                          absent=[tmp_path / "run"])


def test_missing_image_is_one_line(tmp_path, capsys):
    assert_one_line_error(capsys, [REPO / "configs" / "vgg19.yaml", "--set", "image=nope.png", "--out",
                                   tmp_path / "r"], "nope.png", absent=[tmp_path / "r"])
