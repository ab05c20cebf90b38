"""The collection map (similar_images.apps.map_view.MapView) in a real browser: Voilà on 127.0.0.1, Debian's
Chromium driven by Playwright. A click on a photo of the map searches with it; a screenshot is taken."""

from __future__ import annotations

import io
import os
import shutil
import socket
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from conftest import ROOT
from helpers import free_port, running_process
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

K = 6
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_map_view_in_the_browser(small_db: Path, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required under CI (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); this test needs a real browser")
    from playwright.sync_api import sync_playwright

    from similar_images import Database

    db = Database.open(small_db, load_index=False)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os\nfrom similar_images.apps.map_view import MapView\n"
        f"MapView.from_path(os.environ['SIMILAR_IMAGES_DB'], k={K})")])
    nbformat.write(nb, tmp_path / "map.ipynb")
    port = free_port()
    env = {**os.environ, "SIMILAR_IMAGES_DB": str(small_db), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "SIMILAR_IMAGES_APP_LOG": str(tmp_path / "apps.log"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "voila", "map.ipynb", "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"]
    with running_process(cmd, env=env, cwd=tmp_path, log=tmp_path / "voila.log", ready=lambda: _listening(port),
                         timeout=120), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.set_default_timeout(120_000)
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.wait_for_function("(n) => [...document.querySelectorAll('.simap-pt')].filter("
                                   "i => i.complete && i.naturalWidth > 0).length === n", arg=len(db))
            assert page.locator(".simap-results .simap-card").count() == 0
            target = page.locator(".simap-pt").nth(7)
            chosen = int(target.get_attribute("data-id"))
            target.click(force=True)  # photos may overlap on the map
            page.wait_for_function("(k) => [...document.querySelectorAll('.simap-results img')].filter("
                                   "i => i.complete && i.naturalWidth > 0).length === k", arg=K)
            shown = [int(page.locator(".simap-results img").nth(i).get_attribute("alt")) for i in range(K)]
            assert shown == db.search(chosen, k=K, exclude_query=True).ids
            assert page.locator(".simap-pt.simap-hit").count() == K
            assert int(page.locator(".simap-pt.simap-query").get_attribute("data-id")) == chosen
            assert f"Photo {chosen} (" in page.locator(".simap-note").inner_text()
            png = page.locator(".simap").screenshot(path=str(tmp_path / "map.png"))
        finally:
            browser.close()
    shot = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)
    assert shot.shape[1] > 800 and shot.shape[0] > 600 and shot.std() > 20  # photos drawn, not a blank page
