"""Driving the studio's page in Chromium (Playwright): shared by tests/test_studio_browser.py and
docs/make_studio_screenshots.py."""
import os
import shutil

#: flags a root, offline, headless Chromium needs (no sandbox as root; no calls home)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
#: Debian's Chromium (XNN_CHROMIUM names another); None where there is none
CHROMIUM = os.environ.get("XNN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def start_paint(page, photo, size: int, iterations: int):
    """On the Paint tab: upload ``photo``, set the image size and iterations, press Start, and wait
    until the status line says the job runs."""
    page.get_by_role("tab", name="Paint").click()
    panel = page.locator("#paint-start").locator("xpath=ancestor::div[@role='tabpanel']")
    panel.locator("input[type=file]").first.set_input_files(str(photo))
    box = panel.get_by_label("image size (px; hires has its own schedule)").first
    box.fill(str(size))
    box.press("Enter")
    panel.get_by_label("iterations").fill(str(iterations))
    page.click("#paint-start")
    wait_status(page, "paint", "running")


def wait_status(page, kind: str, text: str, timeout_ms: int = 120_000):
    """Wait until the ``kind`` tab's status line contains ``text``."""
    page.wait_for_function(f"() => document.querySelector('#{kind}-status').innerText.includes({text!r})",
                           timeout=timeout_ms)
