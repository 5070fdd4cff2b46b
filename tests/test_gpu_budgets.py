"""Host round trips of the GPU code path, counted on the CuPy stand-in.

A device->host sync stalls the GPU until its queue drains; a host->device copy inside
a loop is a transfer per step.  Each workload gets a budget per step, after its first
call (which may copy constants such as Winograd matrices once).  A failure prints the
call sites that spent the budget.
"""
import numpy
import pytest

from xnn.layers import SoftmaxCrossEntropy
from xnn.models import vgg19
from xnn.models.mnist import cnn
from xnn.optim import SGD
from xnn.style import StyleTransferObjective, adam_minimize, lbfgs_device_minimize
from xnn.style.losses import losses_to_host

from .conftest import STANDIN
from .standin import recording

STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1"]


def assert_budget(rec, steps, syncs, copies, what, relayouts=None):
    """At most ``syncs`` and ``copies`` (and ``relayouts``, transposing copies) per step,
    on average over ``steps`` steps."""
    ok = rec.syncs <= syncs * steps and rec.copies <= copies * steps
    if relayouts is not None:
        ok = ok and rec.relayouts <= relayouts * steps
    assert ok, (f"{what}: {rec.syncs} syncs, {rec.copies} host->device copies and {rec.relayouts} "
                f"transposing copies in {steps} steps (budget per step: {syncs} syncs, {copies} "
                f"copies{'' if relayouts is None else f', {relayouts} transposing copies'}); "
                f"worst call sites:\n{rec.table()}")


@pytest.fixture(scope="module")
def small_vgg():
    """VGG19's layer structure with narrow random weights, frozen, on the stand-in."""
    net = vgg19(weights=None, device=STANDIN, include_top=False, channels=(16, 16, 16, 16, 16))
    net.truncate("relu3_1")
    return net


def _image(vgg, size=64, seed=0):
    rgb = numpy.random.default_rng(seed).uniform(0, 255, (size, size, 3)).astype(numpy.float32)
    return vgg.preprocess(rgb)


def _objective(vgg):
    obj = StyleTransferObjective(vgg, ["relu2_1"], STYLE_LAYERS, content_weight=1.0,
                                 style_weight=10.0, tv_weight=0.1)
    return obj.set_targets(_image(vgg, seed=1), [_image(vgg, seed=2)])


def test_frozen_vgg_forward_backward_makes_no_round_trip(small_vgg):
    x = _image(small_vgg)
    xp = STANDIN.xp
    for step in range(3):
        with recording() as rec:
            feats = small_vgg.features(x, STYLE_LAYERS)
            inject = {n: xp.ones_like(f) for n, f in feats.items()}   # in the features' layout
            small_vgg.backward(inject=inject)
        if step == 0:
            continue   # the first call may copy constants (Winograd matrices) once
        assert_budget(rec, 1, 0, 0, "frozen VGG19 forward + backward", relayouts=0)
    used = {small_vgg.net[n].last_algorithms["fwd"] for n in ("conv1_1", "conv1_2", "conv2_1")}
    assert used == {"im2col", "winograd4"}     # both kinds of kernel were on the path


def test_style_iteration_with_adam_syncs_once_for_progress(small_vgg):
    obj = _objective(small_vgg)
    x = _image(small_vgg, seed=3)
    shown = []

    def progress(it, img, losses):      # what the style runner's progress bar needs: one number
        shown.append(losses_to_host(losses)["total"] if isinstance(losses, dict) else float(losses))

    fun = lambda z: obj.loss_and_grad(z, to_host=False)  # noqa: E731
    adam_minimize(fun, x, lr=1.0, max_iter=1, callback=progress)    # warm-up
    with recording() as rec:
        adam_minimize(fun, x, lr=1.0, max_iter=5, callback=progress,
                      losses_fn=lambda z: obj.losses(z, to_host=False))
    # 5 iterations plus the final losses: 6 progress numbers
    assert_budget(rec, 6, 1, 0, "style iteration with Adam", relayouts=0)
    assert len(shown) == 2 + 6 and all(numpy.isfinite(shown))


def test_style_iteration_with_device_lbfgs_within_budget(small_vgg):
    obj = _objective(small_vgg)
    x = _image(small_vgg, seed=4)
    fun = lambda z: obj.loss_and_grad(z, to_host=False)  # noqa: E731
    lbfgs_device_minimize(fun, x, max_iter=1)             # warm-up
    with recording() as rec:
        res = lbfgs_device_minimize(fun, x, max_iter=8)
    assert res.iterations == 8, res.message
    # L-BFGS-B's step needs scalars on the host: the breakpoint count and the first breakpoint,
    # the pair products (W' v), the descent and curvature tests, the loss; and sends the 2k
    # coefficients of one W u product back.  No image-sized copy either way.
    assert_budget(rec, res.iterations, 11, 1, "style iteration with the on-device L-BFGS-B", relayouts=0)


def test_mnist_cnn_training_step_within_budget():
    net = cnn(channels=(4, 8), fc=16, device=STANDIN)
    rng = numpy.random.default_rng(0)
    xs = STANDIN.asarray(rng.standard_normal((64, 1, 28, 28)).astype(numpy.float32))
    ys = STANDIN.asarray(rng.integers(0, 10, 64))
    order = STANDIN.asarray(rng.permutation(64))      # once per epoch, as the runner does
    opt = SGD(net.trainable_params(), lr=0.01, momentum=0.9, nesterov=True)
    crit = SoftmaxCrossEntropy(device=STANDIN, check_labels=False)   # labels checked at load time
    xp = STANDIN.xp
    loss_sum = xp.zeros((), xp.float64)

    def step(i):
        nonlocal loss_sum
        idx = order[i * 16:(i + 1) * 16]
        logits = net.forward(xs[idx])
        loss = crit.forward(logits, ys[idx])
        net.backward(crit.backward())
        opt.step(net.grads)
        loss_sum += loss

    step(0)
    with recording() as rec:
        for i in range(1, 4):
            step(i)
        float(loss_sum)                      # the progress bar's number
    # (no relayout budget here: trained weights are re-arranged each step, and the
    # channels-first Flatten hands pool2 an NCHW gradient, on every backend)
    assert_budget(rec, 3, 1, 0, "MNIST CNN training step")


def test_mnist_evaluation_syncs_once_per_pass_not_per_batch():
    from xnn.experiments.mnist import evaluate
    net = cnn(channels=(4, 8), fc=16, device=STANDIN)
    rng = numpy.random.default_rng(0)
    xs = STANDIN.asarray(rng.standard_normal((64, 1, 28, 28)).astype(numpy.float32))
    ys = STANDIN.asarray(rng.integers(0, 10, 64))
    evaluate(net, (xs, ys), 16)               # first call: constants may be copied once
    with recording() as rec:
        loss, acc = evaluate(net, (xs, ys), 8)
    assert 0 <= acc <= 1 and loss > 0
    assert_budget(rec, 8, 2 / 8, 0, "MNIST evaluation (8 batches)")


def test_fast_style_training_step_within_budget():
    """The train_style experiment's step on the stand-in: the batch of photos is the one copy to the
    device a step; the losses stay on the device (one sync per logged row, not per step)."""
    from xnn.experiments.train_style import train_step
    from xnn.models import fast_style
    from xnn.optim import Adam
    from xnn.style.perceptual import PerceptualObjective
    vgg = vgg19(weights=None, device=STANDIN, include_top=False, channels=(8, 8, 8, 8, 8)).truncate("relu2_2")
    obj = PerceptualObjective(vgg, ["relu2_1"], ["relu1_2", "relu2_2"], content_weight=1.0, style_weight=3.0)
    obj.set_style(_image(vgg, size=32))
    net = fast_style.transformer(1 / 8).to(STANDIN)
    net["conv1"].needs_input_grad = False
    opt = Adam(net.trainable_params(), 1e-3)
    rng = numpy.random.default_rng(0)
    batches = [rng.uniform(0, 255, (2, 32, 32, 3)).astype(numpy.float32) for _ in range(4)]
    train_step(net, obj, opt, fast_style.to_input(batches[0], STANDIN))
    total = None
    with recording() as rec:
        for b in batches[1:]:
            terms = train_step(net, obj, opt, fast_style.to_input(b, STANDIN))
            total = terms["total"] if total is None else total + terms["total"]
        losses_to_host({"total": total})          # the logged row
    assert_budget(rec, 3, 1, 1, "fast style training step")
