"""Score bands: thresholds measured from each item's nearest neighbour, stored by build_index, read by Database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from similar_images import Database, write_database
from similar_images.index import BAND_NAMES, IndexConfig, ScoreBands, build_index, neighbour_percentiles


def _clustered(n: int = 600, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in loose clusters, plus near-copies of the first 20 (returned as the second array)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim))
    x = centres[rng.integers(0, 12, n)] + rng.normal(scale=1.2, size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    copies = x[:20] + rng.normal(scale=0.03, size=(20, dim))
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    return x.astype(np.float32), copies.astype(np.float32)


def _nearest_exact(x: np.ndarray) -> np.ndarray:
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return s.max(axis=1)


def test_bands_follow_the_nearest_neighbour_distribution() -> None:
    sims = np.linspace(0.40, 0.80, 101)
    bands = ScoreBands.from_similarities(sims)
    assert bands is not None
    assert bands.similar == pytest.approx(np.percentile(sims, 10), abs=1e-4)
    assert bands.very_similar == pytest.approx(np.percentile(sims, 50), abs=1e-4)
    assert bands.near_duplicate == pytest.approx(0.60 + 0.75 * 0.40, abs=1e-4)
    assert bands.similar < bands.very_similar < bands.near_duplicate < 1.0
    assert [bands.band(s) for s in (0.99, 0.91, 0.65, 0.50, 0.2)] == \
        ["near-duplicate", "near-duplicate", "very similar", "similar", "weak"]
    assert [name for name, _ in bands.legend()] == list(BAND_NAMES)
    assert bands.lower_bound("weak") == -1.0
    again = ScoreBands.from_dict(json.loads(json.dumps(bands.to_dict())))
    assert again == bands and isinstance(again.percentiles["n"], int)
    # A denser collection (higher nearest-neighbour similarities) moves every threshold up.
    denser = ScoreBands.from_similarities(sims + 0.15)
    assert denser is not None and denser.similar > bands.similar and denser.near_duplicate > bands.near_duplicate
    assert ScoreBands.from_similarities([np.nan]) is None and neighbour_percentiles([]) == {}


def test_build_index_measures_the_bands_from_exact_neighbours() -> None:
    x, copies = _clustered()
    _, report = build_index(x, IndexConfig(factory="Flat", eval_queries=len(x)))
    assert report.neighbour_similarity is not None and report.neighbour_similarity["n"] == len(x)
    truth = _nearest_exact(x)
    assert report.neighbour_similarity["p50"] == pytest.approx(np.percentile(truth, 50), abs=1e-3)
    bands = ScoreBands.from_dict(report.score_bands or {})
    # Near-copies of database vectors are near-duplicates; each vector's own nearest neighbour rarely is.
    copy_scores = (copies * x[:20]).sum(axis=1)
    assert all(bands.band(s) == "near-duplicate" for s in copy_scores), copy_scores
    assert np.mean([bands.band(s) == "near-duplicate" for s in truth]) < 0.05
    assert np.mean([bands.band(s) == "weak" for s in truth]) == pytest.approx(0.10, abs=0.02)
    _, none = build_index(x, IndexConfig(factory="Flat", eval_queries=0))
    assert none.score_bands is None and none.neighbour_similarity is None


def test_database_reads_stored_bands_or_measures_them(tmp_path: Path) -> None:
    x, _ = _clustered(n=300)
    write_database(tmp_path / "db", kind="image", model={"name": "test-vectors", "dim": 32},
                   items=[f"/nowhere/{i}.jpg" for i in range(len(x))], vector_chunks=[x])
    db = Database.open(tmp_path / "db")
    measured = db.score_bands(sample=300)  # no index: measured now, exactly, on every item
    assert measured is not None
    assert measured.very_similar == pytest.approx(np.percentile(_nearest_exact(x), 50), abs=1e-3)
    assert not (tmp_path / "db" / "manifest.json").read_text().count("score_bands")  # nothing written
    db.build_index(IndexConfig(factory="Flat", eval_queries=300))
    stored = json.loads((tmp_path / "db" / "manifest.json").read_text())["index"]["score_bands"]
    reopened = Database.open(tmp_path / "db")
    assert reopened.score_bands() == ScoreBands.from_dict(stored)
    assert reopened.score_bands().very_similar == pytest.approx(measured.very_similar, abs=1e-3)
    write_database(tmp_path / "one", kind="image", model={"name": "test-vectors", "dim": 32},
                   items=["/nowhere/a.jpg"], vector_chunks=[x[:1]])
    assert Database.open(tmp_path / "one").score_bands() is None
