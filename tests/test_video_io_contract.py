"""xnn.video.io's contract, each promise checked exactly: segment encoding settings, joining
(containers, time stamps, audio cut and copy), orientation, and every one-line error's text."""
import fractions
import types

import numpy
import pytest

av = pytest.importorskip("av", reason="pip install 'xnn[video]'")

from xnn.errors import XnnError  # noqa: E402
from xnn.video import io as vio  # noqa: E402

from .helpers import write_audio_only  # noqa: E402

from .test_video_decoding import H, W, encode, make_footage  # noqa: E402


@pytest.fixture(scope="module")
def footage():
    return make_footage()


def packets(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(p.size, p.pts, p.dts) for p in c.demux(s) if p.size]


def reference(frames, path, codec, options, fps=12):
    """The same frames encoded by PyAV directly with the settings SegmentWriter documents."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fractions.Fraction(fps))
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        s.codec_context.time_base = 1 / fractions.Fraction(fps)
        s.options = options
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(numpy.ascontiguousarray(f), format="rgb24")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode())
    return path


@pytest.mark.parametrize("suffix,codec,options", [
    (".mp4", "libx264", {"crf": "16", "bf": "0", "preset": "veryfast"}),
    (".webm", "libvpx-vp9", {"crf": "32", "b": "0", "row-mt": "1"})])
def test_segments_are_encoded_as_documented(tmp_path, footage, suffix, codec, options):
    frames = footage[:8]
    out = tmp_path / f"seg{suffix}"
    with vio.SegmentWriter(out, 12, (H, W)) as seg:
        for f in frames:
            seg.write(f)
        assert seg.count == 8
    assert not list(tmp_path.glob(".*tmp*"))
    want = reference(frames, tmp_path / f"ref{suffix}", codec, options)
    assert [p[0] for p in packets(out)] == [p[0] for p in packets(want)]       # the same bitstream sizes
    if suffix == ".mp4":
        assert all(pts == dts for _, pts, dts in packets(out))                # no B-frames
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        assert s.codec_context.pix_fmt == "yuv420p" and s.average_rate == 12
        assert [round(f.pts * s.time_base * 12) for f in c.decode(s)] == list(range(8))
    other = tmp_path / f"crf{suffix}"
    with vio.SegmentWriter(other, 12, (H, W), crf=40) as seg:
        for f in frames:
            seg.write(f)
    assert sum(p[0] for p in packets(other)) < 0.8 * sum(p[0] for p in packets(out))


@pytest.mark.parametrize("h,w,fmt", [(72, 128, "yuv420p"), (71, 128, "yuv444p"), (72, 127, "yuv444p"),
                                     (71, 127, "yuv444p")])
def test_odd_sides_get_full_chroma(tmp_path, footage, h, w, fmt):
    with vio.SegmentWriter(tmp_path / "s.mp4", 12, (h, w)) as seg:
        seg.write(footage[0][:h, :w])
    with av.open(str(tmp_path / "s.mp4")) as c:
        assert c.streams.video[0].codec_context.pix_fmt == fmt


def test_segment_writer_refuses_and_leaves_nothing(tmp_path, footage):
    seg = vio.SegmentWriter(tmp_path / "a.mp4", 12, (H, W))
    with pytest.raises(ValueError) as e:
        seg.write(footage[0][:10, :10])
    assert str(e.value) == f"frame is (10, 10), the video ({H}, {W})"
    seg.write(footage[0])
    seg.close()
    seg.close()             # a second close does nothing
    seg.abort()             # nor does an abort after it: the finished file stays
    assert vio.probe(tmp_path / "a.mp4").frames == 1
    with pytest.raises(RuntimeError):
        with vio.SegmentWriter(tmp_path / "b.mp4", 12, (H, W)) as seg:
            seg.write(footage[0])
            raise RuntimeError("stop")
    seg.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]
    with pytest.raises(XnnError) as e:     # FFmpeg opens the file when it first writes: at the latest on close
        seg = vio.SegmentWriter(tmp_path / "missing" / "c.mp4", 12, (H, W))
        seg.write(footage[0])
        seg.close()
    assert str(e.value) == f"cannot write video {tmp_path / 'missing' / 'c.mp4'}: No such file or directory"


def _segments(tmp_path, footage, suffix, n=(5, 7)):
    parts, start = [], 0
    for k in n:
        p = tmp_path / f"{start:06d}{suffix}"
        with vio.SegmentWriter(p, 12, (H, W)) as seg:
            for f in footage[start:start + k]:
                seg.write(f)
        parts.append(p)
        start += k
    return parts


@pytest.mark.parametrize("suffix,fmt", [(".mp4", "mov,mp4"), (".m4v", "mov,mp4"), (".mov", "mov,mp4"),
                                        (".mkv", "matroska"), (".webm", "matroska")])
def test_joined_segments_play_in_order_at_the_frame_rate(tmp_path, footage, suffix, fmt):
    seg_suffix = ".webm" if suffix == ".webm" else ".mp4"
    out = tmp_path / f"out{suffix}"
    assert vio.join_segments(_segments(tmp_path, footage, seg_suffix), out, 12) == 12
    with av.open(str(out)) as c:
        assert c.format.name.startswith(fmt)
        s = c.streams.video[0]
        assert [round(f.pts * s.time_base * 12) for f in c.decode(s)] == list(range(12))   # no gap, no overlap


def test_audio_is_cut_to_the_video_and_copied_or_reencoded(tmp_path, footage):
    long = encode(footage, tmp_path / "long.mp4", options={"g": "12"}, audio=True)      # 4 s of AAC
    src = vio.probe(long)
    out = tmp_path / "out.mp4"
    vio.join_segments(_segments(tmp_path, footage, ".mp4"), out, 12, audio_from=src)   # 1 s of video
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac" and a.codec_context.sample_rate == 48000
        ends = [float((p.pts + p.duration) * a.time_base) for p in c.demux(a) if p.pts is not None]
    assert 1.0 - 0.03 <= max(ends) <= 1.0 + 0.03
    # Opus into Matroska is copied as it is (into WebM from AAC it is re-encoded: test_video.py)
    from xnn.video.clips import write_clip
    opus = write_clip(footage[:24], tmp_path / "opus.webm", fps=12, tone_hz=330)
    mkv = tmp_path / "out.mkv"
    vio.join_segments(_segments(tmp_path, footage, ".mp4"), mkv, 12, audio_from=vio.probe(opus))
    with av.open(str(mkv)) as c:
        assert c.streams.audio[0].codec_context.name == "opus"
        a = c.streams.audio[0]
        ends = [float((p.pts + p.duration) * a.time_base) for p in c.demux(a) if p.pts is not None]
    assert 1.0 - 0.03 <= max(ends) <= 1.0 + 0.03
    mute = tmp_path / "mute.mp4"
    vio.join_segments(_segments(tmp_path, footage, ".mp4"), mute, 12, audio_from=vio.probe(tmp_path / "000000.mp4"))
    assert not vio.probe(mute).has_audio


class _Frame:
    def __init__(self, rotation=0, matrix=None, array=None):
        self.rotation = rotation
        self.side_data = {"DISPLAYMATRIX": numpy.array(matrix, numpy.int32).tobytes()} if matrix else {}
        self.array = numpy.arange(2 * 3 * 3, dtype=numpy.uint8).reshape(2, 3, 3) if array is None else array

    def to_ndarray(self, format):
        return self.array


def test_orientation_from_the_display_matrix_or_the_rotation():
    one = 1 << 16
    mirror = [-one, 0, 0, 0, one, 0, 0, 0, 1 << 30]
    assert vio._orientation(_Frame(rotation=-180, matrix=mirror)) == (0, True)
    assert vio._orientation(_Frame(rotation=-180, matrix=mirror), icc_safe=False) == (2, False)
    assert vio._orientation(_Frame(rotation=0, matrix=mirror), False) == (0, False)
    for rotation, turns in ((0, 0), (90, 1), (-90, 3), (180, 2), (-180, 2), (270, 3), (44, 0), (46, 1), (None, 0)):
        assert vio._orientation(_Frame(rotation=rotation)) == (turns, False), rotation
    assert vio._orientation(types.SimpleNamespace(side_data={})) == (0, False)     # no rotation at all
    shown = vio._upright(_Frame(matrix=mirror))
    assert numpy.array_equal(shown, _Frame().array[:, ::-1]) and shown.flags.c_contiguous
    turned = vio._upright(_Frame(rotation=90), icc_safe=False)
    assert numpy.array_equal(turned, numpy.rot90(_Frame().array)) and turned.flags.c_contiguous
    plain = _Frame()
    assert vio._upright(plain) is plain.array                                       # no copy when upright


def test_av_error_text():
    e = vio._av_error("x.mp4", OSError(5, "Input/output error"))
    assert str(e) == "cannot read video x.mp4: Input/output error (the file is corrupt, truncated or not a video)"
    assert str(vio._av_error("x.mp4", ValueError("bad header: at byte 9"))) == \
        "cannot read video x.mp4: bad header (the file is corrupt, truncated or not a video)"
    assert str(vio._av_error("x.mp4", StopIteration())) == \
        "cannot read video x.mp4: StopIteration (the file is corrupt, truncated or not a video)"


def test_probe_messages_word_for_word(tmp_path, footage):
    from PIL import Image
    for path, want in ((tmp_path / "none.mp4", f"input not found: {tmp_path / 'none.mp4'}"),):
        with pytest.raises(XnnError) as e:
            vio.probe(path)
        assert str(e.value) == want
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(XnnError) as e:
        vio.probe(tmp_path / "a.txt")
    assert str(e.value) == (f"input {tmp_path / 'a.txt'} is not a video (.mp4, .m4v, .mov, .mkv, .webm, .avi, .gif) "
                            "or a folder of frames")
    Image.fromarray(footage[0]).save(tmp_path / "p.mp4", "PNG")
    with pytest.raises(XnnError) as e:
        vio.probe(tmp_path / "p.mp4")
    assert str(e.value) == (f"{tmp_path / 'p.mp4'} is a PNG image, not a video (whatever its name says); stylise a "
                            "picture with configs/adain.yaml, or give a video file")
    tone = write_audio_only(tmp_path / "tone.mp4")
    with pytest.raises(XnnError) as e:
        vio.probe(tone)
    assert str(e.value) == f"{tone} has no video stream (only audio)"
    whole = tmp_path / "whole.mp4"
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as c:
        v = c.add_stream("libx264", rate=12)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        for i, f in enumerate(footage[:24]):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(v.encode(vf))
        c.mux(v.encode())
    data = whole.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(XnnError) as e:
        vio.probe(tmp_path / "cut.mp4")
    assert str(e.value).startswith(f"{tmp_path / 'cut.mp4'} is truncated: its header announces 24 frames, "
                                   "the file holds ") and str(e.value)[-1].isdigit()
    src = vio.probe(whole)
    assert (src.kind, src.frames, src.fps, src.size, src.has_audio) == ("video", 24, 12, (H, W), False)


def test_folder_sizes_follow_exif_orientation(tmp_path, footage):
    from PIL import Image
    folder = tmp_path / "f"
    folder.mkdir()
    for k, orientation in enumerate((6, 5, 7, 8, 2, 1)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(footage[k]).save(folder / f"{k}.jpg", exif=exif.tobytes())
    with pytest.raises(XnnError) as e:
        vio.probe(folder)
    assert str(e.value) == (f"frames in {folder} differ in size: 0.jpg is {H}x{W}, 4.jpg is {W}x{H}; a video needs "
                            "one size (resize them, or stylise them as images with configs/adain.yaml)")
    for k in (4, 5):
        (folder / f"{k}.jpg").unlink()
    src = vio.probe(folder)
    assert (src.size, src.frames, src.fps) == ((W, H), 4, 24)
    empty = tmp_path / "e"
    empty.mkdir()
    with pytest.raises(XnnError) as e:
        vio.probe(empty)
    assert str(e.value) == f"folder {empty} has no frames (.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff)"
    (folder / "9.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(XnnError) as e:
        vio.probe(folder)
    assert str(e.value).startswith(f"cannot read frame {folder / '9.png'}: ") and len(str(e.value).splitlines()) == 1


def test_read_frames_edges(tmp_path, footage):
    import dataclasses
    path = encode(footage, tmp_path / "clip.mp4", options={"g": "12", "bf": "2"})
    src = vio.probe(path)
    every = list(vio.read_frames(src))
    assert list(vio.read_frames(src, 30, 30)) == [] and list(vio.read_frames(src, 31, 30)) == []
    assert list(vio.read_frames(src, 47, 100))[0].shape == (H, W, 3) and len(list(vio.read_frames(src, 40))) == 8
    small = list(vio.read_frames(src, 30, 32, size=(36, 64)))
    assert [f.shape for f in small] == [(36, 64, 3)] * 2
    blind = dataclasses.replace(src, index=None)       # no index (no time stamps): decoded from the start
    got = list(vio.read_frames(blind, 30, 33))
    assert len(got) == 3 and all(numpy.array_equal(g, r) for g, r in zip(got, every[30:33]))


def test_long_joins_interleave_audio_with_video(tmp_path, footage):
    """Packets are handed to the muxer in time order across streams: in a clip longer than FFmpeg's
    interleaving buffer (10 s) a file written video-first would hold its audio far from its frames."""
    frames = (footage * 5)[:12 * 15]                       # 15 s at 12 fps
    src = vio.probe(encode(frames, tmp_path / "long.mp4", options={"g": "24"}, audio=True))
    parts = _segments(tmp_path, frames, ".mp4", n=(96, 84))
    for suffix in (".mp4", ".webm"):                       # AAC copied; AAC re-encoded to Opus
        if suffix == ".webm":
            parts = _segments(tmp_path, frames, ".webm", n=(96, 84))
        out = tmp_path / f"joined{suffix}"
        assert vio.join_segments(parts, out, 12, audio_from=src) == 180
        with av.open(str(out)) as c:
            latest = {}
            worst = 0.0
            for p in c.demux():
                if p.dts is None or not p.size:
                    continue
                t = float(p.dts * p.time_base)
                latest[p.stream.type] = t
                if len(latest) == 2:
                    worst = max(worst, abs(latest["video"] - latest["audio"]))
        assert worst < 2.0, (suffix, worst)


def test_no_pyav_is_one_line(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(XnnError) as e:
        vio.require_av()
    assert str(e.value) == "video needs PyAV and OpenCV: pip install 'xnn[video]'"


def test_more_words_of_the_errors(tmp_path, footage):
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as c:                 # a video stream that never got a frame
        v = c.add_stream("libx264", rate=12)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        c.start_encoding()
    with pytest.raises(XnnError) as e:      # FFmpeg cannot open a Matroska file without a first cluster
        vio.probe(empty)
    assert str(e.value) == f"cannot read video {empty}: End of file (the file is corrupt, truncated or not a video)"
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(numpy.random.default_rng(3).integers(0, 256, 4000, dtype=numpy.uint8).tobytes())
    with pytest.raises(XnnError) as e:
        vio.probe(noise)
    assert str(e.value) == (f"cannot read video {noise}: Invalid data found when processing input (the file is "
                            "corrupt, truncated or not a video)")
    clip = encode(footage[:6], tmp_path / "clip.mp4")
    src = vio.probe(clip)
    clip.write_bytes(noise.read_bytes())                 # replaced after the probe
    for start in (0, 3):
        with pytest.raises(XnnError) as e:
            list(vio.read_frames(src, start))
        assert str(e.value) == (f"cannot read video {clip}: Invalid data found when processing input (the file is "
                                "corrupt, truncated or not a video)")

    class Big:
        format = types.SimpleNamespace(name="matroska,webm")
        streams = types.SimpleNamespace(video=[types.SimpleNamespace(
            codec_context=types.SimpleNamespace(width=40000, height=40000))], audio=[])
    with pytest.raises(XnnError) as e:
        vio._check_container(Big(), "big.mkv")
    assert str(e.value) == ("big.mkv declares frames of 40000x40000, more than the 134217728 pixels xnn reads (the "
                            "header is corrupt, or the video too large)")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "0.png").write_bytes(b"not a png at all")
    with pytest.raises(XnnError) as e:
        vio.probe(folder)
    assert str(e.value) == f"cannot read frame {folder / '0.png'}: cannot identify image file '{folder / '0.png'}'"


def test_the_frame_rate_of_a_variable_rate_video_is_its_average(tmp_path, footage):
    gaps = [1, 1, 1, 5] * 6
    pts = list(numpy.cumsum(gaps) - gaps[0])
    path = encode(footage[:24], tmp_path / "vfr.mp4", pts=pts, time_base=fractions.Fraction(1, 24))
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        average, guessed = s.average_rate, s.guessed_rate
    src = vio.probe(path)
    assert src.fps == average and abs(float(src.fps) - 12) < 1 and src.frames == 24
    assert guessed != average       # what the probe must not take


def test_mirror_needs_the_side_data_and_rounding_is_to_the_nearest_quarter():
    one = 1 << 16
    mirror = [-one, 0, 0, 0, one, 0, 0, 0, 1 << 30]
    turned = vio._upright(_Frame(rotation=-180, matrix=mirror), icc_safe=False)
    assert numpy.array_equal(turned, numpy.rot90(_Frame().array, 2))
    assert [vio._orientation(_Frame(rotation=r))[0] for r in (45.3, 44.7, 134.8, 135.4)] == [1, 0, 1, 2]


def test_a_mirrored_video_entered_by_a_seek_is_still_mirrored(tmp_path, footage):
    path = tmp_path / "selfie.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"g": "6"}
        s.set_display_rotation(0, hflip=True)
        for i, f in enumerate(footage[:18]):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(s.encode(vf))
        c.mux(s.encode())
    src = vio.probe(path)
    whole = list(vio.read_frames(src))
    assert numpy.abs(whole[13].astype(int) - footage[13][:, ::-1]).mean() < 6       # shown mirrored
    got = list(vio.read_frames(src, 13, 15))                                        # entered at key frame 12
    assert numpy.array_equal(got[0], whole[13]) and numpy.array_equal(got[1], whole[14])


class _FakeContainer:
    """What _from_key_frame sees of PyAV after its seek: frames with a time stamp and the decoder's
    key-frame flag, in the order the decoder puts them out."""
    def __init__(self, frames):
        self.frames = frames
        self.sought = []
        self.streams = types.SimpleNamespace(video=[types.SimpleNamespace(
            thread_type=None, codec_context=types.SimpleNamespace(name="h264"))])

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def seek(self, offset, stream=None, backward=True):
        assert stream is self.streams.video[0] and backward
        self.sought.append(offset)

    def decode(self, s):
        yield from self.frames


def _fake(i, key=False):
    f = _Frame(array=numpy.full((2, 2, 3), i or 0, numpy.uint8))
    f.pts, f.key_frame = (None if i is None else 100 * i), key
    return f


@pytest.mark.parametrize("decoded,start,stop,want", [
    ([(4, True), (5, False), (6, False)], 5, 7, [5, 6]),          # entered at the key frame: 5 and 6
    ([(4, True), (5, False), (6, False)], 4, 6, [4, 5]),          # the key frame is the start
    ([(3, False), (2, False), (4, True), (5, False)], 5, 6, [5]),  # pictures shown before the key frame skipped
    ([(2, True), (3, False), (4, False), (5, False)], 5, 6, [5]),  # the seek landed on an earlier key frame
    ([(5, False), (6, False)], 5, 7, []),                         # not a key frame: start over from the start
    ([(3, False), (4, False), (5, False)], 5, 6, []),             # no key frame before the start either
    ([(6, True), (7, False)], 5, 7, []),                          # landed past the start
    ([(None, True), (5, False)], 5, 6, []),                       # no time stamp
    ([(4, True), (5, False), (7, False)], 5, 8, [5]),             # a frame missing: the rest from the start
    ([(4, True), (5, False), (5, False)], 5, 8, [5]),             # a frame twice: likewise
    ([(4, True), (5, False), (6, False), (7, False)], 5, 6, [5]),  # stops at stop
])
def test_the_entry_after_a_seek_is_checked(monkeypatch, decoded, start, stop, want):
    index = vio.FrameIndex(numpy.arange(0, 1000, 100), numpy.array([0, 4, 8]))
    src = vio.VideoSource(path="x.mp4", kind="video", frames=10, fps=12, size=(2, 2), index=index)
    fake = _FakeContainer([_fake(i, k) for i, k in decoded])
    monkeypatch.setattr(av, "open", lambda *a, **k: fake)
    got = list(vio._from_key_frame(src, start, stop))
    assert [i for i, _ in got] == want and [int(f[0, 0, 0]) for _, f in got] == want
    assert fake.sought == [400]                                    # the key frame at or before the start


def test_no_seek_before_the_first_key_frame_or_from_zero(monkeypatch):
    index = vio.FrameIndex(numpy.arange(0, 1000, 100), numpy.array([0, 4, 8]))
    src = vio.VideoSource(path="x.mp4", kind="video", frames=10, fps=12, size=(2, 2), index=index)
    monkeypatch.setattr(av, "open", lambda *a, **k: pytest.fail("opened"))
    assert list(vio._from_key_frame(src, 3, 5)) == []              # key frame 0: the start is no slower
    late = vio.VideoSource(path="x.mp4", kind="video", frames=10, fps=12, size=(2, 2),
                           index=vio.FrameIndex(numpy.arange(0, 1000, 100), numpy.array([6])))
    assert list(vio._from_key_frame(late, 3, 5)) == []             # no key frame at or before 3


def test_frames_are_shrunk_by_area_averaging_and_enlarged_by_lanczos():
    import cv2
    from xnn.data.images import resize_to
    rng = numpy.random.default_rng(5)
    frame = rng.integers(0, 256, (40, 60, 3), dtype=numpy.uint8)
    small = vio._resized(frame, (20, 30))                 # 2x smaller: the mean of each 2x2 block
    blocks = frame.reshape(20, 2, 30, 2, 3).astype(float).mean(axis=(1, 3))
    assert small.dtype == numpy.uint8 and numpy.abs(small - blocks).max() <= 0.5
    numpy.testing.assert_array_equal(small, cv2.resize(frame, (30, 20), interpolation=cv2.INTER_AREA))
    numpy.testing.assert_array_equal(vio._resized(frame, (80, 120)), resize_to(frame, (80, 120)))
    numpy.testing.assert_array_equal(vio._resized(frame, (30, 90)), resize_to(frame, (30, 90)))  # wider: not a shrink
    assert vio._resized(frame, (40, 60)) is frame
