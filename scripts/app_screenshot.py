"""Make docs/app.png: the web app (``python -m covid_mobilenet.app``) in a real browser, answering a demo image.

    python scripts/app_screenshot.py [--run RUN] [--out docs/app.png] [--chromium /usr/bin/chromium]

Starts the app on a free port for the run (default: what the app serves by default, the demo's best run when
there is no real one), opens the page in Chromium through Playwright, uploads a COVID image of the demo set
with its lung mask, waits for the answer and saves a screenshot of the whole page. Needs Playwright (Python,
requirements-dev.txt) and a Chromium: Debian's ``chromium`` package (Playwright's own browser download is not
needed). The helpers here also drive the browser test (tests/test_app.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [  # headless in a closed network: no background connections, no sandbox as root
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


def chromium() -> str | None:
    """The Chromium to drive: $CHROMIUM, else Debian's /usr/bin/chromium (or chromium on the PATH)."""
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120):
    """``python -m covid_mobilenet.app ARGS --port <free>`` in a subprocess: yields (url, process, seconds to ready,
    its output lines so far and to come); stopped with SIGTERM afterwards."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "covid_mobilenet.app", *args, "--port", str(port)], cwd=cwd or ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines, ready = [], threading.Event()

    def read():  # drains the output, so that the app never blocks on a full pipe
        for line in process.stdout:
            lines.append(line)
            if line.startswith("Serving "):
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        ready.wait(timeout)
        if process.poll() is not None or not any(line.startswith("Serving ") for line in lines):
            raise RuntimeError(f"the app did not start serving (exit {process.poll()}):\n{''.join(lines)}")
        yield f"http://127.0.0.1:{port}/", process, time.perf_counter() - started, lines
    finally:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
        reader.join(timeout=10)


@contextmanager
def browser_page(executable: str | None = None, width: int = 1400, height: int = 1000):
    """A Playwright page in headless Chromium (Debian's, by ``executable_path``)."""
    from playwright.sync_api import sync_playwright

    executable = executable or chromium()
    if not executable:
        raise RuntimeError("No Chromium found: install Debian's chromium package (apt-get install chromium) or set CHROMIUM.")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def predict_on_page(page, images: list[Path], masks: list[Path] = (), timeout_ms: int = 120_000) -> str:
    """Upload ``images`` (and ``masks``), press Predict and return the answers' text once every image is answered."""
    page.locator("#images input[type=file]").set_input_files([str(p) for p in images])
    if masks:
        page.locator("#masks input[type=file]").set_input_files([str(p) for p in masks])
    for box, files in (("#images", images), ("#masks", masks)):  # a stored upload is listed with its download link
        for path in files:
            page.locator(f"{box} a[download={json.dumps(path.name)}]").first.wait_for(timeout=timeout_ms)
    page.locator("#predict").click()
    names = [p.name for p in images]
    page.wait_for_function("names => { const text = document.querySelector('#answers').innerText;"
                           " return names.every(n => text.includes(n)); }", arg=names, timeout=timeout_ms)
    return page.locator("#answers").inner_text()


def clear_uploads(page) -> None:
    """Empty both upload boxes (their clear buttons)."""
    for box in ("#images", "#masks"):
        clear = page.locator(f"{box} button[aria-label='Clear']")
        if clear.count():
            clear.first.click()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="the run to serve (default: what the app serves by default)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo" / "COVID-19_Radiography_Dataset",
                        help="the demo set whose first COVID image is uploaded (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "app.png")
    parser.add_argument("--chromium", help="Chromium executable (default: $CHROMIUM or chromium on the PATH)")
    args = parser.parse_args(argv)
    image = sorted((args.data / "COVID" / "images").glob("*.png"))[0]
    mask = args.data / "COVID" / "masks" / image.name
    with serving(*(["--run", str(args.run)] if args.run else [])) as (url, _, seconds, _):
        with browser_page(args.chromium) as page:
            page.goto(url)
            predict_on_page(page, [image], [mask] if mask.is_file() else [])
            page.locator("#gradcam img").first.wait_for()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
    print(f"wrote {args.out} (app ready in {seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
