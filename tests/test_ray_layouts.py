"""engine: ray on cluster layouts (ray.cluster_utils.Cluster on 127.0.0.1), and the actor pool's plan.

The plan is a pure function of ``ray.nodes()`` and the config: tested here without Ray, case by case.
The layouts are real multi-node Ray clusters on this machine: a 0-CPU head with two 1-CPU workers (the
layout Ray advises for large clusters) and a 1-CPU head with one 1-CPU worker; both must finish and
equal engine: local.
"""
import json
import pathlib
import socket

import numpy
import pytest

from xnn.engines import ray as ray_engine
from xnn.errors import XnnError
from xnn.engines.ray import (MIN_ACTOR_CPUS, READ_CPUS, describe_cluster, host_port, node_resources,
                            on_loopback, plan_pool, starts_local_ray, wait_s, waited_for)

REPO = pathlib.Path(__file__).resolve().parents[1]


def node(cpu=0.0, gpu=0.0, alive=True):
    """One entry of ray.nodes(): Ray leaves out the resources a node has none of."""
    res = {"memory": 1e9, "node:127.0.0.1": 1.0}
    if cpu:
        res["CPU"] = float(cpu)
    if gpu:
        res["GPU"] = float(gpu)
    return {"Alive": alive, "NodeManagerAddress": "127.0.0.1", "Resources": res}


def nodes(*cpus):
    return [node(c) for c in cpus]


# --- the plan, without Ray ----------------------------------------------------------------------------

def test_node_resources_reads_live_nodes_only():
    cpus, gpus = node_resources([node(0), node(4, 2), node(64, alive=False), {"Alive": True}, node(1)])
    assert cpus.tolist() == [0, 4, 0, 1] and gpus.tolist() == [0, 2, 0, 0]
    cpus, gpus = node_resources([{"Alive": True, "Resources": {}}])
    assert cpus.dtype == gpus.dtype == numpy.float64


def test_describe_cluster():
    assert describe_cluster(*node_resources(nodes(0, 1, 1))) == "3 nodes with 0, 1, 1 CPUs and no GPUs"
    assert describe_cluster(*node_resources(nodes(1, 0, 1))) == "3 nodes with 0, 1, 1 CPUs and no GPUs"   # any order
    assert describe_cluster(*node_resources([node(8, 2)])) == "1 node with 8 CPUs and 2 GPUs"
    assert describe_cluster(*node_resources([])) == "0 nodes with  CPUs and no GPUs"


def test_zero_cpu_head_holds_no_actor():
    # the head offers no CPU: the pool is one actor per worker node, sized from the workers
    assert plan_pool(nodes(0, 1, 1)) == dict(concurrency=2, num_cpus=1 - READ_CPUS, num_gpus=0, threads=1)
    # Ray may also list the head's CPU as 0.0
    head = {"Alive": True, "Resources": {"CPU": 0.0}}
    assert plan_pool([head] + nodes(1, 1)) == plan_pool(nodes(0, 1, 1))


def test_one_plus_one():
    assert plan_pool(nodes(1, 1)) == dict(concurrency=2, num_cpus=0.75, num_gpus=0, threads=1)


def test_share_of_the_smallest_node_that_holds_an_actor():
    # a node too small for an actor (0.4 CPU < 0.25 + 0.25) is left out; the rest get the smallest's share
    assert plan_pool(nodes(0.4, 2, 8)) == dict(concurrency=2, num_cpus=1.75, num_gpus=0, threads=2)
    assert plan_pool(nodes(0, 4, 4)) == dict(concurrency=2, num_cpus=3.75, num_gpus=0, threads=4)
    assert plan_pool(nodes(0.5)) == dict(concurrency=1, num_cpus=0.25, num_gpus=0, threads=1)


def test_ray_actors_spread_over_the_nodes():
    assert plan_pool(nodes(0, 1, 1), actors=3) == dict(concurrency=3, num_cpus=0.375, num_gpus=0, threads=1)
    assert plan_pool(nodes(0, 1, 1), actors=6)["num_cpus"] == MIN_ACTOR_CPUS      # three per node: just fits
    assert plan_pool(nodes(8), actors=3)["threads"] == 2
    assert plan_pool(nodes(8), actors=1)["threads"] == 8
    # Ray counts resources in steps of 1e-4: a share is rounded down, never up (3 x 0.5834 > 1.75)
    assert plan_pool(nodes(2), actors=3)["num_cpus"] == 0.5833


def test_too_many_actors_is_one_line():
    with pytest.raises(XnnError) as e:
        plan_pool(nodes(0, 1, 1), actors=7)
    assert str(e.value) == ("ray_actors: 7 actors do not fit the Ray cluster (3 nodes with 0, 1, 1 CPUs and no "
                            "GPUs): spread over its 2 nodes with CPUs, each gets less than 0.25 CPU (0.25 CPU per "
                            "node kept for reading); at most 6")


def test_no_cpus_is_one_line():
    with pytest.raises(XnnError, match=r"needs CPUs for its actors, and the Ray cluster has none \(1 node with 0 "
                                       r"CPUs and no GPUs\); start its worker nodes with CPUs"):
        plan_pool(nodes(0))
    with pytest.raises(XnnError, match=r"has none \(0 nodes"):
        plan_pool([])
    with pytest.raises(XnnError, match=r"has none \(1 node with 0 CPUs and 1 GPUs\)"):
        plan_pool([node(0, 1), node(64, alive=False)])


def test_nodes_too_small_for_an_actor_is_one_line():
    with pytest.raises(XnnError) as e:
        plan_pool(nodes(0.25, 0.49))
    assert str(e.value) == ("engine: ray: an actor needs 0.5 CPUs on one node (0.25 for itself, 0.25 kept for "
                            "reading), and no node of the Ray cluster has them (2 nodes with 0.25, 0.49 CPUs and "
                            "no GPUs)")


@pytest.mark.parametrize("cpus", [(0, 1, 1), (1, 1), (0.5, 3, 7.5), (2,), (0, 16, 1, 1.5), (0.75, 0.75, 64)])
@pytest.mark.parametrize("actors", [None, 1, 2, 3, 5, 8])
def test_every_placement_leaves_room_for_a_read_task(cpus, actors):
    """However Ray places the planned actors (one at a time, on any node with room), some node keeps
    READ_CPUS free, and no node is asked for more than it has."""
    try:
        plan = plan_pool(nodes(*cpus), actors=actors)
    except XnnError:
        assert actors is not None    # the default, one actor per node that holds one, always fits
        return
    c, n = plan["num_cpus"], plan["concurrency"]
    cap = numpy.floor(numpy.array(cpus) / c + 1e-9)
    assert cap.sum() >= n and c <= max(cpus) - READ_CPUS
    rng = numpy.random.default_rng(0)
    for _ in range(50):                 # random greedy placements, each fills the nodes its own way
        free = numpy.array(cpus, dtype=float)
        for _ in range(n):
            fits = numpy.flatnonzero(free >= c - 1e-9)
            assert fits.size, f"actor does not fit: {free} for {c}"
            free[rng.choice(fits)] -= c
        assert free.max() >= READ_CPUS - 1e-9


def test_cuda_pool():   # (no 'gpu' in the name: the mutation run deselects -k gpu)
    cluster = [node(8, 2), node(8), node(0)]
    assert plan_pool(cluster, "cuda") == dict(concurrency=2, num_cpus=1, num_gpus=1, threads=None)
    assert plan_pool(cluster, "cuda", actors=1)["concurrency"] == 1
    assert plan_pool(cluster, "cuda", actors=2)["concurrency"] == 2
    assert plan_pool([node(4, 1)], "cuda")["concurrency"] == 1
    # a fraction of a GPU holds no actor; nor does a GPU without a CPU beside it (1 CPU, 0.25 kept)
    assert plan_pool([node(8, 2.5), node(1, 1), node(2.25, 1)], "cuda")["concurrency"] == 3
    with pytest.raises(XnnError) as e:
        plan_pool(cluster, "cuda", actors=3)
    assert str(e.value) == ("ray_actors: 3 GPU actors need 1 GPU and 1 CPU each on one node (0.25 CPU per node "
                            "kept for reading); the Ray cluster (3 nodes with 0, 8, 8 CPUs and 0, 0, 2 GPUs) "
                            "holds 2")
    with pytest.raises(XnnError, match=r"^engine: ray: GPU actors need 1 GPU .* \(1 node with 1 CPUs and 1 GPUs\) "
                                       r"holds 0$"):
        plan_pool([node(1, 1)], "cuda")


def test_cuda_asked_of_a_cpu_cluster_is_one_line():
    with pytest.raises(XnnError) as e:
        plan_pool(nodes(0, 1, 1), "cuda")
    assert str(e.value) == ("device gpu with engine: ray needs GPUs in the Ray cluster, and it has none (3 nodes "
                            "with 0, 1, 1 CPUs and no GPUs); use --device cpu or a cluster with GPU nodes")
    with pytest.raises(XnnError, match="has none"):
        plan_pool([node(4, 0.5)], "cuda")


def test_waited_for_names_the_need_and_the_cluster():
    cpus, gpus = node_resources(nodes(0, 1, 1))
    pool = dict(concurrency=2, num_cpus=0.75, num_gpus=0)
    assert waited_for(pool, 3, cpus, gpus, {"CPU": 0.5}) == (
        "engine: ray: the actor pool did not start within 3 s (ray_wait_s): it waited for 2 actors of 0.75 CPU "
        "each, and 0.25 CPU for reading; the Ray cluster has 3 nodes with 0, 1, 1 CPUs and no GPUs, of which 0.5 "
        "CPUs and 0 GPUs are free (other jobs may hold the rest; or an actor could not start: its node's log "
        "says why)")
    assert "it waited for 1 actor of 0.75 CPU each" in waited_for(dict(pool, concurrency=1), 3, cpus, gpus, {})
    assert "of which 0 CPUs and 0 GPUs are free" in waited_for(pool, 3, cpus, gpus, {})
    line = waited_for(dict(concurrency=2, num_cpus=1, num_gpus=1), 3, cpus, gpus, {"CPU": 1, "GPU": 1})
    assert "2 actors of 1 CPU and 1 GPU each" in line and "of which 1 CPUs and 1 GPUs are free" in line


def test_wait_and_addresses():
    assert wait_s({}) == 300 and wait_s({"ray_wait_s": None}) == 300 and wait_s({"ray_wait_s": 2.5}) == 2.5
    assert host_port("ray://10.0.0.5:10001/") == ("10.0.0.5", 10001)
    assert host_port("[::1]:6379") == ("::1", 6379)
    assert host_port("Xhead:6379") == ("Xhead", 6379)
    for bad in ("my-cluster", ":6379", "host:port"):
        with pytest.raises(XnnError, match="is not host:port"):
            host_port(bad)
    assert all(starts_local_ray(a) for a in (None, "", "local"))
    assert not any(starts_local_ray(a) for a in ("auto", "127.0.0.1:6379"))


def test_on_loopback_only_for_a_cluster_bound_to_loopback():
    pytest.importorskip("ray")
    import ray
    outward = ray.util.get_node_ip_address()
    if outward == "127.0.0.1":
        pytest.skip("this machine has no outward address")
    with socket.socket() as lo, socket.socket() as everywhere:
        lo.bind(("127.0.0.1", 0))
        lo.listen()
        everywhere.bind(("", 0))
        everywhere.listen()
        assert on_loopback(None) and on_loopback("local")
        assert on_loopback(f"127.0.0.1:{lo.getsockname()[1]}")
        assert on_loopback(f"localhost:{lo.getsockname()[1]}")
        assert not on_loopback(f"127.0.0.1:{everywhere.getsockname()[1]}")   # Ray finds it at {outward}
        assert not on_loopback(f"{outward}:{lo.getsockname()[1]}")
        assert not on_loopback(f"my-head:{lo.getsockname()[1]}")
        assert not on_loopback(f"ray://127.0.0.1:{lo.getsockname()[1]}")


# --- real clusters on 127.0.0.1 ------------------------------------------------------------------------

def _cluster(head_cpus, worker_cpus):
    """A Ray cluster of this machine's processes, every node on 127.0.0.1 (the test's own driver never
    joins it: xnn does, through ray_address)."""
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, shutdown_at_exit=True,
                head_node_args={"num_cpus": head_cpus, "node_ip_address": "127.0.0.1"})
    for cpus in worker_cpus:
        c.add_node(num_cpus=cpus, node_ip_address="127.0.0.1")
    c.wait_for_nodes()
    return c


@pytest.fixture(scope="module")
def ray_ready():
    pytest.importorskip("ray.data", reason="pip install 'xnn[ray]'")
    pytest.importorskip("av", reason="pip install 'xnn[video]'")
    from .conftest import weights_path
    weights_path("adain_vgg_normalised_to_relu4_1.npz")
    weights_path("adain_decoder.npz")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, ray_ready):
    """Two tiny images and a 6-frame 96x64 clip, with engine: local's outputs for each."""
    from PIL import Image
    from xnn.data.images import load_image
    from xnn.video.clips import pan_frames, write_clip
    root = tmp_path_factory.mktemp("layouts")
    folder = root / "in"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        Image.open(REPO / "examples" / name).resize((48, 32)).save(folder / name)
    clip = write_clip(pan_frames(load_image(REPO / "examples" / "coffee.png"), 6, (64, 96)), root / "pan.mp4",
                      fps=10, tone_hz=330)
    got = {"root": root, "folder": folder, "clip": clip}
    got["local"] = {kind: _run(kind, got, root / f"local-{kind}", "engine=local") for kind in ("adain", "video")}
    return got


def _argv(kind, inp, out, *sets):
    # video frames of 96 px: smaller ones fail the video's check that its output shows its input
    args = {"adain": ["adain.yaml", f"content_image={inp['folder']}", "image_size=32"],
            "video": ["video.yaml", f"input={inp['clip']}", "chunk_frames=3", "warmup_frames=1", "image_size=96"]}[kind]
    argv = [str(REPO / "configs" / args[0])]
    for s in args[1:] + ["style_size=32", f"style_image={REPO / 'examples' / 'starry_night.jpg'}", *sets]:
        argv += ["--set", s]
    return argv + ["--device", "cpu", "--quiet", "--out", str(out)]


def _run(kind, inp, out, *sets):
    from xnn.cli import main
    assert main(_argv(kind, inp, out, *sets)) == 0
    return out


def _outputs(kind, run):
    from xnn.data.images import load_image
    from xnn.video import io as vio
    if kind == "adain":
        return {p.name: load_image(p) for p in sorted((run / "outputs").iterdir())}
    return dict(enumerate(vio.read_frames(vio.probe(run / "output.mp4"))))


def _psnr(a, b):
    mse = numpy.mean((a.astype(numpy.float64) - b.astype(numpy.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * numpy.log10(255 ** 2 / mse)


def _equals_local(inputs, cluster, tag):
    """Folder and video runs on the cluster equal engine: local's (video: the first chunk's frames; the
    later chunks start from warm-up frames, so they are close, not equal)."""
    for kind in ("adain", "video"):
        run = _run(kind, inputs, inputs["root"] / f"{tag}-{kind}", "engine=ray", f"ray_address={cluster.address}")
        assert json.loads((run / "summary.json").read_text())["engine"] == "ray"
        local, ray = _outputs(kind, inputs["local"][kind]), _outputs(kind, run)
        assert list(ray) == list(local) and len(local) == {"adain": 2, "video": 6}[kind]
        floor = {k: 45 if kind == "adain" or k < 3 else 20 for k in local}
        assert all(_psnr(local[k], ray[k]) >= floor[k] for k in local), [_psnr(local[k], ray[k]) for k in local]


@pytest.mark.slow                   # a Ray cluster of several nodes per test: 30 s each
@pytest.mark.timeout(240)
def test_zero_cpu_head_and_two_workers_equal_local(inputs):
    """Ray's advice for large clusters: a head with 0 CPUs.  Runs finish, on the workers, as engine: local."""
    c = _cluster(0, [1, 1])
    try:
        _equals_local(inputs, c, "head0")
    finally:
        c.shutdown()


@pytest.mark.slow                   # a Ray cluster of several nodes per test: 30 s each
@pytest.mark.timeout(240)
def test_one_plus_one_equals_local(inputs):
    c = _cluster(1, [1])
    try:
        _equals_local(inputs, c, "oneplusone")
    finally:
        c.shutdown()


@pytest.mark.timeout(180)
def test_cluster_without_cpus_or_with_busy_cpus_is_one_line(inputs, capsys):
    """A cluster of one 0-CPU head: one error line at once.  A cluster whose CPUs other work holds: one
    line after ray_wait_s, naming what the pool waited for."""
    import ray
    from xnn.cli import main
    c = _cluster(0, [])
    try:
        assert main(_argv("adain", inputs, inputs["root"] / "nocpu", "engine=ray",
                          f"ray_address={c.address}")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("xnn: error: engine: ray needs CPUs for its actors, and the "
                                                   "Ray cluster has none (1 node with 0 CPUs and no GPUs)"), err
        c.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        c.wait_for_nodes()
        with ray_engine._loopback_node():
            ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
        try:
            @ray.remote(num_cpus=1)
            class Holder:
                def ready(self):
                    return True
            holder = Holder.options(name="holder", lifetime="detached").remote()
            ray.get(holder.ready.remote())
        finally:
            ray.shutdown()
        assert main(_argv("video", inputs, inputs["root"] / "busy", "engine=ray", "ray_wait_s=2",
                          f"ray_address={c.address}")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            "xnn: error: engine: ray: the actor pool did not start within 2 s (ray_wait_s): it waited for 1 actor of "
            "0.75 CPU each, and 0.25 CPU for reading; the Ray cluster has 2 nodes with 0, 1 CPUs and no GPUs, "
            "of which 0 CPUs and 0 GPUs are free"), err
    finally:
        c.shutdown()
