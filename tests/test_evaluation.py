"""Tests of similar_images.evaluation and the ``evaluate`` command: metrics on cases with known answers."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from similar_images import Database, IndexConfig
from similar_images.cli import main
from similar_images.errors import QueryError
from similar_images.index import drop_self, recall_table, rerank_exact
from similar_images.measure.compare import compare_neighbours
from similar_images.measure.evaluate import EvalConfig, evaluate_database, measure_latency
from similar_images.measure.quality import (
    average_precision_at_k,
    labels_from_folders,
    precision_at_k,
    read_labels_csv,
)
from similar_images.measure.synthetic import clustered_vectors
from similar_images.store import write_database

# Six 2-d unit vectors at these angles (degrees), in two classes; no two angular distances tie,
# so every ranking below was worked out by hand.
ANGLES = [0, 12, 27, 45, 100, 118]
CLASSES = ["A", "A", "B", "A", "B", "B"]
# k = 3, leave-one-out: per-query P@3 and AP@3 = sum_i P@i rel_i / min(3, R), R = 2 for every query.
#   q0 (A): 1 A, 2 B, 3 A        -> P 2/3, AP (1 + 2/3) / 2 = 5/6
#   q1 (A): 0 A, 2 B, 3 A        -> P 2/3, AP 5/6
#   q2 (B): 1 A, 3 A, 0 A        -> P 0,   AP 0
#   q3 (A): 2 B, 1 A, 0 A        -> P 2/3, AP (1/2 + 2/3) / 2 = 7/12
#   q4 (B): 5 B, 3 A, 2 B        -> P 2/3, AP 5/6
#   q5 (B): 4 B, 3 A, 2 B        -> P 2/3, AP 5/6
HAND_P = 5 / 9
HAND_MAP = 47 / 72
HAND_CLASS = {"A": (2 / 3, 3 / 4), "B": (4 / 9, 5 / 9)}


def _angle_vectors() -> np.ndarray:
    rad = np.deg2rad(np.asarray(ANGLES, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def _write_db(path: Path, vectors: np.ndarray, items: list[str], factory: str | None = "Flat") -> Database:
    write_database(path, kind="image", model={"name": "test-vectors", "dim": int(vectors.shape[1])}, items=items,
                   vector_chunks=[vectors])
    db = Database.open(path, load_index=False)
    if factory:
        db.build_index(IndexConfig(factory=factory, eval_queries=0))
        db = Database.open(path)
    return db


@pytest.fixture()
def labeled_db(tmp_path: Path) -> Database:
    items = [str(tmp_path / "photos" / c / f"img{i}.jpg") for i, c in enumerate(CLASSES)]
    return _write_db(tmp_path / "db", _angle_vectors(), items)


# --------------------------------------------------------------------------- unit metrics
def test_precision_and_average_precision_known_values() -> None:
    res = np.array([[0, 1, 0], [1, 1, 1], [1, 0, 0], [-1, 0, 0]])
    q = np.array([0, 1, 0, 0])
    np.testing.assert_allclose(precision_at_k(res, q, 3), [2 / 3, 1.0, 2 / 3, 2 / 3])
    # query 0: relevant at ranks 1 and 3, R = 2 -> (1 + 2/3) / 2; query 1: all relevant, R = 5 -> 3/3;
    # query 2: ranks 2, 3, R = 10 -> (1/2 + 2/3) / 3; query 3: -1 (missing) is never relevant.
    ap = average_precision_at_k(res, q, np.array([2, 5, 10, 2]), 3)
    np.testing.assert_allclose(ap, [5 / 6, 1.0, (1 / 2 + 2 / 3) / 3, (1 / 2 + 2 / 3) / 2])
    with pytest.raises(ValueError, match="R >= 1"):
        average_precision_at_k(res, q, np.array([0, 1, 1, 1]), 3)


def test_drop_self_removes_own_id_and_pads() -> None:
    ids = np.array([[5, 3, 7], [2, 9, 4], [1, -1, -1]])
    scores = np.array([[1.0, 0.9, 0.8], [0.9, 0.8, 0.7], [1.0, -np.inf, -np.inf]], dtype=np.float32)
    out, sc = drop_self(ids, [5, 4, 1], 2, scores)
    assert out.tolist() == [[3, 7], [2, 9], [-1, -1]]
    assert sc is not None and sc[0].tolist() == pytest.approx([0.9, 0.8])
    out, _ = drop_self(ids, [-1, -1, -1], 2)
    assert out.tolist() == [[5, 3], [2, 9], [1, -1]]


def test_rerank_exact_orders_candidates_by_true_score() -> None:
    vectors = _angle_vectors()  # angles 0, 12, 27, 45, 100, 118 degrees
    q = vectors[[0]]
    scores, ids = rerank_exact(vectors, q, np.array([[4, 2, -1, 1, 3]]), 3)
    assert ids.tolist() == [[1, 2, 3]]  # nearest of the candidates to 0 degrees: 12, 27, 45
    assert scores[0].tolist() == pytest.approx(np.cos(np.deg2rad([12, 27, 45])).tolist(), abs=1e-6)
    # explicit ids and rows: row r holds id 100 + r
    _, ids = rerank_exact(vectors, q, np.array([[105, 101]]), 3, ids=np.arange(100, 106),
                          row_of=np.concatenate([np.full(100, -1), np.arange(6)]))
    assert ids.tolist() == [[101, 105, -1]]


def test_recall_table_matches_hand_count() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[1, 9, 3, 2], [6, 5, 0, 0]])
    r = recall_table(found, truth, [1, 2, 4, 10])
    assert r == {1: pytest.approx(0.5), 2: pytest.approx(0.75), 4: pytest.approx((3 + 2) / 8)}


def test_measure_latency_counts_calls() -> None:
    calls = []

    def fake_search(xq: np.ndarray, k: int) -> None:
        calls.append(len(xq))

    stats = measure_latency(fake_search, np.zeros((20, 4), dtype=np.float32), 5, n_single=7, warmup=2)
    assert stats.n_single == 7 and stats.batch_size == 20
    assert calls == [1, 1] + [1] * 7 + [20]
    assert 0 <= stats.median_ms <= stats.p99_ms


# --------------------------------------------------------------------------- labels
def test_labels_from_folders_and_csv(tmp_path: Path) -> None:
    items = [str(tmp_path / c / f"{i}.jpg") for i, c in enumerate(["b", "a", "b", "c"])]
    codes, names = labels_from_folders(items)
    assert names == ["a", "b", "c"] and codes.tolist() == [1, 0, 1, 2]
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(f"path,label\nb/0.jpg,x\n{items[3]},y\nnot/there.jpg,z\n")
    codes, names = read_labels_csv(csv_path, items)
    assert names == ["x", "y"] and codes.tolist() == [0, -1, -1, 1]
    (tmp_path / "bad.csv").write_text("only-one-column\n")
    with pytest.raises(ValueError, match="path,label"):
        read_labels_csv(tmp_path / "bad.csv", items)
    (tmp_path / "none.csv").write_text("elsewhere/1.jpg,x\n")
    with pytest.raises(ValueError, match="names an item"):
        read_labels_csv(tmp_path / "none.csv", items)


# --------------------------------------------------------------------------- database evaluation
def test_hand_made_labeled_set_precision_and_map(labeled_db: Database) -> None:
    report = evaluate_database(labeled_db, EvalConfig(ks=(1, 3), quality_k=3, latency_queries=5))
    assert report.recall == {1: 1.0, 3: 1.0}  # a Flat index is exact
    exact = next(q for q in report.quality if q.search == "exact")
    assert exact.labels_source == "folders" and exact.n_queries == 6 and exact.n_classes == 2
    assert exact.precision == pytest.approx(HAND_P)
    assert exact.map == pytest.approx(HAND_MAP)
    for c in exact.per_class:
        assert (c.precision, c.map) == pytest.approx(HAND_CLASS[c.label])
    served = next(q for q in report.quality if q.search == "served")
    assert served.precision == pytest.approx(HAND_P)
    assert exact.chance == pytest.approx(2 / 5)


@pytest.mark.parametrize(("folders", "why"), [
    (["2024-05-01", "2024-05-02"], "dates, dataset splits"),
    (["val2014", "train2017"], "dates, dataset splits"),
    ([f"event{i}" for i in range(6)], "fewer than two per folder"),
    (["photos"], "only one class"),
])
def test_folder_names_that_are_not_classes_give_no_precision_against_chance(tmp_path: Path, folders: list[str],
                                                                               why: str) -> None:
    """Images in folders by date, split or one per folder: evaluate says the folders are not classes instead
    of printing P@k against "chance"."""
    items = [str(tmp_path / "photos" / folders[i % len(folders)] / f"img{i}.jpg") for i in range(len(ANGLES))]
    db = _write_db(tmp_path / "db", _angle_vectors(), items)
    report = evaluate_database(db, EvalConfig(ks=(1,), quality_k=3, latency_queries=5))
    assert report.quality == []
    assert any(why in note and note.startswith("no retrieval quality") for note in report.notes), report.notes
    table = report.format_table()
    assert "chance" not in table and why in table
    classes = [str(tmp_path / "photos" / c / f"img{i}.jpg") for i, c in enumerate(CLASSES)]  # real class folders
    assert evaluate_database(_write_db(tmp_path / "db2", _angle_vectors(), classes),
                             EvalConfig(ks=(1,), quality_k=3, latency_queries=5)).quality


def test_labels_csv_changes_the_answer(labeled_db: Database, tmp_path: Path) -> None:
    # Relabel by angle: items 0-3 "near", 4-5 "far". Query 2 now finds three "near" neighbours.
    csv_path = tmp_path / "labels.csv"
    rows = [f"{p},{'near' if i < 4 else 'far'}" for i, p in enumerate(labeled_db.items)]
    csv_path.write_text("\n".join(rows) + "\n")
    report = evaluate_database(labeled_db, EvalConfig(ks=(1,), quality_k=3, latency_queries=5), labels=csv_path)
    exact = report.quality[0]
    # near (R = 3): every query's top 3 are the other three near items -> P = 1, AP = 1.
    # far (R = 1): q4 -> 5, 3, 2: P 1/3, AP 1/1; q5 likewise.
    near = next(c for c in exact.per_class if c.label == "near")
    far = next(c for c in exact.per_class if c.label == "far")
    assert (near.precision, near.map) == pytest.approx((1.0, 1.0))
    assert (far.precision, far.map) == pytest.approx((1 / 3, 1.0))
    none = evaluate_database(labeled_db, EvalConfig(ks=(1,), latency_queries=5), labels="none")
    assert none.quality == []


def test_approximate_index_recall_below_one_and_flat_is_exact(tmp_path: Path) -> None:
    x = clustered_vectors(1500, 32, seed=3)
    items = [f"/v/{i}.jpg" for i in range(len(x))]
    flat = _write_db(tmp_path / "flat", x, items)
    cfg = EvalConfig(ks=(1, 10, 100), n_queries=200, latency_queries=20)
    r_flat = evaluate_database(flat, cfg, labels="none")
    assert r_flat.recall == {1: 1.0, 10: 1.0, 100: 1.0}
    assert r_flat.n_queries == 200 and r_flat.index_bytes and r_flat.index_bytes > x.nbytes
    ivf = _write_db(tmp_path / "ivf", x, items, factory=None)
    ivf.build_index(IndexConfig(factory="IVF40,PQ4", nprobe=1, eval_queries=0))
    ivf = Database.open(tmp_path / "ivf")
    r_ivf = evaluate_database(ivf, cfg, labels="none")
    assert 0.0 < r_ivf.recall[10] < 1.0
    # the search's default exact re-ranking of k x 4 candidates can only find more true neighbours
    assert r_ivf.rerank == 4 and r_ivf.recall[10] < r_ivf.recall_served[10] <= 1.0
    assert r_ivf.latency_served is not None
    alone = evaluate_database(ivf, EvalConfig(ks=(10,), n_queries=200, latency_queries=5, rerank=1), labels="none")
    assert alone.recall[10] == r_ivf.recall[10] and alone.recall_served == {} and alone.latency_served is None
    assert r_ivf.index_bytes is not None and r_ivf.index_bytes < r_flat.index_bytes / 2
    assert r_ivf.latency is not None and r_ivf.latency.n_single == 20
    text = r_ivf.format_table()
    assert "recall@100" in text and "IVF40,PQ4" in text
    # external queries: no self-exclusion, recall of a Flat index is still 1
    xq = clustered_vectors(30, 32, seed=4)
    np.save(tmp_path / "q.npy", xq)
    r_q = evaluate_database(flat, cfg, queries=tmp_path / "q.npy", labels="none")
    assert r_q.n_queries == 30 and r_q.recall[10] == 1.0 and "q.npy" in r_q.queries
    np.save(tmp_path / "bad.npy", xq[:, :5])
    with pytest.raises(QueryError, match="expected float"):
        evaluate_database(flat, cfg, queries=tmp_path / "bad.npy", labels="none")


def test_compare_neighbours_marks_missed(tmp_path: Path) -> None:
    x = clustered_vectors(1500, 32, seed=5)
    db = _write_db(tmp_path / "db", x, [f"/v/{i}.jpg" for i in range(len(x))])
    exact = compare_neighbours(db, 7, k=10)  # the database's Flat index: nothing missed
    assert exact.missed == [] and exact.recall == 1.0 and 7 not in exact.exact_ids
    cmp = compare_neighbours(db, 7, k=10, factory="IVF40,PQ4", params={"nprobe": 1})
    assert cmp.exact_ids == exact.exact_ids
    assert set(cmp.missed) == set(cmp.exact_ids) - set(cmp.approx_ids)
    assert math.isclose(cmp.recall, 1 - len(cmp.missed) / 10)
    assert "nprobe=1" in cmp.description


# --------------------------------------------------------------------------- CLI
def test_cli_evaluate_small_db(small_db: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(small_db), "--json", "--holdout", "20", "--latency-queries", "10"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["factory"] == "Flat" and data["n_queries"] == 20
    assert data["recall"]["recall@1"] == 1.0 and data["recall"]["recall@10"] == 1.0
    assert "recall@100" not in data["recall"]  # only 48 items
    assert data["latency"]["median_ms"] > 0 and data["index_bytes"] > 0
    # COCO photos sit in two folders (train2017, val2014): dataset splits, not classes, so no P@k against chance
    assert data["quality"] == [] and any("train2017" in n and "not classes" in n for n in data["notes"]), data
    res = runner.invoke(main, ["evaluate", str(small_db), "--json", "--labels", "folders", "--latency-queries", "5"])
    data = json.loads(res.stdout)  # asked for explicitly: measured, with the warning
    assert {c["label"] for c in data["quality"][0]["per_class"]} <= {"train2017", "val2014"}
    assert any("may not be classes" in n for n in data["notes"]), data["notes"]
    res = runner.invoke(main, ["evaluate", str(small_db), "--labels", "none", "--latency-queries", "5"])
    assert res.exit_code == 0, res.output
    assert "recall@10" in res.output and "latency median" in res.output and "Retrieval quality" not in res.output
    assert "served" in res.output


def test_cli_evaluate_errors(small_db: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["evaluate", str(small_db), "--queries", str(tmp_path / "missing.npy")])
    assert res.exit_code != 0 and "No such query set" in res.output
    res = runner.invoke(main, ["evaluate", str(small_db), "--labels", str(tmp_path / "nope.csv")])
    assert res.exit_code != 0 and "labels file" in res.output
    db = tmp_path / "copy"
    shutil.copytree(small_db, db)
    res = runner.invoke(main, ["evaluate", str(db), "-k", "0"])
    assert res.exit_code != 0
