"""Speed of the text variant: encoding throughput and search latency.

Prints

* encoding throughput in texts/s: :class:`similar_images.embed.TextEmbedder`
  (length-sorted batches of 64) against two baselines measured in the same
  run, sentence-transformers' own ``encode`` (batches of 64) and one text
  per call (how queries are encoded);
* search latency per query (median and p99, one query at a time): the
  database's index alone, the index plus exact re-ranking of its 4k
  candidates (:meth:`similar_images.Database.search`), exact brute-force
  search over the same vectors (baseline), and end to end with the query
  encoding.

Usage::

    python benchmarks/bench_text.py --db tweets-db            # an existing text database
    python benchmarks/bench_text.py --n 2000                  # encodes 2,000 tweets into a temporary database

The default CSV is the 20,000 offline tweets (``../shared/assets/text/texts_20k.csv``).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import string
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))
DEFAULT_CSV = ASSETS / "text" / "texts_20k.csv"
PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def _stats(ms: list[float]) -> str:
    a = np.asarray(ms)
    return f"median {np.median(a):8.3f} ms   p99 {np.percentile(a, 99):8.3f} ms"


def _timed(fn, reps: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def bench_encoding(texts: list[str], batch_size: int) -> None:
    from similar_images.embed import TextEmbedder

    emb = TextEmbedder(batch_size=batch_size)
    emb.embed(texts[:64])  # load the model and warm up
    ours = len(texts) / _timed(lambda: emb.embed(texts))
    st_model = getattr(emb.encoder, "model", None)  # the SentenceTransformer behind the default encoder
    print(f"encoding {len(texts)} tweets ({emb.name}, {os.cpu_count()} CPUs, torch threads "
          f"{__import__('torch').get_num_threads()}):")
    print(f"  TextEmbedder, length-sorted batches of {batch_size}: {ours:8.1f} tweets/s")
    if st_model is not None and hasattr(st_model, "encode"):
        raw = len(texts) / _timed(lambda: st_model.encode(texts, batch_size=batch_size, show_progress_bar=False))
        print(f"  sentence-transformers encode, batch {batch_size}:    {raw:8.1f} tweets/s   "
              f"(TextEmbedder / it = {ours / raw:.2f}x)")
    few = texts[:100]
    single = len(few) / _timed(lambda: [emb.embed([t]) for t in few])
    print(f"  one tweet per call (query encoding):        {single:8.1f} tweets/s   "
          f"(batched / single = {ours / single:.1f}x)")


def bench_search(db_path: Path, n_queries: int, k: int, seed: int) -> None:
    from similar_images import Database
    from similar_images.index import exact_search

    db = Database.open(db_path)
    rng = random.Random(seed)
    ids = rng.sample([int(i) for i in db.live_ids() if len(PUNCT.sub("", db.items[i]).split()) >= 3], n_queries)
    queries = []
    for i in ids:
        words = PUNCT.sub("", db.items[i].lower()).split()
        del words[rng.randrange(len(words))]
        queries.append(" ".join(words))
    xq = db.embedder.embed(queries)
    info = db.manifest.index
    factory = info.factory if info is not None else "none"
    print(f"\nsearch latency, {len(db):,} texts, k={k}, {n_queries} queries one at a time "
          f"(index {factory}, {info.get('index_bytes', 0) if info else 0:,} bytes, "
          f"recall@10 {info.get('recall_at_10') if info else None}):")
    vectors = np.ascontiguousarray(db.vectors)
    index_ms, rerank_ms, exact_ms, e2e_ms = [], [], [], []
    for _rep in range(2):  # the first pass warms caches
        index_ms, rerank_ms, exact_ms, e2e_ms = [], [], [], []
        for j in range(n_queries):
            q = xq[j:j + 1]
            if db.index is not None:
                t0 = time.perf_counter()
                db.index.search(q, k)
                index_ms.append((time.perf_counter() - t0) * 1e3)
                t0 = time.perf_counter()
                db.search(xq[j], k)  # a vector query: index + exact re-ranking of 4k candidates
                rerank_ms.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            exact_search(vectors, q, k)
            exact_ms.append((time.perf_counter() - t0) * 1e3)
        for qtext in queries:
            t0 = time.perf_counter()
            db.search(qtext, k)
            e2e_ms.append((time.perf_counter() - t0) * 1e3)
    if index_ms:
        print(f"  {'index search alone (' + factory + '):':<40}{_stats(index_ms)}")
        print(f"  {'index + re-ranking x4 (Database.search):':<40}{_stats(rerank_ms)}")
    print(f"  {'exact search (baseline, Flat scan):':<40}{_stats(exact_ms)}"
          + (f"   (exact / index = {np.median(exact_ms) / np.median(index_ms):.1f}x)" if index_ms else ""))
    print(f"  {'end to end, text query (Database.search):':<40}{_stats(e2e_ms)}"
          + (f"   (encoding share {1 - np.median(rerank_ms) / np.median(e2e_ms):.0%})" if rerank_ms else ""))
    db.search_batch(queries, k)
    t0 = time.perf_counter()
    db.search_batch(queries, k)
    per = (time.perf_counter() - t0) * 1e3 / len(queries)
    print(f"  batched ({len(queries)} text queries in one call): {per:.3f} ms per query end to end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="CSV with a 'text' column.")
    parser.add_argument("--n", type=int, default=2000, help="Tweets to encode for the throughput figures.")
    parser.add_argument("--db", type=Path, default=None,
                        help="Existing text database for the search figures [default: one built from the --n tweets].")
    parser.add_argument("--index", default=None, help="Index of the temporary database [default: the text default].")
    parser.add_argument("--queries", type=int, default=200, help="Queries for the latency figures.")
    parser.add_argument("-k", type=int, default=10, help="Results per query.")
    parser.add_argument("--batch-size", type=int, default=64, help="Texts per model call.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the query sample.")
    args = parser.parse_args()

    with open(args.csv, encoding="utf-8", newline="") as fh:
        texts = list(dict.fromkeys(r["text"].strip() for r in csv.DictReader(fh) if r["text"].strip()))[: args.n]
    bench_encoding(texts, args.batch_size)
    if args.db is not None:
        bench_search(args.db, args.queries, args.k, args.seed)
        return
    from similar_images.index import IndexConfig
    from similar_images.store import Database, TextBuildConfig, build_text_database

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "db"
        build_text_database(texts, db, TextBuildConfig(verbose=False))
        Database.open(db, load_index=False).build_index(IndexConfig(factory=args.index))
        bench_search(db, min(args.queries, len(texts)), args.k, args.seed)


if __name__ == "__main__":
    main()
