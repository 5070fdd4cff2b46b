"""Feed-forward stylisation, one image or one chunk of frames at a time: the steps both engines run.

Below the experiments and below the engines (:mod:`xnn.engines`): an experiment builds a
:class:`AdaINJob` (the weights, the sized style images, the blend and the config keys the
steps read), an engine runs its steps where it runs them, in this process
(``engine: local``) or in Ray actors (``engine: ray``), and both get the same numbers.

    job = AdaINJob(weights, style_images, blend, cfg)
    step = job.image_step(device)            # loads the model, encodes the styles once
    out, seconds, tile = step(content)       # a sized uint8 HxWx3 content -> float HxWx3 in [0, 1]

:class:`FastStyleJob` (a trained fast style network's model.npz and the config) has the same
surface: ``stylizer(device)``, ``image_step``, ``video_stylizer`` and ``style_score``.
"""
from __future__ import annotations

import dataclasses
import pathlib
import time

from ..errors import XnnError

#: the files of ``weights`` when it names a folder
ENCODER_FILE, DECODER_FILE = "adain_vgg_normalised_to_relu4_1.npz", "adain_decoder.npz"
#: peak memory of one untiled stylisation = FIXED_BYTES + BYTES_PER_PIXEL * pixels: a line through
#: the measured CPU peaks at 1024 px (1.46 GB, 0.70 Mpx) and 2048 px (4.84 GB, 2.79 Mpx)
FIXED_BYTES = 330 * 2**20
BYTES_PER_PIXEL = 1700
#: arrays that span the whole image when tiled: input, output, relu4_1 features and their AdaIN
WHOLE_IMAGE_BYTES_PER_PIXEL = 90
#: tile sides are multiples of this (twice the encoder's pooling step)
TILE_ALIGN = 16


def sized_content(content, cfg, name):
    """A decoded content image resized to the config's image_size and checked for size."""
    from ..data.images import resize_longer_side
    from ..models.adain import check_image_size
    if cfg["image_size"]:
        content = resize_longer_side(content, cfg["image_size"])
    check_image_size(*content.shape[:2], f"content image {name}")
    return content


def output_suffix(name) -> str:
    """A batch output keeps its input's suffix when it is .png / .jpg / .jpeg, else becomes .png."""
    suffix = pathlib.PurePath(name).suffix
    return suffix if suffix.lower() in (".png", ".jpg", ".jpeg") else ".png"


def tile_for(h: int, w: int, tile_size, free_bytes):
    """The tile side for an h x w content (None: the whole image), or an XnnError naming the cause
    (:func:`xnn.tiling.largest_tile` with AdaIN's memory model and the encoder's halo)."""
    from ..models.adain import encoder_halo
    from ..tiling import largest_tile
    if tile_size != "auto":
        return tile_size
    if free_bytes is None or FIXED_BYTES + BYTES_PER_PIXEL * h * w <= 0.9 * free_bytes:
        return None
    whole = WHOLE_IMAGE_BYTES_PER_PIXEL * h * w
    tile = largest_tile(free_bytes, FIXED_BYTES + whole, BYTES_PER_PIXEL, encoder_halo(), TILE_ALIGN)
    if tile == 0:
        raise XnnError(f"image_size: a {h}x{w} px image needs about {whole / 2**30:.1f} GiB for its whole-image "
                       f"arrays alone, more than the {free_bytes / 2**30:.1f} GiB free; use a smaller image_size")
    return tile


def load_styles(cfg) -> list:
    """The config's style images, resized to style_size and checked (uint8 HxWx3 each)."""
    from ..data.images import load_image, resize_longer_side
    from ..models.adain import check_image_size
    style_imgs = [load_image(p) for p in cfg["style_image"]]
    if cfg["style_size"]:
        style_imgs = [resize_longer_side(s, cfg["style_size"]) for s in style_imgs]
    for path, s in zip(cfg["style_image"], style_imgs):
        check_image_size(*s.shape[:2], f"style image {path}")
    return style_imgs


def weight_files(cfg) -> tuple:
    """(encoder, decoder) weights as adain_encoder / adain_decoder take them, checked."""
    if cfg["weights"] == "adain":
        return "adain", "adain"
    folder = pathlib.Path(cfg["weights"])
    enc_w, dec_w = folder / ENCODER_FILE, folder / DECODER_FILE
    for f in (enc_w, dec_w):
        if not f.is_file():
            raise XnnError(f"config: weights = {cfg['weights']!r}: {f} not found (give 'adain' or a folder "
                           f"with {ENCODER_FILE} and {DECODER_FILE})")
    return str(enc_w), str(dec_w)


def build_stylizer(weights, device):
    from ..models import AdaINStylizer, adain_decoder, adain_encoder
    enc_w, dec_w = weights
    return AdaINStylizer(adain_encoder(enc_w, device=device), adain_decoder(dec_w, device=device))


def stylise_content(st, content, target, cfg):
    """(float output image, seconds, tile side) of one sized content image: AdaIN to ``target``
    (blended StyleStats), tiled when cfg's tile_size says so, original colours if asked."""
    from ..data.images import transfer_luminance
    t = time.perf_counter()
    tile = tile_for(*content.shape[:2], cfg["tile_size"], st.device.memory_available()) if cfg["tile_size"] else None
    out = st.stylize(content, target, alpha=cfg["alpha"], tile_size=tile)
    seconds = time.perf_counter() - t
    if cfg["original_colors"]:
        out = transfer_luminance(content / 255.0, out)
    return out, seconds, tile


def video_settings(cfg) -> dict:
    """The keyword arguments of :class:`xnn.video.stylize.VideoStylizer` a config gives."""
    return {"alpha": cfg["alpha"], "temporal": cfg["temporal"], "original_colors": cfg["original_colors"],
            "flow_weight": cfg["flow_weight"], "stats_momentum": cfg["stats_momentum"]}


@dataclasses.dataclass
class AdaINJob:
    """Everything a worker needs to stylise as an experiment asks, and nothing it cannot pickle:
    the weight files, the sized style images (uint8 HxWx3), their blend weights and the config."""
    weights: tuple
    style_images: list
    blend: list | None
    cfg: dict

    def stylizer(self, device):
        """(the AdaIN stylizer on ``device``, the blended StyleStats of the style images)."""
        from ..layers.adain import blend_stats
        from ..models.adain import StyleStats
        st = build_stylizer(self.weights, device)
        return st, StyleStats(*blend_stats([st.encode_style(s) for s in self.style_images], self.blend))

    def image_step(self, device, stylizer=None):
        """A callable: sized content (uint8 HxWx3) -> (float output, seconds, tile side).  ``stylizer``:
        a (stylizer, target) pair already built, to share it."""
        st, target = stylizer or self.stylizer(device)
        return lambda content: stylise_content(st, content, target, self.cfg)

    def video_stylizer(self, device, stylizer=None):
        """A :class:`~xnn.video.stylize.VideoStylizer` with the config's temporal settings."""
        from ..video.stylize import VideoStylizer
        st, target = stylizer or self.stylizer(device)
        return VideoStylizer(st, target, **video_settings(self.cfg))

    def style_score(self, stylizer):
        """A callable: uint8 image -> the AdaIN paper's style loss against the blended styles (the video
        summary's measure of how much style a frame holds)."""
        st = stylizer[0]
        target = st.style_statistics(self.style_images, self.blend)
        return lambda image: st.style_loss(image, target)


#: peak memory of the fast style network on one image: NETWORK_BYTES_PER_PIXEL * width * pixels plus
#: FIXED_BYTES; measured on the CPU (tracemalloc) at width 0.5 and 1, 512 to 2048 px: 1048-1077 and
#: 2069-2100 bytes a pixel (the 9x9 convolutions' columns dominate)
NETWORK_BYTES_PER_PIXEL = 2100


def network_memory_check(h: int, w: int, width: float, free_bytes, what: str) -> None:
    """An XnnError naming the need when one pass of the network over h x w would not fit in
    ``free_bytes`` (None: unknown, no check).  There is no tiling: the network's instance
    normalisations take their statistics over the whole image, so tiles would differ at their seams."""
    need = FIXED_BYTES + NETWORK_BYTES_PER_PIXEL * width * h * w
    if free_bytes is not None and need > 0.9 * free_bytes:
        raise XnnError(f"{what}: {h}x{w} px needs about {need / 2**30:.1f} GiB for one pass of the network, more "
                       f"than the {free_bytes / 2**30:.1f} GiB free; use a smaller image_size")


def stylise_with_network(net, width, content, cfg):
    """(float output image, seconds, None) of one sized content image through a fast style network."""
    from ..data.images import transfer_luminance
    from ..models.fast_style import stylise
    network_memory_check(*content.shape[:2], width, net.device.memory_available(), "image_size")
    t = time.perf_counter()
    out = stylise(net, content)
    seconds = time.perf_counter() - t
    if cfg["original_colors"]:
        out = transfer_luminance(content / 255.0, out)
    return out, seconds, None


@dataclasses.dataclass
class FastStyleJob:
    """A trained fast style network (a model.npz of :mod:`xnn.models.fast_style`) applied as a config
    says: the model file's path and the config, both picklable."""
    model: str
    cfg: dict

    def stylizer(self, device):
        """(the network on ``device``, frozen, its width).  Frozen: its layers keep their prepared
        weights (Winograd's, the FFT's kernel spectra) from one picture to the next instead of
        preparing them for every call, and its convolutions keep no input for a backward."""
        from ..models.fast_style import load_model
        net, width = load_model(self.model, device)
        return net.freeze(), width

    def image_step(self, device, stylizer=None):
        net, width = stylizer or self.stylizer(device)
        return lambda content: stylise_with_network(net, width, content, self.cfg)

    def video_stylizer(self, device, stylizer=None):
        """Frames go through the network in batches; on the CPU each batch is cut into one part per
        worker, run side by side through twins of the network (:class:`xnn.DataParallel`: whole layers
        a core instead of each layer split in bands; 0.77-0.89 of the time a frame for four 512x288
        frames on 2 cores, docs/fast_style.md)."""
        from ..data_parallel import DataParallel, default_parts
        from ..video.stylize import NetworkVideoStylizer
        net, _ = stylizer or self.stylizer(device)
        parts = default_parts(net.device)
        if parts > 1:
            net = DataParallel(net, parts=parts)
        return NetworkVideoStylizer(net, temporal=self.cfg["temporal"], original_colors=self.cfg["original_colors"],
                                    flow_weight=self.cfg["flow_weight"])

    def style_score(self, stylizer):
        """None: a network carries no style target to measure frames against."""
        return None
