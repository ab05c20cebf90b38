"""The one interface every embedder implements, and what differs between kinds of items.

An :class:`Embedder` turns items (images, texts) into L2-normalised float32
vectors in two steps, so that a pipeline can run them in parallel:
:meth:`~Embedder.prepare` decodes or checks one item (CPU work, thread-safe,
run in a pool) and :meth:`~Embedder.embed_prepared` runs the model on a batch
of prepared items. :meth:`~Embedder.info` describes the embedder for the
database manifest, and :func:`similar_images.embed.embedder_from_info`
rebuilds the same embedder from it (in another process, or when a database is
opened).

:class:`ItemKind` holds what differs between kinds of items for the layers
above (the key of an item in ``items.jsonl``, how a user's item is looked up
in the database, whether items are files), so that they need no
``if kind == "image"`` branches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError
from ..sources.images import normalize_path

__all__ = ["Embedder", "SpecBacked", "ItemKind", "ITEM_KINDS", "item_kind", "l2_normalize"]


@runtime_checkable
class Embedder(Protocol):
    """Turns items into L2-normalised feature vectors.

    Attributes:
        kind: The kind of item embedded (``"image"`` or ``"text"``; see :data:`ITEM_KINDS`).
        dim: Length of the vectors.
    """

    kind: str

    @property
    def dim(self) -> int: ...

    def info(self) -> dict[str, object]:
        """A JSON description (``name`` and ``dim`` at least), stored as the manifest's ``model``."""
        ...

    def prepare(self, item: Any) -> Any:
        """Decode or check one item, ready for :meth:`embed_prepared`; thread-safe.

        Raises:
            InputError: (a subclass of it) If the item cannot be used; a build records it as a failure.
        """
        ...

    def embed_prepared(self, batch: Sequence[Any]) -> np.ndarray:
        """Embed prepared items: ``(len(batch), dim)`` float32, each row of unit length."""
        ...

    def embed(self, items: Sequence[Any]) -> np.ndarray:
        """Prepare and embed items, in batches (raises on the first item that cannot be used)."""
        ...

    def coerce_query(self, query: Any, **options: Any) -> Any:
        """Turn a search query that is not an id or a vector into an item :meth:`prepare` accepts.

        Raises:
            QueryError: If this kind of embedder cannot take such a query.
        """
        ...


class SpecBacked:
    """For embedders described by a registered spec (``self.spec`` with ``name`` and ``dim``)."""

    spec: Any

    @property
    def name(self) -> str:
        return str(self.spec.name)

    @property
    def dim(self) -> int:
        return int(self.spec.dim)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero), float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return x / norms


def _normalize_path(item: str | os.PathLike[str]) -> str:
    return str(normalize_path(item))  # as the image sources name files: absolute, links not resolved


def _normalize_text(item: str | os.PathLike[str]) -> str:
    return str(item)


@dataclass(frozen=True)
class ItemKind:
    """What differs between kinds of items, for the store, search and presentation layers.

    Attributes:
        name: ``"image"`` or ``"text"``.
        item_key: Key of the item in ``items.jsonl`` and in JSON results (``"path"``, ``"text"``).
        plural: For messages ("images", "texts").
        normalize: How an item named by a user is looked up in the database (image paths are made absolute).
        files: Whether items are files on disk (thumbnails, folder labels, image URLs in the service).
    """

    name: str
    item_key: str
    plural: str
    normalize: Callable[[str | os.PathLike[str]], str]
    files: bool


#: The kinds of items a database can hold.
ITEM_KINDS: dict[str, ItemKind] = {
    "image": ItemKind("image", "path", "images", _normalize_path, files=True),
    "text": ItemKind("text", "text", "texts", _normalize_text, files=False),
}


def item_kind(name: str) -> ItemKind:
    """The :class:`ItemKind` called ``name``.

    Raises:
        ConfigError: For an unknown kind.
    """
    try:
        return ITEM_KINDS[name]
    except KeyError:
        raise ConfigError(f"Unknown kind of item {name!r}; expected one of {sorted(ITEM_KINDS)}") from None
