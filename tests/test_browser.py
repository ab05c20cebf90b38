"""The image-search notebook as a Voilà app, driven in headless Chromium (Playwright).

Starts ``voila notebooks/similar_images.ipynb`` on 127.0.0.1 with the small
real database, clicks "Random image", checks the thumbnails really render,
searches a URL by pressing Enter, uploads a photo through the real file
input, and saves a screenshot into the test's tmp_path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import Route, free_port, http_server, running_process

NOTEBOOK = ROOT / "notebooks" / "similar_images.ipynb"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
K = 6

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required under CI (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); this test needs a real browser")
    return path


@contextlib.contextmanager
def _voila(db: Path, tmp_path: Path) -> Iterator[str]:
    """Run Voilà on the notebook; always stop it (and its kernels) afterwards."""
    port = free_port()
    env = {**os.environ, "SIMILAR_IMAGES_DB": str(db), "SIMILAR_IMAGES_K": str(K),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "voila", str(NOTEBOOK), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1",
           "--Voila.tornado_settings={'websocket_max_message_size': 104857600}"]

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    # Voilà shuts its kernels down on SIGTERM; the process group is killed if it lingers.
    with running_process(cmd, env=env, cwd=tmp_path, log=tmp_path / "voila.log", ready=listening, timeout=60):
        yield f"http://127.0.0.1:{port}/"


@contextlib.contextmanager
def _photo_server(photo: Path) -> Iterator[str]:
    with http_server({"/street-photo.jpg": Route(photo.read_bytes(), "image/jpeg")}) as base:
        yield f"{base}/street-photo.jpg"


_THUMBS_READY = """(k) => {
    const imgs = [...document.querySelectorAll('.si-card img')]
        .filter(i => i.offsetParent !== null);
    return imgs.length === k && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


_SETTLED = """(k) => {
    const s = [...document.querySelectorAll('.si-card .si-score')].map(e => parseFloat(e.innerText));
    const upload = [...document.querySelectorAll('button')].find(b => b.innerText.includes('Upload image'));
    return s.length === k && s.every((v, i) => i === 0 || s[i - 1] >= v) && upload.innerText.includes('(0)');
}"""
_TOP_RESULT_IS = "(name) => document.querySelector('.si-card .si-name')?.innerText === name"


def test_voila_app_in_headless_chromium(small_db: Path, coco_subset: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    photos = [Path(p) for p in coco_subset.read_text().split()]
    with _voila(small_db, tmp_path) as url, _photo_server(photos[5]) as photo_url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(90_000)
            page.goto(url, wait_until="domcontentloaded", timeout=90_000)

            # The app is rendered: click Random image and wait for the thumbnails to load.
            page.get_by_role("button", name="Random image").click()
            page.wait_for_function(_THUMBS_READY, arg=K)
            widths = page.eval_on_selector_all(".si-card img", "els => els.map(e => e.naturalWidth)")
            assert len(widths) == K and all(0 < w <= 160 for w in widths), widths
            captions = page.locator(".si-card .si-score").all_inner_texts()
            scores = [float(s) for s in captions]
            assert len(scores) == K and scores == sorted(scores, reverse=True) and scores[0] > 0.99
            assert page.locator(".si-query img").evaluate("e => e.naturalWidth") > 0
            assert "search" in page.locator(".si-status").inner_text()
            page.wait_for_timeout(300)
            page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
            assert (tmp_path / "app.png").stat().st_size > 20_000

            # "Search similar" on the third result makes it the query.
            third = page.locator(".si-card .si-name").nth(2).inner_text()
            page.locator(".si-card").nth(2).get_by_role("button", name="Search similar").click()
            page.wait_for_function("(name) => document.querySelector('.si-query')?.innerText.includes(name)",
                                   arg=third)
            page.wait_for_function(_THUMBS_READY, arg=K)

            # A URL, submitted with Enter (runs the model in Voilà's kernel).
            box = page.get_by_placeholder("Paste an image URL")
            box.fill(photo_url)
            box.press("Enter")
            page.wait_for_function(
                "() => document.querySelector('.si-query')?.innerText.includes('street-photo.jpg')")
            page.wait_for_function(_TOP_RESULT_IS, arg=photos[5].name)  # the photo itself, found by the model
            page.wait_for_function(_THUMBS_READY, arg=K)

            # An unreachable URL: a message in the page, no traceback, and the app still works.
            box.fill(f"http://127.0.0.1:{free_port()}/nothing.jpg")
            box.press("Enter")
            page.wait_for_function("() => document.querySelector('.si-msg')?.innerText.includes('Could not reach')")
            assert "Traceback" not in page.content()

            # An upload through the real file input.
            with page.expect_file_chooser() as chooser:
                page.get_by_role("button", name="Upload image").click()
            chooser.value.set_files(str(photos[9]))
            page.wait_for_function("(name) => document.querySelector('.si-query')?.innerText.includes(name)",
                                   arg=photos[9].name)
            page.wait_for_function(_TOP_RESULT_IS, arg=photos[9].name)
            page.wait_for_function(_THUMBS_READY, arg=K)
            # The whole update has arrived: sorted scores, and the upload button reset for the next file.
            page.wait_for_function(_SETTLED, arg=K, timeout=20_000)
            assert page.locator(".si-msg").count() == 0 or not page.locator(".si-msg").is_visible()
            page.screenshot(path=str(tmp_path / "app-upload.png"), full_page=True)
        finally:
            browser.close()
