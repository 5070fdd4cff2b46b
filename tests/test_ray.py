"""engine: ray on one machine (a local Ray with the machine's cores): the same outputs as engine: local."""
import json
import pathlib

import numpy
import pytest

pytest.importorskip("ray.data", reason="pip install 'xnn[ray]'")
pytest.importorskip("av", reason="pip install 'xnn[video]'")

from xnn.cli import main  # noqa: E402
from xnn.data.images import load_image  # noqa: E402
from xnn.video import io as vio  # noqa: E402
from xnn.video.clips import pan_frames, write_clip  # noqa: E402

from .conftest import weights_path  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def need_weights():
    weights_path("adain_vgg_normalised_to_relu4_1.npz")
    weights_path("adain_decoder.npz")


def psnr(a, b):
    mse = numpy.mean((a.astype(numpy.float64) - b.astype(numpy.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * numpy.log10(255 ** 2 / mse)


def test_folder_on_ray_equals_local(tmp_path):
    from PIL import Image
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png", "astronaut.png"):
        Image.open(REPO / "examples" / name).save(folder / name.replace(".png", ".jpg" if "coffee" in name else ".png"))
    (folder / "broken.png").write_bytes(b"not a png")
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        assert main([str(REPO / "configs" / "adain.yaml"), "--set", f"content_image={folder}", "--set", "image_size=96",
                     "--set", "style_size=64", "--set", f"engine={engine}", "--device", "cpu", "--quiet",
                     "--out", str(out)]) == 0
        outs[engine] = out
        assert json.loads((out / "summary.json").read_text())["engine"] == engine
    names = sorted(p.name for p in (outs["local"] / "outputs").iterdir())
    assert names == ["astronaut.png", "chelsea.png", "coffee.jpg"]       # the broken file is skipped by both
    assert sorted(p.name for p in (outs["ray"] / "outputs").iterdir()) == names
    for name in names:
        assert psnr(load_image(outs["local"] / "outputs" / name), load_image(outs["ray"] / "outputs" / name)) >= 45


def test_video_on_ray_in_chunks(tmp_path):
    frames = pan_frames(load_image(REPO / "examples" / "coffee.png"), 10, (64, 96))
    clip = write_clip(frames, tmp_path / "pan.mp4", fps=10, tone_hz=330)
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        assert main([str(REPO / "configs" / "video.yaml"), "--set", f"input={clip}", "--set", "image_size=96",
                     "--set", "style_size=64", "--set", "chunk_frames=4", "--set", "warmup_frames=3",
                     "--set", f"engine={engine}", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
        runs[engine] = out
    src = vio.probe(runs["ray"] / "output.mp4")
    assert (src.frames, src.fps, src.size, src.has_audio) == (10, 10, (64, 96), True)
    local, ray = (list(vio.read_frames(vio.probe(runs[e] / "output.mp4"))) for e in ("local", "ray"))
    # the first chunk starts where the video does: the same frames; later chunks start from warm-up
    # frames instead of the whole past, so they are close, not equal
    for i in range(4):
        assert psnr(local[i], ray[i]) > 40
    for i in range(4, 10):
        assert psnr(local[i], ray[i]) > 20
    rows = [json.loads(line) for line in (runs["ray"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(10))
    # at chunk borders the warm-up carried the temporal state: no restart (the error is measured)
    assert all(r["temporal_error"] is not None for r in rows[1:])
    s = json.loads((runs["ray"] / "summary.json").read_text())
    assert s["engine"] == "ray" and s["complete"]


def _listening(procs):
    """{(process name, ip, port)} of the TCP sockets the processes listen on (LISTEN; UDP is not used)."""
    import psutil   # Ray ships it (ray/thirdparty_files), importable once ray is
    out = set()
    for p in procs:
        try:
            out |= {(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="tcp")
                    if c.status == psutil.CONN_LISTEN}
        except psutil.NoSuchProcess:   # a worker that ended meanwhile
            pass
    return out


def _loopback(ip):
    import ipaddress
    a = ipaddress.ip_address(ip.split("%")[0])
    return a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None and a.ipv4_mapped.is_loopback)


def test_local_ray_listens_on_loopback_only_with_token_auth(tmp_path, monkeypatch):
    """During a run on a local Ray (no ray_address), every socket its processes (GCS, raylet, workers, actors,
    runtime-env agent, this driver) listen on is a loopback one, and Ray's token authentication is on."""
    import ray
    import psutil
    from ray._raylet import AuthenticationMode, get_authentication_mode
    from xnn.engines import ray as ray_engine
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    seen = {}
    stylise = ray_engine.images

    def watched(*args, **kwargs):
        for row in stylise(*args, **kwargs):
            if not seen:        # the actors are up: the whole Ray is running
                me = psutil.Process()
                seen["sockets"] = _listening([me] + me.children(recursive=True))
                seen["auth"] = get_authentication_mode()
                seen["node_ip"] = ray.util.get_node_ip_address()
            yield row
    monkeypatch.setattr(ray_engine, "images", watched)
    folder = tmp_path / "in"
    folder.mkdir()
    from PIL import Image
    Image.open(REPO / "examples" / "chelsea.png").resize((48, 32)).save(folder / "chelsea.png")
    assert main([str(REPO / "configs" / "adain.yaml"), "--set", f"content_image={folder}", "--set", "image_size=32",
                 "--set", "style_size=32", "--set", "engine=ray", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "out")]) == 0
    names = {name for name, _, _ in seen["sockets"]}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), seen["sockets"]
    assert [s for s in seen["sockets"] if not _loopback(s[1])] == [], seen["sockets"]
    assert seen["auth"] == AuthenticationMode.TOKEN
    assert seen["node_ip"] in ("127.0.0.1", "::1")


@pytest.mark.slow                   # 20 s; test_folder_on_ray_equals_local covers the same engine
def test_fast_style_folder_on_ray_equals_local(tmp_path):
    """The fast style network's job on Ray actors: the same outputs as in this process."""
    from PIL import Image
    from xnn.models import fast_style
    model = tmp_path / "model.npz"
    fast_style.save_model(fast_style.transformer(0.25, seed=3), 0.25, model)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        Image.open(REPO / "examples" / name).save(folder / name)
    outs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        assert main([str(REPO / "configs" / "fast_style.yaml"), "--set", f"input={folder}", "--set", f"model={model}",
                     "--set", "image_size=80", "--set", f"engine={engine}", "--device", "cpu", "--quiet",
                     "--out", str(out)]) == 0
        outs[engine] = out
    for name in ("chelsea.png", "coffee.png"):
        assert psnr(load_image(outs["local"] / "outputs" / name), load_image(outs["ray"] / "outputs" / name)) >= 45
