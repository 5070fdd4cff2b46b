"""The studio's job queue: long runs (Paint, Video, Train) as ordinary CLI runs, one at a time.

A job is the command a user would type, ``python -m xnn run CONFIG --out RUN_DIR --set ...``,
started in its own process by one worker thread; further jobs wait in order.  Its run folder
is an ordinary one (config.yaml, metrics.jsonl, checkpoints), so the CLI can ``--resume`` or
rerun it.  Progress is read from that folder (metrics.jsonl and the preview image the
experiment writes), not from the process, so a page that is closed and opened again, or a
second page, sees the same thing.

    queue = JobQueue()
    job = queue.submit("paint", "configs/style.yaml", run_dir, ["image_size=256"], total=300,
                       preview="progress.png", result="output.png")
    queue.progress(job.id)        # {"state": "running", "done": 12, "total": 300, ...}
    queue.stop(job.id)            # Ctrl-C to that run: it saves its image and a checkpoint
    queue.shutdown()              # the server stops: queued jobs are dropped, the running one stops

Stopping sends the run SIGINT, exactly what Ctrl-C does at a terminal: the runner finishes the
step it is in, saves what it has and a checkpoint, and exits with code 130 ("stopped").
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

from ..errors import XnnError
from ..experiments.base import read_jsonl

#: what a finished process's exit code means
EXIT_STATES = {0: "done", 130: "stopped", 2: "failed"}
#: seconds a stopping run may take to save before it is killed (a 2048 px L-BFGS step is ~30 s)
STOP_GRACE_S = 120.0


@dataclasses.dataclass
class Job:
    """One queued or finished run.  ``total`` is the count of steps it will log (iterations or
    frames), ``step_key`` the metrics.jsonl column that counts them; ``preview`` and ``result``
    are file names in the run folder."""
    id: int
    kind: str
    config: str
    run_dir: pathlib.Path
    overrides: list
    total: int | None = None
    step_key: str = "iter"
    preview: str | None = None
    result: str | None = None
    state: str = "queued"          # queued, running, done, stopped, failed, cancelled
    message: str = ""
    submitted: float = dataclasses.field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    proc: subprocess.Popen | None = dataclasses.field(default=None, repr=False)
    stop_asked: bool = False
    config_mtime: float | None = None   # of run_dir/config.yaml before the run started (a resume's)
    stop_pending: bool = False          # a stop waits for the run to listen for it

    @property
    def finished(self) -> bool:
        return self.state in ("done", "stopped", "failed", "cancelled")

    def command(self) -> list:
        cmd = [sys.executable, "-m", "xnn", "run", self.config, "--out", str(self.run_dir), "--quiet"]
        for kv in self.overrides:
            cmd += ["--set", kv]
        return cmd


class JobQueue:
    """One worker thread runs the jobs in order, each in its own process (``cwd``: where the
    configs' relative paths, e.g. examples/, are read from)."""

    def __init__(self, cwd=None, env=None):
        self.cwd = pathlib.Path(cwd) if cwd else pathlib.Path.cwd()
        self.env = env
        self.jobs: dict[int, Job] = {}
        self._waiting: collections.deque[int] = collections.deque()
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._closing = False
        self._worker = threading.Thread(target=self._work, name="xnn-studio-jobs", daemon=True)
        self._worker.start()

    # -- what the page calls -------------------------------------------------------------
    def submit(self, kind, config, run_dir, overrides=(), **fields) -> Job:
        run_dir = pathlib.Path(run_dir)
        with self._lock:
            if self._closing:
                raise XnnError("the studio is shutting down; no new jobs")
            if any(j.run_dir == run_dir and not j.finished for j in self.jobs.values()):
                raise XnnError(f"a job already uses {run_dir}")
            job = Job(next(self._ids), kind, str(config), run_dir, list(overrides), **fields)
            self.jobs[job.id] = job
            self._waiting.append(job.id)
            self._lock.notify_all()
        return job

    def stop(self, job_id) -> str:
        """Stop a running job (it saves and stays resumable) or drop a queued one; what happened."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is None:
                return "no such job"
            if job.state == "queued":
                self._waiting.remove(job.id)
                job.state, job.message, job.ended = "cancelled", "removed from the queue", time.time()
                return f"job {job.id} removed from the queue"
            if job.state != "running":
                return f"job {job.id} has already ended ({job.state})"
            job.stop_asked = True
            proc, pending, job.stop_pending = job.proc, job.stop_pending, True
        if proc is not None and proc.poll() is None and not pending:
            threading.Thread(target=self._stop_when_listening, args=(job, proc), daemon=True,
                             name=f"xnn-studio-stop-{job.id}").start()
        return f"job {job.id} is stopping: it saves its image and a checkpoint first"

    @staticmethod
    def _stop_when_listening(job, proc):
        """SIGINT to the run once it catches it: a run writes its config.yaml right after
        installing its stop handler (xnn.cli.run).  Sent earlier, the signal would be lost: a
        process started where SIGINT is ignored (a studio launched in the background) ignores it
        until then, and an ordinary one would be killed before it could save."""
        config = job.run_dir / "config.yaml"
        while proc.poll() is None:
            try:
                if config.stat().st_mtime != job.config_mtime:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            return
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGINT)
        job.stop_pending = False

    def position(self, job_id) -> int | None:
        """1 for the next job to start, None when the job is not waiting."""
        with self._lock:
            return self._waiting.index(job_id) + 1 if job_id in self._waiting else None

    def running(self) -> Job | None:
        with self._lock:
            return next((j for j in self.jobs.values() if j.state == "running"), None)

    def latest(self, kind) -> Job | None:
        with self._lock:
            mine = [j for j in self.jobs.values() if j.kind == kind]
        return mine[-1] if mine else None

    def progress(self, job_id) -> dict:
        """The state of a job as its run folder shows it: steps done, ETA, losses, preview."""
        job = self.jobs.get(job_id)
        if job is None:
            return {"state": "unknown", "message": f"no job {job_id}"}
        rows = []
        metrics = job.run_dir / "metrics.jsonl"
        if metrics.is_file():
            try:
                rows = [r for r in read_jsonl(metrics) if job.step_key in r]
            except (OSError, XnnError):
                rows = []
        done = _steps_done(rows, job.step_key)
        out = {"id": job.id, "kind": job.kind, "state": job.state, "message": job.message,
               "run_dir": str(job.run_dir), "done": done, "total": job.total, "rows": rows,
               "position": self.position(job.id), "eta_s": None, "preview": None, "result": None}
        if job.state == "running" and job.started and done and job.total:
            elapsed = time.time() - job.started
            out["eta_s"] = elapsed / done * max(0, job.total - done)
        for key in ("preview", "result"):
            name = getattr(job, key)
            if name and (job.run_dir / name).is_file():
                out[key] = str(job.run_dir / name)
        return out

    def shutdown(self, wait_s: float = STOP_GRACE_S) -> None:
        """Drop the queued jobs, stop the running one as Ctrl-C would, and wait for it to save."""
        with self._lock:
            self._closing = True
            for jid in list(self._waiting):
                job = self.jobs[jid]
                job.state, job.message, job.ended = "cancelled", "the studio was stopped", time.time()
            self._waiting.clear()
            self._lock.notify_all()
        job = self.running()
        if job is not None:
            self.stop(job.id)
        self._worker.join(wait_s)
        job = self.running()
        if job is not None and job.proc is not None and job.proc.poll() is None:
            job.proc.kill()
            self._worker.join(5)

    # -- the worker ------------------------------------------------------------------------
    def _work(self):
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._lock.wait()
                if self._closing and not self._waiting:
                    return
                job = self.jobs[self._waiting.popleft()]
                job.state, job.started = "running", time.time()
                try:
                    job.config_mtime = (job.run_dir / "config.yaml").stat().st_mtime
                except OSError:
                    job.config_mtime = None
                try:
                    job.run_dir.parent.mkdir(parents=True, exist_ok=True)
                    job.proc = subprocess.Popen(job.command(), cwd=self.cwd, env=self.env,
                                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.PIPE, text=True, errors="replace",
                                                start_new_session=True)   # the terminal's Ctrl-C is ours to pass on
                except OSError as e:
                    job.state, job.message, job.ended = "failed", f"could not start: {e}", time.time()
                    continue
            _, err = job.proc.communicate()
            code = job.proc.returncode
            with self._lock:
                job.ended = time.time()
                # 130: it stopped as asked and saved; a run killed after STOP_GRACE_S did not save: failed
                job.state = EXIT_STATES.get(code, "failed")
                job.message = _message(err, job, code)


def _steps_done(rows, key) -> int:
    """Steps a run has logged: frames are counted from 0, iterations from 1; the iterations of
    a coarse-to-fine run add up over its stages (each stage logs its own last one)."""
    if key == "frame":
        return max((r["frame"] + 1 for r in rows), default=0)
    last = {}
    for r in rows:
        stage = r.get("stage", 1)
        last[stage] = max(last.get(stage, 0), r["iter"])
    return sum(last.values())


def _message(stderr: str, job: Job, code: int) -> str:
    """One line for the page: the run's own ``xnn: error:`` line, else what happened."""
    lines = [ln.strip() for ln in (stderr or "").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("xnn: error:")]
    if errors:
        return errors[-1][len("xnn: error:"):].strip()
    if code == 0:
        return f"finished; results in {job.run_dir}"
    if code == 130:
        return f"stopped; image and checkpoint saved (continue with: python run.py --resume {job.run_dir})"
    tail = lines[-1] if lines else ""
    return f"the run ended with exit code {code}" + (f": {tail}" if tail else "")


def environment(**extra) -> dict:
    """The environment runs get: this one, with ``extra`` set."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in extra.items()})
    return env
