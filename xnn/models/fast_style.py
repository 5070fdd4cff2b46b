"""Johnson et al.'s feed-forward style network ("Perceptual Losses for Real-Time Style Transfer
and Super-Resolution", 2016), with instance normalisation (Ulyanov et al. 2016): the transformer
network of the PyTorch examples' fast_neural_style, at a chosen ``width``.

Layers (C = 32 * width, all convolutions reflection-padded by k // 2):

    conv1  9x9, 3 -> C,     stride 1, in1, relu1
    conv2  3x3, C -> 2C,    stride 2, in2, relu2
    conv3  3x3, 2C -> 4C,   stride 2, in3, relu3
    res1 .. res5            x + in_b(conv_b(relu(in_a(conv_a(x))))), 3x3, 4C -> 4C
    conv4  x2 nearest, then 3x3, 4C -> 2C, in4, relu4
    conv5  x2 nearest, then 3x3, 2C -> C,  in5, relu5
    conv6  9x9, C -> 3, stride 1, no normalisation

conv4 and conv5 are :class:`~xnn.layers.UpsampleConv2d` layers: the upsampling and the
convolution in one, computed at the low resolution (the same function as the two layers).

Width 1 has 1.68 M parameters, width 0.5 (the instance-norm models of Johnson's own repository)
0.42 M.  The convolutions followed by instance normalisation have no bias: the normalisation
removes any per-channel constant, so a bias there would never change the output (the PyTorch
example keeps them; they can be dropped when loading its weights).  conv6 has a bias.  For
the same reason the residual blocks' ``in_b.beta`` have no effect (no ReLU follows them before
the next instance normalisation on their path); they are kept so that the layer is the usual one.

Input: RGB in 0..255 as float, (N, 3, H, W), H and W multiples of 4 (two stride-2 layers and two
x2 upsamplings); output: RGB, nominally 0..255 and unbounded, clipped to 0..255 for display.
"""
from __future__ import annotations

import numpy

from ..errors import XnnError
from ..files import read_npz, require_keys, save_npz
from ..layers import Conv2d, InstanceNorm2d, ReLU, UpsampleConv2d
from ..model import Residual, Sequential

#: what model.npz files of this network say they are
ARCH, VERSION = "johnson2016-transformer", 1
#: the network's input sides must be multiples of this
SIDE_MULTIPLE = 4
#: conv6 starts with He's weights times OUTPUT_INIT_GAIN and its bias at OUTPUT_INIT_BIAS: the untrained
#: network then puts out grey noise with about a photo's spread of pixel values (std 50-60) instead of
#: near-black (std about 1 with He's weights), which Adam's steps of about learning_rate per weight
#: would take thousands of iterations to grow out of
OUTPUT_INIT_GAIN, OUTPUT_INIT_BIAS = 64.0, 127.5


def _conv(name, cin, cout, k, stride=1, bias=False, seed=0):
    return (name, Conv2d(cin, cout, k, stride=stride, padding=k // 2, padding_mode="reflect", bias=bias,
                         seed=seed))


def channels(width: float) -> tuple:
    c = max(1, round(32 * width))
    return c, 2 * c, 4 * c


def transformer(width: float = 0.5, device=None, seed: int = 0) -> Sequential:
    """The network, He-initialised from ``seed`` (float32)."""
    if not width > 0:
        raise XnnError(f"width must be > 0, got {width}")
    c1, c2, c3 = channels(width)
    layers = [_conv("conv1", 3, c1, 9, seed=seed), ("in1", InstanceNorm2d(c1)), ("relu1", ReLU()),
              _conv("conv2", c1, c2, 3, stride=2, seed=seed + 1), ("in2", InstanceNorm2d(c2)), ("relu2", ReLU()),
              _conv("conv3", c2, c3, 3, stride=2, seed=seed + 2), ("in3", InstanceNorm2d(c3)), ("relu3", ReLU())]
    for i in range(1, 6):
        layers.append((f"res{i}", Residual([_conv("conv_a", c3, c3, 3, seed=seed + 10 * i),
                                            ("in_a", InstanceNorm2d(c3)), ("relu", ReLU()),
                                            _conv("conv_b", c3, c3, 3, seed=seed + 10 * i + 1),
                                            ("in_b", InstanceNorm2d(c3))])))
    # x2 nearest upsampling then conv4 / conv5, each as one layer (UpsampleConv2d: the same function and
    # initial weights, without making the upsampled image)
    layers += [("conv4", UpsampleConv2d(c3, c2, seed=seed + 3)), ("in4", InstanceNorm2d(c2)), ("relu4", ReLU()),
               ("conv5", UpsampleConv2d(c2, c1, seed=seed + 4)), ("in5", InstanceNorm2d(c1)), ("relu5", ReLU()),
               _conv("conv6", c1, 3, 9, bias=True, seed=seed + 5)]
    out = layers[-1][1].params
    out["W"] *= OUTPUT_INIT_GAIN
    out["b"][...] = OUTPUT_INIT_BIAS
    return Sequential(layers, device=device)


def save_model(net: Sequential, width: float, path) -> None:
    """model.npz: every parameter under its name ("res1.conv_a.W", ...) plus ``arch``, ``version``
    and ``width``; no pickle.  Written atomically."""
    arrays = dict(net.state_dict())
    arrays.update(arch=numpy.array(ARCH), version=numpy.array(VERSION), width=numpy.array(float(width)))
    save_npz(path, arrays)


def load_model(path, device=None) -> tuple:
    """(network, width) from a model.npz; any file that is not one, or does not fit, is one XnnError."""
    arrays = read_npz(path, "fast style model", text_keys=("arch",))
    require_keys(arrays, ("arch", "version", "width"), "fast style model", path)
    if str(arrays["arch"]) != ARCH or int(arrays["version"]) != VERSION:
        raise XnnError(f"{path} is a {arrays['arch']} model, version {arrays['version']}; xnn reads {ARCH} "
                       f"version {VERSION}")
    width = float(arrays["width"])
    net = transformer(width)
    net.load_state_dict({k: v for k, v in arrays.items() if k not in ("arch", "version", "width")},
                        source=str(path))
    return (net.to(device) if device is not None else net), width


def to_input(images, device):
    """uint8 (or 0..255 float) RGB, (H, W, 3) or (N, H, W, 3) -> float32 (N, 3, H, W) on ``device``."""
    a = numpy.asarray(images)
    a = a[None] if a.ndim == 3 else a
    return device.asarray(numpy.ascontiguousarray(a.transpose(0, 3, 1, 2), dtype=numpy.float32))


def stylise_batch(net: Sequential, images) -> list:
    """RGB images of one size (uint8 H x W x 3 each, at least 4 x 4) -> the network's outputs, float32
    H x W x 3 in [0, 1] on the host, in one forward pass.  Sides that are not multiples of 4 are
    reflection-padded up to the next one and the outputs cropped back, so every size works."""
    from ..backends import to_numpy
    a = numpy.stack([numpy.asarray(i) for i in images])
    h, w = a.shape[1:3]
    ph, pw = -h % SIDE_MULTIPLE, -w % SIDE_MULTIPLE
    if ph or pw:
        a = numpy.pad(a, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
    y = to_numpy(net.forward(to_input(a, net.device)))[:, :, :h, :w]
    out = numpy.clip(y.transpose(0, 2, 3, 1) * (1.0 / 255.0), 0.0, 1.0).astype(numpy.float32)
    return list(out)


def stylise(net: Sequential, image) -> numpy.ndarray:
    """One RGB image (uint8 H x W x 3) -> float32 H x W x 3 in [0, 1] (:func:`stylise_batch`)."""
    return stylise_batch(net, [image])[0]
