"""The studio in a real browser: Debian's Chromium driven by Playwright (skipped where either is
missing; .ci/run installs both).  It loads the page, uploads a photo and a style, runs AdaIN,
saves a screenshot and checks that the result is a picture, that no error was shown and that
the page asked nothing of any host but 127.0.0.1."""
import os
import pathlib
import time

import pytest

from .conftest import REPO, weights_path
from .studio_page import CHROMIUM, FLAGS, start_paint, wait_status

pytest.importorskip("gradio", reason="the studio extra (pip install 'xnn[studio]') is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (Debian: apt-get install chromium)"),
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting", "ignore:The copy keyword")]
#: where the screenshot goes (CI keeps it in the test's tmp folder)
SHOT_DIR = os.environ.get("XNN_SCREENSHOTS")


def test_adain_in_a_real_browser(tmp_path):
    from xnn.studio import serve
    weights_path("adain_decoder.npz")
    studio, page_server, url = serve(tmp_path / "runs")
    hosts, errors = set(), []
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#instant-go", timeout=60_000)
            page.locator("#instant-photo input[type=file]").set_input_files(str(REPO / "examples" / "chelsea.png"))
            style_input = page.locator("input[type=file]").nth(1)          # the first "or upload a style"
            style_input.set_input_files(str(REPO / "examples" / "the_scream.jpg"))
            page.wait_for_selector("#instant-photo img", timeout=30_000)
            page.click("#instant-go")
            result = page.wait_for_selector("#instant-result img", timeout=60_000)
            page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=result, timeout=30_000)
            size = result.evaluate("el => [el.naturalWidth, el.naturalHeight]")
            took = page.locator("#instant-took").inner_text()
            shot = pathlib.Path(SHOT_DIR or tmp_path) / "studio_instant.png"
            page.screenshot(path=str(shot), full_page=True)
            toasts = page.locator(".toast-body.error, .toast-wrap .error").count()
            browser.close()
    finally:
        studio.close()
        page_server.close()
    assert size == [512, 341], size
    assert "512x341 px in" in took
    assert toasts == 0 and not errors, errors
    assert shot.stat().st_size > 50_000
    assert hosts == {url.split("/")[2]}, hosts            # nothing but the studio itself


@pytest.mark.slow                   # 28 s: waits for a paint job to make progress
def test_closing_the_tab_does_not_stop_a_job(tmp_path):
    """A Paint job started in one tab keeps running after that tab is closed; a new tab shows it
    (the tab's latest job) and can stop it, which leaves it resumable."""
    from xnn.studio import serve
    weights_path("vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
    studio, page_server, url = serve(tmp_path / "runs")
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            start_paint(page, REPO / "examples" / "chelsea.png", 64, 3000)
            page.close()                                         # the user closes the tab
            job = studio.queue.latest("paint")
            done = studio.queue.progress(job.id)["done"]
            end = time.time() + 60
            while studio.queue.progress(job.id)["done"] <= done and time.time() < end:
                time.sleep(1)
            assert job.state == "running" and studio.queue.progress(job.id)["done"] > done
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Paint").click()
            wait_status(page, "paint", "running", 60_000)
            page.click("#paint-stop")
            wait_status(page, "paint", "stopped")
            browser.close()
    finally:
        studio.close()
        page_server.close()
    assert job.state == "stopped" and (job.run_dir / "checkpoint.npz").is_file()
