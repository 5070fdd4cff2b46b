"""Longer end-to-end runs on real data and weights (``python -m pytest -m slow``).

Not part of the default run: each takes tens of seconds on a 2-core CPU.
"""
import json
import pathlib

import pytest

from xnn.cli import main

from .conftest import weights_path

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_mnist_mlp_learns_on_the_full_training_set(tmp_path):
    out = tmp_path / "mlp"
    assert main([str(REPO / "configs" / "mnist_mlp.yaml"), "--set", "train.epochs=2", "--device", "cpu",
                 "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] >= 0.96  # 96.99 % measured (2 epochs, seed 0)


def test_style_transfer_at_128px_moves_towards_the_style(tmp_path):
    weights_path("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
    out = tmp_path / "style"
    assert main([str(REPO / "configs" / "style.yaml"), "--set", "image_size=128", "--set", "num_iterations=40",
                 "--set", "print_iter=40", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["iter"] == 0 and rows[-1]["iter"] == 40
    assert rows[-1]["style_loss"] < 0.1 * rows[0]["style_loss"]   # starts at the content image
    assert rows[-1]["total_loss"] < 0.2 * rows[0]["total_loss"]


def test_adain_at_512px_keeps_the_content_size(tmp_path):
    weights_path("adain_vgg_normalised_to_relu4_1.npz")
    out = tmp_path / "adain"
    assert main([str(REPO / "configs" / "adain.yaml"), "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["output_size"] == [341, 512]
