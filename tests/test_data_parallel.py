"""DataParallel: a batch in parts through twins of a model equals the whole batch through the model;
twins share parameter arrays and keep their own gradients and caches."""
import threading

import numpy
import pytest

import xnn
from xnn.layers import Conv2d, InstanceNorm2d, Layer, ReLU, SoftmaxCrossEntropy, UpsampleConv2d
from xnn.optim import SGD

from .gradcheck import rel_error
from .test_model import small_cnn


@pytest.mark.parametrize("parts, n", [(1, 5), (2, 6), (3, 7), (4, 3)])
def test_parts_equal_the_whole_batch_in_float64(dev, rng, parts, n):
    """Loss, logits and every gradient, with one part, parts of unequal sizes (7 = 2 + 2 + 3) and
    more parts than samples (4 parts of a batch of 3: one part stays empty)."""
    net = small_cnn().to(dev, numpy.float64)
    x = dev.asarray(rng.standard_normal((n, 1, 8, 8)))
    labels = dev.asarray(rng.integers(0, 3, n))
    crit = SoftmaxCrossEntropy(device=dev)
    whole_logits = net.forward(x)
    whole_loss = float(crit.forward(whole_logits, labels))
    net.backward(crit.backward())
    whole = {k: xnn.to_numpy(v).copy() for k, v in net.grads.items()}

    dp = xnn.DataParallel(net, crit, parts)
    assert len(dp.twins) == parts and dp.grads == {}
    loss, logits = dp.forward_backward(x, labels)
    assert abs(float(loss) - whole_loss) < 1e-12 * abs(whole_loss)
    assert rel_error(xnn.to_numpy(logits), xnn.to_numpy(whole_logits)) < 1e-12
    assert set(dp.grads) == set(whole) == set(net.params)
    for k in whole:
        assert rel_error(xnn.to_numpy(dp.grads[k]), whole[k]) < 1e-10, k


def test_bounds_cover_the_batch_in_near_equal_parts():
    dp = xnn.DataParallel(small_cnn(), SoftmaxCrossEntropy(), 3)
    assert dp.bounds(7) == [(0, 2), (2, 4), (4, 7)]
    assert dp.bounds(2) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="positive integer"):
        xnn.DataParallel(small_cnn(), SoftmaxCrossEntropy(), 0)


def test_twins_share_parameters_so_an_optimiser_step_reaches_them(rng):
    net = small_cnn()
    dp = xnn.DataParallel(net, SoftmaxCrossEntropy(), 2)
    twin = dp.twins[1][0]
    for k, v in net.params.items():
        assert twin.params[k] is v                         # the same arrays ...
    assert twin["conv1"].params is not net["conv1"].params  # ... in dicts of their own
    x = rng.standard_normal((4, 1, 8, 8)).astype(numpy.float32)
    labels = rng.integers(0, 3, 4)
    opt = SGD(net.trainable_params(), 0.5)
    before = twin.forward(x).copy()
    dp.forward_backward(x, labels)
    opt.step(dp.grads)
    assert numpy.abs(twin.forward(x) - before).max() > 1e-3
    assert numpy.array_equal(twin.forward(x), net.forward(x))


def test_a_twin_of_residual_and_upsample_layers_computes_the_same(rng):
    """Layers that hold layers (Residual's body, UpsampleConv2d's inner convolution) get twins of
    their own: forward and gradients equal, caches apart."""
    net = xnn.Sequential([("conv", Conv2d(3, 4, 3, padding=1, seed=1)),
                          ("res", xnn.Residual([("c", Conv2d(4, 4, 3, padding=1, bias=False, seed=2)),
                                                ("n", InstanceNorm2d(4)), ("r", ReLU())])),
                          ("up", UpsampleConv2d(4, 2, seed=3))]).to(None, numpy.float64)
    twin = net.replica()
    assert twin["res"].body["c"] is not net["res"].body["c"] and twin["up"].conv is not net["up"].conv
    assert twin["res"].body["c"].params["W"] is net["res"].body["c"].params["W"]
    x1, x2 = rng.standard_normal((2, 2, 3, 6, 6))
    g = rng.standard_normal((2, 2, 12, 12))
    net.forward(x1)
    dx_ref = net.backward(g).copy()
    grads_ref = {k: v.copy() for k, v in net.grads.items()}
    y1 = net.forward(x1)
    twin.forward(x2)                   # the twin's forward must not touch the model's caches
    assert numpy.array_equal(net.backward(g), dx_ref)
    assert numpy.array_equal(twin.forward(x1), y1)
    assert numpy.array_equal(twin.backward(g), dx_ref)
    assert set(twin.grads) == set(grads_ref)
    for k, v in grads_ref.items():
        assert numpy.array_equal(twin.grads[k], v), k


class _Where(Layer):
    """Records the thread each forward runs on."""
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def forward(self, x):
        self.seen.append(threading.current_thread().name)
        return x

    def backward(self, dy):
        return dy


def test_parts_run_on_the_cpu_workers():
    pytest.importorskip("threadpoolctl")
    dev = xnn.device("cpu")
    if dev.workers < 2:
        pytest.skip("one core: the parts run in order")
    seen = []
    net = xnn.Sequential([("where", _Where(seen)), ("flat", xnn.layers.Flatten()), ("fc", xnn.layers.Linear(4, 3))])
    dp = xnn.DataParallel(net, SoftmaxCrossEntropy(), 2)
    dp.forward_backward(numpy.ones((4, 1, 2, 2), numpy.float32), numpy.zeros(4, numpy.int64))
    assert len(seen) == 2 and all(name.startswith("xnn") for name in seen), seen


@pytest.mark.parametrize("parts, n", [(1, 3), (2, 5), (3, 2)])
def test_inference_in_parts_equals_the_whole_batch(dev, rng, parts, n):
    net = small_cnn().to(dev, numpy.float64).freeze()
    x = dev.asarray(rng.standard_normal((n, 1, 8, 8)))
    dp = xnn.DataParallel(net, parts=parts)
    assert dp.device is net.device
    assert rel_error(xnn.to_numpy(dp.forward(x)), xnn.to_numpy(net.forward(x))) < 1e-12
    with pytest.raises(ValueError) as e:
        dp.forward_backward(x, dev.asarray(numpy.zeros(n, numpy.int64)))
    assert str(e.value) == "DataParallel.forward_backward needs the criterion (a loss) given when it was made"
    assert len(xnn.DataParallel(net).twins) == 1          # one part unless asked


def test_video_frames_go_through_twins_of_the_fast_network_on_a_multicore_cpu(tmp_path):
    """configs/fast_style.yaml's video path: a batch of frames in one part per CPU worker, the same
    frames as the network alone up to float rounding."""
    from xnn.models import fast_style
    from xnn.style.feedforward import FastStyleJob
    model = tmp_path / "model.npz"
    fast_style.save_model(fast_style.transformer(0.25, seed=3), 0.25, model)
    job = FastStyleJob(str(model), {"temporal": "none", "original_colors": False, "flow_weight": 0.7})
    dev = xnn.device("cpu")
    vs = job.video_stylizer(dev)
    net = vs.net.model if isinstance(vs.net, xnn.DataParallel) else vs.net
    assert isinstance(vs.net, xnn.DataParallel) == (dev.workers > 1)
    frames = list(numpy.random.default_rng(0).integers(0, 256, (3, 16, 20, 3), dtype=numpy.uint8))
    alone = fast_style.stylise_batch(net, frames)
    for a, b in zip(fast_style.stylise_batch(vs.net, frames), alone):
        assert numpy.abs(a - b).max() < 1e-4
