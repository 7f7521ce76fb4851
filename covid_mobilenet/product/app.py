"""A local web page for one finished run: drop chest X-ray images, read what the model says and where it looks.

    python -m covid_mobilenet.app [--run results/<experiment>/seed-<seed>] [--port P] [--host 127.0.0.1]

Gradio serves the page on 127.0.0.1 only (``--host 0.0.0.0`` to be reached from other machines, on purpose),
with no public share link and no usage analytics. Without ``--run`` it serves the best finished real run (as
``predict`` does), else the best demo run under a "demo model, synthetic data" banner, else it says how to
train one. Each image's answer is ``predict``'s (``product/page.py``), with its Grad-CAM overlay.

Uploads, overlays and everything else the server writes go to one temporary folder, removed when the server
stops (Ctrl-C or SIGTERM). Limits: files of at most ``MAX_FILE_MB`` MB and ``MAX_PIXELS`` pixels,
``MAX_IMAGES`` images per request, one request computed at a time with at most ``QUEUE_SIZE`` waiting (the
model uses every core anyway); beyond that the page says the queue is full and to try again.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ..analysis.results import RunNotFound  # noqa: E402
from ..common.run_layout import METRICS_FILE  # noqa: E402
from .page import (DEMO_BANNER, MAX_FILE_MB, MAX_IMAGES, NOTICE, answer, discard_uploads, run_overview,  # noqa: E402
                   run_to_serve)
from .predict import DEFAULT_RESULTS, PredictError, load_trained  # noqa: E402

DELETE_EVERY, DELETE_AFTER = 60, 600  # seconds: Gradio's delete_cache, for files no request deletes
# An upload is stored before its request joins the queue, and the server keeps one file per content: a file stored
# again less than this many seconds ago may belong to a request about to join, so it waits for a later request.
# 10 s was too short on a loaded 2-core machine: one of 20 clients sending the same files at once joined the queue
# later than that after its upload, and was answered without the file another request's answer had deleted.
UPLOAD_GRACE = 60
QUEUE_SIZE = 16  # waiting requests: the last of 16 of 32 images each waits about half a minute at 224 px on 2 cores
TITLE = "COVID-19 chest X-ray classifier (MobileNet)"


def model_card_text(run: Path, metrics: dict) -> str:
    """The run's model card: the exported one when there is one, else made from metrics.json alone."""
    from .model_card import model_card

    export_file = run / "export" / "export.json"
    return model_card(metrics, json.loads(export_file.read_text()) if export_file.is_file() else None)


def _modified(path: str) -> float:
    """When the file was last stored (an upload of the same content again refreshes it); 0 when it is gone."""
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


def waiting_uploads(page) -> set[str] | None:
    """The files that requests still waiting in the page's queue name: the server keeps one copy of each content,
    so two requests with the same file share it. Read from Gradio's queue (gradio 6); None when it cannot be read:
    then nothing is deleted early (``delete_cache`` still removes it later)."""
    found: set[str] = set()

    def collect(value):
        if isinstance(value, dict):
            if isinstance(value.get("path"), str):
                found.add(value["path"])
            for item in value.values():
                collect(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)

    try:
        for queue in page._queue.event_queue_per_concurrency_id.values():
            for event in list(queue.queue):
                collect(event.data.data if event.data is not None else [])
    except AttributeError:
        return None
    return found


def build_page(trained, metrics: dict, run: Path, demo: bool, max_images: int = MAX_IMAGES, scratch: Path | None = None):
    """The Gradio page (gradio is imported here, after ``main`` has pointed its temporary folder ``scratch``)."""
    import gradio as gr

    from ..model.gradcam import GradCam

    scratch = Path(scratch or os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")

    gradcam = GradCam(trained.model)

    answered: set[str] = set()  # uploads of answered requests not deleted yet

    def on_predict(images, masks):
        try:
            result = answer(trained, images or [], masks or [], gradcam=gradcam, max_images=max_images)
        finally:  # the uploads of this and earlier answered requests, deleted (but those a request may still need)
            answered.update(map(str, [*(images or []), *(masks or [])]))
            now = time.time()
            settled = {f for f in answered if now - _modified(f) >= UPLOAD_GRACE}
            discard_uploads(sorted(settled), scratch, waiting_uploads(page))
            answered.intersection_update({f for f in answered if Path(f).exists()})
        rows = result.table.assign(path=[Path(path).name for path in result.table["path"]])  # not the server's folder
        return result.markdown, result.overlays, rows.round(4)

    # what a request's deletion misses (a refused request's uploads, the overlays shown) goes after DELETE_AFTER
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(DELETE_EVERY, DELETE_AFTER)) as page:
        gr.Markdown(f"# {TITLE}")
        if demo:
            gr.Markdown(DEMO_BANNER, elem_id="demo-banner")
        gr.Markdown(NOTICE, elem_id="notice")
        with gr.Row():
            with gr.Column(scale=1):
                images = gr.File(label=f"Chest X-ray images: PNG, JPEG or DICOM, any size (up to {max_images} at once)",
                                 file_count="multiple", elem_id="images")
                masks = gr.File(label="Lung masks (optional): same file names as the images", file_count="multiple",
                                elem_id="masks")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column(scale=2):
                answers = gr.Markdown("Upload one or more images, then press Predict.", elem_id="answers")
                overlays = gr.Gallery(label="Grad-CAM: where the evidence for the predicted class lies", columns=2,
                                      fit_columns=False, object_fit="contain", preview=False,
                                      format="png", elem_id="gradcam")
        rows = gr.Dataframe(label="As `python -m covid_mobilenet.predict` prints it", elem_id="rows", wrap=True)
        with gr.Accordion("The run", open=True):
            gr.Markdown(run_overview(metrics, run), elem_id="run")
        with gr.Accordion("Model card", open=False):
            gr.Markdown(model_card_text(run, metrics), elem_id="model-card")
        button.click(on_predict, [images, masks], [answers, overlays, rows], concurrency_limit=1)
    return page.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)


def _stop(signum, frame):
    raise KeyboardInterrupt  # Gradio closes its server on it; the finally below removes the temporary folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covid_mobilenet.app", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished run's folder (default: the best real run, else the best demo run)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="where to look for runs (default: %(default)s)")
    parser.add_argument("--port", type=int, help="port (default: the first free one from 7860)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--max-images", type=int, default=MAX_IMAGES, help="images per request (default: %(default)s)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        run, demo = run_to_serve(args.results_dir, args.run)
        trained = load_trained(run)
    except (RunNotFound, PredictError) as exc:
        print(f"app: {exc}", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="covid-mobilenet-app-"))
    os.environ["GRADIO_TEMP_DIR"] = str(scratch)  # read when gradio is imported: uploads and outputs go here
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    signal.signal(signal.SIGTERM, _stop)
    try:
        metrics = json.loads((run / METRICS_FILE).read_text())
        page = build_page(trained, metrics, run, demo, args.max_images, scratch)
        _, url, _ = page.launch(server_name=args.host, server_port=args.port, share=False, prevent_thread_lock=True,
                                max_file_size=f"{MAX_FILE_MB}mb", footer_links=[], run_history=False,
                                enable_monitoring=False, mcp_server=False, ssr_mode=False, show_error=True, quiet=True)
        print(f"Serving {run}{' (demo model, synthetic data)' if demo else ''} at {url} (ready in "
              f"{time.perf_counter() - started:.1f} s; Ctrl-C stops it). Not for diagnosis or clinical use.",
              file=sys.stderr, flush=True)
        page.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0
