"""The database folder: manifest checks, add and remove with stable ids, crash safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image

from similar_images import Database, ExtractConfig, IndexConfig
from similar_images.embed import l2_normalize
from similar_images.errors import DatabaseError, DatabaseExistsError, QueryError
from similar_images.store import extract_features, write_database


def _vectors(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32))


def _make_db(path: Path, n: int = 300, d: int = 32, chunks: int = 3) -> np.ndarray:
    x = _vectors(n, d)
    write_database(path, kind="image", model={"name": "synthetic", "dim": d, "weights": "random"},
                   items=[f"/img/{i}.jpg" for i in range(n)], vector_chunks=np.array_split(x, chunks),
                   failures=[("/img/bad.jpg", "corrupt")])
    return x


def test_roundtrip_and_manifest(tmp_path: Path) -> None:
    x = _make_db(tmp_path / "db")
    db = Database.open(tmp_path / "db", load_index=False)
    m = db.manifest
    assert m.dim == 32 and m.metric == "cosine" and m.kind == "image"
    assert m.counts.items == 300 and m.counts.failed == 1
    assert {"similar_images", "numpy", "python"} <= set(m.versions) and m.created_at
    np.testing.assert_allclose(np.asarray(db.vectors), x)
    assert db.failures == [("/img/bad.jpg", "corrupt")]
    assert db.item(5) == "/img/5.jpg" and len(db) == 300
    assert not list((tmp_path / "db").glob("*.pkl")) and not list((tmp_path / "db").glob("*.tmp"))


def test_files_get_normal_permissions_not_the_temporary_files(tmp_path: Path) -> None:
    import os

    from similar_images._util import io as _io

    umask = os.umask(0o022)
    try:
        _make_db(tmp_path / "db")
        Database.open(tmp_path / "db", load_index=False).build_index(IndexConfig(factory="Flat", eval_queries=0))
        for f in (tmp_path / "db").iterdir():
            if f.is_file():
                assert f.stat().st_mode & 0o777 == 0o666 & ~_io.UMASK, f  # others can read a shared database
        (tmp_path / "db" / "manifest.json").chmod(0o640)
        _io.write_json(tmp_path / "db" / "manifest.json", {"replaced": True})
        assert (tmp_path / "db" / "manifest.json").stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    finally:
        os.umask(umask)


def test_write_refuses_existing_and_mismatched(tmp_path: Path) -> None:
    _make_db(tmp_path / "db")
    with pytest.raises(DatabaseExistsError, match="force=True"):
        _make_db(tmp_path / "db")
    with pytest.raises(ValueError, match="dimension"):
        write_database(tmp_path / "db2", kind="image", model={"name": "m", "dim": 8}, items=["a"],
                       vector_chunks=[np.zeros((1, 9), np.float32)])
    with pytest.raises(ValueError, match="2 vectors for 1 items"):
        write_database(tmp_path / "db3", kind="image", model={"name": "m", "dim": 8}, items=["a"],
                       vector_chunks=[np.zeros((2, 8), np.float32)])


def _tamper(db: Path, fn) -> None:  # type: ignore[no-untyped-def]
    m = json.loads((db / "manifest.json").read_text())
    fn(m)
    (db / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda m: m["model"].__setitem__("dim", 64), "holds 150 vectors"),
        (lambda m: m["counts"].__setitem__("items", 301), "holds 300 vectors|manifest counts 301"),
        (lambda m: m.__setitem__("format", "other"), "not a similar-images manifest"),
        (lambda m: m.__setitem__("format_version", 99), "newer similar-images"),
    ],
)
def test_open_checks_consistency(tmp_path: Path, change, pattern: str) -> None:  # type: ignore[no-untyped-def]
    _make_db(tmp_path / "db")
    _tamper(tmp_path / "db", change)
    with pytest.raises(DatabaseError, match=pattern):
        Database.open(tmp_path / "db")


def test_open_checks_model_and_index(tmp_path: Path) -> None:
    _make_db(tmp_path / "db")
    with pytest.raises(DatabaseError, match="built with model 'synthetic', not 'vgg16-fc2'"):
        Database.open(tmp_path / "db", model="vgg16-fc2")
    db = Database.open(tmp_path / "db")
    db.build_index(IndexConfig(factory="IVF8,Flat", eval_queries=0))
    _tamper(tmp_path / "db", lambda m: m["counts"].__setitem__("indexed", 5))
    with pytest.raises(DatabaseError, match="index holds 300 vectors"):
        Database.open(tmp_path / "db")
    with pytest.raises(DatabaseError, match="No database"):
        Database.open(tmp_path / "nothing")


def test_build_index_needs_force_and_uses_generations(tmp_path: Path) -> None:
    _make_db(tmp_path / "db")
    db = Database.open(tmp_path / "db")
    db.build_index(IndexConfig(factory="Flat", eval_queries=20))
    assert (tmp_path / "db" / "index-0001.faiss").exists()
    with pytest.raises(DatabaseExistsError, match="force=True"):
        db.build_index(IndexConfig(factory="Flat"))
    report = db.build_index(IndexConfig(factory="IVF8,Flat", nprobe=8, eval_queries=50), force=True)
    # the previous generation stays until the next change, for readers that opened the old manifest
    assert sorted(p.name for p in (tmp_path / "db").glob("index-*")) == ["index-0001.faiss", "index-0002.faiss"]
    m = Database.open(tmp_path / "db").manifest
    assert m.index.factory == "IVF8,Flat" and m.index.get("recall_at_10") == report.recall_at_10 == 1.0
    assert m.index.search_params == {"nprobe": 8} and m.index.get("index_bytes") > 0
    db.build_index(IndexConfig(factory="Flat", eval_queries=0), force=True)
    assert sorted(p.name for p in (tmp_path / "db").glob("index-*")) == ["index-0002.faiss", "index-0003.faiss"]


def test_build_index_runs_on_the_engine_given_and_records_its_figures(tmp_path: Path) -> None:
    """Database.build_index is the one way to index: the engine trains and fills (here a local engine that
    records its call), the store locks, installs the index and writes the engine's figures in the manifest."""
    from similar_images.engines.local import IndexBuild, LocalEngine

    x = _make_db(tmp_path / "db")
    Database.open(tmp_path / "db", load_index=False).remove([3, 7])
    calls: list[dict] = []

    class Recording(LocalEngine):
        def build_index(self, vectors, config, *, ids=None, files=None):  # type: ignore[no-untyped-def]
            calls.append({"rows": len(vectors), "ids": None if ids is None else list(ids), "files": files,
                          "factory": config.factory})
            built = super().build_index(vectors, config, ids=ids, files=files)
            return IndexBuild(built.index, built.report, {"engine": {"name": "recording"}})

    db = Database.open(tmp_path / "db", load_index=False)
    report = db.build_index(IndexConfig(factory="Flat", eval_queries=20), engine=Recording())
    (call,) = calls
    assert call["rows"] == 298 and call["ids"] == [i for i in range(300) if i not in (3, 7)]
    assert call["factory"] == "Flat" and call["files"].vectors == tmp_path / "db" / "vectors.f32"
    assert call["files"].n_rows == 300 and call["files"].ivfdata.name == "index-0001.ivfdata"
    opened = Database.open(tmp_path / "db")
    assert opened.manifest.index.get("engine") == {"name": "recording"} and report.n_vectors == 298
    assert opened.search(x[5], k=1)[0].id == 5
    with pytest.raises(DatabaseExistsError, match="force=True"):  # the store's checks hold for every engine
        db.build_index(IndexConfig(factory="Flat"), engine=Recording())
    assert len(calls) == 1


@pytest.mark.parametrize("factory", ["IVF8,Flat", "HNSW16", "Flat"])
def test_add_and_remove_keep_ids_stable(tmp_path: Path, factory: str) -> None:
    x = _make_db(tmp_path / "db")
    db = Database.open(tmp_path / "db")
    db.build_index(IndexConfig(factory=factory, nprobe=8 if "IVF" in factory else None, eval_queries=0))
    new = _vectors(5, seed=7)
    ids = db.add_vectors(new, [f"/new/{i}.jpg" for i in range(5)])
    assert ids == [300, 301, 302, 303, 304]
    db = Database.open(tmp_path / "db")
    assert db.manifest.counts.added_after_training == 5 and db.index.ntotal == 305
    assert db.search(new[2], k=1).ids == [302]
    removed = db.remove([3, "/img/4.jpg", 302])
    assert removed == [3, 4, 302]
    db = Database.open(tmp_path / "db")
    assert len(db) == 302 and db.manifest.counts.removed == 3
    for rid in (3, 4, 302):
        with pytest.raises(QueryError, match="removed"):
            db.search(rid)
        q = x[rid] if rid < 300 else new[2]
        assert rid not in db.search(q, k=10).ids
        assert rid not in db.search(q, k=10, exact=True).ids
    assert db.search(10, k=1).ids == [10] and db.item(301) == "/new/1.jpg"
    if factory == "HNSW16":  # HNSW cannot delete: ids are filtered at search time
        assert db.manifest.index.filtered_ids == [3, 4, 302]
    with pytest.raises(QueryError, match="not in the database"):
        db.remove(["/img/unknown.jpg"])


def test_interrupted_add_leaves_a_consistent_database(tmp_path: Path) -> None:
    _make_db(tmp_path / "db")
    db = Database.open(tmp_path / "db")
    db.build_index(IndexConfig(factory="Flat", eval_queries=0))
    manifest_before = (tmp_path / "db" / "manifest.json").read_bytes()
    # Simulate a crash after the vectors and items were appended, before the manifest commit.
    with open(tmp_path / "db" / "vectors.f32", "ab") as fh:
        fh.write(_vectors(2).tobytes())
    with open(tmp_path / "db" / "items.jsonl", "a") as fh:
        fh.write(json.dumps({"id": 300, "path": "/half/added.jpg"}) + "\n")
    db = Database.open(tmp_path / "db")
    assert len(db) == 300 and (tmp_path / "db" / "manifest.json").read_bytes() == manifest_before
    assert db.add_vectors(_vectors(1, seed=3), ["/new/ok.jpg"]) == [300]
    db = Database.open(tmp_path / "db")
    assert db.items[-1] == "/new/ok.jpg" and len(db) == 301 and db.index.ntotal == 301


def test_add_images_without_retraining(tmp_path: Path, synthetic_images: Path, tiny_model: str) -> None:
    imgs = sorted(synthetic_images.rglob("*.*"))
    extract_features(imgs[:8], tmp_path / "db", ExtractConfig(model=tiny_model, weights="random", verbose=False))
    db = Database.open(tmp_path / "db")
    db.build_index(IndexConfig(factory="Flat", eval_queries=0))
    index_before = db.manifest.index.built_at
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    summary = db.add([*imgs, bad])  # the first 8 are already there
    assert summary.ids == [8, 9, 10, 11] and [Path(p).name for p, _ in summary.failures] == ["bad.jpg"]
    db = Database.open(tmp_path / "db")
    assert db.manifest.index.built_at == index_before and db.manifest.counts.added_after_training == 4
    assert db.search(str(imgs[10]), k=1).ids == [10]


def test_copy_of_small_db_is_searchable(small_db: Path, tmp_path: Path) -> None:
    shutil.copytree(small_db, tmp_path / "db")
    db = Database.open(tmp_path / "db", model="mobilenetv2")
    assert len(db) == 48 and db.index.ntotal == 48
    extra = make_image(tmp_path / "extra.png", seed=99, size=(300, 200))
    assert db.add([extra]).ids == [48]
