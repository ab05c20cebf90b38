"""Make the README's screenshots of the apps: Voilà (as the README starts it) in headless Chromium.

Writes, into ``docs/``: ``image-app.png`` (a query and its most similar images), ``image-app-lightbox.png``
(a result looked at closely), ``text-app.png`` (a typed query) and ``near-duplicates.png`` (the near-duplicates
notebook). Each notebook runs on a copy with one more cell that sets the query shown.

Usage::

    python data_scripts/screenshots.py --db data/coco-db --text-db data/tweets-db --dup-db data/dups-db \\
        [--query-id 249] [--width 1280]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import free_port, running_process  # noqa: E402  (shared with the tests)

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def _voila(notebook: str, extra: str, env: dict[str, str], tmp: Path) -> Iterator[str]:
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / notebook, as_version=4)
    if extra:
        nb.cells.append(nbformat.v4.new_code_cell(extra))
    copy = tmp / notebook
    nbformat.write(nb, copy)
    port = free_port()
    cmd = [sys.executable, "-m", "voila", str(copy), "--no-browser", f"--port={port}", "--Voila.ip=127.0.0.1"]
    with running_process(cmd, env=env, cwd=ROOT, log=tmp / f"{notebook}.log", ready=lambda: _listening(port),
                         timeout=180):
        yield f"http://127.0.0.1:{port}/"


def _page(browser: Any, url: str, width: int, height: int) -> Any:
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(300_000)
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".sig-app[data-ready='1'], .sid-head")
    return page


def _settle(page: Any) -> None:
    page.wait_for_function("() => /Model ready/.test(document.querySelector('.sig-model').innerText)")
    page.wait_for_function("() => [...document.querySelectorAll('.sig-card img, .sig-qimg')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.mouse.move(0, 0)
    page.wait_for_timeout(600)


def _shoot(browser: Any, notebook: str, extra: str, env: dict[str, str], tmp: Path, size: tuple[int, int],
           ready: str, path: Path) -> None:
    """One screenshot of a notebook in Voilà, once ``ready`` is shown (and its model, if any, is loaded)."""
    with _voila(notebook, extra, env, tmp) as url:
        page = _page(browser, url, *size)
        page.wait_for_selector(ready)
        page.wait_for_function("() => !document.querySelector('.sig-model') "
                               "|| /Model ready/.test(document.querySelector('.sig-model').innerText)")
        page.wait_for_timeout(800)
        page.screenshot(path=str(path))
        page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, required=True, help="The image database shown.")
    parser.add_argument("--text-db", type=Path, help="The text database shown.")
    parser.add_argument("--dup-db", type=Path, help="The database of the near-duplicates screenshot.")
    parser.add_argument("--query-id", type=int, default=249, help="The database image searched.")
    parser.add_argument("--text-query", default="I love rainy days")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        print("chromium is needed (apt-get install chromium)")
        return 2
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="screenshots-"))
    env = {**os.environ, "SIMILAR_IMAGES_DB": str(args.db.resolve()), "SIMILAR_IMAGES_K": "10",
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "SIMILAR_IMAGES_APP_LOG": str(tmp / "apps.log"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        with _voila("similar_images.ipynb", f"_ = app.search_id({args.query_id})", env, tmp) as url:
            page = _page(browser, url, args.width, 1040)
            _settle(page)
            page.screenshot(path=str(args.out / "image-app.png"))
            page.locator(".sig-card").nth(1).click()
            page.wait_for_function("() => !document.querySelector('.sig-lightbox .sig-spinner').offsetParent")
            page.wait_for_timeout(400)
            page.screenshot(path=str(args.out / "image-app-lightbox.png"))
            page.close()
        if args.text_db:
            env["SIMILAR_TEXTS_DB"] = str(args.text_db.resolve())
            _shoot(browser, "text_similarity.ipynb", f"_ = app.search({args.text_query!r})", env, tmp,
                   (args.width, 900), ".sig-card", args.out / "text-app.png")
        if args.dup_db:
            env["SIMILAR_IMAGES_DB"] = str(args.dup_db.resolve())
            _shoot(browser, "near_duplicates.ipynb", "", env, tmp, (args.width, 1150), ".sid-pair",
                   args.out / "near-duplicates.png")
        browser.close()
    time.sleep(0.5)
    print(f"screenshots in {args.out} (logs in {tmp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
