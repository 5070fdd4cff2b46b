"""AdaIN arbitrary style transfer (Huang & Belongie, ICCV 2017): encoder, decoder, stylizer.

    enc, dec = adain_encoder(device=dev), adain_decoder(device=dev)
    st = AdaINStylizer(enc, dec)
    out = st.stylize(content_hw3, styles=[style_hw3], alpha=1.0)   # float RGB in [0, 1]

Encoder: the "normalised" VGG19 up to relu4_1 with a 1x1 ``preprocess`` conv in front
(RGB in [0, 1] -> mean-subtracted BGR * 255); every 3x3 conv has 1-pixel reflection
padding and a ReLU, pools are 2x2 / 2 in ceil mode.  Decoder: its mirror image, with
nearest x2 upsampling, ending in a conv to RGB without ReLU.  Weights: the AdaIN
authors' release (MIT), as npz in PyTorch layout, keys "<layer>.weight" / "<layer>.bias".
"""
from __future__ import annotations

import os
from typing import NamedTuple

import numpy

from .. import tiling
from ..backends import device as get_device
from ..blend import normalise_blend_weights
from ..data.cache import fetch
from ..errors import XnnError
from ..files import read_npz
from ..layers import Conv2d, MaxPool2d, ReLU
from ..layers.adain import adain_with_stats, blend_stats, channel_stats
from ..layers.upsample import Upsample2d
from ..model import Sequential

ENCODER_FILE = "weights/adain_vgg_normalised_to_relu4_1.npz"
DECODER_FILE = "weights/adain_decoder.npz"

#: (name, in, out) of each 3x3 conv; "pool" / "up" between blocks.
ENCODER_PLAN = [("conv1_1", 3, 64), ("conv1_2", 64, 64), "pool1",
                ("conv2_1", 64, 128), ("conv2_2", 128, 128), "pool2",
                ("conv3_1", 128, 256), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
                ("conv3_4", 256, 256), "pool3", ("conv4_1", 256, 512)]
DECODER_PLAN = [("dec4_1", 512, 256), "up3",
                ("dec3_4", 256, 256), ("dec3_3", 256, 256), ("dec3_2", 256, 256),
                ("dec3_1", 256, 128), "up2", ("dec2_2", 128, 128), ("dec2_1", 128, 64), "up1",
                ("dec1_2", 64, 64), ("dec1_1", 64, 3)]
#: The encoder's total down-sampling factor (three 2x2 pools).
STRIDE = 8
#: where the AdaIN paper's style loss compares statistics
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")


def encoder_halo() -> int:
    """Input pixels an encoder tile needs around its own region (:mod:`xnn.tiling`), from the
    encoder's layer table (ENCODER_PLAN), rounded up to the pooling step STRIDE."""
    conv, pool = tiling.Window((3, 3), (1, 1), 1), tiling.Window((2, 2), (2, 2), 0)
    table = [tiling.Window((1, 1), (1, 1), 0)] + [pool if isinstance(item, str) else conv for item in ENCODER_PLAN]
    return tiling.round_up(tiling.receptive_field(table).halo, STRIDE)


def _conv(cin, cout, k=3):
    return Conv2d(cin, cout, k, padding=k // 2, padding_mode="reflect")


def _build_encoder():
    layers = [("preprocess", _conv(3, 3, 1))]
    for item in ENCODER_PLAN:
        if isinstance(item, str):
            layers.append((item, MaxPool2d(2, 2, ceil_mode=True)))
        else:
            name, cin, cout = item
            layers += [(name, _conv(cin, cout)), ("relu" + name[4:], ReLU())]
    return Sequential(layers)


def _build_decoder():
    layers = []
    for item in DECODER_PLAN:
        if isinstance(item, str):
            layers.append((item, Upsample2d(2)))
        else:
            name, cin, cout = item
            layers.append((name, _conv(cin, cout)))
            if name != "dec1_1":
                layers.append(("relu_" + name, ReLU()))
    return Sequential(layers)


class StyleStats(NamedTuple):
    """A style's relu4_1 statistics, each (1, 512, 1, 1) on the device (see channel_stats)."""
    mean: object
    std: object


def _resolve(weights, relpath):
    if isinstance(weights, str) and weights == "adain":
        return fetch(relpath)
    if not isinstance(weights, (str, os.PathLike)):
        raise XnnError(f"weights must be 'adain', a path to an .npz file or None, got {weights!r}")
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise XnnError(f"AdaIN weights not found: {path} (pass weights='adain' to use "
                       f"$XNN_HOME/{relpath}, or a path to an .npz file)")
    return path


def load_adain_weights(net: Sequential, path, what: str) -> Sequential:
    """Copy "<layer>.weight" (OIHW) / "<layer>.bias" from an npz into the convs of ``net``."""
    state = read_npz(path, f"AdaIN {what} weights")
    convs = [n for n, l in net if isinstance(l, Conv2d)]
    expected = [f"{n}.{s}" for n in convs for s in ("weight", "bias")]
    missing = [k for k in expected if k not in state]
    if missing:
        raise XnnError(f"{path} is not an AdaIN {what}: it lacks {', '.join(missing[:4])}"
                       f"{' ...' if len(missing) > 4 else ''} (keys found: {', '.join(sorted(state)[:6])}"
                       f"{' ...' if len(state) > 6 else ''})")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise XnnError(f"{path} has entries the AdaIN {what} does not use: {', '.join(extra[:4])}; "
                       "is it the other half (encoder vs decoder)?")
    for name in convs:
        layer = net[name]
        for src, dst in (("weight", "W"), ("bias", "b")):
            value, want = state[f"{name}.{src}"], tuple(layer.params[dst].shape)
            if tuple(value.shape) != want:
                raise XnnError(f"{path}: layer {name} {src} has shape {tuple(value.shape)}, "
                               f"the AdaIN {what} expects {want}")
            layer.params[dst] = layer.device.asarray(numpy.asarray(value, dtype=layer.params[dst].dtype))
    return net


def _make(build, weights, relpath, what, device, frozen):
    net = build()
    if device is not None:
        net.to(get_device(device))
    if weights is not None:
        load_adain_weights(net, _resolve(weights, relpath), what)
    if frozen if frozen is not None else weights is not None:
        net.freeze()
    return net


def adain_encoder(weights="adain", device=None, frozen: bool | None = None) -> Sequential:
    """The AdaIN encoder: RGB (N, 3, H, W) in [0, 1] -> relu4_1 (N, 512, ceil(H/8), ceil(W/8)).

    ``weights``: "adain" ($XNN_HOME/weights/adain_vgg_normalised_to_relu4_1.npz), a path
    to such an npz, or None (He-initialised).  Frozen when weights are loaded unless
    ``frozen=False``.  Layers: preprocess, conv1_1, relu1_1, ..., pool3, conv4_1, relu4_1.
    """
    return _make(_build_encoder, weights, ENCODER_FILE, "encoder", device, frozen)


def adain_decoder(weights="adain", device=None, frozen: bool | None = None) -> Sequential:
    """The AdaIN decoder: (N, 512, h, w) -> RGB (N, 3, 8h, 8w), roughly in [0, 1].

    ``weights``: "adain" ($XNN_HOME/weights/adain_decoder.npz), a path, or None.
    Layers: dec4_1, relu_dec4_1, up3, dec3_4, ..., up1, dec1_2, relu_dec1_2, dec1_1.
    """
    return _make(_build_decoder, weights, DECODER_FILE, "decoder", device, frozen)


def check_image_size(h: int, w: int, what: str) -> None:
    """A one-line XnnError when an h x w image is too small for the encoder (relu4_1 needs 2 pixels)."""
    if h <= STRIDE or w <= STRIDE:
        raise XnnError(f"{what} is {h}x{w} px; AdaIN needs at least {STRIDE + 1}x{STRIDE + 1} pixels "
                       "(use a larger size or a less elongated image)")


def pad_to_stride(a):
    """Host images (..., H, W, 3) reflection-padded at the bottom and right to multiples of STRIDE:
    the one padding of the encoder's input, whole or tiled."""
    h, w = a.shape[-3:-1]
    return numpy.pad(a, ((0, 0),) * (a.ndim - 3) + ((0, -h % STRIDE), (0, -w % STRIDE), (0, 0)), mode="reflect")


def _as_float_image(img, what):
    """Host HxWx3 (uint8 0..255 or float 0..1; gray and RGBA accepted) -> float32 HxWx3."""
    a = numpy.asarray(img)
    if a.ndim == 2:
        a = numpy.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise XnnError(f"{what} must be an HxWx3 RGB image array, got shape {a.shape}")
    a = a[:, :, :3]
    check_image_size(a.shape[0], a.shape[1], what)
    if a.dtype == numpy.uint8:
        return a.astype(numpy.float32) / 255
    if not numpy.issubdtype(a.dtype, numpy.floating):
        raise XnnError(f"{what} has dtype {a.dtype}; pass uint8 (0..255) or float (0..1)")
    return a.astype(numpy.float32, copy=False)


class AdaINStylizer:
    """Content image + style image(s) -> stylised image, all host arrays HxWx3.

    Sizes: the encoder divides H and W by 8 (ceil-mode pools), the decoder multiplies
    by 8.  The content is reflection-padded on the bottom and right to a multiple of 8
    before encoding and the decoded image is cropped back, so the output has exactly
    the content's size and its right / bottom edge is decoded from full 8x8 cells
    (cropping an output decoded from a ceil-mode encoding would instead stretch the
    partial last cell over 8 pixels).
    """

    def __init__(self, encoder: Sequential | None = None, decoder: Sequential | None = None,
                 device=None, eps: float = 1e-5):
        dev = None if device is None else get_device(device)
        self.encoder = encoder if encoder is not None else adain_encoder(device=dev)
        self.decoder = decoder if decoder is not None else adain_decoder(device=dev)
        self.eps = eps
        if self.encoder.device is not self.decoder.device:
            raise XnnError(f"encoder is on {self.encoder.device}, decoder on {self.decoder.device}; "
                           "build both for the same device")

    @property
    def device(self):
        return self.encoder.device

    def _encode(self, img, what, pad):
        return self.encode_frames([img], what, pad)

    def encode_frames(self, frames, what: str = "frame", pad: bool = True):
        """relu4_1 features (N, 512, ceil(H/8), ceil(W/8)) of N same-size HxWx3 host images, in one
        batch; ``pad``: reflection-pad them to a multiple of 8 first (as :meth:`stylize` does)."""
        return self.encoder.forward(self.encode_input(frames, what, pad))

    def encode_input(self, frames, what: str = "frame", pad: bool = True):
        """N same-size HxWx3 host images -> the encoder's input (N, 3, H, W) on the device."""
        arrays = [_as_float_image(f, what) for f in frames]
        h, w = arrays[0].shape[:2]
        if any(a.shape[:2] != (h, w) for a in arrays):
            raise XnnError(f"{what}s of one batch must have one size")
        a = numpy.stack(arrays)
        if pad:
            a = pad_to_stride(a)
        a = numpy.ascontiguousarray(a, dtype=self.encoder["preprocess"].params["W"].dtype)
        # one host -> device copy; NCHW view of channels-last memory, as Conv2d likes
        return self.device.asarray(a).transpose(0, 3, 1, 2)

    def decode_frames(self, feats, target, size, alpha: float = 1.0, content_stats=None):
        """Host float32 (N, h, w, 3) in [0, 1]: AdaIN of ``feats`` (from :meth:`encode_frames`) to the
        ``target`` (mean, std), decoded and cropped to ``size`` (h, w).  ``content_stats``: see
        :func:`~xnn.layers.adain.adain_with_stats`."""
        h, w = size
        t = adain_with_stats(feats, target[0], target[1], alpha, self.eps, content_stats)
        out = self.decoder.forward(t)[:, :, :h, :w].clip(0, 1)
        return numpy.ascontiguousarray(self.device.to_numpy(out).transpose(0, 2, 3, 1))

    def encode_style(self, style_img) -> StyleStats:
        """(mean, std) of the style's relu4_1 features, each (1, 512, 1, 1) on the device.

        Cache this to stylise many contents with one style; :meth:`stylize` accepts it
        in place of a style image.
        """
        return StyleStats(*channel_stats(self._encode(style_img, "style image", pad=False), self.eps))

    def style_statistics(self, images, weights=None) -> list:
        """[(mean, std) at each of STYLE_LAYERS] of an image, or the blend of a list of images
        (weights as in :meth:`stylize`), on the device: what :meth:`style_loss` compares with."""
        images = images if isinstance(images, (list, tuple)) else [images]
        per_image = [self._layer_stats(img, "style image") for img in images]
        return [blend_stats([layers[i] for layers in per_image], weights) for i in range(len(STYLE_LAYERS))]

    def style_loss(self, image, target: list) -> float:
        """The AdaIN paper's style loss of an image against :meth:`style_statistics`: the sum over
        STYLE_LAYERS of mean((mu - mu_t)^2) + mean((sigma - sigma_t)^2) over the channels (the
        reference code's MSE form).  How stylised an output is, whatever produced it."""
        return sum(float(((m - mt) ** 2).mean()) + float(((s - st) ** 2).mean())
                   for (m, s), (mt, st) in zip(self._layer_stats(image, "image"), target))

    def _layer_stats(self, img, what):
        feats = self.encoder.features(self.encode_input([img], what, pad=False), STYLE_LAYERS)
        return [channel_stats(feats[n], self.eps) for n in STYLE_LAYERS]

    def stylize(self, content, styles, weights=None, alpha: float = 1.0, tile_size: int | None = None):
        """Stylised content as float32 RGB HxWx3 in [0, 1] (clipped), on the host.

        ``styles``: a style image (HxWx3 host array), the :class:`StyleStats`
        :meth:`encode_style` returns, or a list / tuple of those; ``weights`` (one per style, >= 0) are normalised
        to sum 1 and mix the AdaIN outputs as the reference code does;
        ``alpha`` in [0, 1] blends the result with the content features (1: full style).
        ``tile_size`` (pixels, rounded up to a multiple of 8): encode and decode tile by
        tile with halos, so memory follows the tile, not the image (:meth:`_stylize_tiled`).
        """
        if not 0 <= alpha <= 1:
            raise XnnError(f"alpha must be in [0, 1], got {alpha}")
        if isinstance(styles, StyleStats) or not isinstance(styles, (list, tuple)):
            styles = [styles]
        normalise_blend_weights(weights, len(styles))  # refuse bad weights before encoding anything
        stats = [s if isinstance(s, StyleStats) else self.encode_style(s) for s in styles]
        mean_t, std_t = blend_stats(stats, weights)
        h, w = numpy.shape(content)[:2]
        if tile_size:
            return self._stylize_tiled(content, mean_t, std_t, alpha, int(tile_size))
        c = self._encode(content, "content image", pad=True)
        return self.decode_frames(c, (mean_t, std_t), (h, w), alpha)[0]

    def _stylize_tiled(self, content, mean_t, std_t, alpha, tile_size):
        """The same result as the whole-image path, by tiles (see :mod:`xnn.tiling`).

        1. The padded content is encoded tile by tile (halo: the encoder's receptive-field
           margin, 32 px for relu4_1: :func:`encoder_halo`); each tile's own relu4_1 features go into one
           feature map (1/64 of the pixels x 512 channels, float32: 32 bytes per pixel).
        2. AdaIN over that map: the content statistics are the whole image's.
        3. The decoder runs tile by tile in feature space (halo: its margin, 4 features),
           each tile's own 8x8-pixel cells go to the host output.
        """
        dev, xp = self.device, self.device.xp
        a = _as_float_image(content, "content image")
        h, w = a.shape[:2]
        a = pad_to_stride(a)
        a = a.astype(self.encoder["preprocess"].params["W"].dtype)
        hp, wp = a.shape[:2]
        feats = None
        for t in tiling.plan(hp, wp, tile_size, encoder_halo(), STRIDE):
            rows, cols = t.slices()
            x = dev.asarray(numpy.ascontiguousarray(a[rows, cols]))[None].transpose(0, 3, 1, 2)
            f = self.encoder.forward(x)
            if feats is None:
                feats = xp.empty((1, hp // STRIDE, wp // STRIDE, f.shape[1]), dtype=f.dtype).transpose(0, 3, 1, 2)
            r, c = t.own_features(STRIDE)
            y0, y1, x0, x1 = (v // STRIDE for v in t.own)
            feats[:, :, y0:y1, x0:x1] = f[:, :, r, c]
        target = adain_with_stats(feats, mean_t, std_t, alpha, self.eps)
        del feats
        dec = tiling.receptive_field(layer for _, layer in self.decoder)
        out = None
        for t in tiling.plan(hp // STRIDE, wp // STRIDE, max(1, tile_size // STRIDE), dec.halo, 1):
            rows, cols = t.slices()
            y = self.decoder.forward(target[:, :, rows, cols])
            (y0, y1, x0, x1), (ey0, _, ex0, _) = t.own, t.extent
            own = y[0, :, (y0 - ey0) * STRIDE:(y1 - ey0) * STRIDE, (x0 - ex0) * STRIDE:(x1 - ex0) * STRIDE]
            if out is None:
                out = numpy.empty((hp, wp, 3), y.dtype)
            out[y0 * STRIDE:y1 * STRIDE, x0 * STRIDE:x1 * STRIDE] = dev.to_numpy(own.clip(0, 1)).transpose(1, 2, 0)
        return numpy.ascontiguousarray(out[:h, :w])
