#!/usr/bin/env python
"""What verifying the checksums costs when a database opens.

Every commit records a CRC-32 of the committed vectors and items in the
manifest, and :meth:`Database.open` verifies both in full (a zeroed or
bit-flipped vectors file is refused instead of being searched). This writes a
database of N random L2-normalised vectors (default: 40,000 x 512, the size
of COCO val2014 with a 512-d model; ``--d 4096`` for VGG16 fc2) and times
``Database.open`` (without the index) with its checksums, against the same
database with the checksums left out of its manifest (what a database written
before checksums existed does), in the same run. The files are in the page
cache (opened once before timing): a cold open also reads them from disk.

    python benchmarks/bench_open.py                   # 40,000 x 512
    python benchmarks/bench_open.py --n 40504 --d 4096
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from similar_images import Database
from similar_images.store import write_database


def time_open(db: Path, repeat: int) -> float:
    """The best of ``repeat`` opens, in milliseconds."""
    Database.open(db, load_index=False)  # warm the page cache
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        Database.open(db, load_index=False)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40_000, help="database vectors")
    ap.add_argument("--d", type=int, default=512, help="dimension")
    ap.add_argument("--repeat", type=int, default=7, help="opens timed (the best is kept)")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-open-") as tmp:
        db = Path(tmp) / "db"
        chunks = (rng.standard_normal((min(4096, args.n - i), args.d), dtype=np.float32)
                  for i in range(0, args.n, 4096))
        write_database(db, kind="image", model={"name": "random", "dim": args.d},
                       items=[f"/images/{i:06d}.jpg" for i in range(args.n)], vector_chunks=chunks)
        size = (db / "vectors.f32").stat().st_size + (db / "items.jsonl").stat().st_size
        verified = time_open(db, args.repeat)
        manifest = json.loads((db / "manifest.json").read_text())
        manifest.pop("checksums")
        (db / "manifest.json").write_text(json.dumps(manifest))
        baseline = time_open(db, args.repeat)
    print(f"{args.n:,} x {args.d} vectors + items, {size / 2**20:,.1f} MiB, best of {args.repeat} warm opens "
          "(no index)")
    print(f"  without checksums (baseline): {baseline:8.1f} ms")
    print(f"  with checksums verified:      {verified:8.1f} ms  ({verified / baseline:.2f}x the baseline, "
          f"+{verified - baseline:.1f} ms, {size / 2**20 / max(verified - baseline, 1e-3) * 1e3:,.0f} MiB/s)")


if __name__ == "__main__":
    main()
