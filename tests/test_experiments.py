"""Config validation, the CLI and the MNIST runner end to end (on a subset from XNN_HOME)."""
import json
import pathlib

import numpy
import pytest
import yaml

from xnn import XnnError
from xnn.cli import main
from xnn.config import Field, apply_override, validate

from .helpers import assert_one_line_error

REPO = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = {
    "name": Field("str", "x"),
    "train": {"learning_rate": Field("float", 0.1, gt=0), "batch_size": Field("int", 8, min=1),
              "optimizer": Field("str", "sgd", choices=("sgd", "adam"))},
    "layers": Field("list[str]", ["a"]),
}


# ---------------------------------------------------------------- config
def test_defaults_fill_in():
    cfg = validate({"train": {"batch_size": 4}}, SCHEMA)
    assert cfg == {"name": "x", "train": {"learning_rate": 0.1, "batch_size": 4, "optimizer": "sgd"},
                   "layers": ["a"]}


def test_unknown_key_names_it_suggests_and_lists():
    with pytest.raises(XnnError) as e:
        validate({"train": {"lerning_rate": 0.1}}, SCHEMA)
    msg = str(e.value)
    assert "'train.lerning_rate'" in msg and "did you mean 'learning_rate'" in msg
    assert "batch_size, learning_rate, optimizer" in msg and "\n" not in msg


@pytest.mark.parametrize("raw,needle", [
    ({"train": {"learning_rate": -0.1}}, "train.learning_rate = -0.1 is out of range: must be a finite number > 0"),
    ({"train": {"batch_size": 0}}, "train.batch_size = 0 is out of range: must be an integer >= 1"),
    ({"train": {"batch_size": "ten"}}, "train.batch_size = 'ten' is not valid: must be an integer"),
    ({"train": {"batch_size": 2.5}}, "must be an integer"),
    ({"train": {"optimizer": "rmsprop"}}, "must be one of sgd, adam"),
    ({"layers": "a"}, "must be a list of names"),
    ({"train": 3}, "train must be a mapping"),
])
def test_bad_values_name_key_value_and_rule(raw, needle):
    with pytest.raises(XnnError, match=None) as e:
        validate(raw, SCHEMA)
    assert needle in str(e.value)


def test_overrides_are_validated_like_the_file():
    raw = {}
    apply_override(raw, "train.batch_size=32", SCHEMA)
    apply_override(raw, "layers=[b, c]", SCHEMA)
    assert validate(raw, SCHEMA)["train"]["batch_size"] == 32
    assert validate(raw, SCHEMA)["layers"] == ["b", "c"]
    apply_override(raw, "train.learning_rate=1e-3", SCHEMA)   # YAML 1.2 exponents are numbers
    assert validate(raw, SCHEMA)["train"]["learning_rate"] == 0.001
    apply_override(raw, "train.learning_rate=-1", SCHEMA)
    with pytest.raises(XnnError, match="train.learning_rate = -1.0 is out of range"):
        validate(raw, SCHEMA)
    with pytest.raises(XnnError, match="did you mean 'batch_size'"):
        apply_override({}, "train.batch_sise=3", SCHEMA)
    with pytest.raises(XnnError, match="KEY=VALUE"):
        apply_override({}, "train.batch_size", SCHEMA)


# ---------------------------------------------------------------- CLI errors
def test_cli_user_errors_are_one_line(capsys, tmp_path):
    assert_one_line_error(capsys, [str(tmp_path / "nope.yaml")], "config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: mnist\ntrain: [unclosed\n")
    assert_one_line_error(capsys, [str(bad)], "is not valid YAML (line")
    bad.write_text("experiment: mnistt\n")
    assert_one_line_error(capsys, [str(bad)], "experiment = 'mnistt' is not valid: must be one of mnist")
    bad.write_text("seed: 1\n")
    assert_one_line_error(capsys, [str(bad)], "'experiment' is missing")
    cfg = str(REPO / "configs" / "mnist_mlp.yaml")
    assert_one_line_error(capsys, [cfg, "--set", "train.epoch=3", "--out", str(tmp_path / "r")], "did you mean 'epochs'")
    assert_one_line_error(capsys, [cfg, "--set", "train.batch_size=0", "--out", str(tmp_path / "r")],
                   "train.batch_size = 0 is out of range")
    assert_one_line_error(capsys, [cfg, "--set", "mode=evaluate", "--out", str(tmp_path / "r")], "needs checkpoint")
    assert_one_line_error(capsys, ["--resume", str(tmp_path)], "no config.yaml there")
    assert not (tmp_path / "r").exists()  # nothing written for a refused config


def test_missing_data_gives_one_line_and_no_run_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XNN_HOME", str(tmp_path / "empty"))
    import xnn.data.cache as cache
    monkeypatch.setattr(cache, "REGISTRY", {})  # no downloads in tests
    from xnn.data import mnist
    if hasattr(mnist, "_cached"):
        mnist._cached.cache_clear()
    assert_one_line_error(capsys, [str(REPO / "configs" / "mnist_mlp.yaml"), "--out", str(tmp_path / "r")],
                   "XNN_HOME")
    assert not (tmp_path / "r").exists()


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for opt in ("--device", "--set", "--out", "--seed", "--resume", "--strict-device"):
        assert opt in out


# ---------------------------------------------------------------- MNIST end to end
QUICK = ["--set", "train.limit=3000", "--set", "train.val_size=500", "--set", "test_limit=1000",
         "--set", "train.batch_size=50", "--set", "model.hidden=[64]", "--device", "cpu", "--quiet"]


def run_mlp(tmp_path, name, *extra):
    out = tmp_path / name
    assert main([str(REPO / "configs" / "mnist_mlp.yaml"), *QUICK, *extra, "--out", str(out)]) == 0
    return out


def test_mnist_run_folder_contents(tmp_path):
    out = run_mlp(tmp_path, "run", "--set", "train.epochs=2", "--seed", "3")
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "best.npz", "last.npz", "curves.png"} <= names
    assert not [n for n in names if ".tmp" in n]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["device"] == "cpu" and cfg["seed"] == 3 and cfg["train"]["epochs"] == 2
    assert cfg["train"]["momentum"] == 0.9  # defaults are resolved into the file
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert 0.85 < summary["test_accuracy"] <= 1.0
    assert summary["train_time_s"] > 0 and rows[1]["train_loss"] < 0.9 * rows[0]["train_loss"]
    assert summary["final_train_loss"] == rows[-1]["train_loss"]


def test_same_seed_same_numbers_and_resume_matches(tmp_path):
    const = ["--set", "train.schedule=constant"]
    a = run_mlp(tmp_path, "a", "--set", "train.epochs=2", *const)
    b = run_mlp(tmp_path, "b", "--set", "train.epochs=2", *const)
    c = run_mlp(tmp_path, "c", "--set", "train.epochs=1", *const)
    assert main(["--resume", str(c), "--set", "train.epochs=2", "--quiet"]) == 0

    def losses(d):
        return [(r["train_loss"], r["val_accuracy"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]
    assert losses(a) == losses(b)
    assert losses(c) == losses(a)
    with numpy.load(a / "last.npz") as fa, numpy.load(c / "last.npz") as fc:
        for k in fa.files:
            numpy.testing.assert_array_equal(fa[k], fc[k])


def test_resume_after_an_abort_between_log_and_checkpoint_logs_each_epoch_once(tmp_path, monkeypatch):
    from xnn.experiments.base import RunContext
    const = ["--set", "train.schedule=constant", "--set", "train.epochs=2"]
    a = run_mlp(tmp_path, "a", *const)
    log = RunContext.log

    def log_then_abort(self, **row):
        log(self, **row)
        if row.get("epoch") == 2:
            raise KeyboardInterrupt     # killed before epoch 2's checkpoint
    monkeypatch.setattr(RunContext, "log", log_then_abort)
    c = tmp_path / "c"
    assert main([str(REPO / "configs" / "mnist_mlp.yaml"), *QUICK, *const, "--out", str(c)]) == 130
    monkeypatch.undo()
    assert main(["--resume", str(c), "--quiet"]) == 0
    rows = [json.loads(line) for line in (c / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["train_loss"] for r in rows] == [json.loads(line)["train_loss"]
                                               for line in (a / "metrics.jsonl").read_text().splitlines()]


def test_evaluate_mode_reports_checkpoint_accuracy(tmp_path):
    out = run_mlp(tmp_path, "run", "--set", "train.epochs=1")
    summary = json.loads((out / "summary.json").read_text())
    ev = tmp_path / "eval"
    assert main([str(REPO / "configs" / "mnist_mlp.yaml"), *QUICK, "--set", "mode=evaluate",
                 "--set", f"checkpoint={out / 'best.npz'}", "--out", str(ev)]) == 0
    assert json.loads((ev / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"]


def test_cnn_config_runs_a_few_steps(tmp_path):
    out = tmp_path / "cnn"
    assert main([str(REPO / "configs" / "mnist_cnn.yaml"), "--set", "train.limit=600", "--set", "train.val_size=100",
                 "--set", "test_limit=200", "--set", "model.channels=[4, 8]",
                 "--set", "model.fc=16", "--set", "train.epochs=2", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]                     # it learns
    assert json.loads((out / "summary.json").read_text())["test_accuracy"] > 0.25  # chance is 0.1 (measured 0.355)


def test_cnn_batches_in_parts_train_as_whole_batches(tmp_path):
    """train.parts cuts each batch across the cores (xnn.DataParallel): the same training up to float
    rounding; auto is one part per CPU worker for the CNN and 1 for the MLP."""
    from xnn import device
    from xnn.experiments.mnist import data_parallel_parts
    losses = {}
    for parts in (1, 3):
        out = tmp_path / f"parts{parts}"
        assert main([str(REPO / "configs" / "mnist_cnn.yaml"), "--set", "train.limit=600", "--set", "train.val_size=100",
                     "--set", "test_limit=200", "--set", "model.channels=[4, 8]", "--set", "model.fc=16",
                     "--set", "train.epochs=1", "--set", f"train.parts={parts}", "--device", "cpu", "--quiet",
                     "--out", str(out)]) == 0
        assert json.loads((out / "summary.json").read_text())["data_parallel_parts"] == parts
        losses[parts] = [json.loads(line)["train_loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert numpy.allclose(losses[1], losses[3], rtol=1e-4), losses
    cpu = device("cpu")
    cfg = {"train": {"parts": "auto"}, "model": {"kind": "cnn"}}
    assert data_parallel_parts(cfg, cpu) == cpu.workers
    assert data_parallel_parts({**cfg, "model": {"kind": "mlp"}}, cpu) == 1
    assert data_parallel_parts({**cfg, "train": {"parts": 5}}, cpu) == 5


def test_same_seed_same_numbers_across_processes(tmp_path):
    """Separate processes (nothing shared in memory) give identical CNN training numbers."""
    import os
    import subprocess
    import sys
    rows = []
    for name in ("p1", "p2"):
        out = tmp_path / name
        subprocess.run([sys.executable, str(REPO / "run.py"), str(REPO / "configs" / "mnist_cnn.yaml"),
                        "--set", "train.limit=400", "--set", "train.val_size=80", "--set", "test_limit=100",
                        "--set", "train.epochs=1", "--set", "model.channels=[4, 16]", "--set", "model.fc=16",
                        "--device", "cpu", "--quiet", "--out", str(out)], check=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
        rows.append([(r["train_loss"], r["val_loss"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())])
    assert rows[0] == rows[1]
