"""What following a live database costs: the change check, a new shard, a reload of the finished database.

A synthetic build of ``--items`` random ``--dim``-d vectors in shards of ``--shard-size`` is written into a
temporary folder (the real shard files of :mod:`similar_images.engines.shards`), then:

* ``stamp``: the check a reader makes on a request (at most once a second), in microseconds;
* ``view, shard by shard``: a new view after each committed shard, sharing the previous view's buffer (what
  :class:`~similar_images.store.live.LiveDatabase` does), against opening each from scratch (ratio);
* ``finished``: reopening the finished database (checksums verified in full; in a background thread in the
  service), and the first search of the reopened version.

    python benchmarks/bench_live.py                       # 40,504 x 512, shards of 1,024
    python benchmarks/bench_live.py --dim 4096 --items 20000
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
from similar_images.store import write_database
from similar_images.store.folder import PARTIAL_DIR
from similar_images.store.live import LiveDatabase, open_readable, stamp
from similar_images.store.plan import PLAN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40_504)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=1024)
    args = parser.parse_args()
    n, d, size = args.items, args.dim, args.shard_size
    rng = np.random.default_rng(0)
    model = {"name": "synthetic", "dim": d, "weights": "random"}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db"
        partial = db / PARTIAL_DIR
        partial.mkdir(parents=True)
        items = [f"/photos/{i:06d}.jpg" for i in range(n)]
        (partial / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
        _io.write_json(partial / PLAN, {"settings": {"kind": "image", "model": model, "shard_size": size}, "n": n,
                                        "digest": "synthetic"})
        shards = (n + size - 1) // size
        vectors = rng.normal(size=(n, d)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

        t = time.perf_counter()
        reps = 2000
        for _ in range(reps):
            stamp(db)
        stamp_us = (time.perf_counter() - t) / reps * 1e6

        shared_s, scratch_s, view = 0.0, 0.0, None
        for s in range(shards):
            lo, hi = s * size, min(n, (s + 1) * size)
            write_shard(partial, s, list(range(lo, hi)), vectors[lo:hi], [], d)
            t = time.perf_counter()
            view = open_readable(db, previous=view)
            shared_s += time.perf_counter() - t
            if s % 8 == 0 or s == shards - 1:  # from scratch on a sample of shards (it grows with the view)
                t = time.perf_counter()
                open_readable(db)
                scratch_s += (time.perf_counter() - t) * (8 if s != shards - 1 else 1)
        assert view is not None and len(view) == n

        import shutil

        shutil.rmtree(partial)
        write_database(db, kind="image", model=model, items=items, vector_chunks=[vectors])
        live = LiveDatabase(db, interval=0.0)
        t = time.perf_counter()
        finished = live.get()
        reopen_s = time.perf_counter() - t
        t = time.perf_counter()
        finished.search(0, k=10)
        search_ms = (time.perf_counter() - t) * 1e3

    print(f"live database, {n:,} x {d}, {shards} shards of {size}")
    print(f"  stamp (the check on a request):             {stamp_us:8.1f} us")
    print(f"  views shard by shard, shared buffer:        {shared_s:8.2f} s in all ({shared_s / shards * 1e3:.1f} ms "
          "per shard)")
    print(f"  views shard by shard, each from scratch:    {scratch_s:8.2f} s in all (estimated from every 8th): "
          f"{scratch_s / max(shared_s, 1e-9):.1f}x the shared buffer")
    print(f"  reopen of the finished database (verified): {reopen_s:8.2f} s; first exact search {search_ms:.1f} ms")


if __name__ == "__main__":
    main()
