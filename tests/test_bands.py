"""Score bands: thresholds measured from each item's nearest neighbour, stored by build_index, read by Database."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from similar_images import Database
from similar_images.index import BAND_NAMES, IndexConfig, ScoreBands, build_index, neighbour_percentiles
from similar_images.index.bands import calibrate_words, folder_labels
from similar_images.store import write_database


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


# ----------------------------------------------------------------------------- words a class can take at face value


def _labeled(n_per: int = 80, classes: int = 5, dim: int = 24, spread: float = 1.3,
             seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Unit vectors around one centre per class (classes overlap: some neighbours are of another class)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), n_per)
    x = centres[labels] + rng.normal(scale=spread, size=(len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"class{c}" for c in labels]


def _agreement_by_hand(x: np.ndarray, labels: list[str], bands: ScoreBands, queries: np.ndarray,
                       k: int) -> dict[str, tuple[int, int]]:
    out = {b: [0, 0] for b in BAND_NAMES}
    for q in queries:
        s = x @ x[q]
        s[q] = -np.inf
        for j in np.argsort(-s)[:k]:
            band = bands.band(float(s[j]))
            out[band][0] += 1
            out[band][1] += labels[j] == labels[q]
    return {b: (n, m) for b, (n, m) in out.items()}


def test_words_calibrated_on_labels_say_the_rate_measured_on_other_queries() -> None:
    x, labels = _labeled()
    base = ScoreBands.from_similarities(_nearest_exact(x))
    words = calibrate_words(x, base, labels, k=10, sample=300, seed=3)
    assert words is not None and words.kind == "labels"
    b = words.bands
    assert b.similar <= b.very_similar <= b.near_duplicate == base.near_duplicate
    # The rates are those of the held-out queries, recomputed here by brute force.
    rng = np.random.default_rng(3)
    queries = np.sort(rng.choice(len(x), size=300, replace=False))
    rng.shuffle(queries)
    held = np.sort(queries[150:])
    assert words.queries == 150
    by_hand = _agreement_by_hand(x, labels, b, held, 10)
    for band in BAND_NAMES:
        n, m = by_hand[band]
        assert words.counts[band] == n
        if n:
            assert words.agreement[band] == pytest.approx(m / n)
    # Calibration works: results of the top band share the class more often than those of the next, and far more
    # often than chance (5 equal classes: 0.2).
    assert words.chance == pytest.approx(0.2)
    assert words.counts["very similar"] > 20 and words.counts["similar"] > 20
    assert words.agreement["very similar"] > words.agreement["similar"] > words.chance
    # The words are the measured rate rounded down, never up.
    rate = words.agreement["very similar"]
    assert words.describe("very similar") == f"very similar: {int(rate * 10)} in 10 share the query's class"
    word, sentence = words.words(b.very_similar + 1e-4)
    assert word == "very similar" and f"{words.counts['very similar']:,} results of 150 labeled photos" in sentence
    assert "very similar" in words.report() and f"{rate:.3f}" in words.report()


def test_words_without_labels_compare_with_the_collection() -> None:
    x, _ = _labeled(seed=1)
    base = ScoreBands.from_similarities(_nearest_exact(x))
    words = calibrate_words(x, base, None, sample=200, seed=0)
    assert words is not None and words.kind == "collection"
    pairs = np.sort((x @ x.T)[np.triu_indices(len(x), 1)])
    for score in (0.0, 0.3, 0.6):
        exact = np.searchsorted(pairs, score) / len(pairs)
        assert words.closer_than(score) == pytest.approx(exact, abs=0.03)  # a sample of the pairs
    top = float(np.percentile(pairs, 99.5))
    word, sentence = words.words(top)
    assert word == f"closer than {words.percent(words.closer_than(top))} of the collection"
    assert word in ("closer than 98% of the collection", "closer than 99% of the collection")
    assert "no labels" in sentence and "share" not in word
    assert words.bands.very_similar == pytest.approx(np.percentile(pairs, 99), abs=0.03)
    assert words.percent(0.9999) == "99.9%" and words.percent(0.987) == "98%"  # never rounded up
    assert words.label("weak") == "not in the closest 10%"


def test_folder_labels_only_for_folders_that_look_like_classes() -> None:
    flowers = [f"/data/flowers5/{c}/{i}.jpg" for c in ("daisy", "rose", "tulip") for i in range(6)]
    assert folder_labels(flowers) == ["daisy"] * 6 + ["rose"] * 6 + ["tulip"] * 6
    coco = [f"/data/coco/{split}/{i}.jpg" for split in ("val2014", "train2017") for i in range(64)]
    assert folder_labels(coco) is None  # two folders: a split, more likely than two classes
    assert folder_labels([f"/photos/{i}.jpg" for i in range(50)]) is None
    assert folder_labels(flowers + [f"/loose{i}/x.jpg" for i in range(10)]) is None  # too many outside the classes
