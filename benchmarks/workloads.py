"""Benchmark workloads, each written twice: once with xnn, once with PyTorch.

A workload builder takes (framework, device) and returns (step, flops, units), where
``step()`` runs one timed unit of work and finishes it (device synchronised), ``flops``
is the arithmetic of one step (multiply-add = 2) and ``units`` says what one step is
(e.g. 64 images).  Both frameworks get the same shapes, float32 and random data.
"""
from __future__ import annotations

import numpy

MLP = (784, 512, 256, 10)
CNN_BATCH = 64
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
VGG_CONVS = [(3, 64), (64, 64), "P", (64, 128), (128, 128), "P", (128, 256), (256, 256), (256, 256),
             (256, 256), "P", (256, 512), (512, 512), (512, 512), (512, 512), "P", (512, 512),
             (512, 512), (512, 512), (512, 512), "P"]


def conv_flops(h, w, cin, cout, k=3):
    return 2 * h * w * cin * cout * k * k


def vgg_flops(h, w, until_pool=5):
    total, pools = 0, 0
    for item in VGG_CONVS:
        if item == "P":
            pools += 1
            if pools == until_pool:
                break
            h, w = h // 2, w // 2
        else:
            total += conv_flops(h, w, *item)
    return total


# ------------------------------------------------------------------ xnn
def _xnn_sync(dev):
    return dev.synchronize


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
    net = cnn((32, 64), 128, device=dev)
    crit = SoftmaxCrossEntropy(device=dev)
    opt = SGD(net.trainable_params(), 0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = dev.asarray(rng.random((CNN_BATCH, 1, 28, 28), dtype=numpy.float32))
    y = dev.asarray(rng.integers(0, 10, CNN_BATCH))

    def step():
        for _ in range(steps):
            crit.forward(net.forward(x), y)
            net.backward(crit.backward())
            opt.step(net.grads)
        dev.synchronize()
    return step, steps * 3 * CNN_BATCH * _cnn_fwd_flops(), f"{steps * CNN_BATCH} images"


def _cnn_fwd_flops():
    return conv_flops(28, 28, 1, 32) + conv_flops(14, 14, 32, 64) + 2 * (64 * 7 * 7 * 128 + 128 * 10)


def _xnn_vgg(dev):
    from xnn.models import vgg19
    return vgg19(weights=None, include_top=False, device=dev)


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
    feats = vgg.features(x, STYLE_LAYERS)
    grads = {k: dev.asarray(rng.standard_normal(v.shape, dtype=numpy.float32)) for k, v in feats.items()}

    def step():
        vgg.features(x, STYLE_LAYERS)
        vgg.backward(inject=grads)
        dev.synchronize()
    return step, 2 * vgg_flops(size, size, until_pool=5), "step (fwd to relu5_1 + bwd to image)"


def xnn_adain(dev, rng, size=512):
    from xnn.models.adain import adain_decoder, adain_encoder
    from xnn.layers.adain import adain
    enc, dec = adain_encoder(weights=None, device=dev), adain_decoder(weights=None, device=dev)
    c = dev.asarray(rng.random((1, 3, size, size * 3 // 4), dtype=numpy.float32))
    s = dev.asarray(rng.random((1, 3, size, size), dtype=numpy.float32))
    fs = enc.forward(s)

    def step():
        dec.forward(adain(enc.forward(c), fs))
        dev.synchronize()
    return step, None, f"image {size}x{size * 3 // 4}"


# ------------------------------------------------------------------ torch
def _torch_vgg(torch, device):
    layers = []
    for item in VGG_CONVS:
        if item == "P":
            layers.append(torch.nn.MaxPool2d(2))
        else:
            layers += [torch.nn.Conv2d(*item, 3, padding=1), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers).to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _sync(torch, device):
    return (lambda: torch.cuda.synchronize()) if device.type == "cuda" else (lambda: None)


def torch_conv(torch, device, rng):
    F = torch.nn.functional
    x = torch.tensor(rng.standard_normal((1, 256, 56, 56), dtype=numpy.float32), device=device, requires_grad=True)
    w = torch.tensor(rng.standard_normal((256, 256, 3, 3), dtype=numpy.float32) * 0.03, device=device,
                     requires_grad=True)
    b = torch.zeros(256, device=device, requires_grad=True)
    dy = torch.tensor(rng.standard_normal((1, 256, 56, 56), dtype=numpy.float32), device=device)
    sync = _sync(torch, device)

    def step():
        F.conv2d(x, w, b, padding=1).backward(dy)
        sync()
    return step


def torch_mlp_epoch(torch, device, rng, n=55000, batch=128):
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


def torch_cnn_train(torch, device, rng, steps=10):
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    opt = torch.optim.SGD(net.parameters(), 0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    x = torch.tensor(rng.random((CNN_BATCH, 1, 28, 28), dtype=numpy.float32), device=device)
    y = torch.tensor(rng.integers(0, 10, CNN_BATCH), device=device)
    sync = _sync(torch, device)

    def step():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        sync()
    return step


def torch_vgg_forward(torch, device, rng, size=224):
    net = _torch_vgg(torch, device)
    x = torch.tensor(rng.standard_normal((1, 3, size, size), dtype=numpy.float32), device=device)
    sync = _sync(torch, device)

    def step():
        with torch.no_grad():
            net(x)
        sync()
    return step


def torch_style_step(torch, device, rng, size):
    net = _torch_vgg(torch, device)
    # indices of relu1_1, relu2_1, relu3_1, relu4_1, relu4_2, relu5_1 in the Sequential
    idx = {}
    block, i_in_block = 1, 0
    for j, m in enumerate(net):
        if isinstance(m, torch.nn.MaxPool2d):
            block, i_in_block = block + 1, 0
        elif isinstance(m, torch.nn.ReLU):
            i_in_block += 1
            idx[f"relu{block}_{i_in_block}"] = j
    want = {idx[n]: n for n in STYLE_LAYERS}
    last = max(want)
    x = torch.tensor(rng.standard_normal((1, 3, size, size), dtype=numpy.float32), device=device,
                     requires_grad=True)
    with torch.no_grad():
        h, grads = x, {}
        for j, m in enumerate(net):
            h = m(h)
            if j in want:
                grads[j] = torch.randn_like(h)
            if j == last:
                break
    sync = _sync(torch, device)

    def step():
        h, outs = x, []
        for j, m in enumerate(net):
            h = m(h)
            if j in want:
                outs.append((h * grads[j]).sum())
            if j == last:
                break
        torch.stack(outs).sum().backward()
        x.grad = None
        sync()
    return step


XNN = {"conv_256x56": xnn_conv, "mlp_epoch": xnn_mlp_epoch, "cnn_train": xnn_cnn_train,
       "vgg19_224": xnn_vgg_forward, "style_256": lambda d, r: xnn_style_step(d, r, 256),
       "style_512": lambda d, r: xnn_style_step(d, r, 512), "adain_512": xnn_adain}
TORCH = {"conv_256x56": torch_conv, "mlp_epoch": torch_mlp_epoch, "cnn_train": torch_cnn_train,
         "vgg19_224": torch_vgg_forward, "style_256": lambda t, d, r: torch_style_step(t, d, r, 256),
         "style_512": lambda t, d, r: torch_style_step(t, d, r, 512)}
