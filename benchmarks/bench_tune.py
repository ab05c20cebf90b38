#!/usr/bin/env python
"""Recall / latency / memory frontier of Faiss index choices on real and synthetic vectors.

Runs the tuner (``similar_images.tuning``) on one database and prints, for
every index of the sweep, recall@10 against exact search, single-query
latency (one Faiss thread), memory and build time; the original design
(``IVF{sqrt N},PQ16``, nprobe 4) placed on the frontier; the pick for the
target recall; the best recall within 1/4 and 1/8 of the exact Flat index's
memory; and ratios against Flat measured in the same run. With ``--quality``
it also prints precision@10 and mAP@10 by class (labels = class folders).

The database is built if it does not exist yet:

    # 4,064 flower photos, VGG16 (real ImageNet conv weights), global average pooling, 512-d
    python benchmarks/bench_tune.py --db /work/cache/flowers-vgg16-avg \\
        --images ../shared/assets/images/flowers5 --model vgg16-avg \\
        --weights ../shared/assets/weights/vgg16_imagenet_notop.weights.h5 \\
        --quality --plot docs/tune_flowers_vgg16avg.png --plot-served docs/tune_flowers_vgg16avg_served.png

    # 256 COCO photos, VGG16 fc2 (4096-d; random weights: the fc weights are not available offline)
    python benchmarks/bench_tune.py --db /work/cache/coco-vgg16-fc2-random \\
        --images ../shared/assets/images/coco --model vgg16-fc2 --weights random --plot docs/tune_coco_fc2_random.png

    # 40,504 synthetic 4096-d vectors (seeded Gaussian mixture, ReLU, L2-normalised)
    python benchmarks/bench_tune.py --db /work/cache/synthetic-40504x4096 --synthetic 40504 --dim 4096 \\
        --train-size 20000 --plot docs/tune_synthetic_40504x4096.png \\
        --plot-served docs/tune_synthetic_40504x4096_served.png

    # re-print and re-plot a saved report, without measuring again
    python benchmarks/bench_tune.py --db /work/cache/flowers-vgg16-avg --from-json flowers.json \\
        --plot docs/tune_flowers_vgg16avg.png

    # retrieval quality only (no index sweep)
    python benchmarks/bench_tune.py --db /work/cache/flowers-mobilenetv2 --images ... --model mobilenetv2 \\
        --weights ...mobilenet...h5 --quality --no-tune
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from similar_images import Database, ExtractConfig
from similar_images.measure.evaluate import EvalConfig, evaluate_database
from similar_images.measure.plot import plot_tuning
from similar_images.measure.synthetic import clustered_chunks
from similar_images.measure.tune import TuneConfig, TuneReport, tune_database
from similar_images.store import extract_features, write_database


def ensure_db(args: argparse.Namespace) -> Database:
    db_path = Path(args.db)
    if not (db_path / "manifest.json").exists():
        t0 = time.perf_counter()
        if args.synthetic:
            print(f"Writing {args.synthetic:,} synthetic {args.dim}-d vectors to {db_path}", flush=True)
            write_database(db_path, kind="image", model={"name": f"synthetic-gmm-{args.dim}", "dim": args.dim,
                                                         "seed": args.seed},
                           items=[f"synthetic/{i:06d}" for i in range(args.synthetic)],
                           vector_chunks=clustered_chunks(args.synthetic, args.dim, seed=args.seed))
        elif args.images:
            print(f"Extracting {args.images} with {args.model} into {db_path} (once; reused after)", flush=True)
            extract_features(args.images, db_path, ExtractConfig(model=args.model, weights=args.weights,
                                                                 workers=args.workers, verbose=False))
        else:
            sys.exit(f"No database at {db_path}: give --images (and --model, --weights) or --synthetic N")
        print(f"  built in {time.perf_counter() - t0:.0f} s", flush=True)
    return Database.open(db_path, load_index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="database folder (built if missing)")
    ap.add_argument("--images", help="images to extract when the database is missing")
    ap.add_argument("--model", default="vgg16-avg", help="feature model for --images")
    ap.add_argument("--weights", default="imagenet", help="weights for --images: a file, 'imagenet' or 'random'")
    ap.add_argument("--workers", type=int, default=2, help="decoding threads for --images")
    ap.add_argument("--synthetic", type=int, default=0, help="write N synthetic clustered vectors instead")
    ap.add_argument("--dim", type=int, default=4096, help="dimension of --synthetic vectors")
    ap.add_argument("--seed", type=int, default=0, help="seed of --synthetic vectors and of the query sample")
    ap.add_argument("--target-recall", type=float, default=0.95)
    ap.add_argument("--holdout", type=int, default=500, help="database vectors used as queries (self excluded)")
    ap.add_argument("--latency-queries", type=int, default=100, help="single queries timed per setting")
    ap.add_argument("--train-size", type=int, default=None, help="training sample per index")
    ap.add_argument("--index", action="append", default=None, help="restrict the sweep (repeatable)")
    ap.add_argument("--build-threads", type=int, default=None, help="Faiss threads for building (default: all)")
    ap.add_argument("--rerank", type=int, default=4, help="re-ranking depth of the 'served' figures (search default)")
    ap.add_argument("--plot", help="save the recall/latency/memory plot (index alone) here (PNG)")
    ap.add_argument("--plot-served", help="save the plot of the served figures (after re-ranking) here (PNG)")
    ap.add_argument("--json", help="save the full report here")
    ap.add_argument("--from-json", help="re-print and re-plot a report saved with --json, without measuring again")
    ap.add_argument("--quality", action="store_true", help="also precision@10 / mAP@10 by class (folder labels)")
    ap.add_argument("--no-tune", action="store_true", help="skip the index sweep")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every index and setting")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    if args.build_threads:
        import faiss

        faiss.omp_set_num_threads(args.build_threads)

    db = ensure_db(args)
    name = Path(args.db).name
    print(f"# {name}: {len(db):,} vectors, {db.dim}-d, model {db.model_name} "
          f"(weights {db.manifest['model'].get('weights', '-')})", flush=True)
    out: dict = {"database": str(args.db), "n": len(db), "dim": db.dim, "model": db.manifest.model}

    if args.quality:
        t0 = time.perf_counter()
        ev = evaluate_database(db, EvalConfig(ks=(10,), n_queries=10, latency_queries=1), labels="folders")
        q = ev.quality[0]
        print(f"\n## Retrieval quality, exact search, {q.n_queries} leave-one-out queries "
              f"({time.perf_counter() - t0:.1f} s)")
        print("| class | queries | precision@10 | mAP@10 |\n|---|---:|---:|---:|")
        for c in q.per_class:
            print(f"| {c.label} | {c.n_queries} | {c.precision:.3f} | {c.map:.3f} |")
        print(f"| **all** | {q.n_queries} | **{q.precision:.3f}** | **{q.map:.3f}** |")
        print(f"(chance precision {q.chance:.3f}; precision / chance = {q.precision / q.chance:.2f})")
        out["quality"] = q.to_dict()

    if not args.no_tune:
        cfg = TuneConfig(target_recall=args.target_recall, n_queries=args.holdout,
                         latency_queries=args.latency_queries, train_size=args.train_size, factories=args.index,
                         rerank=args.rerank, seed=args.seed)
        if args.from_json:
            report = TuneReport.from_dict(json.loads(Path(args.from_json).read_text()))
            print(f"\n## Index sweep, as saved in {args.from_json}\n")
        else:
            report = tune_database(db, cfg)
            print(f"\n## Index sweep ({report.tune_seconds:.0f} s)\n")
        print(report.format_table())
        print("\nPer index (fastest setting reaching the target, else the best recall):\n")
        print(report.markdown_table())
        flat = report.find("Flat")
        modes = [False, True] if report.rerank >= 2 else [False]
        for served in modes:
            print("\n## Ratios (same run), " + (f"as served (k x {report.rerank} candidates re-ranked with the stored "
                                                 "vectors)" if served else "index alone"))
            budgets = report.budgets(served)
            for label, p in (("original IVF,PQ16 nprobe 4", report.original),
                             ("current default", report.current_default), ("pick", report.pick(served)),
                             ("fastest meeting the target", report.pick(served, by="latency")),
                             ("best within 1/4 of Flat", budgets.get(0.25)),
                             ("best within 1/8 of Flat", budgets.get(0.125))):
                if p is None or flat is None:
                    print(f"- {label}: none")
                    continue
                print(f"- {label}: {p.label}: recall@10 {p.recall_in(served):.3f}, memory {p.memory_ratio:.3f} x Flat, "
                      f"latency {p.latency_in(served) / flat.latency_ms:.2f} x Flat ({p.latency_in(served):.3f} vs "
                      f"{flat.latency_ms:.3f} ms), build {p.build_seconds:.1f} s")
            quarter = [p for p in report.points if p.recall_in(served) >= args.target_recall
                       and p.memory_ratio <= 0.25]
            print(f"A setting with recall@10 >= {args.target_recall:g} within 1/4 of Flat's memory"
                  + (" (index memory; the re-ranking also reads vectors.f32)" if served else "") + ": "
                  + ("FOUND (" + min(quarter, key=lambda p: p.memory_bytes).label + ")" if quarter else "NOT FOUND"))
        for path, served in ((args.plot, False), (args.plot_served, True)):
            if path and (not served or report.rerank >= 2):
                mode = f"served, re-rank x{report.rerank}" if served else "index alone"
                plot_tuning(report, path, served=served,
                            title=f"{name}: {report.n_vectors:,} x {report.dim}-d ({db.model_name}), {mode}; "
                                  "marker area ~ index memory")
                print(f"Plot: {path} ({os.path.getsize(path):,} bytes)")
        out["tune"] = report.to_dict()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"Report: {args.json}")


if __name__ == "__main__":
    main()
