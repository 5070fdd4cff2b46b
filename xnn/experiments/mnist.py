"""MNIST classification (MLP or CNN): train, checkpoint, resume, evaluate."""
from __future__ import annotations

import math
import time

import numpy

from ..config import Field
from ..data_parallel import DataParallel, default_parts
from ..data.mnist import batches, load_mnist
from ..errors import XnnError
from ..files import read_npz, require_keys, save_npz
from ..layers import SoftmaxCrossEntropy
from ..models.mnist import cnn, mlp
from ..optim import SGD, Adam

KIND = "mnist"
SCHEMA = {
    "mode": Field("str", "train", "train a model, or evaluate a checkpoint", choices=("train", "evaluate")),
    "checkpoint": Field("path", None, "model .npz to evaluate (mode: evaluate)", nullable=True),
    "model": {
        "kind": Field("str", "mlp", "network", choices=("mlp", "cnn")),
        "hidden": Field("list[int]", [512, 256], "MLP hidden widths",
                        check=lambda v: None if v and all(h > 0 for h in v) else "widths must be > 0"),
        "channels": Field("list[int]", [32, 64], "CNN conv widths (each: conv3x3, ReLU, maxpool 2)",
                          check=lambda v: None if v and all(c > 0 for c in v) and len(v) <= 4
                          else "1 to 4 positive widths"),
        "fc": Field("int", 128, "CNN fully connected width", min=1),
    },
    "train": {
        "epochs": Field("int", 10, "passes over the training set", min=1),
        "batch_size": Field("int", 128, "images per step", min=1),
        "optimizer": Field("str", "sgd", "sgd (with momentum) or adam", choices=("sgd", "adam")),
        "learning_rate": Field("float", 0.05, "initial step size", gt=0),
        "momentum": Field("float", 0.9, "SGD momentum", min=0, max=0.999),
        "weight_decay": Field("float", 5e-4, "L2 penalty", min=0),
        "schedule": Field("str", "cosine", "learning-rate schedule over all steps",
                          choices=("cosine", "constant")),
        "val_size": Field("int", 5000, "images held out from the training set to pick the best epoch", min=0),
        "limit": Field("int", None, "use only the first N training images (quick runs)", min=1, nullable=True),
        "parts": Field("int|auto", "auto", "cut each batch into this many parts, run side by side on the CPU's "
                       "cores (xnn.DataParallel); auto: one per core for the CNN, 1 for the MLP and on a GPU. "
                       "The count changes the last bits of the numbers", min=1),
    },
    "eval_batch_size": Field("int", 1000, "images per evaluation batch", min=1),
    "test_limit": Field("int", None, "evaluate on the first N test images only", min=1, nullable=True),
}


def build_model(cfg, device):
    m = cfg["model"]
    if m["kind"] == "mlp":
        return mlp(m["hidden"], seed=cfg["seed"], device=device)
    return cnn(m["channels"], m["fc"], seed=cfg["seed"], device=device)


def data_parallel_parts(cfg, device) -> int:
    """train.parts, with auto resolved: the CPU's workers for the CNN (its small layers leave the second
    core idle otherwise), 1 for the MLP (its GEMMs use the BLAS's threads better) and on a GPU."""
    parts = cfg["train"]["parts"]
    if parts != "auto":
        return parts
    return default_parts(device) if cfg["model"]["kind"] == "cnn" else 1


def prepare(cfg, device, resume_dir=None):
    t = cfg["train"]
    if cfg["mode"] == "evaluate" and not cfg["checkpoint"]:
        raise XnnError("config: mode = 'evaluate' needs checkpoint: PATH (a best.npz or last.npz of a run)")
    test_x, test_y = load_mnist("test", limit=cfg["test_limit"])
    state = {"cfg": cfg, "device": device, "model": build_model(cfg, device), "resume_dir": resume_dir,
             "test": (device.asarray(test_x), device.asarray(test_y))}
    if cfg["mode"] == "evaluate":
        state["model"].load(cfg["checkpoint"])
        return state
    x, y = load_mnist("train", limit=t["limit"])
    n_val = min(t["val_size"], len(x) // 5)
    if len(x) - n_val < t["batch_size"]:
        raise XnnError(f"config: train.batch_size = {t['batch_size']} is larger than the "
                       f"{len(x) - n_val} training images")
    state["train"] = (device.asarray(x[:len(x) - n_val]), device.asarray(y[:len(y) - n_val]))
    state["val"] = (device.asarray(x[len(x) - n_val:]), device.asarray(y[len(y) - n_val:])) if n_val else None
    if resume_dir is not None:
        if not (resume_dir / "last.npz").exists():
            raise XnnError(f"--resume {resume_dir}: no last.npz checkpoint there (the run stopped before its "
                           "first epoch ended); start it again instead")
        # read and check both files now, before anything in the run folder changes
        state["model"].load(resume_dir / "last.npz")
        st = read_npz(resume_dir / "train_state.npz", "checkpoint")
        require_keys(st, ("epoch", "best_acc", "train_time", "t"), "checkpoint", resume_dir / "train_state.npz")
        state["resume"] = st
    return state


def evaluate(model, data, batch_size):
    """(mean loss, accuracy) of ``model`` on (x, y) device arrays."""
    x, y = data
    crit = SoftmaxCrossEntropy(device=model.device, check_labels=False)  # labels were checked when loaded
    xp = model.device.xp
    loss_sum, correct = xp.zeros((), xp.float64), xp.zeros((), xp.int64)   # on the device: one sync at the end
    for i in range(0, len(x), batch_size):
        logits = model.forward(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        loss_sum += crit.forward(logits, yb) * len(yb)
        correct += (logits.argmax(axis=1) == yb).sum()
    return float(loss_sum) / len(x), int(correct) / len(x)


def run(state, ctx):
    cfg, model = state["cfg"], state["model"]
    if cfg["mode"] == "evaluate":
        t0 = time.perf_counter()
        loss, acc = evaluate(model, state["test"], cfg["eval_batch_size"])
        summary = {"mode": "evaluate", "checkpoint": cfg["checkpoint"], "test_accuracy": acc,
                   "test_loss": loss, "eval_time_s": time.perf_counter() - t0}
        ctx.log(**summary)
        ctx.save_json("summary.json", summary)
        ctx.info(f"test accuracy {100 * acc:.2f} % ({len(state['test'][0])} images)")
        return summary
    return train(state, ctx)


def train(state, ctx):
    cfg, model, dev = state["cfg"], state["model"], state["device"]
    t = cfg["train"]
    xs, ys = state["train"]
    n = len(xs)
    steps_per_epoch = n // t["batch_size"]
    total_steps = steps_per_epoch * t["epochs"]
    params = model.trainable_params()
    opt = (SGD(params, t["learning_rate"], momentum=t["momentum"], weight_decay=t["weight_decay"], nesterov=True)
           if t["optimizer"] == "sgd" else Adam(params, t["learning_rate"], weight_decay=t["weight_decay"]))
    crit = SoftmaxCrossEntropy(device=dev, check_labels=False)  # labels were checked when loaded: no sync per step
    parallel = DataParallel(model, crit, data_parallel_parts(cfg, dev))
    start_epoch, best_acc, train_time = 0, -1.0, 0.0
    if state.get("resume") is not None:  # the model was loaded by prepare
        st = dict(state["resume"])
        start_epoch, best_acc, train_time = int(st.pop("epoch")), float(st.pop("best_acc")), float(st.pop("train_time"))
        try:
            opt.load_state_dict(st)
        except (KeyError, ValueError) as e:
            raise XnnError(f"--resume: the optimiser state in train_state.npz does not fit train.optimizer = "
                           f"{t['optimizer']!r} and this model ({type(e).__name__}: {e}); keep them as they were") from None
        ctx.info(f"resuming after epoch {start_epoch}")
        ctx.keep_metrics(lambda r: r.get("epoch", 0) <= start_epoch)   # a later epoch's row: it runs again
    for epoch in range(start_epoch, t["epochs"]):
        t0 = time.perf_counter()
        order = list(batches(n, t["batch_size"], numpy.random.default_rng([cfg["seed"], epoch]), drop_last=True))
        # the epoch's whole order goes to the device in one copy; steps slice it there
        order_dev = dev.asarray(numpy.concatenate(order)) if order else None
        bar = ctx.progress(steps_per_epoch, f"epoch {epoch + 1}/{t['epochs']}", unit="step")
        loss_sum, correct = dev.xp.zeros((), dev.xp.float64), dev.xp.zeros((), dev.xp.int64)
        for step in range(len(order)):
            if ctx.stop_requested:
                bar.close()
                ctx.info(f"stopped in epoch {epoch + 1}; " + (f"last.npz holds epoch {epoch}, --resume continues "
                         "from there" if epoch else "no epoch had finished, so there is nothing to resume"))
                return {"stopped": True}
            if t["schedule"] == "cosine":
                opt.lr = t["learning_rate"] * 0.5 * (1 + math.cos(math.pi * (epoch * steps_per_epoch + step) / total_steps))
            idx = order_dev[step * t["batch_size"]:(step + 1) * t["batch_size"]]
            xb, yb = xs[idx], ys[idx]
            loss, logits = parallel.forward_backward(xb, yb)
            opt.step(parallel.grads)
            loss_sum += loss
            correct += (logits.argmax(axis=1) == yb).sum()
            if step % 50 == 0:  # a host sync only now and then
                shown = {"loss": float(loss_sum) / (step + 1)}
            bar.update(1, **shown)
        bar.close()
        seen = steps_per_epoch * t["batch_size"]
        epoch_time = time.perf_counter() - t0
        train_time += epoch_time
        row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / steps_per_epoch,
               "train_accuracy": int(correct) / seen, "lr": opt.lr, "epoch_time_s": epoch_time,
               "images_per_s": seen / epoch_time}
        if state["val"] is not None:
            row["val_loss"], row["val_accuracy"] = evaluate(model, state["val"], cfg["eval_batch_size"])
        ctx.log(**row)
        if not math.isfinite(row["train_loss"]):
            raise XnnError(f"training diverged in epoch {epoch + 1}: the loss is {row['train_loss']}; lower "
                           "train.learning_rate")
        ctx.info(f"epoch {epoch + 1}: train loss {row['train_loss']:.4f}, train acc {100 * row['train_accuracy']:.2f} %"
                 + (f", val acc {100 * row['val_accuracy']:.2f} %" if "val_accuracy" in row else "")
                 + f" ({epoch_time:.1f} s, {row['images_per_s']:.0f} img/s)")
        score = row.get("val_accuracy", row["train_accuracy"])
        if score > best_acc:
            best_acc = score
            model.save(ctx.path("best.npz"))
        model.save(ctx.path("last.npz"))
        _save_train_state(ctx, opt, epoch + 1, best_acc, train_time)
    ctx.plot("curves.png", "epoch", {"loss": ["train_loss", "val_loss"],
                                      "accuracy": ["train_accuracy", "val_accuracy"]},
             title=f"MNIST {cfg['model']['kind'].upper()}")
    last_loss, last_acc = evaluate(model, state["test"], cfg["eval_batch_size"])
    model.load(ctx.path("best.npz"))
    test_loss, test_acc = evaluate(model, state["test"], cfg["eval_batch_size"])
    rows = [r for r in ctx.read_metrics() if "epoch" in r]
    summary = {"test_accuracy": test_acc, "test_loss": test_loss, "test_accuracy_last": last_acc,
               "best_epoch": max(rows, key=lambda r: r.get("val_accuracy", r["train_accuracy"]))["epoch"],
               "epochs": t["epochs"], "train_time_s": train_time,
               "final_train_loss": rows[-1]["train_loss"], "final_val_loss": rows[-1].get("val_loss"),
               "images_per_s": sum(r["images_per_s"] for r in rows) / len(rows), "device": dev.name,
               "data_parallel_parts": parallel.parts}
    ctx.save_json("summary.json", summary)
    ctx.info(f"test accuracy {100 * test_acc:.2f} % (best epoch {summary['best_epoch']}; last epoch "
             f"{100 * last_acc:.2f} %), training took {train_time:.1f} s")
    return summary


def _save_train_state(ctx, opt, epoch, best_acc, train_time):
    st = opt.state_dict()
    st.update(epoch=numpy.asarray(epoch), best_acc=numpy.asarray(best_acc), train_time=numpy.asarray(train_time))
    save_npz(ctx.path("train_state.npz"), st)
