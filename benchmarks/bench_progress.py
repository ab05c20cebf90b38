"""How often the progress bar of a text build moves.

A text build encodes chunks of 2,048 texts (each chunk is committed, so an
interruption loses at most one). The bar used to count a text when it was
checked, before the chunk was encoded: it jumped to the chunk's end at once and
then stood still while the model ran, minutes on a slow machine. It now moves
after every model call (``--batch-size`` texts).

Prints, for one build of N real tweets with the real sentence encoder (loaded
beforehand, so that its load time is not counted):

* the bar as it is now (:attr:`TextEmbedder.reports_progress`), and
* the baseline measured in the same run: the same build with texts counted when
  checked (``reports_progress = False``, the old behaviour),

each with the number of bar updates and the longest time the bar stood still
while work remained (between two updates, or from the last update to the end
of the encoding), and the ratio of the two.

Usage::

    python benchmarks/bench_progress.py                 # 2,048 tweets (one chunk), batches of 64
    python benchmarks/bench_progress.py --n 4096 --batch-size 32
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))


def _texts(csv_path: Path, n: int) -> list[str]:
    with open(csv_path, encoding="utf-8", newline="") as fh:
        rows = [row["text"] for row in csv.DictReader(fh) if row["text"].strip()]
    return list(dict.fromkeys(rows))[:n]


def _build(texts: list[str], batch_size: int, per_call: bool) -> tuple[int, float, float]:
    """``(updates, longest still time, total)`` of one build, in seconds."""
    from tqdm.auto import tqdm

    import similar_images.store.build as build_mod
    from similar_images.embed import TextEmbedder
    from similar_images.store import TextBuildConfig, build_text_database

    stamps: list[float] = []

    class Recording(tqdm):  # type: ignore[misc, valid-type]
        def update(self, n: float | None = 1) -> bool | None:
            stamps.append(time.perf_counter())
            return super().update(n)

    original, build_mod.tqdm = build_mod.tqdm, Recording
    TextEmbedder.reports_progress = per_call
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build_text_database(texts, Path(tmp) / "db", TextBuildConfig(batch_size=batch_size, verbose=True))
            end = time.perf_counter()
    finally:
        build_mod.tqdm = original
        TextEmbedder.reports_progress = True
    times = [t0, *stamps, end]
    return len(stamps), max(b - a for a, b in zip(times, times[1:], strict=False)), end - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=ASSETS / "text" / "texts_20k.csv")
    parser.add_argument("--n", type=int, default=2048, help="Texts to build (2,048: one chunk).")
    parser.add_argument("--batch-size", type=int, default=64, help="Texts per model call.")
    args = parser.parse_args()

    from similar_images.embed import TextEmbedder

    texts = _texts(args.csv, args.n)
    TextEmbedder().warm_up()  # the encoder is cached: neither build below counts its load
    now = _build(texts, args.batch_size, per_call=True)
    old = _build(texts, args.batch_size, per_call=False)
    print(f"text build of {len(texts):,} texts, batches of {args.batch_size} (a chunk is 2,048 texts)")
    print(f"{'bar':<34}{'updates':>9}{'longest still (s)':>19}{'build (s)':>11}")
    for name, (updates, still, total) in (("per model call (now)", now), ("per text checked (baseline, old)", old)):
        print(f"{name:<34}{updates:>9,}{still:>19.2f}{total:>11.1f}")
    print(f"longest still time, now / baseline: {now[1] / old[1]:.3f}")


if __name__ == "__main__":
    main()
