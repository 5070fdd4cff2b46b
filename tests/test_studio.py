"""The studio driven over loopback through its API (gradio_client), as the page drives it.

One server for the module, on 127.0.0.1 in this process, with its own run folder.  The
checks: an instant AdaIN picture equals the CLI's for the same inputs; a Paint job runs,
streams previews, stops on request and leaves a folder the CLI resumes; bad uploads get
xnn's message and leave the server running; nothing is written outside the studio's folder.
"""
import json
import pathlib
import subprocess
import sys
import time

import numpy
import pytest
from PIL import Image

from xnn.data.images import load_image
from xnn.errors import XnnError

from .conftest import REPO, weights_path

gradio = pytest.importorskip("gradio", reason="the studio extra (pip install 'xnn[studio]') is not installed")
gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

CHELSEA = REPO / "examples" / "chelsea.png"
ADAIN = "AdaIN (any style)"
# Gradio's queue calls pandas with options pandas 3 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from xnn.studio import serve
    weights_path("adain_decoder.npz")
    root = tmp_path_factory.mktemp("studio") / "runs"
    st, page, url = serve(root)
    # the warm-up's pictures share the CPU's thread pools: comparisons with the CLI wait for it
    assert st.warm.wait(300)
    client = Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))
    yield st, client, root
    st.close()
    page.close()


def instant(client, photo, style=None, names=("starry_night",), blend="", alpha=1.0, size=512, colours=False,
            method=ADAIN):
    return client.predict(handle_file(str(photo)), handle_file(str(style)) if style else None, list(names), blend,
                          alpha, 512, size, colours, method, api_name="/instant")


def wait(client, kind, job, until, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        r = client.predict(job, api_name=f"/watch_{kind}")
        if until(r):
            return r
        time.sleep(0.5)
    raise AssertionError(f"{kind} job {job}: still {r[1]!r} after {timeout} s")


def test_the_server_listens_on_loopback_only(studio):
    st, client, _ = studio
    assert client.src.startswith("http://127.0.0.1:")


def test_instant_adain_equals_the_cli(studio, tmp_path):
    """The same photo, two styles blended 2:1, alpha 0.8, at 256 px: the page's picture and the
    CLI's output.png are the same pixels."""
    from xnn.cli import main
    _, client, _ = studio
    styles = ["the_scream", "starry_night"]
    path, took = instant(client, CHELSEA, names=styles, blend="2, 1", alpha=0.8, size=256)
    got = load_image(path)
    code = main(["configs/adain.yaml", "--out", str(tmp_path / "cli"), "--quiet", "--set", "image_size=256",
                 "--set", "alpha=0.8", "--set", "style_image=[examples/the_scream.jpg, examples/starry_night.jpg]",
                 "--set", "style_blend_weights=[2, 1]"])
    assert code == 0
    want = load_image(tmp_path / "cli" / "output.png")
    assert got.shape == want.shape == (170, 256, 3)
    numpy.testing.assert_array_equal(got, want)
    assert "256x170 px in" in took


def test_instant_with_the_shipped_fast_style_model_equals_the_cli(studio, tmp_path):
    from xnn.cli import main
    _, client, _ = studio
    path, _ = instant(client, CHELSEA, size=256, method="starry_night (shipped)")
    assert main(["configs/fast_style.yaml", "--out", str(tmp_path / "cli"), "--quiet", "--set", "image_size=256"]) == 0
    numpy.testing.assert_array_equal(load_image(path), load_image(tmp_path / "cli" / "output.png"))


def test_an_uploaded_style_is_used(studio, tmp_path):
    """A style upload (a flat red picture) moves the result toward red; the example's does not."""
    _, client, _ = studio
    red = tmp_path / "red.png"
    Image.fromarray(numpy.full((64, 64, 3), (220, 20, 20), numpy.uint8)).save(red)
    path, _ = instant(client, CHELSEA, style=red, names=(), size=128)
    out = load_image(path).astype(float)
    assert out[..., 0].mean() > out[..., 1].mean() + 40 and out[..., 0].mean() > out[..., 2].mean() + 40


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"this is not a picture"), "not a readable image"),
    (lambda p: p.write_bytes(CHELSEA.read_bytes()[:3000]), "not a readable image: Truncated"),
    (lambda p: Image.new("1", (9000, 9000)).save(p), "9000x9000 px.*up to 64 Mpx"),  # 81 Mpx in 10 kB
])
def test_bad_uploads_get_their_message_and_the_server_goes_on(studio, tmp_path, make, message):
    _, client, _ = studio
    bad = tmp_path / "upload.png"
    make(bad)
    with pytest.raises(AppError, match="the photo is " + message):
        instant(client, bad)
    with pytest.raises(AppError, match="the style image is " + message):
        instant(client, CHELSEA, style=bad, names=())
    path, _ = instant(client, CHELSEA, size=128)       # still serving
    assert load_image(path).shape == (85, 128, 3)


def test_bad_settings_are_refused_in_the_page_before_a_job_exists(studio):
    st, client, root = studio
    before = set(root.iterdir())
    with pytest.raises(AppError, match="tv_wieght.*tv_weight"):
        client.predict(handle_file(str(CHELSEA)), None, ["starry_night"], "", "style.yaml", 64, 5, None, None, False,
                       "tv_wieght=0", api_name="/paint")
    with pytest.raises(AppError, match="blend weights: 1 number"):
        client.predict(handle_file(str(CHELSEA)), None, ["starry_night", "the_scream"], "3", "style.yaml", 64, 5,
                       None, None, False, "", api_name="/paint")
    with pytest.raises(AppError, match="no style"):
        instant(client, CHELSEA, names=())
    for line in ("content_image=/etc/hostname", "init_image=/tmp/x.png", "weights=/tmp"):
        with pytest.raises(AppError, match="names a file; the studio takes files as uploads only"):
            client.predict(handle_file(str(CHELSEA)), None, ["starry_night"], "", "style.yaml", 64, 5, None, None,
                           False, line, api_name="/paint")
    assert {p for p in root.iterdir() if p.name.startswith("studio-")} == {
        p for p in before if p.name.startswith("studio-")}


def test_a_paint_job_streams_previews_stops_and_resumes_with_the_cli(studio):
    """64 px, 2000 iterations asked: the page sees progress.png and the loss curve; Stop ends it
    with the image and a checkpoint; the CLI's --resume finishes it (here: 5 more iterations)."""
    st, client, root = studio
    job, status = client.predict(handle_file(str(CHELSEA)), None, ["starry_night"], "", "style.yaml", 64, 2000, None,
                                 None, False, "optimizer=adam", api_name="/paint")
    assert "Job" in status
    r = wait(client, "paint", job, lambda r: r[2] is not None)     # a preview is shown
    assert "running" in r[1] and "/ 2000 iterations" in r[1]
    assert load_image(r[2]).shape == (43, 64, 3)
    assert len(r[3]["data"]) >= 1                                  # the loss curve has points
    assert "stopping" in client.predict(job, api_name="/stop_paint")
    r = wait(client, "paint", job, lambda r: "running" not in r[1])
    assert "stopped" in r[1] and "--resume" in r[1]
    run_dir = st.queue.jobs[job].run_dir
    assert run_dir.parent == root
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.npz", "output.png"):
        assert (run_dir / name).is_file(), name
    done = int(numpy.load(run_dir / "checkpoint.npz")["iteration"])
    assert 0 < done < 2000
    cli = subprocess.run([sys.executable, "run.py", "--resume", str(run_dir), "--quiet", "--set",
                          f"num_iterations={done + 5}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"] == done + 5


def test_jobs_queue_one_at_a_time_and_a_queued_job_can_be_dropped(studio):
    st, client, _ = studio
    first, _ = client.predict(handle_file(str(CHELSEA)), None, ["starry_night"], "", "style.yaml", 64, 2000, None,
                              None, False, "optimizer=adam", api_name="/paint")
    second, status = client.predict(handle_file(str(CHELSEA)), None, ["the_scream"], "", "style.yaml", 64, 10, None,
                                    None, False, "", api_name="/paint")
    wait(client, "paint", first, lambda r: "running" in r[1])
    r = client.predict(second, api_name="/watch_paint")
    assert "queued" in r[1] and f"after job {first}" in r[1]
    assert "removed from the queue" in client.predict(second, api_name="/stop_paint")
    client.predict(first, api_name="/stop_paint")
    wait(client, "paint", first, lambda r: "running" not in r[1])
    assert st.queue.jobs[second].state == "cancelled" and not st.queue.jobs[second].run_dir.exists()


def test_upload_names_never_become_paths(studio, tmp_path):
    """A file uploaded as ``../../x.png`` is stored by the page under its own folder, and the studio
    copies inputs under names it chooses: nothing appears next to the studio's folder."""
    import httpx
    st, client, root = studio
    with open(CHELSEA, "rb") as f:
        r = httpx.post(client.src.rstrip("/") + "/gradio_api/upload", files={"files": ("../../x.png", f, "image/png")})
    r.raise_for_status()
    stored = r.json()[0]
    assert st.cache in pathlib.Path(stored).resolve().parents
    payload = {"path": stored, "meta": {"_type": "gradio.FileData"}, "orig_name": "../../x.png"}
    job, _ = client.predict(payload, None, ["starry_night"], "", "style.yaml", 64, 2, None, None, False, "",
                            api_name="/paint")
    wait(client, "paint", job, lambda r: "running" not in r[1] and "queued" not in r[1])
    cfg = (st.queue.jobs[job].run_dir / "config.yaml").read_text()
    assert "x.png" not in cfg and "content.png" in cfg
    for folder in (root.parent, root.parent.parent):
        assert not (folder / "x.png").exists()


def call_raw(client, api_name, data):
    """One API call as raw HTTP (gradio_client would upload a local path itself): (event, data lines)."""
    import httpx
    base = client.src.rstrip("/") + "/gradio_api/call/" + api_name
    event = httpx.post(base, json={"data": data}).json()["event_id"]
    text = httpx.get(f"{base}/{event}", timeout=60).text
    kinds = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("event:")]
    return kinds[-1], text


def test_a_path_outside_the_studio_is_refused(studio, tmp_path):
    """A client that names a file of the server's instead of uploading one is refused: by Gradio
    (not an upload), and again by the studio (not in its folders or the examples)."""
    st, client, _ = studio
    outside = tmp_path / "secret.png"
    Image.new("RGB", (32, 32)).save(outside)
    payload = {"path": str(outside), "meta": {"_type": "gradio.FileData"}}
    args = [None, ["starry_night"], "", 1.0, 512, 128, False, ADAIN]
    kind, text = call_raw(client, "instant", [payload] + args)
    assert kind == "error" and "not uploaded by a user" in text
    for call in (lambda: st.instant(str(outside)), lambda: st.paint(str(CHELSEA), str(outside), []),
                 lambda: st.train(None, str(outside)), lambda: st.video(str(outside))):
        with pytest.raises(XnnError, match="outside the studio's folders"):
            call()
    assert st.allowed(CHELSEA) == CHELSEA.resolve()


def test_video_uploads_are_checked(studio, tmp_path, monkeypatch):
    pytest.importorskip("av")
    from xnn.studio import uploads
    _, client, _ = studio
    png_as_video = tmp_path / "clip.mp4"
    png_as_video.write_bytes(CHELSEA.read_bytes())
    with pytest.raises(AppError, match="cannot be read"):
        client.predict(handle_file(str(png_as_video)), None, ["starry_night"], "", ADAIN, "flow", 128,
                       api_name="/video")
    monkeypatch.setattr(uploads, "MAX_VIDEO_FRAMES", 10)      # the example clip has 72
    with pytest.raises(AppError, match="72 frames.*up to 10 frames"):
        client.predict(handle_file(str(REPO / "examples" / "coffee_pan.mp4")), None, ["starry_night"], "", ADAIN,
                       "flow", 128, api_name="/video")


def test_a_video_job_runs_to_a_playable_result(studio):
    pytest.importorskip("av")
    pytest.importorskip("cv2")
    from xnn.video.io import probe
    st, client, _ = studio
    job, _ = client.predict(handle_file(str(REPO / "examples" / "coffee_pan.mp4")), None, ["the_scream"], "", ADAIN,
                            "none", 128, api_name="/video")
    r = wait(client, "video", job, lambda r: "running" not in r[1] and "queued" not in r[1], timeout=300)
    assert "done" in r[1] and "72 / 72 frames" in r[1], r[1]
    out = r[4]["video"] if isinstance(r[4], dict) else r[4]
    src = probe(out)
    assert src.frames == 72 and max(src.size) == 128


def test_a_train_job_gives_a_model_the_instant_tab_can_use(studio):
    """Two iterations on the Kodak photos at 64 px: the job ends with model.npz and its preview, and
    the model is offered (and works) as an instant method."""
    st, client, _ = studio
    weights_path("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
    job, _ = client.predict(None, "the_scream", None, 2, 64, 0.1, api_name="/train")
    r = wait(client, "train", job, lambda r: "running" not in r[1] and "queued" not in r[1], timeout=300)
    assert "done" in r[1] and "2 / 2 iterations" in r[1], r[1]
    assert r[2] is not None and pathlib.Path(r[4]).name == "model.npz"
    name = st.queue.jobs[job].run_dir.name
    assert name in st.models()
    path, _ = instant(client, CHELSEA, size=128, method=name)
    assert load_image(path).shape == (85, 128, 3)


def test_runs_tab_lists_and_shows_run_folders(studio):
    st, client, root = studio
    names = client.predict(api_name="/run_list")
    assert names and all((root / n / "config.yaml").is_file() for n in names)
    files = st.run_files(names[0])
    assert files["config"].startswith("#") or "experiment:" in files["config"]
    with pytest.raises(XnnError, match="outside the studio's folders"):
        st.run_files("../..")
    with pytest.raises(XnnError, match="no run 'studio'"):        # the uploads' folder is no run
        st.run_files("studio")


def test_stopping_the_server_stops_the_running_job_resumably(tmp_path):
    """Studio.close (what Ctrl-C on `xnn studio` does): the running job saves and is 'stopped'."""
    from xnn.studio.service import Studio
    st = Studio(tmp_path / "runs")
    job = st.paint(str(CHELSEA), None, ["starry_night"], "", "style.yaml", 64, 2000, more="optimizer=adam")
    end = time.time() + 120
    while not (job.run_dir / "metrics.jsonl").is_file() or st.queue.progress(job.id)["done"] < 2:
        assert time.time() < end
        time.sleep(0.2)
    st.close()
    assert job.state == "stopped", (job.state, job.message)
    assert (job.run_dir / "checkpoint.npz").is_file() and (job.run_dir / "output.png").is_file()


def test_without_the_extra_the_command_is_one_line(monkeypatch, capsys, tmp_path):
    from xnn.cli import main
    monkeypatch.setitem(sys.modules, "gradio", None)        # import gradio fails
    monkeypatch.delitem(sys.modules, "xnn.studio.app", raising=False)
    assert main(["studio", "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xnn: error: the studio needs its extra: pip install 'xnn[studio]'") and "\n" not in err


def test_bad_command_lines_are_one_line(studio, capsys, tmp_path):
    """A port that is not a number, a port in use (the module's server holds one) and a runs folder
    that cannot be made: one `xnn: error:` line each, exit 2."""
    from xnn.cli import main
    _, client, _ = studio
    port = int(client.src.rstrip("/").rsplit(":", 1)[1])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for argv, message in ((["studio", "--port", "abc"], "argument --port: invalid int value: 'abc'"),
                          (["studio", "--port", str(port), "--runs", str(tmp_path / "r")], f"--port {port}: cannot serve"),
                          (["studio", "--runs", str(blocker / "runs")], "cannot make the studio's folders")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("xnn: error:") and message in err and "\n" not in err, err


def test_a_stop_asked_while_the_run_starts_is_not_lost(tmp_path):
    """A studio started where SIGINT is ignored (launched in the background by a shell) passes that on
    to its runs until they install their stop handler; a stop asked in those first seconds used to be
    dropped and the run went on to the end.  The queue now waits for the run to listen first."""
    import signal
    from xnn.experiments.base import read_jsonl
    from xnn.studio.jobs import JobQueue, environment
    q = JobQueue(cwd=REPO, env=environment())
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)     # what the run inherits at its start
    try:
        job = q.submit("paint", "configs/style.yaml", tmp_path / "run",
                       ["image_size=64", "num_iterations=2000", "optimizer=adam", "print_iter=1"], total=2000)
        deadline = time.time() + 30
        while job.proc is None and time.time() < deadline:
            time.sleep(0.01)
        assert job.proc is not None
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "is stopping" in q.stop(job.id)                      # at once: the run is still starting
    deadline = time.time() + 300
    while not job.finished and time.time() < deadline:
        time.sleep(0.2)
    try:
        assert job.state == "stopped", (job.state, job.message)
        iters = [r["iter"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "iter" in r]
        assert iters and max(iters) < 2000
    finally:
        q.shutdown()
