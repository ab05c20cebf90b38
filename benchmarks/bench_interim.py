"""What a reader's interim index buys while a build runs: exact search over every committed row vs the merged
search (the interim index over the first rows + exact search over the newer ones).

A synthetic unfinished build of ``--items`` clustered ``--dim``-d vectors in shards of ``--shard-size`` is
written into a temporary folder (the real plan and shard files). All but the last ``--tail`` rows are committed
and a reader view trains its interim index over them in the background (the project's default index for that
many rows, nprobe calibrated: :mod:`similar_images.store.interim`); then the last shards land, and a new view
answers ``--queries`` single queries (database rows plus noise) both ways, on the same view, interleaved.
Printed: the training time, the median time per query of each, their ratio, and the merged search's
recall@10 against exact search.

    python benchmarks/bench_interim.py                          # 200,000 x 512, the last 20,000 exact
    python benchmarks/bench_interim.py --items 50000 --dim 4096 --tail 5000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from similar_images._util import io as _io
from similar_images.engines.shards import write_shard
from similar_images.store.folder import PARTIAL_DIR
from similar_images.store.live import open_readable
from similar_images.store.plan import PLAN, PLAN_ITEMS


def clustered(n: int, d: int, seed: int = 0, latent: int = 32) -> np.ndarray:
    """``n`` unit vectors with a low intrinsic dimension, as image features have: a mixture of ``sqrt(n)``
    clusters in ``latent`` dimensions, mapped to ``d`` by a random linear map, plus a little noise (uniform
    random vectors would have no neighbourhood structure for any index to use)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(8, int(np.sqrt(n))), latent), dtype=np.float32)
    mapping = rng.standard_normal((latent, d), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 50_000):
        hi = min(n, lo + 50_000)
        z = centres[rng.integers(0, len(centres), hi - lo)] + 0.5 * rng.standard_normal((hi - lo, latent),
                                                                                        dtype=np.float32)
        out[lo:hi] = z @ mapping + 0.5 * rng.standard_normal((hi - lo, d), dtype=np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--tail", type=int, default=20_000, help="rows committed after the training")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    n, d, size = args.items, args.dim, args.shard_size
    vectors = clustered(n, d)
    shards = (n + size - 1) // size
    trained_shards = max(1, (n - args.tail) // size)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db"
        partial = db / PARTIAL_DIR
        partial.mkdir(parents=True)
        (partial / PLAN_ITEMS).write_text("".join(json.dumps(f"/photos/{i:07d}.jpg") + "\n" for i in range(n)))
        model = {"name": "synthetic", "dim": d, "weights": "random"}
        _io.write_json(partial / PLAN, {"settings": {"kind": "image", "model": model, "shard_size": size}, "n": n,
                                        "digest": "synthetic"})

        def land(s: int) -> None:
            lo, hi = s * size, min(n, (s + 1) * size)
            write_shard(partial, s, list(range(lo, hi)), vectors[lo:hi], [], d)

        for s in range(trained_shards):
            land(s)
        at = trained_shards * size
        t = time.perf_counter()
        first = open_readable(db, interim_index_at=at)
        opened_s = time.perf_counter() - t
        interim = first._interim
        interim.wait()
        train_s = time.perf_counter() - t
        for s in range(trained_shards, shards):
            land(s)
        view = open_readable(db, previous=first, interim_index_at=at)
        part = view.indexed_part
        assert part is not None and len(view) == n, "the interim index was not trained"

        rng = np.random.default_rng(1)
        rows = rng.choice(n, args.queries, replace=False)
        queries = vectors[rows] + 0.05 * rng.standard_normal((args.queries, d), dtype=np.float32)
        view.search(queries[0], k=10)
        view.search(queries[0], k=10, exact=True)
        exact_ms, merged_ms, hits = [], [], 0
        for q in queries:  # interleaved: the same load for both
            t = time.perf_counter()
            truth = view.search(q, k=10, exact=True)
            exact_ms.append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            found = view.search(q, k=10)
            merged_ms.append((time.perf_counter() - t) * 1e3)
            hits += len(set(truth.ids) & set(found.ids))
        params = found.params

    e, m = float(np.median(exact_ms)), float(np.median(merged_ms))
    print(f"interim index, {n:,} x {d}, shards of {size:,}: {part.rows:,} rows in {part.factory} "
          f"(search params {params}), the last {n - part.rows:,} exact")
    print(f"  first view (reads every shard; starts the training): {opened_s * 1e3:8.1f} ms (the training runs in the "
          "background)")
    print(f"  training in the background (1 thread):      {train_s:8.1f} s")
    print(f"  exact search over all {n:,} rows:         {e:8.2f} ms a query (median of {len(queries)})")
    print(f"  merged (index + exact over the newer rows): {m:8.2f} ms a query: {e / m:.1f}x faster")
    print(f"  merged recall@10 against exact:             {hits / (10 * len(queries)):8.3f}")


if __name__ == "__main__":
    main()
