"""xnn studio: a local web page to paint, compare and train styles (``xnn studio``).

    pip install 'xnn[studio]'
    xnn studio                      # or: python run.py --studio; prints http://127.0.0.1:7860/

It serves on 127.0.0.1 only, never opens a share link, and sends no telemetry.  The page
(:mod:`xnn.studio.app`, Gradio) calls :class:`xnn.studio.service.Studio`, which runs the same
experiment code as the CLI: instant pictures in the server, long jobs as ordinary CLI runs in a
queue, one at a time, each in its own run folder.  Ctrl-C stops the server and the running job
as the CLI would (image and checkpoint saved, ``--resume`` continues it).
"""
from __future__ import annotations

import os
import signal
import threading

from ..errors import ArgumentParser, XnnError

HOST = "127.0.0.1"


def _quiet_environment(cache) -> None:
    """Before Gradio is imported: no analytics, no hub calls, uploads in the studio's folder."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def serve(root="runs", port=None, device="auto", quiet=True):
    """Start the studio on 127.0.0.1 in this process's background threads; (studio, page, url)."""
    from .service import Studio, studio_folders
    _quiet_environment(studio_folders(root)["cache"])
    try:
        from .app import THEME, build
    except ImportError as e:
        raise XnnError(f"the studio needs its extra: pip install 'xnn[studio]' ({e.name or e} is missing)") from None
    studio = Studio(root, device=device)
    threading.Thread(target=studio.warm_up, name="xnn-studio-warm-up", daemon=True).start()
    page = build(studio)
    page.queue(default_concurrency_limit=4)
    try:
        _, url, _ = page.launch(server_name=HOST, server_port=port, share=False, prevent_thread_lock=True,
                                quiet=quiet, show_error=True, theme=THEME, ssr_mode=False, pwa=False,
                                mcp_server=False, enable_monitoring=False, max_file_size="500mb",
                                allowed_paths=[str(studio.root), str(studio.examples)], footer_links=[])
    except OSError as e:                 # Gradio: "Cannot find empty port ..."
        studio.close()
        raise XnnError(f"--port {port}: cannot serve on {HOST} ({str(e).splitlines()[0]}); choose another "
                       "port") from None
    return studio, page, url


def main(argv=None) -> int:
    p = ArgumentParser(prog="xnn studio", description="The xnn studio: a local web page (127.0.0.1 only).")
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1 (default 7860)")
    p.add_argument("--runs", default="runs", metavar="DIR",
                   help="the folder the studio keeps its runs and uploads in (default runs/)")
    p.add_argument("--device", default="auto", help="cpu, gpu or auto, for the instant pictures (default auto)")
    args = p.parse_args(argv)
    studio, page, url = serve(args.runs, args.port, args.device)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):    # also where a shell started us with SIGINT ignored
        signal.signal(sig, lambda *_: stop.set())
    print(f"xnn studio: open {url} (runs in {studio.root}; Ctrl-C stops the server)", flush=True)
    try:
        while not stop.wait(1.0):
            pass
        running = studio.queue.running()
        print("xnn studio: stopping" + (f"; job {running.id} saves its state first (resumable)" if running else ""),
              flush=True)
    finally:
        studio.close()
        page.close()
    return 0


__all__ = ["main", "serve", "HOST"]
