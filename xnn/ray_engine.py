"""Scale-out on Ray Data (``engine: ray``): the model loads once per actor, work streams through.

    with ray_session(cfg, device):                      # joins RAY_ADDRESS / ray_address, or starts
        for row in stylise_images(paths, ...):          # a local Ray and shuts it down afterwards
            ...                                         # rows come back in input order

Two pipelines, both ``ray.data`` datasets mapped by a pool of actors (``map_batches`` with a
callable class, so each actor builds its encoder and decoder once):

* images: ``read_binary_files`` (the bytes of each file, read where Ray schedules it) ->
  ``_ImageWorker`` (decodes with xnn's own reader, so EXIF turns and transparency come out as in
  ``engine: local``; stylises; encodes the output file) -> the driver writes the files.
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

from .errors import XnnError

INSTALL = "pip install 'xnn[ray]'"
#: seconds to wait for a Ray address to answer before giving up
CONNECT_TIMEOUT_S = 10


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


def check_address(address: str | None, timeout: float | None = None) -> None:
    """A one-line XnnError when ``address`` (host:port, ray://host:port) does not answer within ``timeout``
    seconds (default CONNECT_TIMEOUT_S)."""
    if address in (None, "", "auto", "local"):
        return
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise XnnError(f"ray_address {address!r} is not host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
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


@contextlib.contextmanager
def ray_session(cfg, device):
    """Ray, joined or started for the run; shut down (this driver's connection) afterwards."""
    ray = require_ray()
    address = ray_address(cfg)
    check_address(address)
    env = {k: v for k, v in os.environ.items() if k.startswith("XNN_")}
    import logging
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                  runtime_env={"env_vars": env})
    if address:
        kwargs["address"] = address
    else:
        # a Ray we start runs its workers at nice 15 by default; the work is this command's, at its priority
        # (as with engine: local), unless RAY_worker_niceness says otherwise
        os.environ.setdefault("RAY_worker_niceness", "0")
    try:
        with _stderr_muted():   # Ray's C++ core logs every retry there; the error below says it once
            ray.init(**kwargs)
    except Exception as e:   # Ray raises ConnectionError, RuntimeError, ValueError... on a bad cluster
        raise XnnError(f"cannot start or join Ray at {address or 'this machine'}: {str(e).splitlines()[0][:200]}"
                       + ("; is it a Ray cluster's address (ray start --head prints it)?" if address else "")) \
            from None
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False      # xnn's own bar counts frames and images
        ctx.print_on_execution_start = False
        for name in ("ray", "ray.data"):      # Ray's INFO lines would bury xnn's output
            logging.getLogger(name).setLevel(logging.ERROR)
        yield ray
    finally:
        ray.shutdown()


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


def _pool(cfg, device):
    """map_batches resources: {concurrency, num_gpus, num_cpus, runtime_env} of the actor pool.

    GPU: one actor per GPU (or ``ray_actors``), one GPU each.  CPU: one actor per node (or
    ``ray_actors``, spread evenly), each asking for its node's share of the cores of the
    smallest node, less a quarter CPU that Ray Data's read tasks need (without it they wait for
    the actors forever); its OpenBLAS and xnn threads are set to that share (Ray would give a
    worker OMP_NUM_THREADS=1 for a fractional request).
    """
    import math
    ray = require_ray()
    if device.kind != "cpu":
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus < 1:
            raise XnnError("device gpu with engine: ray needs GPUs in the Ray cluster, and it reports none; "
                           "use --device cpu or a cluster with GPU nodes")
        return dict(concurrency=cfg.get("ray_actors") or gpus, num_gpus=1, num_cpus=1)
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")]
    node_cpus = min(n["Resources"]["CPU"] for n in nodes) if nodes else 1.0
    actors = cfg.get("ray_actors") or max(1, len(nodes))
    per_node = math.ceil(actors / max(1, len(nodes)))
    share = node_cpus / per_node
    threads = str(max(1, int(share)))
    return dict(concurrency=actors, num_gpus=0, num_cpus=max(0.5, share - 0.25),
                runtime_env={"env_vars": {"OMP_NUM_THREADS": threads, "XNN_THREADS": threads}})


def _worker_stylizer(weights, device_name, style_images, blend):
    """The stylizer and the blended target statistics of (already resized) style images."""
    import xnn
    from .experiments.adain import build_stylizer
    from .layers.adain import blend_stats
    from .models.adain import StyleStats
    st = build_stylizer(weights, xnn.device(device_name))
    return st, StyleStats(*blend_stats([st.encode_style(s) for s in style_images], blend))


class _ImageWorker:
    """A Ray actor: image file bytes -> stylised image file bytes, by experiments.adain's own steps."""

    def __init__(self, weights, device_name, style_images, blend, cfg):
        self.st, self.target = _worker_stylizer(weights, device_name, style_images, blend)
        self.cfg = cfg

    def __call__(self, batch):
        from .data.images import decode_image, encode_image
        from .experiments.adain import output_suffix, sized_content, stylise_content
        rows = {"path": [], "data": [], "error": [], "seconds": [], "size": []}
        for path, data in zip(batch["path"], batch["bytes"]):
            name = os.path.basename(str(path))
            out_bytes, error, seconds, size = b"", "", 0.0, ""
            try:
                content = sized_content(decode_image(bytes(data), name), self.cfg, name)
                out, seconds, _ = stylise_content(self.st, content, self.target, self.cfg)
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


def stylise_images(cfg, device, paths, weights, style_images, blend):
    """Yield (path, output file bytes or None, error or None, seconds) per image, in input order."""
    ray = require_ray()
    ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True, num_cpus=0.25)
    ds = _map_batches(ds, _ImageWorker, batch_size=cfg.get("batch_size") or 1, batch_format="numpy",
                      **_pool(cfg, device),
                      fn_constructor_kwargs=dict(weights=weights, device_name=device.name,
                                                 style_images=style_images, blend=blend, cfg=dict(cfg)))
    by_path = {}
    order = [str(p) for p in paths]
    nxt = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for path, data, error, seconds, size in zip(batch["path"], batch["data"], batch["error"],
                                                    batch["seconds"], batch["size"]):
            by_path[_key(path, order)] = (bytes(data) or None, str(error) or None, float(seconds),
                                          json.loads(str(size)) if size else None)
        while nxt < len(order) and order[nxt] in by_path:
            yield (order[nxt],) + by_path.pop(order[nxt])
            nxt += 1


def _key(path, order):
    """read_binary_files may report a path in another spelling (absolute, no scheme): match it back."""
    p = str(path)
    if p in order:
        return p
    for q in order:
        if os.path.abspath(q) == os.path.abspath(p) or p.endswith(q.lstrip("./")):
            return q
    return p


class _ChunkWorker:
    """A Ray actor: a chunk of a video -> its stylised frames (see experiments.video)."""

    def __init__(self, weights, device_name, style_images, blend, source, size, video_kwargs,
                 batch_size):
        from .video.stylize import VideoStylizer
        st, target = _worker_stylizer(weights, device_name, style_images, blend)
        self.vs = VideoStylizer(st, target, **video_kwargs)
        self.source, self.size, self.batch_size = source, tuple(size), batch_size

    def __call__(self, batch):
        from .video.io import read_frames
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


def stylise_chunks(cfg, device, chunks, weights, style_images, blend, source, size, video_kwargs):
    """Yield (start, uint8 frames (n, h, w, 3), metric rows) per chunk (warm, start, stop), in order."""
    ray = require_ray()
    ds = ray.data.from_items([{"warm": w, "start": a, "stop": b} for w, a, b in chunks])
    ds = _map_batches(ds, _ChunkWorker, batch_size=1, batch_format="numpy", **_pool(cfg, device),
                      fn_constructor_kwargs=dict(weights=weights, device_name=device.name,
                                                   style_images=style_images,
                                                   blend=blend, source=source, size=size, video_kwargs=video_kwargs,
                                                   batch_size=cfg["batch_size"]))
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
        yield int(batch["start"][0]), batch["frames"][0], json.loads(str(batch["rows"][0]))
