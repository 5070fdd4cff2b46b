"""Reading VGG19 weights from Keras .h5, MatConvNet .mat and xnn .npz files.

Every importer returns ONE canonical form, :class:`VGGWeights`, whatever the file:

    params["convB_I"] = (W, b)   W (Cout, Cin, 3, 3) OIHW float32, input channels in RGB order
    params["fc6"]     = (W, b)   W (C5*S*S, F1): rows in channels-first (c, h, w) order, i.e. for
                                 Flatten("chw") over the (C5, S, S) pool5 output (S = input_size/32)
    params["fc7"], params["fc8"] = (W (in, out), b)
    mean_rgb      the per-channel mean the weights expect to be subtracted (RGB order, 0..255 scale)
    class_names   from the file where it has them, else None

How each format maps onto it:

* Keras (tf dim ordering): conv kernels (3, 3, Cin, Cout) HWIO -> transpose to OIHW; Keras
  convolution is cross-correlation like ours.  The network was trained on BGR input, so
  conv1_1's input-channel axis is reversed once here and the model always takes RGB.
  fc1 (Dense over a channels-last Flatten of the (S, S, C) pool5 output) has rows in
  (h, w, c) order: W.reshape(S, S, C, F1).transpose(2, 0, 1, 3) re-orders them to (c, h, w).
* MatConvNet (``imagenet-vgg-verydeep-19.mat``): kernels W[h, w, cin, cout] (HWIO), RGB input
  minus ``averageImage``.  fc6..fc8 are stored as convolutions whose kernel covers the whole
  pool5 map, y[o] = sum_{h,w,c} x[c, h, w] W[h, w, c, o], so fc6's matrix is
  W.transpose(2, 0, 1, 3).reshape(C*S*S, F1), and fc7/fc8 (1, 1, in, out) reshape to (in, out).
* xnn .npz: the canonical layout itself ("conv1_1.W", "conv1_1.b", ...), optionally with
  "meta.mean_rgb" and "meta.class_names" (written by :meth:`xnn.models.VGG.save`).

Every layer's presence and shape is checked against the architecture in the file's own
layout, so errors quote what the user sees in the file.  Known official files are verified
by md5 first.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

import numpy

from ..data import cache
from ..errors import XnnError
from ..files import as_numbers, read_npz

#: Convolutions per block in VGG19 (fixed: this is what makes it VGG19).
BLOCKS = (2, 2, 4, 4, 4)
#: The ImageNet mean colour in RGB order, 0..255 (Caffe-style: no std division).
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)

#: Named weights -> file inside the cache (``xnn.data.cache.fetch`` downloads it on first use).
NAMED_WEIGHTS = {
    "vgg19-imagenet": "weights/vgg19_weights_tf_dim_ordering_tf_kernels.h5",
    "vgg19-imagenet-notop": "weights/vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
    "vgg19-imagenet-matconvnet": "weights/imagenet-vgg-verydeep-19.mat",
}
FULL_WEIGHTS = "vgg19-imagenet"

_KERAS_FC = {"fc6": "fc1", "fc7": "fc2", "fc8": "predictions"}
FC_NAMES = ("fc6", "fc7", "fc8")


@dataclass(frozen=True)
class Arch:
    """VGG19's sizes.  The defaults are the official network; tests use smaller ones."""
    channels: tuple = (64, 128, 256, 512, 512)
    fc: tuple = (4096, 4096)
    num_classes: int = 1000
    input_size: int = 224

    def __post_init__(self):
        if len(self.channels) != 5 or len(self.fc) != 2:
            raise XnnError(f"VGG19 needs 5 channel widths and 2 fc widths, got channels="
                           f"{tuple(self.channels)} fc={tuple(self.fc)}")
        if self.input_size < 32 or self.input_size % 32:
            raise XnnError(f"input_size must be a multiple of 32 (five 2x2 pools), got {self.input_size}")

    @property
    def pool5_size(self) -> int:
        return self.input_size // 32

    def convs(self):
        """(name, cin, cout) for the 16 convolutions in order."""
        cin = 3
        for b, (n, cout) in enumerate(zip(BLOCKS, self.channels), 1):
            for i in range(1, n + 1):
                yield f"conv{b}_{i}", cin, cout
                cin = cout

    def fcs(self):
        """(name, n_in, n_out) for fc6, fc7, fc8 (n_in of fc6 = C5 * S * S)."""
        s, c5 = self.pool5_size, self.channels[-1]
        f1, f2 = self.fc
        return [("fc6", c5 * s * s, f1), ("fc7", f1, f2), ("fc8", f2, self.num_classes)]


@dataclass
class VGGWeights:
    """Canonical host weights: name -> (W, b) float32, see the module docstring."""
    params: dict
    mean_rgb: numpy.ndarray = field(default_factory=lambda: numpy.array(IMAGENET_MEAN_RGB, numpy.float32))
    class_names: list | None = None
    source: str = ""

    @property
    def has_top(self) -> bool:
        return all(n in self.params for n in FC_NAMES)


# ------------------------------------------------------------------ helpers
def _shape_error(path, layer, what, expected, actual):
    return XnnError(f"{path}: layer {layer} {what} has shape {tuple(actual)} but this VGG19 expects "
                    f"{tuple(expected)}; the file is for another architecture (check channels/fc/"
                    f"num_classes/input_size) or is not a VGG19 weight file")


def _check(path, layer, what, array, expected):
    as_numbers(array, f"{path}: layer {layer} {what}")
    if tuple(array.shape) != tuple(expected):
        raise _shape_error(path, layer, what, expected, array.shape)


def _bias(path, layer, b, n):
    """Accept (n,), (1, n) or (n, 1) biases; return (n,) float32."""
    b = numpy.asarray(as_numbers(b, f"{path}: layer {layer} bias"))
    if b.size != n or (b.ndim > 1 and max(b.shape) != b.size):
        raise _shape_error(path, layer, "bias", (n,), b.shape)
    return numpy.ascontiguousarray(b.reshape(n), dtype=numpy.float32)


def _conv_from_hwio(w):
    """(3, 3, Cin, Cout) -> (Cout, Cin, 3, 3), contiguous float32."""
    return numpy.ascontiguousarray(numpy.asarray(w).transpose(3, 2, 0, 1), dtype=numpy.float32)


def _fc6_from_hwco(w, s, c, o):
    """(S, S, C, O) indexed [h, w, c, o] -> (C*S*S, O) with rows in (c, h, w) order."""
    return numpy.ascontiguousarray(numpy.asarray(w).reshape(s, s, c, o).transpose(2, 0, 1, 3)
                                   .reshape(c * s * s, o), dtype=numpy.float32)


def _missing(path, layer, found, hint=""):
    shown = ", ".join(sorted(found)[:12]) + (" ..." if len(found) > 12 else "")
    return XnnError(f"{path}: layer {layer} is missing{hint} (the file holds: {shown or 'nothing'}); "
                    f"it is not a complete VGG19 weight file")


def no_top_error(path) -> XnnError:
    remote = cache.REGISTRY[NAMED_WEIGHTS[FULL_WEIGHTS]]
    return XnnError(
        f"{pathlib.Path(path).name} holds only the convolutional layers (no fc6/fc7/fc8), so it cannot "
        f"build the classifier (include_top=True); use weights='{FULL_WEIGHTS}' (the full file "
        f"{pathlib.PurePosixPath(remote.relpath).name}, 549 MB, fetched on first use from {remote.url} "
        f"into $XNN_HOME/weights/), or pass include_top=False")


def _unreadable(path, e) -> XnnError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return XnnError(f"cannot read weight file {path}: it is truncated or corrupt ({type(e).__name__}: "
                    f"{msg[:160]}); delete it and download or export it again")


def default_class_names(n: int) -> list:
    """The 1000 ImageNet class names shipped with xnn, or generic names for other sizes."""
    if n == 1000:
        from importlib import resources
        text = resources.files("xnn.data").joinpath("imagenet_classes.txt").read_text("utf-8")
        names = text.splitlines()
        if len(names) == 1000:
            return names
    return [f"class {i}" for i in range(n)]


# ------------------------------------------------------------------ checksums
_verified: dict = {}


def verify_known(path) -> None:
    """Check an official file (by name) against its published md5; cached per (path, size, mtime)."""
    path = pathlib.Path(path)
    want = cache.KNOWN_MD5.get(path.name)
    if want is None:
        return
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _verified.get(key) == want:
        return
    got = cache.md5sum(path)
    if got != want:
        url = next((r.url for r in cache.REGISTRY.values() if r.relpath.endswith("/" + path.name)), "")
        raise XnnError(f"{path}: checksum mismatch (md5 {got}, expected {want}): the file is incomplete "
                       f"or corrupt; delete it and re-download it{' from ' + url if url else ''}")
    _verified[key] = want


# ------------------------------------------------------------------ Keras .h5
def _h5_weights(group, name):
    """(kernel, bias) datasets of a Keras layer group, by its weight_names or the classic names."""
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]
    if len(names) == 2:
        return group[names[0]], group[names[1]]
    return group[f"{name}_W_1:0"], group[f"{name}_b_1:0"]


def load_keras_h5(path, arch: Arch = Arch(), include_top: bool | None = None) -> VGGWeights:
    """Keras ``vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5`` -> canonical weights."""
    import h5py
    params = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            for name, cin, cout in arch.convs():
                b, i = name[4:].split("_")
                kname = f"block{b}_conv{i}"
                if kname not in root:
                    raise _missing(path, f"{name} ({kname})", list(root.keys()))
                w_ds, b_ds = _h5_weights(root[kname], kname)
                _check(path, f"{name} ({kname})", "kernel", w_ds, (3, 3, cin, cout))
                w = _conv_from_hwio(w_ds[()])
                if name == "conv1_1":
                    w = numpy.ascontiguousarray(w[:, ::-1])   # BGR -> RGB input channels
                params[name] = (w, _bias(path, f"{name} ({kname})", b_ds[()], cout))
            has_fc = [n for n in FC_NAMES if _KERAS_FC[n] in root]
            if include_top is not False and has_fc:
                s, c5 = arch.pool5_size, arch.channels[-1]
                for name, n_in, n_out in arch.fcs():
                    kname = _KERAS_FC[name]
                    if kname not in root:
                        raise _missing(path, f"{name} ({kname})", list(root.keys()))
                    w_ds, b_ds = _h5_weights(root[kname], kname)
                    _check(path, f"{name} ({kname})", "kernel", w_ds, (n_in, n_out))
                    w = w_ds[()]
                    if name == "fc6":   # rows (h, w, c) of a channels-last flatten -> (c, h, w)
                        w = _fc6_from_hwco(w, s, c5, n_out)
                    params[name] = (numpy.ascontiguousarray(w, dtype=numpy.float32),
                                    _bias(path, f"{name} ({kname})", b_ds[()], n_out))
    except (OSError, KeyError) as e:
        raise _unreadable(path, e) from None
    if include_top and "fc6" not in params:
        raise no_top_error(path)
    bgr = (103.939, 116.779, 123.68)
    return VGGWeights(params, numpy.array(bgr[::-1], numpy.float32), None, f"keras:{path}")


# ------------------------------------------------------------------ MatConvNet .mat
def _peel(x):
    """Unwrap MATLAB's 1x1 cells/structs as scipy returns them."""
    while isinstance(x, numpy.ndarray) and x.size == 1 and (x.dtype == object or x.dtype.names):
        x = x.flat[0]
    return x


def _field(struct, name):
    """A struct field or None (struct: a 1x1 structured array or one record)."""
    struct = _peel(struct)
    names = getattr(getattr(struct, "dtype", None), "names", None)
    if not names or name not in names:
        return None
    return struct[name]


def _text(x) -> str:
    x = _peel(x)
    if isinstance(x, numpy.ndarray):
        return str(x.flat[0]) if x.size else ""
    return str(x)


def _mat_mean(data, path):
    """Per-channel mean of normalization.averageImage (old) or meta.normalization (new)."""
    norm = data.get("normalization")
    if norm is None:
        norm = _field(data.get("meta"), "normalization")
    avg = _field(norm, "averageImage") if norm is not None else None
    avg = None if avg is None else numpy.asarray(_peel(avg), dtype=numpy.float64)
    if avg is None or avg.size == 0 or not numpy.any(avg):
        return numpy.array(IMAGENET_MEAN_RGB, numpy.float32), " (no averageImage: ImageNet mean used)"
    if avg.size == 3:
        return avg.reshape(3).astype(numpy.float32), ""
    if avg.shape[-1] == 3:   # a mean image (H, W, 3): its per-channel mean
        return avg.reshape(-1, 3).mean(axis=0).astype(numpy.float32), ""
    raise XnnError(f"{path}: normalization.averageImage has shape {avg.shape}; expected a colour "
                   f"(3 values) or an (H, W, 3) mean image")


def _mat_classes(data):
    """classes.description (old layout) or meta.classes.description (new): a cell of strings."""
    classes = data.get("classes")
    if classes is None:
        classes = _field(data.get("meta"), "classes")
    desc = _field(classes, "description") if classes is not None else None
    if desc is None:
        return None
    desc = numpy.asarray(desc)
    if desc.dtype == object:
        return [_text(d) for d in desc.flat]
    if desc.dtype.kind == "U":   # a char matrix, one padded row per class
        return [str(d).rstrip() for d in desc.flat]
    return None


def load_matconvnet(path, arch: Arch = Arch(), include_top: bool | None = None) -> VGGWeights:
    """MatConvNet ``imagenet-vgg-verydeep-19.mat`` (old or new layout) -> canonical weights."""
    import scipy.io
    try:
        data = scipy.io.loadmat(path)
    except NotImplementedError:
        raise XnnError(f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read; re-save it in "
                       f"MATLAB with save(..., '-v7') or use the official .mat file") from None
    except Exception as e:   # scipy raises many types on truncated/corrupt files
        raise _unreadable(path, e) from None
    cells = data.get("layers")
    if cells is None:
        raise XnnError(f"{path}: no 'layers' variable; this is not a MatConvNet simplenn model file")
    layers = {}
    for cell in numpy.asarray(cells).flat:
        name = _text(_field(cell, "name"))
        if _text(_field(cell, "type")) == "conv":
            layers[name] = _field(cell, "weights")

    def weights(name):
        if name not in layers:
            raise _missing(path, name, list(layers), " (no conv layer of that name)")
        wb = [numpy.asarray(_peel(v)) for v in numpy.asarray(layers[name], dtype=object).flat]
        if len(wb) != 2:
            raise XnnError(f"{path}: layer {name} has {len(wb)} weight arrays; expected 2 (filters, biases)")
        return wb

    params = {}
    for name, cin, cout in arch.convs():
        w, b = weights(name)
        _check(path, name, "filters", w, (3, 3, cin, cout))
        params[name] = (_conv_from_hwio(w), _bias(path, name, b, cout))
    if include_top is not False and any(n in layers for n in FC_NAMES):
        s, c5 = arch.pool5_size, arch.channels[-1]
        for name, n_in, n_out in arch.fcs():
            w, b = weights(name)
            k = s if name == "fc6" else 1
            cin = c5 if name == "fc6" else n_in
            _check(path, name, "filters", w, (k, k, cin, n_out))
            w = _fc6_from_hwco(w, k, cin, n_out)   # k = 1: a plain reshape to (in, out)
            params[name] = (w, _bias(path, name, b, n_out))
    if include_top and "fc6" not in params:
        raise no_top_error(path)
    mean, note = _mat_mean(data, path)
    return VGGWeights(params, mean, _mat_classes(data), f"matconvnet:{path}{note}")


# ------------------------------------------------------------------ xnn .npz
def load_npz(path, arch: Arch = Arch(), include_top: bool | None = None) -> VGGWeights:
    """xnn's own .npz (``Sequential.save`` / ``VGG.save``) -> canonical weights."""
    arrays = read_npz(path, "weight file", text_keys=("meta.class_names",))
    expected = [(n, (cout, cin, 3, 3), cout) for n, cin, cout in arch.convs()]
    has_fc = any(f"{n}.W" in arrays for n in FC_NAMES)
    if include_top is not False and has_fc:
        expected += [(n, (n_in, n_out), n_out) for n, n_in, n_out in arch.fcs()]
    params = {}
    found = sorted({k.rsplit(".", 1)[0] for k in arrays})
    for name, wshape, n in expected:
        if f"{name}.W" not in arrays or f"{name}.b" not in arrays:
            raise _missing(path, name, found)
        _check(path, name, "W", arrays[f"{name}.W"], wshape)
        params[name] = (numpy.ascontiguousarray(arrays[f"{name}.W"], dtype=numpy.float32),
                        _bias(path, name, arrays[f"{name}.b"], n))
    if include_top and "fc6" not in params:
        raise no_top_error(path)
    mean = arrays.get("meta.mean_rgb")
    mean = numpy.array(IMAGENET_MEAN_RGB if mean is None else mean, numpy.float32).reshape(3)
    names = arrays.get("meta.class_names")
    return VGGWeights(params, mean, None if names is None else [str(s) for s in names], f"npz:{path}")


_LOADERS = {".h5": load_keras_h5, ".hdf5": load_keras_h5, ".mat": load_matconvnet, ".npz": load_npz}


def resolve(weights) -> pathlib.Path:
    """A weights argument (a registered name or a path) -> an existing file path."""
    if isinstance(weights, str) and weights in NAMED_WEIGHTS:
        return cache.fetch(NAMED_WEIGHTS[weights])
    path = pathlib.Path(os.fspath(weights)).expanduser()
    if path.suffix.lower() not in _LOADERS:
        raise XnnError(f"unknown weights {str(weights)!r}: give a .h5 (Keras), .mat (MatConvNet) or .npz "
                       f"(xnn) file, or one of the names {', '.join(NAMED_WEIGHTS)}")
    if not path.is_file():
        raise XnnError(f"weight file not found: {path}")
    return path


def load_weights(weights, arch: Arch = Arch(), include_top: bool | None = None) -> VGGWeights:
    """Resolve, verify (md5 of known official files) and import a weight file.

    include_top: True requires fc6..fc8 (clear error for conv-only files), False skips them,
    None loads them where the file has them.
    """
    path = resolve(weights)
    verify_known(path)
    return _LOADERS[path.suffix.lower()](path, arch, include_top)
