"""Data: IDX/MNIST reading, the cache's failure modes, image I/O and image operations.

References are written here from the definitions (the IDX header layout, the FCC
YIQ matrix, alpha compositing, crop offsets), not taken from xnn.data.
"""
import gzip
import os
import struct

import numpy
import pytest
from PIL import Image

from tests.conftest import xnn_home
from xnn.data import cache, images, mnist
from xnn.errors import XnnError

IMAGES = {  # file -> (H, W) from ../shared/data/README.md
    "chelsea.png": (300, 451), "astronaut.png": (512, 512), "coffee.png": (400, 600),
    "starry_night.jpg": (640, 1024), "the_scream.jpg": (1528, 1200),
}


def one_line_error(excinfo, *needles):
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, msg
    return msg


# ----------------------------------------------------------------------------- IDX

def idx_bytes(array, code):
    """An IDX file built from the format's definition."""
    big = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + numpy.asarray(array, dtype=big).tobytes()


@pytest.mark.parametrize("code,dtype", [(0x08, numpy.uint8), (0x09, numpy.int8),
                                        (0x0B, numpy.int16), (0x0C, numpy.int32),
                                        (0x0D, numpy.float32), (0x0E, numpy.float64)])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, rng, code, dtype, compress):
    info = numpy.iinfo(dtype) if numpy.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-1e6, 1e6)
    a = rng.uniform(lo, hi, size=(3, 4, 5)).astype(dtype)
    blob = idx_bytes(a, code)
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    path.write_bytes(gzip.compress(blob) if compress else blob)
    got = mnist.read_idx(path)
    assert got.dtype == numpy.dtype(dtype) and got.dtype.isnative
    assert got.shape == (3, 4, 5) and got.flags.writeable
    numpy.testing.assert_array_equal(got, a)


def test_read_idx_detects_gzip_by_content(tmp_path):
    a = numpy.arange(12, dtype=numpy.uint8).reshape(3, 4)
    (tmp_path / "raw_named.gz").write_bytes(idx_bytes(a, 0x08))
    (tmp_path / "gz_named.idx").write_bytes(gzip.compress(idx_bytes(a, 0x08)))
    numpy.testing.assert_array_equal(mnist.read_idx(tmp_path / "raw_named.gz"), a)
    numpy.testing.assert_array_equal(mnist.read_idx(tmp_path / "gz_named.idx"), a)


def _corrupt_cases():
    good = idx_bytes(numpy.arange(24, dtype=numpy.uint8).reshape(2, 3, 4), 0x08)
    gz = gzip.compress(good + bytes(200))  # long enough that the deflate stream has a middle
    flipped = bytearray(gz)
    flipped[len(gz) // 2] ^= 0xFF
    return {
        "bad_magic": (b"\x01\x00" + good[2:], "magic"),
        "bad_type_code": (good[:2] + b"\x0a" + good[3:], "type code"),
        "truncated_payload": (good[:-5], "truncated"),
        "trailing_bytes": (good + b"\x00\x00\x00", "trailing"),
        "truncated_header": (good[:9], "truncated"),
        "tiny": (b"\x00\x00", "too short"),
        "gzip_flipped_byte": (bytes(flipped), "gzip"),
        "gzip_cut_short": (gz[: len(gz) // 2], "gzip"),
    }


@pytest.mark.parametrize("case", sorted(_corrupt_cases()))
def test_read_idx_rejects_corrupt_files(tmp_path, case):
    blob, what = _corrupt_cases()[case]
    path = tmp_path / f"{case}-idx3-ubyte"
    path.write_bytes(blob)
    with pytest.raises(XnnError) as e:
        mnist.read_idx(path)
    one_line_error(e, path.name, what)


def test_read_idx_missing_file_and_directory(tmp_path):
    with pytest.raises(XnnError) as e:
        mnist.read_idx(tmp_path / "nope-idx1-ubyte.gz")
    one_line_error(e, "nope-idx1-ubyte.gz", "not found")
    with pytest.raises(XnnError) as e:
        mnist.read_idx(tmp_path)
    one_line_error(e, tmp_path.name, "directory")


def test_read_idx_checks_content_md5(tmp_path):
    import hashlib
    blob = idx_bytes(numpy.arange(6, dtype=numpy.uint8), 0x08)
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(blob))
    assert mnist.read_idx(path, md5=hashlib.md5(blob).hexdigest()).shape == (6,)
    with pytest.raises(XnnError) as e:
        mnist.read_idx(path, md5="0" * 32)
    one_line_error(e, "a.gz", "md5")


# ----------------------------------------------------------------------------- MNIST

def _real_mnist_or_skip():
    folder = xnn_home() / "mnist"
    for name in [n for pair in mnist.FILES.values() for n in pair]:
        if not (folder / name).exists():
            pytest.skip(f"{folder / name} not present (set XNN_HOME to a folder holding mnist/)")


def test_real_mnist():
    _real_mnist_or_skip()
    x, y = mnist.load_mnist("train")
    assert x.shape == (60000, 1, 28, 28) and x.dtype == numpy.float32
    assert y.shape == (60000,) and y.dtype == numpy.int64
    assert x.min() == 0.0 and x.max() == 1.0
    numpy.testing.assert_array_equal(y[:5], [5, 0, 4, 1, 9])  # the well-known first labels
    assert set(numpy.unique(y)) == set(range(10))
    xt, yt = mnist.load_mnist("test")
    assert xt.shape == (10000, 1, 28, 28) and yt.shape == (10000,)
    assert yt[0] == 7 and set(numpy.unique(yt)) == set(range(10))
    pixels = xt[:100] * 255  # every value is k / 255
    numpy.testing.assert_allclose(pixels, numpy.rint(pixels), atol=1e-4)
    # in-process cache: same arrays, read-only, and limit takes the first N
    x2, y2 = mnist.load_mnist("train")
    assert x2 is x and not x.flags.writeable
    xl, yl = mnist.load_mnist("test", limit=25)
    assert xl.shape == (25, 1, 28, 28)
    numpy.testing.assert_array_equal(yl, yt[:25])


def _fake_mnist(home, n_images, n_labels, dims=(28, 28), label_max=9, seed=0):
    r = numpy.random.default_rng(seed)
    x = r.integers(0, 256, size=(n_images, *dims), dtype=numpy.uint8)
    y = r.integers(0, label_max + 1, size=n_labels, dtype=numpy.uint8)
    y[:1] = label_max
    folder = home / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    img_name, lbl_name = mnist.FILES["train"]
    (folder / img_name).write_bytes(gzip.compress(idx_bytes(x, 0x08)))
    (folder / lbl_name).write_bytes(gzip.compress(idx_bytes(y, 0x08)))
    return x, y


def test_load_mnist_from_a_fake_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XNN_HOME", str(tmp_path))
    x, y = _fake_mnist(tmp_path, 7, 7)
    images_, labels = mnist.load_mnist("train", verify=False)
    assert images_.shape == (7, 1, 28, 28) and images_.dtype == numpy.float32
    numpy.testing.assert_array_equal(images_[:, 0], (x / 255.0).astype(numpy.float32))
    assert labels.dtype == numpy.int64
    numpy.testing.assert_array_equal(labels, y)
    # the official checksum does not match these made-up files
    with pytest.raises(XnnError) as e:
        mnist.load_mnist("train", verify=True)
    one_line_error(e, "md5", "train-")
    # replacing the files is noticed (the cache is keyed on path, mtime and size)
    _fake_mnist(tmp_path, 9, 9, seed=1)
    assert mnist.load_mnist("train", verify=False)[0].shape == (9, 1, 28, 28)


@pytest.mark.parametrize("kw,what", [(dict(n_images=5, n_labels=4), "5 images but 4 labels"),
                                     (dict(n_images=4, n_labels=4, dims=(28, 27)), "28, 27"),
                                     (dict(n_images=4, n_labels=4, label_max=10), "0..9")])
def test_load_mnist_rejects_inconsistent_files(tmp_path, monkeypatch, kw, what):
    monkeypatch.setenv("XNN_HOME", str(tmp_path))
    _fake_mnist(tmp_path, **kw)
    with pytest.raises(XnnError) as e:
        mnist.load_mnist("train", verify=False)
    one_line_error(e, what, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")


def test_load_mnist_bad_arguments():
    with pytest.raises(XnnError, match="split"):
        mnist.load_mnist("validation")
    with pytest.raises(XnnError, match="limit"):
        mnist.load_mnist("test", limit=-1)


def test_batches_cover_every_index_once():
    got = list(mnist.batches(10, 4, rng=numpy.random.default_rng(0)))
    assert [len(b) for b in got] == [4, 4, 2]
    assert sorted(numpy.concatenate(got).tolist()) == list(range(10))
    assert not numpy.array_equal(numpy.concatenate(got), numpy.arange(10))  # shuffled
    again = list(mnist.batches(10, 4, rng=numpy.random.default_rng(0)))
    assert all(numpy.array_equal(a, b) for a, b in zip(got, again))
    assert [b.tolist() for b in mnist.batches(5, 2, shuffle=False)] == [[0, 1], [2, 3], [4]]
    assert [len(b) for b in mnist.batches(10, 4, rng=1, drop_last=True)] == [4, 4]
    with pytest.raises(XnnError):
        next(mnist.batches(10, 0))


# ----------------------------------------------------------------------------- cache

def test_fetch_unregistered_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XNN_HOME", str(tmp_path))
    with pytest.raises(XnnError) as e:
        cache.fetch("mnist/not-a-real-file.gz")
    one_line_error(e, "not-a-real-file.gz", "XNN_HOME")


@pytest.mark.parametrize("failure", ["network", "checksum"])
def test_fetch_failed_download_leaves_nothing(tmp_path, monkeypatch, failure):
    """pooch's real download path runs; only the downloader (the network) is faked."""
    pooch_core = pytest.importorskip("pooch.core")
    import requests

    def downloader(url, output_file, pooch):
        with open(output_file, "wb") as f:
            f.write(b"partial bytes")
        if failure == "network":
            raise requests.exceptions.ConnectionError("connection reset by peer")

    monkeypatch.setattr(pooch_core, "choose_downloader", lambda url, progressbar=False: downloader)
    monkeypatch.setenv("XNN_HOME", str(tmp_path))
    rel = "mnist/t10k-labels-idx1-ubyte.gz"
    with pytest.raises(XnnError) as e:
        cache.fetch(rel)
    one_line_error(e, rel, "XNN_HOME")
    assert not (tmp_path / rel).exists()
    assert list((tmp_path / "mnist").iterdir()) == []  # no temporary file left either
    with pytest.raises(XnnError):
        cache.fetch(rel, download=False)


# ----------------------------------------------------------------------------- loading images

def shared_image(name):
    path = xnn_home() / "images" / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_load_shared_images(name):
    a = images.load_image(shared_image(name))
    assert a.dtype == numpy.uint8 and a.shape == (*IMAGES[name], 3)
    assert a.std() > 10  # a real picture, not a blank


def test_grey_palette_cmyk_and_16bit_become_rgb(tmp_path):
    grey = numpy.array([[0, 100], [200, 255]], numpy.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    numpy.testing.assert_array_equal(images.load_image(tmp_path / "g.png"),
                                     numpy.repeat(grey[:, :, None], 3, axis=2))
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    numpy.testing.assert_array_equal(images.load_image(tmp_path / "p.png"),
                                     [[[10, 20, 30], [200, 100, 0]]])
    cmyk = Image.new("CMYK", (3, 1))
    for i, v in enumerate([(0, 0, 0, 0), (0, 0, 0, 255), (255, 0, 0, 0)]):
        cmyk.putpixel((i, 0), v)
    cmyk.save(tmp_path / "c.jpg", quality=100)
    got = images.load_image(tmp_path / "c.jpg").astype(int)
    numpy.testing.assert_allclose(got, [[[255, 255, 255], [0, 0, 0], [0, 255, 255]]], atol=8)
    deep = numpy.array([[0, 257 * 100, 65535]], numpy.uint16)
    Image.fromarray(deep).save(tmp_path / "d.png")
    numpy.testing.assert_array_equal(images.load_image(tmp_path / "d.png")[..., 0], [[0, 100, 255]])


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(tmp_path, mode):
    rgb = numpy.array([[[200, 40, 10], [200, 40, 10], [200, 40, 10]]], numpy.uint8)
    alpha = numpy.array([[0, 255, 128]], numpy.uint8)
    if mode == "LA":
        rgb[...] = rgb[..., :1]
        arr = numpy.dstack([rgb[..., 0], alpha])
    else:
        arr = numpy.dstack([rgb, alpha])
    Image.fromarray(arr, mode).save(tmp_path / "a.png")
    got = images.load_image(tmp_path / "a.png").astype(float)
    a = alpha[..., None] / 255.0
    want = rgb * a + 255.0 * (1 - a)
    numpy.testing.assert_allclose(got, want, atol=1.01)


def test_exif_orientation_is_applied(tmp_path):
    stored = numpy.zeros((2, 4, 3), numpy.uint8)  # 2 rows, 4 columns, red top-left
    stored[0, 0] = (255, 0, 0)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "o.png", exif=exif.tobytes())
    got = images.load_image(tmp_path / "o.png")
    assert got.shape == (4, 2, 3)
    assert tuple(got[0, 1]) == (255, 0, 0)  # clockwise: top-left -> top-right
    assert got.sum() == 255


def _noise_image(path, fmt):
    Image.fromarray(numpy.random.default_rng(0).integers(0, 256, (64, 64, 3), numpy.uint8)) \
        .save(path, format=fmt)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["truncated_png", "truncated_jpg", "text", "empty",
                                  "missing", "directory"])
def test_unreadable_images(tmp_path, kind):
    path = tmp_path / {"truncated_jpg": "bad.jpg", "directory": "folder.png"}.get(kind, "bad.png")
    if kind.startswith("truncated"):
        fmt = "PNG" if kind.endswith("png") else "JPEG"
        blob = _noise_image(tmp_path / "full", fmt)
        path.write_bytes(blob[: len(blob) * 2 // 3])
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    with pytest.raises(XnnError) as e:
        images.load_image(path)
    one_line_error(e, path.name)


# ----------------------------------------------------------------------------- geometry

def test_resize_longer_side():
    rng = numpy.random.default_rng(0)
    land = rng.integers(0, 256, (300, 451, 3), numpy.uint8)
    out = images.resize_longer_side(land, 200)
    assert out.shape == (133, 200, 3) and out.dtype == numpy.uint8
    port = numpy.ascontiguousarray(land.transpose(1, 0, 2))
    assert images.resize_longer_side(port, 200).shape == (200, 133, 3)
    assert images.resize_longer_side(land, 902).shape == (600, 902, 3)
    assert images.resize_longer_side(land, 451) is land  # no resampling at the same size
    flat = numpy.full((40, 60, 3), 77, numpy.uint8)
    assert (images.resize_longer_side(flat, 25) == 77).all()
    with pytest.raises(XnnError):
        images.resize_longer_side(land, 0)


def test_center_crop_and_classifier_transform():
    a = numpy.arange(6 * 9 * 3).reshape(6, 9, 3).astype(numpy.uint8)
    numpy.testing.assert_array_equal(images.center_crop(a, 4), a[1:5, 2:6])
    numpy.testing.assert_array_equal(images.center_crop(a, (3, 9)), a[1:4, :])
    with pytest.raises(XnnError, match="crop"):
        images.center_crop(a, 7)
    img = numpy.random.default_rng(0).integers(0, 256, (300, 451, 3), numpy.uint8)
    assert images.resize_and_center_crop(img).shape == (224, 224, 3)
    assert images.resize_and_center_crop(img, 224, shorter=256).shape == (224, 224, 3)
    assert images.resize_to(img, (10, 20)).shape == (10, 20, 3)
    # the crop keeps the middle: a vertical stripe at the centre column survives
    striped = numpy.zeros((100, 300, 3), numpy.uint8)
    striped[:, 140:160] = 255
    out = images.resize_and_center_crop(striped, 50)
    assert out.shape == (50, 50, 3) and out[:, 25].min() > 200 and out[:, 0].max() < 20


# ----------------------------------------------------------------------------- saving

def test_save_image_round_trip_and_atomic(tmp_path):
    a = numpy.random.default_rng(0).integers(0, 256, (20, 30, 3), numpy.uint8)
    path = images.save_image(tmp_path / "deep" / "er" / "out.png", a)
    assert os.listdir(path.parent) == ["out.png"]
    numpy.testing.assert_array_equal(images.load_image(path), a)
    umask = os.umask(0o022)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    smooth = numpy.linspace(0, 1, 40 * 50 * 3).reshape(40, 50, 3)
    images.save_image(tmp_path / "out.jpg", smooth)
    back = images.load_image(tmp_path / "out.jpg").astype(float)
    assert numpy.abs(back - smooth * 255).mean() < 3
    f = numpy.array([[[-0.5, 0.2, 1.5]]])
    images.save_image(tmp_path / "clip.png", f)
    numpy.testing.assert_array_equal(images.load_image(tmp_path / "clip.png"), [[[0, 51, 255]]])


def test_save_image_failures_leave_no_file(tmp_path, monkeypatch):
    a = numpy.zeros((4, 4, 3), numpy.uint8)
    with pytest.raises(XnnError, match="extension"):
        images.save_image(tmp_path / "out.xyz", a)
    with pytest.raises(XnnError, match="NaN"):
        images.save_image(tmp_path / "nan.png", numpy.full((4, 4, 3), numpy.nan))
    target = tmp_path / "keep.png"
    target.write_bytes(b"old contents")

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half an image")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(XnnError) as e:
        images.save_image(target, a)
    one_line_error(e, "keep.png", "No space left")
    assert target.read_bytes() == b"old contents"
    assert sorted(os.listdir(tmp_path)) == ["keep.png"]


# ----------------------------------------------------------------------------- colour

YIQ = numpy.array([[0.299, 0.587, 0.114],  # the FCC NTSC definition
                   [0.595716, -0.274453, -0.321263],
                   [0.211456, -0.522591, 0.311135]])


def test_yiq_definition_and_round_trip():
    rng = numpy.random.default_rng(0)
    rgb = rng.random((5, 6, 3))
    yiq = images.rgb_to_yiq(rgb)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    numpy.testing.assert_allclose(yiq[..., 0], 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-12)
    numpy.testing.assert_allclose(yiq[..., 2], 0.211456 * r - 0.522591 * g + 0.311135 * b,
                                  atol=1e-12)
    numpy.testing.assert_allclose(images.yiq_to_rgb(yiq), rgb, atol=1e-12)
    grey = images.rgb_to_yiq(numpy.full((1, 1, 3), 0.6))
    numpy.testing.assert_allclose(grey[0, 0], [0.6, 0, 0], atol=1e-6)
    assert images.rgb_to_yiq(rgb.astype(numpy.float32)).dtype == numpy.float32


def test_transfer_luminance_keeps_content_chroma_and_stylised_luma():
    rng = numpy.random.default_rng(0)
    content = 0.3 + 0.4 * rng.random((8, 9, 3))
    stylised = 0.3 + 0.4 * rng.random((8, 9, 3))
    out = images.transfer_luminance(content, stylised, clip=False)
    out_yiq, c_yiq, s_yiq = (x @ YIQ.T for x in (out, content, stylised))
    numpy.testing.assert_allclose(out_yiq[..., 0], s_yiq[..., 0], atol=1e-10)
    numpy.testing.assert_allclose(out_yiq[..., 1:], c_yiq[..., 1:], atol=1e-10)
    # a grey content image turns any stylisation grey (zero chroma)
    out = images.transfer_luminance(numpy.full((8, 9, 3), 0.5), stylised)
    numpy.testing.assert_allclose(out, numpy.repeat(s_yiq[..., :1], 3, axis=2), atol=1e-6)
    # clipping keeps the result displayable; sizes may differ (chroma is resized)
    vivid = rng.random((16, 18, 3))
    out = images.transfer_luminance(vivid, rng.random((8, 9, 3)).astype(numpy.float32))
    assert out.shape == (8, 9, 3) and out.dtype == numpy.float32
    assert out.min() >= 0 and out.max() <= 1


# ----------------------------------------------------------------------------- figures

def test_side_by_side():
    a = numpy.zeros((50, 100, 3), numpy.uint8)
    b = numpy.zeros((100, 50, 3))
    out = images.side_by_side([a, b], height=40, gap=5)
    assert out.shape == (40, 80 + 5 + 20, 3) and out.dtype == numpy.uint8
    assert (out[:, 80:85] == 255).all() and (out[:, :80] == 0).all()
    titled = images.side_by_side([a, b], titles=["content", "result"], height=40, gap=5)
    assert titled.shape[0] > 40 and titled.shape[1] == out.shape[1]
    assert titled[40:].min() == 0  # some text was drawn in the title strip
    with pytest.raises(XnnError):
        images.side_by_side([a, b], titles=["one"])


def test_feature_map_grid():
    f = numpy.zeros((5, 4, 4), numpy.float32)
    f[0] = numpy.arange(16).reshape(4, 4) - 3.0   # ramp: min -> 0, max -> 255
    f[1] = 7.0                                    # constant: shown black
    f[2, 1, 2] = -1.0
    grid = images.feature_map_grid(f, pad=1, min_cell=4)
    assert grid.shape == (2 * 5 - 1, 3 * 5 - 1, 3) and grid.dtype == numpy.uint8
    cell = grid[:4, :4, 0].astype(float)
    numpy.testing.assert_allclose(cell, numpy.rint(numpy.arange(16).reshape(4, 4) / 15 * 255))
    assert (grid[:4, 5:9] == 0).all()                 # constant map
    assert grid[1, 10 + 2, 0] == 0 and grid[0, 10, 0] == 255  # the -1 is the min of map 2
    assert (grid[4, :] == 255).all() and (grid[5:, 10:] == 255).all()  # pads, empty cell
    assert images.feature_map_grid(f[None], max_maps=4, min_cell=8).shape == (18, 18, 3)
