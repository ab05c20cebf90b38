#!/usr/bin/env python
"""Extraction on Spark against the single-process pipeline, in one run.

On the same images, model, batch and shard size:

- single process: :func:`similar_images.store.extract_features` (decoding threads overlapped with the model,
  the model on every core), its model built before the clock starts;
- ``local[1]`` and ``local[2]``: :class:`similar_images.engines.spark.SparkEngine`, one model thread per
  task, so ``local[N]`` uses ``N`` cores for the model. Each is measured warm: a first job starts the
  Python workers and loads the model in each (timed apart), then the measured job runs in the same Spark
  context, one partition per shard;
- the overhead of a partition: ``local[1]`` runs the same shards as one partition per shard and as a
  single partition; the difference divided by the extra partitions is what each task costs (scheduling,
  serialising the task and its items, the round trip to the Python worker, the commit marker poll).

Also printed: the Spark start-up, the model load per executor process, and images per CPU-second of the
tasks (process CPU time of the workers: the per-core rate the 10-million-image plan in docs/spark.md uses).
Rounds are interleaved (single, local[1], local[2], rotating), since these machines are shared and noisy.

    python benchmarks/bench_spark.py                               # 256 COCO photos, mobilenetv2 (real weights)
    python benchmarks/bench_spark.py --model vgg16-avg --images ../shared/assets/images/coco/val2014 \\
        --weights ../shared/assets/weights/vgg16_imagenet_notop.weights.h5 --shard-size 16 --batch-size 16 --rounds 1
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))


def run_spark(master: str, paths: list[Path], config: Any, tmp: Path) -> dict[str, float]:
    """Warm a Spark context on ``master`` then measure one job; returns its figures."""
    from similar_images.engines.spark import SparkEngine
    from similar_images.store import extract_features

    engine = SparkEngine(master)
    out: dict[str, float] = {}
    with engine.context() as sc:
        slots = sc.defaultParallelism
        out["startup_s"] = engine.last_startup_seconds
        warm = paths[: config.shard_size * slots]
        t0 = time.perf_counter()
        extract_features(warm, tmp / "warm", config, engine=engine, force=True)
        out["warmup_s"] = time.perf_counter() - t0
        assert engine.last_run is not None
        loads = [r.model_seconds for r in engine.last_run.shards if r.model_seconds > 0]
        out["model_load_s"] = float(np.mean(loads)) if loads else 0.0
        s = extract_features(paths, tmp / "db", config, engine=engine, force=True)
        out["images_per_s"] = s.total / s.seconds
        shards = engine.last_run.shards
        out["cpu_images_per_s"] = sum(r.items + r.failed for r in shards) / sum(r.cpu_seconds for r in shards)
        out["task_images_per_s"] = sum(r.items + r.failed for r in shards) / sum(r.seconds for r in shards)
        out["partitions"] = engine.last_run.partitions
        out["worker_rss_mb"] = max(r.peak_rss_mb for r in shards)
        if master == "local[1]":  # the same shards as one partition: the difference is the per-task overhead
            one = SparkEngine(master, partitions=1)
            s1 = extract_features(paths, tmp / "db1", config, engine=one, force=True)
            n_parts = engine.last_run.partitions
            out["overhead_per_partition_s"] = (s.seconds - s1.seconds) / max(1, n_parts - 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ASSETS / "images" / "coco", help="folder of images")
    ap.add_argument("--model", default="mobilenetv2", help="model name")
    ap.add_argument("--weights", default=str(ASSETS / "weights" /
                    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--shard-size", type=int, default=32, help="images per shard (= per partition on Spark)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    from similar_images import ExtractConfig
    from similar_images.embed import ImageEmbedder
    from similar_images.sources.images import find_images
    from similar_images.store import extract_features

    paths = find_images(args.images)
    config = ExtractConfig(model=args.model, weights=args.weights, batch_size=args.batch_size,
                           shard_size=args.shard_size, verbose=False)
    print(f"{len(paths)} images from {args.images}, model {args.model}, batch {args.batch_size}, "
          f"{args.shard_size} images per shard ({-(-len(paths) // args.shard_size)} shards), "
          f"{os.cpu_count()} CPUs")
    emb = ImageEmbedder(args.model, args.weights, batch_size=args.batch_size)
    _ = emb.model

    def single(tmp: Path) -> dict[str, float]:
        c0 = time.process_time()
        s = extract_features(paths, tmp / "single", config, embedder=emb, force=True)
        return {"images_per_s": s.images_per_second, "cpu_images_per_s": s.total / (time.process_time() - c0)}

    runners = {"single": single, "local[1]": lambda tmp: run_spark("local[1]", paths, config, tmp),
               "local[2]": lambda tmp: run_spark("local[2]", paths, config, tmp)}
    names = list(runners)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % 3:] + names[:r % 3]:
            with tempfile.TemporaryDirectory() as tmp:
                results[name].append(runners[name](Path(tmp)))
        print(f"round {r + 1}: " + ", ".join(f"{n} {results[n][-1]['images_per_s']:.1f}" for n in names)
              + " images/s")

    def med(name: str, key: str) -> float:
        return float(np.median([x[key] for x in results[name] if key in x]))

    base = [x["images_per_s"] for x in results["single"]]
    print(f"\n{'engine':<16}{'images/s':>10}{'vs single':>11}{'per CPU-s':>11}   (median of {args.rounds} rounds)")
    for name in names:
        ratio = np.median([x["images_per_s"] / b for x, b in zip(results[name], base, strict=True)])
        print(f"{name:<16}{med(name, 'images_per_s'):>10.1f}{ratio:>10.2f}x{med(name, 'cpu_images_per_s'):>11.1f}")
    print(f"\nlocal[2] / local[1]: {med('local[2]', 'images_per_s') / med('local[1]', 'images_per_s'):.2f}x "
          "(2 cores against 1)")
    print(f"inside the tasks, local[1]: {med('local[1]', 'task_images_per_s'):.1f} images/s per task "
          f"(embed + commit, no scheduling)")
    print(f"Spark start-up (context, JVM warm): {med('local[1]', 'startup_s'):.1f} s; first job with worker start "
          f"and model load: {med('local[1]', 'warmup_s'):.1f} s; model load per executor process: "
          f"{med('local[1]', 'model_load_s'):.1f} s; peak memory of an executor Python process: "
          f"{med('local[1]', 'worker_rss_mb'):.0f} MiB")
    per_round = ", ".join(f"{x['overhead_per_partition_s'] * 1000:.0f}" for x in results["local[1]"])
    print(f"overhead per partition (local[1], {int(med('local[1]', 'partitions'))} partitions vs 1): "
          f"{med('local[1]', 'overhead_per_partition_s') * 1000:.0f} ms (per round: {per_round} ms)")


if __name__ == "__main__":
    main()
