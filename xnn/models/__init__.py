"""Ready-made networks: VGG19 (Keras .h5, MatConvNet .mat, xnn .npz weights), the AdaIN
encoder/decoder, and small MNIST classifiers."""
from .adain import AdaINStylizer, StyleStats, adain_decoder, adain_encoder
from .mnist import cnn, mlp
from .vgg import VGG, vgg19
from .vgg_weights import IMAGENET_MEAN_RGB, NAMED_WEIGHTS, Arch, VGGWeights, load_weights

__all__ = ["AdaINStylizer", "StyleStats", "adain_encoder", "adain_decoder", "cnn", "mlp", "VGG", "vgg19",
           "Arch", "VGGWeights", "load_weights", "NAMED_WEIGHTS", "IMAGENET_MEAN_RGB"]
