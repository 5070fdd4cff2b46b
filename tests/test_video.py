"""Video: reading and writing (PyAV), optical flow and the temporal error (OpenCV), the video
experiment end to end (local), its stop / resume, and its bad inputs."""
import json
import os
import pathlib
import signal

import numpy
import pytest

pytest.importorskip("av", reason="pip install 'xnn[video]'")
pytest.importorskip("cv2", reason="pip install 'xnn[video]'")

from xnn.cli import main  # noqa: E402
from xnn.data.images import load_image  # noqa: E402
from xnn.video import io as vio  # noqa: E402
from xnn.video import temporal  # noqa: E402
from xnn.video.clips import pan_frames, write_clip  # noqa: E402

from .conftest import weights_path  # noqa: E402
from .helpers import assert_one_line_error, write_audio_only  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
CFG = str(REPO / "configs" / "video.yaml")
SMALL = ["--set", "style_size=64", "--device", "cpu", "--quiet"]


def frames_of(path):
    return list(vio.read_frames(vio.probe(path)))


@pytest.fixture(scope="module")
def pan():
    return pan_frames(load_image(REPO / "examples" / "coffee.png"), 16, (64, 96))


@pytest.fixture
def clip(tmp_path, pan):
    return write_clip(pan, tmp_path / "pan.mp4", fps=12, tone_hz=440)


# ----------------------------------------------------------------------------- io

def test_probe_and_seek_read_the_same_frames(clip, pan):
    src = vio.probe(clip)
    assert (src.frames, src.fps, src.size, src.has_audio) == (16, 12, (64, 96), True)
    every = frames_of(clip)
    assert len(every) == 16
    assert numpy.abs(every[5].astype(int) - pan[5]).mean() < 6     # lossy, but the same picture
    middle = list(vio.read_frames(src, 9, 13))                      # entered by a seek
    assert len(middle) == 4
    for a, b in zip(middle, every[9:13]):
        numpy.testing.assert_array_equal(a, b)
    assert [f.shape for f in vio.read_frames(src, 0, 2, size=(32, 48))] == [(32, 48, 3)] * 2


@pytest.mark.parametrize("degrees,hflip", [(90, False), (0, True), (90, True), (180, False),
                                            (180, True), (270, True)])
def test_a_rotated_or_mirrored_video_is_read_as_shown(tmp_path, pan, degrees, hflip):
    """Phones store portrait video sideways with a display matrix, front cameras sometimes
    mirrored; frames come out as shown: turned counter-clockwise, then mirrored (PyAV's and
    FFmpeg's order).  ``frame.rotation`` alone reads a plain mirror as a half turn."""
    import av
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=12)
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        if not hasattr(s, "set_display_rotation"):
            pytest.skip("this PyAV cannot write a display matrix")
        s.set_display_rotation(degrees, hflip=hflip)
        for f in pan[:3]:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    shown = (96, 64) if degrees % 180 else (64, 96)
    src = vio.probe(path)
    assert src.size == shown
    frames = list(vio.read_frames(src))
    assert [f.shape for f in frames] == [shown + (3,)] * 3
    # the eight ways to show the stored frame; only the right one is close
    ways = {(k, m): numpy.rot90(pan[1], k)[:, ::-1] if m else numpy.rot90(pan[1], k)
            for k in range(4) for m in (False, True)}
    errors = {way: numpy.abs(frames[1].astype(int) - a).mean() for way, a in ways.items() if a.shape == frames[1].shape}
    want = (degrees // 90, hflip)
    assert errors[want] < 6
    assert min(e for way, e in errors.items() if way != want) > 20


def test_gif_input(tmp_path, pan):
    from PIL import Image
    ims = [Image.fromarray(f) for f in pan[:6]]
    ims[0].save(tmp_path / "pan.gif", save_all=True, append_images=ims[1:], duration=100, loop=0)
    src = vio.probe(tmp_path / "pan.gif")
    assert (src.frames, src.fps, src.size) == (6, 10, (64, 96))
    frames = list(vio.read_frames(src))
    assert len(frames) == 6 and numpy.abs(frames[3].astype(int) - pan[3]).mean() < 4   # a 256-colour palette
    assert len(list(vio.read_frames(src, 2, 5))) == 3


def test_join_segments_keeps_frames_order_and_audio(tmp_path, clip, pan):
    parts = []
    for start, stop in ((0, 6), (6, 11), (11, 16)):
        p = tmp_path / f"{start:06d}.mp4"
        with vio.SegmentWriter(p, 12, (64, 96)) as seg:
            for f in pan[start:stop]:
                seg.write(f)
        parts.append(p)
    out = tmp_path / "joined.mp4"
    assert vio.join_segments(parts, out, 12, audio_from=vio.probe(clip)) == 16
    src = vio.probe(out)
    assert (src.frames, src.fps, src.has_audio) == (16, 12, True)
    joined = frames_of(out)
    for i in (0, 5, 6, 10, 11, 15):      # each frame where it belongs, across the joins
        errors = [numpy.abs(joined[i].astype(int) - p).mean() for p in pan]
        assert int(numpy.argmin(errors)) == i
    import av
    with av.open(str(out)) as c:
        a = c.streams.audio[0]
        audio_end = max(float((p.pts + p.duration) * a.time_base) for p in c.demux(a) if p.pts is not None)
    assert audio_end <= 16 / 12 + 0.05
    # with the counts the caller knows, no segment is demuxed to count it, and the file is the same
    counted = vio._count_packets
    vio._count_packets = lambda path: pytest.fail(f"{path} demuxed a second time")
    try:
        again = tmp_path / "again.mp4"
        assert vio.join_segments(parts, again, 12, audio_from=vio.probe(clip), frame_counts=[6, 5, 5]) == 16
    finally:
        vio._count_packets = counted
    assert again.read_bytes() == out.read_bytes()


def test_webm_output_reencodes_the_audio(tmp_path, clip, pan):
    seg = tmp_path / "000000.webm"
    with vio.SegmentWriter(seg, 12, (64, 96)) as w:
        for f in pan[:4]:
            w.write(f)
    out = tmp_path / "out.webm"
    vio.join_segments([seg], out, 12, audio_from=vio.probe(clip))    # aac cannot go into webm
    assert vio.probe(out).has_audio and vio.probe(out).frames == 4


def test_odd_sizes_are_written_in_full_chroma(tmp_path, pan):
    with vio.SegmentWriter(tmp_path / "odd.mp4", 12, (63, 95)) as w:
        for f in pan[:3]:
            w.write(f[:63, :95])
    back = frames_of(tmp_path / "odd.mp4")
    assert len(back) == 3 and back[0].shape == (63, 95, 3)
    assert numpy.abs(back[1].astype(int) - pan[1][:63, :95]).mean() < 6


# ----------------------------------------------------------------------------- flow and metric

def textured(h=48, w=64, seed=0):
    import cv2
    rng = numpy.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3)).astype(numpy.uint8), (0, 0), 1.2)


def test_warp_follows_the_flow():
    img = numpy.arange(20 * 30, dtype=numpy.float32).reshape(20, 30)
    flow = numpy.zeros((20, 30, 2), numpy.float32)
    flow[..., 0], flow[..., 1] = 3, -2                  # sample 3 right and 2 up
    out = temporal.warp(img, flow)
    numpy.testing.assert_allclose(out[5:, :20], img[3:18, 3:23])
    flow[..., 0], flow[..., 1] = 0.5, 0
    numpy.testing.assert_allclose(temporal.warp(img, flow)[:, :29], (img[:, :29] + img[:, 1:]) / 2, rtol=1e-5)


def test_consistency_check():
    h, w = 20, 30
    b = numpy.zeros((h, w, 2), numpy.float32)
    b[..., 0] = 2                                      # x came from x + 2 ...
    f = -b                                             # ... and goes back: consistent
    mask = temporal.consistent(b, f)
    assert mask[:, :w - 2].all() and not mask[:, w - 2:].any()   # the last 2 columns came from outside
    bad = temporal.consistent(b, b)                     # forward = backward: off by 4 px
    assert not bad.any()
    small = temporal.consistent(b, -b + 0.3)            # 0.3 px of slack is within the 0.5 px^2 term
    assert small[:, :w - 2].all()


def test_dis_flow_finds_a_pan_and_the_metric_measures_what_it_says():
    big = textured(80, 120)
    prev, cur = big[10:58, 10:74], big[10:58, 14:78]   # the camera moved 4 px right
    backward, mask = temporal.Flow().between(temporal.grey(prev), temporal.grey(cur))
    inner = (slice(8, -8), slice(8, -12))
    assert numpy.abs(backward[inner][..., 0] - 4).mean() < 0.3
    assert numpy.abs(backward[inner][..., 1]).mean() < 0.3
    assert mask[inner].mean() > 0.9 and not mask[:, -2:].any()
    prev_f, cur_f = prev / 255.0, cur / 255.0
    assert temporal.temporal_error(prev_f, cur_f, backward, mask) < 3       # a steady pan: ~0
    flicker = numpy.clip(cur_f + 0.1, 0, 1)                                   # the same + 25.5 levels
    err = temporal.temporal_error(prev_f, flicker, backward, mask)
    assert 20 < err < 27
    assert temporal.temporal_error(prev_f, cur_f, backward, numpy.zeros_like(mask)) is None


def test_consistency_and_temporal_error_match_their_definitions():
    # the check and the metric written with the flow's and the colours' sums as reductions (the
    # definitions above them); the module writes those sums out for speed
    rng = numpy.random.default_rng(3)
    h, w = 40, 56
    ys, xs = numpy.mgrid[0:h, 0:w]
    b = numpy.stack([2 + numpy.sin(ys / 7), numpy.cos(xs / 9)], axis=2).astype(numpy.float32)   # a smooth motion
    f = -b + (rng.standard_normal((h, w, 2)) * 0.6).astype(numpy.float32)                      # back, roughly
    fw = temporal.warp(f, b)
    tx, ty = xs.astype(numpy.float32) + b[..., 0], ys.astype(numpy.float32) + b[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    b64, fw64 = b.astype(numpy.float64), fw.astype(numpy.float64)
    margin = 0.01 * ((b64 ** 2).sum(axis=2) + (fw64 ** 2).sum(axis=2)) + 0.5 - ((b64 + fw64) ** 2).sum(axis=2)
    mask = temporal.consistent(b, f)
    assert 0.2 < mask.mean() < 0.9
    decided = numpy.abs(margin) > 1e-4          # float32 rounding may go either way on the threshold itself
    assert decided.mean() > 0.99 and (mask == (inside & (margin >= 0)))[decided].all()
    prev, cur = rng.random((h, w, 3)).astype(numpy.float32), rng.random((h, w, 3)).astype(numpy.float32)
    per_pixel = numpy.abs(cur - temporal.warp(prev, b)).mean(axis=2)
    assert temporal.temporal_error(prev, cur, b, mask) == pytest.approx(per_pixel[mask].mean() * 255, rel=1e-5)


def test_scene_cuts_are_found():
    a = load_image(REPO / "examples" / "coffee.png")[:200, :300]
    b = load_image(REPO / "examples" / "astronaut.png")[:200, :300]
    assert temporal.histogram_distance(a, a) == 0
    assert temporal.histogram_distance(a, b) > temporal.SCENE_CUT_DISTANCE
    assert temporal.histogram_distance(a, numpy.roll(a, 5, axis=1)) < 0.1
    state = temporal.TemporalState()
    assert state.step(a).cut                      # the first frame starts a shot
    assert not state.step(numpy.roll(a, 2, axis=1)).cut
    assert state.step(b).cut


def test_restore_contrast():
    rng = numpy.random.default_rng(1)
    fresh = rng.random((64, 64, 3)).astype(numpy.float32)
    other = rng.random((64, 64, 3)).astype(numpy.float32)
    numpy.testing.assert_allclose(temporal.restore_contrast(fresh, fresh), fresh, atol=1e-4)
    blended = 0.5 * fresh + 0.5 * other               # half the variance of either
    restored = temporal.restore_contrast(blended, fresh)
    assert blended.std() < 0.75 * fresh.std()
    assert abs(restored.std() / fresh.std() - 1) < 0.1      # (clipping to [0, 1] costs a little)
    # the local mean stays the blend's
    import cv2
    numpy.testing.assert_allclose(cv2.GaussianBlur(restored, (0, 0), 4), cv2.GaussianBlur(blended, (0, 0), 4),
                                  atol=0.03)
    # the formula, with a blur per image and per square (the module blurs the four stacked, in place)
    blur = lambda a: cv2.GaussianBlur(a, (0, 0), 2.0)   # noqa: E731
    m_b, m_f = blur(blended), blur(fresh)
    gain = numpy.minimum(numpy.sqrt(numpy.maximum(blur(fresh * fresh) - m_f * m_f, 0)
                                    / numpy.maximum(blur(blended * blended) - m_b * m_b, 1e-6)), 3.0)
    numpy.testing.assert_allclose(restored, numpy.clip(m_b + (blended - m_b) * gain, 0, 1), atol=1e-6)
    assert restored.dtype == numpy.float32 and temporal.restore_contrast(blended.astype(float), fresh).dtype == float


def test_stats_smoothing_is_an_average_that_restarts_at_cuts():
    import xnn
    from xnn.video.stylize import VideoStylizer
    from xnn.video.temporal import Step

    class Fake:
        eps = 1e-5
        device = xnn.device("cpu")

    vs = VideoStylizer.__new__(VideoStylizer)
    vs.stylizer, vs.stats_momentum, vs.mean, vs.std = Fake(), 0.75, None, None
    means = numpy.arange(4, dtype=numpy.float64).reshape(4, 1, 1, 1) * 8
    stds = means + 1
    m, s = vs._smoothed((means, stds), [Step(cut=True), Step(cut=False), Step(cut=False), Step(cut=True)])
    expect = [0, 0.25 * 8, 0.75 * 2 + 0.25 * 16, 24]
    numpy.testing.assert_allclose(m.ravel(), expect)
    numpy.testing.assert_allclose(s.ravel(), [1, 3, 0.75 * 3 + 0.25 * 17, 25])


def test_adain_with_given_content_stats():
    from xnn.layers.adain import adain_with_stats, channel_stats
    rng = numpy.random.default_rng(0)
    c = rng.standard_normal((2, 3, 5, 4))
    mt, st = rng.random((1, 3, 1, 1)), rng.random((1, 3, 1, 1)) + 0.5
    numpy.testing.assert_allclose(adain_with_stats(c, mt, st, content_stats=channel_stats(c)),
                                  adain_with_stats(c, mt, st))
    mc, sc = rng.random((2, 3, 1, 1)), rng.random((2, 3, 1, 1)) + 0.5
    numpy.testing.assert_allclose(adain_with_stats(c, mt, st, alpha=0.6, content_stats=(mc, sc)),
                                  0.6 * (st * (c - mc) / sc + mt) + 0.4 * c)


# ----------------------------------------------------------------------------- the experiment

@pytest.fixture
def need_weights():
    weights_path("adain_vgg_normalised_to_relu4_1.npz")
    weights_path("adain_decoder.npz")


def run_video(tmp_path, name, *sets):
    out = tmp_path / name
    args = [CFG] + SMALL + ["--out", str(out)]
    for s in sets:
        args += ["--set", s]
    code = main(args)
    return code, out


def test_video_run_keeps_count_rate_size_and_audio(tmp_path, clip, need_weights):
    code, out = run_video(tmp_path, "run", f"input={clip}", "image_size=80", "save_frames=true", "chunk_frames=6")
    assert code == 0
    src = vio.probe(out / "output.mp4")
    assert (src.frames, src.fps, src.size, src.has_audio) == (16, 12, (54, 80), True)
    assert sorted(p.name for p in (out / "frames").iterdir()) == [f"{i:06d}.png" for i in range(16)]
    assert not (out / "segments").exists()
    s = json.loads((out / "summary.json").read_text())
    assert s["complete"] and s["frames"] == 16 and s["temporal"] == "flow" and s["scene_cuts"] == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(16))
    assert rows[0]["temporal_error"] is None and all(r["temporal_error"] > 0 for r in rows[1:])
    assert s["temporal_error_mean"] == pytest.approx(numpy.mean([r["temporal_error"] for r in rows[1:]]))
    # the video holds the frames that frames/ holds
    video = frames_of(out / "output.mp4")
    saved = [load_image(out / "frames" / f"{i:06d}.png").astype(int) for i in range(16)]
    for i in (0, 7, 15):           # lossy (H.264 at 80 px), but each frame is nearest its own PNG
        assert int(numpy.argmin([numpy.abs(video[i] - s).mean() for s in saved])) == i
    assert load_image(out / "summary.png").shape[0] > 100


def test_a_run_checks_its_frames_against_its_input(tmp_path, clip, need_weights, monkeypatch, capsys):
    """summary.json says whether each output frame shows its input frame; a run whose frames do not
    (here: the stylizer made to put out another picture from frame 9 on) says so in one line and
    exits 2 instead of claiming success."""
    code, out = run_video(tmp_path, "good", f"input={clip}", "image_size=80")
    check = json.loads((out / "summary.json").read_text())["frame_check"]
    assert code == 0 and check["passed"] and check["sampled"] == 16 and check["frames_in_output"] == 16
    assert check["structure_correlation_min"] >= check["threshold"] and not check["failing_frames"]
    from xnn.video.stylize import VideoStylizer
    real = VideoStylizer.finish          # every engine's frames come out of finish (process calls it)
    other = load_image(REPO / "examples" / "chelsea.png")

    seen = []

    def wrong(self, painted):
        for out_frame, row in real(self, painted):
            seen.append(1)
            if len(seen) > 9:
                from xnn.data.images import resize_to
                out_frame = resize_to(other, out_frame.shape[:2])
            yield out_frame, row
    monkeypatch.setattr(VideoStylizer, "finish", wrong)
    capsys.readouterr()
    code, out = run_video(tmp_path, "bad", f"input={clip}", "image_size=80")
    err = capsys.readouterr().err
    assert code == 2 and err.count("xnn: error:") == 1 and "does not show its input" in err
    check = json.loads((out / "summary.json").read_text())["frame_check"]
    assert not check["passed"] and check["failing_frames"] and min(check["failing_frames"]) >= 9


def test_a_local_run_enters_the_video_once(tmp_path, clip, need_weights, monkeypatch):
    """engine: local reads its frames in one pass, not one seek per segment."""
    calls = []
    real = vio.read_frames
    monkeypatch.setattr(vio, "read_frames", lambda src, start=0, stop=None, size=None:
                        calls.append((start, stop)) or real(src, start, stop, size))
    code, out = run_video(tmp_path, "run", f"input={clip}", "image_size=80", "chunk_frames=4")
    assert code == 0 and json.loads((out / "summary.json").read_text())["complete"]
    assert calls[0] == (0, 16)                                   # the run's own pass
    assert [c for c in calls[1:] if c[1] is not None and c[1] - c[0] == 4] == []   # no read per segment


def test_a_corrupt_frame_in_a_folder_stops_the_run_and_keeps_what_is_done(tmp_path, pan, need_weights, capsys):
    """A JPEG whose header reads but whose data is cut off passes the probe and fails when the run
    reaches it: the run stops with that file named, joins the finished segments into the output, and
    --resume goes on once the frame is mended."""
    from PIL import Image
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(pan[:12]):
        Image.fromarray(f).save(folder / f"{i:03d}.jpg", quality=90)
    good = (folder / "006.jpg").read_bytes()
    (folder / "006.jpg").write_bytes(good[:len(good) // 2])
    assert vio.probe(folder).frames == 12
    capsys.readouterr()
    code, out = run_video(tmp_path, "run", f"input={folder}", "image_size=96", "chunk_frames=4")
    err = capsys.readouterr().err
    assert code == 2 and err.count("xnn: error:") == 1 and "006.jpg" in err and "frames 0-3 are in output.mp4" in err
    s = json.loads((out / "summary.json").read_text())
    assert s["frames"] == 4 and not s["complete"] and "006.jpg" in s["error"] and s["frame_check"]["passed"]
    assert vio.probe(out / "output.mp4").frames == 4
    (folder / "006.jpg").write_bytes(good)
    assert main(["--resume", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["frames"] == 12 and s["complete"] and "error" not in s


def test_flow_cuts_the_temporal_error_and_stays_stylised(tmp_path, need_weights):
    frames = pan_frames(load_image(REPO / "examples" / "coffee.png"), 20, (96, 144))
    clip = write_clip(frames, tmp_path / "pan.mp4", fps=24)
    result = {}
    for mode in ("none", "flow"):
        code, out = run_video(tmp_path, mode, f"input={clip}", "image_size=144", f"temporal={mode}")
        assert code == 0
        result[mode] = json.loads((out / "summary.json").read_text())
    assert result["flow"]["temporal_error_mean"] <= 0.7 * result["none"]["temporal_error_mean"]
    for sample in result["flow"]["samples"]:
        assert not sample["output_from_video"]
        photo, none, flow = sample["style_loss_input"], sample["style_loss_none"], sample["style_loss_flow"]
        assert none < 0.2 * photo                    # the per-frame output is stylised...
        # ... and the steady one goes at least 80 % of the way from the photo to it (style loss)
        assert (photo - flow) / (photo - none) >= 0.8
        assert sample["stylisation_kept"] == pytest.approx((photo - flow) / (photo - none))
        assert sample["temporal_error_flow"] < sample["temporal_error_none"]


def test_a_scene_cut_restarts_the_temporal_state(tmp_path, pan, need_weights):
    other = pan_frames(load_image(REPO / "examples" / "astronaut.png"), 6, (64, 96))
    clip = write_clip(pan[:6] + other, tmp_path / "cut.mp4", fps=12)
    code, out = run_video(tmp_path, "run", f"input={clip}", "image_size=96", "chunk_frames=5")
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows if r["scene_cut"]] == [6]      # not frame 0, not the chunk border at 5
    assert rows[6]["temporal_error"] is None and rows[7]["temporal_error"] is not None
    assert json.loads((out / "summary.json").read_text())["scene_cuts"] == 1
    assert vio.probe(out / "output.mp4").frames == 12


def test_folder_of_frames_plays_at_fps(tmp_path, pan, need_weights):
    from PIL import Image
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(pan[:5]):
        Image.fromarray(f).save(folder / f"shot_{i:03d}.png")
    code, out = run_video(tmp_path, "run", f"input={folder}", "fps=8", "image_size=null", "temporal=stats",
                          "output=clip.mkv")
    assert code == 0
    src = vio.probe(out / "clip.mkv")
    assert (src.frames, src.fps, src.size, src.has_audio) == (5, 8, (64, 96), False)


def _on_frame(monkeypatch, n, action):
    """Run ``action()`` as the n-th stylised frame comes out of VideoStylizer.finish (every engine's
    frames do; process calls it); returns the original finish, to put back for a resume."""
    from xnn.video import stylize
    finish, made = stylize.VideoStylizer.finish, []

    def wrapped(self, painted):
        for item in finish(self, painted):
            made.append(1)
            if len(made) == n:
                action()
            yield item

    monkeypatch.setattr(stylize.VideoStylizer, "finish", wrapped)
    return finish


def _ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


def _abort():
    raise KeyboardInterrupt


def test_stop_keeps_what_is_done_and_resume_finishes(tmp_path, clip, need_weights, monkeypatch):
    from xnn.video import stylize
    process = _on_frame(monkeypatch, 6, _ctrl_c)     # Ctrl-C during the second batch
    code, out = run_video(tmp_path, "run", f"input={clip}", "image_size=80", "batch_size=4")
    assert code == 130
    partial = vio.probe(out / "output.mp4")
    assert partial.frames == 8 and partial.has_audio          # the two batches begun are finished
    assert (out / "segments" / "000000.mp4").is_file()
    monkeypatch.setattr(stylize.VideoStylizer, "finish", process)
    assert main(["--resume", str(out), "--quiet"]) == 0
    src = vio.probe(out / "output.mp4")
    assert src.frames == 16 and src.has_audio and not (out / "segments").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sorted({r["frame"] for r in rows}) == list(range(16))
    assert json.loads((out / "summary.json").read_text())["complete"]


def test_resume_after_an_abort_logs_each_frame_once(tmp_path, clip, need_weights, monkeypatch):
    """A second Ctrl-C (an abort) in the middle of the only segment: its frames are lost and
    stylised again on resume, and metrics.jsonl holds each frame once, in order."""
    from xnn.video import stylize
    process = _on_frame(monkeypatch, 6, _abort)
    code, out = run_video(tmp_path, "run", f"input={clip}", "image_size=64", "temporal=none", "batch_size=4")
    assert code == 130 and len((out / "metrics.jsonl").read_text().splitlines()) == 5
    monkeypatch.setattr(stylize.VideoStylizer, "finish", process)
    assert main(["--resume", str(out), "--quiet"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(16))


def test_a_stop_at_the_last_frame_is_no_stop(tmp_path, clip, need_weights, monkeypatch):
    _on_frame(monkeypatch, 16, _ctrl_c)              # Ctrl-C as the last frame comes out
    code, out = run_video(tmp_path, "run", f"input={clip}", "image_size=64", "temporal=none", "batch_size=4")
    assert code == 0 and vio.probe(out / "output.mp4").frames == 16
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and not summary["stopped"]


def test_resume_refuses_changed_keys_and_finished_runs(tmp_path, clip, capsys, need_weights):
    code, out = run_video(tmp_path, "run", f"input={clip}", "image_size=64", "temporal=none")
    assert code == 0
    assert_one_line_error(capsys, ["--resume", out, "--quiet"], "complete")
    assert_one_line_error(capsys, ["--resume", out, "--set", "image_size=96", "--quiet"], "image_size changed")


# ----------------------------------------------------------------------------- bad input

def test_bad_videos_get_one_line_and_leave_nothing(tmp_path, capsys, clip, need_weights):
    run = tmp_path / "run"

    def refused(inp, *needles, extra=()):
        assert_one_line_error(capsys, [CFG, "--set", f"input={inp}", *extra, "--out", run, "--quiet"], *needles,
                              absent=[run])

    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(os.urandom(5000))
    refused(corrupt, "cannot read video", "corrupt")
    # a file cut short: its header (written first) announces more frames than it holds
    whole = tmp_path / "whole.mp4"
    import av
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as c:
        v = c.add_stream("libx264", rate=12)
        v.width, v.height, v.pix_fmt = 96, 64, "yuv420p"
        for i, f in enumerate(pan_frames(load_image(REPO / "examples" / "coffee.png"), 24, (64, 96))):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            c.mux(v.encode(vf))
        c.mux(v.encode())
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) * 2 // 3])
    refused(cut, "cut.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here")
    refused(empty, "has no frames")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    from PIL import Image
    Image.new("RGB", (32, 24)).save(mixed / "a.png")
    Image.new("RGB", (30, 24)).save(mixed / "b.png")
    refused(mixed, "differ in size", "a.png", "b.png")
    audio_only = write_audio_only(tmp_path / "tone.mp4")
    refused(audio_only, "no video stream")
    refused(tmp_path / "missing.mp4", "not found")
    refused(clip, "output", extra=["--set", "output=out.avi"])
    refused(clip, "temporal", extra=["--set", "temporal=optical"])


def test_ray_engine_without_ray_or_an_answering_cluster(tmp_path, capsys, clip, monkeypatch, need_weights):
    import socket
    import sys
    import threading
    import time

    from xnn.engines import ray as ray_engine
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "ray", None)      # as if Ray were not installed
        assert_one_line_error(capsys, [CFG, "--set", f"input={clip}", "--set", "engine=ray", "--out", run, "--quiet"],
                              "pip install 'xnn[ray]'", absent=[run])
    pytest.importorskip("ray.data")
    argv = [CFG, "--set", f"input={clip}", "--set", "image_size=64", "--set", "engine=ray", "--out", run, "--quiet"]
    # nothing listens on port 1: refused at once
    assert_one_line_error(capsys, argv + ["--set", "ray_address=127.0.0.1:1"], "no Ray cluster answers", absent=[run])
    assert_one_line_error(capsys, argv + ["--set", "ray_address=my-cluster"], "not host:port", absent=[run])
    # something that accepts connections and then says nothing: a bounded wait, not a hang
    monkeypatch.setattr(ray_engine, "CONNECT_TIMEOUT_S", 1.0)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(server.accept()) for _ in range(8)], daemon=True).start()
    t = time.perf_counter()
    assert_one_line_error(capsys, argv + ["--set", f"ray_address=127.0.0.1:{server.getsockname()[1]}"],
                          "no Ray cluster answers", "timed out", absent=[run])
    assert time.perf_counter() - t < 10
    server.close()


def test_check_address_accepts_a_real_grpc_server():
    """The probe's HTTP/2 handshake, against a Ray GCS started for the test."""
    ray = pytest.importorskip("ray")
    from xnn.engines import ray as ray_engine
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        ray_engine.check_address(ray.get_runtime_context().gcs_address, timeout=5)
    finally:
        ray.shutdown()


@pytest.mark.parametrize("mode", ["none", "stats", "flow"])
def test_video_stylizer_runs_on_every_device(dev, mode, pan):
    """The temporal state lives on the device (statistics) and the host (frames, flow): the strict
    stand-in proves no NumPy call touches a device array."""
    from xnn.layers.adain import blend_stats
    from xnn.models.adain import AdaINStylizer, adain_decoder, adain_encoder
    from xnn.video.stylize import VideoStylizer
    st = AdaINStylizer(adain_encoder(None, device=dev), adain_decoder(None, device=dev))
    target = blend_stats([st.encode_style(pan[0][:40, :40])])
    vs = VideoStylizer(st, target, temporal=mode)
    outs = [o for o, _ in vs.process(pan[:3])] + [o for o, _ in vs.process(pan[3:5])]
    assert len(outs) == 5 and all(o.shape == (64, 96, 3) and o.dtype == numpy.uint8 for o in outs)


# ----------------------------------------------------------------------------- engine: local's two stages

class _RecordingStylizer:
    """A stand-in VideoStylizer: paint and finish log what they do; finish puts out the frames' numbers."""

    def __init__(self, log):
        self.log = log

    def process(self, frames):
        yield from self.finish(self.paint(frames))

    def paint(self, frames):
        import threading
        import cv2
        self.log.append(("paint", [int(f) for f in frames], threading.current_thread().name))
        self.log.append(("opencv threads", cv2.getNumThreads()))
        return [int(f) for f in frames]

    def finish(self, painted):
        for f in painted:
            self.log.append(("out", f))
            yield f, {}


def _local_frames(monkeypatch, n, first=0, stop_after=None, unreadable=None, batch=2, chunk=4, warmup=0):
    """engine: local's frames() over frames 0..n-1 (numbered, not pictures), with the reader and the
    stylizer replaced; returns (what came out, the log of paint / out events, the error raised)."""
    import types
    from xnn.engines import local
    from xnn.errors import XnnError

    def reader(src, start, stop, size):
        for i in range(start, stop):
            if i == unreadable:
                raise XnnError(f"cannot read frame {i}")
            log.append(("read", i))
            yield i
    monkeypatch.setattr(vio, "read_frames", reader)
    log, out = [], []
    job = types.SimpleNamespace(cfg={"chunk_frames": chunk, "batch_size": batch, "warmup_frames": warmup},
                                video_stylizer=lambda device, stylizer: _RecordingStylizer(log))
    source = types.SimpleNamespace(frames=n)
    try:
        for start, f, _ in local.frames(job, source, None, first, None,
                                        lambda: stop_after is not None and len(out) >= stop_after):
            out.append((start, f))
    except XnnError as e:
        return out, log, str(e)
    return out, log, None


def test_local_engine_paints_one_batch_ahead_and_keeps_the_order(monkeypatch):
    out, log, error = _local_frames(monkeypatch, 9)
    assert error is None and out == [(0, 0), (0, 1), (0, 2), (0, 3), (4, 4), (4, 5), (4, 6), (4, 7), (8, 8)]
    # batches end at batch_size or at a segment's end, are painted on the painter's thread, and the next
    # batch is read (and handed to that thread) before this one comes out
    paints = [e for e in log if e[0] == "paint"]
    assert [e[1] for e in paints] == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert all(e[2].startswith("xnn-paint") for e in paints)
    assert log.index(("read", 3)) < log.index(("out", 0)) and log.index(("read", 8)) < log.index(("out", 6))
    # a resume at frame 5 with 2 warm-up frames: 3 and 4 are painted and finished here, not put out
    out, log, _ = _local_frames(monkeypatch, 9, first=5, warmup=2)
    assert out == [(5, 5), (5, 6), (5, 7), (5, 8)]                # segments count from the resume
    assert [e for e in log if e[0] not in ("read", "opencv threads")][:3] == [("paint", [3, 4], "MainThread"),
                                                                               ("out", 3), ("out", 4)]


def test_local_engine_runs_opencv_on_one_thread_and_puts_the_setting_back(monkeypatch):
    import cv2
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(3)
        out, log, _ = _local_frames(monkeypatch, 5)
        assert len(out) == 5
        assert [e[1] for e in log if e[0] == "opencv threads"] == [1, 1, 1]   # while each batch is painted
        assert cv2.getNumThreads() == 3                                        # the caller's setting again
        _local_frames(monkeypatch, 9, unreadable=5)                            # also after an error
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_local_engine_stops_and_fails_where_it_did_before_the_two_stages(monkeypatch):
    out, log, _ = _local_frames(monkeypatch, 9, stop_after=3)    # asked during the second batch
    assert out == [(0, 0), (0, 1), (0, 2), (0, 3)]               # that batch comes out; the one ahead does not
    assert ("out", 4) not in log
    out, log, error = _local_frames(monkeypatch, 9, unreadable=5)
    assert out == [(0, 0), (0, 1), (0, 2), (0, 3)] and error == "cannot read frame 5"
    out, log, error = _local_frames(monkeypatch, 9, unreadable=0)
    assert out == [] and error == "cannot read frame 0"
