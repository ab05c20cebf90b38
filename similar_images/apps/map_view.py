"""The collection map: every photo of a database placed in 2D, click one to search with it.

The map is the database's vectors projected to 2D (:func:`similar_images.measure.walkthrough.project_2d`: PCA,
then t-SNE), each photo drawn as a small thumbnail at its place, so clusters of similar photos are visible. A
click on a photo (or :meth:`MapView.select` from Python) searches with it; its ``k`` most similar photos are
shown below the map and outlined on it.

In a notebook::

    from similar_images.apps.map_view import MapView
    MapView.from_path("data/coco-db")

Next to the image app, a click can drive the app's search instead (``on_select``)::

    app = open_app("data/coco-db")
    ipywidgets.VBox([MapView(app.db, on_select=app.search_id), app])
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets as t

from .._util.types import JSON
from ..errors import SimilarImagesError
from ..measure.walkthrough import project_2d
from ..presentation.thumbnails import thumbnail_bytes
from ..store import Database
from .common import find_database, user_message

__all__ = ["MapView"]

logger = logging.getLogger(__name__)

_STATIC = Path(__file__).with_name("static")


def _data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


class MapView(anywidget.AnyWidget):
    """The collection map of a database as a widget (click a photo to search with it).

    Args:
        db: The database.
        points: ``(n, 2)`` map coordinates of its live photos in ``[0, 1]`` (default: computed with
            :func:`~similar_images.measure.walkthrough.project_2d`).
        k: Results shown per search.
        on_select: Also called with the id of every photo chosen (e.g. an image app's ``search_id``).
        thumb: Thumbnail size on the map, in pixels.
    """

    _esm = (_STATIC / "map_view.js").read_text(encoding="utf-8")
    _css = (_STATIC / "map_view.css").read_text(encoding="utf-8")

    points = t.List().tag(sync=True)
    results = t.List().tag(sync=True)
    selected = t.Int(-1).tag(sync=True)
    title = t.Unicode("").tag(sync=True)
    note = t.Unicode("").tag(sync=True)

    def __init__(self, db: Database, points: np.ndarray | None = None, *, k: int = 8,
                 on_select: Callable[[int], object] | None = None, thumb: int = 64, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.db = db
        self.k = k
        self.on_select = on_select
        self.ids = db.live_ids()
        coords = project_2d(np.asarray(db.vectors[self.ids])) if points is None else np.asarray(points)
        if coords.shape != (len(self.ids), 2):
            raise ValueError(f"points must be ({len(self.ids)}, 2), got {coords.shape}")
        self.coords = coords
        self.last: Any = None
        self.title = f"A map of {len(self.ids):,} photos: click one to search with it"
        self.points = [{"id": int(i), "x": float(x), "y": float(y), "src": _data_url(thumbnail_bytes(db.item(int(i)),
                                                                                                       thumb))}
                       for i, (x, y) in zip(self.ids, coords)]
        self.observe(self._on_selected, names="selected")

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], **kwargs: Any) -> MapView:
        """The map of the database at ``path`` (a folder, or a parent holding one)."""
        return cls(Database.open(find_database(path)), **kwargs)

    def select(self, item_id: int) -> None:
        """Search with the photo ``item_id``, as a click on it does."""
        if item_id == self.selected:
            self._search(item_id)
        else:
            self.selected = int(item_id)

    def _on_selected(self, change: JSON) -> None:
        self._search(int(change["new"]))

    def _search(self, item_id: int) -> None:
        try:
            results = self.db.search(item_id, k=self.k, exclude_query=True)
            if self.on_select is not None:
                self.on_select(item_id)
        except SimilarImagesError as exc:
            logger.warning("Map search with %s failed: %s", item_id, exc)
            self.results = []
            self.note = user_message(exc)
            return
        self.last = results
        self.results = [{"id": int(m.id), "score": float(m.score), "src": _data_url(thumbnail_bytes(m.path, 160))}
                        for m in results]
        self.note = (f"Photo {item_id} ({Path(self.db.item(item_id)).name}): its {len(results)} most similar "
                     f"photos, outlined in blue on the map")
