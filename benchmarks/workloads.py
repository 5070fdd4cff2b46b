"""Benchmark workloads, each written twice: once with xnn, once with PyTorch.

A workload builder returns (step, flops, units): ``step()`` runs one timed unit of work
and finishes it (device synchronised), ``flops`` is the arithmetic of one step
(multiply-add = 2; None where not counted) and ``units`` says what one step is (e.g. 640
images).  Both frameworks get the same shapes, float32, the same random data (same seed)
and, for adain_512, the same shipped weights.

Layouts: each side gets the memory order it is fastest with.  PyTorch's convolution
workloads run ``channels_last`` (model and input; ``layout="nchw"`` for the contiguous
NCHW variant, ``bench.py --torch-layout nchw``).  xnn takes NCHW at its API; the style
gradients it is handed are NCHW views of channels-last memory, the layout its own style
losses (``xnn.style.losses``) produce, and PyTorch's are channels_last likewise.
PyTorch inference runs in eval mode under ``torch.inference_mode()``.
"""
from __future__ import annotations


import numpy

MLP = (784, 512, 256, 10)
CNN_BATCH = 64
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
#: VGG19's convolutions (name, in, out) and pools, in order.
VGG_PLAN = [("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool1",
            ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool2",
            ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256), ("conv3_4", 256, 256), "pool3",
            ("conv4_1", 256, 512), ("conv4_2", 512, 512), ("conv4_3", 512, 512), ("conv4_4", 512, 512), "pool4",
            ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512), ("conv5_4", 512, 512), "pool5"]
ADAIN_SIZE = (384, 512)     # content H x W (the adain experiment's default image_size 512, a 4:3 photo)
ADAIN_STYLE = (512, 512)
ADAIN_EPS = 1e-5
#: the fast style network as the CPU defaults train and run it (configs/train_fast_style.yaml)
FAST_WIDTH = 0.5
FAST_CONTENT, FAST_STYLE = ["relu2_2"], ["relu1_2", "relu2_2", "relu3_4", "relu4_4"]
TRAIN_SIZE, TRAIN_BATCH = 256, 4


def conv_flops(h, w, cin, cout, k=3):
    return 2 * h * w * cin * cout * k * k


def vgg_flops(h, w, last="conv5_4"):
    """Forward arithmetic of VGG19's convolutions conv1_1 .. ``last`` on an h x w image."""
    total = 0
    for item in VGG_PLAN:
        if isinstance(item, str):
            h, w = h // 2, w // 2
            continue
        name, cin, cout = item
        total += conv_flops(h, w, cin, cout)
        if name == last:
            return total
    raise ValueError(f"no conv {last!r} in VGG19")


def style_flops(size):
    """A style step: forward conv1_1 .. conv5_1 (relu5_1 is the deepest layer used) and the
    input gradient of each of those convs on the way back (frozen weights: no dW)."""
    return 2 * vgg_flops(size, size, last="conv5_1")


def adain_flops(h, w):
    """Encoder (1x1 preprocess, conv1_1 .. conv4_1, ceil-mode pools) + decoder (its mirror)."""
    from xnn.models.adain import DECODER_PLAN, ENCODER_PLAN
    total = conv_flops(h, w, 3, 3, k=1)
    for item in ENCODER_PLAN:
        if isinstance(item, str):
            h, w = -(-h // 2), -(-w // 2)
        else:
            total += conv_flops(h, w, item[1], item[2])
    for item in DECODER_PLAN:
        if isinstance(item, str):
            h, w = 2 * h, 2 * w
        else:
            total += conv_flops(h, w, item[1], item[2])
    return total


def transformer_flops(h, w, width=FAST_WIDTH):
    """Forward arithmetic of the fast style network's convolutions on an h x w image."""
    from xnn.models.fast_style import channels
    c1, c2, c3 = channels(width)
    return (conv_flops(h, w, 3, c1, 9) + conv_flops(h // 2, w // 2, c1, c2) + conv_flops(h // 4, w // 4, c2, c3)
            + 10 * conv_flops(h // 4, w // 4, c3, c3) + conv_flops(h // 2, w // 2, c3, c2)
            + conv_flops(h, w, c2, c1) + conv_flops(h, w, c1, 3, 9))


def train_step_flops(size=TRAIN_SIZE, batch=TRAIN_BATCH):
    """One training step: the network forward, its input and weight gradients (3x), VGG19 forward of the
    photos to conv2_2 (content targets) and of the outputs to conv4_4, and its input gradient."""
    return batch * (3 * transformer_flops(size, size) + vgg_flops(size, size, "conv2_2")
                    + 2 * vgg_flops(size, size, "conv4_4"))


def _cnn_fwd_flops():
    return conv_flops(28, 28, 1, 32) + conv_flops(14, 14, 32, 64) + 2 * (64 * 7 * 7 * 128 + 128 * 10)


def _adain_inputs(rng):
    """Content (1, 3, H, W) and style images in [0, 1], as host NHWC arrays."""
    c = rng.random((1, *ADAIN_SIZE, 3), dtype=numpy.float32)
    s = rng.random((1, *ADAIN_STYLE, 3), dtype=numpy.float32)
    return c, s


def _style_grad_shapes(size):
    """(C, H, W) of each style layer's output for a size x size input."""
    shapes, h, block = {}, size, 1
    for item in VGG_PLAN:
        if isinstance(item, str):
            h, block = h // 2, block + 1
        else:
            name, _, cout = item
            relu = "relu" + name[4:]
            if relu in STYLE_LAYERS:
                shapes[relu] = (cout, h, h)
    return shapes


# ------------------------------------------------------------------ xnn
def xnn_conv(dev, rng):
    from xnn.layers import Conv2d
    conv = Conv2d(256, 256, 3, padding=1, seed=0).to(dev)
    x = dev.asarray(rng.standard_normal((1, 256, 56, 56), dtype=numpy.float32))
    dy = dev.asarray(rng.standard_normal((1, 256, 56, 56), dtype=numpy.float32))

    def step():
        conv.forward(x)
        conv.backward(dy)
        dev.synchronize()
    return step, 3 * conv_flops(56, 56, 256, 256), "layer fwd+bwd"


def xnn_mlp_epoch(dev, rng, n=55000, batch=128):
    from xnn.layers import SoftmaxCrossEntropy
    from xnn.models.mnist import mlp
    from xnn.optim import SGD
    net = mlp(MLP[1:-1], device=dev)
    crit = SoftmaxCrossEntropy(device=dev)
    opt = SGD(net.trainable_params(), 0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = dev.asarray(rng.random((n, 1, 28, 28), dtype=numpy.float32))
    y = dev.asarray(rng.integers(0, 10, n))

    def step():
        for i in range(0, n - batch + 1, batch):
            crit.forward(net.forward(x[i:i + batch]), y[i:i + batch])
            net.backward(crit.backward())
            opt.step(net.grads)
        dev.synchronize()
    macs = sum(a * b for a, b in zip(MLP, MLP[1:]))
    return step, 3 * 2 * macs * (n // batch) * batch, f"epoch of {n} images"


def xnn_cnn_train(dev, rng, steps=10):
    from xnn.layers import SoftmaxCrossEntropy
    from xnn.models.mnist import cnn
    from xnn.optim import SGD
    from xnn.data_parallel import DataParallel, default_parts
    net = cnn((32, 64), 128, device=dev)
    crit = SoftmaxCrossEntropy(device=dev)
    opt = SGD(net.trainable_params(), 0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = dev.asarray(rng.random((CNN_BATCH, 1, 28, 28), dtype=numpy.float32))
    y = dev.asarray(rng.integers(0, 10, CNN_BATCH))
    # as configs/mnist_cnn.yaml trains (train.parts: auto): the batch in one part per CPU worker
    parallel = DataParallel(net, crit, default_parts(dev))

    def step():
        for _ in range(steps):
            parallel.forward_backward(x, y)
            opt.step(parallel.grads)
        dev.synchronize()
    return step, steps * 3 * CNN_BATCH * _cnn_fwd_flops(), f"{steps * CNN_BATCH} images"


def _xnn_vgg(dev):
    from xnn.models import vgg19
    return vgg19(weights=None, include_top=False, device=dev)   # frozen, He-initialised


def xnn_vgg_forward(dev, rng, size=224):
    vgg = _xnn_vgg(dev)
    x = dev.asarray(rng.standard_normal((1, 3, size, size), dtype=numpy.float32))

    def step():
        vgg.features(x, ["pool5"])
        dev.synchronize()
    return step, vgg_flops(size, size), "image (conv1_1..pool5)"


def xnn_style_step(dev, rng, size):
    vgg = _xnn_vgg(dev)
    x = dev.asarray(rng.standard_normal((1, 3, size, size), dtype=numpy.float32))
    # the layout xnn's style losses hand back: NCHW views of channels-last memory
    grads = {k: dev.asarray(rng.standard_normal((1, h, w, c), dtype=numpy.float32)).transpose(0, 3, 1, 2)
             for k, (c, h, w) in _style_grad_shapes(size).items()}

    def step():
        vgg.features(x, STYLE_LAYERS)
        vgg.backward(inject=grads)
        dev.synchronize()
    return step, style_flops(size), "step (fwd to relu5_1 + bwd to image)"


def xnn_adain(dev, rng):
    """The shipped AdaIN model, loaded as the adain experiment loads it; one content image:
    encode, AdaIN with cached style statistics, decode (AdaINStylizer.stylize's device work)."""
    from xnn.layers.adain import channel_stats
    from xnn.models.adain import adain_decoder, adain_encoder
    enc, dec = adain_encoder("adain", device=dev), adain_decoder("adain", device=dev)   # frozen
    c_host, s_host = _adain_inputs(rng)
    # NCHW views of channels-last memory, as AdaINStylizer hands them to the encoder
    c = dev.asarray(c_host).transpose(0, 3, 1, 2)
    mean_s, std_s = channel_stats(enc.forward(dev.asarray(s_host).transpose(0, 3, 1, 2)), ADAIN_EPS)

    def step():
        f = enc.forward(c)
        mean_c, std_c = channel_stats(f, ADAIN_EPS)
        dec.forward((f - mean_c) * (std_s / std_c) + mean_s)
        dev.synchronize()
    h, w = ADAIN_SIZE
    return step, adain_flops(h, w), f"image {w}x{h} (encode + AdaIN + decode)"


def xnn_fast_style(dev, rng, size=512):
    """The fast style network (He-initialised) on one size x size image, as fast_style.stylise runs it."""
    from xnn.models import fast_style
    net = fast_style.transformer(FAST_WIDTH).to(dev).freeze()
    x = dev.asarray(rng.uniform(0, 255, (1, 3, size, size)).astype(numpy.float32))

    def step():
        net.forward(x)
        dev.synchronize()
    return step, transformer_flops(size, size), f"image {size}x{size}"


def xnn_train_step(dev, rng, size=TRAIN_SIZE, batch=TRAIN_BATCH):
    """One step of the train_style experiment (experiments.train_style.train_step): the network on a batch of
    photos, the perceptual objective through VGG19 to relu4_4, the backward, Adam."""
    from xnn.data_parallel import default_parts
    from xnn.experiments.train_style import make_twins, train_step
    from xnn.models import fast_style
    from xnn.optim import Adam
    from xnn.style.perceptual import PerceptualObjective
    vgg = _xnn_vgg(dev).truncate("relu4_4")
    obj = PerceptualObjective(vgg, FAST_CONTENT, FAST_STYLE, content_weight=1.0, style_weight=5.0)
    obj.set_style(dev.asarray(rng.uniform(-120, 120, (1, 3, size, size)).astype(numpy.float32)))
    net = fast_style.transformer(FAST_WIDTH).to(dev)
    net["conv1"].needs_input_grad = False       # as the experiment sets it (PyTorch: x needs no grad)
    opt = Adam(net.trainable_params(), 1e-3)
    x = dev.asarray(rng.uniform(0, 255, (batch, 3, size, size)).astype(numpy.float32))
    # as configs/train_fast_style.yaml trains (parts: auto): the batch in one part per CPU worker
    twins = make_twins(net, obj, default_parts(dev))

    def step():
        train_step(net, obj, opt, x, twins)
        dev.synchronize()
    return step, train_step_flops(size, batch), f"step (batch {batch}, {size} px)"


# ------------------------------------------------------------------ torch
def _sync(torch, device):
    return (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)


def _fmt(torch, layout):
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def _tensor(torch, a, device, layout=None, requires_grad=False):
    t = torch.tensor(a, device=device)
    if layout is not None and t.ndim == 4:
        t = t.contiguous(memory_format=_fmt(torch, layout))
    return t.requires_grad_(requires_grad)


def _frozen(torch, net, device, layout):
    net = net.to(device=device, memory_format=_fmt(torch, layout)).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _torch_vgg(torch, device, layout, last=None):
    """VGG19 convs (+ inplace ReLU, max pools) as a Sequential named like xnn's layers, up to ``last``."""
    from collections import OrderedDict
    nn = torch.nn
    layers = OrderedDict()
    for item in VGG_PLAN:
        if isinstance(item, str):
            layers[item] = nn.MaxPool2d(2)
        else:
            name, cin, cout = item
            layers[name] = nn.Conv2d(cin, cout, 3, padding=1)
            layers["relu" + name[4:]] = nn.ReLU(inplace=True)
        if last in layers:
            break
    return _frozen(torch, nn.Sequential(layers), device, layout)


def torch_conv(torch, device, rng, layout):
    F = torch.nn.functional
    x = _tensor(torch, rng.standard_normal((1, 256, 56, 56), dtype=numpy.float32), device, layout, True)
    w = _tensor(torch, rng.standard_normal((256, 256, 3, 3), dtype=numpy.float32) * 0.03, device, layout, True)
    b = torch.zeros(256, device=device, requires_grad=True)
    dy = _tensor(torch, rng.standard_normal((1, 256, 56, 56), dtype=numpy.float32), device, layout)
    sync = _sync(torch, device)

    def step():
        F.conv2d(x, w, b, padding=1).backward(dy)
        x.grad = w.grad = b.grad = None
        sync()
    return step


def torch_mlp_epoch(torch, device, rng, layout, n=55000, batch=128):
    nn = torch.nn
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                        nn.Linear(256, 10)).to(device)
    opt = torch.optim.SGD(net.parameters(), 0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = torch.tensor(rng.random((n, 1, 28, 28), dtype=numpy.float32), device=device)
    y = torch.tensor(rng.integers(0, 10, n), device=device)
    sync = _sync(torch, device)

    def step():
        for i in range(0, n - batch + 1, batch):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x[i:i + batch]), y[i:i + batch]).backward()
            opt.step()
        sync()
    return step


def torch_cnn_train(torch, device, rng, layout, steps=10):
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    net = net.to(device=device, memory_format=_fmt(torch, layout))
    opt = torch.optim.SGD(net.parameters(), 0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = _tensor(torch, rng.random((CNN_BATCH, 1, 28, 28), dtype=numpy.float32), device, layout)
    y = torch.tensor(rng.integers(0, 10, CNN_BATCH), device=device)
    sync = _sync(torch, device)

    def step():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        sync()
    return step


def _torch_inference(torch, device, net, x):
    """A step that runs ``net`` on ``x`` under inference_mode and waits for the device."""
    sync = _sync(torch, device)

    def step():
        with torch.inference_mode():
            net(x)
        sync()
    return step


def torch_vgg_forward(torch, device, rng, layout, size=224):
    net = _torch_vgg(torch, device, layout)
    x = _tensor(torch, rng.standard_normal((1, 3, size, size), dtype=numpy.float32), device, layout)
    return _torch_inference(torch, device, net, x)


def torch_style_step(torch, device, rng, layout, size):
    """Forward to relu5_1 keeping the style layers' outputs, then one backward to the image
    with the given gradients injected at them: torch.autograd.backward(outputs, grads)."""
    net = _torch_vgg(torch, device, layout, last="relu5_1")
    x = _tensor(torch, rng.standard_normal((1, 3, size, size), dtype=numpy.float32), device, layout, True)
    shapes = _style_grad_shapes(size)
    grads = [_tensor(torch, rng.standard_normal((1, h, w, c), dtype=numpy.float32).transpose(0, 3, 1, 2),
                     device, layout) for c, h, w in shapes.values()]
    keep = list(shapes)
    sync = _sync(torch, device)

    def step():
        h, outs = x, []
        for name, m in net.named_children():
            h = m(h)
            if name in keep:
                outs.append(h)
        torch.autograd.backward(outs, grads)
        x.grad = None
        sync()
    return step


def _torch_adain_nets(torch, device, layout):
    """The AdaIN encoder and decoder as torch modules named like xnn's, with the weights
    from $XNN_HOME (the same npz files, loaded with load_state_dict)."""
    from collections import OrderedDict

    from xnn.data.cache import fetch
    from xnn.models.adain import DECODER_FILE, DECODER_PLAN, ENCODER_FILE, ENCODER_PLAN
    nn = torch.nn

    def conv(cin, cout, k=3):
        return nn.Conv2d(cin, cout, k, padding=k // 2, padding_mode="reflect" if k > 1 else "zeros")

    enc = OrderedDict(preprocess=conv(3, 3, 1))
    for item in ENCODER_PLAN:
        if isinstance(item, str):
            enc[item] = nn.MaxPool2d(2, 2, ceil_mode=True)
        else:
            name, cin, cout = item
            enc[name] = conv(cin, cout)
            enc["relu" + name[4:]] = nn.ReLU(inplace=True)
    dec = OrderedDict()
    for item in DECODER_PLAN:
        if isinstance(item, str):
            dec[item] = nn.Upsample(scale_factor=2, mode="nearest")
        else:
            name, cin, cout = item
            dec[name] = conv(cin, cout)
            if name != "dec1_1":
                dec["relu_" + name] = nn.ReLU(inplace=True)
    nets = []
    for layers, rel in ((enc, ENCODER_FILE), (dec, DECODER_FILE)):
        net = nn.Sequential(layers)
        with numpy.load(fetch(rel), allow_pickle=False) as data:
            net.load_state_dict({k: torch.from_numpy(numpy.asarray(data[k], numpy.float32)) for k in data.files})
        nets.append(_frozen(torch, net, device, layout))
    return nets


def _torch_stats(f):
    mean = f.mean(dim=(2, 3), keepdim=True)
    return mean, (f.var(dim=(2, 3), keepdim=True, unbiased=True) + ADAIN_EPS).sqrt()


def torch_adain(torch, device, rng, layout):
    enc, dec = _torch_adain_nets(torch, device, layout)
    c_host, s_host = _adain_inputs(rng)
    c = _tensor(torch, c_host.transpose(0, 3, 1, 2), device, layout)
    with torch.inference_mode():
        mean_s, std_s = _torch_stats(enc(_tensor(torch, s_host.transpose(0, 3, 1, 2), device, layout)))
    sync = _sync(torch, device)

    def step():
        with torch.inference_mode():
            f = enc(c)
            mean_c, std_c = _torch_stats(f)
            dec((f - mean_c) * (std_s / std_c) + mean_s)
        sync()
    return step


def adain_outputs_agree(tol=1e-3):
    """Relative max difference between xnn's and this file's PyTorch AdaIN on one small
    image (CPU); a check that the two sides compute the same thing."""
    import torch

    from xnn import device as get_device
    from xnn.layers.adain import channel_stats
    from xnn.models.adain import adain_decoder, adain_encoder
    rng = numpy.random.default_rng(1)
    c, s = rng.random((1, 96, 128, 3), dtype=numpy.float32), rng.random((1, 64, 64, 3), dtype=numpy.float32)
    dev = get_device("cpu")
    enc, dec = adain_encoder("adain", device=dev), adain_decoder("adain", device=dev)
    fc, fs = enc.forward(c.transpose(0, 3, 1, 2)), enc.forward(s.transpose(0, 3, 1, 2))
    (mc, sc), (ms, ss) = channel_stats(fc), channel_stats(fs)
    ours = dec.forward((fc - mc) * (ss / sc) + ms)
    tenc, tdec = _torch_adain_nets(torch, torch.device("cpu"), "channels_last")
    with torch.inference_mode():
        gc, gs = tenc(torch.tensor(c.transpose(0, 3, 1, 2))), tenc(torch.tensor(s.transpose(0, 3, 1, 2)))
        (tmc, tsc), (tms, tss) = _torch_stats(gc), _torch_stats(gs)
        theirs = tdec((gc - tmc) * (tss / tsc) + tms).numpy()
    err = float(numpy.abs(ours - theirs).max() / numpy.abs(theirs).max())
    return err, err < tol


def _torch_transformer(torch, width=FAST_WIDTH):
    """The transformer network of the PyTorch examples' fast_neural_style at ``width``, with xnn's
    choices: no bias before an instance norm (it would have no effect), reflection padding."""
    from xnn.models.fast_style import channels
    nn = torch.nn
    c1, c2, c3 = channels(width)

    def conv(cin, cout, k, stride=1, bias=False):
        return nn.Conv2d(cin, cout, k, stride, padding=k // 2, padding_mode="reflect", bias=bias)

    def block(cin, cout, k, stride=1):
        return [conv(cin, cout, k, stride), nn.InstanceNorm2d(cout, affine=True), nn.ReLU()]

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(*block(c3, c3, 3), conv(c3, c3, 3), nn.InstanceNorm2d(c3, affine=True))

        def forward(self, x):
            return x + self.body(x)
    layers = block(3, c1, 9) + block(c1, c2, 3, 2) + block(c2, c3, 3, 2) + [Residual() for _ in range(5)]
    layers += [nn.Upsample(scale_factor=2, mode="nearest")] + block(c3, c2, 3)
    layers += [nn.Upsample(scale_factor=2, mode="nearest")] + block(c2, c1, 3) + [conv(c1, 3, 9, bias=True)]
    return nn.Sequential(*layers)


def torch_fast_style(torch, device, rng, layout, size=512):
    net = _frozen(torch, _torch_transformer(torch), device, layout)
    x = _tensor(torch, rng.uniform(0, 255, (1, 3, size, size)).astype(numpy.float32), device, layout)
    return _torch_inference(torch, device, net, x)


def _torch_gram(f):
    n, c, h, w = f.shape
    X = f.reshape(n, c, h * w)
    return X @ X.transpose(1, 2) / (c * h * w)


class TorchPerceptual:
    """The perceptual objective of xnn.style.perceptual written with PyTorch autograd: content MSE at
    relu2_2 against the photos' features, style MSE of Grams normalised by C*H*W.  ``style`` is the
    style image in VGG input space (the mean subtracted), as xnn's set_style takes it."""

    def __init__(self, torch, vgg, style, content_weight=1.0, style_weight=5.0):
        self.torch, self.vgg = torch, vgg
        mean = numpy.array([123.68, 116.779, 103.939], numpy.float32)     # xnn keeps the mean in float32
        self.mean = torch.tensor(mean, device=style.device).to(style.dtype).reshape(1, 3, 1, 1)
        self.content_weight, self.style_weight = content_weight, style_weight
        with torch.no_grad():
            self.grams = {k: _torch_gram(f) for k, f in self.features(style).items() if k in FAST_STYLE}

    def features(self, x):
        wanted, out = set(FAST_CONTENT + FAST_STYLE), {}
        for name, m in self.vgg.named_children():
            x = m(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out

    def __call__(self, y, x):
        F = self.torch.nn.functional
        with self.torch.no_grad():
            target = self.features(x - self.mean)[FAST_CONTENT[0]]
        f = self.features(y - self.mean)
        loss = self.content_weight * F.mse_loss(f[FAST_CONTENT[0]], target)
        return loss + self.style_weight * sum(F.mse_loss(_torch_gram(f[k]), self.grams[k].expand(len(y), -1, -1))
                                              for k in FAST_STYLE)


def torch_train_step(torch, device, rng, layout, size=TRAIN_SIZE, batch=TRAIN_BATCH):
    """The same step written as a PyTorch user would: autograd through the network and a frozen VGG19."""
    vgg = _torch_vgg(torch, device, layout, last="relu4_4")
    net = _torch_transformer(torch).to(device=device, memory_format=_fmt(torch, layout))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    style = _tensor(torch, rng.uniform(-120, 120, (1, 3, size, size)).astype(numpy.float32), device, layout)
    objective = TorchPerceptual(torch, vgg, style)
    x = _tensor(torch, rng.uniform(0, 255, (batch, 3, size, size)).astype(numpy.float32), device, layout)
    sync = _sync(torch, device)

    def step():
        opt.zero_grad(set_to_none=True)
        objective(net(x), x).backward()
        opt.step()
        sync()
    return step


def fast_style_outputs_agree(tol=1e-4):
    """Relative max difference between xnn's fast style network and this file's PyTorch one with the
    same weights on one small image (CPU); a check that the two sides compute the same thing."""
    import torch

    from xnn.models import fast_style
    net = fast_style.transformer(FAST_WIDTH, seed=3)
    tnet = _torch_transformer(torch).eval()
    ours = list(net.params.items())
    theirs = list(tnet.parameters())
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    with torch.no_grad():
        for (name, a), t in zip(ours, theirs):
            assert tuple(a.shape) == tuple(t.shape), (name, a.shape, t.shape)
            t.copy_(torch.from_numpy(numpy.asarray(a)))
    x = numpy.random.default_rng(1).uniform(0, 255, (1, 3, 64, 96)).astype(numpy.float32)
    with torch.inference_mode():
        reference = tnet(torch.from_numpy(x)).numpy()
    err = float(numpy.abs(net.forward(x) - reference).max() / numpy.abs(reference).max())
    return err, err < tol


XNN = {"conv_256x56": xnn_conv, "mlp_epoch": xnn_mlp_epoch, "cnn_train": xnn_cnn_train,
       "vgg19_224": xnn_vgg_forward, "style_256": lambda d, r: xnn_style_step(d, r, 256),
       "style_512": lambda d, r: xnn_style_step(d, r, 512), "adain_512": xnn_adain,
       "fast_style_512": xnn_fast_style, "train_step_256": xnn_train_step}
TORCH = {"conv_256x56": torch_conv, "mlp_epoch": torch_mlp_epoch, "cnn_train": torch_cnn_train,
         "vgg19_224": torch_vgg_forward, "style_256": lambda t, d, r, lay: torch_style_step(t, d, r, lay, 256),
         "style_512": lambda t, d, r, lay: torch_style_step(t, d, r, lay, 512), "adain_512": torch_adain,
         "fast_style_512": torch_fast_style, "train_step_256": torch_train_step}
