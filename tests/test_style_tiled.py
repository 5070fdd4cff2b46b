"""Tiled style-transfer evaluation equals the whole-image one: losses and gradient."""
import numpy
import pytest

import xnn
from xnn import tiling
from xnn.models import vgg19
from xnn.style import StyleTransferObjective
from xnn.style import memory
from xnn.style.tiled import TiledStyleObjective

from .gradcheck import rel_error


def test_receptive_field_of_vgg19_to_relu5_1():
    vgg = vgg19(weights=None, include_top=False, channels=(4, 4, 4, 4, 4))
    layers = [vgg.net.layers[n] for n in vgg.names[:vgg.names.index("relu5_1") + 1]]
    g = tiling.receptive_field(layers)
    # conv paddings: 2*1 + 2*2 + 4*4 + 4*8 + 1*16; field: 1 + 2*(2+4+16+32+16) + (1+2+4+8)
    assert (g.jump, g.offset, g.field) == (16, 70, 156)
    assert g.halo == 70


def test_plan_covers_the_image_once_with_aligned_origins():
    tiles = tiling.plan(100, 70, tile=32, halo=20, align=8)
    cover = numpy.zeros((100, 70), int)
    for t in tiles:
        y0, y1, x0, x1 = t.own
        cover[y0:y1, x0:x1] += 1
        ey0, ey1, ex0, ex1 = t.extent
        assert ey0 % 8 == 0 and ex0 % 8 == 0 and ey0 == max(0, y0 - 24) and ey1 == min(100, y1 + 24)
    assert (cover == 1).all()


def _setup(dev, dtype, deepest, size, channels=(8, 8, 8, 8, 8)):
    vgg = vgg19(weights=None, device=dev, include_top=False, channels=channels, seed=3)
    vgg.truncate(deepest)
    vgg.net.to(dev, dtype)
    style_layers = [n for n in ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1") if n in vgg.names]
    rng = numpy.random.default_rng(0)

    def image(h, w):
        return dev.asarray(rng.uniform(-100, 100, (1, 3, h, w)).astype(dtype))

    obj = StyleTransferObjective(vgg, ["relu2_2"], style_layers, content_weight=2.0,
                                 style_weight=50.0, tv_weight=0.5)
    content, styles = image(*size), [image(size[0] + 8, size[1] - 4), image(40, 44)]
    return obj, content, styles, image(*size)


@pytest.mark.parametrize("deepest,size,tile", [("relu3_1", (60, 52), 16), ("relu4_1", (100, 90), 32),
                                               ("relu5_1", (176, 120), 48)])
def test_tiled_equals_untiled_in_float64(dev, deepest, size, tile):
    obj, content, styles, x = _setup(dev, numpy.float64, deepest, size)
    tiled = TiledStyleObjective(obj, tile)
    assert len(tiled.tiles(x.shape)) > 1
    obj.set_targets(content, styles, [1, 3])
    tiled.set_targets(content, styles, [1, 3])
    want_losses, want_grad = obj.loss_and_grad(x)
    got_losses, got_grad = tiled.loss_and_grad(x)
    for k in want_losses:
        assert got_losses[k] == pytest.approx(want_losses[k], rel=1e-10), k
    assert rel_error(xnn.to_numpy(got_grad), xnn.to_numpy(want_grad)) < 1e-10
    assert tiled.losses(x) == pytest.approx(want_losses, rel=1e-10)


def test_tiled_equals_untiled_in_float32(dev):
    obj, content, styles, x = _setup(dev, numpy.float32, "relu5_1", (176, 160), channels=(16, 16, 32, 32, 32))
    tile = 64
    tiled = TiledStyleObjective(obj, tile)
    obj.set_targets(content, styles)
    tiled.set_targets(content, styles)
    want_losses, want_grad = obj.loss_and_grad(x)
    got_losses, got_grad = tiled.loss_and_grad(x)
    for k in want_losses:
        assert got_losses[k] == pytest.approx(want_losses[k], rel=1e-4), k
    assert rel_error(xnn.to_numpy(got_grad), xnn.to_numpy(want_grad)) < 1e-4


def test_a_halo_too_small_is_not_exact(dev):
    """The test above can fail: with half the halo the tiles see their borders' padding."""
    obj, content, styles, x = _setup(dev, numpy.float64, "relu4_1", (100, 90))
    tiled = TiledStyleObjective(obj, 32)
    tiled.halo //= 2
    obj.set_targets(content, styles)
    tiled.set_targets(content, styles)
    assert rel_error(xnn.to_numpy(tiled.loss_and_grad(x)[1]), xnn.to_numpy(obj.loss_and_grad(x)[1])) > 1e-6


def test_memory_plan_picks_the_whole_image_or_the_largest_tile_and_names_the_cause():
    gib = 2**30
    assert memory.plan_tiles(512, 512, 10 * gib, "lbfgs-scipy", "auto", 80, 16, "image_size = 512") is None
    t = memory.plan_tiles(4096, 2731, 12 * gib, "adam", "auto", 80, 16, "image_size = 4096")
    assert t % 16 == 0 and 64 <= t < 4096
    assert memory.evaluation_bytes((t + 160) ** 2) + memory.whole_image_bytes(4096 * 2731, "adam") <= 0.9 * 12 * gib
    assert memory.plan_tiles(4096, 2731, 12 * gib, "adam", 512, 80, 16, "image_size = 4096") == 512
    # SciPy's state on the host while a GPU evaluates: the device only holds the whole-image arrays
    assert memory.plan_tiles(4096, 2731, 12 * gib, "host", "auto", 80, 16, "image_size = 4096") >= t
    with pytest.raises(xnn.XnnError, match="image_size = 4096: 4096x2731 px needs about .* untiled .* use a smaller image_size or tile_size: auto"):
        memory.plan_tiles(4096, 2731, 12 * gib, "adam", None, 80, 16, "image_size = 4096")
    with pytest.raises(xnn.XnnError, match="style_scale = 4: 8000x8000 px needs .* use a smaller style_scale"):
        memory.plan_tiles(512, 512, 4 * gib, "adam", None, 80, 16, "image_size = 512",
                          [(8000, 8000, "style_scale = 4", "style_scale")])
    with pytest.raises(xnn.XnnError, match="tile_size = 2048: a tile with its 80 px halo needs"):
        memory.plan_tiles(4096, 2731, 4 * gib, "adam", 2048, 80, 16, "image_size = 4096")
    with pytest.raises(xnn.XnnError, match="image_size = 8192: a 8192x8192 px output needs about .* whole-image arrays .* lbfgs-scipy state"):
        memory.plan_tiles(8192, 8192, 24 * gib, "lbfgs-scipy", "auto", 80, 16, "image_size = 8192")


def test_largest_tile_is_the_one_planner_of_style_and_adain():
    """tiling.largest_tile: the largest aligned side whose run (tile + halo on each side) fits 90 % of
    the free memory beside the fixed bytes; 0 below the smallest tile.  Both planners use it."""
    from xnn import tiling
    from xnn.models.adain import encoder_halo
    from xnn.models.vgg import tile_halo
    from xnn.style import feedforward
    gib = 2**30
    # 0.9 * 4 GiB - 1 GiB = 2.6 GiB over 4200 B/px: an 815 px square run, minus 2 x 80 px halo = 655 -> 640
    assert tiling.largest_tile(4 * gib, gib, 4200, 80, 16) == 640
    assert tiling.largest_tile(4 * gib, gib, 4200, 80, 1) == 655
    assert tiling.largest_tile(gib, 0.89 * gib, 4200, 80, 16) == 0           # not even 64 px fits
    assert tiling.largest_tile(gib, 0.89 * gib, 4200, 80, 16, min_tile=16) == 0
    # the halos come from the layer tables, as the tiled evaluations derive them from the layers
    assert tile_halo(["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1", "relu4_2"]) == 80
    assert encoder_halo() == 32
    # AdaIN's planner: the same function with its own memory model
    h = w = 4096
    free = 4 * gib
    want = tiling.largest_tile(free, feedforward.FIXED_BYTES + feedforward.WHOLE_IMAGE_BYTES_PER_PIXEL * h * w,
                               feedforward.BYTES_PER_PIXEL, 32, 16)
    assert feedforward.tile_for(h, w, "auto", free) == want > 0
