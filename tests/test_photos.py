"""Training photos from a folder (xnn.data.photos): crops, flips, held-out previews, bad files skipped."""
import numpy
import pytest
from PIL import Image

from xnn.data.photos import PhotoFolder
from xnn.errors import XnnError


def folder_with(tmp_path, good=5, bad=True):
    rng = numpy.random.default_rng(0)
    for i in range(good):
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 60, 3), dtype=numpy.uint8)).save(tmp_path / f"p{i}.png")
    if bad:
        (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        (tmp_path / "notes.txt").write_text("not a photo")                  # not an image suffix: never listed
        full = (tmp_path / "p0.png").read_bytes()
        (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    return tmp_path


def test_batches_crops_hold_out_and_skips(tmp_path):
    photos = PhotoFolder(folder_with(tmp_path), hold_out=2)
    assert [f.name for f in photos.held_out] == ["p0.png", "p1.png"]          # the first two readable ones
    assert [len(i) for i in photos.held_out_images] == [40, 48]
    assert len(photos) == 4 and photos.skipped[0].startswith("broken.jpg: ")   # p2..p4 and truncated.png
    rng = numpy.random.default_rng(1)
    for _ in range(10):
        b = photos.batch(3, 32, rng)
        assert b.shape == (3, 32, 32, 3) and b.dtype == numpy.uint8
    assert len(photos) == 3 and len(photos.skipped) == 2 and photos.skipped[1].startswith("truncated.png: ")
    again = PhotoFolder(tmp_path, hold_out=2).batch(3, 32, numpy.random.default_rng(7))
    numpy.testing.assert_array_equal(again, PhotoFolder(tmp_path, hold_out=2).batch(3, 32, numpy.random.default_rng(7)))


def test_crops_cover_scales_and_flips(tmp_path):
    img = numpy.zeros((40, 80, 3), numpy.uint8)
    img[:, :40] = 255                                           # white left half, black right half
    Image.fromarray(img).save(tmp_path / "a.png")
    photos = PhotoFolder(tmp_path, min_scale=1.0)               # the whole height: a 40 px square
    rng = numpy.random.default_rng(3)
    crops = [photos.crop(img, 40, rng) for _ in range(40)]
    # a 40 px square of a 40 x 80 image, placed at random: the white share varies; mirrored or not
    shares = {round(float((c[:, :, 0] > 127).mean()), 1) for c in crops}
    assert len(shares) > 3
    assert any(c[0, 0, 0] > 127 for c in crops) and any(c[0, -1, 0] > 127 and c[0, 0, 0] < 127 for c in crops)


def test_empty_unreadable_and_missing_folders_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(XnnError, match=r"has 0 image file\(s\)"):
        PhotoFolder(tmp_path / "empty")
    with pytest.raises(XnnError, match="is not a folder of photos"):
        PhotoFolder(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"junk")
    (bad / "y.png").write_bytes(b"junk too")
    photos = PhotoFolder(bad)
    with pytest.raises(XnnError, match=r"none of its image files can be read \(2 skipped; the first: "):
        photos.batch(1, 16, numpy.random.default_rng(0))
