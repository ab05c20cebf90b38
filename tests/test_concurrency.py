"""Several processes on one database: writers never lose each other's work, readers never see a half-switched
index generation, and what killed writers leave behind is cleaned up (issue 12, points 1 and 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_image
from helpers import plugin_env

from similar_images import Database, IndexConfig
from similar_images.embed import l2_normalize
from similar_images.store import write_database
from similar_images.store.adding import remove_stale_work_dirs
from similar_images.store.manifest import Manifest

CLI = [sys.executable, "-c", "from similar_images.cli import main; main()"]


def _vector_db(path: Path, n: int = 200, d: int = 16) -> None:
    x = l2_normalize(np.random.default_rng(0).normal(size=(n, d)).astype(np.float32))
    write_database(path, kind="image", model={"name": "synthetic", "dim": d, "weights": "random"},
                   items=[f"/img/{i}.jpg" for i in range(n)], vector_chunks=[x])


def _image_db(tmp_path: Path, folders: dict[str, int]) -> Path:
    """A tiny-model database of 10 images, and folders of new images (name -> count)."""
    for name, count in {"base": 10, **folders}.items():
        for i in range(count):
            make_image(tmp_path / name / f"{name}{i}.png", seed=hash(name) % 1000 * 100 + i)
    db = tmp_path / "db"
    subprocess.run([*CLI, "extract", str(tmp_path / "base"), str(db), "--model", "tiny", "--weights", "random",
                    "-q"], env=plugin_env(), check=True, capture_output=True, timeout=300)
    return db


@pytest.mark.slow
def test_two_concurrent_cli_adds_keep_both_batches(tmp_path: Path) -> None:
    """Point 1: 'add DB a/ & add DB b/' both printed 'Added 20 images (ids 300..319)' and one batch was lost."""
    db = _image_db(tmp_path, {"a": 20, "b": 20})
    procs = [subprocess.Popen([*CLI, "add", str(db), str(tmp_path / name), "-q"], env=plugin_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    said = sorted(out.strip().splitlines()[-1] for out, _ in outs)
    assert said == ["Added 20 images (ids 10..29); 0 failed", "Added 20 images (ids 30..49); 0 failed"], said
    database = Database.open(db)
    assert len(database) == 50
    names = sorted(Path(p).name for p in database.items)
    assert names == sorted([f"base{i}.png" for i in range(10)] + [f"{f}{i}.png" for f in "ab" for i in range(20)])


@pytest.mark.slow
def test_concurrent_adds_of_the_same_folder_add_it_once(tmp_path: Path) -> None:
    db = _image_db(tmp_path, {"a": 12})
    procs = [subprocess.Popen([*CLI, "add", str(db), str(tmp_path / "a"), "-q"], env=plugin_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    database = Database.open(db)
    assert len(database.items) == len(set(database.items)) == 22
    said = sorted(out.strip().splitlines()[-1] for out, _ in outs)
    assert said[0].startswith("Added 0 images") and said[1].startswith("Added 12 images"), said


_READER = textwrap.dedent("""
    import sys, traceback
    from similar_images import Database
    db_path, n = sys.argv[1], int(sys.argv[2])
    errors = 0
    for i in range(n):
        try:
            db = Database.open(db_path, mmap_index=i % 2 == 1)
            live = db.live_ids()
            res = db.search(int(live[i % len(live)]), k=3, exact=i % 5 == 0)
            assert len(res) == 3
        except Exception:
            errors += 1
            traceback.print_exc()
    print("errors", errors)
""")

_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from similar_images import Database, IndexConfig
    db_path, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(abs(hash(tag)) % 1000)
    db = Database.open(db_path, load_index=False)
    for i in range(n):
        db.add_vectors(rng.normal(size=(5, 16)).astype(np.float32), [f"/{tag}/{i}-{j}.jpg" for j in range(5)])
        if i % 3 == 2:
            db.remove([int(db.live_ids()[0])])
        if tag == "rebuild" and i % 2:
            db.build_index(IndexConfig(factory=("Flat", "IVF4,Flat", "HNSW8")[i % 3], eval_queries=0, nprobe=None
                                       if i % 3 != 1 else 2), force=True)
    print("done", n)
""")


@pytest.mark.slow
def test_searches_never_fail_during_adds_removes_and_rebuilds(tmp_path: Path) -> None:
    """Point 2: searches during adds and rebuilds crashed with 'could not open .../index-0001.faiss', or were told
    'Index file missing; run build-index --force' though the database was fine."""
    db = tmp_path / "db"
    _vector_db(db)
    Database.open(db).build_index(IndexConfig(factory="Flat", eval_queries=0))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), tag, "30"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for tag in ("add", "rebuild")]
    readers = [subprocess.Popen([sys.executable, "-c", _READER, str(db), "400"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    w_out = [p.communicate(timeout=600) for p in writers]
    r_out = [p.communicate(timeout=600) for p in readers]
    assert all(p.returncode == 0 for p in writers), w_out
    assert [out.strip() for out, _ in r_out] == ["errors 0", "errors 0"], [err[-3000:] for _, err in r_out]
    database = Database.open(db)
    assert len(database.items) == 200 + 2 * 30 * 5 and database.manifest.counts.removed == 2 * 10
    assert database.index is not None and database.index.ntotal == database.manifest.counts.indexed


def test_a_reader_whose_index_generation_vanished_reads_the_new_manifest(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that read the manifest just before two index rebuilds finds its index file gone: it reads the
    manifest again instead of failing (or telling the user to rebuild a database that is fine)."""
    db = tmp_path / "db"
    _vector_db(db)
    Database.open(db).build_index(IndexConfig(factory="Flat", eval_queries=0))
    stale = Manifest.load(db)
    for _ in range(2):
        Database.open(db).build_index(IndexConfig(factory="Flat", eval_queries=0), force=True)
    assert not (db / str(stale.files["index"])).exists()
    real_load = Manifest.load
    calls = []

    def load(folder, **kw):  # type: ignore[no-untyped-def]
        calls.append(folder)
        return stale if len(calls) == 1 else real_load(folder, **kw)

    monkeypatch.setattr(Manifest, "load", load)
    opened = Database.open(db)
    assert opened.manifest.files["index"] == "index-0003.faiss" and opened.index is not None


def test_temporary_files_of_killed_writers_are_removed_by_the_next_writer(tmp_path: Path) -> None:
    """Point 7: killed index builds left '.index-000N.faiss.*.tmp' files behind, even after a successful rebuild."""
    db = tmp_path / "db"
    _vector_db(db)
    stale = [".index-0002.faiss.abc.tmp", ".manifest.json.x1.tmp", ".items.jsonl.x2.tmp", ".vectors.f32.x3.tmp"]
    for name in stale:
        (db / name).write_bytes(b"half")
    Database.open(db).build_index(IndexConfig(factory="Flat", eval_queries=0))
    assert not [name for name in stale if (db / name).exists()]
    assert sorted(p.name for p in db.iterdir()) == [".lock", "failures.csv", "index-0001.faiss", "items.jsonl",
                                                    "manifest.json", "vectors.f32"]


@pytest.mark.slow
def test_work_folders_of_killed_adds_are_removed_by_the_next_add(tmp_path: Path, synthetic_images: Path,
                                                                 tiny_model: str) -> None:
    """The work folder of a killed add is removed by the next add; that of an add still running is left alone."""
    from similar_images import ExtractConfig
    from similar_images._util.locks import file_lock
    from similar_images.store import extract_features

    db = tmp_path / "db"
    extract_features(sorted(synthetic_images.rglob("*.png")), db,
                     ExtractConfig(model=tiny_model, weights="random", verbose=False))
    dead = db / ".adding-dead"
    (dead / "shard-000000.npy").parent.mkdir()
    (dead / "shard-000000.npy").write_bytes(b"x")
    (db / ".adding-dead.lock").touch()
    alive = db / ".adding-alive"
    alive.mkdir()
    with file_lock(db / ".adding-alive.lock", timeout=0):
        summary = Database.open(db).add(synthetic_images)  # the other images
        assert alive.exists()
    assert len(summary.ids) == 12 - len(list(synthetic_images.rglob("*.png")))
    left = sorted(p.name for p in db.iterdir() if p.name.startswith("."))
    assert left == [".adding-alive", ".adding-alive.lock", ".lock"], left
    assert remove_stale_work_dirs(db) == [alive]
    assert json.loads((db / "manifest.json").read_text())["counts"]["items"] == 12
