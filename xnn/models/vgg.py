"""VGG19 (Simonyan & Zisserman 2015) with ImageNet weights from Keras, MatConvNet or xnn files.

    vgg = xnn.models.vgg19(weights="vgg19-imagenet-notop", device="gpu")
    x = vgg.preprocess(rgb)                        # (1, 3, H, W) on the device
    f = vgg.features(x, ["relu1_1", "relu4_1"])    # runs only as deep as relu4_1
    vgg.classify(rgb224, top_k=5)                  # needs the full weights ("vgg19-imagenet")

Layers (names as in the classic Caffe/MatConvNet model):

    conv1_1 relu1_1 conv1_2 relu1_2 pool1
    conv2_1 relu2_1 conv2_2 relu2_2 pool2
    conv3_1 relu3_1 ... conv3_4 relu3_4 pool3
    conv4_1 relu4_1 ... conv4_4 relu4_4 pool4
    conv5_1 relu5_1 ... conv5_4 relu5_4 pool5
    flatten fc6 relu6 fc7 relu7 fc8 prob           (include_top=True only)

convX_Y is 3x3, stride 1, zero padding 1, and its output is taken before the ReLU;
reluX_Y is after it.  Pools are 2x2 stride 2 (max, or average with pooling="avg").
flatten is channels-first ("chw"); prob is the softmax over the classes.  No dropout.

Input convention, whatever file the weights came from: RGB, 0..255 minus the mean colour
of the loaded weights (``vgg.mean_rgb``, [123.68, 116.779, 103.939] for ImageNet), no
division by a standard deviation.  The importers (``vgg_weights``) convert BGR-trained
weights so this holds.
"""
from __future__ import annotations

import numpy

from .. import tiling
from ..backends import cpu, device as get_device, to_numpy
from ..errors import XnnError
from ..files import save_npz
from ..layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Softmax
from ..model import Sequential
from .vgg_weights import BLOCKS, FC_NAMES, IMAGENET_MEAN_RGB, Arch, VGGWeights, default_class_names, \
    load_weights

#: VGG19's feature layers in network order (conv1_1, relu1_1, ..., pool5), generated once from the
#: block table; every other list of VGG layer names in xnn is this one.
FEATURE_LAYERS = tuple(name for b, n_conv in enumerate(BLOCKS, 1)
                       for name in [x for i in range(1, n_conv + 1) for x in (f"conv{b}_{i}", f"relu{b}_{i}")]
                       + [f"pool{b}"])
#: The classifier's layers after pool5 (include_top=True).
TOP_LAYERS = ("flatten", "fc6", "relu6", "fc7", "relu7", "fc8", "prob")


def tile_halo(layers) -> int:
    """Input pixels a tile needs around its own region so that the features it owns at every
    layer in ``layers`` equal the whole image's (:mod:`xnn.tiling`): the largest receptive-field
    margin, rounded up to the deepest layer's pooling step.  From the layer table: 80 for relu5_1."""
    conv, pool = tiling.Window((3, 3), (1, 1), 1), tiling.Window((2, 2), (2, 2), 0)
    table = [conv if n.startswith("conv") else pool if n.startswith("pool") else None for n in FEATURE_LAYERS]
    margins = [tiling.receptive_field(w for w in table[:FEATURE_LAYERS.index(n) + 1] if w).halo for n in layers]
    return tiling.round_up(max(margins), min_input_side(deepest_layer(layers)))


def unknown_layers_problem(names):
    """None when every name is a VGG19 feature layer, else what is wrong (for config checks)."""
    bad = [n for n in names if n not in FEATURE_LAYERS]
    return f"unknown VGG19 layer {bad[0]!r}; use convX_Y, reluX_Y or poolX (e.g. relu4_2)" if bad else None


def deepest_layer(names) -> str:
    return max(names, key=FEATURE_LAYERS.index)


def min_input_side(layer: str) -> int:
    """The smallest image side that still gives ``layer`` at least 1 pixel: each 2x2 pool
    before it (and the layer itself, if a pool) halves the size, rounding down."""
    return 2 ** sum(n.startswith("pool") for n in FEATURE_LAYERS[:FEATURE_LAYERS.index(layer) + 1])


def check_input_size(h: int, w: int, layer: str, what: str) -> None:
    """A one-line XnnError when an h x w image is too small to reach ``layer``."""
    need = min_input_side(layer)
    if min(h, w) < need:
        raise XnnError(f"{what} is {h}x{w} px after resizing; VGG19 up to {layer} needs at least "
                       f"{need} px on each side (its 2x2 pools halve the size); use a larger size or a "
                       "less elongated image")


def _conv(cin, cout, wb, seed):
    layer = Conv2d(cin, cout, 3, stride=1, padding=1, seed=seed, init="he" if wb is None else None)
    if wb is not None:
        layer._set_params(W=wb[0], b=wb[1])
    return layer


def _linear(n_in, n_out, wb, seed):
    # init=None when weights are given: a random fc6 (25088 x 4096) only to be
    # overwritten would cost seconds and 800 MB of temporaries.
    layer = Linear(n_in, n_out, seed=seed, init="he" if wb is None else None)
    if wb is not None:
        layer._set_params(W=wb[0], b=wb[1])
    return layer


def build_layers(arch: Arch, include_top: bool, pooling: str, params: dict | None = None, seed: int = 0):
    """The (name, layer) list on the host; ``params`` (canonical weights) or He init seeded by ``seed``."""
    pool = {"max": MaxPool2d, "avg": AvgPool2d}[pooling]
    params = params or {}
    convs = {name: (cin, cout) for name, cin, cout in arch.convs()}
    fcs = {name: (n_in, n_out) for name, n_in, n_out in arch.fcs()}
    layers = []
    for name in FEATURE_LAYERS + (TOP_LAYERS if include_top else ()):
        if name in convs:
            layer = _conv(*convs[name], params.get(name), seed + len(layers))
        elif name in fcs:
            layer = _linear(*fcs[name], params.get(name), seed + len(layers))
        elif name.startswith("pool"):
            layer = pool(2, 2)
        else:
            layer = {"flatten": lambda: Flatten("chw"), "prob": Softmax}.get(name, ReLU)()
        layers.append((name, layer))
    return layers


class VGG:
    """A VGG19 network with its input convention and class names.

    Attributes: ``net`` (the :class:`~xnn.Sequential`; its layers are frozen: backward gives
    input gradients only, as style transfer needs), ``device``, ``arch``, ``mean_rgb``
    ((3,) float32, RGB), ``class_names`` (None without the classifier), ``include_top``,
    ``pooling``, ``source`` (where the weights came from).
    """

    def __init__(self, net: Sequential, arch: Arch, mean_rgb, class_names, include_top: bool,
                 pooling: str, source: str):
        self.net, self.arch = net, arch
        self.mean_rgb = numpy.asarray(mean_rgb, numpy.float32).reshape(3)
        self.class_names = class_names
        self.include_top, self.pooling, self.source = include_top, pooling, source

    @property
    def device(self):
        return self.net.device

    @property
    def names(self):
        return list(self.net.names)

    def __repr__(self):
        return (f"VGG(vgg19, include_top={self.include_top}, pooling={self.pooling!r}, "
                f"device={self.device!r}, source={self.source!r})")

    # ------------------------------------------------------------ images
    def preprocess(self, rgb):
        """RGB image -> network input (1, 3, H, W) float32 on the model's device.

        ``rgb``: an (H, W, 3) array with values 0..255 (uint8 or float), an (N, H, W, 3)
        batch (-> (N, 3, H, W)), or a PIL image.  x = rgb - mean_rgb, channels first.
        Does not resize.
        """
        if hasattr(rgb, "convert") and hasattr(rgb, "size"):   # a PIL image
            rgb = numpy.asarray(rgb.convert("RGB"))
        a = numpy.asarray(rgb)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] != 3 or not (a.dtype.kind in "uif"):
            raise XnnError(f"preprocess expects an H x W x 3 RGB image (uint8 0..255) or a PIL image, "
                           f"got an array of shape {a.shape} and dtype {a.dtype}")
        x = (a.astype(numpy.float32) - self.mean_rgb).transpose(0, 3, 1, 2)
        return self.device.asarray(numpy.ascontiguousarray(x))

    def deprocess(self, x, clip: bool = True):
        """Inverse of :meth:`preprocess`: network input -> host float32 RGB in [0, 255].

        x: (1, 3, H, W) or (3, H, W) -> (H, W, 3); (N, 3, H, W) -> (N, H, W, 3).
        Values are clipped to [0, 255] unless ``clip=False`` (then the exact inverse).
        """
        a = to_numpy(x).astype(numpy.float32)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[1] != 3:
            raise XnnError(f"deprocess expects (N, 3, H, W) network input, got shape {a.shape}")
        rgb = a.transpose(0, 2, 3, 1) + self.mean_rgb
        if clip:
            rgb = numpy.clip(rgb, 0, 255)
        return rgb[0] if rgb.shape[0] == 1 else rgb

    # ------------------------------------------------------------ passes
    def features(self, x, names):
        """dict name -> output (on the device) for the named layers; stops at the deepest one."""
        return self.net.features(x, names)

    def forward(self, x, until: str | None = None):
        return self.net.forward(x, until)

    def backward(self, dy=None, inject: dict | None = None):
        """Input gradient of the last forward/features pass (see :meth:`Sequential.backward`)."""
        return self.net.backward(dy, inject)

    def predict(self, x):
        """(N, 3, S, S) network input -> (N, num_classes) class probabilities on the device."""
        if not self.include_top:
            raise XnnError("this VGG19 was built without the classifier (include_top=False); build it "
                           "with include_top=True and full weights, e.g. weights='vgg19-imagenet'")
        s = self.arch.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise XnnError(f"classification needs (N, 3, {s}, {s}) input, got {tuple(x.shape)}; "
                           f"resize (and centre-crop) the image to {s}x{s} first")
        return self.net.forward(x)

    def classify(self, rgb, top_k: int = 5):
        """An S x S RGB image (S = 224) -> [(class index, class name, probability)], best first."""
        probs = to_numpy(self.predict(self.preprocess(rgb)))[0]
        top = numpy.argsort(-probs, kind="stable")[:top_k]
        return [(int(i), self.class_names[i], float(probs[i])) for i in top]

    # ------------------------------------------------------------ files
    def save(self, path):
        """Write the weights, mean and class names to ``path`` (.npz) atomically."""
        arrays = self.net.state_dict()
        arrays["meta.mean_rgb"] = self.mean_rgb
        if self.class_names is not None:
            arrays["meta.class_names"] = numpy.array(self.class_names, dtype=str)
        save_npz(path, arrays)

    def truncate(self, name: str):
        """Drop every layer after ``name`` (and the classifier): keeps only what a feature
        extractor up to ``name`` needs, e.g. style transfer up to relu5_1."""
        stop = self.net._index(name) + 1
        self.net = Sequential([(n, self.net[n]) for n in self.net.names[:stop]])
        self.include_top = self.include_top and "prob" in self.net.names
        return self

    def to(self, device):
        self.net.to(device)
        return self


def vgg19(weights="vgg19-imagenet-notop", device=None, include_top: bool | None = None,
          pooling: str = "max", *, channels=(64, 128, 256, 512, 512), fc=(4096, 4096),
          num_classes: int = 1000, input_size: int = 224, seed: int = 0) -> VGG:
    """Build VGG19 and load its weights.

    weights: "vgg19-imagenet" (Keras, with fc layers, 549 MB), "vgg19-imagenet-notop" (Keras,
        conv layers only, 80 MB), "vgg19-imagenet-matconvnet" (with fc layers); these are
        fetched into $XNN_HOME/weights on first use.  Or a path to a .h5 / .mat / .npz file,
        or None for random He initialisation (seeded by ``seed``).
    device: "cpu" (default, also for None), "gpu", "auto" or a Device.  Weights are read on
        the host and copied to the device once.
    include_top: build fc6..fc8 + softmax.  Default: True when the weights have fc layers
        (True for weights=None); True with conv-only weights is an error that says how to
        get the full file.
    pooling: "max" (the trained network) or "avg" (smoother gradients for style transfer).
    channels, fc, num_classes, input_size: architecture sizes (defaults: the official
        network; input_size is what the classifier takes, a multiple of 32).
    """
    if pooling not in ("max", "avg"):
        raise XnnError(f"pooling must be 'max' or 'avg', got {pooling!r}")
    arch = Arch(tuple(channels), tuple(fc), int(num_classes), int(input_size))
    dev = get_device("cpu" if device is None else device)
    if weights is None:
        loaded = VGGWeights({}, numpy.array(IMAGENET_MEAN_RGB, numpy.float32), None, "random")
        include_top = True if include_top is None else include_top
    else:
        loaded = load_weights(weights, arch, include_top)
        include_top = loaded.has_top if include_top is None else include_top
    params = {k: v for k, v in loaded.params.items() if include_top or k not in FC_NAMES}
    net = Sequential(build_layers(arch, include_top, pooling, params, seed))  # on the host
    if dev is not cpu:
        net.to(dev)                                                             # one copy
    net.freeze()
    names = None
    if include_top:
        names = loaded.class_names
        if names is None or len(names) != arch.num_classes:
            names = default_class_names(arch.num_classes)
    return VGG(net, arch, loaded.mean_rgb, names, include_top, pooling, loaded.source)
