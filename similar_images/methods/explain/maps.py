"""The maps: how a cosine similarity decomposes over the cells of the feature map (pure numpy), and the
:class:`Explanation` that carries them."""

from __future__ import annotations

import json
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ...errors import ExplainError
from ...sources.images import ImageSource

__all__ = ["METHODS", "EXACT_AVG", "EXACT_MAX", "GRADIENT", "MethodChoice", "Explanation", "exact_avg_maps",
           "exact_max_maps", "gradcam_map"]

EXACT_AVG = "exact-avg"
EXACT_MAX = "exact-max"
GRADIENT = "gradient (approximate)"
#: The methods an :class:`Explanation` can carry.
METHODS = (EXACT_AVG, EXACT_MAX, GRADIENT)

MethodChoice = Literal["auto", "exact", "gradient"]

UNITS_EXACT = "contribution of each grid cell to the cosine similarity (the cells sum to the score)"
UNITS_GRADIENT = "Grad-CAM weight (relative units, signed; approximate, does not sum to the score)"



def _unit(v: np.ndarray, what: str) -> tuple[np.ndarray, float]:
    n = float(np.linalg.norm(v))
    if not np.isfinite(n) or n == 0.0:
        raise ExplainError(f"The {what} image's feature vector is zero (a blank or uniform image?): "
                           "its similarity to anything is undefined, so there is nothing to explain")
    return v / n, n


def exact_avg_maps(query: np.ndarray, result: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The exact decomposition of the cosine similarity of two average-pooled feature maps.

    Args:
        query: The query's ``(H, W, C)`` feature map.
        result: The result's ``(H', W', C)`` feature map.

    Returns:
        ``(query_map, result_map, score)``: float64 ``(H, W)`` and ``(H', W')``
        maps, each summing to ``score``, the cosine similarity of the two
        average-pooled vectors.

    Raises:
        ExplainError: If a pooled vector is zero.
    """
    fq = np.asarray(query, dtype=np.float64)
    fr = np.asarray(result, dtype=np.float64)
    q, nq = _unit(fq.mean(axis=(0, 1)), "query")
    r, nr = _unit(fr.mean(axis=(0, 1)), "result")
    result_map = (fr @ q) / (fr.shape[0] * fr.shape[1] * nr)
    query_map = (fq @ r) / (fq.shape[0] * fq.shape[1] * nq)
    return query_map, result_map, float(q @ r)


def exact_max_maps(query: np.ndarray, result: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The exact decomposition of the cosine similarity of two max-pooled feature maps.

    Channel ``c`` contributes ``q_c * r_c`` (both normalised pooled vectors),
    placed at the position where ``c`` reaches its maximum in each image (the
    first one on ties).

    Returns:
        ``(query_map, result_map, score)``, each map summing to ``score``.

    Raises:
        ExplainError: If a pooled vector is zero.
    """
    maps = []
    units = []
    positions = []
    for f, what in ((query, "query"), (result, "result")):
        f = np.asarray(f, dtype=np.float64)
        h, w, c = f.shape
        flat = f.reshape(h * w, c)
        where = flat.argmax(axis=0)
        u, _ = _unit(flat[where, np.arange(c)], what)
        units.append(u)
        positions.append(where)
        maps.append((h, w))
    per_channel = units[0] * units[1]
    out = []
    for (h, w), where in zip(maps, positions):
        m = np.zeros(h * w, dtype=np.float64)
        np.add.at(m, where, per_channel)
        out.append(m.reshape(h, w))
    return out[0], out[1], float(per_channel.sum())


def gradcam_map(feature_map: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Grad-CAM: the feature map's channels weighted by the spatial mean of their gradient.

    Args:
        feature_map: ``(H, W, C)`` activations.
        gradient: ``(H, W, C)`` gradient of the similarity with respect to them.

    Returns:
        The signed float64 ``(H, W)`` map (Grad-CAM proper is its positive part).
    """
    alpha = np.asarray(gradient, dtype=np.float64).mean(axis=(0, 1))
    return np.asarray(feature_map, dtype=np.float64) @ alpha


@dataclass(eq=False)
class Explanation:
    """Why a query and a result are similar: one map for each over the model's feature grid.

    Attributes:
        query_map: float32 ``(H, W)`` map over the query's feature grid.
        result_map: float32 ``(H, W)`` map over the result's feature grid.
        score: The cosine similarity of the two images: the score a search
            shows where it is known (see :func:`~.explainer.explain`), else
            recomputed from the feature maps; for the exact methods each map
            sums to it.
        method: ``"exact-avg"``, ``"exact-max"`` or ``"gradient (approximate)"``.
        approximate: True for the gradient method.
        grid: ``(H, W)`` of the feature grid.
        model: The model name.
        weights: The weights label (``imagenet``, ``random`` or a file path).
        layer: The Keras layer the maps are over.
        units: What a map's values mean.
        query_id: Database id of the query, when it is one.
        result_id: Database id of the result, when it is one.
        query_path: The query's file, when it is one.
        result_path: The result's file, when it is one.
        stored_score: The cosine similarity of the stored vectors (what a
            search shows), when both images are in the database.
        forward_passes: Model forward passes this explanation ran (0 when cached).
        backward_passes: Backward passes (gradient method only).
        seconds: Time taken.
        model_score: The cosine of the fp32 feature maps the maps were computed from (``score`` differs from
            it by the database's backend and precision; the maps are scaled to sum to ``score``).
    """

    query_map: np.ndarray
    result_map: np.ndarray
    score: float
    method: str
    approximate: bool
    grid: tuple[int, int]
    model: str
    weights: str
    layer: str
    units: str
    query_id: int | None = None
    result_id: int | None = None
    query_path: str | None = None
    result_path: str | None = None
    stored_score: float | None = None
    forward_passes: int = 0
    backward_passes: int = 0
    seconds: float = 0.0
    model_score: float | None = None
    query_source: ImageSource | None = field(default=None, repr=False)
    result_source: ImageSource | None = field(default=None, repr=False)
    cache_key: Hashable | None = field(default=None, repr=False)

    @property
    def cached(self) -> bool:
        """Whether no model ran for this explanation."""
        return self.forward_passes == 0

    def to_dict(self, *, decimals: int = 8) -> dict[str, object]:
        """A JSON-serialisable form (maps as nested lists, rows top to bottom)."""

        def side(m: np.ndarray, item_id: int | None, path: str | None) -> dict[str, object]:
            return {"id": item_id, "path": path, "sum": round(float(m.sum(dtype=np.float64)), decimals),
                    "map": np.round(m.astype(np.float64), decimals).tolist()}

        return {
            "method": self.method,
            "approximate": self.approximate,
            "score": round(self.score, decimals),
            "stored_score": None if self.stored_score is None else round(self.stored_score, decimals),
            "model_score": None if self.model_score is None else round(self.model_score, decimals),
            "model": self.model,
            "weights": self.weights,
            "layer": self.layer,
            "grid": list(self.grid),
            "units": self.units,
            "query": side(self.query_map, self.query_id, self.query_path),
            "result": side(self.result_map, self.result_id, self.result_path),
            "forward_passes": self.forward_passes,
            "backward_passes": self.backward_passes,
            "ms": round(self.seconds * 1e3, 3),
        }

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON text."""
        return json.dumps(self.to_dict(**kwargs))


