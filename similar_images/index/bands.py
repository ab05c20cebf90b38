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

Example:
    >>> bands = ScoreBands.from_similarities(np.array([0.5, 0.6, 0.7, 0.8]))
    >>> bands.band(0.95)
    'near-duplicate'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ScoreBands", "BAND_NAMES", "neighbour_percentiles"]

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
    def from_dict(cls, d: dict[str, Any]) -> ScoreBands:
        """Read the form written by :meth:`to_dict`."""
        return cls(near_duplicate=float(d["near_duplicate"]), very_similar=float(d["very_similar"]),
                   similar=float(d["similar"]), n=int(d.get("n", 0)),
                   percentiles={k: int(v) if k == "n" else float(v) for k, v in d.get("percentiles", {}).items()})

    def to_dict(self) -> dict[str, Any]:
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
