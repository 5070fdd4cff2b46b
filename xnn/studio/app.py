"""The studio's page (Gradio): tabs that call :class:`xnn.studio.service.Studio`.

Every event takes its inputs unprocessed (``preprocess=False``): an uploaded file reaches the
studio as the path Gradio stored it at, and xnn's own readers decide whether it is an image or
a video, so a bad upload gets xnn's one-line message in the page (a ``gr.Error``) instead of a
decoder's traceback.  The named events (``api_name``) are the studio's API, which the tests
drive with ``gradio_client``: ``/instant``, ``/paint``, ``/video``, ``/train``, ``/watch``,
``/stop``, ``/runs`` and ``/run``.
"""
from __future__ import annotations

import functools
import json

import gradio as gr

from ..errors import XnnError
from .service import ADAIN, PAINT_PRESETS, TRAIN_DEFAULTS, Studio

#: system fonts only: the default theme would fetch its fonts from Google
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])
#: a picture the page shows: lossless, with download and full-screen buttons and no share button
SHOWN = {"format": "png", "interactive": False, "buttons": ["download", "fullscreen"]}
KINDS = {"paint": "Paint", "video": "Video", "train": "Train"}


def _path(payload):
    """The stored path of an unprocessed file value (a FileData dict, a path, or None)."""
    if payload is None or payload == "":
        return None
    if isinstance(payload, dict):
        return payload.get("path")
    if isinstance(payload, (list, tuple)):          # gr.File(file_count="multiple")
        return [_path(p) for p in payload]
    return str(payload)


def _page_errors(fn):
    """An XnnError (bad input) becomes the page's error message; the server goes on."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except XnnError as e:
            raise gr.Error(str(e), print_exception=False) from None
    return wrapped


def _duration(seconds) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def status_text(studio: Studio, p: dict) -> str:
    """One paragraph for a job: where it stands, how far, how long to go, where its files are."""
    if p.get("state") == "unknown":
        return "No job yet."
    name = f"Job {p['id']} ({KINDS.get(p['kind'], p['kind'])})"
    if p["state"] == "queued":
        running = studio.queue.running()
        ahead = (p["position"] or 1) - 1
        if running is None and not ahead:
            return f"{name} is **starting**."
        return (f"{name} is **queued**: one job runs at a time; it starts after "
                + (f"job {running.id} ({KINDS.get(running.kind, running.kind)})" if running else "the current one")
                + (f" and {ahead} more." if ahead else "."))
    unit = "frames" if p["kind"] == "video" else "iterations"
    steps = f"{p['done']} / {p['total']} {unit}" if p["total"] else f"{p['done']} {unit}"
    if p["state"] == "running":
        eta = f", about {_duration(p['eta_s'])} to go" if p["eta_s"] is not None else ""
        last = p["rows"][-1] if p["rows"] else {}
        loss = f", loss {last['total_loss']:.4g}" if "total_loss" in last else ""
        bar = f'<progress value="{p["done"]}" max="{p["total"]}"></progress> ' if p["total"] else ""
        return f"{bar}{name} is **running**: {steps}{loss}{eta}. Run folder: `{p['run_dir']}`"
    return f"{name} **{p['state']}** after {steps}: {p['message']}"


def _curve(p: dict):
    """The loss curve of a job's metrics as a table for gr.LinePlot (log10 of the total loss)."""
    import math

    import pandas
    rows = [(r.get("iter", 0), math.log10(r["total_loss"])) for r in p.get("rows", [])
            if r.get("total_loss", 0) > 0]
    return pandas.DataFrame(rows, columns=["iteration", "log10 loss"])


def build(studio: Studio) -> gr.Blocks:
    photos = [str(p) for p in studio.example_photos()]
    styles = list(studio.example_styles())
    models = lambda: [ADAIN, *studio.models()]        # noqa: E731

    def style_inputs(default=("starry_night",)):
        with gr.Column():
            names = gr.CheckboxGroup(styles, value=list(default), label="example paintings")
            upload = gr.Image(type="filepath", image_mode=None, label="or upload a style", height=180,
                              sources=["upload", "clipboard"])
            blend = gr.Textbox(label="blend weights (one per style, e.g. 2, 1; empty: equal)", max_lines=1)
        return upload, names, blend

    with gr.Blocks(title="xnn studio", analytics_enabled=False) as page:
        gr.Markdown("## xnn studio\nStyle transfer with xnn's own layers, on this machine. Every long job is an "
                    f"ordinary run folder in `{studio.root}`: `python run.py --resume FOLDER` continues it.")
        with gr.Tab("Instant") as instant_tab:
            with gr.Row():
                with gr.Column():
                    photo = gr.Image(type="filepath", image_mode=None, label="photo", elem_id="instant-photo",
                                     sources=["upload", "clipboard"])
                    gr.Examples(photos, inputs=photo, label="example photos")
                s_upload, s_names, s_blend = style_inputs()
                with gr.Column():
                    result = gr.Image(label="result", **SHOWN, elem_id="instant-result")
                    took = gr.Markdown(elem_id="instant-took")
            with gr.Row():
                method = gr.Dropdown(models(), value=ADAIN, label="method (a trained model ignores the styles)")
                alpha = gr.Slider(0, 1, 1, step=0.05, label="alpha (0 = photo, 1 = full style)")
                style_size = gr.Slider(128, 1024, 512, step=32, label="style size (px)")
                size = gr.Slider(128, 1024, 512, step=32, label="image size (px)")
                colours = gr.Checkbox(False, label="preserve colours")
            go = gr.Button("Stylise", variant="primary", elem_id="instant-go")

            @_page_errors
            def instant(photo, s_upload, s_names, s_blend, alpha, style_size, size, colours, method):
                img, seconds = studio.instant(_path(photo), _path(s_upload), s_names, s_blend, alpha, style_size,
                                              size, colours, method)
                return img, f"{img.shape[1]}x{img.shape[0]} px in {seconds:.2f} s"
            go.click(instant, [photo, s_upload, s_names, s_blend, alpha, style_size, size, colours, method],
                     [result, took], api_name="instant", preprocess=False, concurrency_limit=1)

        def job_tab(kind, start_inputs, start_fn, preview_label, result_component):
            """Start / stop buttons, the job's status, preview, loss curve and result, refreshed every 2 s."""
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id=f"{kind}-start")
                stop = gr.Button("Stop (keeps the image and a checkpoint)", elem_id=f"{kind}-stop")
            job = gr.Number(None, label="job", precision=0, interactive=False, elem_id=f"{kind}-job")
            status = gr.Markdown("No job yet.", elem_id=f"{kind}-status")
            with gr.Row():
                preview = gr.Image(label=preview_label, **SHOWN, visible=kind != "video", height=400)
                curve = gr.LinePlot(x="iteration", y="log10 loss", label="loss", visible=kind == "paint")
            out = result_component()

            @_page_errors
            def begin(*values):
                j = start_fn(*values)
                return j.id, status_text(studio, studio.queue.progress(j.id))

            def watch(job_id):
                jid = int(job_id) if job_id not in (None, "") else None
                if jid is None or jid not in studio.queue.jobs:     # a new page: the tab's latest job
                    latest = studio.queue.latest(kind)
                    jid = latest.id if latest else None
                if jid is None:
                    return None, "No job yet.", None, _curve({}), None
                p = studio.queue.progress(jid)
                result = p["result"] if p["state"] in ("done", "stopped") else None
                return jid, status_text(studio, p), p["preview"], _curve(p), result

            def halt(job_id):
                if job_id in (None, ""):
                    return "No job to stop."
                return studio.queue.stop(int(job_id))
            start.click(begin, start_inputs, [job, status], api_name=kind, preprocess=False)
            stop.click(halt, [job], [status], api_name=f"stop_{kind}")
            gr.Timer(2.0).tick(watch, [job], [job, status, preview, curve, out], api_name=f"watch_{kind}",
                               show_progress="hidden")

        with gr.Tab("Paint"):
            with gr.Row():
                p_photo = gr.Image(type="filepath", image_mode=None, label="photo", sources=["upload", "clipboard"])
                p_upload, p_names, p_blend = style_inputs()
            gr.Examples(photos, inputs=p_photo, label="example photos")
            first = studio.preset("style.yaml")
            with gr.Row():
                preset = gr.Dropdown(list(PAINT_PRESETS), value="style.yaml", label="preset (configs/)")
                p_size = gr.Slider(64, 2048, first["image_size"], step=32,
                                   label="image size (px; hires has its own schedule)")
                iters = gr.Number(first["num_iterations"], precision=0, label="iterations")
                sw = gr.Number(first["style_weight"], label="style weight")
                cw = gr.Number(first["content_weight"], label="content weight")
                p_colours = gr.Checkbox(False, label="preserve colours")

            @_page_errors
            def preset_values(name):
                v = studio.preset(name)
                return v["image_size"], v["num_iterations"], v["style_weight"], v["content_weight"]
            preset.change(preset_values, preset, [p_size, iters, sw, cw], api_visibility="private")
            more = gr.Textbox(label="more settings, one KEY=VALUE per line (as --set)", lines=2)

            def paint(photo, upload, names, blend, preset, size, iters, sw, cw, colours, more):
                return studio.paint(_path(photo), _path(upload), names, blend, preset, size, iters, sw, cw, colours,
                                    more)
            job_tab("paint", [p_photo, p_upload, p_names, p_blend, preset, p_size, iters, sw, cw, p_colours, more],
                    paint, "picture so far", lambda: gr.Image(label="result", **SHOWN))

        with gr.Tab("Video") as video_tab:
            with gr.Row():
                clip = gr.Video(label="clip (up to 3000 frames)", sources=["upload"])
                v_upload, v_names, v_blend = style_inputs()
            gr.Examples([str(studio.example_clip())], inputs=clip, label="example clip")
            with gr.Row():
                v_method = gr.Dropdown(models(), value=ADAIN, label="method")
                temporal = gr.Radio(["none", "stats", "flow"], value="flow",
                                    label="temporal (flow: steadiest; stats: AdaIN only)")
                v_size = gr.Slider(128, 1024, 384, step=32, label="frame size (px)")
            gr.Markdown("The result plays below when the job is done; its run folder also keeps the frame check "
                        "(summary.png: flicker maps) and summary.json.")

            def video(clip, upload, names, blend, method, temporal, size):
                return studio.video(_path(clip), _path(upload), names, blend, temporal, size, method)
            job_tab("video", [clip, v_upload, v_names, v_blend, v_method, temporal, v_size], video, "",
                    lambda: gr.Video(label="result", interactive=False, height=420))

        with gr.Tab("Train"):
            gr.Markdown("Train a fast style network for one style (docs/fast_style.md). The default, "
                        f"{TRAIN_DEFAULTS['num_iterations']} iterations on the 24 Kodak photos, takes about 46 "
                        "minutes on 2 CPU cores. The trained model then appears in the method lists of the "
                        "Instant and Video tabs.")
            with gr.Row():
                t_photos = gr.File(file_count="multiple", file_types=["image"],
                                   label="training photos (empty: the 24 Kodak photos)")
                t_style = gr.Radio(styles, value="starry_night", label="style")
                t_upload = gr.Image(type="filepath", image_mode=None, label="or upload a style", height=180,
                              sources=["upload", "clipboard"])
            with gr.Row():
                t_iters = gr.Number(TRAIN_DEFAULTS["num_iterations"], precision=0, label="iterations")
                t_size = gr.Slider(64, 256, TRAIN_DEFAULTS["image_size"], step=32, label="crop size (px)")
                t_sw = gr.Number(TRAIN_DEFAULTS["style_weight"], label="style weight")

            def train(photos, style, upload, iters, size, sw):
                return studio.train(_path(photos) or None, _path(upload), style, iters, size, sw)
            job_tab("train", [t_photos, t_style, t_upload, t_iters, t_size, t_sw], train,
                    "held-out photos, latest preview", lambda: gr.File(label="model.npz", interactive=False))

        with gr.Tab("Runs") as runs_tab:
            refresh = gr.Button("Refresh")
            with gr.Row():
                cols = []
                for side in ("left", "right"):
                    with gr.Column():
                        pick = gr.Dropdown([], label=f"run ({side})", elem_id=f"run-{side}")
                        picture = gr.Image(label="summary", **SHOWN)
                        curve_img = gr.Image(label="losses", **SHOWN)
                        download = gr.File(label="output", interactive=False)
                        config = gr.Code(language="yaml", label="config.yaml")
                        summary = gr.Code(language="json", label="summary.json")
                        cols.append((pick, [picture, curve_img, download, config, summary]))

            def run_names():
                names = [p.name for p in studio.runs()]
                return [gr.Dropdown(choices=names, value=names[i] if len(names) > i else None) for i in (0, 1)]

            @_page_errors
            def show(name):
                if not name:
                    return None, None, None, "", ""
                f = studio.run_files(name)
                summary = f["summary"]
                if summary:
                    summary = json.dumps(json.loads(summary), indent=1)
                as_str = lambda p: str(p) if p else None      # noqa: E731
                return as_str(f["picture"]), as_str(f["curve"]), as_str(f["output"]), f["config"], summary
            refresh.click(run_names, None, [cols[0][0], cols[1][0]], api_visibility="private")
            runs_tab.select(run_names, None, [cols[0][0], cols[1][0]], api_visibility="private")
            for pick, outputs in cols:
                pick.change(show, pick, outputs, api_visibility="private")

            def run_list() -> list[str]:
                return [p.name for p in studio.runs()]
            gr.api(run_list, api_name="run_list")

        for tab, tab_models in ((instant_tab, method), (video_tab, v_method)):    # a model trained meanwhile
            for event in (page.load, tab.select):
                event(lambda: gr.Dropdown(choices=models()), None, tab_models, api_visibility="private")
    return page
