"""Tests of similar_images.tuning, the ``tune`` command and the index-tuning notebook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import execute_notebook

from similar_images import Database
from similar_images.cli import main
from similar_images.measure.plot import plot_tuning
from similar_images.measure.synthetic import clustered_vectors
from similar_images.measure.tune import (
    TuneConfig,
    TunePoint,
    TuneReport,
    apply_choice,
    candidate_for,
    default_candidates,
    pareto_points,
    pick_point,
    tune_vectors,
)
from similar_images.store import write_database

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "index_tuning.ipynb"
FACTORIES = ["IVF40,Flat", "IVF40,PQ4", "IVF40,PQ8", "IVF40,SQ8", "HNSW16"]


def _point(factory: str, recall: float, latency: float, memory: int) -> TunePoint:
    return TunePoint(factory=factory, family="x", params={}, recall=recall, latency_ms=latency, p99_ms=latency,
                     batch_ms=latency, memory_bytes=memory, bytes_per_vector=memory / 10, memory_ratio=0.0,
                     build_seconds=0.0)


def test_clustered_vectors_are_seeded_normalised_and_clustered() -> None:
    a = clustered_vectors(600, 24, seed=7, chunk_size=100)
    b = clustered_vectors(600, 24, seed=7, chunk_size=100)
    assert a.shape == (600, 24) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.array_equal(a, clustered_vectors(600, 24, seed=8, chunk_size=100))
    sims = a @ a.T
    np.fill_diagonal(sims, -1)
    # clustered: the nearest neighbour is far closer than a typical pair
    assert np.median(sims.max(axis=1)) > np.median(sims) + 0.2


def test_candidates_cover_the_families() -> None:
    cands = default_candidates(4064, 512)
    names = [c.factory for c in cands]
    assert names[0] == "Flat" and "IVF64,Flat" in names and "IVF64,PQ16" in names
    assert {"IVF64,PQ32", "IVF64,PQ64", "IVF64,PQ128", "IVF64,SQ8", "IVF64,SQ6", "SQ8", "HNSW32"} <= set(names)
    assert "IVF64,PQ256" not in names and "RR512,IVF64,SQ6" in names
    assert "RR4096,IVF201,SQ6" not in [c.factory for c in default_candidates(40504, 4096)]
    assert any(n.startswith("OPQ") for n in names) and any(n.startswith("PCAR") for n in names)
    assert "IVF64,PQ16,RFlat" in names and len(names) == len(set(names))
    # Hadamard rotation before scalar quantization (no stored matrix), exhaustive and in an IVF
    assert {"HR,SQ8", "HR,SQ6", "HR,SQ4", "HR,IVF64,SQ6"} <= set(names)
    assert candidate_for("HR,SQ6").family == "Hadamard + SQ"
    # the original design and build-index's default are both measured (Flat for 4,064 vectors)
    big = [c.factory for c in default_candidates(40504, 4096)]
    assert "IVF201,PQ16" in big and "IVF201,PQ256" in big and "IVF201,PQ16,RFlat" in big
    ivf = candidate_for("IVF64,PQ16")
    nprobes = [p["nprobe"] for p in ivf.chains[0]]
    assert nprobes == sorted(nprobes) and {1, 4, 8, 64} <= set(nprobes) and max(nprobes) == 64
    hnsw = candidate_for("HNSW32")
    assert [p["efSearch"] for p in hnsw.chains[0]][:2] == [16, 32]
    refine = candidate_for("IVF64,PQ16,RFlat")
    assert len(refine.chains) > 1 and all("k_factor" in p and "nprobe" in p for c in refine.chains for p in c)
    assert candidate_for("Flat").chains == [[{}]]


def test_hadamard_rotation_helps_scalar_quantization_of_skewed_features() -> None:
    rng = np.random.default_rng(0)
    n, d = 2000, 64
    scale = np.exp(rng.normal(0, 1.0, d)).astype(np.float32)  # a few dimensions carry large values, as in CNNs
    centres = rng.normal(size=(40, d))
    x = np.maximum(centres[rng.integers(0, 40, n)] + 0.7 * rng.normal(size=(n, d)), 0).astype(np.float32) * scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    report = tune_vectors(x, TuneConfig(n_queries=200, latency_queries=5, rerank=0, factories=["SQ4", "HR,SQ4"]))
    plain, rotated = report.find("SQ4"), report.find("HR,SQ4")
    assert plain is not None and rotated is not None
    assert rotated.memory_bytes == pytest.approx(plain.memory_bytes, rel=0.01)  # a seed, not a matrix
    assert rotated.recall > plain.recall + 0.02


def test_current_default_uses_the_build_calibration_rule() -> None:
    def pt(nprobe: int, served: float) -> TunePoint:
        p = _point("IVF100,PQ16", 0.5, 0.1 * nprobe, 1000)
        p.params, p.recall_served = {"nprobe": nprobe}, served
        return p

    points = [_point("Flat", 1.0, 1.0, 4000), pt(1, 0.6), pt(2, 0.9), pt(4, 0.968), pt(8, 0.972), pt(16, 0.972)]
    report = TuneReport(n_vectors=10_000, dim=16, k=10, n_queries=10, queries="q", target_recall=0.95,
                        max_latency_ms=None, threads=1, flat_bytes=4000, points=points, skipped=[],
                        default_factory="IVF100,PQ16", tune_seconds=0.0, original_factory="IVF100,PQ16", rerank=4)
    assert report.current_default.params == {"nprobe": 4}  # the smallest within 0.5% of the best served recall
    report.default_nprobe_cap = 2  # build-index's scan budget allows 2 lists at most
    assert report.current_default.params == {"nprobe": 2}
    report.default_factory = "Flat"
    assert report.current_default.factory == "Flat"


def test_default_is_measured_at_its_scan_budget_nprobe() -> None:
    from similar_images.measure.tune import _with_nprobe

    chain = [{"nprobe": v, "k_factor": 2} for v in (1, 2, 4, 8)]
    assert [p["nprobe"] for p in _with_nprobe(chain, 7)] == [1, 2, 4, 7, 8]
    assert _with_nprobe(chain, 7)[3] == {"nprobe": 7, "k_factor": 2}
    assert _with_nprobe(chain, 4) == chain and _with_nprobe([{}], 7) == [{}]


def test_pick_and_pareto_rules() -> None:
    pts = [_point("a", 0.99, 5.0, 1000), _point("b", 0.96, 1.0, 300), _point("c", 0.97, 2.0, 300),
           _point("d", 0.80, 0.5, 100), _point("e", 0.90, 3.0, 400)]
    assert pick_point(pts, 0.95).factory == "b"  # least memory; ties broken by latency
    assert pick_point(pts, 0.95, by="latency").factory == "b"
    assert pick_point(pts, 0.98).factory == "a"
    assert pick_point(pts, 0.95, max_latency_ms=0.9) is None
    front = {p.factory for p in pareto_points(pts)}
    assert front == {"a", "b", "c", "d"}  # e is beaten by b on all three


def test_tune_on_clustered_vectors_meets_target(tmp_path: Path) -> None:
    x = clustered_vectors(1600, 32, seed=11)
    report = tune_vectors(x, TuneConfig(target_recall=0.9, n_queries=150, latency_queries=10, factories=FACTORIES))
    flat = report.find("Flat")
    assert flat is not None and flat.recall == 1.0 and flat.memory_ratio == 1.0
    assert report.flat_bytes == flat.memory_bytes
    chosen = report.chosen
    assert chosen is not None and chosen.recall >= 0.9
    meeting = [p for p in report.points if p.recall >= 0.9]
    assert chosen.memory_bytes == min(p.memory_bytes for p in meeting)
    assert chosen.memory_bytes < flat.memory_bytes
    # the sweep really varies nprobe, and more probes never lose much recall
    ivf = [p for p in report.points if p.factory == "IVF40,Flat"]
    assert len(ivf) >= 3 and ivf[0].params["nprobe"] == 1
    assert ivf[-1].recall >= ivf[0].recall
    quarter = report.budgets()[0.25]
    assert quarter is None or quarter.memory_bytes <= 0.25 * report.flat_bytes
    # every setting is also measured as served (k x 4 candidates re-ranked exactly): for IVF it can only help
    assert report.rerank == 4
    for p in report.points:
        assert p.recall_served is not None and p.latency_served_ms is not None and p.latency_served_ms > 0
        if p.factory.startswith("IVF"):
            assert p.recall_served >= p.recall - 1e-9
    served_pick = report.pick(served=True)
    assert served_pick is not None and served_pick.recall_served >= 0.9
    assert served_pick.memory_bytes <= chosen.memory_bytes
    assert "Pick (smallest" in report.format_table() and "| index |" in report.markdown_table()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["chosen"]["factory"] == chosen.factory and len(data["points"]) == len(report.points)
    again = TuneReport.from_dict(data)  # saved JSON -> the same decisions, without measuring again
    assert again.chosen.label == chosen.label and again.pick(served=True).label == report.pick(served=True).label
    again_quarter = again.budgets()[0.25]
    assert (again_quarter.label if again_quarter else None) == (quarter.label if quarter else None)
    with pytest.raises(ValueError, match="Not a tuning report"):
        TuneReport.from_dict({"points": []})
    assert data["as_served"]["chosen"]["factory"] == served_pick.factory
    fig = plot_tuning(report, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fig.axes[0].get_xscale() == "log"


def test_tune_reports_untrainable_and_unreachable() -> None:
    x = clustered_vectors(200, 16, seed=2)
    report = tune_vectors(x, TuneConfig(target_recall=1.0, n_queries=40, latency_queries=5, rerank=0,
                                        factories=["IVF14,PQ4", "IVF14,Flat"]))
    assert all(p.recall_served is None for p in report.points) and report.rerank == 1
    assert any(f == "IVF14,PQ4" and "training vectors" in r for f, r in report.skipped)
    assert report.chosen is not None  # Flat (always added) reaches 1.0
    with pytest.raises(ValueError, match="factories is empty"):
        TuneConfig(factories=[" "])
    with pytest.raises(ValueError, match="target_recall"):
        TuneConfig(target_recall=1.5)
    with pytest.raises(ValueError, match="rerank >= 2"):
        TuneConfig(served=True, rerank=1)


def test_apply_choice_rebuilds_database(tmp_path: Path) -> None:
    x = clustered_vectors(1600, 32, seed=12)
    write_database(tmp_path / "db", kind="image", model={"name": "test", "dim": 32},
                   items=[f"/v/{i}.jpg" for i in range(len(x))], vector_chunks=[x])
    db = Database.open(tmp_path / "db")
    report = tune_vectors(db.vectors, TuneConfig(target_recall=0.9, n_queries=100, latency_queries=5,
                                                 factories=["IVF40,Flat", "HNSW16"]))
    assert report.chosen is not None
    build = apply_choice(db, report.chosen, eval_queries=100)
    reopened = Database.open(tmp_path / "db")
    assert reopened.manifest.index.factory == report.chosen.factory
    assert reopened.manifest.index.search_params == report.chosen.params == build.search_params


# --------------------------------------------------------------------------- CLI
def test_cli_tune_and_apply(small_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    shutil.copytree(small_db, db)
    runner = CliRunner()
    plot = tmp_path / "t.png"
    res = runner.invoke(main, ["tune", str(db), "--target-recall", "0.9", "--holdout", "20", "--latency-queries",
                               "5", "--index", "IVF6,Flat", "--index", "HNSW8", "--index", "IVF6,SQ8",
                               "--plot", str(plot), "--apply", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    chosen = data["chosen"]
    assert chosen["recall"] >= 0.9 and data["plot"] == str(plot) and plot.stat().st_size > 1000
    assert {p["factory"] for p in data["points"]} == {"Flat", "IVF6,Flat", "HNSW8", "IVF6,SQ8"}
    manifest = json.loads((db / "manifest.json").read_text())
    assert manifest["index"]["factory"] == chosen["factory"] == data["applied"]["factory"]
    assert manifest["index"]["search_params"] == chosen["params"]
    # the table form, and the default plot path inside the database folder
    assert TuneReport.from_dict(data).chosen.factory == chosen["factory"]  # the saved JSON can be re-read
    res = runner.invoke(main, ["tune", str(db), "--holdout", "10", "--latency-queries", "3", "--index", "IVF6,Flat",
                               "--served", "--target-recall", "0.5", "--apply"])
    assert res.exit_code == 0, res.output
    assert "recall@10" in res.output and "Pick (smallest" in res.output and (db / "tune.png").exists()
    assert "Applied:" in res.output and "as served" in res.output.split("Applied:")[1]
    served_section = res.output.split("As served by Database.search")[1]
    assert "used for the pick" in served_section.splitlines()[0] and "apply with" in served_section


def test_cli_tune_apply_refuses_unreachable_target(small_db: Path, tmp_path: Path) -> None:
    db = tmp_path / "db"
    shutil.copytree(small_db, db)
    before = (db / "manifest.json").read_text()
    res = CliRunner().invoke(main, ["tune", str(db), "--holdout", "10", "--latency-queries", "3", "--index",
                                    "IVF6,Flat", "--max-latency-ms", "0.000001", "--apply", "--no-plot"])
    assert res.exit_code != 0 and "nothing applied" in res.output
    assert (db / "manifest.json").read_text() == before


# --------------------------------------------------------------------------- notebook
def test_notebook_runs_headless(small_db: Path, tmp_path: Path) -> None:
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    plot = tmp_path / "nb-plot.png"
    env = {"SIMILAR_IMAGES_DB": str(small_db), "TUNE_TARGET_RECALL": "0.9", "TUNE_HOLDOUT": "20",
           "TUNE_PLOT": str(plot), "TUNE_COMPARE_INDEX": "IVF6,SQ4", "TUNE_COMPARE_PARAMS": '{"nprobe": 1}',
           "TUNE_FACTORIES": "IVF6,Flat;IVF6,SQ4;HNSW8;IVF6,PQ8"}
    execute_notebook(nb, env, tmp_path, timeout=600)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    # Nothing but results: no Faiss "WARNING clustering" lines, no log lines (they go to the app log).
    assert [o for o in outputs if o.get("output_type") == "stream"] == []
    htmls = "\n".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "<table class='sit-table'>" in htmls and "Pick (smallest" in htmls and "white-space: nowrap" in htmls
    # The default query ("auto") is one whose true neighbours the compared index misses.
    assert "missed</div>" in htmls and "missed 0 of" not in htmls
    assert "data:image/jpeg;base64," in htmls  # the neighbours' thumbnails, labels as page text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1 and plot.exists()  # the tuning plot


def test_pick_query_finds_the_most_missed(small_db: Path) -> None:
    from similar_images import Database
    from similar_images.apps.tuning_app import comparison_for, pick_query
    from similar_images.index import IndexConfig, build_index

    db = Database.open(small_db)
    index, _ = build_index(db.vectors, IndexConfig(factory="IVF6,SQ4", eval_queries=0))
    qid, misses = pick_query(db, index, {"nprobe": 1}, k=10)
    assert misses > 0
    cmp = comparison_for(db, None, "auto", "IVF6,SQ4", params={"nprobe": 1}, k=10)
    assert len(cmp.missed) == misses and cmp.description == "IVF6,SQ4 (nprobe=1)"
    assert comparison_for(db, None, 3, "Flat", k=5).missed == []  # an exact index misses nothing
