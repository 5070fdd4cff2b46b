"""Decoding you can trust: every way into a video (a seek, a chunk, a resume, a Ray chunk) gives
exactly the frames that decoding it from the start gives, across the encodings cameras and tools
write.  The clips are written here, with PyAV's own encoders."""
import dataclasses
import fractions
import gc
import json
import pathlib
import subprocess
import sys

import numpy
import pytest

av = pytest.importorskip("av", reason="pip install 'xnn[video]'")

from xnn.data.images import load_image  # noqa: E402
from xnn.errors import XnnError  # noqa: E402
from xnn.video import io as vio  # noqa: E402
from xnn.video.clips import pan_frames  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
H, W, N = 72, 128, 48


def make_footage():
    """N frames: a pan with a moving patch over one photo, a cut, a pan over another (a scene change
    puts a key frame where no fixed interval would)."""
    a = pan_frames(load_image(REPO / "examples" / "coffee.png"), 29, (H, W), moving_patch=True)
    b = pan_frames(load_image(REPO / "examples" / "chelsea.png"), N - 29, (H, W), zoom=1.5)
    return a + b


@pytest.fixture(scope="module")
def footage():
    return make_footage()


def encode(frames, path, codec="libx264", pix_fmt="yuv420p", options=None, pts=None, time_base=None,
           audio=False, keyframe_marks=True):
    """Write ``frames`` with PyAV: ``pts`` (default 0, 1, 2...) in ``time_base`` (default 1/12 s);
    ``keyframe_marks`` false clears every packet's key-frame mark before muxing."""
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=12)
        v.width, v.height, v.pix_fmt = W, H, pix_fmt
        v.options = dict(options or {})
        tb = time_base or fractions.Fraction(1, 12)
        v.codec_context.time_base = tb
        if audio:
            a = c.add_stream("aac", rate=48000)
            tone = (0.1 * numpy.sin(numpy.arange(48000 * len(frames) // 12) / 20)).astype(numpy.float32)[None]
            af = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
            af.sample_rate, af.pts = 48000, 0
            audio_packets = list(a.encode(af)) + list(a.encode())
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(numpy.ascontiguousarray(f), format="rgb24")
            vf.pts, vf.time_base = (i if pts is None else pts[i]), tb
            for pkt in v.encode(vf):
                pkt.is_keyframe = pkt.is_keyframe and keyframe_marks
                c.mux(pkt)
        for pkt in v.encode():
            pkt.is_keyframe = pkt.is_keyframe and keyframe_marks
            c.mux(pkt)
        if audio:
            c.mux(audio_packets)
    return path


def cut_with_edit_list(src_path, path, first):
    """A stream copy of ``src_path`` that starts at frame ``first`` (as `ffmpeg -ss T -c copy` makes
    one): the packets from the key frame before it are kept, since the frames need them, and an edit
    list hides what comes before ``first``."""
    with av.open(str(src_path)) as i, av.open(str(path), "w") as o:
        s = i.streams.video[0]
        out = o.add_stream_from_template(s)
        packets = [p for p in i.demux(s) if p.size]
        shown = sorted(p.pts for p in packets)
        t0 = shown[first]
        key = max(p.pts for p in packets if p.is_keyframe and p.pts <= t0)
        started = False
        for p in packets:
            started = started or (p.is_keyframe and p.pts == key)
            if started:
                p.pts -= t0
                p.dts -= t0
                p.stream = out
                o.mux(p)
    return path


def _clip(kind, tmp_path, footage):
    p = tmp_path / kind
    if kind == "h264_420_bframes.mp4":
        return encode(footage, p, options={"g": "12", "bf": "3"}, audio=True)
    if kind == "h264_444.mp4":          # what ffmpeg makes from RGB sources by default
        return encode(footage, p, pix_fmt="yuv444p", options={"g": "10"}, audio=True)
    if kind == "h264_long_gop.mp4":     # x264's defaults: key frames at scene changes only
        return encode(footage, p, pix_fmt="yuv444p", options={"bf": "3"})
    if kind == "h264_open_gop.mkv":
        return encode(footage, p, options={"g": "12", "bf": "2", "x264-params": "open-gop=1:keyint=12"})
    if kind == "h264_no_key_marks.mkv":  # a Matroska file with no key frame marked: no seek index at all
        return encode(footage, p, options={"g": "12"}, keyframe_marks=False)
    if kind == "h264_10bit.mp4":
        return encode(footage, p, pix_fmt="yuv420p10le", options={"g": "12", "bf": "2"})
    if kind == "h264_vfr.mkv":          # variable frame rate: gaps of 1 to 3 ticks of 1/24 s
        gaps = 1 + numpy.random.default_rng(0).integers(0, 3, len(footage))
        return encode(footage, p, options={"g": "12", "bf": "2"}, pts=list(numpy.cumsum(gaps) - gaps[0]),
                      time_base=fractions.Fraction(1, 24))
    if kind == "h264_edit_list.mp4":
        return cut_with_edit_list(encode(footage, tmp_path / "whole.mp4", options={"g": "12", "bf": "2"}), p, 17)
    if kind == "hevc.mp4":
        return encode(footage, p, codec="libx265", options={"x265-params": "keyint=12:min-keyint=12:log-level=error"})
    if kind == "vp9.webm":
        return encode(footage, p, codec="libvpx-vp9", options={"g": "12", "crf": "40", "b": "0"})
    if kind == "mpeg4_bframes.avi":
        return encode(footage, p, codec="mpeg4", options={"g": "12", "bf": "2"})
    raise AssertionError(kind)


ENCODINGS = ["h264_420_bframes.mp4", "h264_444.mp4", "h264_long_gop.mp4", "h264_open_gop.mkv",
             "h264_no_key_marks.mkv", "h264_10bit.mp4", "h264_vfr.mkv", "h264_edit_list.mp4", "hevc.mp4",
             "vp9.webm", "mpeg4_bframes.avi"]


#: files a seek cannot enter (no seek index): every chunk after the first is decoded from the start
CANNOT_SEEK = {"h264_no_key_marks.mkv"}


def sequential(path):
    """Every frame, decoded from the start by PyAV directly (the reference, not xnn's reader)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def _writable(kind):
    codec = {"hevc.mp4": "libx265", "vp9.webm": "libvpx-vp9", "mpeg4_bframes.avi": "mpeg4"}.get(kind, "libx264")
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        return False
    return True


@pytest.mark.parametrize("kind", ENCODINGS)
def test_chunked_reading_equals_sequential_decoding(tmp_path, footage, kind, monkeypatch):
    if not _writable(kind):
        pytest.skip(f"this PyAV cannot write {kind}")
    path = _clip(kind, tmp_path, footage)
    reference = sequential(path)
    src = vio.probe(path)
    assert src.frames == len(reference)
    assert src.frames == (N - 17 if kind == "h264_edit_list.mp4" else N)
    assert len(list(vio.read_frames(src))) == src.frames
    restarts = []                 # reads that decode from the start although a key frame was there to seek to
    real = vio._from_the_start
    monkeypatch.setattr(vio, "_from_the_start", lambda s, a, b: restarts.append(a) or real(s, a, b))

    def chunk_of(a, b):
        del restarts[:]
        out = list(vio.read_frames(src, a, b))
        key = src.index.key_at_or_before(a) if src.index is not None else None
        if key and kind not in CANNOT_SEEK:
            assert restarts == [], f"{kind}: chunk {a}-{b} was decoded from the start; key frame {key} was there"
        return out
    for chunk in (5, 12, 13):     # chunks that start on, just after and just before key frames
        got = [f for a in range(0, src.frames, chunk) for f in chunk_of(a, a + chunk)]
        assert len(got) == len(reference)
        for i, (g, r) in enumerate(zip(got, reference)):
            assert numpy.array_equal(g, r), f"{kind}: frame {i} differs when read in chunks of {chunk}"


def test_a_clean_video_is_entered_by_a_seek(tmp_path, footage, monkeypatch):
    """The check does not just decode everything from the start: a well-made file is entered at a
    key frame, and only the frames from there are decoded."""
    path = encode(footage, tmp_path / "clip.mp4", options={"g": "12", "bf": "2"})
    src = vio.probe(path)
    assert src.index.keys[0] == 0 and src.index.key_at_or_before(40) > 24   # 29, the cut, or 36
    decoded = []
    real_upright = vio._upright
    monkeypatch.setattr(vio, "_upright", lambda frame, *a: decoded.append(frame.pts) or real_upright(frame, *a))
    monkeypatch.setattr(vio, "_from_the_start", lambda *a: pytest.fail("decoded from the start"))
    got = list(vio.read_frames(src, 40, 44))
    assert len(got) == 4 and len(decoded) == 4
    assert numpy.array_equal(got[0], sequential(path)[40])


def _marked(src, keys=None, pts=None):
    index = vio.FrameIndex(src.index.pts if pts is None else pts,
                           src.index.keys if keys is None else numpy.asarray(keys, dtype=numpy.int64))
    return dataclasses.replace(src, index=index)


def test_key_frame_marks_that_lie_are_caught(tmp_path, footage):
    """A container that marks every frame as a key frame (an index that cannot be trusted) sends a
    seek to a frame that needs the ones before it: the decoder says so and the reader starts over."""
    path = encode(footage, tmp_path / "clip.mp4", options={"g": "24", "bf": "0"})
    src = vio.probe(path)
    reference = sequential(path)
    lying = _marked(src, keys=range(src.frames))
    for start in (5, 17, 30, 47):
        got = list(vio.read_frames(lying, start, start + 3))
        assert len(got) == min(3, N - start)
        for g, r in zip(got, reference[start:]):
            assert numpy.array_equal(g, r)


def test_time_stamps_that_do_not_match_the_index_are_caught(tmp_path, footage):
    path = encode(footage, tmp_path / "clip.mp4", options={"g": "12", "bf": "0"})
    src = vio.probe(path)
    reference = sequential(path)
    shifted = _marked(src, pts=src.index.pts + 1)          # no decoded frame carries one of these
    got = list(vio.read_frames(shifted, 30, 34))
    assert all(numpy.array_equal(g, r) for g, r in zip(got, reference[30:34])) and len(got) == 4
    # a frame the decoder puts out that the index does not list (a packet it left out): the same
    missing = _marked(src, pts=numpy.delete(src.index.pts, 32), keys=[k if k < 32 else k - 1 for k in src.index.keys])
    got = list(vio.read_frames(missing, 30, 34))
    assert all(numpy.array_equal(g, r) for g, r in zip(got, reference[30:34])) and len(got) == 4


def test_frame_index_lookups():
    index = vio.FrameIndex(numpy.array([0, 512, 1024, 2048, 2560]), numpy.array([0, 3]))
    assert [index.frame_of(t) for t in (0, 512, 2048, 2560)] == [0, 1, 3, 4]
    assert [index.frame_of(t) for t in (None, -1, 1, 1536, 3000)] == [None] * 5
    assert [index.key_at_or_before(i) for i in (0, 1, 2, 3, 4, 9)] == [0, 0, 0, 3, 3, 3]
    assert vio.FrameIndex(numpy.array([5, 6]), numpy.array([1])).key_at_or_before(0) is None


def test_the_index_counts_what_an_edit_list_shows(tmp_path, footage):
    whole = encode(footage, tmp_path / "whole.mp4", options={"g": "12", "bf": "2"})
    cut = cut_with_edit_list(whole, tmp_path / "cut.mp4", 17)
    src = vio.probe(cut)
    assert src.frames == N - 17
    assert src.index.frame_of(0) == 0 and src.index.keys[0] == 24 - 17   # frames 17-23 need a key frame cut off
    assert len(src.index.pts) == src.frames


def test_an_index_is_none_without_time_stamps():
    class Packet:
        def __init__(self, pts, size=1, key=False, discard=False):
            self.pts, self.size, self.is_keyframe, self.is_discard = pts, size, key, discard

    class Container:
        def __init__(self, packets):
            self.packets = packets

        def demux(self, s):
            return iter(self.packets)

    index, frames, packets = vio._index(Container([Packet(0, key=True), Packet(None), Packet(2)]), None)
    assert index is None and (frames, packets) == (3, 3)
    index, frames, packets = vio._index(Container([Packet(0, key=True), Packet(1), Packet(1)]), None)
    assert index is None and frames == 3                    # a repeated time stamp
    index, frames, packets = vio._index(Container([Packet(-2, key=True, discard=True), Packet(4), Packet(0, size=0),
                                                   Packet(2, key=True), Packet(3)]), None)
    assert (frames, packets) == (3, 4)
    assert list(index.pts) == [2, 3, 4] and list(index.keys) == [0]


# ----------------------------------------------------------------------------- odd and bad real inputs

def test_tiny_and_one_frame_videos(tmp_path):
    one = tmp_path / "one.mp4"
    with av.open(str(one), "w") as c:
        v = c.add_stream("libx264", rate=12)
        v.width, v.height, v.pix_fmt = 2, 2, "yuv444p"
        for pkt in v.encode(av.VideoFrame.from_ndarray(numpy.full((2, 2, 3), 200, numpy.uint8), format="rgb24")):
            c.mux(pkt)
        c.mux(v.encode())
    src = vio.probe(one)
    assert (src.frames, src.size) == (1, (2, 2))
    frames = list(vio.read_frames(src))
    assert len(frames) == 1 and frames[0].shape == (2, 2, 3) and abs(int(frames[0].mean()) - 200) < 8
    assert list(vio.read_frames(src, 1, 5)) == []


def test_probe_names_what_is_wrong(tmp_path, footage):
    from PIL import Image
    with pytest.raises(XnnError, match="input not found"):
        vio.probe(tmp_path / "missing.mp4")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(XnnError, match=r"is not a video \(.mp4"):
        vio.probe(tmp_path / "notes.txt")
    (tmp_path / "noise.mp4").write_bytes(numpy.random.default_rng(1).integers(0, 256, 3000, dtype=numpy.uint8).tobytes())
    with pytest.raises(XnnError, match=r"^cannot read video .*noise.mp4: .+ \(the file is corrupt, truncated or not a video\)$"):
        vio.probe(tmp_path / "noise.mp4")
    folder = tmp_path / "frames"
    folder.mkdir()
    with pytest.raises(XnnError, match="has no frames"):
        vio.probe(folder)
    for i in (2, 0, 1):
        Image.fromarray(footage[i]).save(folder / f"{i:02d}.png")
    (folder / "notes.txt").write_text("not a frame")
    src = vio.probe(folder, fps=30)
    assert (src.kind, src.frames, src.fps, src.size, src.index) == ("folder", 3, 30, (H, W), None)
    assert [f.name for f in src.files] == ["00.png", "01.png", "02.png"]
    assert src.describe() == f"frames: 3 frames, {W}x{H}, 30 fps"
    got = list(vio.read_frames(src, 1, 3, size=(36, 64)))
    assert [g.shape for g in got] == [(36, 64, 3)] * 2
    assert numpy.array_equal(list(vio.read_frames(src, 2))[0], footage[2])
    Image.fromarray(footage[0]).transpose(Image.Transpose.ROTATE_90).save(folder / "03.png")
    with pytest.raises(XnnError, match=f"differ in size: 00.png is {W}x{H}, 03.png is {H}x{W}"):
        vio.probe(folder)
    (folder / "03.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(XnnError, match="cannot read frame .*03.png"):
        vio.probe(folder)
    clip = encode(footage[:6], tmp_path / "clip.mp4", audio=True)
    assert vio.probe(clip).describe() == f"clip.mp4: 6 frames, {W}x{H}, 12 fps, with audio"


def test_huge_declared_frames_are_refused_before_decoding():
    class Ctx:
        def __init__(self, w, h):
            self.width, self.height = w, h

    class Stream:
        def __init__(self, w, h):
            self.codec_context = Ctx(w, h)

    class Streams:
        def __init__(self, w, h):
            self.video, self.audio = [Stream(w, h)], []

    class Format:
        name = "mov,mp4,m4a,3gp,3g2,mj2"

    class Container:
        def __init__(self, w, h):
            self.format, self.streams = Format(), Streams(w, h)

    vio._check_container(Container(8192, 8192), "big.mp4")            # 8K by 8K: 67 M pixels, allowed
    with pytest.raises(XnnError, match="declares frames of 65536x65536"):
        vio._check_container(Container(65536, 65536), "huge.mp4")
    with pytest.raises(XnnError, match="declares frames of 16385x8193"):
        vio._check_container(Container(16385, 8193), "huge.mp4")
    vio._check_container(Container(16384, 8192), "edge.mp4")          # exactly the limit
    Format.name = "png_pipe"
    with pytest.raises(XnnError, match="is a PNG image, not a video"):
        vio._check_container(Container(64, 64), "photo.mp4")


def test_image_files_named_as_videos_are_refused(tmp_path):
    from PIL import Image
    photo = Image.open(REPO / "examples" / "chelsea.png")
    for fmt, suffix in (("PNG", ".mp4"), ("JPEG", ".mov"), ("WEBP", ".mkv"), ("BMP", ".avi")):
        p = tmp_path / f"photo_{fmt}{suffix}"
        photo.save(p, fmt)
        with pytest.raises(XnnError, match="image, not a video"):
            vio.probe(p)
    gc.collect()   # PyAV frees an ICC profile's side data twice once frame.side_data was read: a crash here


#: every kind of file the video reader takes, spoiled three ways, through the CLI in one child process;
#: a crash (a segmentation fault) anywhere ends the child without its report
_CHILD = r"""
import gc, json, sys
from xnn.cli import main
codes = {}
for path in sys.argv[2:]:
    codes[path] = main([sys.argv[1], "--set", f"input={path}", "--set", "image_size=32", "--set", "style_size=32",
                        "--device", "cpu", "--quiet", "--out", path + ".run"])
    gc.collect()
print("CODES " + json.dumps(codes))
"""


def test_spoilt_and_disguised_files_never_crash_the_cli(tmp_path, footage):
    from PIL import Image
    good = {".mp4": encode(footage[:12], tmp_path / "good.mp4", options={"g": "4"}, audio=True),
            ".mkv": encode(footage[:12], tmp_path / "good.mkv", options={"g": "4"}),
            ".webm": encode(footage[:12], tmp_path / "good.webm", codec="libvpx-vp9", options={"g": "4"}),
            ".avi": encode(footage[:12], tmp_path / "good.avi", codec="mpeg4")}
    for suffix in (".mov", ".m4v"):
        good[suffix] = encode(footage[:12], tmp_path / f"good{suffix}", options={"g": "4"})
    Image.fromarray(footage[0]).save(tmp_path / "good.gif")
    good[".gif"] = tmp_path / "good.gif"
    must_refuse, may_run = [], []
    for suffix, p in good.items():
        data = p.read_bytes()
        (tmp_path / f"half{suffix}").write_bytes(data[:len(data) // 2])
        (tmp_path / f"head{suffix}").write_bytes(bytes(64) + data[64:])
        rng = numpy.random.default_rng(len(suffix))
        spoilt = bytearray(data)
        spoilt[len(data) // 2:len(data) // 2 + 400] = rng.integers(0, 256, 400, dtype=numpy.uint8).tobytes()
        (tmp_path / f"middle{suffix}").write_bytes(bytes(spoilt))
        (tmp_path / f"noise{suffix}").write_bytes(rng.integers(0, 256, 3000, dtype=numpy.uint8).tobytes())
        must_refuse.append(tmp_path / f"noise{suffix}")
        may_run += [tmp_path / f"{how}{suffix}" for how in ("half", "head", "middle")]
    photo = Image.open(REPO / "examples" / "chelsea.png")
    for fmt, suffix in (("PNG", ".mp4"), ("JPEG", ".mp4"), ("WEBP", ".mov"), ("BMP", ".mkv")):
        photo.save(tmp_path / f"{fmt}{suffix}", fmt)
        must_refuse.append(tmp_path / f"{fmt}{suffix}")
    env = {**__import__("os").environ, "PYTHONFAULTHANDLER": "1"}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(REPO / "configs" / "video.yaml"),
                           *map(str, must_refuse + may_run)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, f"the CLI crashed (exit {done.returncode}): {done.stderr[-2000:]}"
    codes = json.loads(done.stdout.split("CODES ", 1)[1])
    for p in must_refuse:
        assert codes[str(p)] == 2, f"{p.name}: exit {codes[str(p)]}"
        assert not pathlib.Path(str(p) + ".run").exists()
    for p in may_run:   # a file damaged inside may still decode (FFmpeg conceals errors): it runs, is refused,
        # or stops where it breaks (or fails the frame check) with what was done kept and said so
        assert codes[str(p)] in (0, 2), f"{p.name}: exit {codes[str(p)]}"
    assert done.stderr.count("xnn: error:") == sum(1 for c in codes.values() if c == 2)
