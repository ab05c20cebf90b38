"""Speed of the image app (similar_images.apps.image_app), in the kernel (``bench_apps.py`` measures it in a
browser).

Measures, on a real database (VGG16 conv base, average pooling, real ImageNet
weights, the 256 offline COCO photos):

* click to results ready for a database image ("Random image" / "Search
  similar"): with every thumbnail already cached, and with first-time
  thumbnail creation, against the bare ``db.search`` in the same run;
* an uploaded-image query (decode + one model forward pass + search + render)
  and a URL query from a local HTTP server;
* cold start: opening the app in-process (index loaded), loading the model,
  and the notebook executed in a fresh Jupyter kernel (nbclient) until the
  app is displayed and until its preloaded model is ready.

Usage::

    python benchmarks/bench_widgets.py                      # builds the database in a temp folder (~4 min)
    python benchmarks/bench_widgets.py --db /tmp/coco-vgg   # reuse (or build once into) this folder
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import Route, assets_dir, http_server  # noqa: E402  (shared with the tests)

ASSETS = assets_dir()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _stats(ms: list[float]) -> str:
    a = np.asarray(ms)
    return (f"median {np.median(a):8.2f} ms   p90 {np.percentile(a, 90):8.2f} ms   "
            f"max {a.max():8.2f} ms   (n={len(a)})")


def build_db(path: Path, weights: Path) -> None:
    from similar_images import Database, ExtractConfig, IndexConfig
    from similar_images.store import extract_features

    photos = sorted((ASSETS / "images" / "coco").rglob("*.jpg"))
    print(f"Building the database: {len(photos)} COCO photos, vgg16-avg ... (once)", flush=True)
    t0 = time.perf_counter()
    extract_features(photos, path, ExtractConfig(model="vgg16-avg", weights=str(weights), verbose=False))
    Database.open(path, load_index=False).build_index(IndexConfig())
    print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)


def notebook_cold_start(db: Path, weights: Path) -> tuple[float, float, float]:
    """Fresh kernel: (kernel start, notebook executed = app displayed, preloaded model ready), seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "similar_images.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import time; app.gallery.receive({'event': 'ready'}); "
                                              "app.loader.wait(); print('READY', time.time())"))
    os.environ["SIMILAR_IMAGES_DB"] = str(db)
    os.environ["SIMILAR_IMAGES_WEIGHTS"] = str(weights)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    t0 = time.perf_counter()
    wall0 = time.time()
    with client.setup_kernel():
        t_kernel = time.perf_counter() - t0
        for i, cell in enumerate(nb.cells[:-1]):
            client.execute_cell(cell, i)
        t_app = time.perf_counter() - t0
        client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
    ready = next(float(o["text"].split()[1]) for o in nb.cells[-1].outputs if o.get("name") == "stdout")
    return t_kernel, t_app, ready - wall0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="Database folder (built there once if missing).")
    parser.add_argument("--weights", type=Path, default=ASSETS / "weights" / "vgg16_imagenet_notop.weights.h5")
    parser.add_argument("--clicks", type=int, default=50, help="Database-image clicks per measurement.")
    parser.add_argument("--uploads", type=int, default=20, help="Upload queries.")
    parser.add_argument("-k", type=int, default=8)
    parser.add_argument("--no-notebook", action="store_true", help="Skip the notebook cold-start measurement.")
    args = parser.parse_args()

    tmp = None
    db_path = args.db
    if db_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-widgets-")
        db_path = Path(tmp.name) / "coco-vgg16avg"
    if not (db_path / "manifest.json").exists():
        build_db(db_path, args.weights)

    # ---------------------------------------------------------------- cold start, in process
    t0 = time.perf_counter()
    from similar_images.apps import SimilarImagesApp, open_app

    app = open_app(db_path, k=args.k, weights=str(args.weights), preload_model=False, seed=0)
    t_open = time.perf_counter() - t0
    assert isinstance(app, SimilarImagesApp), app
    db = app.db
    t0 = time.perf_counter()
    _ = db.embedder.model
    t_model = time.perf_counter() - t0
    print(f"\nDatabase: {db}")
    print(f"k={args.k}, thumbnails {app.config.thumb_size} px JPEG\n")
    print("Cold start (this process)")
    print(f"  import + open database + index + build widgets : {t_open * 1e3:8.0f} ms")
    print(f"  query model built (VGG16 conv base)            : {t_model * 1e3:8.0f} ms")

    # ---------------------------------------------------------------- database-image clicks
    rng = np.random.default_rng(0)
    ids = [int(i) for i in rng.choice(db.live_ids(), size=min(args.clicks, len(db)), replace=False)]

    core = []
    for i in ids:
        t = time.perf_counter()
        db.search(i, args.k)
        core.append((time.perf_counter() - t) * 1e3)

    def clicks() -> list[float]:
        out = []
        for i in ids:
            app.search_id(i)
            t = time.perf_counter()
            app.gallery.receive({"event": "search", "index": 0})  # "Search similar" on the first result
            out.append((time.perf_counter() - t) * 1e3)
        return out

    app.thumbnails.clear()
    cold_clicks = []
    for i in ids:  # every click renders thumbnails never made before (the query and most results)
        t = time.perf_counter()
        app.search_id(i)
        cold_clicks.append((time.perf_counter() - t) * 1e3)
    misses = app.thumbnails.misses
    warm_clicks = clicks()
    random_clicks = []
    for _ in range(args.clicks):
        t = time.perf_counter()
        app.gallery.receive({"event": "random"})
        random_clicks.append((time.perf_counter() - t) * 1e3)
    per_thumb = []
    for p in db.items[:40]:
        t = time.perf_counter()
        app.thumbnails.get(p, 96)  # a size never made before
        per_thumb.append((time.perf_counter() - t) * 1e3)
    thumb_bytes = [len(t["thumb"]) for t in app.gallery.results]
    photo_bytes = [Path(m.path).stat().st_size for m in app.results or []]

    print("\nClick to results ready, database image (stored vector, no model run)")
    print(f"  bare db.search (baseline)            : {_stats(core)}")
    print(f"  click, thumbnails cached             : {_stats(warm_clicks)}")
    print(f"  'Random image' clicks (cache warming): {_stats(random_clicks)}")
    print(f"  click, first-time thumbnails         : {_stats(cold_clicks)}  ({misses} thumbnails made)")
    print(f"  one thumbnail made from a photo      : {_stats(per_thumb)}")
    print(f"  app overhead over db.search (cached) : x{np.median(warm_clicks) / np.median(core):.1f}")
    thumb_kb, photo_kb = statistics.mean(thumb_bytes) / 1024, statistics.mean(photo_bytes) / 1024
    print(f"  bytes sent per result: thumbnail {thumb_kb:.1f} KB vs photo {photo_kb:.1f} KB "
          f"(x{photo_kb / thumb_kb:.0f} less)")

    # ---------------------------------------------------------------- uploads and URLs
    upload_ms, embed_ms = [], []
    for i in ids[: args.uploads]:
        data = Path(db.items[i]).read_bytes()
        t = time.perf_counter()
        app.search_upload(data, "u.jpg")
        upload_ms.append((time.perf_counter() - t) * 1e3)
        embed_ms.append(app.timing.embed_ms)
        assert app.results is not None and app.results[0].id == i, (i, app.message)  # the photo finds itself
    url_ms = []
    with http_server({"/photo.jpg": Route(Path(db.items[ids[0]]).read_bytes(), "image/jpeg")}) as base:
        for n in range(10):
            t = time.perf_counter()
            app.search_url(f"{base}/photo.jpg?n={n}")
            url_ms.append((time.perf_counter() - t) * 1e3)
    print("\nUploaded image / URL (decode + one VGG16 forward pass + search + render)")
    print(f"  upload, whole click                  : {_stats(upload_ms)}")
    print(f"    of which decode + model            : {_stats(embed_ms)}")
    print(f"  URL on 127.0.0.1, whole query        : {_stats(url_ms)}")
    app.close()

    if not args.no_notebook:
        t_kernel, t_app, t_ready = notebook_cold_start(db_path, args.weights)
        print("\nNotebook cold start (fresh kernel via nbclient)")
        print(f"  kernel started                       : {t_kernel * 1e3:8.0f} ms")
        print(f"  notebook run, app displayed          : {t_app * 1e3:8.0f} ms")
        print(f"  query model preloaded (background)   : {t_ready * 1e3:8.0f} ms")
    print(json.dumps({"click_cached_median_ms": round(float(np.median(warm_clicks)), 3),
                      "click_first_time_median_ms": round(float(np.median(cold_clicks)), 3),
                      "upload_median_ms": round(float(np.median(upload_ms)), 1)}))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
