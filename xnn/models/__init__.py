"""Ready-made networks: VGG19 with ImageNet weights (Keras .h5, MatConvNet .mat, xnn .npz)."""
from .vgg import VGG, vgg19
from .vgg_weights import IMAGENET_MEAN_RGB, NAMED_WEIGHTS, Arch, VGGWeights, load_weights

__all__ = ["VGG", "vgg19", "Arch", "VGGWeights", "load_weights", "NAMED_WEIGHTS", "IMAGENET_MEAN_RGB"]
