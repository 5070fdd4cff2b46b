"""Layers: each a forward and a hand-written backward, written once against ``xp``."""
from .activation import ReLU, Softmax
from .adain import AdaIN, adain, adain_mix, channel_stats
from .base import Layer, he_normal, xavier_uniform
from .conv import Conv2d
from .fused import ConvReLUMaxPool2d
from .linear import Linear
from .loss import SoftmaxCrossEntropy
from .norm import InstanceNorm2d
from .padding import ReflectionPad2d
from .pool import AvgPool2d, MaxPool2d
from .shape import Flatten
from .upsample import Upsample2d, UpsampleConv2d

__all__ = ["Layer", "Linear", "ReLU", "Softmax", "SoftmaxCrossEntropy", "Conv2d", "ConvReLUMaxPool2d", "MaxPool2d",
           "AvgPool2d", "Flatten", "ReflectionPad2d", "Upsample2d", "UpsampleConv2d", "InstanceNorm2d", "AdaIN", "adain", "adain_mix",
           "channel_stats", "he_normal", "xavier_uniform"]
