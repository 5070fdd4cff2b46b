"""What the studio does, without the web page: the same experiment code as the CLI.

``Studio(root)`` owns one folder, ``root`` (``runs/`` by default): every job's run folder is
made there, uploads are kept in ``root/studio/uploads``, and the page's own file cache is
``root/studio/cache``.  Inputs are read only from those and from the checkout's ``examples/``.

* :meth:`Studio.instant` stylises one photo in this process (AdaIN, or a trained fast style
  model) with the CLI's config validation and the CLI's stylisation functions, so its picture
  equals ``python run.py configs/adain.yaml`` for the same inputs.
* :meth:`Studio.paint`, :meth:`Studio.video` and :meth:`Studio.train` queue ordinary CLI runs
  (:class:`xnn.studio.jobs.JobQueue`) of the shipped configs with ``--set`` overrides.
"""
from __future__ import annotations

import datetime
import pathlib
import threading
import time

from ..config import apply_override, read_yaml, validate
from ..errors import XnnError
from ..experiments.train_style import SCHEMA as TRAIN_SCHEMA
from .jobs import JobQueue, environment
from .uploads import check_image_header, keep_image, keep_video, new_folder, read_image

#: the Train tab's starting values: configs/train_fast_style.yaml's defaults, kept in one place
TRAIN_DEFAULTS = {k: TRAIN_SCHEMA[k].default for k in ("num_iterations", "image_size", "style_weight")}

#: the checkout: configs/ and examples/ are read from here, and runs start here
REPO = pathlib.Path(__file__).resolve().parents[2]
PAINT_PRESETS = ("style.yaml", "style_jcjohnson.yaml", "style_hires.yaml")
ADAIN = "AdaIN (any style)"
#: keys that name files or places to read besides those of type path (weights: a folder; ray_address:
#: another machine)
FILE_KEYS = {"weights", "ray_address"}


def _quoted(path) -> str:
    """A path as a YAML string for ``--set`` (the studio's paths hold no quotes)."""
    return '"' + str(path).replace("\\", "/") + '"'


def studio_folders(root) -> dict:
    """The studio's folder (absolute), its uploads and the page's file cache."""
    root = pathlib.Path(root)
    root = (root if root.is_absolute() else pathlib.Path.cwd() / root).resolve()
    return {"root": root, "uploads": root / "studio" / "uploads", "cache": root / "studio" / "cache"}


class Studio:
    def __init__(self, root="runs", repo=REPO, device="auto", env=None):
        self.repo = pathlib.Path(repo).resolve()
        if not (self.repo / "configs" / "style.yaml").is_file():
            raise XnnError(f"the studio runs from an xnn checkout (configs/ and examples/); {self.repo} has no "
                           "configs/style.yaml")
        folders = studio_folders(root)
        self.root, self.uploads, self.cache = folders["root"], folders["uploads"], folders["cache"]
        try:
            self.uploads.mkdir(parents=True, exist_ok=True)
            self.cache.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise XnnError(f"--runs {self.root}: cannot make the studio's folders there ({e.strerror}); "
                           "give a folder you can write to") from None
        self.examples = self.repo / "examples"
        self.device_name = device
        self.queue = JobQueue(cwd=self.repo, env=environment(**(env or {})))
        self._lock = threading.Lock()
        self._models = {}      # (kind, weights) -> a loaded stylizer
        self._style_stats = {}  # (weights, style_size, style file, its mtime) -> its AdaIN statistics
        self._device = None
        self.warm = threading.Event()   # set when warm_up has finished
        self._warming = False

    # -- files -------------------------------------------------------------------------------
    def allowed(self, path) -> pathlib.Path:
        """``path`` resolved, if it lies in the studio's folder or the examples; else an XnnError."""
        p = pathlib.Path(str(path)).resolve()
        for base in (self.root, self.examples):
            if p == base or base in p.parents:
                return p
        raise XnnError("that file is outside the studio's folders; upload it instead")

    def example_photos(self) -> list:
        return sorted(p for p in self.examples.glob("*.png"))

    def example_styles(self) -> dict:
        """name -> path of the example paintings."""
        return {p.stem: p for p in sorted(self.examples.glob("*.jpg"))}

    def example_clip(self) -> pathlib.Path:
        return self.examples / "coffee_pan.mp4"

    def models(self) -> dict:
        """name -> model.npz: the shipped ones, then those trained in the studio's folder (newest first)."""
        found = {f"{p.stem} (shipped)": p for p in sorted((self.examples / "models").glob("*.npz"))}
        trained = sorted(self.root.glob("*/model.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        found.update({f"{p.parent.name}": p for p in trained})
        return found

    def styles(self, upload, example_names, blend_text, folder=None):
        """(style paths, blend weights or None): the chosen examples, then the upload (checked, and kept
        as ``folder/style.png`` when a folder is given)."""
        known = self.example_styles()
        paths = []
        for name in example_names or ():
            if name not in known:
                raise XnnError(f"no example style {name!r}; choose from {', '.join(known)}")
            paths.append(known[name])
        if upload is not None:
            up = self.allowed(upload)
            if folder is not None:           # a job's input: checked, decoded and kept as style.png
                paths.append(keep_image(up, folder, "style", "style image"))
            else:                            # read in this process by the caller: the header is checked now
                check_image_header(up, "style image")
                paths.append(up)
        if not paths:
            raise XnnError("no style: pick an example painting or upload one")
        blend = None
        if blend_text and blend_text.strip():
            try:
                blend = [float(x) for x in blend_text.replace(";", ",").split(",") if x.strip()]
            except ValueError:
                raise XnnError(f"blend weights {blend_text!r}: give numbers separated by commas, e.g. 2, 1") from None
            if len(blend) != len(paths):
                raise XnnError(f"blend weights: {len(blend)} number(s) for {len(paths)} style(s); give one per style")
        return paths, blend

    def config(self, name: str, overrides) -> tuple:
        """(validated config, its experiment module) of ``configs/<name>`` with ``overrides`` (the
        CLI's --set), checked as the CLI checks them."""
        from .. import experiments
        raw = read_yaml(self.repo / "configs" / name)
        module = experiments.get(raw.get("experiment"))
        schema = experiments.schema_for(module)
        for kv in overrides:
            apply_override(raw, kv, schema)
        return validate(raw, schema), module

    # -- instant: in this process ---------------------------------------------------------------
    def device(self):
        import xnn
        if self._device is None:
            self._device = xnn.device(self.device_name)
        return self._device

    def instant(self, photo, style_upload=None, example_styles=("starry_night",), blend_text="", alpha=1.0,
                style_size=512, image_size=512, original_colors=False, model=ADAIN):
        """One stylised photo (uint8 HxWx3) and the seconds it took, from the request to the picture."""
        from ..data.images import to_uint8
        from ..style.feedforward import sized_content
        t0 = time.perf_counter()
        photo = self.allowed(photo) if photo is not None else None
        content = read_image(photo, "photo")
        if model == ADAIN:
            paths, blend = self.styles(style_upload, example_styles, blend_text)
            cfg, _ = self.config("adain.yaml", [f"content_image={_quoted(photo)}",
                                                "style_image=[" + ", ".join(map(_quoted, paths)) + "]",
                                                f"style_blend_weights={blend if blend else 'null'}",
                                                f"alpha={float(alpha)}", f"style_size={int(style_size)}",
                                                f"image_size={int(image_size)}",
                                                f"original_colors={str(bool(original_colors)).lower()}"])
            out = self._adain(cfg, sized_content(content, cfg, "photo"))
        else:
            known = self.models()
            if model not in known:
                raise XnnError(f"no model {model!r}; choose one of: {', '.join([ADAIN, *known])}")
            cfg, _ = self.config("fast_style.yaml", [f"input={_quoted(photo)}", f"model={_quoted(known[model])}",
                                                     f"image_size={int(image_size)}",
                                                     f"original_colors={str(bool(original_colors)).lower()}"])
            out = self._network(cfg, sized_content(content, cfg, "photo"))
        return to_uint8(out), time.perf_counter() - t0

    def _adain(self, cfg, content):
        from ..experiments.base import blend_weights
        from ..layers.adain import blend_stats
        from ..models.adain import StyleStats
        from ..style.feedforward import build_stylizer, load_styles, stylise_content, weight_files
        weights = weight_files(cfg)
        with self._lock:                     # one picture at a time: the model is shared
            st = self._models.get(("adain", weights))
            if st is None:
                st = self._models[("adain", weights)] = build_stylizer(weights, self.device())
            stats = []
            for path in cfg["style_image"]:   # each style is encoded once, then reused while unchanged
                key = (weights, cfg["style_size"], str(path), pathlib.Path(path).stat().st_mtime_ns)
                if key not in self._style_stats:
                    if len(self._style_stats) >= 32:
                        self._style_stats.pop(next(iter(self._style_stats)))
                    self._style_stats[key] = st.encode_style(load_styles({**cfg, "style_image": [path]})[0])
                stats.append(self._style_stats[key])
            target = StyleStats(*blend_stats(stats, blend_weights(cfg)))
            out, _, _ = stylise_content(st, content, target, cfg)
        return out

    def _network(self, cfg, content):
        from ..style.feedforward import FastStyleJob
        job = FastStyleJob(cfg["model"], dict(cfg))
        with self._lock:
            key = ("network", cfg["model"], pathlib.Path(cfg["model"]).stat().st_mtime)
            st = self._models.get(key)
            if st is None:
                st = self._models[key] = job.stylizer(self.device())
            out, _, _ = job.image_step(self.device(), st)(content)
        return out

    def warm_up(self):
        """Make a picture before the first request (in the background at start): the model is
        loaded, the one-off costs of a first run are paid and every example painting is encoded
        at the default style size, so the first picture a user asks for takes as long as the
        others.  A problem (missing weights) is left for that request to report."""
        photo = self.examples / "chelsea.png"
        self._warming = True
        try:
            if photo.is_file():
                self.instant(photo)
                for name in self.example_styles():
                    self.instant(photo, example_styles=[name], image_size=64)
        except XnnError:
            pass
        finally:
            self.warm.set()

    # -- jobs: CLI runs in the queue --------------------------------------------------------------
    def _run_dir(self, kind) -> pathlib.Path:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        n = 1
        while (self.root / f"studio-{kind}-{stamp}-{n}").exists() or any(
                j.run_dir == self.root / f"studio-{kind}-{stamp}-{n}" for j in self.queue.jobs.values()):
            n += 1
        return self.root / f"studio-{kind}-{stamp}-{n}"

    def _submit(self, kind, config, overrides, fields=lambda cfg: {}, more=""):
        """Check the run's config as the CLI will (a typo is refused now, in the page), then queue it
        with the job fields ``fields(cfg)`` gives.  ``more`` (the page's free-form settings) may not
        name files: the studio reads only uploads and the examples."""
        from .. import experiments
        extra = _more(more)
        schema = experiments.schema_for(experiments.get(read_yaml(self.repo / "configs" / config)["experiment"]))
        for kv in extra:
            key = kv.split("=", 1)[0].strip()
            field = schema.get(key)
            if key in FILE_KEYS or (field is not None and not isinstance(field, dict) and "path" in field.kind):
                raise XnnError(f"more settings: {key} names a file; the studio takes files as uploads only "
                               "(use the CLI for files on disk)")
        overrides = list(overrides) + extra
        cfg, _ = self.config(config, overrides)
        return self.queue.submit(kind, f"configs/{config}", self._run_dir(kind), overrides, **fields(cfg))

    def preset(self, name) -> dict:
        """The Paint tab's fields as ``configs/<name>`` sets them (a schedule shows its last stage)."""
        if name not in PAINT_PRESETS:
            raise XnnError(f"preset {name!r}: choose one of {', '.join(PAINT_PRESETS)}")
        cfg, _ = self.config(name, [])
        last = lambda v: v[-1] if isinstance(v, list) else v      # noqa: E731
        return {"image_size": last(cfg["image_size"]), "num_iterations": last(cfg["num_iterations"]),
                "style_weight": cfg["style_weight"], "content_weight": cfg["content_weight"]}

    def paint(self, photo, style_upload=None, example_styles=("starry_night",), blend_text="",
              preset="style.yaml", image_size=512, num_iterations=300, style_weight=None, content_weight=None,
              original_colors=False, more=""):
        """Queue a Gatys run of ``configs/<preset>``; the job."""
        from ..experiments.style import stages
        if preset not in PAINT_PRESETS:
            raise XnnError(f"preset {preset!r}: choose one of {', '.join(PAINT_PRESETS)}")
        folder = new_folder(self.uploads)
        photo = keep_image(self.allowed(photo) if photo is not None else None, folder, "content", "photo")
        paths, blend = self.styles(style_upload, example_styles, blend_text, folder)
        sets = [f"content_image={_quoted(photo)}", "style_image=[" + ", ".join(map(_quoted, paths)) + "]",
                f"style_blend_weights={blend if blend else 'null'}",
                f"original_colors={str(bool(original_colors)).lower()}", "preview_s=2"]
        if preset != "style_hires.yaml":       # hires is a schedule of sizes and counts of its own
            sets += [f"image_size={int(image_size)}", f"num_iterations={int(num_iterations)}"]
        if style_weight not in (None, ""):
            sets.append(f"style_weight={float(style_weight)}")
        if content_weight not in (None, ""):
            sets.append(f"content_weight={float(content_weight)}")
        return self._submit("paint", preset, sets, lambda cfg: {
            "total": sum(n for _, n in stages(cfg)), "preview": "progress.png", "result": cfg["output_image"]}, more)

    def video(self, clip, style_upload=None, example_styles=("starry_night",), blend_text="", temporal="flow",
              image_size=384, model=ADAIN, more=""):
        """Queue a video run (AdaIN's video.yaml, or fast_style.yaml with a trained model); the job."""
        folder = new_folder(self.uploads)
        clip_path, frames = keep_video(self.allowed(clip) if clip is not None else None, folder)
        if model == ADAIN:
            paths, blend = self.styles(style_upload, example_styles, blend_text, folder)
            config = "video.yaml"
            sets = [f"input={_quoted(clip_path)}", "style_image=[" + ", ".join(map(_quoted, paths)) + "]",
                    f"style_blend_weights={blend if blend else 'null'}"]
        else:
            known = self.models()
            if model not in known:
                raise XnnError(f"no model {model!r}; choose one of: {', '.join([ADAIN, *known])}")
            config = "fast_style.yaml"
            sets = [f"input={_quoted(clip_path)}", f"model={_quoted(known[model])}"]
        sets += [f"temporal={temporal}", f"image_size={int(image_size)}"]
        return self._submit("video", config, sets, lambda cfg: {
            "total": frames, "step_key": "frame", "result": cfg["output"]}, more)

    def train(self, photos=None, style_upload=None, example_style="starry_night",
              num_iterations=TRAIN_DEFAULTS["num_iterations"], image_size=TRAIN_DEFAULTS["image_size"],
              style_weight=TRAIN_DEFAULTS["style_weight"], more=""):
        """Queue a fast-style training run on the Kodak photos (``photos`` None) or on uploaded photos; the job."""
        folder = new_folder(self.uploads)
        if photos:
            data = folder / "photos"
            data.mkdir()
            for i, p in enumerate(photos):
                keep_image(self.allowed(p), data, f"photo_{i:04d}", f"photo {i + 1}")
            dataset = _quoted(data)
        else:
            dataset = "kodak"
        paths, _ = self.styles(style_upload, [example_style] if example_style and style_upload is None else [], "",
                               folder)
        sets = [f"dataset={dataset}", f"style_image={_quoted(paths[0])}", f"num_iterations={int(num_iterations)}",
                f"image_size={int(image_size)}", f"style_weight={float(style_weight)}"]
        def fields(cfg):
            if photos and len(photos) <= cfg["hold_out"]:
                raise XnnError(f"{len(photos)} photo(s): {cfg['hold_out']} are held out for the previews, so "
                               f"upload at least {cfg['hold_out'] + 1} (a few hundred train better)")
            return {"total": cfg["num_iterations"], "preview": "preview.png", "result": "model.npz"}
        return self._submit("train", "train_fast_style.yaml", sets, fields, more)

    # -- runs ----------------------------------------------------------------------------------
    def runs(self) -> list:
        """The run folders under the studio's folder (those with a config.yaml), newest first."""
        found = [p.parent for p in self.root.glob("*/config.yaml")]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def run_files(self, name) -> dict:
        """What the Runs tab shows of one run folder: its pictures, config, summary and main output."""
        folder = self.allowed(self.root / str(name))
        if folder.parent != self.root or not (folder / "config.yaml").is_file():
            raise XnnError(f"no run {name!r} in {self.root}")
        pick = lambda *names: next((folder / n for n in names if (folder / n).is_file()), None)  # noqa: E731
        summary = folder / "summary.json"
        return {"folder": folder,
                "picture": pick("summary.png", "preview.png", "progress.png", "output.png"),
                "curve": pick("losses.png"),
                "config": (folder / "config.yaml").read_text(encoding="utf-8"),
                "summary": summary.read_text(encoding="utf-8") if summary.is_file() else "",
                "output": pick("output.png", "output.mp4", "model.npz", "output.jpg")}

    def close(self):
        """Stop the jobs (the running one saves and stays resumable) and let the warm-up finish."""
        self.queue.shutdown()
        if self._warming:
            self.warm.wait(300)


def _more(text) -> list:
    """The "more settings" box: one KEY=VALUE per line (as --set), blank lines and # comments skipped."""
    out = []
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            if "=" not in line:
                raise XnnError(f"more settings: {line!r} is not KEY=VALUE (one per line, e.g. tv_weight=0)")
            out.append(line)
    return out
