"""Small MNIST classifiers built from the foundation layers."""
from __future__ import annotations

from ..layers import ConvReLUMaxPool2d, Flatten, Linear, ReLU
from ..model import Sequential


def mlp(hidden=(512, 256), num_classes: int = 10, seed: int = 0, device=None) -> Sequential:
    """784 -> hidden[0] -> ... -> num_classes, ReLU between, He init. Input (N, 1, 28, 28)."""
    layers = [("flatten", Flatten())]
    width = 28 * 28
    for i, h in enumerate(hidden, 1):
        layers += [(f"fc{i}", Linear(width, h, seed=seed + i)), (f"relu{i}", ReLU())]
        width = h
    layers.append((f"fc{len(hidden) + 1}", Linear(width, num_classes, init="xavier", seed=seed + 99)))
    net = Sequential(layers, device=device)
    net["fc1"].needs_input_grad = False  # nothing upstream of the image to train
    return net


def cnn(channels=(32, 64), fc: int = 128, num_classes: int = 10, seed: int = 0, device=None) -> Sequential:
    """[conv3x3 -> ReLU -> maxpool2] per entry of ``channels``, then fc -> ReLU -> classes.

    Each conv-ReLU-pool block is one layer, :class:`~xnn.layers.ConvReLUMaxPool2d`, named
    "conv{i}": the same function, parameters ("conv1.W", ...) and numbers as the three layers, with
    the ReLU and the pool done in one pass."""
    layers, cin, size = [], 1, 28
    for i, c in enumerate(channels, 1):
        layers.append((f"conv{i}", ConvReLUMaxPool2d(cin, c, 3, padding=1, pool=2, seed=seed + i)))
        cin, size = c, size // 2
    layers += [("flatten", Flatten()), ("fc1", Linear(cin * size * size, fc, seed=seed + 50)),
               ("relu_fc1", ReLU()), ("fc2", Linear(fc, num_classes, init="xavier", seed=seed + 51))]
    net = Sequential(layers, device=device)
    net["conv1"].needs_input_grad = False  # nothing upstream of the image to train
    return net
