"""The explainer: feature maps of a query and a result through the embedder's model, and :func:`explain` for a
database result."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image

from ..._util.http import FetchConfig, fetch_url, is_url
from ...embed import ImageEmbedder, item_kind, weights_label
from ...embed.feature_maps import FeatureMapModel, FeatureMapSpec, feature_map_spec
from ...errors import ExplainError, QueryError
from ...sources.images import ImageSource
from .cache import ExplainCache, default_cache, normalise_source, source_key
from .maps import (
    EXACT_AVG,
    EXACT_MAX,
    GRADIENT,
    UNITS_EXACT,
    UNITS_GRADIENT,
    Explanation,
    MethodChoice,
    exact_avg_maps,
    exact_max_maps,
    gradcam_map,
)
from .render import explanation_png

if TYPE_CHECKING:
    from ...search import Query
    from ...store import Database

__all__ = ["Explainer", "explainer_for", "explain_pair", "explain"]

logger = logging.getLogger(__name__)


class Explainer:
    """Explains pairs of images for one embedder, with a cache.

    Args:
        embedder: The :class:`~similar_images.features.ImageEmbedder` whose
            vectors are explained (its Keras model and weights are shared).
        cache: Where maps and PNGs are kept (the process-wide one by default).

    Raises:
        FeatureMapError: If the embedder's model has no registered feature map.
    """

    def __init__(self, embedder: ImageEmbedder, *, cache: ExplainCache | None = None) -> None:
        self.embedder = embedder
        self.spec: FeatureMapSpec = feature_map_spec(embedder.spec.name)
        self.cache = cache if cache is not None else default_cache()
        self._model: FeatureMapModel | None = None
        self._lock = threading.Lock()

    @property
    def feature_model(self) -> FeatureMapModel:
        """The feature-map model, built on first use from the embedder's model."""
        with self._lock:
            if self._model is None:
                self._model = FeatureMapModel.from_embedder(self.embedder)
            return self._model

    @property
    def model_key(self) -> tuple[Hashable, ...]:
        """What identifies the model in cache keys: name, weights (a file's mtime and size too), seed."""
        e = self.embedder
        label = weights_label(e.weights)
        stamp: tuple[int, int] | None = None
        if label not in ("imagenet", "random"):
            try:
                st = Path(label).stat()
                stamp = (st.st_mtime_ns, st.st_size)
            except OSError:
                stamp = None
        return (e.spec.name, label, stamp, int(e.seed))

    def resolve_method(self, method: MethodChoice = "auto") -> str:
        """The method that ``method`` means for this model.

        Raises:
            ExplainError: For ``"exact"`` on a model without a spatial decomposition, or an unknown choice.
        """
        if method == "auto":
            method = "exact" if self.spec.exact else "gradient"
        if method == "gradient":
            return GRADIENT
        if method == "exact":
            if not self.spec.exact:
                raise ExplainError(
                    f"Model {self.spec.model!r} has no exact spatial decomposition (layers follow its feature map "
                    f"{self.spec.layer!r}); use method='gradient' (approximate) or a pooled model "
                    "(vgg16-avg, vgg16-max, mobilenetv2)"
                )
            return EXACT_AVG if self.spec.pooling == "avg" else EXACT_MAX
        raise ExplainError(f"method must be 'auto', 'exact' or 'gradient', got {method!r}")

    def feature_maps(self, sources: list[ImageSource]) -> tuple[list[np.ndarray], int]:
        """Feature maps of images, from the cache or from one forward pass of those missing.

        Returns:
            ``(maps, forward_passes)``: float32 ``(H, W, C)`` maps in order, and
            0 or 1.
        """
        sources = [normalise_source(s) for s in sources]
        keys = [source_key(s) for s in sources]
        out: list[np.ndarray | None] = [None] * len(sources)
        todo: list[int] = []
        for i, k in enumerate(keys):
            hit = self.cache.maps.get(self.model_key + k) if k is not None else None
            if hit is None:
                todo.append(i)
            else:
                out[i] = hit
        # The same image twice needs one row of the batch.
        row_of: dict[Hashable, int] = {}
        firsts: list[int] = []
        rows: list[int] = []
        for i in todo:
            ident = keys[i] if keys[i] is not None else ("object", i)
            if ident not in row_of:
                row_of[ident] = len(firsts)
                firsts.append(i)
            rows.append(row_of[ident])
        if todo:
            batch = np.stack([self.embedder.prepare(sources[i]) for i in firsts])
            maps, _ = self.feature_model.maps(batch)
            for i, row in zip(todo, rows):
                out[i] = maps[row]
                key = keys[i]
                if key is not None:
                    self.cache.maps.put(self.model_key + key, maps[row], maps[row].nbytes)
        return [m for m in out if m is not None], (1 if todo else 0)

    def search_vector(self, source: ImageSource) -> np.ndarray:
        """The vector a search embeds ``source`` into: the embedder's own runner (its backend and precision),
        cached like the feature maps."""
        source = normalise_source(source)
        key = source_key(source)
        full = (("search-vector", self.embedder.backend, self.embedder.precision) + self.model_key + key
                if key is not None else None)
        hit = self.cache.maps.get(full) if full is not None else None
        if hit is not None:
            return hit
        vector = np.asarray(self.embedder.embed([source])[0], dtype=np.float32)
        if full is not None:
            self.cache.maps.put(full, vector, vector.nbytes)
        return vector

    def explain_pair(self, query: ImageSource, result: ImageSource, *, method: MethodChoice = "auto",
                     query_id: int | None = None, result_id: int | None = None, stored_score: float | None = None,
                     search_score: float | None = None) -> Explanation:
        """Explain the similarity of two images.

        The maps are computed in fp32 on the Keras model. A database built with another backend or precision
        stores slightly different vectors (bf16 moves a score by about 1e-3), so given ``search_score`` (what a
        search shows for the pair) the explanation reports that score and scales both maps by
        ``search_score / model_score`` so that the exact maps sum to it (a gradient map, in relative units, is left
        as it is); ``model_score`` keeps the fp32 cosine the maps were computed with.

        Args:
            query: The query image: a path, bytes, a file object or a PIL image.
            result: The result image, likewise.
            method: ``"auto"`` (exact where the model allows, else gradient),
                ``"exact"`` or ``"gradient"``.
            query_id, result_id, stored_score: Database facts to record.
            search_score: The score a search shows for the pair, that the explanation reports and its exact maps
                sum to (``None``: the fp32 maps' own cosine).

        Raises:
            ExplainError: For ``method="exact"`` on a model without a decomposition.
            ImageLoadError: If an image cannot be read.
        """
        t0 = time.perf_counter()
        resolved = self.resolve_method(method)
        query, result = normalise_source(query), normalise_source(result)
        qkey, rkey = source_key(query), source_key(result)
        pair_key = (self.model_key, qkey, rkey, resolved) if qkey is not None and rkey is not None else None
        cached = self.cache.pairs.get(pair_key) if pair_key is not None else None
        forward = backward = 0
        if cached is not None:
            qmap, rmap, score, layer = cached
        elif resolved == GRADIENT:
            fm = self.feature_model
            batch = np.stack([self.embedder.prepare(query), self.embedder.prepare(result)])
            maps, grads, score = fm.similarity_gradients(batch)
            qmap, rmap = gradcam_map(maps[0], grads[0]), gradcam_map(maps[1], grads[1])
            forward = backward = 1
            layer = fm.layer_name
        else:
            (fq, fr), forward = self.feature_maps([query, result])
            decompose = exact_avg_maps if resolved == EXACT_AVG else exact_max_maps
            qmap, rmap, score = decompose(fq, fr)
            layer = self.feature_model.layer_name
        qmap = np.asarray(qmap, dtype=np.float32)
        rmap = np.asarray(rmap, dtype=np.float32)
        if cached is None and pair_key is not None:
            self.cache.pairs.put(pair_key, (qmap, rmap, score, layer), qmap.nbytes + rmap.nbytes + 256)
        model_score = float(score)
        if search_score is not None:
            if resolved != GRADIENT:  # a gradient map is in relative units: it sums to nothing in particular
                qmap, rmap = _sum_to(qmap, search_score), _sum_to(rmap, search_score)
            score = search_score
        return Explanation(
            query_map=qmap, result_map=rmap, score=float(score), model_score=model_score, method=resolved,
            approximate=resolved == GRADIENT, grid=(int(rmap.shape[0]), int(rmap.shape[1])),
            model=self.embedder.spec.name, weights=weights_label(self.embedder.weights), layer=layer,
            units=UNITS_GRADIENT if resolved == GRADIENT else UNITS_EXACT,
            query_id=query_id, result_id=result_id,
            query_path=query if isinstance(query, str) else None,
            result_path=result if isinstance(result, str) else None,
            stored_score=stored_score, forward_passes=forward, backward_passes=backward,
            seconds=time.perf_counter() - t0, query_source=query, result_source=result,
            cache_key=pair_key,
        )

    def png(self, explanation: Explanation, *, height: int = 320, alpha: float = 0.55) -> bytes:
        """:func:`explanation_png`, cached for explanations of cacheable images."""
        key = None
        if explanation.cache_key is not None:
            key = (explanation.cache_key, explanation.query_id, explanation.result_id, explanation.stored_score,
                   int(height), float(alpha))
            data = self.cache.pngs.get(key)
            if data is not None:
                return data
        data = explanation_png(explanation, height=height, alpha=alpha, max_pixels=self.embedder.max_pixels)
        if key is not None:
            self.cache.pngs.put(key, data, len(data))
        return data


def _sum_to(grid_map: np.ndarray, total: float) -> np.ndarray:
    """``grid_map`` scaled to sum to ``total`` (float64 sums; a map summing to about zero is shifted evenly
    instead, since a scale would blow it up)."""
    m = grid_map.astype(np.float64)
    current = float(m.sum())
    if abs(current) >= 0.05:
        m = m * (total / current)
    else:
        m = m + (total - current) / m.size
    return m.astype(np.float32)


_EXPLAINERS: weakref.WeakKeyDictionary[ImageEmbedder, Explainer] = weakref.WeakKeyDictionary()
_EXPLAINERS_LOCK = threading.Lock()


def explainer_for(embedder: ImageEmbedder) -> Explainer:
    """The explainer of an embedder (one per embedder, so its feature-map model is built once).

    Raises:
        FeatureMapError: If the embedder's model has no registered feature map.
    """
    with _EXPLAINERS_LOCK:
        ex = _EXPLAINERS.get(embedder)
        if ex is None:
            ex = Explainer(embedder)
            _EXPLAINERS[embedder] = ex
        return ex


def explain_pair(embedder: ImageEmbedder, query: ImageSource, result: ImageSource, *, method: MethodChoice = "auto",
                 cache: ExplainCache | None = None) -> Explanation:
    """Explain why two images are similar under an embedder's model.

    Args:
        embedder: The model (an :class:`~similar_images.features.ImageEmbedder`).
        query: A path, bytes, a file object or a PIL image.
        result: Likewise.
        method: ``"auto"``, ``"exact"`` or ``"gradient"``.
        cache: A cache to use instead of the process-wide one.

    Raises:
        FeatureMapError: If the model's feature map cannot be reached.
        ExplainError: For ``method="exact"`` on a model without a decomposition.
        ImageLoadError: If an image cannot be read.
    """
    ex = explainer_for(embedder) if cache is None else Explainer(embedder, cache=cache)
    return ex.explain_pair(query, result, method=method)


def _resolve_query(db: Database, query: Query, fetch_config: FetchConfig | None) -> tuple[int | None, ImageSource]:
    if isinstance(query, (bool, np.bool_)):
        raise QueryError("A query cannot be a boolean")
    if isinstance(query, (int, np.integer)):
        qid = db.check_id(int(query))
        return qid, db.items[qid]
    if isinstance(query, np.ndarray):
        raise ExplainError("A vector query has no image whose regions could be shown; explain a database id, "
                           "an image path, image bytes or a URL instead")
    if isinstance(query, (str, os.PathLike)):
        s = str(query)
        if is_url(s):
            return None, fetch_url(s, fetch_config)
        p = Path(s).expanduser()
        if not p.is_file():
            raise QueryError(f"No such image file: {s} (give a path, an http(s) URL, or a database id)")
        return None, str(p)
    if isinstance(query, (bytes, bytearray, memoryview, Image.Image)) or hasattr(query, "read"):
        return None, query
    raise QueryError(f"Unsupported query type {type(query).__name__}; use an id, a path, a URL, bytes or a PIL image")


def explain(db: Database, query: Query, result_id: int, *, method: MethodChoice = "auto",
            fetch_config: FetchConfig | None = None) -> Explanation:
    """Explain why a database result is similar to a query.

    Args:
        db: An image database.
        query: A database id, an image path, bytes, a PIL image or an
            http(s) URL, as in search.
        result_id: The database id of the result.
        method: ``"auto"`` (exact for average- and max-pooled models, the
            approximate gradient map otherwise), ``"exact"`` or ``"gradient"``.
        fetch_config: Limits for URL queries.

    Returns:
        The :class:`Explanation`: its ``score`` is the score a search shows
        for the pair (the stored vectors' cosine for a query id; for another
        query, its vector by the database's backend and precision against the
        stored one), on every backend and precision, and an exact map sums to
        it (to float precision); ``model_score`` is the fp32 maps' own cosine.

    Raises:
        ExplainError: For a text database or a vector query.
        FeatureMapError: If the database's model has no reachable feature map.
        QueryError: For an unknown or removed id, a missing file or an unreachable URL.
        ImageLoadError: If an image cannot be read.
    """
    if not item_kind(db.kind).files:
        raise ExplainError(f"{db.path} is a {db.kind} database: explanations show image regions, so they need "
                           "an image database")
    if isinstance(result_id, (bool, np.bool_)) or not isinstance(result_id, (int, np.integer)):
        raise QueryError(f"The result must be a database id (an integer), got {result_id!r}")
    feature_map_spec(db.model_name)  # fail before loading anything for a model without a feature map
    rid = db.check_id(int(result_id))
    qid, qsource = _resolve_query(db, query, fetch_config)
    # an image database's embedder (or the service's SerializedEmbedder, which passes attributes through to one)
    embedder = cast("ImageEmbedder", db.embedder)
    ex = explainer_for(embedder)
    stored = shown = None
    result_vector = np.asarray(db.vectors[rid], dtype=np.float64)
    if qid is not None:
        stored = shown = float(np.dot(np.asarray(db.vectors[qid], dtype=np.float64), result_vector))
    elif (embedder.backend, embedder.precision) != ("keras", "fp32"):
        # A search embeds the query with the database's backend and precision, not the fp32 maps' model.
        shown = float(np.dot(ex.search_vector(qsource).astype(np.float64), result_vector))
    return ex.explain_pair(qsource, db.items[rid], method=method, query_id=qid, result_id=rid, stored_score=stored,
                           search_score=shown)


