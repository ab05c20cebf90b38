"""SIFT local features against VGG16 global features, on two tasks measured in the same run.

1. Near-duplicate retrieval: a database of real COCO photos; queries are edited
   copies of some of them (not in the database). Score: top-1 accuracy (the
   original is the first result), per edit.
2. Category retrieval: flowers5, ``--per-class`` images of each of the 5
   classes; every image queries the others. Score: precision@10 (results of
   the same class), against 0.2 by chance.

Also printed: extraction speed, mean query time (describing or embedding the
query image, plus the search) and bytes stored per image.

Usage:
    python benchmarks/bench_sift_vs_vgg.py [--n-coco 100 --n-queries 20 --per-class 50]
        [--assets ../shared/assets] [--model vgg16-avg --weights PATH] [--workdir DIR [--reuse]]
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from helpers import edited_copy  # noqa: E402  (shared with the tests)

from similar_images import Database, ExtractConfig  # noqa: E402
from similar_images.index import exact_search  # noqa: E402
from similar_images.methods.sift import (  # noqa: E402
    SiftConfig,
    SiftDatabase,
    extract_sift,
)
from similar_images.store import extract_features  # noqa: E402

EDITS = ("resize", "jpeg70", "crop10", "crop30", "rot90", "bright")
FLOWER_CLASSES = ("daisy", "dandelion", "rose", "sunflower", "tulip")


def make_query(src: Path, dest: Path, edit: str) -> Path:
    """Planted edits of duplicates.edited_copy plus harder ones: 30% crop, 90-degree rotation, +40% brightness."""
    if edit in ("resize", "jpeg70", "crop10"):
        return edited_copy(src, dest, edit)
    img = Image.open(src).convert("RGB")
    w, h = img.size
    if edit == "crop30":
        dx, dy = round(w * 0.15), round(h * 0.15)
        img = img.crop((dx, dy, w - dx, h - dy))
    elif edit == "rot90":
        img = img.transpose(Image.Transpose.ROTATE_90)
    elif edit == "bright":
        img = ImageEnhance.Brightness(img).enhance(1.4)
    dest.parent.mkdir(parents=True, exist_ok=True)
    img.save(dest, quality=90)
    return dest


def sift_variants() -> list[tuple[str, dict]]:
    return [("SIFT knn=5", {"knn": 5, "ratio": None}), ("SIFT knn=1", {"knn": 1, "ratio": None}),
            ("SIFT ratio 0.8", {"knn": 5, "ratio": 0.8})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--assets", type=Path, default=Path(os.environ.get("SIMILAR_IMAGES_ASSETS",
                                                                        ROOT.parent / "shared" / "assets")))
    ap.add_argument("--n-coco", type=int, default=100, help="COCO photos in the near-duplicate database")
    ap.add_argument("--n-queries", type=int, default=20, help="photos edited into queries (x6 edits)")
    ap.add_argument("--per-class", type=int, default=50, help="flower images per class")
    ap.add_argument("--model", default="vgg16-avg")
    ap.add_argument("--weights", default=None, help="default: the VGG16 (or MobileNetV2) file in the assets")
    ap.add_argument("--max-features", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="keep the databases here (default: a temp folder)")
    ap.add_argument("--reuse", action="store_true", help="reuse the CNN databases already in --workdir")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    weights = args.weights or str(args.assets / "weights" / (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5" if args.model == "mobilenetv2"
        else "vgg16_imagenet_notop.weights.h5"))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_sift_"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)

    # ---------------------------------------------------------------- data
    photos = sorted((args.assets / "images" / "coco").rglob("*.jpg"))
    rng.shuffle(photos)
    photos = sorted(photos[: args.n_coco])
    query_src = photos[:: max(1, len(photos) // args.n_queries)][: args.n_queries]
    queries: list[tuple[Path, str, str]] = []
    for p in query_src:
        for e in EDITS:
            queries.append((make_query(p, work / "queries" / f"{e}_{p.name}", e), str(p), e))
    flowers: list[tuple[Path, str]] = []
    for c in FLOWER_CLASSES:
        files = sorted((args.assets / "images" / "flowers5" / c).glob("*.jpg"))
        rng.shuffle(files)
        flowers += [(f, c) for f in sorted(files[: args.per_class])]
    coco_list = work / "coco.txt"
    coco_list.write_text("\n".join(map(str, photos)) + "\n")
    flower_list = work / "flowers.txt"
    flower_list.write_text("\n".join(str(f) for f, _ in flowers) + "\n")
    labels = np.array([c for _, c in flowers])
    print(f"near-duplicates: {len(photos)} COCO photos, {len(queries)} edited queries ({len(query_src)} photos x "
          f"{len(EDITS)} edits); flowers: {len(flowers)} images ({args.per_class} per class)")

    rows: dict[str, dict[str, float]] = {}

    # ---------------------------------------------------------------- CNN
    name = args.model
    cfg = ExtractConfig(model=args.model, weights=weights, verbose=False)
    rates = []
    for listing, sub in ((coco_list, "cnn-coco"), (flower_list, "cnn-flowers")):
        if not (args.reuse and (work / sub / "manifest.json").exists()):
            shutil.rmtree(work / sub, ignore_errors=True)
            extract_features(listing, work / sub, cfg)
        ex = Database.open(work / sub, load_index=False).manifest.extra["extraction"]
        rates.append((ex["images"], ex["seconds_last_run"]))
    cnn_rate = sum(n for n, _ in rates) / sum(s for _, s in rates)
    db = Database.open(work / "cnn-coco", load_index=False)
    db.embedder.embed([queries[0][0]])  # build the model outside the clock
    t0 = time.perf_counter()
    qv = db.embedder.embed([q for q, _, _ in queries])
    _, ids = exact_search(db.vectors, qv, 1)
    cnn_query_ms = (time.perf_counter() - t0) * 1e3 / len(queries)
    top1 = np.array([db.items[i] == orig for i, (_, orig, _) in zip(ids[:, 0], queries)])
    fdb = Database.open(work / "cnn-flowers", load_index=False)
    assert fdb.items == [str(f) for f, _ in flowers], "a flower image failed to load"
    _, fids = exact_search(fdb.vectors, np.asarray(fdb.vectors), 11)
    p10 = [np.mean([labels[j] == labels[i] for j in row if j != i][:10]) for i, row in enumerate(fids)]
    rows[name] = {"top1": float(top1.mean()), **{e: float(top1[[q[2] == e for q in queries]].mean()) for e in EDITS},
                  "p10": float(np.mean(p10)), "img_s": cnn_rate, "query_ms": cnn_query_ms,
                  "bytes_img": db.dim * 4}

    # ---------------------------------------------------------------- SIFT
    scfg = SiftConfig(max_features=args.max_features, verbose=False)
    for sub in ("sift-coco", "sift-flowers"):
        shutil.rmtree(work / sub, ignore_errors=True)
    t0 = time.perf_counter()
    a = extract_sift(coco_list, work / "sift-coco", scfg)
    b = extract_sift(flower_list, work / "sift-flowers", scfg)
    sift_rate = (a.extracted + b.extracted) / (time.perf_counter() - t0)
    sdb = SiftDatabase.open(work / "sift-coco")
    sfl = SiftDatabase.open(work / "sift-flowers")
    t0 = time.perf_counter()
    query_desc = [sdb.extractor.describe(q) for q, _, _ in queries]
    describe_ms = (time.perf_counter() - t0) * 1e3 / len(queries)
    flower_desc = [sfl.extractor.describe(f) for f, _ in flowers]
    bytes_img = (sdb.manifest.index.get("index_bytes") + 4 * len(sdb.image_ids)) / len(sdb)
    for label, params in sift_variants():
        t0 = time.perf_counter()
        res = [sdb.search_descriptors(d, 1, **params) for d in query_desc]
        ms = (time.perf_counter() - t0) * 1e3 / len(queries) + describe_ms  # describe + search, like the CNN's
        top1 = np.array([bool(r) and r[0].path == orig for r, (_, orig, _) in zip(res, queries)])
        p10 = []
        for i, d in enumerate(flower_desc):
            r = sfl.search_descriptors(d, 10, exclude=i, **params) if len(d) else []
            p10.append(sum(labels[m.id] == labels[i] for m in r) / 10)
        rows[label] = {"top1": float(top1.mean()),
                       **{e: float(top1[[q[2] == e for q in queries]].mean()) for e in EDITS},
                       "p10": float(np.mean(p10)), "img_s": sift_rate, "query_ms": ms, "bytes_img": bytes_img}

    # ---------------------------------------------------------------- table
    cols = ["top1", *EDITS, "p10", "img_s", "query_ms", "bytes_img"]
    head = {"top1": "dup top-1", "p10": "flowers P@10", "img_s": "extract img/s", "query_ms": "query ms",
            "bytes_img": "bytes/img"}
    print()
    print("| method | " + " | ".join(head.get(c, c) for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for label, r in rows.items():
        cells = [f"{r[c]:.3f}" if c in ("top1", "p10", *EDITS) else f"{r[c]:,.1f}" if c != "bytes_img"
                 else f"{r[c]:,.0f}" for c in cols]
        print(f"| {label} | " + " | ".join(cells) + " |")
    base = rows[name]
    print()
    for label, r in rows.items():
        if label != name:
            print(f"{label} / {name}: dup top-1 x{r['top1'] / max(base['top1'], 1e-9):.2f}, flowers P@10 "
                  f"x{r['p10'] / max(base['p10'], 1e-9):.2f}, extraction speed x{r['img_s'] / base['img_s']:.2f}, "
                  f"query time x{r['query_ms'] / base['query_ms']:.2f}, "
                  f"storage x{r['bytes_img'] / base['bytes_img']:.0f}")
    print(f"(chance P@10 = 0.2; work folder {work})")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
