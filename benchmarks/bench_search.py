#!/usr/bin/env python
"""Single-query search latency of the default index, with exact search as the baseline.

Builds build-index's default index (``IVF{sqrt N},PQ{d/16}``, inner product,
nprobe calibrated within its scan budget) over N random L2-normalised vectors
(default: 40,504 x 4096, the size of COCO val2014 with VGG16 fc2), then times
one query at a time, index search alone, and compares with the original design
(``IVF{sqrt N},PQ16``, same nprobe) and an exact (Flat) index measured in the
same run.

    python benchmarks/bench_search.py                 # 40,504 x 4096
    python benchmarks/bench_search.py --n 10000 --d 512 --queries 500
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from similar_images.index import IndexConfig, build_index, exact_search, original_factory, recall_at_k


def time_single_queries(index: faiss.Index, xq: np.ndarray, k: int) -> np.ndarray:
    for q in xq[:20]:  # warm up
        index.search(q[None], k)
    out = np.empty(len(xq))
    for i, q in enumerate(xq):
        t0 = time.perf_counter()
        index.search(q[None], k)
        out[i] = time.perf_counter() - t0
    return out * 1e3


def summary(ms: np.ndarray) -> str:
    return f"median {np.median(ms):.3f} ms, p90 {np.percentile(ms, 90):.3f} ms, p99 {np.percentile(ms, 99):.3f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40_504, help="database vectors")
    ap.add_argument("--d", type=int, default=4096, help="dimension")
    ap.add_argument("--queries", type=int, default=1000, help="single queries timed")
    ap.add_argument("-k", type=int, default=8, help="results per query")
    ap.add_argument("--threads", type=int, default=None, help="Faiss OpenMP threads (default: all cores)")
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    xb = rng.standard_normal((args.n, args.d), dtype=np.float32)
    faiss.normalize_L2(xb)
    xq = xb[rng.choice(args.n, args.queries, replace=False)] + 0.05 * rng.standard_normal(
        (args.queries, args.d), dtype=np.float32)
    faiss.normalize_L2(xq)
    print(f"{args.n:,} random {args.d}-d vectors, {args.queries} single queries, k={args.k}, "
          f"{faiss.omp_get_max_threads()} threads")

    t0 = time.perf_counter()
    index, report = build_index(xb, IndexConfig(eval_queries=200))
    print(f"default index {report.factory} {report.search_params}: built in {time.perf_counter() - t0:.1f} s, "
          f"{report.index_bytes / 2**20:.1f} MiB, recall@10 {report.recall_at_10} alone, "
          f"{report.recall_at_10_served} served; calibration {report.nprobe_recalls}")
    ivf_ms = time_single_queries(index, xq, args.k)
    orig, orig_report = build_index(xb, IndexConfig(factory=original_factory(args.n, args.d), eval_queries=0,
                                                    nprobe=report.search_params.get("nprobe")))
    orig_ms = time_single_queries(orig, xq, args.k)

    flat, _ = build_index(xb, IndexConfig(factory="Flat", eval_queries=0))
    flat_ms = time_single_queries(flat, xq[: max(50, args.queries // 10)], args.k)

    _, truth = exact_search(xb, xq[:200], 10)
    _, found = index.search(xq[:200], 10)
    print(f"default {report.factory} search alone : {summary(ivf_ms)}")
    print(f"original {orig_report.factory} {orig_report.search_params}: {summary(orig_ms)}")
    print(f"Flat (exact) search : {summary(flat_ms)}")
    print(f"speed-up vs exact   : {np.median(flat_ms) / np.median(ivf_ms):.1f}x (median); "
          f"default / original latency: {np.median(ivf_ms) / np.median(orig_ms):.2f}x")
    print(f"recall@10 of these noisy queries vs exact: {recall_at_k(found, truth, 10):.3f}")
    verdict = "PASS" if np.median(ivf_ms) < 1.0 else "FAIL"
    print(f"target: median single-query latency under 1 ms -> {verdict}")


if __name__ == "__main__":
    main()
