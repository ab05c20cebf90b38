"""Run time of the teaching walkthrough (``notebooks/how_it_works.ipynb``), section by section.

The notebook is executed headless in a real Jupyter kernel (nbclient), as ``jupyter nbconvert --execute`` would,
on a database given with ``--db``, or on one built here from the offline assets: the 256 COCO photos and a fixed
sample of flower photos, 800 in all, MobileNetV2 with real ImageNet weights, ``build-index``'s default index.
Each code cell's time comes from the kernel's own timestamps (nbclient's ``execution`` metadata) and is summed per
section (the cells under each ``## N.`` heading; "setup" is the parameter and import cells with the database's
opening).

Targets (issue 24): each section under 30 s and the whole notebook under 10 minutes on 2 cores, on an 800-photo
database. The figures are printed with their ratio to the target, the machine's cores and its load average
(the section times grow with the load of other processes).

Usage::

    python benchmarks/bench_walkthrough.py                        # builds the 800-photo database from the assets
    python benchmarks/bench_walkthrough.py --db data/coco-db --weights PATH --query 12
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import MOBILENET_FILE, WALKTHROUGH_PHOTOS, walkthrough_photos  # noqa: E402  (shared with the tests)
from helpers import assets_dir  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "how_it_works.ipynb"
SECTION_TARGET_S = 30.0
TOTAL_TARGET_S = 600.0


def build_database(folder: Path, weights: Path, n: int) -> Path:
    """The walkthrough's database from the offline assets (as the slow test's fixture builds it)."""
    from similar_images import Database, ExtractConfig
    from similar_images.store import extract_features

    images = assets_dir() / "images"
    listing = folder / "photos.txt"
    listing.write_text("\n".join(map(str, walkthrough_photos(images / "coco", images / "flowers5", n))) + "\n")
    db = folder / f"db{n}"
    t0 = time.perf_counter()
    extract_features(listing, db, ExtractConfig(model="mobilenetv2", weights=str(weights), verbose=False))
    Database.open(db, load_index=False).build_index()
    print(f"built {db} ({n} photos) in {time.perf_counter() - t0:.1f} s")
    return db


def _seconds(cell: dict) -> float:
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not start or not end:
        return 0.0
    parse = dt.datetime.fromisoformat
    return (parse(end.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def run(db: Path, weights: str | None, query: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]], float]:
    """Execute the notebook; returns ``[(section, seconds)]``, ``[(code cell's last line, seconds)]`` and the wall
    time of the whole run."""
    import nbformat
    from nbclient import NotebookClient

    os.environ.update({"SIMILAR_IMAGES_DB": str(db), "WALKTHROUGH_QUERY": str(query)})
    if weights:
        os.environ["SIMILAR_IMAGES_WEIGHTS"] = weights
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=True,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    wall = time.perf_counter() - t0
    sections: list[tuple[str, float]] = [("setup (open the database)", 0.0)]
    cells: list[tuple[str, float]] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.startswith("## "):
            sections.append((cell.source.splitlines()[0][3:], 0.0))
        elif cell.cell_type == "code":
            name, total = sections[-1]
            sections[-1] = (name, total + _seconds(cell))
            cells.append((cell.source.strip().splitlines()[-1], _seconds(cell)))
    return sections, cells, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", type=Path, help="database to run on (default: build 800 photos from the assets)")
    parser.add_argument("--weights", help="the model's weights file (default: the assets' MobileNetV2 when building)")
    parser.add_argument("--photos", type=int, default=WALKTHROUGH_PHOTOS, help="photos of the built database")
    parser.add_argument("--query", type=int, default=0, help="the photo followed through the walkthrough")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="bench-walkthrough-") as tmp:
        weights = args.weights
        db = args.db
        if db is None:
            weights = weights or str(assets_dir() / "weights" / MOBILENET_FILE)
            db = build_database(Path(tmp), Path(weights), args.photos)
        load_before = os.getloadavg()
        sections, cells, wall = run(db, weights, args.query)
        load_after = os.getloadavg()
    cells_total = sum(s for _, s in sections)
    print("\ncode cells (last line):")
    for line, seconds in cells:
        print(f"  {seconds:7.1f} s  {line[:90]}")
    print(f"\nnotebooks/how_it_works.ipynb on {db} ({os.cpu_count()} cores; load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after)")
    print(f"{'section':<48} {'seconds':>8} {'/ target':>9}")
    for name, seconds in sections:
        flag = "" if seconds < SECTION_TARGET_S else "  over the 30 s target"
        print(f"{name[:48]:<48} {seconds:8.1f} {seconds / SECTION_TARGET_S:9.2f}{flag}")
    print(f"{'all cells':<48} {cells_total:8.1f} {cells_total / TOTAL_TARGET_S:9.2f}")
    print(f"{'whole run (kernel start included)':<48} {wall:8.1f} {wall / TOTAL_TARGET_S:9.2f}")
    print(f"slowest section: {max(s for _, s in sections):.1f} s (target {SECTION_TARGET_S:.0f} s); "
          f"whole run {wall:.0f} s (target {TOTAL_TARGET_S:.0f} s)")


if __name__ == "__main__":
    main()
