"""Time to the first search and to the full index: the quick start's live path against the sequential one.

In one run, on this machine:

* a local HTTP server (127.0.0.1) serves a COCO-style zip (``val2014/COCO_val2014_*.jpg`` members) of the
  offline photos (``--photos``, default ``$SIMILAR_IMAGES_ASSETS/images/coco/val2014``; each photo ``--copies``
  times under new names), throttled to ``--mbit`` (100 Mbit/s);
* **live** (what ``data_scripts/quickstart.sh`` runs after its install step): ``similar-images extract-coco``
  (photos extracted and embedded while the zip downloads, then the index) in the background,
  ``similar-images wait`` until the database can be searched, then ``similar-images serve``;
* **sequential** (the old quick start): ``download-coco`` (download, test, extract), ``extract``,
  ``build-index``, then ``serve``.

For each it prints the seconds from the start to the first ``GET /search?id=0`` the service answers (200), and
to the full index (the build's end), then the ratios live / sequential. The live path's first search comes once
the first shard can be searched where the readers follow an unfinished database (``similar_images.store.live``),
and after the whole extraction otherwise. Target: first search at most 90 s; live total within 5% of sequential.

    python benchmarks/bench_first_search.py                                     # MobileNetV2, 128 photos x 4
    python benchmarks/bench_first_search.py --model vgg16-avg --copies 2 --shard-size 128
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import free_port  # noqa: E402  (shared with the tests)
from zip_server import ZipServerState, coco_style_zip, zip_server  # noqa: E402

CLI = [sys.executable, "-c", "from similar_images.cli import main; main()"]
WEIGHTS = {"mobilenetv2": "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
           "vgg16-avg": "weights/vgg16_imagenet_notop.weights.h5"}


def _searched(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/search?id=0&k=5", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def _serving(db: Path, log: Path) -> Iterator[int]:
    port = free_port()
    with open(log, "ab") as fh:
        proc = subprocess.Popen([*CLI, "serve", str(db), "--port", str(port), "--workers", "1"], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _first_search(db: Path, log: Path, t0: float, timeout: float = 900) -> float:
    with _serving(db, log) as port:
        deadline = time.monotonic() + timeout
        while not _searched(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no search answered in {timeout:.0f} s; see {log}")
            time.sleep(0.2)
        return time.perf_counter() - t0


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "ab") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True)


def live(url: str, work: Path, model: list[str]) -> tuple[float, float]:
    dest, db, log = work / "coco", work / "db", work / "live.log"
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        bg = subprocess.Popen([*CLI, "extract-coco", str(dest), str(db), "--url", url, *model, "-q"], stdout=fh,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _run([*CLI, "wait", str(db), "--pid", str(bg.pid), "--log", str(log)], log)
        first = _first_search(db, log, t0)
        if bg.wait() != 0:
            raise RuntimeError(f"extract-coco failed; see {log}")
        return first, time.perf_counter() - t0
    finally:
        if bg.poll() is None:
            bg.kill()


def sequential(url: str, work: Path, model: list[str]) -> tuple[float, float]:
    dest, db, log = work / "coco-seq", work / "db-seq", work / "sequential.log"
    t0 = time.perf_counter()
    _run([*CLI, "download-coco", str(dest), "--url", url, "-q"], log)
    _run([*CLI, "extract", str(dest / "val2014_files.txt"), str(db), *model, "-q"], log)
    _run([*CLI, "build-index", str(db), "-q"], log)
    full = time.perf_counter() - t0
    return _first_search(db, log, t0), full


def main() -> None:
    assets = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=Path, default=assets / "images" / "coco" / "val2014")
    p.add_argument("--copies", type=int, default=4, help="Times each photo is in the zip (under new names).")
    p.add_argument("--mbit", type=float, default=100.0, help="Bandwidth of the local server, Mbit/s.")
    p.add_argument("--model", default="mobilenetv2", choices=sorted(WEIGHTS))
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1,
                   help="Rounds, the order of the two paths alternating (a shared machine's load hits both); "
                        "medians are compared.")
    p.add_argument("--keep", action="store_true", help="Keep the temporary folder (logs, databases).")
    args = p.parse_args()

    photos = sorted(args.photos.glob("*.jpg"))
    if not photos:
        sys.exit(f"no photos in {args.photos} (set SIMILAR_IMAGES_ASSETS or --photos)")
    data = coco_style_zip(photos, args.copies)
    model = ["--model", args.model, "--weights", str(assets / WEIGHTS[args.model]), "--precision", "fp32",
             "--shard-size", str(args.shard_size)]
    work = Path(tempfile.mkdtemp(prefix="bench-first-search-"))
    state = ZipServerState(data=data, rate=args.mbit * 1e6 / 8)
    print(f"zip: {len(photos) * args.copies} photos, {len(data) / 1e6:.1f} MB at {args.mbit:g} Mbit/s "
          f"({len(data) * 8 / (args.mbit * 1e6):.1f} s to download); {args.model} fp32, shards of "
          f"{args.shard_size}; {os.cpu_count()} CPUs; work folder {work}")
    figures: dict[str, list[tuple[float, float]]] = {"live": [], "sequential": []}
    try:
        with zip_server(state) as url:
            for r in range(args.rounds):
                order = ("live", "sequential") if r % 2 == 0 else ("sequential", "live")
                for name in order:
                    run = work / f"round{r}-{name}"
                    run.mkdir()
                    first, full = (live if name == "live" else sequential)(url, run, model)
                    figures[name].append((first, full))
                    print(f"round {r + 1} {name:10s}: first search {first:7.1f} s   full index {full:7.1f} s",
                          flush=True)
        (lf, lt), (sf, st) = (tuple(statistics.median(x[i] for x in figures[k]) for i in (0, 1))
                              for k in ("live", "sequential"))
        print(f"median of {args.rounds}: live first search {lf:.1f} s, full index {lt:.1f} s; sequential first "
              f"search {sf:.1f} s, full index {st:.1f} s")
        print(f"ratios live / sequential: first search {lf / sf:.2f}, full index {lt / st:.2f} "
              "(target: first search <= 90 s, full index <= 1.05)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
