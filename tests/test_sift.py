"""SIFT local features: real-photo retrieval of edited copies, vote counting, on-disk format, failures, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import photo_sample
from helpers import edited_copy
from PIL import Image

from similar_images.cli import main
from similar_images.errors import DatabaseError, IndexTrainingError, QueryError
from similar_images.methods.sift import (
    SIFT_DIM,
    SiftConfig,
    SiftDatabase,
    SiftExtractor,
    count_votes,
    extract_sift,
    root_sift,
    write_sift_database,
)


@pytest.fixture(scope="module")
def sift_db(coco_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A SIFT database of 40 real COCO photos, and edited copies (not in it) of 9 of them."""
    root = tmp_path_factory.mktemp("sift")
    photos = photo_sample(coco_dir, 40, seed=11)
    listing = root / "photos.txt"
    listing.write_text("\n".join(map(str, photos)) + "\n")
    db = root / "db"
    summary = extract_sift(listing, db, SiftConfig(max_features=200, verbose=False))
    queries = {}
    for i, p in enumerate(photos[::4][:9]):
        edit = ("resize", "jpeg70", "crop10")[i % 3]
        queries[edited_copy(p, root / "queries" / f"{edit}_{p.name}", edit)] = str(p)
    return {"db": db, "photos": photos, "queries": queries, "summary": summary}


def test_extraction_summary_and_manifest(sift_db: dict) -> None:
    s = sift_db["summary"]
    assert s.total == s.extracted == 40 and s.failed == 0
    sdb = SiftDatabase.open(sift_db["db"])
    counts = sdb.descriptor_counts
    assert counts.max() <= 200 and counts.min() > 50  # textured photos give many keypoints
    assert counts.sum() == s.descriptors == len(sdb.image_ids) == sdb.index.ntotal
    m = sdb.manifest
    assert m.model["name"] == "sift" and m.dim == SIFT_DIM and m.model["root_sift"] is True
    assert {"opencv", "faiss", "numpy", "similar_images"} <= set(m.versions)
    assert m.counts.items == 40 and m.counts.failed == 0 and m.counts.indexed == s.descriptors
    assert m.counts.extra == {"descriptors": s.descriptors, "images_without_descriptors": 0}
    assert sdb.items == [str(p) for p in sift_db["photos"]]


def test_edited_copy_retrieves_original_top1(sift_db: dict) -> None:
    sdb = SiftDatabase.open(sift_db["db"])
    for ratio in (None, 0.8):
        for query, original in sift_db["queries"].items():
            res = sdb.search(query, k=5, ratio=ratio)
            assert res[0].path == original, (query.name, ratio, res.to_dict())
            runner_up = res[1].votes if len(res) > 1 else 0
            # A clear margin, not a tie; the ratio test removes most chance matches.
            assert res[0].votes >= 5 * max(runner_up, 1) if ratio else res[0].votes > runner_up
            assert [m.rank for m in res] == list(range(1, len(res) + 1))
            assert all(a.votes >= b.votes for a, b in zip(res, res[1:]))


def test_votes_on_a_tiny_synthetic_case(tmp_path: Path) -> None:
    # Hand-made neighbour lists: 4 query descriptors, knn = 3.
    nbr = np.array([[0, 0, 1], [1, 2, 1], [2, -1, -1], [0, 1, 2]])
    dist = np.array([[1.0, 1.1, 4.0], [1.0, 1.05, 3.0], [0.5, 0, 0], [1.0, 4.0, 9.0]])
    assert count_votes(nbr, dist, 4).tolist() == [2, 3, 3, 0]  # one vote per distinct image per row
    # Ratio 0.8 on distances (sqrt of Faiss' squared L2): row 0: 1 < 0.8*2 yes (other image at d2=2);
    # row 1: 1 < 0.8*sqrt(1.05) no; row 2: no other image -> accepted; row 3: 1 < 0.8*2 yes.
    assert count_votes(nbr, dist, 4, ratio=0.8).tolist() == [2, 0, 1, 0]
    with pytest.raises(ValueError, match="ratio"):
        count_votes(nbr, dist, 4, ratio=1.5)

    # End to end through a real Faiss index: image a holds e0..e4, b holds e5..e9, c holds e10. The query has
    # 3 of a's descriptors (one slightly off), one close to c, and one ambiguous between a's e3 and b's e8
    # (a bit closer to e8: distance ratio 0.86).
    eye = np.eye(SIFT_DIM, dtype=np.float32)
    records = [("/a.jpg", eye[0:5]), ("/b.jpg", eye[5:10]), ("/c.jpg", eye[10:11])]
    write_sift_database(tmp_path / "syn", records, config=SiftConfig(verbose=False))
    sdb = SiftDatabase.open(tmp_path / "syn")
    ambiguous = 0.66 * eye[3] + 0.75 * eye[8]
    query = np.stack([eye[0], eye[1], eye[2] * 0.9, 0.6 * eye[10] + 0.8 * eye[100],
                      ambiguous / np.linalg.norm(ambiguous)])
    res = sdb.search_descriptors(query, k=3, knn=1)
    assert [(m.path, m.votes) for m in res] == [("/a.jpg", 3), ("/b.jpg", 1), ("/c.jpg", 1)]
    assert res[0].fraction == pytest.approx(3 / 5) and res.n_descriptors == 5
    # knn = all 11 descriptors, no ratio test: every image gets one vote (not 5 for a) from each descriptor.
    wide = sdb.search_descriptors(query, k=3, knn=11)
    assert {m.path: m.votes for m in wide} == {"/a.jpg": 5, "/b.jpg": 5, "/c.jpg": 5}
    # With the ratio test (0.8) the ambiguous descriptor votes for nobody.
    strict = sdb.search_descriptors(query, k=3, knn=3, ratio=0.8)
    assert [(m.path, m.votes) for m in strict] == [("/a.jpg", 3), ("/c.jpg", 1)]
    # Excluding an image removes its votes; its own descriptors (all nearest to themselves) then vote for the
    # nearest descriptors of the other images, even with knn = 1.
    assert "/a.jpg" not in [m.path for m in sdb.search_descriptors(query, k=3, knn=1, exclude=0)]
    self_query = sdb.search_descriptors(eye[0:5], k=3, knn=1, exclude=0)
    assert "/a.jpg" not in [m.path for m in self_query] and sum(m.votes for m in self_query) == 5


def test_descriptor_map_round_trips_through_disk(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = [7, 0, 3, 12]
    records = [(f"/img/{i}.jpg", root_sift(rng.random((n, SIFT_DIM), dtype=np.float32))) for i, n in enumerate(sizes)]
    manifest = write_sift_database(tmp_path / "s", records, config=SiftConfig(verbose=False),
                                   failures=[("/bad.jpg", "corrupt")])
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files == ["descriptor_images.npy", "descriptors.faiss", "failures.csv", "items.jsonl", "manifest.json"]
    ids = np.load(tmp_path / "s" / "descriptor_images.npy", allow_pickle=False)
    assert ids.dtype == np.int32 and ids.tolist() == [0] * 7 + [2] * 3 + [3] * 12
    sdb = SiftDatabase.open(tmp_path / "s")
    assert np.array_equal(sdb.image_ids, ids) and sdb.items == [r[0] for r in records]
    assert sdb.descriptor_counts.tolist() == sizes
    assert manifest.counts.extra["images_without_descriptors"] == 1 and sdb.failures == [("/bad.jpg", "corrupt")]
    # The index holds descriptor ids: descriptor j of image 3 is found as itself.
    d, i = sdb.index.search(records[3][1][:1], 1)
    assert i[0, 0] == 10 and sdb.image_ids[i[0, 0]] == 3 and d[0, 0] < 1e-6
    # An existing database is protected; --force replaces it.
    from similar_images.errors import DatabaseExistsError

    with pytest.raises(DatabaseExistsError, match="force"):
        write_sift_database(tmp_path / "s", records)
    write_sift_database(tmp_path / "s", records[:2], force=True, config=SiftConfig(verbose=False))
    assert len(SiftDatabase.open(tmp_path / "s")) == 2
    # Damage is detected.
    np.save(tmp_path / "s" / "descriptor_images.npy", np.zeros(3, dtype=np.int32))
    with pytest.raises(DatabaseError, match="rebuild") as damaged:
        SiftDatabase.open(tmp_path / "s")
    assert "--" not in str(damaged.value)  # the library says what is wrong; the CLI names the command and flag
    r = CliRunner().invoke(main, ["sift", "info", str(tmp_path / "s")])
    assert r.exit_code == 1 and f"similar-images sift extract IMAGES {tmp_path / 's'} --force" in r.output, r.output


def test_trained_index_and_training_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    records = [(f"/{i}.jpg", root_sift(rng.random((50, SIFT_DIM), dtype=np.float32))) for i in range(10)]
    write_sift_database(tmp_path / "ivf", records, config=SiftConfig(factory="IVF4,Flat", train_size=120,
                                                                     verbose=False))
    sdb = SiftDatabase.open(tmp_path / "ivf")
    assert sdb.index.ntotal == 500 and sdb.manifest.index.get("n_train") == 120
    res = sdb.search_descriptors(records[6][1], k=1, knn=1, nprobe=4)
    assert res[0].id == 6 and res[0].votes == 50
    with pytest.raises(IndexTrainingError, match="Flat"):
        write_sift_database(tmp_path / "big", records, config=SiftConfig(factory="IVF1024,Flat", verbose=False))
    with pytest.raises(IndexTrainingError, match="Invalid"):
        write_sift_database(tmp_path / "bad", records, config=SiftConfig(factory="NotAnIndex"))


def test_bad_images_are_reported_and_skipped(sift_db: dict, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sift_db["photos"][:3]:
        shutil.copyfile(p, folder / p.name)
    (folder / "corrupt.jpg").write_bytes(b"not an image at all" * 10)
    (folder / "empty.png").write_bytes(b"")
    good = sift_db["photos"][0].read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    Image.new("RGB", (200, 150), (128, 128, 128)).save(folder / "flat.png")
    s = extract_sift(folder, tmp_path / "db", SiftConfig(verbose=False))
    assert s.total == 7 and s.extracted == 4 and s.failed == 3
    sdb = SiftDatabase.open(tmp_path / "db")
    failed = {Path(p).name: reason for p, reason in sdb.failures}
    assert set(failed) == {"corrupt.jpg", "empty.png", "truncated.jpg"}
    assert "empty" in failed["empty.png"] and "truncated" in failed["truncated.jpg"]
    assert sdb.manifest.counts.extra["images_without_descriptors"] == 1  # the flat image has no keypoints
    with pytest.raises(QueryError, match="no SIFT keypoints"):
        sdb.search(folder / "flat.png")
    with pytest.raises(QueryError, match="No such image"):
        sdb.search(folder / "missing.jpg")
    from similar_images.errors import ImageLoadError

    with pytest.raises(ImageLoadError):
        sdb.search(folder / "corrupt.jpg")


def test_extractor_limits_and_rootsift(sift_db: dict) -> None:
    photo = sift_db["photos"][0]
    plain = SiftExtractor(SiftConfig(max_features=50, root_sift=False)).describe(photo)
    rooted = SiftExtractor(SiftConfig(max_features=50, root_sift=True)).describe(photo)
    assert plain.shape == rooted.shape and plain.shape[0] <= 50 and plain.shape[1] == SIFT_DIM
    np.testing.assert_allclose(np.linalg.norm(rooted, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(rooted, root_sift(plain), atol=1e-5)
    gray = SiftExtractor(SiftConfig(max_side=100)).gray(photo)
    assert max(gray.shape) == 100 and gray.dtype == np.uint8
    with pytest.raises(ValueError, match="max_features"):
        SiftConfig(max_features=0)


def test_cli_sift_extract_search_info(sift_db: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    photos = sift_db["photos"][:12]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(map(str, photos)) + "\n")
    db = tmp_path / "sdb"
    r = runner.invoke(main, ["sift", "extract", str(listing), str(db), "--max-features", "100", "-q"])
    assert r.exit_code == 0, r.output
    assert "of 12 images" in r.output
    query = edited_copy(photos[5], tmp_path / "q.jpg", "crop10")
    r = runner.invoke(main, ["sift", "search", str(db), str(query), "-k", "3", "--ratio", "0.8", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["results"][0]["path"] == str(photos[5]) and out["n_descriptors"] <= 100
    r = runner.invoke(main, ["sift", "info", str(db)])
    assert r.exit_code == 0 and "12 images" in r.output and "max 100 per image" in r.output
    r = runner.invoke(main, ["sift", "extract", str(listing), str(db), "-q"])
    assert r.exit_code != 0 and "--force" in r.output
    r = runner.invoke(main, ["sift", "search", str(db), str(query), "--ratio", "0.8", "--knn", "1"])
    assert r.exit_code != 0 and "knn >= 2" in r.output
    r = runner.invoke(main, ["sift", "search", str(tmp_path), str(query)])
    assert r.exit_code != 0 and "sift extract" in r.output


def test_interrupted_extraction_resumes_with_the_same_database(sift_db: dict, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """SIFT goes through the one resumable build: a Ctrl+C in the middle keeps the committed shards, the same
    command describes only the images left, and the database equals an uninterrupted run's."""
    import faiss

    photos = sift_db["photos"][:12]
    listing = tmp_path / "photos.txt"
    listing.write_text("\n".join(map(str, photos)) + "\n")
    config = SiftConfig(max_features=60, shard_size=4, verbose=False)
    reference = extract_sift(listing, tmp_path / "ref", config)

    described: list[str] = []
    real_describe = SiftExtractor.describe

    def interrupted(self: SiftExtractor, source):  # type: ignore[no-untyped-def]
        if len(described) == 9:  # the 10th image: shards 0 and 1 (8 images) are committed
            raise KeyboardInterrupt
        described.append(str(source))
        return real_describe(self, source)

    monkeypatch.setattr(SiftExtractor, "describe", interrupted)
    db = tmp_path / "db"
    with pytest.raises(KeyboardInterrupt):
        extract_sift(listing, db, config)
    assert not (db / "manifest.json").exists()
    assert len(list((db / ".partial").glob("shard-*.json"))) == 2

    described.clear()
    monkeypatch.setattr(SiftExtractor, "describe", lambda self, source: (described.append(str(source)),
                                                                         real_describe(self, source))[1])
    r = CliRunner().invoke(main, ["sift", "extract", str(listing), str(db), "--max-features", "60",
                                  "--shard-size", "4", "-q"])
    assert r.exit_code == 0, r.output
    assert described == [str(p) for p in photos[8:]]  # only the images of the shard not committed
    assert f"Extracted {reference.descriptors} SIFT descriptors of 12 of 12 images (resumed after 8)" in r.output
    assert not (db / ".partial").exists()
    got, want = SiftDatabase.open(db), SiftDatabase.open(tmp_path / "ref")
    assert got.items == want.items == [str(p) for p in photos]
    np.testing.assert_array_equal(got.image_ids, want.image_ids)
    np.testing.assert_array_equal(faiss.serialize_index(got.index), faiss.serialize_index(want.index))
    # Other settings do not mix with the committed shards of an interrupted run.
    monkeypatch.setattr(SiftExtractor, "describe", interrupted)
    described.clear()
    with pytest.raises(KeyboardInterrupt):
        extract_sift(listing, tmp_path / "other", config)
    from similar_images.errors import InterruptedBuildError

    monkeypatch.setattr(SiftExtractor, "describe", real_describe)
    with pytest.raises(InterruptedBuildError):
        extract_sift(listing, tmp_path / "other", SiftConfig(max_features=30, shard_size=4, verbose=False))
