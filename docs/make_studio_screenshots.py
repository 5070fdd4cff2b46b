"""The studio's screenshots in docs/ (docs/studio_*.jpg), taken as a user works: in Debian's
Chromium, driven by Playwright, against a studio started by this script.

    XNN_HOME=../shared/data python docs/make_studio_screenshots.py [--out docs] [--runs runs/studio-shots]

Instant: the cat with Starry Night.  Paint: style.yaml at 256 px, captured while it runs (the
live preview, the loss curve and the ETA) and again after Stop.  Video: the example clip at
256 px, once it plays.  Runs: two run folders side by side.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def tab(page, name):
    page.get_by_role("tab", name=name).click()
    time.sleep(0.5)


def main():
    from playwright.sync_api import sync_playwright

    from tests.studio_page import CHROMIUM, FLAGS, start_paint, wait_status
    from xnn.studio import serve
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "docs"))
    ap.add_argument("--runs", default=str(REPO / "runs" / "studio-shots"),
                    help="the studio's folder for these runs (new or empty)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    runs = pathlib.Path(args.runs)
    if runs.exists() and any(runs.iterdir()):
        sys.exit(f"--runs {runs} is not empty; give a new folder")
    studio, server, url = serve(args.runs)
    hosts = set()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
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

            start_paint(page, REPO / "examples/chelsea.png", 256, 150)
            wait_status(page, "paint", "to go")
            time.sleep(14)
            print("paint:", page.locator("#paint-status").inner_text())
            page.screenshot(path=str(out / "studio_paint.jpg"), full_page=True, type="jpeg", quality=85)
            page.click("#paint-stop")
            wait_status(page, "paint", "stopped")
            print("paint:", page.locator("#paint-status").inner_text())

            tab(page, "Video")
            panel = page.locator("#video-start").locator("xpath=ancestor::div[@role='tabpanel']")
            panel.locator("input[type=file]").first.set_input_files(str(REPO / "examples/coffee_pan.mp4"))
            time.sleep(2)
            vsize = panel.get_by_label("frame size (px)").first
            vsize.fill("256")
            vsize.press("Enter")
            page.click("#video-start")
            wait_status(page, "video", "done", 600_000)
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
