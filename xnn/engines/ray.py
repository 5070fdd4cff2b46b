"""``engine: ray``: the pipeline on Ray Data, the model loaded once per actor (see :mod:`xnn.engines`).

    with session(cfg, device):                          # joins RAY_ADDRESS / ray_address, or starts
        for r in images(job, paths, device, stop):      # a local Ray and shuts it down afterwards
            ...                                         # results come back in input order

Two pipelines, both ``ray.data`` datasets mapped by a pool of actors (``map_batches`` with a
callable class, so each actor builds its encoder and decoder once):

* images: ``read_binary_files`` (the bytes of each file, read where Ray schedules it) ->
  ``_ImageWorker`` (decodes with xnn's own reader, so EXIF turns and transparency come out as in
  ``engine: local``; runs the job's image step; encodes the output file) -> the driver writes the
  files.  Ray Data keeps the input order (``preserve_order``), so results are passed on as they come.
* video: one row per chunk of frames -> ``_ChunkWorker`` (reads its frames from the video,
  stylises them in order after ``warmup`` earlier frames that only prime the temporal state,
  returns the chunk's frames) -> the driver writes one video segment per chunk, in order.

Every node must be able to import xnn and read the inputs (a shared or copied folder); the
weights come from each node's $XNN_HOME (passed on from the driver when it is set).  GPU
actors ask Ray for ``num_gpus=1`` each.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import warnings

import numpy

from ..errors import XnnError
from . import ImageResult

INSTALL = "pip install 'xnn[ray]'"
#: seconds to wait for a Ray address to answer before giving up
CONNECT_TIMEOUT_S = 10
#: CPUs one Ray Data read task asks for; every node keeps this much of its CPUs out of the actors' plan
READ_CPUS = 0.25
#: the least CPU share a CPU actor is planned with; more actors than that allows is an error
MIN_ACTOR_CPUS = 0.25
#: CPUs a GPU actor asks for beside its GPU (it decodes, encodes and computes optical flow on the CPU)
GPU_ACTOR_CPUS = 1
#: seconds to wait for the actor pool to start when the config has no ray_wait_s
WAIT_S = 300
#: the environment variable that makes Ray take the loopback address as a node's address (Ray reads it once,
#: as ray._private.ray_constants.ENABLE_RAY_CLUSTER; it was made for single-machine Ray on macOS and Windows)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def check(cfg) -> None:
    """Before a run folder exists: Ray Data importable and the cluster's address answering (one-line errors)."""
    require_ray()
    check_address(ray_address(cfg))


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise XnnError(f"engine: ray needs Ray Data, which is not installed; {INSTALL} "
                       "(or set engine: local)") from None
    return ray


def ray_address(cfg) -> str | None:
    """The cluster to join: the config's ``ray_address``, else $RAY_ADDRESS, else None (start one)."""
    return cfg.get("ray_address") or os.environ.get("RAY_ADDRESS") or None


def host_port(address: str) -> tuple:
    """(host, port) of host:port or scheme://host:port[/]; a one-line XnnError for anything else."""
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise XnnError(f"ray_address {address!r} is not host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)")
    return host.strip("[]"), int(port)


def check_address(address: str | None, timeout: float | None = None) -> None:
    """A one-line XnnError when ``address`` (host:port, ray://host:port) does not answer within ``timeout``
    seconds (default CONNECT_TIMEOUT_S)."""
    if address in (None, "", "auto", "local"):
        return
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    host, port = host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            # Ray's GCS (and Ray Client) speak gRPC: an HTTP/2 server answers the client preface with
            # a SETTINGS frame (type 4) at once; a silent server would leave ray.init waiting forever
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            reply = conn.recv(9)
        if len(reply) < 4 or reply[3] != 4:
            raise OSError(0, "it answers, but not as a Ray (gRPC) server does")
    except OSError as e:
        why = "timed out" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        raise XnnError(f"ray_address {address}: no Ray cluster answers there ({why}; waited at most {timeout:.0f} s); "
                       "start one with `ray start --head`, or leave ray_address and RAY_ADDRESS unset to run "
                       "a local Ray") from None


def starts_local_ray(address: str | None) -> bool:
    """True when ray.init with this address starts a new Ray on this machine (rather than joining one)."""
    return address in (None, "", "local")


def on_loopback(address: str | None) -> bool:
    """True when this driver must take the loopback address as its node's: when it starts Ray (which then
    listens on 127.0.0.1 only), or joins a cluster at a loopback address (127.0.0.1:port) that does not
    answer at this machine's outward address, i.e. a cluster whose nodes are on 127.0.0.1.  (Ray would
    turn 127.0.0.1 into the outward address and wait for a GCS there, without end.)"""
    if starts_local_ray(address):
        return True
    if "://" in address:        # Ray Client: no node here
        return False
    import ipaddress
    import ray
    host, port = host_port(address)
    try:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            return False
    except ValueError:          # a host name
        return False
    try:
        socket.create_connection((ray.util.get_node_ip_address(), port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError:
        return True
    return False


@contextlib.contextmanager
def session(cfg, device):
    """Ray, joined or started for the run; shut down (this driver's connection) afterwards.

    A Ray started here listens on the loopback address only (see :func:`_loopback_node`) and keeps
    Ray's token authentication as Ray sets it up (on, unless $RAY_AUTH_MODE says otherwise)."""
    ray = require_ray()
    address = ray_address(cfg)
    check_address(address)
    env = {k: v for k, v in os.environ.items() if k.startswith("XNN_")}
    import logging
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                  runtime_env={"env_vars": env})
    if not starts_local_ray(address):
        kwargs["address"] = address
    else:
        # a Ray we start runs its workers at nice 15 by default; the work is this command's, at its priority
        # (as with engine: local), unless RAY_worker_niceness says otherwise
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        with _stderr_muted(), (_loopback_node() if on_loopback(address) else contextlib.nullcontext()):
            ray.init(**kwargs)   # Ray's C++ core logs every retry on stderr; the error below says it once
    except Exception as e:   # Ray raises ConnectionError, RuntimeError, ValueError... on a bad cluster
        raise XnnError(f"cannot start or join Ray at {address or 'this machine'}: {str(e).splitlines()[0][:200]}"
                       + ("; is it a Ray cluster's address (ray start --head prints it)?" if address else "")) \
            from None
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False      # xnn's own bar counts frames and images
        ctx.print_on_execution_start = False
        ctx.wait_for_min_actors_s = wait_s(cfg)   # a pool that cannot start is an error, not a silent wait
        for name in ("ray", "ray.data"):      # Ray's INFO lines would bury xnn's output
            logging.getLogger(name).setLevel(logging.ERROR)
        yield ray
    finally:
        ray.shutdown()


def wait_s(cfg) -> float:
    """Seconds to wait for the actor pool to start: the config's ``ray_wait_s``, else WAIT_S."""
    return float(cfg.get("ray_wait_s") or WAIT_S)


@contextlib.contextmanager
def _loopback_node():
    """Inside the block, a Ray started by this process takes 127.0.0.1 (or ::1) as its node address, and
    its GCS, raylet, object manager, workers and runtime-env agent listen there only.

    Ray binds its servers to the node address; by default that is the address of the interface that
    routes outwards, and ray.init(_node_ip_address="127.0.0.1") is turned back into it.  $LOOPBACK_ENV=0
    makes Ray use the loopback address; Ray reads it at import, so its module constant is set too."""
    from ray._private import ray_constants
    saved_env, saved = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


@contextlib.contextmanager
def _stderr_muted():
    """File descriptor 2 goes to a scratch file inside the block (C++ libraries write there directly)."""
    import sys
    import tempfile
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def node_resources(nodes) -> tuple:
    """(CPUs, GPUs): two float arrays, one entry per live node of a ``ray.nodes()`` list."""
    alive = [n.get("Resources") or {} for n in nodes if n.get("Alive")]
    return (numpy.array([r.get("CPU", 0) for r in alive], dtype=float),
            numpy.array([r.get("GPU", 0) for r in alive], dtype=float))


def describe_cluster(cpus, gpus) -> str:
    """The resources of a cluster for an error line: '3 nodes with 0, 1, 1 CPUs and no GPUs', the nodes
    in order of their CPUs, then GPUs (ray.nodes() lists them in no fixed order)."""
    def counts(a):
        return ", ".join(f"{x:g}" for x in a)
    order = numpy.lexsort((gpus, cpus))
    cpus, gpus = cpus[order], gpus[order]
    nodes = f"{len(cpus)} node" + ("s" if len(cpus) != 1 else "")
    gpu = f"{counts(gpus)} GPUs" if gpus.sum() > 0 else "no GPUs"
    return f"{nodes} with {counts(cpus)} CPUs and {gpu}"


def plan_pool(nodes, kind: str = "cpu", actors: int | None = None) -> dict:
    """The actor pool for a cluster: {concurrency, num_cpus, num_gpus, threads}, or a one-line XnnError
    naming what the pool needs and what the cluster has.  ``nodes`` is ``ray.nodes()``; ``kind`` the
    device kind ("cpu" or a GPU kind); ``actors`` the config's ``ray_actors`` (None: as many as fit).

    Every node keeps READ_CPUS of its CPUs out of the plan, so a Ray Data read task always finds room
    beside the actors, wherever Ray puts them (a node holding no more actors than planned has that room)."""
    cpus, gpus = node_resources(nodes)
    if kind == "cpu":
        return _cpu_plan(cpus, gpus, actors)
    return _gpu_plan(cpus, gpus, actors)


def _cpu_plan(cpus, gpus, actors):
    """CPU actors spread evenly over the nodes that can hold one (a 0-CPU head holds none), each asking for
    its share of the smallest such node, less READ_CPUS; threads: that share of its cores."""
    have = describe_cluster(cpus, gpus)
    if cpus.sum() <= 0:
        raise XnnError(f"engine: ray needs CPUs for its actors, and the Ray cluster has none ({have}); "
                       "start its worker nodes with CPUs (ray start --num-cpus N)")
    free = cpus[cpus >= READ_CPUS + MIN_ACTOR_CPUS] - READ_CPUS
    if free.size == 0:
        raise XnnError(f"engine: ray: an actor needs {READ_CPUS + MIN_ACTOR_CPUS:g} CPUs on one node "
                       f"({MIN_ACTOR_CPUS:g} for itself, {READ_CPUS:g} kept for reading), and no node of the "
                       f"Ray cluster has them ({have})")
    actors = actors or free.size
    per_node = -(-actors // free.size)
    share = numpy.floor(free.min() / per_node * 1e4) / 1e4    # Ray counts resources in 1e-4: never round up
    if share < MIN_ACTOR_CPUS:
        most = free.size * int(free.min() // MIN_ACTOR_CPUS)
        raise XnnError(f"ray_actors: {actors} actors do not fit the Ray cluster ({have}): spread over its "
                       f"{free.size} nodes with CPUs, each gets less than {MIN_ACTOR_CPUS:g} CPU "
                       f"({READ_CPUS:g} CPU per node kept for reading); at most {most}")
    threads = max(1, int((free.min() + READ_CPUS) // per_node))
    return dict(concurrency=int(actors), num_cpus=float(share), num_gpus=0, threads=threads)


def _gpu_plan(cpus, gpus, actors):
    """One GPU and GPU_ACTOR_CPUS CPUs per actor; as many actors as the nodes hold, or ``actors``."""
    have = describe_cluster(cpus, gpus)
    if gpus.sum() < 1:
        raise XnnError(f"device gpu with engine: ray needs GPUs in the Ray cluster, and it has none ({have}); "
                       "use --device cpu or a cluster with GPU nodes")
    fits = numpy.minimum(numpy.floor(gpus), numpy.floor(numpy.maximum(cpus - READ_CPUS, 0) / GPU_ACTOR_CPUS))
    most = int(fits.sum())
    if (actors or 1) > most:
        raise XnnError(f"{'ray_actors: ' + str(actors) if actors else 'engine: ray:'} GPU actors need 1 GPU "
                       f"and {GPU_ACTOR_CPUS:g} CPU each on one node ({READ_CPUS:g} CPU per node kept for "
                       f"reading); the Ray cluster ({have}) holds {most}")
    return dict(concurrency=int(actors or most), num_cpus=GPU_ACTOR_CPUS, num_gpus=1, threads=None)


def _pool(cfg, device, items: int):
    """map_batches resources of the actor pool for the joined cluster and ``items`` inputs: {concurrency,
    num_gpus, num_cpus, runtime_env}; no more actors than inputs (an idle actor would only load the model).
    CPU actors are told their thread count (Ray would give a fractional request OMP_NUM_THREADS=1)."""
    ray = require_ray()
    plan = plan_pool(ray.nodes(), device.kind, cfg.get("ray_actors"))
    plan["concurrency"] = max(1, min(plan["concurrency"], items))
    threads = plan.pop("threads")
    if threads:
        plan["runtime_env"] = {"env_vars": {"OMP_NUM_THREADS": str(threads), "XNN_THREADS": str(threads)}}
    return plan


def waited_for(pool, wait, cpus, gpus, free) -> str:
    """The error line when the actor pool did not start within ``wait`` seconds: what it asked for, what
    the cluster has and what of it was free."""
    each = f"{pool['num_cpus']:g} CPU" + (f" and {pool['num_gpus']:g} GPU" if pool["num_gpus"] else "")
    return (f"engine: ray: the actor pool did not start within {wait:g} s (ray_wait_s): it waited for "
            f"{pool['concurrency']} actor{'s' if pool['concurrency'] != 1 else ''} of {each} each, and "
            f"{READ_CPUS:g} CPU for reading; the Ray cluster has "
            f"{describe_cluster(cpus, gpus)}, of which {free.get('CPU', 0):g} CPUs and {free.get('GPU', 0):g} "
            "GPUs are free (other jobs may hold the rest; or an actor could not start: its node's log says why)")


def _batches(ray, ds, pool, cfg, **kwargs):
    """ds.iter_batches, with Ray Data's timeout for the actor pool turned into a one-line XnnError."""
    it = iter(ds.iter_batches(**kwargs))
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except ray.exceptions.GetTimeoutError:
            cpus, gpus = node_resources(ray.nodes())
            raise XnnError(waited_for(pool, wait_s(cfg), cpus, gpus, ray.available_resources())) from None
        yield batch


class _ImageWorker:
    """A Ray actor: image file bytes -> stylised image file bytes, by the job's image step."""

    def __init__(self, job, device_name):
        from ..backends import device
        self.job, self.step = job, job.image_step(device(device_name))

    def __call__(self, batch):
        from ..data.images import decode_image, encode_image
        from ..style.feedforward import output_suffix, sized_content
        rows = {"path": [], "data": [], "error": [], "seconds": [], "size": []}
        for path, data in zip(batch["path"], batch["bytes"]):
            name = os.path.basename(str(path))
            out_bytes, error, seconds, size = b"", "", 0.0, ""
            try:
                content = sized_content(decode_image(bytes(data), name), self.job.cfg, name)
                out, seconds, _ = self.step(content)
                out_bytes = encode_image(out, output_suffix(name), name)
                size = json.dumps(list(out.shape[:2]))
            except XnnError as e:
                error = str(e)
            rows["path"].append(str(path))
            rows["data"].append(out_bytes)
            rows["error"].append(error)
            rows["seconds"].append(seconds)
            rows["size"].append(size)
        return {k: numpy.array(v, dtype=object) if k == "data" else numpy.array(v) for k, v in rows.items()}


def _map_batches(ds, worker, **kwargs):
    """ds.map_batches with max_restarts=0: a failed actor is an error, not a silent retry (and Ray
    then does not warn that restarts need the constructor's arguments kept)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*ray_remote_args.*")   # max_restarts / runtime_env: no named parameter yet
        return ds.map_batches(worker, max_restarts=0, **kwargs)


def images(job, paths, device, should_stop, stylizer=None):
    """Yield an :class:`~xnn.engines.ImageResult` (the output file's bytes, or an error) per path, in
    input order, as Ray Data returns them; no new batch is waited for once ``should_stop()``.
    (``stylizer`` is for the local engine's surface: actors build their own.)"""
    ray = require_ray()
    cfg = job.cfg
    pool = _pool(cfg, device, len(paths))
    ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True, num_cpus=READ_CPUS)
    ds = _map_batches(ds, _ImageWorker, batch_size=cfg.get("batch_size") or 1, batch_format="numpy", **pool,
                      fn_constructor_kwargs=dict(job=job, device_name=device.name))
    order = iter(paths)
    for batch in _batches(ray, ds, pool, cfg, batch_size=None, batch_format="numpy"):
        for path, data, error, seconds in zip(batch["path"], batch["data"], batch["error"], batch["seconds"]):
            mine = next(order)
            if os.path.basename(str(path)) != os.path.basename(str(mine)):   # preserve_order is set in session()
                raise RuntimeError(f"Ray Data returned {path} where {mine} was due: results out of order")
            yield ImageResult(str(mine), data=bytes(data) or None, seconds=float(seconds), error=str(error) or None)
        if should_stop():
            return


class _ChunkWorker:
    """A Ray actor: a chunk of a video -> its stylised frames, by the job's video stylizer."""

    def __init__(self, job, device_name, source, size):
        from ..backends import device
        self.vs = job.video_stylizer(device(device_name))
        self.source, self.size, self.batch_size = source, tuple(size), job.cfg["batch_size"]

    def __call__(self, batch):
        from ..video.io import read_frames
        (warm,), (start,), (stop,) = batch["warm"], batch["start"], batch["stop"]
        self.vs.reset()
        outs, rows = [], []
        frames = read_frames(self.source, int(warm), int(stop), self.size)
        i = int(warm)
        while True:
            group = [f for _, f in zip(range(self.batch_size), frames)]
            if not group:
                break
            for out, row in self.vs.process(group):
                if i >= start:
                    outs.append(out)
                    rows.append(row)
                i += 1
        return {"start": numpy.array([int(start)]), "frames": numpy.stack(outs)[None],
                "rows": numpy.array([json.dumps(rows)])}


def chunks(start, total, chunk, warmup):
    """[(warm-up start, start, stop)] covering frames start .. total - 1, ``chunk`` frames each."""
    return [(max(0, a - warmup), a, min(a + chunk, total)) for a in range(start, total, chunk)]


def frames(job, source, size, first, device, should_stop, stylizer=None):
    """Yield (chunk start, frame, metrics row) for frames ``first`` .. end, chunk by chunk in order,
    each chunk stylised by an actor after its own warm-up frames; no new chunk once ``should_stop()``."""
    ray = require_ray()
    cfg = job.cfg
    todo = chunks(first, source.frames, cfg["chunk_frames"], cfg["warmup_frames"])
    ds = ray.data.from_items([{"warm": w, "start": a, "stop": b} for w, a, b in todo])
    pool = _pool(cfg, device, len(todo))
    ds = _map_batches(ds, _ChunkWorker, batch_size=1, batch_format="numpy", **pool,
                      fn_constructor_kwargs=dict(job=job, device_name=device.name, source=source, size=size))
    for batch in _batches(ray, ds, pool, cfg, batch_size=1, batch_format="numpy"):
        start = int(batch["start"][0])
        for out, row in zip(batch["frames"][0], json.loads(str(batch["rows"][0]))):
            yield start, out, row
        if should_stop():
            return
