"""Score bands: cosine scores in plain words, with thresholds measured on the database itself.

A cosine score means little on its own: 0.6 is an excellent match with one
model and a poor one with another. The bands compare a score with how similar
the images (or texts) of the database are to their own nearest neighbour,
measured when the index is built (the recall sample's exact neighbours) and
stored in the manifest:

* **near-duplicate**: at least three quarters of the way from a typical item's
  best match (the median nearest-neighbour similarity) to an identical copy
  (1.0). Resized, recompressed, flipped or slightly cropped copies land here;
  two different photos of the same kind of scene do not;
* **very similar**: at least the median nearest-neighbour similarity (as
  close as the best match of a typical item);
* **similar**: at least the 10th percentile (9 items in 10 have a best match
  this close);
* **weak**: below that: most items of the database have a closer match than
  this, so the result is probably not related to the query.

These thresholds say how a score compares with the database's own best matches,
not whether two images show the same kind of thing. Words that a class can
take at face value come from :func:`calibrate_words`:

* on a **labeled** collection (a folder tree, one folder per class, such as
  flowers5), the "very similar" and "similar" thresholds are chosen on half of
  the photos so that 9 in 10 and 6 in 10 of their results share the query's
  class, and the rate of each band is then *measured* on the other half
  ("very similar: 9 in 10 share the query's class");
* on an **unlabeled** collection nothing is promised: a score is compared with
  the similarities of random pairs of the collection ("closer than 99% of the
  collection").

Example:
    >>> bands = ScoreBands.from_similarities(np.array([0.5, 0.6, 0.7, 0.8]))
    >>> bands.band(0.95)
    'near-duplicate'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np

from .._util.types import JSON

__all__ = ["ScoreBands", "BAND_NAMES", "neighbour_percentiles", "BandWords", "calibrate_words", "folder_labels",
           "class_agreement"]

#: The bands, best first.
BAND_NAMES = ("near-duplicate", "very similar", "similar", "weak")

#: Percentiles of the nearest-neighbour similarities kept in the manifest.
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)

#: How far from the median best match towards 1.0 a near-duplicate starts.
NEAR_DUPLICATE_FRACTION = 0.75


def neighbour_percentiles(similarities: Iterable[float] | np.ndarray) -> dict[str, float]:
    """Percentiles (``p1`` ... ``p99``), ``n`` and ``max`` of nearest-neighbour similarities (NaNs ignored).

    Returns an empty dict when there is no finite value.
    """
    s = np.asarray(similarities, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return {}
    values = np.percentile(s, PERCENTILES)
    out: dict[str, float] = {f"p{p}": round(float(v), 4) for p, v in zip(PERCENTILES, values)}
    out["max"] = round(float(s.max()), 4)
    out["n"] = int(len(s))
    return out


@dataclass(frozen=True)
class ScoreBands:
    """Thresholds of the score bands (see the module documentation).

    Attributes:
        near_duplicate: Lowest score of a near-duplicate.
        very_similar: Lowest score called "very similar".
        similar: Lowest score called "similar" (below: "weak").
        n: Nearest-neighbour similarities the thresholds were measured on.
        percentiles: Those similarities' percentiles (``p1`` ... ``p99``).
    """

    near_duplicate: float
    very_similar: float
    similar: float
    n: int = 0
    percentiles: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_percentiles(cls, percentiles: dict[str, float]) -> ScoreBands:
        """The bands for measured nearest-neighbour percentiles (needs ``p10`` and ``p50``)."""
        p10, p50 = float(percentiles["p10"]), float(percentiles["p50"])
        near = p50 + NEAR_DUPLICATE_FRACTION * (1.0 - p50)
        return cls(near_duplicate=round(near, 4), very_similar=round(p50, 4), similar=round(min(p10, p50), 4),
                   n=int(percentiles.get("n", 0)), percentiles=dict(percentiles))

    @classmethod
    def from_similarities(cls, similarities: Iterable[float] | np.ndarray) -> ScoreBands | None:
        """The bands for nearest-neighbour similarities (``None`` when there is none)."""
        pct = neighbour_percentiles(similarities)
        return cls.from_percentiles(pct) if pct else None

    @classmethod
    def from_dict(cls, d: JSON) -> ScoreBands:
        """Read the form written by :meth:`to_dict`."""
        return cls(near_duplicate=float(d["near_duplicate"]), very_similar=float(d["very_similar"]),
                   similar=float(d["similar"]), n=int(d.get("n", 0)),
                   percentiles={k: int(v) if k == "n" else float(v) for k, v in d.get("percentiles", {}).items()})

    def to_dict(self) -> dict[str, object]:
        """The JSON form stored in the manifest."""
        return {"near_duplicate": self.near_duplicate, "very_similar": self.very_similar, "similar": self.similar,
                "n": self.n, "percentiles": dict(self.percentiles)}

    def band(self, score: float) -> str:
        """The band of ``score``: one of :data:`BAND_NAMES`."""
        if score >= self.near_duplicate:
            return BAND_NAMES[0]
        if score >= self.very_similar:
            return BAND_NAMES[1]
        if score >= self.similar:
            return BAND_NAMES[2]
        return BAND_NAMES[3]

    def lower_bound(self, band: str) -> float:
        """The lowest score of ``band`` (``-1.0`` for "weak").

        Raises:
            KeyError: For an unknown band name.
        """
        bounds = dict(zip(BAND_NAMES, (self.near_duplicate, self.very_similar, self.similar, -1.0)))
        return bounds[band]

    def legend(self) -> list[tuple[str, float]]:
        """``(band, lowest score)`` best first; the last ("weak") has no lower bound (``-1.0``)."""
        return [(name, self.lower_bound(name)) for name in BAND_NAMES]


# ---------------------------------------------------------------------------- words a class can take at face value

#: Share of results of the "very similar" and "similar" bands that should share the query's class (labeled
#: collections): the thresholds are chosen so, then the real rates are measured on other queries.
TARGET_AGREEMENT = {"very similar": 0.9, "similar": 0.6}

#: Percentiles of random-pair similarities that start "very similar" and "similar" on an unlabeled collection.
COLLECTION_PERCENTILES = {"very similar": 99.0, "similar": 90.0}


def folder_labels(paths: Sequence[str], *, min_class: int = 5, min_classes: int = 3) -> list[str] | None:
    """The class of each image from its folder (``flowers5/rose/1.jpg``: ``rose``), or ``None`` when the folders do
    not look like classes: fewer than ``min_classes`` folders of at least ``min_class`` images (two folders are more
    often "train" and "val" than two classes), or more than one image in ten outside such folders."""
    if not paths:
        return None
    labels = [PurePath(str(p)).parent.name for p in paths]
    counts = Counter(labels)
    big = {c for c, n in counts.items() if n >= min_class}
    if len(big) < min_classes or sum(counts[c] for c in big) < 0.9 * len(labels):
        return None
    return labels


def _pick(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


def _knn(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids of the ``k`` nearest other rows of ``vectors`` for the rows ``queries`` (exact, cosine)."""
    x = np.asarray(vectors, dtype=np.float32)
    scores, ids = [], []
    for lo in range(0, len(queries), chunk):
        q = queries[lo:lo + chunk]
        s = x[q] @ x.T
        s[np.arange(len(q)), q] = -np.inf  # never the query itself
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        ids.append(top)
        scores.append(np.take_along_axis(s, top, axis=1))
    return np.concatenate(scores), np.concatenate(ids)


def class_agreement(vectors: np.ndarray, labels: Sequence[str] | np.ndarray, bands: ScoreBands, queries: np.ndarray, *,
                    k: int = 10) -> dict[str, tuple[int, int]]:
    """For each band: ``(results, results of the query's class)`` over the ``k`` nearest other items of each
    query (exact search).

    Args:
        vectors: Unit vectors, one row per item.
        labels: The class of each item.
        bands: The thresholds.
        queries: Row numbers of the queries.
        k: Results per query.
    """
    lab = np.asarray(labels)
    scores, ids = _knn(vectors, np.asarray(queries), k)
    same = lab[ids] == lab[np.asarray(queries)][:, None]
    out: dict[str, tuple[int, int]] = {}
    names = np.array([bands.band(float(s)) for s in scores.ravel()]).reshape(scores.shape)
    for name in BAND_NAMES:
        mask = names == name
        out[name] = (int(mask.sum()), int(same[mask].sum()))
    return out


def _threshold(scores: np.ndarray, same: np.ndarray, target: float, below: float, min_count: int) -> float:
    """The lowest score under ``below`` such that the results from it up to ``below`` reach ``target`` agreement
    (``below`` when none does: the band stays empty)."""
    keep = scores < below
    s, a = scores[keep], same[keep]
    order = np.argsort(-s)
    s, a = s[order], a[order]
    rate = np.cumsum(a) / np.arange(1, len(a) + 1)
    ok = np.flatnonzero((rate >= target) & (np.arange(1, len(a) + 1) >= min_count))
    return float(s[ok[-1]]) if len(ok) else float(below)


@dataclass(frozen=True)
class BandWords:
    """How the apps put a score in words (see the module documentation): made by :func:`calibrate_words`.

    Attributes:
        kind: ``"labels"`` (calibrated on a labeled collection) or ``"collection"`` (compared with the collection).
        bands: The thresholds used (for colours and the minimum-score filter).
        agreement: Labels: the measured share of each band's results that share the query's class.
        counts: Labels: how many results each band's rate was measured on.
        chance: Labels: the share a random result would have (the classes' sizes).
        queries: Labels: the queries the rates were measured on (not those the thresholds were chosen on).
        reference: Collection: sorted similarities of random pairs of the collection.
        item: What the items are, for the words ("picture", "text").
    """

    kind: str
    bands: ScoreBands
    agreement: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    chance: float = 0.0
    queries: int = 0
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    item: str = "picture"

    def closer_than(self, score: float) -> float:
        """The share of random pairs of the collection less similar than ``score`` (0 to 1)."""
        if len(self.reference) == 0:
            return 0.0
        return float(np.searchsorted(self.reference, score, side="left") / len(self.reference))

    @staticmethod
    def percent(share: float) -> str:
        """A share as a percentage that never rounds up ("99%", "99.9%" above 0.999)."""
        if share >= 0.999:
            return "99.9%"
        return f"{int(np.floor(share * 100 + 1e-9))}%"

    @staticmethod
    def in_ten(rate: float) -> str:
        """A rate as "N in 10", never rounded up ("9 in 10" for 0.93)."""
        return f"{int(np.floor(rate * 10 + 1e-9))} in 10"

    def label(self, band: str) -> str:
        """The band's name for the page: its name (labels), or what it means in the collection."""
        if self.kind == "labels" or band == BAND_NAMES[0]:
            return band
        if band == BAND_NAMES[3]:
            return f"not in the closest {100 - COLLECTION_PERCENTILES['similar']:.0f}%"
        return f"closer than {COLLECTION_PERCENTILES[band]:.0f}%"

    def describe(self, band: str) -> str:
        """One sentence about a band, for the legend."""
        if self.kind == "labels":
            if band not in self.counts or self.counts[band] == 0:
                return f"{band}: no result of the labeled photos scored this"
            return f"{band}: {self.in_ten(self.agreement[band])} share the query's class"
        if band == BAND_NAMES[0]:
            edits = "resized, recompressed or lightly edited" if self.item == "picture" else "give or take a few words"
            return f"near-duplicate: the same {self.item}, {edits}"
        if band == BAND_NAMES[3]:
            return f"not among the closest {100 - COLLECTION_PERCENTILES['similar']:.0f}% of the collection's pairs"
        return f"closer than {COLLECTION_PERCENTILES[band]:.0f}% of the collection's pairs"

    def words(self, score: float) -> tuple[str, str]:
        """The words on a result and their longer form (a tooltip)."""
        band = self.bands.band(score)
        if self.kind == "labels" or band == BAND_NAMES[0]:
            sentence = self.describe(band)
            if self.kind == "labels" and self.counts.get(band):
                sentence += (f" (measured on {self.counts[band]:,} results of {self.queries:,} labeled photos; "
                             f"a random photo: {self.in_ten(self.chance)})")
            return band, sentence
        pct = self.percent(self.closer_than(score))
        return f"closer than {pct} of the collection", (
            f"This score is higher than that of {pct} of random pairs of {self.item}s in this collection. The "
            "collection has no labels, so this says how close, not whether they show the same thing.")

    def report(self) -> str:
        """The measured rates, one line per band (for benchmarks and the command line)."""
        if self.kind != "labels":
            return "no labels: scores are compared with the collection"
        lines = [f"{'band':<15} {'from':>6} {'results':>8} {'same class':>10}"]
        for name, lo in self.bands.legend():
            n = self.counts.get(name, 0)
            rate = f"{self.agreement[name]:.3f}" if n else "-"
            lines.append(f"{name:<15} {max(lo, -1.0):>6.3f} {n:>8,} {rate:>10}")
        lines.append(f"(measured on {self.queries:,} held-out queries; chance {self.chance:.3f})")
        return "\n".join(lines)


def calibrate_words(vectors: np.ndarray, base: ScoreBands | None, labels: Sequence[str] | None = None, *,
                    k: int = 10, sample: int = 600, seed: int = 0, min_count: int = 20,
                    item: str = "picture") -> BandWords | None:
    """Words for scores on this collection (see the module documentation).

    With ``labels``: thresholds chosen on half of ``sample`` queries (their ``k`` nearest other items, exact
    search), the agreement of each band measured on the other half. Without: ``sample`` random pairs' similarities
    as the reference. Near-duplicates keep ``base``'s threshold (a copy needs no label).

    Args:
        vectors: Unit vectors, one row per item (the collection's live items).
        base: The collection's nearest-neighbour bands (``None``: too few items).
        labels: The class of each row, or ``None`` (an unlabeled collection).
        k: Results per query.
        sample: Queries used (labels), or rows used for the random pairs (no labels).
        seed: Seed of the samples.
        min_count: Fewest results a calibrated band is chosen on.
        item: What the items are, for the words ("picture", "text").

    Returns:
        The words, or ``None`` without ``base``.
    """
    if base is None or len(vectors) < 2:
        return None
    x = np.asarray(vectors, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if labels is None:
        rows = _pick(len(x), sample, rng)
        cols = _pick(len(x), 4 * sample, rng)
        s = x[rows] @ x[cols].T
        s = s[rows[:, None] != cols[None, :]]
        return BandWords("collection", ScoreBands(
            near_duplicate=base.near_duplicate,
            very_similar=round(min(float(np.percentile(s, COLLECTION_PERCENTILES["very similar"])),
                                   base.near_duplicate), 4),
            similar=round(float(np.percentile(s, COLLECTION_PERCENTILES["similar"])), 4),
            n=base.n, percentiles=base.percentiles), reference=np.sort(s.astype(np.float32)), item=item)
    lab = np.asarray(labels)
    queries = _pick(len(x), sample, rng)
    rng.shuffle(queries)
    half = len(queries) // 2
    fit, held = np.sort(queries[:half]), np.sort(queries[half:])
    scores, ids = _knn(x, fit, k)
    same = (lab[ids] == lab[fit][:, None]).ravel()
    flat = scores.ravel()
    very = _threshold(flat, same, TARGET_AGREEMENT["very similar"], float("inf"), min_count)
    very = min(very, base.near_duplicate)
    similar = min(_threshold(flat, same, TARGET_AGREEMENT["similar"], very, min_count), very)
    bands = ScoreBands(near_duplicate=base.near_duplicate, very_similar=round(very, 4), similar=round(similar, 4),
                       n=base.n, percentiles=base.percentiles)
    measured = class_agreement(x, lab, bands, held, k=k)
    _, sizes = np.unique(lab, return_counts=True)
    return BandWords("labels", bands,
                     agreement={b: (m / n if n else 0.0) for b, (n, m) in measured.items()},
                     counts={b: n for b, (n, _m) in measured.items()},
                     chance=float(((sizes / sizes.sum()) ** 2).sum()), queries=len(held))
