"""VGG19: layer table, input convention, weight import (Keras .h5, MatConvNet .mat, xnn .npz).

References are written here from the raw file arrays in float64, each in the file's NATIVE
layout: (H, W, C) images, HWIO kernels applied by sliding windows, BGR input for Keras, Keras'
channels-last flatten, MatConvNet's fc6 as a convolution over the whole pool5 map.  So a
wrong channel flip, a wrong kernel transpose or a wrong flatten order in the importers shows
up as a mismatch.  Synthetic files have exactly the official names, nesting and axis layouts
at reduced widths (pool5 2x2, so the flatten order matters).
"""
import os

import h5py
import numpy
import pytest
import scipy.io
from numpy.lib.stride_tricks import sliding_window_view

import xnn
from xnn.errors import XnnError
from xnn.layers import AvgPool2d
from xnn.models import vgg19
from tests.conftest import REPO, weights_path

NOTOP = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
KERAS_BGR_MEAN = numpy.array([103.939, 116.779, 123.68])
SMALL = dict(channels=(4, 4, 8, 8, 8), fc=(16, 12), num_classes=10, input_size=64)
BLOCKS = (2, 2, 4, 4, 4)

NAMES = ("conv1_1 relu1_1 conv1_2 relu1_2 pool1 conv2_1 relu2_1 conv2_2 relu2_2 pool2 "
         "conv3_1 relu3_1 conv3_2 relu3_2 conv3_3 relu3_3 conv3_4 relu3_4 pool3 "
         "conv4_1 relu4_1 conv4_2 relu4_2 conv4_3 relu4_3 conv4_4 relu4_4 pool4 "
         "conv5_1 relu5_1 conv5_2 relu5_2 conv5_3 relu5_3 conv5_4 relu5_4 pool5 "
         "flatten fc6 relu6 fc7 relu7 fc8 prob").split()


# ---------------------------------------------------------------- float64 reference
def ref_conv(x, w_hwio, b):
    """x (H, W, C), w (3, 3, C, O): y[h, w, o] = b[o] + sum x_pad[h + a, w + b', c] w[a, b', c, o]."""
    xp = numpy.pad(x, ((1, 1), (1, 1), (0, 0)))
    win = sliding_window_view(xp, (3, 3), axis=(0, 1))           # (H, W, C, 3, 3)
    return numpy.tensordot(win, w_hwio, axes=([3, 4, 2], [0, 1, 2])) + b


def ref_pool(x, mode="max"):
    h, w, c = x.shape
    blocks = x[:h // 2 * 2, :w // 2 * 2].reshape(h // 2, 2, w // 2, 2, c)
    return blocks.max(axis=(1, 3)) if mode == "max" else blocks.mean(axis=(1, 3))


def ref_forward(x, convs, pool="max"):
    """convs: list over blocks of lists of (W HWIO, b).  Returns dict of our names -> (H, W, C)."""
    out = {}
    for bi, block in enumerate(convs, 1):
        for i, (w, b) in enumerate(block, 1):
            x = ref_conv(x, w.astype(numpy.float64), b.astype(numpy.float64).reshape(-1))
            out[f"conv{bi}_{i}"] = x
            x = numpy.maximum(x, 0)
            out[f"relu{bi}_{i}"] = x
        x = ref_pool(x, pool)
        out[f"pool{bi}"] = x
    return out


def softmax(z):
    e = numpy.exp(z - z.max())
    return e / e.sum()


def rel_err(got, want):
    return numpy.linalg.norm(numpy.asarray(got, numpy.float64) - want) / numpy.linalg.norm(want)


def chw_to_hwc(a):
    return xnn.to_numpy(a)[0].transpose(1, 2, 0)


# ---------------------------------------------------------------- synthetic files
def random_weights(rng, channels, fc, num_classes, s):
    """Raw weights in the official HWIO / (in, out) layouts; conv1_1 scaled for 0..255 input."""
    convs, cin = [], 3
    for n, cout in zip(BLOCKS, channels):
        block = []
        for _ in range(n):
            scale = numpy.sqrt(2.0 / (9 * cin)) * (0.01 if cin == 3 and not convs and not block else 1)
            block.append(((rng.standard_normal((3, 3, cin, cout)) * scale).astype(numpy.float32),
                          (rng.standard_normal(cout) * 0.1).astype(numpy.float32)))
            cin = cout
        convs.append(block)
    dims = [s * s * channels[-1], fc[0], fc[1], num_classes]
    fcs = [((rng.standard_normal((a, b)) * numpy.sqrt(2.0 / a)).astype(numpy.float32),
            (rng.standard_normal(b) * 0.1).astype(numpy.float32)) for a, b in zip(dims, dims[1:])]
    return convs, fcs


def write_keras_h5(path, convs, fcs=None, skip=(), bad_shape=None):
    """The Keras layout: group block{B}_conv{I} with block{B}_conv{I}_W_1:0 (HWIO) and _b_1:0."""
    layer_names = [b"input_1"]
    with h5py.File(path, "w") as f:
        def group(name, arrays):
            layer_names.append(name.encode())
            if name in skip:
                return
            g = f.create_group(name)
            wn = [f"{name}_W_1:0", f"{name}_b_1:0"] if arrays else []
            g.attrs["weight_names"] = numpy.array([w.encode() for w in wn]) if wn else numpy.array([])
            for dname, a in zip(wn, arrays or []):
                if bad_shape == name and dname.endswith("_W_1:0"):
                    a = a[..., :-1]
                g.create_dataset(dname, data=a)

        for bi, block in enumerate(convs, 1):
            for i, (w, b) in enumerate(block, 1):
                group(f"block{bi}_conv{i}", [w, b])
            group(f"block{bi}_pool", None)
        if fcs is not None:
            group("flatten", None)
            for name, (w, b) in zip(["fc1", "fc2", "predictions"], fcs):
                group(name, [w, b])
        f.attrs["layer_names"] = numpy.array(layer_names)


def keras_reference(rgb, convs, fcs):
    """Keras semantics: BGR input minus the BGR mean; Flatten over (H, W, C); Dense = x W + b."""
    x = rgb[..., ::-1].astype(numpy.float64) - KERAS_BGR_MEAN
    out = ref_forward(x, convs)
    z = out["pool5"].reshape(-1)                           # channels-last flatten
    for name, (w, b) in zip(["fc6", "fc7", "fc8"], fcs):
        z = z @ w.astype(numpy.float64) + b
        out[name] = z
        if name != "fc8":
            z = numpy.maximum(z, 0)
    out["prob"] = softmax(z)
    return out


def write_matconvnet(path, convs, fcs, mean_image, classes, layout="old", skip=(), bad_shape=None):
    """The MatConvNet simplenn layout: a 1 x 43 cell of layer structs; fc layers as convolutions."""
    s = int(numpy.sqrt(fcs[0][0].shape[0] // convs[-1][-1][0].shape[3]))
    layers = []

    def conv(name, w, b):
        if name in skip:
            return
        if bad_shape == name:
            w = w[:, :, :, :-1]
        cell = numpy.empty((1, 2), dtype=object)
        cell[0, 0] = w
        cell[0, 1] = b.reshape(1, -1) if layout == "old" else b.reshape(-1, 1)
        layers.append({"name": name, "type": "conv", "weights": cell,
                       "pad": numpy.array([[1.0, 1, 1, 1]]), "stride": numpy.array([[1.0, 1]])})

    for bi, block in enumerate(convs, 1):
        for i, (w, b) in enumerate(block, 1):
            conv(f"conv{bi}_{i}", w, b)
            layers.append({"name": f"relu{bi}_{i}", "type": "relu"})
        layers.append({"name": f"pool{bi}", "type": "pool", "method": "max",
                       "pool": numpy.array([[2.0, 2]]), "stride": numpy.array([[2.0, 2]]),
                       "pad": numpy.array([[0.0, 0, 0, 0]])})
    c5 = convs[-1][-1][0].shape[3]
    w6 = fcs[0][0].reshape(s, s, c5, -1)                   # conv filters indexed [h, w, c, o]
    conv("fc6", w6, fcs[0][1])
    layers.append({"name": "relu6", "type": "relu"})
    conv("fc7", fcs[1][0][None, None], fcs[1][1])
    layers.append({"name": "relu7", "type": "relu"})
    conv("fc8", fcs[2][0][None, None], fcs[2][1])
    layers.append({"name": "prob", "type": "softmax"})
    cells = numpy.empty((1, len(layers)), dtype=object)
    for i, layer in enumerate(layers):
        cells[0, i] = layer
    desc = numpy.array(classes, dtype=object).reshape(1, -1)
    wnid = numpy.array([f"n{i:08d}" for i in range(len(classes))], dtype=object).reshape(1, -1)
    cls = {"name": wnid, "description": desc}
    norm = {"imageSize": numpy.array([[s * 32.0, s * 32, 3]]), "averageImage": mean_image,
            "interpolation": "bilinear", "keepAspect": 1}
    if layout == "old":
        scipy.io.savemat(path, {"layers": cells, "classes": cls, "normalization": norm})
    else:
        scipy.io.savemat(path, {"layers": cells, "meta": {"inputs": {"name": "data"},
                                                          "classes": cls, "normalization": norm}})


def mat_reference(rgb, convs, w6_hwco, fcs, mean_rgb):
    """MatConvNet semantics: RGB minus the mean; fc6 a convolution covering the pool5 map."""
    out = ref_forward(rgb.astype(numpy.float64) - mean_rgb, convs)
    z = numpy.einsum("hwc,hwco->o", out["pool5"], w6_hwco.astype(numpy.float64)) + fcs[0][1]
    out["fc6"] = z
    z = numpy.maximum(z, 0) @ fcs[1][0].astype(numpy.float64) + fcs[1][1]
    out["fc7"] = z
    z = numpy.maximum(z, 0) @ fcs[2][0].astype(numpy.float64) + fcs[2][1]
    out["fc8"] = z
    out["prob"] = softmax(z)
    return out


@pytest.fixture(scope="module")
def small():
    """Random raw weights at the reduced size, a 64x64 RGB image, and a mean image."""
    rng = numpy.random.default_rng(7)
    convs, fcs = random_weights(rng, SMALL["channels"], SMALL["fc"], SMALL["num_classes"], 2)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=numpy.uint8)
    mean_image = (numpy.array([120.0, 110.0, 90.0]) + rng.uniform(-5, 5, (64, 64, 3))).astype(numpy.float32)
    return convs, fcs, rgb, mean_image


def check_outputs(vgg, rgb, ref, names):
    feats = vgg.features(vgg.preprocess(rgb), names)
    for name in names:
        got = xnn.to_numpy(feats[name])[0]
        got = got.transpose(1, 2, 0) if got.ndim == 3 else got
        assert rel_err(got, ref[name]) < 1e-5, name


# ---------------------------------------------------------------- layer table
def test_layer_table_and_random_init():
    vgg = vgg19(weights=None, **SMALL)
    assert vgg.names == NAMES and vgg.include_top
    conv = vgg.net["conv3_2"]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), 1)
    pool = vgg.net["pool4"]
    assert type(pool).__name__ == "MaxPool2d" and (pool.kernel_size, pool.stride) == ((2, 2), (2, 2))
    assert vgg.net["fc6"].params["W"].shape == (8 * 2 * 2, 16)
    # seeded: the same seed gives the same weights, layers of one shape differ
    again = vgg19(weights=None, **SMALL)
    assert numpy.array_equal(vgg.net["conv5_1"].params["W"], again.net["conv5_1"].params["W"])
    assert not numpy.array_equal(vgg.net["conv5_1"].params["W"], vgg.net["conv5_2"].params["W"])
    notop = vgg19(weights=None, include_top=False, pooling="avg", **SMALL)
    assert notop.names == NAMES[:NAMES.index("pool5") + 1]
    assert all(isinstance(notop.net[f"pool{i}"], AvgPool2d) for i in range(1, 6))


def test_bad_arguments():
    with pytest.raises(XnnError, match="pooling"):
        vgg19(weights=None, pooling="min", **SMALL)
    with pytest.raises(XnnError, match="multiple of 32"):
        vgg19(weights=None, channels=(4, 4, 8, 8, 8), input_size=48)
    with pytest.raises(XnnError, match="unknown weights"):
        vgg19(weights="vgg19-imagenet-typo")
    with pytest.raises(XnnError, match="not found"):
        vgg19(weights="/nonexistent/w.h5")


# ---------------------------------------------------------------- preprocessing
def test_preprocess_deprocess(dev):
    from PIL import Image
    vgg = vgg19(weights=None, include_top=False, device=dev, **SMALL)
    rgb = numpy.zeros((5, 7, 3), numpy.uint8)
    rgb[2, 3] = (200, 100, 50)
    x = vgg.preprocess(rgb)
    assert x.shape == (1, 3, 5, 7) and x.dtype == numpy.float32 and vgg.device.owns(x)
    xh = xnn.to_numpy(x)
    # RGB order, 0..255 minus the RGB mean, no std division
    assert numpy.allclose(xh[0, :, 2, 3], [200 - 123.68, 100 - 116.779, 50 - 103.939], atol=1e-4)
    assert numpy.allclose(xh[0, :, 0, 0], [-123.68, -116.779, -103.939], atol=1e-4)
    assert numpy.array_equal(xnn.to_numpy(vgg.preprocess(Image.fromarray(rgb))), xh)
    back = vgg.deprocess(x)
    assert back.shape == (5, 7, 3) and numpy.allclose(back, rgb, atol=1e-4)
    assert vgg.deprocess(x - 1000).max() == 0 and vgg.deprocess(x - 1000, clip=False).min() < -800
    with pytest.raises(XnnError, match="H x W x 3"):
        vgg.preprocess(numpy.zeros((5, 7), numpy.uint8))


# ---------------------------------------------------------------- real weights
def test_real_notop_features_match_reference(dev):
    path = weights_path(NOTOP)      # the Keras file, or its float16 .npz carry on a GPU machine
    from PIL import Image
    rgb = numpy.asarray(Image.open(REPO / "examples" / "chelsea.png").convert("RGB"))[120:160, 200:240]
    vgg = vgg19(weights="vgg19-imagenet-notop" if path.suffix == ".h5" else str(path), device=dev)
    assert not vgg.include_top and vgg.names[-1] == "pool5"
    assert numpy.allclose(vgg.mean_rgb, [123.68, 116.779, 103.939])
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            convs = [[(f[f"block{b}_conv{i}"][f"block{b}_conv{i}_W_1:0"][()],
                       f[f"block{b}_conv{i}"][f"block{b}_conv{i}_b_1:0"][()]) for i in range(1, n + 1)]
                     for b, n in enumerate(BLOCKS, 1)]
    else:   # xnn's npz: W (O, C, kh, kw) for RGB input -> Keras (kh, kw, C, O) for BGR input
        with numpy.load(path) as f:
            convs = [[(f[f"conv{b}_{i}.W"].astype(numpy.float64).transpose(2, 3, 1, 0),
                       f[f"conv{b}_{i}.b"].astype(numpy.float64)) for i in range(1, n + 1)]
                     for b, n in enumerate(BLOCKS, 1)]
        convs[0][0] = (convs[0][0][0][:, :, ::-1], convs[0][0][1])
    ref = ref_forward(rgb[..., ::-1].astype(numpy.float64) - KERAS_BGR_MEAN, convs)
    feats = vgg.features(vgg.preprocess(rgb), ["relu1_1", "relu3_1", "pool5"])
    assert feats["pool5"].shape == (1, 512, 1, 1)
    for name in ("relu1_1", "relu3_1", "pool5"):
        assert rel_err(chw_to_hwc(feats[name]), ref[name]) <= 1e-4, name


def test_real_notop_include_top_is_a_clear_error():
    path = weights_path(NOTOP)
    with pytest.raises(XnnError) as e:
        vgg19(weights="vgg19-imagenet-notop" if path.suffix == ".h5" else str(path), include_top=True)
    msg = str(e.value)
    assert "no fc6/fc7/fc8" in msg and "weights='vgg19-imagenet'" in msg and "include_top=False" in msg
    assert "https://storage.googleapis.com/" in msg and "\n" not in msg


# ---------------------------------------------------------------- synthetic full files
def test_keras_full_h5_classifies_like_reference(dev, small, tmp_path):
    convs, fcs, rgb, _ = small
    path = tmp_path / "full.h5"
    write_keras_h5(path, convs, fcs)
    vgg = vgg19(weights=path, device=dev, **SMALL)
    assert vgg.include_top and vgg.names == NAMES
    ref = keras_reference(rgb, convs, fcs)
    check_outputs(vgg, rgb, ref, ["relu1_2", "pool5", "fc6", "fc8", "prob"])
    probs = xnn.to_numpy(vgg.predict(vgg.preprocess(numpy.stack([rgb, rgb[::-1]]))))
    assert probs.shape == (2, 10) and numpy.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert numpy.allclose(probs[0], ref["prob"], atol=1e-5)
    top = vgg.classify(rgb, top_k=3)
    want = numpy.argsort(-ref["prob"])[:3]
    assert [t[0] for t in top] == list(want)
    assert [t[1] for t in top] == [f"class {i}" for i in want]
    assert numpy.allclose([t[2] for t in top], ref["prob"][want], atol=1e-5)
    # the same file without the top
    conv_only = vgg19(weights=path, include_top=False, device=dev, **SMALL)
    assert conv_only.names[-1] == "pool5"
    with pytest.raises(XnnError, match="include_top=False"):
        conv_only.predict(conv_only.preprocess(rgb))
    with pytest.raises(XnnError, match="64x64"):
        vgg.classify(rgb[:32, :32])


@pytest.mark.parametrize("layout", ["old", "new"])
def test_matconvnet_full_mat_classifies_like_reference(dev, small, tmp_path, layout):
    convs, fcs, rgb, mean_image = small
    classes = [f"synthetic class {i}, thing {i}" for i in range(10)]
    mean = mean_image if layout == "old" else mean_image.mean(axis=(0, 1)).reshape(1, 1, 3)
    path = tmp_path / f"{layout}.mat"
    write_matconvnet(path, convs, fcs, mean, classes, layout)
    vgg = vgg19(weights=path, device=dev, **SMALL)
    mean_rgb = mean_image.astype(numpy.float64).mean(axis=(0, 1))
    assert numpy.allclose(vgg.mean_rgb, mean_rgb, atol=1e-4)
    assert vgg.class_names == classes
    w6 = fcs[0][0].reshape(2, 2, 8, -1)
    ref = mat_reference(rgb, convs, w6, fcs, mean_rgb)
    check_outputs(vgg, rgb, ref, ["conv1_1", "relu4_4", "fc6", "fc7", "fc8", "prob"])
    top = vgg.classify(rgb, top_k=2)
    assert [t[1] for t in top] == [classes[i] for i in numpy.argsort(-ref["prob"])[:2]]


def test_avg_pooling_matches_reference(small, tmp_path):
    convs, _, rgb, _ = small
    path = tmp_path / "notop.h5"
    write_keras_h5(path, convs)
    vgg = vgg19(weights=path, pooling="avg", **SMALL)
    ref = ref_forward(rgb[..., ::-1].astype(numpy.float64) - KERAS_BGR_MEAN, convs, pool="avg")
    check_outputs(vgg, rgb, ref, ["pool1", "relu5_4", "pool5"])


# ---------------------------------------------------------------- errors
def test_conv_only_file_with_include_top_is_a_clear_error(small, tmp_path):
    convs, fcs, _, _ = small
    path = tmp_path / "notop.h5"
    write_keras_h5(path, convs)
    assert not vgg19(weights=path, **SMALL).include_top
    with pytest.raises(XnnError, match=r"no fc6/fc7/fc8.*vgg19_weights_tf_dim_ordering_tf_kernels\.h5"):
        vgg19(weights=path, include_top=True, **SMALL)


@pytest.mark.parametrize("fmt", ["h5", "mat"])
def test_wrong_shape_names_layer_and_shapes(small, tmp_path, fmt):
    convs, fcs, _, mean_image = small
    path = tmp_path / f"bad.{fmt}"
    if fmt == "h5":
        write_keras_h5(path, convs, fcs, bad_shape="block3_conv2")
        pattern = r"conv3_2 \(block3_conv2\).*\(3, 3, 8, 7\).*expects \(3, 3, 8, 8\)"
    else:
        write_matconvnet(path, convs, fcs, mean_image, ["c"] * 10, bad_shape="fc6")
        pattern = r"fc6.*\(2, 2, 8, 15\).*expects \(2, 2, 8, 16\)"
    with pytest.raises(XnnError, match=pattern):
        vgg19(weights=path, **SMALL)
    # the official architecture does not fit the small file either
    with pytest.raises(XnnError, match="conv1_1.*expects"):
        vgg19(weights=path)


@pytest.mark.parametrize("fmt", ["h5", "mat"])
def test_missing_layer_is_named(small, tmp_path, fmt):
    convs, fcs, _, mean_image = small
    path = tmp_path / f"missing.{fmt}"
    if fmt == "h5":
        write_keras_h5(path, convs, fcs, skip=("block4_conv3",))
        pattern = r"conv4_3 \(block4_conv3\) is missing"
    else:
        write_matconvnet(path, convs, fcs, mean_image, ["c"] * 10, skip=("fc7",))
        pattern = "fc7 is missing"
    with pytest.raises(XnnError, match=pattern):
        vgg19(weights=path, **SMALL)


@pytest.mark.parametrize("fmt", ["h5", "mat", "npz"])
def test_truncated_file_names_the_path(small, tmp_path, fmt):
    convs, fcs, _, mean_image = small
    path = tmp_path / f"trunc.{fmt}"
    if fmt == "h5":
        write_keras_h5(path, convs, fcs)
    elif fmt == "mat":
        write_matconvnet(path, convs, fcs, mean_image, ["c"] * 10)
    else:
        vgg19(weights=None, **SMALL).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(XnnError, match="truncated or corrupt") as e:
        vgg19(weights=path, **SMALL)
    assert str(path) in str(e.value)


def test_known_file_with_wrong_checksum(small, tmp_path):
    convs, fcs, _, _ = small
    path = tmp_path / "vgg19_weights_tf_dim_ordering_tf_kernels.h5"
    write_keras_h5(path, convs, fcs)
    with pytest.raises(XnnError, match="checksum mismatch.*re-download"):
        vgg19(weights=path, **SMALL)


# ---------------------------------------------------------------- npz
def test_npz_round_trip(dev, small, tmp_path):
    convs, fcs, rgb, mean_image = small
    classes = [f"k{i}" for i in range(10)]
    write_matconvnet(tmp_path / "w.mat", convs, fcs, mean_image, classes)
    vgg = vgg19(weights=tmp_path / "w.mat", device=dev, **SMALL)
    vgg.save(tmp_path / "w.npz")
    assert sorted(os.listdir(tmp_path)) == ["w.mat", "w.npz"]        # no temporary left behind
    again = vgg19(weights=str(tmp_path / "w.npz"), device=dev, **SMALL)
    assert again.include_top and again.class_names == classes
    assert numpy.array_equal(again.mean_rgb, vgg.mean_rgb)
    x = vgg.preprocess(rgb)
    assert numpy.array_equal(xnn.to_numpy(again.predict(x)), xnn.to_numpy(vgg.predict(x)))
    # a plain Sequential.save file (no metadata) of the conv part loads too
    conv_only = vgg19(weights=tmp_path / "w.mat", include_top=False, **SMALL)
    conv_only.net.save(tmp_path / "seq.npz")
    loaded = vgg19(weights=tmp_path / "seq.npz", **SMALL)
    assert not loaded.include_top
    assert numpy.allclose(loaded.mean_rgb, [123.68, 116.779, 103.939])
    f1 = conv_only.features(conv_only.preprocess(rgb), "pool5")["pool5"]
    f2 = loaded.features(conv_only.preprocess(rgb), "pool5")["pool5"]
    assert numpy.array_equal(f1, f2)
    with pytest.raises(XnnError, match="no fc6/fc7/fc8"):
        vgg19(weights=tmp_path / "seq.npz", include_top=True, **SMALL)
