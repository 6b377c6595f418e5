"""End to end in a real headless browser: `semdir-edit ui` on the shipped weights, driven by Playwright.

Uses Debian's chromium (/usr/bin/chromium; `make chromium` installs it) because Playwright's own browser download
is not reachable from CI. Set SEMDIR_UI_SCREENSHOT=docs/ui.png to also write the README's screenshot.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
SHIPPED = ROOT / "weights" / "fashion_mnist"
PHOTO = ROOT / "docs" / "examples" / "sneaker.jpg"

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (make chromium installs it)"),
    pytest.mark.skipif(not (SHIPPED / "manifest.json").exists(), reason="shipped weights missing"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    """`semdir-edit ui` in a subprocess (the real command) on a free port; the URL once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "semdir_edit", "ui", "--port", str(port), "--method", "encoder",
                             "--device", "cpu"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "api/info", timeout=5) as response:
                    json.load(response)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"semdir-edit ui did not start:\n{proc.stdout.read()}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def editor_page(server_url: str) -> Iterator[sync_api.Page]:
    """The editor's page in headless Chromium, once its method list has loaded."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(server_url)
            page.wait_for_function("document.querySelectorAll('#method option').length > 0")
            yield page
        finally:
            browser.close()


def test_upload_move_slider_download(server_url, tmp_path):
    with editor_page(server_url) as page:
        page.set_input_files("#file", str(PHOTO))
        # The inversion runs once; class and figures appear when it is done.
        page.wait_for_function("document.getElementById('class').textContent !== '–'", timeout=120_000)
        assert page.locator("#error").text_content() == ""
        assert "Sneaker" in page.locator("#class").text_content()
        assert "PSNR" in page.locator("#quality").text_content()
        assert page.locator("#groups .slider").count() == 16  # K = 8 global + 8 class-specific.
        assert page.locator("#groups .slider label").first.text_content().startswith("global:0")
        before = page.locator("#edited-img").screenshot()

        # Drag the first slider to the right in small steps (many input events, throttled by the page).
        slider = page.locator("#groups .slider input").first
        box = slider.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] / 2, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.95, y, steps=15)
        page.mouse.up()
        page.wait_for_function("Number(document.getElementById('edited-img').dataset.seq || 0) > 0")
        page.wait_for_timeout(500)  # Let the last throttled request land.
        value = float(slider.input_value())
        assert value > 2
        after = page.locator("#edited-img").screenshot()
        assert after != before, "the edited image did not change"
        command = page.locator("#command").text_content()
        assert "--direction global:0" in command and "sneaker.latent.safetensors" in command
        assert "--keep class" in command  # "keep the class" is on by default: the edit is walked locked.
        # A class slider: class-locked is apply's default for it; unlocked, its line says --keep none.
        class_slider = page.locator("#groups .slider input").nth(8)
        class_slider.fill("1.5")
        page.wait_for_function("document.getElementById('command').textContent.includes('class:')")
        command = page.locator("#command").text_content()
        assert "--direction class:0 --eps 1.5 -o" in command, command
        locked_seq = page.locator("#edited-img").get_attribute("data-seq")
        page.locator("#keep-class").uncheck()
        command = page.locator("#command").text_content()
        assert "--direction class:0 --eps 1.5 --keep none" in command, command
        page.wait_for_function(f"document.getElementById('edited-img').dataset.seq !== '{locked_seq}'")
        page.locator("#keep-class").check()

        # A class-boundary edit on top, then the downloads.
        page.locator("#target").select_option("Ankle boot")
        page.locator("#boundary-slider input").fill("2")
        # The edited image's class is shown live beside the input's (which stays the sneaker's).
        page.wait_for_function("document.getElementById('edited-class').textContent.startsWith('Ankle boot')",
                               timeout=60_000)
        assert "Sneaker" in page.locator("#class").text_content()
        with page.expect_download() as download:
            page.click("#download-png")
        assert download.value.suggested_filename == "sneaker.edited.png"
        with page.expect_download() as download:
            page.click("#download-latent")
        assert download.value.suggested_filename == "sneaker.latent.safetensors"
        with page.expect_download() as download:
            page.click("#download-strip")
        assert download.value.suggested_filename == "sneaker.strip.png"
        page.wait_for_function("document.getElementById('strip').naturalWidth > 0")
        assert page.locator("#error").text_content() == ""

        page.screenshot(path=str(tmp_path / "ui.png"), full_page=True)
        if os.environ.get("SEMDIR_UI_SCREENSHOT"):
            shutil.copy(tmp_path / "ui.png", os.environ["SEMDIR_UI_SCREENSHOT"])

        # A bad upload: a readable message on the page, the current image stays.
        bad = tmp_path / "notes.png"
        bad.write_text("not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_function("document.getElementById('error').textContent !== ''")
        assert "notes.png" in page.locator("#error").text_content()
        assert "Sneaker" in page.locator("#class").text_content()


NO_BROKEN_IMAGES = ("[...document.images].filter((i) => i.getClientRects().length > 0"
                    " && !(i.complete && i.naturalWidth > 0)).length")


def wait_no_broken_images(page) -> None:
    """Every shown image loads: one still loading is waited for, a broken one (never loads) fails on the timeout."""
    page.wait_for_function(f"{NO_BROKEN_IMAGES} === 0", timeout=10_000)


def test_placeholder_class_override_and_reset(server_url):
    """The empty page shows a placeholder, no broken images; "edit as" swaps the class sliders to that class's set
    and an edit there lands (live edited-class line); Reset clears the strip; slider labels are unique."""
    with editor_page(server_url) as page:
        assert page.locator("#placeholder").is_visible()
        wait_no_broken_images(page)
        assert not page.locator("#edit-class").is_visible()

        page.set_input_files("#file", str(PHOTO))
        page.wait_for_function("document.getElementById('class').textContent !== '–'", timeout=120_000)
        assert not page.locator("#placeholder").is_visible()
        wait_no_broken_images(page)
        assert not page.locator("#progress-row").is_visible()  # Shown only while an inversion runs.
        assert "--eps" not in page.locator("#command").text_content()  # No command before a slider moves.
        labels = page.locator("#groups .slider label").all_text_contents()
        assert len(labels) == 16 and len(set(labels)) == 16, labels
        class_rows = page.locator("#groups .group[data-group=class] .slider")
        assert class_rows.first.get_attribute("data-spec") == "class:0"
        assert page.locator("#edit-class").input_value() == "Sneaker"

        page.locator("#edit-class").select_option("Ankle boot")
        page.wait_for_function("document.querySelector('#groups .group[data-group=class] .slider')"
                               ".dataset.spec === 'class:0@Ankle boot'")
        specs = [class_rows.nth(k).get_attribute("data-spec") for k in range(class_rows.count())]
        assert specs == [f"class:{k}@Ankle boot" for k in range(8)], specs
        assert "Ankle boot" in page.locator("#groups .group[data-group=class] h3").text_content()
        assert "Ankle boot" not in page.locator("#target").evaluate("s => [...s.options].map(o => o.value)")
        seq = page.locator("#edited-img").get_attribute("data-seq") or "0"
        class_rows.first.locator("input").fill("2")
        page.wait_for_function(f"Number(document.getElementById('edited-img').dataset.seq || 0) > {seq}"
                               " && document.getElementById('edited-class').textContent.includes('%')",
                               timeout=60_000)
        assert page.locator("#error").text_content() == ""
        assert "Sneaker" in page.locator("#class").text_content()  # The input's class line stays.
        command = page.locator("#command").text_content()
        assert "--direction 'class:0@Ankle boot' --eps 2" in command, command

        with page.expect_download():
            page.click("#download-strip")
        page.wait_for_function("document.getElementById('strip').naturalWidth > 0")
        page.click("#reset")
        page.wait_for_function("!document.getElementById('strip').hasAttribute('src')")
        assert not page.locator("#strip").is_visible() and page.locator("#strip-label").text_content() == ""
        assert "--eps" not in page.locator("#command").text_content()
        wait_no_broken_images(page)
