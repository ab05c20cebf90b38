#!/usr/bin/env python
"""Near-duplicate search at COCO scale: exact (flat range search) against HNSW.

Makes N synthetic 512-d vectors shaped like CNN features (non-negative, so
unrelated images still have cosine about 0.64) with P planted near-copies,
writes them as a database, and times the duplicate finder with each index,
counting how many planted pairs each finds (the flat search is the exact
baseline of the same run).

    python benchmarks/bench_duplicates.py                  # 40,504 vectors, 500 planted copies
    python benchmarks/bench_duplicates.py --n 100000 --threshold 0.95
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from similar_images import Database
from similar_images.methods.duplicates import DuplicateConfig, find_duplicate_pairs
from similar_images.store import write_database


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40_504, help="database vectors")
    ap.add_argument("--d", type=int, default=512, help="dimension")
    ap.add_argument("--planted", type=int, default=500, help="planted near-copies")
    ap.add_argument("--threshold", type=float, default=0.95, help="similarity threshold")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    n, p = args.n, args.planted
    x = np.abs(rng.normal(size=(n, args.d))).astype(np.float32)
    src = rng.choice(n - p, p, replace=False)
    x[n - p:] = x[src] + np.abs(rng.normal(scale=0.15, size=(p, args.d))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    planted = {(int(a), int(b)) for a, b in zip(src, range(n - p, n))}

    configs = {
        "flat (exact)": DuplicateConfig(threshold=args.threshold),
        "hnsw (defaults)": DuplicateConfig(threshold=args.threshold, index="hnsw"),
        "hnsw (fast: M16, efC40, efS32, k8)": DuplicateConfig(threshold=args.threshold, index="hnsw", hnsw_m=16,
                                                             ef_construction=40, ef_search=32, initial_k=8),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db"
        write_database(path, kind="image", model={"name": "synthetic", "dim": args.d},
                       items=[f"/img/{i}.jpg" for i in range(n)], vector_chunks=[x])
        db = Database.open(path, load_index=False)
        print(f"{n:,} synthetic {args.d}-d vectors, {p} planted copies, threshold {args.threshold}")
        base = None
        for name, cfg in configs.items():
            t0 = time.perf_counter()
            report = find_duplicate_pairs(db, cfg)
            sec = time.perf_counter() - t0
            base = base or sec
            found = len(planted & report.pair_set())
            print(f"{name:<36} {sec:7.1f} s ({sec / base:4.2f}x flat)  pairs {len(report):6d}  "
                  f"planted found {found}/{p}")


if __name__ == "__main__":
    main()
