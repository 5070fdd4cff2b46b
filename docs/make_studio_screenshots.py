"""The studio's screenshots in docs/ (docs/studio_*.jpg), taken as a user works: in Debian's
Chromium, driven by Playwright, against a studio started by this script.

    XNN_HOME=../shared/data python docs/make_studio_screenshots.py [--out docs] [--runs /tmp/studio-shots]

Instant: the cat with Starry Night.  Paint: style.yaml at 256 px, captured while it runs (the
live preview, the loss curve and the ETA) and again after Stop.  Video: the example clip at
256 px, once it plays.  Runs: two run folders side by side.
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def tab(page, name):
    page.get_by_role("tab", name=name).click()
    time.sleep(0.5)


def main():
    from playwright.sync_api import sync_playwright

    from xnn.studio import serve
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "docs"))
    ap.add_argument("--runs", default="/tmp/studio-shots")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    shutil.rmtree(args.runs, ignore_errors=True)
    studio, server, url = serve(args.runs)
    hosts = set()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
            page.goto(url)
            page.wait_for_selector("#instant-go", timeout=60_000)
            time.sleep(5)          # let the model finish loading, as a user reading the page would
            page.locator("#instant-photo input[type=file]").set_input_files(str(REPO / "examples/chelsea.png"))
            page.wait_for_selector("#instant-photo img")
            page.click("#instant-go")
            page.wait_for_selector("#instant-result img", timeout=60_000)
            time.sleep(1)
            print("instant:", page.locator("#instant-took").inner_text())
            page.screenshot(path=str(out / "studio_instant.jpg"), full_page=True, type="jpeg", quality=85)

            tab(page, "Paint")
            panel = page.locator("#paint-start").locator("xpath=ancestor::div[@role='tabpanel']")
            panel.locator("input[type=file]").first.set_input_files(str(REPO / "examples/chelsea.png"))
            size = panel.get_by_label("image size (px; hires has its own schedule)").first
            size.fill("256")
            size.press("Enter")
            panel.get_by_label("iterations").fill("150")
            page.click("#paint-start")
            page.wait_for_function("() => document.querySelector('#paint-status').innerText.includes('to go')",
                                   timeout=120_000)
            time.sleep(14)
            print("paint:", page.locator("#paint-status").inner_text())
            page.screenshot(path=str(out / "studio_paint.jpg"), full_page=True, type="jpeg", quality=85)
            page.click("#paint-stop")
            page.wait_for_function("() => document.querySelector('#paint-status').innerText.includes('stopped')",
                                   timeout=120_000)
            print("paint:", page.locator("#paint-status").inner_text())

            tab(page, "Video")
            panel = page.locator("#video-start").locator("xpath=ancestor::div[@role='tabpanel']")
            panel.locator("input[type=file]").first.set_input_files(str(REPO / "examples/coffee_pan.mp4"))
            time.sleep(2)
            vsize = panel.get_by_label("frame size (px)").first
            vsize.fill("256")
            vsize.press("Enter")
            page.click("#video-start")
            page.wait_for_function("() => document.querySelector('#video-status').innerText.includes('done')",
                                   timeout=600_000)
            print("video:", page.locator("#video-status").inner_text())
            time.sleep(3)
            page.screenshot(path=str(out / "studio_video.jpg"), full_page=True, type="jpeg", quality=85)

            tab(page, "Runs")
            time.sleep(3)
            page.screenshot(path=str(out / "studio_runs.jpg"), full_page=True, type="jpeg", quality=85)
            browser.close()
    finally:
        studio.close()
        server.close()
    print("hosts the page asked:", sorted(hosts))


if __name__ == "__main__":
    main()
