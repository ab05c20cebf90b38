#!/usr/bin/env python
"""Time of a similarity explanation for a database result: cold, and repeated (cached).

Builds a small database of real COCO photos with VGG16 (average pooling, the
real ImageNet weights from the offline assets), then times, for pairs of
database images never explained before:

* the baseline, measured in the same run: embedding the same two images with
  the database's own embedder (one forward pass of two images, what a search
  by two image files costs);
* a cold explanation (``explain(db, query_id, result_id)``, both feature maps
  computed: one forward pass of the pair, then the exact decomposition);
* a cold explanation whose query is already cached (one image through the model);
* a repeated explanation (maps cached: no model runs) and its PNG and JSON.

TensorFlow runs on ``--threads`` cores (2 by default, like the target
machine). The machine's load average is printed: the targets are < 1 s cold
and < 100 ms cached on 2 otherwise idle cores.

    python benchmarks/bench_explain.py
    python benchmarks/bench_explain.py --model mobilenetv2 \
        --weights ../shared/assets/weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))


CPU: dict[str, list[float]] = {}


def timed(fn: Callable[[], Any], cpu: str | None = None) -> tuple[float, Any]:
    """Wall time of ``fn()``; with ``cpu``, also record the process's CPU time under that name."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    t = time.perf_counter() - t0
    if cpu is not None:
        CPU.setdefault(cpu, []).append(time.process_time() - c0)
    return t, out


def ms(values: list[float]) -> str:
    a = np.asarray(values) * 1e3
    return f"median {np.median(a):8.2f} ms  (min {a.min():.2f}, max {a.max():.2f}, n={len(a)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=ASSETS / "images" / "coco" / "val2014", help="folder of photos")
    ap.add_argument("--n", type=int, default=24, help="photos in the database")
    ap.add_argument("--model", default="vgg16-avg")
    ap.add_argument("--weights", default=str(ASSETS / "weights" / "vgg16_imagenet_notop.weights.h5"))
    ap.add_argument("--pairs", type=int, default=5, help="cold pairs timed (each uses images never seen)")
    ap.add_argument("--repeats", type=int, default=20, help="repeated (cached) views timed")
    ap.add_argument("--threads", type=int, default=2, help="TensorFlow threads")
    ap.add_argument("--height", type=int, default=320, help="height of each photo in the PNG")
    args = ap.parse_args()
    if args.n < 4 * args.pairs + 2:
        sys.exit(f"--n must be at least {4 * args.pairs + 2} for {args.pairs} pairs")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from similar_images import Database, ExtractConfig
    from similar_images.methods.explain import explain, explainer_for
    from similar_images.store import extract_features

    photos = sorted(args.images.glob("*.jpg"))[: args.n]
    print(f"{args.model}, {len(photos)} photos, TensorFlow on {args.threads} threads; "
          f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        t, summary = timed(lambda: extract_features(photos, Path(tmp) / "db", ExtractConfig(
            model=args.model, weights=args.weights, verbose=False)))
        print(f"database built in {t:.1f} s ({summary.images_per_second:.1f} images/s in batches of 32)")
        db = Database.open(Path(tmp) / "db")
        emb = db.embedder
        t_build, _ = timed(lambda: emb.embed([db.items[0]]))
        t_first, first = timed(lambda: explain(db, 0, 1))
        print(f"first use: embedder built and run in {t_build:.2f} s; first explanation (feature-map model "
              f"built, traced) {t_first:.2f} s")

        base, cold, half, cached, png_first, png_cached, as_json, passes = [], [], [], [], [], [], [], []
        ex = explainer_for(emb)
        for i in range(args.pairs):
            q, r, r2 = 2 + 4 * i, 3 + 4 * i, 4 + 4 * i
            base.append(timed(lambda q=q, r=r: emb.embed([db.items[q], db.items[r]]), "baseline")[0])
            t, e = timed(lambda q=q, r=r: explain(db, q, r), "cold")
            cold.append(t)
            passes.append(e.forward_passes)
            t, e2 = timed(lambda q=q, r2=r2: explain(db, q, r2), "query cached")
            half.append(t)
            passes.append(e2.forward_passes)
            png_first.append(timed(lambda e=e: ex.png(e, height=args.height))[0])
        for _ in range(args.repeats):
            t, e = timed(lambda: explain(db, 2, 3))
            cached.append(t)
            png_cached.append(timed(lambda e=e: ex.png(e, height=args.height))[0])
            as_json.append(timed(e.to_json)[0])
        assert e.forward_passes == 0, "the repeated view ran the model"

        print(f"baseline: embed 2 images (1 forward pass)  {ms(base)}")
        print(f"explain, cold (2 images, 1 forward pass)   {ms(cold)}  = {np.median(cold) / np.median(base):.2f}x "
              "the baseline")
        print(f"explain, query cached (1 image)            {ms(half)}")
        print(f"  forward passes per explanation: {sorted(set(passes))}")
        print(f"PNG, first render ({args.height} px high)          {ms(png_first)}")
        print(f"explain, repeated (maps cached)            {ms(cached)}")
        print(f"PNG, repeated (cached)                     {ms(png_cached)}")
        print(f"JSON of the maps                           {ms(as_json)}")
        rep = np.median(cached) + np.median(png_cached)
        print(f"repeated view (explain + PNG): {rep * 1e3:.2f} ms; first view of a cold pair (explain + PNG): "
              f"{(np.median(cold) + np.median(png_first)) * 1e3:.0f} ms")
        cpu = {k: float(np.median(v)) for k, v in CPU.items()}
        print("CPU time (all threads; about the same on a busy or an idle machine): "
              + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in cpu.items())
              + f"; on {args.threads} idle cores a cold explanation takes about "
              f"{cpu['cold'] / args.threads * 1e3:.0f} to {cpu['cold'] * 1e3:.0f} ms")
        print(f"map sum {float(first.result_map.sum()):.6f} vs search score {first.stored_score:.6f}")
        print(f"cache: {ex.cache.stats()}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
