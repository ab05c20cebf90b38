#!/usr/bin/env python
"""How often each score band's results really share the query's class: the words of the apps, measured.

Builds (or reuses, with ``--db``) a database of labeled photos (flowers5 from the offline assets: one folder per
class), calibrates the band words on half of the sampled queries (:func:`similar_images.index.bands.calibrate_words`)
and prints, for each band, how many results of the *other* half fall in it and the share of them that share the
query's class. Next to them, the same measure for the collection's own nearest-neighbour bands (what the apps used
before: thresholds that say nothing about classes), and the chance rate.

Target (issue 23): "very similar" results share the query's class at least 9 times in 10 (the words the app shows
are the measured rates, rounded down, so they hold whatever the figure).

    python benchmarks/bench_bands.py                       # 100 flowers per class, MobileNetV2 (about a minute)
    python benchmarks/bench_bands.py --per-class 200 --model vgg16-avg --weights PATH
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))
MOBILENET = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="an existing labeled image database (default: build one from flowers5)")
    ap.add_argument("--images", default=str(ASSETS / "images" / "flowers5"), help="a folder tree, one folder a class")
    ap.add_argument("--per-class", type=int, default=100, help="photos per class in the database built")
    ap.add_argument("--model", default="mobilenetv2")
    ap.add_argument("--weights", default=str(ASSETS / MOBILENET))
    ap.add_argument("--queries", type=int, default=600, help="queries sampled (half choose, half measure)")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from similar_images import Database, ExtractConfig, IndexConfig
    from similar_images.index.bands import calibrate_words, class_agreement, folder_labels
    from similar_images.store import extract_features

    with tempfile.TemporaryDirectory() as tmp:
        if args.db:
            db_path = Path(args.db)
        else:
            rng = random.Random(0)
            files = []
            for cls in sorted(p for p in Path(args.images).iterdir() if p.is_dir()):
                photos = sorted(cls.glob("*.jpg"))
                rng.shuffle(photos)
                files += photos[:args.per_class]
            listing = Path(tmp) / "files.txt"
            listing.write_text("\n".join(map(str, files)) + "\n")
            db_path = Path(tmp) / "db"
            t0 = time.perf_counter()
            extract_features(listing, db_path, ExtractConfig(model=args.model, weights=args.weights, verbose=False))
            Database.open(db_path, load_index=False).build_index(IndexConfig(factory="Flat"))
            print(f"built {db_path.name}: {len(files)} photos in {time.perf_counter() - t0:.0f} s")
        db = Database.open(db_path)
        live = db.live_ids()
        paths = [db.items[i] for i in live]
        labels = folder_labels(paths)
        if labels is None:
            sys.exit(f"{db_path}: the folders of its photos do not look like classes")
        x = np.asarray(db.vectors[live], dtype=np.float32)
        base = db.score_bands()
        t0 = time.perf_counter()
        words = calibrate_words(x, base, labels, k=args.k, sample=args.queries)
        took = time.perf_counter() - t0
        print(f"\n{len(paths):,} photos, {len(set(labels))} classes, model {db.model_name}, k={args.k}")
        print(f"\ncalibrated on labels ({took * 1e3:.0f} ms):")
        print(words.report())
        held = np.arange(len(x))[1::2]
        old = class_agreement(x, labels, base, held, k=args.k)
        print("\nthe collection's nearest-neighbour bands (before), same measure:")
        for name, lo in base.legend():
            n, m = old[name]
            print(f"{name:<15} {lo:>6.3f} {n:>8,} {m / n if n else float('nan'):>10.3f}")
        rate = words.agreement.get("very similar", 0.0)
        target = 0.9
        print(f"\nvery similar: {rate:.3f} share the query's class (target >= {target}): "
              f"{'met' if rate >= target else 'NOT met'}; legend: {words.describe('very similar')!r}")


if __name__ == "__main__":
    main()
