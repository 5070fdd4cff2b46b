"""AdaIN: Upsample2d, the AdaIN op and layer, reflection padding, the real encoder /
decoder against an independent float64 NumPy forward, and the stylizer."""
import numpy
import pytest
from numpy.lib.stride_tricks import sliding_window_view

import xnn
from xnn.errors import XnnError
from xnn.layers import Conv2d, ReflectionPad2d
from xnn.layers.adain import AdaIN, adain, adain_mix, channel_stats
from xnn.layers.upsample import Upsample2d
from xnn.models.adain import AdaINStylizer, adain_decoder, adain_encoder, load_adain_weights

from .conftest import xnn_home, weights_path
from .gradcheck import check_layer, rel_error

ENC, DEC = "adain_vgg_normalised_to_relu4_1.npz", "adain_decoder.npz"


# ------------------------------------------------------------ independent references
def np_adain(c, s, eps=1e-5):
    """AdaIN written from the paper with numpy.var(ddof=1), float64."""
    c, s = numpy.asarray(c, numpy.float64), numpy.asarray(s, numpy.float64)
    mc, ms = c.mean(axis=(2, 3), keepdims=True), s.mean(axis=(2, 3), keepdims=True)
    sc = numpy.sqrt(c.var(axis=(2, 3), ddof=1, keepdims=True) + eps)
    ss = numpy.sqrt(s.var(axis=(2, 3), ddof=1, keepdims=True) + eps)
    return ss * (c - mc) / sc + ms


def np_conv(x, w, b, reflect=True):
    """Cross-correlation of one (C, H, W) image, 'same' size, numpy reflect padding."""
    k = w.shape[2]
    if k > 1:
        x = numpy.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2)), mode="reflect" if reflect else "constant")
    win = sliding_window_view(x, (k, k), axis=(1, 2))            # (C, H, W, k, k)
    return numpy.einsum("chwab,ocab->ohw", win, w, optimize=True) + b[:, None, None]


def np_maxpool_ceil(x):
    """2x2 / 2 max pool, ceil mode: pad odd sides with -inf, then reshape and max."""
    c, h, w = x.shape
    xp = numpy.full((c, h + h % 2, w + w % 2), -numpy.inf)
    xp[:, :h, :w] = x
    return xp.reshape(c, xp.shape[1] // 2, 2, xp.shape[2] // 2, 2).max(axis=(2, 4))


def np_encoder(params, rgb):
    """relu4_1 of an RGB (3, H, W) image in [0, 1], float64."""
    x = np_conv(rgb, params["preprocess.weight"], params["preprocess.bias"])
    for item in ["conv1_1", "conv1_2", "P", "conv2_1", "conv2_2", "P",
                 "conv3_1", "conv3_2", "conv3_3", "conv3_4", "P", "conv4_1"]:
        if item == "P":
            x = np_maxpool_ceil(x)
        else:
            x = numpy.maximum(np_conv(x, params[item + ".weight"], params[item + ".bias"]), 0)
    return x


def np_decoder(params, f):
    x = f
    for item in ["dec4_1", "U", "dec3_4", "dec3_3", "dec3_2", "dec3_1", "U", "dec2_2", "dec2_1",
                 "U", "dec1_2", "dec1_1"]:
        if item == "U":
            x = numpy.repeat(numpy.repeat(x, 2, axis=1), 2, axis=2)
        else:
            x = np_conv(x, params[item + ".weight"], params[item + ".bias"])
            if item != "dec1_1":
                x = numpy.maximum(x, 0)
    return x


def load_npz(path):
    with numpy.load(path) as d:
        return {k: d[k].astype(numpy.float64) for k in d.files}


def image(name, longer=None):
    from PIL import Image
    im = Image.open(xnn_home() / "images" / name).convert("RGB")
    if longer:
        s = longer / max(im.size)
        im = im.resize((max(1, round(im.size[0] * s)), max(1, round(im.size[1] * s))), Image.BILINEAR)
    return numpy.asarray(im)


def images_or_skip(*names):
    for n in names:
        if not (xnn_home() / "images" / n).exists():
            pytest.skip(f"image {n} not present under $XNN_HOME/images")


# ------------------------------------------------------------ Upsample2d
def test_upsample_forward_matches_repeat(dev, rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(numpy.float32)
    for s in (1, 2, 3):
        y = xnn.to_numpy(Upsample2d(s, device=dev).forward(dev.asarray(x)))
        assert numpy.array_equal(y, numpy.repeat(numpy.repeat(x, s, axis=2), s, axis=3))


def test_upsample_refusals():
    with pytest.raises(ValueError, match=r"^Upsample2d expects \(N, C, H, W\) input, got \(3, 4, 5\)$"):
        Upsample2d(2).forward(numpy.ones((3, 4, 5)))
    for bad in (0, 1.5, -2):
        with pytest.raises(ValueError, match=rf"^Upsample2d scale must be a positive integer, got {bad!r}$"):
            Upsample2d(bad)
    assert Upsample2d(2.0).scale == 2 and isinstance(Upsample2d(2.0).scale, int)
    assert Upsample2d().scale == 2                                  # the default


@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_gradcheck(dev, rng, scale):
    check_layer(Upsample2d(scale), rng.standard_normal((2, 3, 3, 4)), dev)


def test_upsample_backward_sums_blocks(dev, rng):
    dy = rng.standard_normal((1, 2, 4, 6))
    dx = xnn.to_numpy(Upsample2d(2, device=dev).to(dev, numpy.float64).backward(dev.asarray(dy)))
    expect = numpy.zeros((1, 2, 2, 3))
    for i in range(4):
        for j in range(6):
            expect[:, :, i // 2, j // 2] += dy[:, :, i, j]
    assert rel_error(dx, expect) < 1e-12


# ------------------------------------------------------------ AdaIN op and layer
def test_adain_op_matches_numpy(dev, rng):
    c = rng.standard_normal((2, 5, 6, 7)) * 3 + 1
    s = rng.gamma(2.0, size=(1, 5, 4, 9))  # one style for the batch, another size
    got = xnn.to_numpy(adain(dev.asarray(c), dev.asarray(s)))
    assert rel_error(got, np_adain(c, s)) < 1e-12
    # the output carries the style's per-channel mean and (unbiased, eps) std
    assert numpy.allclose(got.mean(axis=(2, 3)), numpy.broadcast_to(s.mean(axis=(2, 3)), (2, 5)))
    # float32 input stays float32
    assert adain(dev.asarray(c.astype(numpy.float32)), dev.asarray(s.astype(numpy.float32))).dtype == numpy.float32


def test_channel_stats_uses_unbiased_variance(dev, rng):
    x = rng.standard_normal((1, 2, 3, 3))
    mean, std = (xnn.to_numpy(a) for a in channel_stats(dev.asarray(x), eps=0.0))
    assert numpy.allclose(std[0, :, 0, 0], x.reshape(2, 9).std(axis=1, ddof=1))
    assert numpy.allclose(mean[0, :, 0, 0], x.reshape(2, 9).mean(axis=1))
    with pytest.raises(ValueError, match="2 pixels"):
        channel_stats(dev.asarray(x[:, :, :1, :1]))


def test_adain_mix_interpolates_outputs(dev, rng):
    c = rng.standard_normal((1, 4, 5, 5))
    s1, s2 = rng.standard_normal((1, 4, 6, 6)) * 2, rng.gamma(1.5, size=(1, 4, 3, 8))
    w, alpha = (0.3, 0.7), 0.6
    expect = alpha * (w[0] * np_adain(c, s1) + w[1] * np_adain(c, s2)) + (1 - alpha) * c
    got = adain_mix(dev.asarray(c), [dev.asarray(s1), dev.asarray(s2)], w, alpha)
    assert rel_error(xnn.to_numpy(got), expect) < 1e-12


def test_adain_eps_and_mix_defaults(dev, rng):
    """eps reaches both the content and the style statistics; adain_mix takes one array or a list,
    and its defaults (equal weights, alpha 1) give plain AdaIN."""
    c = rng.standard_normal((1, 3, 4, 4)) * 0.3
    s = rng.standard_normal((1, 3, 5, 3)) * 0.2 + 1
    C, S = dev.asarray(c), dev.asarray(s)
    for eps in (0.5, 1e-5):
        assert rel_error(xnn.to_numpy(adain(C, S, eps=eps)), np_adain(c, s, eps)) < 1e-12
        assert rel_error(xnn.to_numpy(adain_mix(C, S, eps=eps)), np_adain(c, s, eps)) < 1e-12
        assert rel_error(xnn.to_numpy(adain_mix(C, [S, S], eps=eps)), np_adain(c, s, eps)) < 1e-12
    assert rel_error(np_adain(c, s, 0.5), np_adain(c, s, 1e-5)) > 1e-2       # eps matters here


def test_adain_layer_with_given_statistics_and_eps(dev, rng):
    """set_style_stats is set_style with the statistics computed elsewhere; the layer's eps is used."""
    c, s = rng.standard_normal((2, 3, 4, 5)) * 0.3, rng.standard_normal((1, 3, 5, 5)) * 0.2 - 1
    mean = s.mean(axis=(2, 3), keepdims=True)
    std = numpy.sqrt(s.var(axis=(2, 3), ddof=1, keepdims=True) + 0.25)
    layer = AdaIN(eps=0.25, device=dev).set_style_stats(dev.asarray(mean), dev.asarray(std))
    assert layer.mean_t is not None and layer.std_t is not None
    assert rel_error(xnn.to_numpy(layer.forward(dev.asarray(c))), np_adain(c, s, 0.25)) < 1e-12
    same = AdaIN(eps=0.25, device=dev).set_style(dev.asarray(s))
    assert rel_error(xnn.to_numpy(same.forward(dev.asarray(c))), np_adain(c, s, 0.25)) < 1e-12


def test_adain_layer_refuses_statistics_of_another_device():
    standin, mean, std = xnn.device("standin"), numpy.zeros((1, 2, 1, 1)), numpy.ones((1, 2, 1, 1))
    with pytest.raises(xnn.DeviceMismatchError, match="^style mean is a "):
        AdaIN().set_style_stats(standin.asarray(mean), std)
    with pytest.raises(xnn.DeviceMismatchError, match="^style std is a "):
        AdaIN().set_style_stats(mean, standin.asarray(std))
    with pytest.raises(xnn.DeviceMismatchError, match="^style features is a "):
        AdaIN().set_style([numpy.ones((1, 2, 3, 3)), standin.asarray(numpy.ones((1, 2, 3, 3)))])


def test_adain_layer_moves_and_casts_its_style_statistics(rng):
    """to(device, dtype) carries the style statistics along: on the new device, in the new dtype,
    unchanged dtype when none is given; weights of a list of styles are honoured."""
    c = rng.standard_normal((1, 3, 4, 5))
    s1, s2 = rng.standard_normal((1, 3, 5, 5)), rng.standard_normal((1, 3, 4, 4)) * 3 + 2
    want = 0.2 * np_adain(c, s1) + 0.8 * np_adain(c, s2)
    standin = xnn.device("standin")
    layer = AdaIN().set_style([s1.astype(numpy.float32), s2.astype(numpy.float32)], [1, 4])
    assert layer.to(standin) is layer and layer.device is standin
    assert standin.owns(layer.mean_t) and standin.owns(layer.std_t)
    assert layer.mean_t.dtype == numpy.float32 and layer.std_t.dtype == numpy.float32
    y = layer.forward(standin.asarray(c.astype(numpy.float32)))
    assert y.dtype == numpy.float32 and rel_error(xnn.to_numpy(y), want) < 1e-5
    layer.to("cpu", numpy.float64)
    assert layer.device is xnn.device("cpu") and layer.mean_t.dtype == numpy.float64
    assert isinstance(layer.std_t, numpy.ndarray) and layer.std_t.dtype == numpy.float64
    assert rel_error(layer.forward(c), want) < 1e-6      # float32 statistics, float64 features
    with pytest.raises(ValueError, match=r"^AdaIN style has 3 channels, input 2$"):
        layer.forward(c[:, :2])
    with pytest.raises(ValueError, match=r"^AdaIN has no style: call set_style\(\.\.\.\) or "
                                         r"set_style_stats\(\.\.\.\) first$"):
        AdaIN().forward(c)
    assert AdaIN(device=standin).device is standin
    down = AdaIN().set_style(s1).to("cpu", numpy.float32)                 # float64 statistics cast down
    assert down.mean_t.dtype == numpy.float32 and down.std_t.dtype == numpy.float32


def test_adain_helpers_defaults_extrapolation_and_refusals(rng):
    """The public helpers' defaults (eps 1e-5, alpha 1), alpha outside [0, 1], clear refusals."""
    from xnn.layers.adain import adain_with_stats, blend_stats, normalised, restyle
    c, s = rng.standard_normal((1, 2, 3, 4)) * 0.01, rng.standard_normal((1, 2, 4, 3)) * 0.01 + 1
    mean, std = channel_stats(s)
    assert rel_error(xnn.to_numpy(std), numpy.sqrt(s.var(axis=(2, 3), ddof=1, keepdims=True) + 1e-5)) < 1e-12
    xhat, inv_std = normalised(c)
    sc = numpy.sqrt(c.var(axis=(2, 3), ddof=1, keepdims=True) + 1e-5)
    assert rel_error(inv_std, 1 / sc) < 1e-12
    assert rel_error(adain_with_stats(c, mean, std), np_adain(c, s)) < 1e-12
    assert rel_error(restyle(xhat, c, mean, std), np_adain(c, s)) < 1e-12
    assert rel_error(restyle(xhat, c, mean, std, 2.0), 2 * np_adain(c, s) - c) < 1e-12
    assert rel_error(adain_mix(c, s, alpha=2.0), 2 * np_adain(c, s) - c) < 1e-12
    with pytest.raises(ValueError, match=r"^AdaIN expects \(N, C, H, W\) features, got \(2, 3, 4\)$"):
        channel_stats(c[0])
    with pytest.raises(ValueError, match=r"^AdaIN needs at least 2 pixels per channel for an unbiased "
                                         r"variance, got 1x1$"):
        channel_stats(c[:, :, :1, :1])
    assert channel_stats(c[:, :, :1, :2])[1].shape == (1, 2, 1, 1)        # 2 pixels are enough
    with pytest.raises(ValueError, match=r"^AdaIN needs at least 2 pixels .*, got 1x1$"):
        channel_stats(numpy.ones((1, 2, 1, 1)))
    with pytest.raises(ValueError, match="^need at least one style$"):
        blend_stats([])
    with pytest.raises(ValueError, match=r"^content has 2 channels, style 3$"):
        adain_with_stats(numpy.ones((1, 2, 5, 4)), numpy.ones((1, 3, 1, 1)), numpy.ones((1, 3, 1, 1)))


def test_adain_layer_forward(dev, rng):
    c, s1, s2 = (rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((1, 3, 5, 5)),
                 rng.standard_normal((1, 3, 4, 4)) + 2)
    layer = AdaIN(alpha=0.25, device=dev).set_style([dev.asarray(s1), dev.asarray(s2)], [0.5, 0.5])
    expect = 0.25 * (0.5 * np_adain(c, s1) + 0.5 * np_adain(c, s2)) + 0.75 * c
    assert rel_error(xnn.to_numpy(layer.forward(dev.asarray(c))), expect) < 1e-12
    with pytest.raises(ValueError, match="no style"):
        AdaIN(device=dev).forward(dev.asarray(c))


@pytest.mark.parametrize("alpha", [1.0, 0.6, 2.0])
def test_adain_layer_gradcheck(dev, rng, alpha):
    style = rng.standard_normal((1, 3, 6, 5)) * 2 + 1   # host float64, moved along with the layer
    layer = AdaIN(alpha=alpha).set_style(xnn.device("cpu").asarray(style))
    check_layer(layer, rng.standard_normal((2, 3, 4, 5)), dev)


def test_adain_layer_gradcheck_mixed_styles(dev, rng):
    s1, s2 = rng.standard_normal((1, 2, 4, 4)), rng.gamma(2.0, size=(1, 2, 5, 3))
    layer = AdaIN().set_style([s1, s2], [0.2, 0.8])
    check_layer(layer, rng.standard_normal((1, 2, 3, 4)) * 3, dev)


# ------------------------------------------------------------ reflection padding
def test_reflection_pad_forward_and_gradcheck(dev, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    for p in (1, 2, 3):
        y = xnn.to_numpy(ReflectionPad2d(p, device=dev).to(dev, numpy.float64).forward(dev.asarray(x)))
        assert numpy.array_equal(y, numpy.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), mode="reflect"))
        check_layer(ReflectionPad2d(p), x, dev)


@pytest.mark.parametrize("p", [1, 2])
def test_conv_reflect_forward_and_gradcheck(dev, rng, p):
    x = rng.standard_normal((2, 3, 5, 6))
    conv = Conv2d(3, 4, 2 * p + 1, padding=p, padding_mode="reflect", seed=3)
    check_layer(conv, x, dev)
    w, b = (xnn.to_numpy(conv.params[k]) for k in ("W", "b"))
    got = xnn.to_numpy(conv.forward(dev.asarray(x)))
    expect = numpy.stack([np_conv(xi, w, b + 0.0) for xi in x])
    assert rel_error(got, expect) < 1e-12


# ------------------------------------------------------------ real weights
def test_encoder_decoder_layout_and_load():
    weights_path(ENC), weights_path(DEC)
    enc, dec = adain_encoder(), adain_decoder()
    assert enc.names[:4] == ["preprocess", "conv1_1", "relu1_1", "conv1_2"]
    assert enc.names[-3:] == ["pool3", "conv4_1", "relu4_1"]
    assert dec.names[:3] == ["dec4_1", "relu_dec4_1", "up3"] and dec.names[-1] == "dec1_1"
    assert enc["conv4_1"].params["W"].shape == (512, 256, 3, 3) and enc["conv4_1"].frozen
    ref = load_npz(weights_path(DEC))
    assert numpy.array_equal(xnn.to_numpy(dec["dec2_1"].params["b"]), ref["dec2_1.bias"].astype(numpy.float32))
    assert adain_decoder(weights=None).layers["dec1_1"].frozen is False


def test_weight_file_errors(tmp_path):
    with pytest.raises(XnnError, match="not found"):
        adain_encoder(weights=tmp_path / "nope.npz")
    bad = dict(load_npz(weights_path(DEC)))
    bad["dec3_2.weight"] = bad["dec3_2.weight"][:, :128]
    numpy.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(XnnError, match=r"dec3_2 weight has shape \(256, 128, 3, 3\).*\(256, 256, 3, 3\)"):
        adain_decoder(weights=tmp_path / "bad.npz")
    with pytest.raises(XnnError, match="not an AdaIN encoder: it lacks preprocess.weight"):
        adain_encoder(weights=weights_path(DEC))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(XnnError, match="cannot read"):
        load_adain_weights(adain_decoder(weights=None), tmp_path / "junk.npz", "decoder")
    (tmp_path / "cut.npz").write_bytes(weights_path(DEC).read_bytes()[:100000])
    with pytest.raises(XnnError, match="cannot read"):
        adain_decoder(weights=tmp_path / "cut.npz")


def test_missing_weights_raise_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("XNN_HOME", str(tmp_path))
    with pytest.raises(XnnError, match="adain_decoder.npz is missing"):
        adain_decoder()


def test_encoder_and_decoder_match_numpy_float64(dev):
    images_or_skip("chelsea.png")
    enc_p, dec_p = load_npz(weights_path(ENC)), load_npz(weights_path(DEC))
    crop = image("chelsea.png")[100:119, 180:205]            # 19x25: odd sizes use the ceil pools
    rgb = crop.transpose(2, 0, 1) / 255.0
    ref_f = np_encoder(enc_p, rgb)
    assert ref_f.shape == (512, 3, 4)
    enc, dec = adain_encoder(device=dev), adain_decoder(device=dev)
    f = enc.forward(dev.asarray(rgb[None].astype(numpy.float32)))
    assert rel_error(xnn.to_numpy(f)[0], ref_f) < 1e-4
    # decoder from the reference features: (512, 3, 4) -> (3, 24, 32)
    ref_out = np_decoder(dec_p, ref_f)
    out = dec.forward(dev.asarray(ref_f[None].astype(numpy.float32)))
    assert out.shape == (1, 3, 24, 32)
    assert rel_error(xnn.to_numpy(out)[0], ref_out) < 1e-4


# ------------------------------------------------------------ stylizer
@pytest.fixture(scope="module")
def stylizer():
    weights_path(ENC), weights_path(DEC)
    return AdaINStylizer(device="cpu")


def _corr(a, b):
    return float(numpy.corrcoef(a.ravel(), b.ravel())[0, 1])


def test_stylize_shapes_range_alpha_and_weights(stylizer):
    images_or_skip("chelsea.png", "starry_night.jpg", "the_scream.jpg")
    content = image("chelsea.png")[80:125, 150:211]          # 45x61, not multiples of 8
    starry, scream = image("starry_night.jpg", 64), image("the_scream.jpg", 64)
    styled = stylizer.stylize(content, starry)
    assert styled.shape == content.shape and styled.dtype == numpy.float32
    assert styled.min() >= 0 and styled.max() <= 1
    c01 = content / 255.0
    recon = stylizer.stylize(content, starry, alpha=0.0)
    assert _corr(recon, c01) > 0.75 and _corr(recon, c01) > _corr(styled, c01) + 0.1
    # a cached style equals the image; weights (1, 0) equal the first style alone
    cached = stylizer.encode_style(starry)
    assert numpy.array_equal(stylizer.stylize(content, cached), styled)
    mixed = stylizer.stylize(content, (starry, scream), weights=(1, 0))
    assert numpy.abs(mixed - styled).max() < 1e-5
    other = stylizer.stylize(content, [cached, scream], weights=[0, 3])
    assert numpy.abs(other - stylizer.stylize(content, scream)).max() < 1e-5
    assert numpy.abs(other - styled).mean() > 0.02
    # float input in [0, 1] is the same image as uint8
    assert numpy.abs(stylizer.stylize(c01, cached) - styled).max() < 1e-5


def test_stylize_bad_inputs(stylizer):
    img = numpy.zeros((20, 20, 3), numpy.uint8)
    with pytest.raises(XnnError, match="at least 9x9"):
        stylizer.stylize(numpy.zeros((8, 30, 3), numpy.uint8), img)
    with pytest.raises(XnnError, match="HxWx3"):
        stylizer.stylize(numpy.zeros((20, 20, 2)), img)
    with pytest.raises(XnnError, match="alpha"):
        stylizer.stylize(img, img, alpha=1.5)
    with pytest.raises(XnnError, match="weight"):
        stylizer.stylize(img, [img, img], weights=[1])


def test_adain_with_given_content_statistics(rng):
    """content_stats=(mean, std) normalises the content with those instead of its own (a video's
    smoothed statistics); its own statistics give plain AdaIN."""
    from xnn.layers.adain import adain_with_stats
    c = rng.standard_normal((2, 3, 5, 4))
    mt, st = rng.random((1, 3, 1, 1)), rng.random((1, 3, 1, 1)) + 0.5
    assert rel_error(adain_with_stats(c, mt, st, content_stats=channel_stats(c)), adain_with_stats(c, mt, st)) < 1e-12
    mc, sc = rng.random((2, 3, 1, 1)), rng.random((2, 3, 1, 1)) + 0.5
    assert rel_error(adain_with_stats(c, mt, st, content_stats=(mc, sc)), st * (c - mc) / sc + mt) < 1e-12
    assert rel_error(adain_with_stats(c, mt, st, alpha=0.6, content_stats=(mc, sc)),
                     0.6 * (st * (c - mc) / sc + mt) + 0.4 * c) < 1e-12
