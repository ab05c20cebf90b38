"""Databases written by the version before the layered package (format 1) open and work unchanged.

The fixtures are written here the way that version wrote them (its manifest layout, key order and file names),
not committed as data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from similar_images import Database
from similar_images.cli import main
from similar_images.methods.sift import SiftDatabase


def _vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _write_v1_database(folder: Path, x: np.ndarray, *, factory: str = "IVF4,Flat") -> dict:
    """What ``similar_images.database.write_database`` and ``Database.build_index`` of version 0.1.0 wrote."""
    folder.mkdir(parents=True)
    n, d = x.shape
    x.tofile(folder / "vectors.f32")
    with open(folder / "items.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": i, "path": f"/photos/img{i:03d}.jpg"}) + "\n")
    with open(folder / "failures.csv", "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([["path", "reason"], ["/photos/bad.jpg", "corrupt or truncated image"]])
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add_with_ids(x, np.arange(n, dtype=np.int64))
    faiss.extract_index_ivf(index).nprobe = 2
    faiss.write_index(index, str(folder / "index-0001.faiss"))
    manifest = {
        "format": "similar-images-database",
        "format_version": 1,
        "kind": "image",
        "created_at": "2026-10-01T10:00:00+00:00",
        "updated_at": "2026-10-01T10:05:00+00:00",
        "model": {"name": "vgg16-avg", "dim": d, "layer": "block5_pool+avg", "input_size": [224, 224],
                  "weights": "/weights/vgg16_notop.weights.h5", "seed": 0},
        "metric": "cosine",
        "normalized": True,
        "files": {"vectors": "vectors.f32", "items": "items.jsonl", "failures": "failures.csv",
                  "index": "index-0001.faiss"},
        "counts": {"items": n, "failed": 1, "removed": 1, "indexed": n, "added_after_training": 0},
        "removed_ids": [7],
        "index": {"factory": factory, "n_vectors": n, "n_train": n, "train_seconds": 0.01, "add_seconds": 0.0,
                  "build_seconds": 0.02, "index_bytes": 12345, "recall_at_10": 0.98, "n_eval_queries": n,
                  "search_params": {"nprobe": 2}, "recall_at_10_served": 1.0, "nprobe_recalls": {"1": 0.9, "2": 1.0},
                  "built_at": "2026-10-01T10:05:00+00:00", "filtered_ids": []},
        "versions": {"similar_images": "0.1.0", "python": "3.11.7", "numpy": "2.1.0", "faiss": "1.14.2"},
        "extraction": {"model": "vgg16-avg", "weights": "/weights/vgg16_notop.weights.h5", "batch_size": 32,
                       "workers": None, "shard_size": 1024, "max_pixels": 100000000, "seed": 0, "verbose": True,
                       "images": n + 1, "seconds_last_run": 12.5, "images_per_second_last_run": 9.9},
    }
    # The index still holds id 7: version 0.1.0 removed ids from IVF indexes too; remove it the same way.
    index.remove_ids(np.asarray([7], dtype=np.int64))
    faiss.write_index(index, str(folder / "index-0001.faiss"))
    manifest["counts"]["indexed"] = n - 1
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def test_a_v1_database_opens_searches_and_keeps_its_manifest(tmp_path: Path) -> None:
    x = _vectors(60, 512)
    original = _write_v1_database(tmp_path / "db", x)
    db = Database.open(tmp_path / "db")
    assert db.manifest.to_dict() == original  # every section, the unknown ones included, read back unchanged
    assert len(db) == 59 and db.manifest.index is not None and db.search_defaults == {"nprobe": 2}
    results = db.search(3, k=5, exact=True)
    expected = [int(i) for i in np.argsort(-(x @ x[3]))[:6] if i != 7][:5]
    assert results.ids == expected and results[0].score == pytest.approx(1.0)
    assert 7 not in db.search(x[7], k=10).ids  # removed ids stay removed
    assert db.failures == [("/photos/bad.jpg", "corrupt or truncated image")]
    assert db.id_of("/photos/img004.jpg") == 4


def test_a_v1_database_takes_additions_and_keeps_its_old_sections(tmp_path: Path) -> None:
    x = _vectors(60, 512)
    _write_v1_database(tmp_path / "db", x)
    db = Database.open(tmp_path / "db")
    new = _vectors(3, 512, seed=1)
    assert db.add_vectors(new, ["/photos/new0.jpg", "/photos/new1.jpg", "/photos/new2.jpg"]) == [60, 61, 62]
    db.remove([5])
    reopened = Database.open(tmp_path / "db")
    m = reopened.manifest
    assert m.counts.items == 63 and m.counts.removed == 2 and m.counts.indexed == 61
    assert m.extra["extraction"]["images_per_second_last_run"] == 9.9  # the old section travels along
    assert m.index is not None and m.index.get("nprobe_recalls") == {"1": 0.9, "2": 1.0}
    assert reopened.search(new[1], k=1).ids == [61]


def test_the_cli_reads_a_v1_database(tmp_path: Path) -> None:
    original = _write_v1_database(tmp_path / "db", _vectors(60, 512))
    result = CliRunner().invoke(main, ["info", str(tmp_path / "db"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == original
    result = CliRunner().invoke(main, ["search", str(tmp_path / "db"), "3", "--id", "-k", "3"])
    assert result.exit_code == 0 and "(3 results" in result.output


def test_a_v1_sift_database_opens_and_searches(tmp_path: Path) -> None:
    folder = tmp_path / "sift"
    folder.mkdir()
    rng = np.random.default_rng(0)
    desc = rng.random((12, 128), dtype=np.float32)
    owners = np.asarray([0] * 5 + [1] * 4 + [2] * 3, dtype=np.int32)
    index = faiss.IndexIDMap2(faiss.IndexFlatL2(128))
    index.add_with_ids(desc, np.arange(12, dtype=np.int64))
    faiss.write_index(index, str(folder / "descriptors.faiss"))
    np.save(folder / "descriptor_images.npy", owners, allow_pickle=False)
    with open(folder / "items.jsonl", "w", encoding="utf-8") as fh:
        for i in range(3):
            fh.write(json.dumps({"id": i, "path": f"/p/{i}.jpg"}) + "\n")
    (folder / "failures.csv").write_text("path,reason\n", encoding="utf-8")
    manifest = {
        "format": "similar-images-sift", "format_version": 1, "kind": "sift", "created_at": "2026-10-01T10:00:00+00:00",
        "model": {"name": "sift", "dim": 128, "max_features": 200, "root_sift": True, "max_side": 640},
        "metric": "l2",
        "files": {"items": "items.jsonl", "failures": "failures.csv", "descriptor_images": "descriptor_images.npy",
                  "index": "descriptors.faiss"},
        "counts": {"items": 3, "failed": 0, "descriptors": 12, "images_without_descriptors": 0},
        "index": {"factory": "Flat", "n_train": 0, "index_bytes": 6000, "search_params": {}},
        "versions": {"similar_images": "0.1.0"},
        "extraction": {"max_features": 200, "images": 3},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    sdb = SiftDatabase.open(folder)
    assert len(sdb) == 3 and sdb.manifest.counts.extra["descriptors"] == 12
    res = sdb.search_descriptors(desc[5:9], k=2, knn=1)
    assert res.ids[0] == 1 and res[0].votes == 4
    assert sdb.manifest.extra["extraction"] == {"max_features": 200, "images": 3}
