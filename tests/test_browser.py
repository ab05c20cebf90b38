"""The notebook apps in a real browser: Debian's Chromium driven by Playwright, servers on 127.0.0.1.

* Voilà, started as the README says (``voila notebooks/similar_images.ipynb`` from the repository root, which
  reads the repository's ``voila.json``), at 1280 and 1920 pixels: the grid fills the width, the lightbox opens
  on a click, moves with the arrow keys and closes on Esc, the arrows move a selection in the grid, the page
  shows the app only, a 15 MB JPEG upload gives results, and closed pages leave no kernel behind.
* JupyterLab 4 and Notebook 7 (Run All): the app fills the output area, the keys work there too, and the output
  area holds the app and nothing else (no TensorFlow, absl, oneDNN or log lines), also after the model loaded.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT
from helpers import closed_port, free_port, running_process
from PIL import Image

NOTEBOOK = "notebooks/similar_images.ipynb"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
WIDTHS = (1280, 1920)
K = 8

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required under CI (apt-get install chromium)")
        pytest.skip("chromium not installed (apt-get install chromium); this test needs a real browser")
    return path


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _env(db: Path, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "SIMILAR_IMAGES_DB": str(db), "SIMILAR_IMAGES_K": str(K),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "SIMILAR_IMAGES_APP_LOG": str(tmp_path / "apps.log"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell: the app must keep TensorFlow quiet by itself
    return env


@contextlib.contextmanager
def voila(db: Path, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """``voila notebooks/similar_images.ipynb`` from the repository root (its voila.json applies)."""
    port = free_port()
    cmd = [sys.executable, "-m", "voila", NOTEBOOK, "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"]
    with running_process(cmd, env=_env(db, tmp_path), cwd=ROOT, log=tmp_path / "voila.log",
                         ready=lambda: _listening(port), timeout=120) as proc:
        yield f"http://127.0.0.1:{port}/", proc


@contextlib.contextmanager
def jupyter(app: str, db: Path, tmp_path: Path) -> Iterator[str]:
    """``jupyter lab`` or ``jupyter notebook`` on a copy of the repository's notebooks (the front end saves the
    notebooks it runs), without a token, on 127.0.0.1."""
    port = free_port()
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    root = tmp_path / "project"
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    env = {**_env(db, tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"), "HOME": str(home)}
    cmd = [sys.executable, "-m", app, "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--IdentityProvider.token=", "--allow-root", f"--ServerApp.root_dir={root}"]
    with running_process(cmd, env=env, cwd=root, log=tmp_path / f"{app}.log", ready=lambda: _listening(port),
                         timeout=120):
        yield f"http://127.0.0.1:{port}/"


def _kernels(proc: Any) -> int:
    """Kernels the server runs (its child processes running ipykernel)."""
    import psutil

    count = 0
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "ipykernel" in " ".join(child.cmdline()):
                count += 1
    return count


def _settled_kernels(proc: Any, want: int | None = None, timeout: float = 90.0) -> int:
    """The number of kernels once it stops changing (or reaches ``want``)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = _kernels(proc)
        if n != last:
            last, since = n, time.monotonic()
        if (want is None or n == want) and time.monotonic() - since > 4:
            return n
        time.sleep(0.5)
    return last


# ------------------------------------------------------------------------------------ page checks (shared)
_RESULTS_READY = """(k) => {
    const cards = [...document.querySelectorAll('.sig-grid .sig-card')];
    const imgs = cards.map(c => c.querySelector('img'));
    const r = document.querySelector('.sig-results');
    return cards.length === k && imgs.every(i => i && i.complete && i.naturalWidth > 0)
        && !r.classList.contains('sig-busy');
}"""

_FILL = """() => {
    const grid = document.querySelector('.sig-grid');
    const host = document.querySelector('.sig-host');
    const area = host.closest('.jp-OutputArea-output') || host.parentElement;
    return [grid.getBoundingClientRect().width, area.getBoundingClientRect().width];
}"""

_OUTPUT_TEXT = """() => [...document.querySelectorAll('.jp-OutputArea-output')]
    .filter(o => !o.querySelector('.sig-host'))
    .map(o => (o.getAttribute('data-mime-type') || '') + ': ' + o.innerText.trim())
    .filter(t => t.length > 2)"""

_ACTIVE_CELL = ("() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')]"
                ".findIndex(c => c.classList.contains('jp-mod-active'))")
_IDLE = ("() => !document.querySelector('.sig-results').classList.contains('sig-busy')"
         " && !document.querySelector('.sig-query').classList.contains('sig-busy')")
_MODEL_STATUS = ("() => /^Loading the image model \\(mobilenetv2\\) \u2026 \\d+(\\.\\d)? s$|^Model ready \\(/"
                 ".test(document.querySelector('.sig-model').innerText)")
_PREVIEW = """() => {
    const img = document.querySelector('.sig-qimg');
    return document.querySelector('.sig-qname').innerText === 'big-photo.jpg' && img.src.startsWith('blob:')
        && img.complete && img.naturalWidth > 4000
        && document.querySelector('.sig-query').classList.contains('sig-busy')
        && getComputedStyle(document.querySelector('.sig-query .sig-spinner')).display === 'block'
        && getComputedStyle(document.querySelector('.sig-results')).opacity < 0.5;
}"""
_MODEL_READY = "() => document.querySelector('.sig-model').innerText.startsWith('Model ready')"
_SELECTED = "() => [...document.querySelectorAll('.sig-card')].findIndex(c => c.classList.contains('sig-selected'))"
_LIGHTBOX = ("() => { const lb = document.querySelector('.sig-lightbox'); "
             "return lb.hidden ? null : Number(lb.dataset.index); }")


_RENDERED = "() => document.querySelector('.sig-grid')?.dataset.rendered ?? ''"


def _search_random(page: Any) -> None:
    """Click Random image and wait for the new results to be drawn."""
    before = page.evaluate(_RENDERED)
    page.get_by_role("button", name="Random image").click()
    page.wait_for_function(f"(b) => ({_RENDERED})() !== b", arg=before, timeout=60_000)
    page.wait_for_function(_RESULTS_READY, arg=K, timeout=60_000)


def _check_layout_and_keys(page: Any, width: int) -> None:
    """The grid fills the width; click opens the lightbox; arrows move; Esc closes; arrows move the grid selection."""
    grid_w, area_w = page.evaluate(_FILL)
    assert grid_w >= 0.9 * area_w, (width, grid_w, area_w)
    per_row = page.evaluate("() => { const c = [...document.querySelectorAll('.sig-card')]; "
                            "return c.filter(x => x.offsetTop === c[0].offsetTop).length; }")
    assert per_row >= min(K, int(area_w // 300)), (per_row, area_w)  # tiles of 220 to 300 px fill the rows
    page.locator(".sig-card").nth(1).click()
    page.wait_for_function(f"() => ({_LIGHTBOX})() === 1")
    page.wait_for_function("() => !document.querySelector('.sig-lightbox .sig-spinner').offsetParent")  # large image
    assert page.evaluate("() => document.querySelector('.sig-lb-img').naturalWidth") > 0
    # Explain: the similarity maps of the query and this result appear beside the image.
    page.locator(".sig-lightbox").get_by_role("button", name="Explain").click()
    page.wait_for_selector(".sig-xsentence", timeout=60_000)
    assert page.locator(".sig-side-title").inner_text() == "Why #2 is similar"
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"() => ({_LIGHTBOX})() === 2")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"() => ({_LIGHTBOX})() === 0")
    page.keyboard.press("ArrowLeft")  # before the first result: the query
    page.wait_for_function(f"() => ({_LIGHTBOX})() === -1")
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => ({_LIGHTBOX})() === null")
    page.keyboard.press("ArrowRight")  # the grid has the focus back: arrows move its selection
    page.wait_for_function(f"() => ({_SELECTED})() === 1")
    below = 1 + per_row if 1 + per_row < K else 1  # down a row (the last row stays)
    page.keyboard.press("ArrowDown")
    page.wait_for_function(f"() => ({_SELECTED})() === {below}")
    # Enter opens the selected one; Enter in the lightbox searches with it.
    name = page.locator(".sig-card .sig-name").nth(below).get_attribute("data-name")
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => ({_LIGHTBOX})() === {below}")
    page.keyboard.press("Enter")
    page.wait_for_function("(n) => document.querySelector('.sig-qname').dataset.name === n", arg=name)
    page.wait_for_function(_RESULTS_READY, arg=K)
    assert page.evaluate(f"() => ({_LIGHTBOX})()") is None


def _check_error_in_plain_words(page: Any) -> None:
    """An unreachable URL typed and submitted with Enter: one plain sentence, the previous results dimmed."""
    box = page.get_by_placeholder("Paste an image URL and press Enter")
    box.fill(f"127.0.0.1:{closed_port()}/cat.jpg")  # no scheme: tried as https
    box.press("Enter")
    page.wait_for_function("() => document.querySelector('.sig-msg').innerText.includes('Could not reach')")
    assert page.locator(".sig-msg").inner_text().strip() == "Could not reach 127.0.0.1 (connection refused)"
    assert page.locator(".sig-results.sig-stale").count() == 1 and page.locator(".sig-stale-note").is_visible()
    _search_random(page)
    assert page.locator(".sig-msg").is_hidden() and page.locator(".sig-results.sig-stale").count() == 0


def _big_jpeg(path: Path, photo: Path, size: int = 15 * 1024 * 1024) -> Path:
    """A real photo, enlarged and grainy, saved as a JPEG of at least ``size`` bytes."""
    img = Image.open(photo).convert("RGB")
    w = 5000
    rng = np.random.default_rng(0)
    while True:
        big = np.asarray(img.resize((w, w * 3 // 4)), dtype=np.int16)
        big = np.clip(big + rng.integers(-40, 41, big.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, format="JPEG", quality=95)
        if buf.tell() >= size:
            path.write_bytes(buf.getvalue())
            return path
        w += 400


# ------------------------------------------------------------------------------------ Voilà


def test_voila_app(small_db: Path, coco_subset: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    photos = [Path(p) for p in coco_subset.read_text().split()]
    big = _big_jpeg(tmp_path / "big-photo.jpg", photos[9])
    with voila(small_db, tmp_path) as (url, proc), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            start = _settled_kernels(proc)  # the pre-started kernel of voila.json's pool, if any
            for width in WIDTHS:
                page = browser.new_page(viewport={"width": width, "height": 1000})
                page.set_default_timeout(90_000)
                page.goto(url, wait_until="domcontentloaded")
                page.wait_for_selector(".sig-app[data-ready='1']")
                # The model loads as soon as the page shows the app, and the status line says so, with the time.
                page.wait_for_function(_MODEL_STATUS)
                # Only the app: no markdown, no code, no other output.
                assert page.locator(".jp-MarkdownCell").count() == 0
                assert page.evaluate(_OUTPUT_TEXT) == []
                _search_random(page)
                assert page.locator(".sig-legend-item").count() == 4
                _check_layout_and_keys(page, width)
                if width == WIDTHS[0]:
                    _check_error_in_plain_words(page)
                    # A 15 MB JPEG through the page's file input: previewed at once, then results (20 MB limit).
                    page.locator(".sig-file").set_input_files(str(big))
                    # At once: the photo itself in the query panel (read by the page), a spinner, old results dimmed.
                    page.wait_for_function(_PREVIEW, timeout=5_000)
                    page.wait_for_function(_IDLE, timeout=180_000)
                    assert page.locator(".sig-msg").is_hidden(), page.locator(".sig-msg").inner_text()
                    page.wait_for_function(_RESULTS_READY, arg=K)  # results for the upload
                    mb = big.stat().st_size / 2**20
                    assert page.locator(".sig-qdetail").inner_text() == f"uploaded, {mb:.1f} MB" and mb >= 15
                    page.wait_for_function(_MODEL_READY)
                    assert page.evaluate(_OUTPUT_TEXT) == []
                    page.screenshot(path=str(tmp_path / f"voila-{width}.png"), full_page=True)
                page.goto("about:blank")  # leaving the page: Voilà asks for its kernel's shutdown
                page.close()
                assert _settled_kernels(proc, want=start) == start
            # Three more visits, their tabs closed abruptly (headless Chromium sends no shutdown request then, like
            # a crashed browser): voila.json's culler ends their kernels once idle for 2 minutes.
            for _ in range(3):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url, wait_until="domcontentloaded")
                page.wait_for_selector(".sig-app[data-ready='1']", timeout=90_000)
                page.close(run_before_unload=True)
            assert _settled_kernels(proc, want=start, timeout=300) == start
        finally:
            browser.close()
    log = (tmp_path / "voila.log").read_text(errors="replace")
    assert "403 POST /voila/api/shutdown" not in log


# ------------------------------------------------------------------------------------ JupyterLab, Notebook 7


@pytest.mark.parametrize("front", ["jupyterlab", "notebook"])
def test_jupyter_app_output_is_the_app_only(front: str, small_db: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    with jupyter(front, small_db, tmp_path) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(120_000)
            path = "lab/tree" if front == "jupyterlab" else "notebooks"
            page.goto(f"{url}{path}/{NOTEBOOK}", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-Cell")
            page.wait_for_timeout(2000)
            page.get_by_text("Run", exact=True).first.click()
            page.get_by_text("Run All Cells", exact=True).click()
            page.wait_for_selector(".sig-app[data-ready='1']")
            _search_random(page)
            page.wait_for_function(_MODEL_READY)
            active = page.evaluate(_ACTIVE_CELL)
            _check_layout_and_keys(page, 1280)
            _check_error_in_plain_words(page)  # Enter in the URL box submits it (the notebook does not take it)
            page.set_viewport_size({"width": 1920, "height": 1000})  # a wider window: the grid follows
            page.wait_for_timeout(500)
            grid_w, area_w = page.evaluate(_FILL)
            assert grid_w >= 0.9 * area_w and area_w > 1100, (grid_w, area_w)
            # Presenter mode in the notebook too: the button turns it on, P (the app has the focus) off again.
            page.get_by_role("button", name="Present").click()
            page.wait_for_function("() => document.querySelector('.sig-app').classList.contains('sig-present')")
            assert page.evaluate(_LAYOUT)["caption"] >= 20  # 1920 px wide
            page.locator(".sig-grid").focus()
            page.keyboard.press("p")
            page.wait_for_function("() => !document.querySelector('.sig-app').classList.contains('sig-present')")
            # The keys stayed in the app: the notebook did not move to another cell or enter edit mode.
            assert page.evaluate(_ACTIVE_CELL) == active
            assert page.locator(".jp-Notebook.jp-mod-editMode").count() == 0
            time.sleep(1.0)
            assert page.evaluate(_OUTPUT_TEXT) == []
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count() == 0
        finally:
            browser.close()


# ------------------------------------------------------------------------------------ presenter mode, class sizes

#: (width, height, device scale): a laptop, a projector, a big screen, and 1280x800 at 200% browser zoom.
CLASS_SIZES = ((1024, 768, 1), (1280, 800, 1), (1920, 1080, 1), (640, 400, 2))

_LAYOUT = """() => {
    const card = document.querySelector('.sig-grid .sig-card');
    const rank = card.querySelector('.sig-rank').getBoundingClientRect();
    const score = card.querySelector('.sig-score').getBoundingClientRect();
    const px = (sel) => parseFloat(getComputedStyle(document.querySelector(sel)).fontSize);
    const names = [...document.querySelectorAll('.sig-name[data-name], .sig-qname')].map(n => ({
        text: n.textContent, full: n.dataset.name || '', fits: n.scrollWidth <= n.clientWidth + 1}));
    return {bottom: Math.max(rank.bottom, score.bottom), height: innerHeight,
            scroll: document.documentElement.scrollWidth, width: innerWidth,
            caption: px('.sig-card .sig-cap'), band: px('.sig-card .sig-band'),
            rankPx: px('.sig-card .sig-rank'), names,
            fit: getComputedStyle(card.querySelector('.sig-thumb img')).objectFit,
            present: document.querySelector('.sig-app').classList.contains('sig-present')};
}"""


def _png(path: Path, size: tuple[int, int]) -> Path:
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_presenter_mode_at_class_sizes_and_the_fixes(small_db: Path, tmp_path: Path) -> None:
    """Presenter mode (Present button, key P) in Voilà at 1024x768, 1280x800, 1920x1080 and 200% zoom: text that
    grows with the window, #1's rank and score above the fold; the fixes (sample photos, names shortened in the
    middle, cropped tiles, no selection after a new query, no server paths, explanations drawn by the page, a failed
    upload gives the previous query back, a small upload is not blown up)."""
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo, a text file named .jpg\n")
    small = _png(tmp_path / "small.png", (60, 45))
    with voila(small_db, tmp_path) as (url, _proc), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            for width, height, scale in CLASS_SIZES:
                page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=scale)
                page.set_default_timeout(90_000)
                page.goto(url, wait_until="domcontentloaded")
                page.wait_for_selector(".sig-app[data-ready='1']")
                # The first screen: sample photos to click.
                assert page.locator(".sig-sample").count() == 12
                page.locator(".sig-sample").nth(3).click()
                page.wait_for_function(_RESULTS_READY, arg=K)
                # P (the page has the focus) turns presenter mode on; the button says how to leave it.
                page.locator(".sig-rtitle").click()
                page.keyboard.press("p")
                page.wait_for_function("() => document.querySelector('.sig-app').classList.contains('sig-present')")
                page.wait_for_timeout(300)
                got = page.evaluate(_LAYOUT)
                page.screenshot(path=str(tmp_path / f"present-{width}x{height}@{scale}.png"))
                assert got["scroll"] <= got["width"], got  # nothing sticks out sideways, at 200% zoom neither
                assert got["caption"] >= (20 if width >= 1920 else 16) and got["band"] >= 15, got
                assert got["rankPx"] >= 18, got
                if scale == 1 and height <= 800:
                    assert got["bottom"] <= got["height"], got  # #1's rank and score above the fold
                assert got["fit"] == "cover"  # photos fill their tiles
                for n in got["names"]:  # shortened in the middle: the end, where names differ, is kept
                    assert n["fits"] and (n["text"] == n["full"] or ("\u2026" in n["text"]
                                                                    and n["full"].endswith(n["text"][-6:]))), n
                if width == 1280:
                    _check_presenter_fixes(page, notes, small)
                page.get_by_role("button", name="Exit presenting").click()
                page.wait_for_function("() => !document.querySelector('.sig-app').classList.contains('sig-present')")
                page.goto("about:blank")
                page.close()
        finally:
            browser.close()


def _check_presenter_fixes(page: Any, notes: Path, small: Path) -> None:
    # A new query clears the keyboard frame.
    page.locator(".sig-card").nth(2).click()
    page.wait_for_function(f"() => ({_LIGHTBOX})() === 2")
    assert not page.locator(".sig-lightbox .sig-lb-path").count()  # no server path in the lightbox
    assert "/" not in page.locator(".sig-lb-info").inner_text()
    # Explain: drawn by the page, large, "#" the rank, one sentence, the figures behind "details".
    page.locator(".sig-lightbox").get_by_role("button", name="Explain").click()
    page.wait_for_selector(".sig-xsentence", timeout=60_000)
    assert page.locator(".sig-side-title").inner_text() == "Why #3 is similar"
    assert page.locator(".sig-xmap").count() == 2 and page.locator(".sig-lb-stage").is_hidden()
    assert re.fullmatch(r"\d+% of this match comes from the highlighted area \(\d+% of the picture\)\.",
                        page.locator(".sig-xsentence").inner_text())
    assert page.locator(".sig-xfigures").is_hidden()
    page.get_by_text("details", exact=True).click()
    assert page.locator(".sig-xfigures").inner_text().startswith("score 0.")
    box = page.locator(".sig-xpair").bounding_box()
    assert box["width"] >= 0.8 * page.viewport_size["width"]  # fills the lightbox
    page.keyboard.press("Escape")
    page.wait_for_function(f"() => ({_LIGHTBOX})() === null")
    assert page.evaluate(_SELECTED) == 2
    _search_random(page)
    assert page.evaluate(_SELECTED) == -1
    # A failed upload (a text file named .jpg): a plain message, and the previous query back in its panel.
    before = page.locator(".sig-qname").get_attribute("data-name")
    page.locator(".sig-file").set_input_files(str(notes))
    page.wait_for_function("() => document.querySelector('.sig-msg').innerText.includes('notes.jpg')")
    page.wait_for_function("(n) => document.querySelector('.sig-qname').dataset.name === n", arg=before)
    assert "uploading" not in page.locator(".sig-query").inner_text()
    # A 60x45 upload: results, and the lightbox shows it at its own size, not blown up.
    page.locator(".sig-file").set_input_files(str(small))
    page.wait_for_function("() => document.querySelector('.sig-qname').dataset.name === 'small.png'")
    page.wait_for_function(_IDLE, timeout=120_000)
    page.locator(".sig-qmedia").click()
    page.wait_for_function(f"() => ({_LIGHTBOX})() === -1")
    page.wait_for_function("() => !document.querySelector('.sig-lb-img').classList.contains('sig-lb-low')")
    shown = page.locator(".sig-lb-img").bounding_box()
    assert shown["width"] <= 60.5 and shown["height"] <= 45.5, shown
    page.keyboard.press("Escape")
