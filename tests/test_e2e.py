"""End to end on real data: real VGG16 ImageNet convolution weights over the 256
real COCO photos, the default trained IVF-PQ index, and edited copies of 50
database photos as queries. The original must come back first for >= 95%."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from similar_images import Database, ExtractConfig, IndexConfig
from similar_images.index import original_factory
from similar_images.store import extract_features


def _edit(path: str, how: str) -> bytes:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if how in ("crop", "all"):  # 10% cropped off each axis (5% per side)
        dx, dy = int(w * 0.05), int(h * 0.05)
        img = img.crop((dx, dy, w - dx, h - dy))
    if how in ("resize", "all"):
        img = img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=70 if how in ("jpeg", "all") else 95)
    return buf.getvalue()


@pytest.mark.slow
def test_edited_copies_find_their_original(coco_dir: Path, vgg_weights: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "coco-db"
    summary = extract_features(coco_dir, db_path, ExtractConfig(model="vgg16-avg", weights=str(vgg_weights),
                                                                verbose=False))
    assert summary.total == 256 and summary.extracted == 256 and summary.failed == 0
    db = Database.open(db_path)
    # the original design's IVF-PQ (the default for 256 vectors is Flat), nprobe measured at build time
    report = db.build_index(IndexConfig(factory=original_factory(256, 512)))
    assert report.factory == "IVF16,PQ16" and report.recall_at_10 is not None and report.nprobe_recalls
    db = Database.open(db_path)

    chosen = random.Random(42).sample(range(len(db.items)), 50)
    accuracy = {}
    for how in ("all", "crop", "resize", "jpeg"):
        results = db.search_batch([_edit(db.items[i], how) for i in chosen], k=5)
        accuracy[how] = sum(r.ids[0] == i for r, i in zip(results, chosen)) / len(chosen)
    print(f"\ntop-1 accuracy of edited copies (IVF-PQ, {report.search_params}): {accuracy}; "
          f"index recall@10 {report.recall_at_10}")
    assert all(a >= 0.95 for a in accuracy.values()), accuracy
