#!/usr/bin/env python
"""Extraction throughput: the single process, Spark ``local[2]`` and a 2-worker standalone cluster, by partitions.

On the same images, model, batch and shard size:

- single process: :func:`similar_images.store.extract_features` with the local engine (decoding threads overlapped
  with the model, the model on every core), its model built before the clock starts: the baseline;
- ``local[2]``: :class:`similar_images.engines.spark.SparkEngine` in local mode, 2 task slots;
- ``cluster``: a Spark standalone master and 2 one-core workers on 127.0.0.1, started with pyspark's
  ``spark-class`` (``tests/spark_cluster.py``) and stopped at the end: 2 executors, 2 task slots.

Each Spark engine is measured warm: a first job starts the Python workers and loads the model in each (timed
apart), then one job per partition count runs in the same context (``--partitions``, e.g. ``2,4,shard``:
``shard`` is one partition per shard, ``default`` the engine's default). Rounds are interleaved (the engines'
order rotates each round) since these machines are shared and noisy; ratios are against the single process of
the same round. Also printed: the cost of a partition (the time a job loses per extra partition, against the
fewest partitions), what a task does inside (images/s per task), the model load per executor process and the
peak memory of an executor's Python worker.

    python benchmarks/bench_spark.py                                  # 320 flower photos, mobilenetv2
    python benchmarks/bench_spark.py --images ../shared/assets/images/coco --count 256 --rounds 1 \\
        --model vgg16-avg --weights ../shared/assets/weights/vgg16_imagenet_notop.weights.h5 --shard-size 16
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))


@contextlib.contextmanager
def cluster_master(folder: Path) -> Iterator[str]:
    """A 2-worker standalone cluster on 127.0.0.1 (the tests' helper); yields its master URL."""
    sys.path.insert(0, str(ROOT / "tests"))
    from spark_cluster import standalone_cluster

    with standalone_cluster(folder, workers=2) as cluster:
        yield cluster.url


def run_spark(master: str, paths: list[str], config: Any, tmp: Path, partition_counts: list[str],
              order: int) -> dict[str, dict[str, float]]:
    """Warm a Spark context on ``master``, then one job per partition count; returns their figures by count."""
    from similar_images.engines.spark import SparkEngine
    from similar_images.store import extract_features

    base = SparkEngine(master)
    out: dict[str, dict[str, float]] = {}
    with base.context() as sc:
        slots = sc.defaultParallelism
        warm = {"startup_s": base.last_startup_seconds}  # read now: the jobs below reuse the context (0 s)
        t0 = time.perf_counter()
        extract_features(paths[: config.shard_size * slots], tmp / "warm", config, engine=base, force=True)
        warm["warmup_s"] = time.perf_counter() - t0
        assert base.last_run is not None
        loads = [r.model_seconds for r in base.last_run.shards if r.model_seconds > 0]
        warm["model_load_s"] = float(np.mean(loads)) if loads else 0.0
        counts = partition_counts[order % len(partition_counts):] + partition_counts[:order % len(partition_counts)]
        for count in counts:
            n = None if count == "default" else len(paths) if count == "shard" else int(count)
            engine = SparkEngine(master, partitions=n)
            s = extract_features(paths, tmp / f"db-{count}", config, engine=engine, force=True)
            assert engine.last_run is not None
            shards = engine.last_run.shards
            out[count] = {**warm, "images_per_s": s.total / s.seconds, "seconds": s.seconds,
                          "partitions": engine.last_run.partitions,
                          "task_images_per_s": sum(r.items + r.failed for r in shards) / sum(r.seconds for r in shards),
                          "worker_rss_mb": max(r.peak_rss_mb for r in shards)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ASSETS / "images" / "flowers5", help="folder of images")
    ap.add_argument("--count", type=int, default=320, help="images taken from the folder (sorted)")
    ap.add_argument("--model", default="mobilenetv2", help="model name")
    ap.add_argument("--weights", default=str(ASSETS / "weights" /
                    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=32, help="images per shard")
    ap.add_argument("--partitions", default="2,4,shard",
                    help="comma-separated partition counts: numbers, 'shard' (one per shard), 'default'")
    ap.add_argument("--engines", default="single,local[2],cluster")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # the cluster's driver binds to 127.0.0.1
    from similar_images import ExtractConfig
    from similar_images.embed import ImageEmbedder
    from similar_images.sources.images import find_images
    from similar_images.store import extract_features

    paths = [str(p) for p in sorted(find_images(args.images))[: args.count]]
    config = ExtractConfig(model=args.model, weights=args.weights, batch_size=args.batch_size,
                           shard_size=args.shard_size, precision="fp32", verbose=False)
    n_shards = -(-len(paths) // args.shard_size)
    counts = args.partitions.split(",")
    print(f"{len(paths)} images from {args.images}, model {args.model}, batch {args.batch_size}, "
          f"{args.shard_size} images per shard ({n_shards} shards), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    emb = ImageEmbedder(args.model, args.weights, batch_size=args.batch_size)
    emb.warm_up()

    def single(tmp: Path, _order: int) -> dict[str, dict[str, float]]:
        s = extract_features(paths, tmp / "single", config, embedder=emb, force=True)
        return {"-": {"images_per_s": s.images_per_second, "seconds": s.seconds}}

    def spark(master: str | Callable[[Path], Any]) -> Callable[[Path, int], dict[str, dict[str, float]]]:
        def run(tmp: Path, order: int) -> dict[str, dict[str, float]]:
            if isinstance(master, str):
                return run_spark(master, paths, config, tmp, counts, order)
            with master(tmp / "cluster") as url:
                return run_spark(url, paths, config, tmp, counts, order)
        return run

    runners = {"single": single, "local[2]": spark("local[2]"), "cluster": spark(cluster_master)}
    names = [n for n in args.engines.split(",") if n in runners]
    results: dict[str, list[dict[str, dict[str, float]]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with tempfile.TemporaryDirectory() as tmp:
                results[name].append(runners[name](Path(tmp), r))
        print(f"round {r + 1}: " + "; ".join(
            f"{n} " + ", ".join(f"{c}: {x['images_per_s']:.1f}" for c, x in results[n][-1].items()) for n in names)
            + " images/s", flush=True)

    base = [x["-"]["images_per_s"] for x in results["single"]] if "single" in results else [1.0] * args.rounds

    def med(name: str, count: str, key: str) -> float:
        return float(np.median([x[count][key] for x in results[name] if key in x.get(count, {})]))

    print(f"\n{'engine':<10}{'partitions':>11}{'images/s':>10}{'vs single':>11}{'per task':>10}"
          f"{'cost/partition':>16}   (median of {args.rounds} rounds; per task: images/s inside a task)")
    for name in names:
        for count in results[name][0]:
            ratio = np.median([x[count]["images_per_s"] / b for x, b in zip(results[name], base, strict=True)])
            parts = int(med(name, count, "partitions")) if count != "-" else 1
            cost = ""
            fewest = min(results[name][0], key=lambda c: results[name][0][c].get("partitions", 1))
            if count != "-" and parts > med(name, fewest, "partitions"):
                extra = parts - med(name, fewest, "partitions")
                cost = f"{(med(name, count, 'seconds') - med(name, fewest, 'seconds')) / extra * 1000:.0f} ms"
            task = f"{med(name, count, 'task_images_per_s'):.1f}" if count != "-" else ""
            print(f"{name:<10}{parts:>11}{med(name, count, 'images_per_s'):>10.1f}{ratio:>10.2f}x{task:>10}"
                  f"{cost:>16}")
    for name in names:
        if name == "single":
            continue
        first = next(iter(results[name][0]))
        print(f"{name}: Spark start-up {med(name, first, 'startup_s'):.1f} s; first job (Python workers start, "
              f"model loads) {med(name, first, 'warmup_s'):.1f} s; model load per executor process "
              f"{med(name, first, 'model_load_s'):.1f} s; peak memory of an executor Python worker "
              f"{max(x[c]['worker_rss_mb'] for x in results[name] for c in x):.0f} MiB")


if __name__ == "__main__":
    main()
