"""AdaIN by tiles equals the whole-image stylisation."""
import numpy
import pytest

from xnn import tiling
from xnn.models import AdaINStylizer, adain_decoder, adain_encoder

from .conftest import REPO, weights_path


def _stylizer(dev, dtype, weights=None):
    enc = adain_encoder(weights=weights and weights[0], device=dev, frozen=True)
    dec = adain_decoder(weights=weights and weights[1], device=dev, frozen=True)
    if dtype != numpy.float32:
        enc.to(dev, dtype)
        dec.to(dev, dtype)
    return AdaINStylizer(enc, dec)


def test_decoder_and_encoder_halos():
    enc = tiling.receptive_field(layer for _, layer in adain_encoder(weights=None))
    dec = tiling.receptive_field(layer for _, layer in adain_decoder(weights=None))
    assert enc.jump == 8 and enc.halo <= 48
    assert dec.jump == tiling.Fraction(1, 8) and 3 <= dec.halo <= 5


# the last two: a tile as large as the image, and larger (one tile, no seams: the whole image)
@pytest.mark.parametrize("size,tile", [((72, 56), 24), ((41, 66), 16), ((48, 64), 64), ((48, 64), 4096)])
def test_tiled_equals_untiled_in_float64(dev, size, tile):
    st = _stylizer(dev, numpy.float64)
    rng = numpy.random.default_rng(0)
    content, style = rng.uniform(0, 1, (*size, 3)), rng.uniform(0, 1, (40, 56, 3))
    want = st.stylize(content, style, alpha=0.8)
    got = st.stylize(content, style, alpha=0.8, tile_size=tile)
    assert got.shape == want.shape == (*size, 3)
    numpy.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.slow
def test_real_weights_tiled_psnr_at_1024(dev):
    if dev.name != "cpu":
        pytest.skip("one backend is enough for this real-size check")
    from PIL import Image
    st = _stylizer(dev, numpy.float32, (weights_path("adain_vgg_normalised_to_relu4_1.npz"),
                                         weights_path("adain_decoder.npz")))
    content = numpy.asarray(Image.open(REPO / "examples" / "chelsea.png").convert("RGB").resize((1024, 680)))
    style = numpy.asarray(Image.open(REPO / "examples" / "starry_night.jpg").convert("RGB").resize((512, 404)))
    stats = st.encode_style(style)
    want = st.stylize(content, stats)
    got = st.stylize(content, stats, tile_size=256)
    psnr = 10 * numpy.log10(1.0 / numpy.mean((got - want) ** 2))
    assert psnr >= 40, psnr
