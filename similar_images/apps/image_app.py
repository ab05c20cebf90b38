"""The image-search app for Jupyter (JupyterLab 4, Notebook 7) and Voilà.

Query an image database with a sample photo of the first screen, a random
database photo, an uploaded image or an image URL, and browse the ``k`` most
similar *other* images: a grid that fills the width (tile size adjustable),
each result with its score in words that hold on this collection (see
:func:`~.common.band_words`: "very similar: 8 in 10 share the query's class"
on a labeled collection, "closer than 98% of the collection" otherwise), and a
lightbox (click a result or the query; left/right move, Enter searches with
the one shown, Esc closes; arrows move the selection in the grid too) whose
"Explain" the page draws. The "Present" button (or the key P) turns presenter
mode on: large text, compact controls, the first row above the fold.

In a notebook::

    from similar_images.apps import open_app
    app = open_app("data/coco-db", k=8)
    app                      # displays the app (or how to build the database)

Or as a standalone app: ``voila notebooks/similar_images.ipynb``.

The app is also driven from Python, which is how it is tested::

    app.search_random(); app.search_id(3); app.search_upload(jpeg_bytes); app.search_url(url)
    app.results              # the last :class:`~similar_images.search.Results`
    app.shown                # the matches shown (after the minimum-score filter)
    app.search_result(2)     # "Search similar" on the third result shown
    app.message              # the message shown for a bad input ("" when none)
    app.add_lightbox_action("explain", "Explain", callback)   # see similar_images.apps.gallery

Images are made small on the server (thumbnails for the grid, about 1600
pixels for the lightbox): full-size photos never go to the browser.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._util.http import AddressPolicy, FetchConfig, check_url, fetch_url
from .._util.types import JSON
from ..embed import item_kind
from ..embed.feature_maps import feature_map_spec
from ..errors import ConfigError, DatabaseError, FeatureMapError, ImageLoadError, QueryError, SimilarImagesError
from ..index import ivf_of
from ..methods.explain import Explanation, explain
from ..presentation.thumbnails import ThumbnailCache, ThumbnailConfig, make_thumbnail, placeholder_thumbnail
from ..search import Match, Results, query_vectors
from ..store import Database
from ..store.live import LiveDatabase
from ..store.manifest import Manifest
from .common import (
    DatabaseMessage,
    ModelLoader,
    band_legend,
    band_words,
    database_header,
    find_database,
    log_to_file,
    no_database_message,
    progress_sentence,
    quiet_output,
    unreadable_image,
    user_message,
)
from .gallery import ActionResult, ActionTarget, GalleryApp, GalleryWidget
from .text_app import TextSearchApp, text_search_app

__all__ = ["AppConfig", "QueryInfo", "SimilarImagesApp", "open_app", "explanation_for_page", "MAX_K",
           "UPLOAD_ACCEPT"]

logger = logging.getLogger(__name__)

#: Largest number of results the app shows.
MAX_K = 50

#: File types offered by the upload dialog.
UPLOAD_ACCEPT = ".jpg,.jpeg,.png,.gif,.bmp,.webp,.tif,.tiff,image/*"


#: The tooltip of the lightbox's "Explain" button.
EXPLAIN_TOOLTIP = "Which regions of the two images make them similar"


def _model_label(db: Database) -> str:
    """The query model's name, with its inference backend when it is not Keras fp32 ("vgg16-avg, openvino int8")."""
    backend, precision = db.manifest.image_inference
    return db.model_name if (backend, precision) == ("keras", "fp32") else f"{db.model_name}, {backend} {precision}"


def _explainable(db: Database) -> bool:
    """Whether the database's model has a feature map to explain matches with."""
    if not item_kind(db.kind).files:
        return False
    try:
        feature_map_spec(db.model_name)
    except FeatureMapError:
        return False
    return True


@dataclass(frozen=True)
class AppConfig:
    """Settings of the app.

    Attributes:
        k: Number of results shown at first (1 to :data:`MAX_K`).
        tile: Smallest width of a result tile in pixels at first (the grid fills the width; the page's size
            control changes it).
        thumb_size: Longest side of the result thumbnails made on the server.
        query_size: Longest side of the query image in the query panel.
        preview_size: Longest side of the images shown in the lightbox.
        max_upload_bytes: Largest accepted upload (and URL download).
        url_timeout: Seconds allowed for fetching a URL.
        preload_model: Load the query model in the background as soon as the app is shown.
        include_query: Show a database query among its own results (as result #1).
        min_score: Hide results below this score (``None``: show all; the page offers the score bands).
        seed: Seed of the random-image picker (``None``: unpredictable).
        explain: Offer an "Explain" button in the lightbox: the regions of the query and of the result that
            make them similar (for models with a feature map: VGG16 and MobileNetV2).
        show_paths: Show the images' full paths on the server (tooltips, lightbox); by default only file names
            reach the page.
        present: Start in presenter mode (large text, compact controls; the page's "Present" button and key P).
        samples: Sample photos offered on the first screen, to click (0: none).
    """

    k: int = 8
    tile: int = 220
    thumb_size: int = 320
    query_size: int = 640
    preview_size: int = 1600
    max_upload_bytes: int = 20 * 1024 * 1024
    url_timeout: float = 10.0
    preload_model: bool = True
    include_query: bool = False
    min_score: float | None = None
    seed: int | None = None
    explain: bool = True
    show_paths: bool = False
    present: bool = False
    samples: int = 12

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= MAX_K:
            raise ConfigError(f"k must be an integer from 1 to {MAX_K}, got {self.k!r}")
        if not 100 <= self.tile <= 600:
            raise ConfigError(f"tile must be 100 to 600 pixels, got {self.tile}")
        for name in ("thumb_size", "query_size", "preview_size"):
            if not 32 <= getattr(self, name) <= 4096:
                raise ConfigError(f"{name} must be 32 to 4096 pixels, got {getattr(self, name)}")
        if self.max_upload_bytes < 1:
            raise ConfigError("max_upload_bytes must be positive")
        if not 0 <= self.samples <= MAX_K:
            raise ConfigError(f"samples must be 0 to {MAX_K}, got {self.samples}")
        if self.min_score is not None and not -1.0 <= self.min_score <= 1.0:
            raise ConfigError(f"min_score must lie between -1 and 1, got {self.min_score}")

    @property
    def fetch(self) -> FetchConfig:
        """Limits used for URL queries (the app runs on the user's own machine: local addresses are allowed)."""
        return FetchConfig(timeout=self.url_timeout, max_bytes=self.max_upload_bytes,
                           policy=AddressPolicy(allow_private=True))


@dataclass
class QueryInfo:
    """The current query.

    Attributes:
        kind: ``"id"`` (a database image), ``"upload"``, ``"url"`` or ``"path"`` (a file on the server).
        name: Short name (file name, upload name).
        detail: One line about it ("database image #12", "uploaded, 2.1 MB", the URL).
        title: The full path or URL (shown on hover).
        thumb: JPEG of the query panel.
        key: Key of its large image (lightbox).
        id: Its database id (``kind == "id"``).
        vector: Its embedding (other kinds).
        data: Its bytes (uploads and URLs: the lightbox's large image is made from them).
        embed_ms: Time to decode and embed it.
    """

    kind: str
    name: str
    detail: str
    title: str
    thumb: bytes
    key: str
    id: int | None = None
    vector: np.ndarray | None = None
    data: bytes | None = None
    embed_ms: float = 0.0


@dataclass
class _Timing:
    embed_ms: float = 0.0
    search_ms: float = 0.0
    total_ms: float = 0.0


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{max(n, 1) / 1024:.0f} KB"


class SimilarImagesApp(GalleryApp):
    """Interactive similar-image search over a :class:`~similar_images.store.Database`.

    Display it in a notebook by making it the last expression of a cell (or ``display(app.widget)``).

    The ``search_*`` methods run a query, show its results, and return them; on a bad input they show the
    reason in the app and raise it (:class:`~similar_images.errors.QueryError` or
    :class:`~similar_images.errors.ImageLoadError`). Clicks and keys in the page go through
    :attr:`gallery`, which catches those errors: the app never shows a traceback and stays usable.

    Args:
        db: An image database (with or without an index).
        config: App settings.
        thumbnails: A thumbnail cache to share between apps (a new one by default).

    Raises:
        DatabaseError: If ``db`` is a text database or holds no items.
    """

    def __init__(self, db: Database, config: AppConfig | None = None, *,
                 thumbnails: ThumbnailCache | None = None) -> None:
        if not item_kind(db.kind).files:
            raise DatabaseError(f"{db.path} is a {db.kind} database; this app searches image databases")
        if len(db) == 0:
            raise DatabaseError(f"{db.path} holds no images; add some with: similar-images add {db.path} IMAGES")
        log_to_file()
        self._db = db
        self._live: LiveDatabase | None = None  # set by from_path: the app then follows the folder as it changes
        self.config = config or AppConfig()
        cfg = self.config
        self.thumbnails = thumbnails or ThumbnailCache(ThumbnailConfig(size=cfg.thumb_size))
        self._previews: OrderedDict[str, bytes] = OrderedDict()
        self._rng = np.random.default_rng(cfg.seed)
        self._query: QueryInfo | None = None
        self._results: Results | None = None
        self._shown: list[Match] = []
        self._message = ""
        self._keys = itertools.count(1)
        self._prefetcher: ThreadPoolExecutor | None = None
        self._shown_query: QueryInfo | None = None
        self._prefetch_gen = 0
        self.min_score = cfg.min_score
        self.timing = _Timing()
        self.words = band_words(db)
        self.bands = self.words.bands if self.words is not None else db.score_bands()
        self.loader = ModelLoader(self._load_model, f"the image model ({_model_label(db)})", self._show_status)

        g = self.gallery = GalleryWidget(mode="image")
        legend, note = band_legend(self.bands, self.words)
        speed = self._speed_control_spec()
        with g.hold_sync():
            g.header = database_header(db, "Similar images", "images")
            g.controls = {"random_label": "Random image", "random_title": "Search with a random image of the database",
                          "upload": True, "placeholder": "Paste an image URL and press Enter",
                          "go_label": "Search URL", "max_k": MAX_K, "include_query_option": True}
            g.upload = {"enabled": True, "limit": cfg.max_upload_bytes, "accept": UPLOAD_ACCEPT}
            g.k, g.tile, g.include_query = int(cfg.k), cfg.tile, cfg.include_query
            g.speed_spec = speed
            g.speed = int(speed.get("default", 1))
            g.bands, g.bands_note = legend, note
            g.present = cfg.present
            g.empty = self._first_screen()
        g.handlers.update({
            "ready": self._on_ready,
            "random": lambda: self._safely(self.search_random),
            "sample": lambda id=0: self._safely(self.search_id, int(id)),
            "url": lambda url="": self._safely(self.search_url, url),
            "search": lambda index=0: self._safely(self.search_result, int(index)),
            "upload": lambda data, name: self._safely(self.search_upload, data, name),
            "upload_started": self._on_upload_started,
            "upload_error": self._show_error,
            "preview_image": self.preview_image,
        })
        g.target_of = self._target
        if cfg.explain and _explainable(db):
            self.add_lightbox_action("explain", "Explain", self.explain_result, tooltip=EXPLAIN_TOOLTIP)
        g.observe(self._on_params, names=["k", "exact", "speed", "include_query"])
        g.observe(self._on_filter, names=["min_band"])
        self.widget = g
        self._show_status()

    # ------------------------------------------------------------ construction
    @classmethod
    def from_path(cls, path: str | os.PathLike[str], *, k: int = 8, weights: str | None = None,
                  **config: Any) -> SimilarImagesApp:
        """Open a database folder and build the app.

        Args:
            path: The database folder.
            k: Number of results shown at first.
            weights: Weights of the query model, overriding the database's
                (e.g. a local file when the database was built with ``imagenet``).
            **config: More :class:`AppConfig` fields.

        Raises:
            DatabaseError: If there is no usable database at ``path``.
        """
        live = LiveDatabase(path, weights=weights or None)
        app = cls(live.get(), AppConfig(k=k, **config))
        app._live = live
        app._show_status()
        return app

    @property
    def db(self) -> Database:
        """The database searched: the newest version of its folder when the app was opened from one (new shards
        of its extraction, adds, removes and a new index show without reopening the app)."""
        if self._live is not None:
            newest = self._live.current()
            if newest is not None:
                self._db = newest
        return self._db

    @db.setter
    def db(self, value: Database) -> None:
        self._db = value

    def _speed_control_spec(self) -> JSON:
        """The index's speed/accuracy parameter, for its slider (empty when it has none)."""
        if self.db.index is None:
            return {}
        params = self.db.search_defaults
        if "nprobe" in params:
            ivf = ivf_of(self.db.index)
            nlist = int(ivf.nlist) if ivf is not None else max(int(params["nprobe"]), 1) * 8
            return {"name": "nprobe", "default": int(params["nprobe"]), "min": 1, "max": nlist}
        if "efSearch" in params:
            return {"name": "efSearch", "default": int(params["efSearch"]), "min": 1, "max": 1024}
        return {}

    def _first_screen(self) -> dict[str, object]:
        """What the page shows before the first search: how to start, and sample photos of the database to click."""
        text = ("Click a photo below, or Random image, upload a photo (or drop one here), or paste an image URL to "
                "find the most similar images in the database.")
        live = self.db.live_ids()
        n = min(self.config.samples, len(live))
        if n == 0:
            return {"text": text.replace("Click a photo below, or ", "Click ")}
        picks = np.sort(np.random.default_rng(self.config.seed).choice(live, n, replace=False))
        return {"text": text, "samples": [{"id": int(i), "name": Path(self.db.items[int(i)]).name,
                                           "thumb": self._thumb(self.db.items[int(i)])} for i in picks]}

    # ------------------------------------------------------------ the model
    def _load_model(self) -> None:
        self.db.embedder.warm_up()  # type: ignore[attr-defined]
        if any(a["name"] == "explain" for a in self.gallery.actions):
            # The explainer's feature-map model too, with one explanation of two database photos: the first
            # Explain click of a class then takes a fraction of a second, not the seconds a model build takes.
            live = self.db.live_ids()
            if len(live) >= 2:
                try:
                    explain(self.db, int(live[0]), int(live[1]))
                except SimilarImagesError:
                    logger.warning("Could not prepare explanations", exc_info=True)

    def preload_model(self) -> None:
        """Start loading the query model in the background (uploads and URLs wait for it)."""
        self.loader.start()

    def _on_ready(self) -> None:
        """The page shows the app: start loading the model (if wanted), so the first upload does not wait."""
        if self.config.preload_model:
            self.loader.start()

    def close(self) -> None:
        """Close the app's widget (frees it in the kernel and the browser)."""
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=False, cancel_futures=True)
        super().close()

    # ------------------------------------------------------------ state readers
    @property
    def query(self) -> QueryInfo | None:
        """The current query."""
        return self._query

    @property
    def query_label(self) -> str:
        """Short description of the current query (file name, upload name or URL)."""
        return self._query.name if self._query else ""

    def add_lightbox_action(self, name: str, label: str, callback: Callable[[ActionTarget], object], *,
                            tooltip: str = "", query: bool = False) -> None:
        """Add a button to the lightbox (see :mod:`similar_images.apps.gallery`, "Lightbox actions")."""
        self.gallery.add_action(name, label, callback, tooltip=tooltip, query=query)

    def explain_result(self, target: ActionTarget) -> ActionResult:
        """The lightbox's "Explain" action: which regions of the query and of the result make them similar.

        Args:
            target: The result shown in the lightbox (``target.match``) and the query.

        Returns:
            An :class:`ActionResult` the page draws (``kind="explain"``): the query and the result side by side, the
            regions that make the match lit, one plain sentence ("62% of this match comes from the highlighted
            area"), and the exact figures behind a "details" toggle. "#" is the result's rank, as in the grid.

        Raises:
            QueryError: For the query itself (open a result to explain it) or a query without an image.
        """
        query: QueryInfo = target.query
        if target.match is None:
            raise QueryError("Open a result to explain why it is similar to the query")
        source: int | bytes | None = query.id if query.id is not None else query.data
        if source is None:
            raise QueryError("This query has no image to explain")
        self.loader.wait()  # the explainer shares the query model's weights
        with quiet_output():
            explanation = explain(self.db, source, int(target.match.id))
        return explanation_for_page(explanation, rank=int(target.match.rank), query_key=query.key,
                                    result_key=f"db:{target.match.id}")

    # ------------------------------------------------------------ searches
    def search_random(self) -> Results:
        """Search with a random database image (its stored vector: no model run)."""
        live = self.db.live_ids()
        pick = int(self._rng.choice(live))
        if self._query is not None and self._query.id == pick and len(live) > 1:
            pick = int(self._rng.choice(live[live != pick]))
        return self.search_id(pick)

    def search_id(self, item_id: int) -> Results:
        """Search with database image ``item_id`` (its stored vector: no model run).

        Raises:
            QueryError: If the id is unknown or removed.
        """
        def build() -> QueryInfo:
            i = self.db.check_id(item_id)
            path = self.db.items[i]
            return QueryInfo("id", Path(path).name, f"database image #{i}", path,
                             self._thumb(path, self.config.query_size), f"db:{i}", id=i)

        return self._run(build)

    def search_result(self, index: int) -> Results:
        """Search with the result shown at ``index`` (0 for the first), as its "Search similar" button does.

        Raises:
            QueryError: If there is no such result.
        """
        if not 0 <= index < len(self._shown):
            exc = QueryError(f"There is no result #{index + 1} to search with")
            self._show_error(exc)
            raise exc
        return self.search_id(self._shown[index].id)

    def search_path(self, path: str | os.PathLike[str]) -> Results:
        """Search with an image file on the server (the model runs on it).

        Raises:
            QueryError, ImageLoadError: If the file is missing or not a readable image.
        """
        p = Path(path).expanduser()

        def build() -> QueryInfo:
            if not p.is_file():
                raise QueryError(f"No such image file: {p}")
            data = p.read_bytes()
            return self._embedded_query("path", p.name, f"file, {_mb(len(data))}", str(p), data)

        return self._run(build, slow=True)

    def search_upload(self, data: bytes | bytearray | memoryview, name: str = "upload") -> Results:
        """Search with the bytes of an uploaded image file.

        Raises:
            QueryError: If the file is larger than ``config.max_upload_bytes``, or empty.
            ImageLoadError: If it is not a readable image.
        """
        def build() -> QueryInfo:
            size = len(data) if not isinstance(data, memoryview) else data.nbytes
            if size > self.config.max_upload_bytes:
                raise QueryError(f"'{name}' is {_mb(size)}; the upload limit is {_mb(self.config.max_upload_bytes)}. "
                                 "Use a smaller image (or a copy saved at a lower resolution).")
            if size == 0:
                raise QueryError(f"'{name}' is empty (0 bytes). Upload an image file.")
            return self._embedded_query("upload", name, f"uploaded, {_mb(size)}", name, bytes(data))

        return self._run(build, slow=True)

    def search_url(self, url: str) -> Results:
        """Search with the image at an http(s) URL (an address without a scheme is tried as https).

        Raises:
            QueryError: If the URL is unusable, unreachable, not an image, or too large.
            ImageLoadError: If the download is not a readable image.
        """
        text = str(url).strip()

        def build() -> QueryInfo:
            if not text:
                raise QueryError("Paste the address of an image first (for example https://example.org/cat.jpg).")
            # The box only takes addresses: one without a scheme ("www.example.org/cat.jpg") is tried as https.
            full = check_url(text if "://" in text else "https://" + text)
            self._set_busy(note=f"Fetching {full} \u2026")
            data = fetch_url(full, self.config.fetch)
            name = Path(full.split("?", 1)[0].rstrip("/")).name or full
            return self._embedded_query("url", name, full, full, data)

        return self._run(build, slow=True)

    # ------------------------------------------------------------ large images
    def preview_image(self, key: str) -> bytes | None:
        """The lightbox image (JPEG, at most ``config.preview_size`` pixels) for ``key``: ``db:<id>`` or a
        query's key; ``None`` if unknown."""
        cached = self._previews.get(key)
        if cached is not None:
            self._previews.move_to_end(key)
            return cached
        source: str | bytes | None = None
        if key.startswith("db:"):
            i = self.db.check_id(int(key[3:]))
            source = self.db.items[i]
        elif self._query is not None and key == self._query.key:
            source = self._query.data if self._query.data is not None else self._query.title
        if source is None:
            return None
        try:
            data = make_thumbnail(source, self.config.preview_size, quality=85)
        except ImageLoadError as exc:
            logger.warning("No large image for %s: %s", key, exc)
            return placeholder_thumbnail(480, "cannot be shown")
        self._previews[key] = data
        while len(self._previews) > 24:
            self._previews.popitem(last=False)
        return data

    # ------------------------------------------------------------ internals
    def _target(self, index: int) -> ActionTarget:
        if index >= len(self._shown) or self._query is None:
            raise QueryError("That result is not shown any more")
        return ActionTarget(index=index, match=self._shown[index] if index >= 0 else None, query=self._query, app=self)

    def _thumb(self, path: str, size: int | None = None) -> bytes:
        try:
            return self.thumbnails.get(path, size)
        except ImageLoadError as exc:
            logger.warning("No thumbnail for %s: %s", path, exc)
            return placeholder_thumbnail(size or self.config.thumb_size, "image missing")

    def _embedded_query(self, kind: str, name: str, detail: str, title: str, data: bytes) -> QueryInfo:
        """Embed image bytes with the database's model (waits for the model if it is still loading)."""
        t0 = time.perf_counter()
        try:
            thumb = make_thumbnail(data, self.config.query_size)  # checks the image before waiting for the model
        except ImageLoadError as exc:
            raise unreadable_image(name, exc) from exc
        key = f"q:{next(self._keys)}"
        if kind != "upload" or not self.loader.ready:
            # The picture (an upload is already shown by the page itself), and why it waits if it does.
            self._set_query(QueryInfo(kind, name, detail, title, thumb, key, data=data), busy=True,
                            note="" if self.loader.ready else "Waiting for the model to load \u2026")
        self.loader.wait()
        with quiet_output():
            vectors, _ = query_vectors(self.db, [data])
        return QueryInfo(kind, name, detail, title, thumb, key, vector=vectors[0], data=data,
                         embed_ms=(time.perf_counter() - t0) * 1e3)

    def _search(self, query: QueryInfo) -> Results:
        g = self.gallery
        exact = bool(g.exact)
        nprobe = ef_search = None
        spec = g.speed_spec
        if spec and not exact:
            if spec["name"] == "nprobe":
                nprobe = int(g.speed)
            else:
                ef_search = int(g.speed)
        if query.id is not None:
            return self.db.search(query.id, self.k, exclude_query=not g.include_query, exact=exact, nprobe=nprobe,
                                  ef_search=ef_search)
        # one query: one Faiss thread (see search.py)
        results = self.db.search(query.vector, self.k, exact=exact, nprobe=nprobe, ef_search=ef_search)
        results.query_id = None
        return results

    def _run(self, build: Callable[[], QueryInfo], *, slow: bool = False) -> Results:
        t0 = time.perf_counter()
        if slow:
            self._set_busy()
        try:
            query = build()
            results = self._search(query)
        except BaseException as exc:
            self._show_error(exc)
            raise
        self.timing = _Timing(embed_ms=query.embed_ms, search_ms=results.search_ms,
                              total_ms=(time.perf_counter() - t0) * 1e3)
        self._render(query, results)
        return results

    def _rerun(self) -> None:
        """Search again with the current query (after a parameter change)."""
        if self._query is None:
            return
        query = self._query
        query.embed_ms = 0.0
        self._safely(self._run, lambda: query)

    def _render(self, query: QueryInfo, results: Results) -> None:
        self._query, self._results, self._message = query, results, ""
        g = self.gallery
        what = "other images" if query.id is not None and not g.include_query else "images"
        title = self._keep_shown(results, what, self.min_score)
        new_query = query is not self._shown_query
        self._shown_query = query
        items = []
        for m in self._shown:
            words, words_title = self.words.words(m.score) if self.words is not None else ("", "")
            items.append({"id": m.id, "rank": m.rank, "score": round(float(m.score), 4),
                          "band": self.bands.band(m.score) if self.bands else "", "words": words,
                          "words_title": words_title, "name": Path(m.path).name,
                          "title": m.path if self.config.show_paths else Path(m.path).name,
                          "thumb": self._thumb(m.path), "key": f"db:{m.id}", "is_query": m.id == query.id})
        with g.hold_sync():
            g.query = self._query_dict(query)
            g.results = items
            g.results_title = title
            g.message = {}
            g.state = "idle"
            g.selected = -1 if new_query else min(g.selected, len(items) - 1)  # a new query: no selection yet
            g.empty = self._empty_after_filter()
            g.render_id += 1
            g.status = self._status_dict()
        self._prefetch([m.path for m in self._shown])

    def _prefetch(self, paths: list[str]) -> None:
        """Make the query-panel images of the results shown, in the background: "Search similar" on any of them
        then finds its picture ready."""
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="similar-images-thumbnails")
        self._prefetch_gen += 1
        gen = self._prefetch_gen

        def work() -> None:
            for path in paths:
                if gen != self._prefetch_gen:
                    return  # a newer search: its results matter now
                try:
                    self.thumbnails.get(path, self.config.query_size)
                except ImageLoadError:
                    pass

        self._prefetcher.submit(work)

    def _query_dict(self, query: QueryInfo, note: str = "") -> dict[str, object]:
        title = query.title if self.config.show_paths or query.kind in ("url", "upload") else query.name
        detail = query.detail if self.config.show_paths or query.kind != "path" else "file on the server"
        return {"name": query.name, "title": title, "detail": detail, "thumb": query.thumb,
                "key": query.key, "note": note}

    def _set_query(self, query: QueryInfo, *, busy: bool, note: str = "") -> None:
        with self.gallery.hold_sync():
            self.gallery.query = self._query_dict(query, note)
            if busy:
                self.gallery.state = "busy"

    def _set_busy(self, note: str = "") -> None:
        g = self.gallery
        with g.hold_sync():
            g.state = "busy"
            g.message = {}
            if note and g.query:
                g.query = {**g.query, "note": note}

    def _on_upload_started(self, name: str, size: int) -> None:
        with self.gallery.hold_sync():
            self.gallery.state = "busy"
            self.gallery.message = {}

    def _status_dict(self) -> dict[str, object]:
        status: dict[str, object] = {"model": self.loader.status()}
        r = self._results
        if r is not None:
            if r.params.get("exact"):
                how = "exact search"
            elif self.db.manifest.index is not None and self.db.manifest.index.factory.lower().endswith("flat") \
                    and "," not in self.db.manifest.index.factory:
                how = "exact index"
            else:
                extra = [f"{k} {v}" for k, v in r.params.items() if k in ("nprobe", "efSearch")]
                how = "approximate index" + (f", {', '.join(extra)}" if extra else "")
            t = self.timing
            model = f" \u00b7 model {t.embed_ms:.0f} ms" if t.embed_ms else ""
            status["timing"] = f"Found in {r.search_ms:.1f} ms ({how}){model} \u00b7 total {t.total_ms:.0f} ms"
            status["timing_title"] = ", ".join(f"{k}={v}" for k, v in r.params.items())
        sentence = progress_sentence(self._live.progress()) if self._live is not None else None
        if sentence:  # a database still being built says how far it has got
            status["timing"] = sentence + (f" \u00b7 {status['timing']}" if status.get("timing") else "")
        return status

    def _show_status(self) -> None:
        self.gallery.status = self._status_dict()

    def _set_message(self, text: str, kind: str = "error") -> None:
        self._message = text
        self.gallery.message = {"text": text, "kind": kind} if text else {}

    def _show_error(self, exc: BaseException) -> None:
        if not isinstance(exc, (SimilarImagesError, KeyboardInterrupt, SystemExit)):
            logger.error("Error in the app", exc_info=exc)
        g = self.gallery
        with g.hold_sync():
            self._set_message(user_message(exc))
            # Results from before stay visible, dimmed, under the message; the query they belong to is restored.
            g.state = "stale" if self._results is not None else "idle"
            g.query = self._query_dict(self._query) if self._query is not None else {}
            g.status = self._status_dict()

    def _safely(self, func: Callable[..., object], *args: object, **kwargs: object) -> object:
        """Run an action from the page: errors are shown in the app, never raised."""
        try:
            return func(*args, **kwargs)
        except Exception:  # noqa: BLE001  (already shown in the app by _run; a callback must not raise)
            return None

    # ------------------------------------------------------------ page controls
    def _on_params(self, _change: JSON) -> None:
        self._rerun()

    def _on_filter(self, _change: JSON) -> None:
        if self._query is not None and self._results is not None:
            self._render(self._query, self._results)


# ---------------------------------------------------------------------------- explanations a class can read

#: A cell of a map is highlighted when it holds at least this share of the map's largest value.
HIGHLIGHT = 0.5


def _highlight_share(grid_map: np.ndarray) -> tuple[float, float]:
    """``(share of the map's positive total in its highlighted cells, share of the cells highlighted)``."""
    m = np.clip(np.asarray(grid_map, dtype=np.float64), 0.0, None)
    total = float(m.sum())
    if total <= 0:
        return 0.0, 0.0
    lit = m >= HIGHLIGHT * m.max()
    return float(m[lit].sum()) / total, float(lit.mean())


def explanation_for_page(explanation: Explanation, *, rank: int, query_key: str, result_key: str) -> ActionResult:
    """What the lightbox draws for an explanation (see :meth:`SimilarImagesApp.explain_result`).

    Both maps go to the page on one colour scale (0 to 1, their common positive maximum), so that it lights the
    regions that add the most to the score on both photos; the sentence is about the result's highlighted cells.
    """
    e = explanation
    vmax = max(float(np.max(e.query_map)), float(np.max(e.result_map)), 1e-12)

    def scaled(grid_map: np.ndarray) -> list[list[float]]:
        return np.round(np.clip(np.asarray(grid_map, dtype=np.float64) / vmax, 0.0, 1.0), 3).tolist()

    share, area = _highlight_share(e.result_map)
    if e.approximate:
        sentence = (f"The highlighted area ({area:.0%} of the picture) is where the model looked most to match "
                    "these photos (an estimate).")
    else:
        sentence = f"{share:.0%} of this match comes from the highlighted area ({area:.0%} of the picture)."
    details = [f"score {e.score:.4f} (cosine similarity of the two photos' features)",
               f"method {e.method} over a {e.grid[0]}x{e.grid[1]} grid of {e.model}'s layer {e.layer}",
               f"map values: {e.units}",
               f"highlighted: cells of at least {HIGHLIGHT:.0%} of the largest value; they hold {share:.1%} of the "
               f"result map's positive total",
               f"largest cell: {vmax:.5f} of the score"]
    if e.stored_score is not None:
        details.append(f"stored vectors' score {e.stored_score:.4f}")
    return ActionResult("explain", title=f"Why #{rank} is similar", text=sentence, data={
        "query_key": query_key, "result_key": result_key, "query_map": scaled(e.query_map),
        "result_map": scaled(e.result_map), "rank": rank, "details": details, "approximate": bool(e.approximate)})


# ---------------------------------------------------------------------------- opening


def _build_commands(path: str) -> list[str]:
    return [f"similar-images extract IMAGES {path}", f"similar-images build-index {path}"]


_NOTE = ("IMAGES is a folder of images. Or, from the project folder, 'bash data_scripts/quickstart.sh' downloads the "
         "MS-COCO photos and builds data/coco-db. Or point SIMILAR_IMAGES_DB at an existing database.")


def _kind(folder: Path) -> str | None:
    """The kind of items of the database in ``folder`` (``None`` when it cannot be read: the image app says why)."""
    try:
        return Manifest.load(folder).kind
    except DatabaseError:
        return None


def open_app(path: str | os.PathLike[str], *, k: int = 8, weights: str | None = None,
             preload_model: bool = True, **config: Any) -> SimilarImagesApp | TextSearchApp | DatabaseMessage:
    """Build the app for the database at ``path``, or explain how to build the database.

    This is what the notebook calls: it never raises for a missing or
    damaged database, it returns a :class:`DatabaseMessage` (displayed as
    HTML, with the commands that build one) instead. A text database opens
    the text-search app (:func:`~similar_images.apps.text_app.text_search_app`).

    Args:
        path: The database folder (see :func:`find_database` for relative paths).
        k: Number of results shown at first.
        weights: Query-model weights overriding the database's (a local file).
        preload_model: Start loading the query model at once (in the background): in a pre-heated Voilà kernel it
            is ready before the first visitor.
        **config: More :class:`AppConfig` fields.

    Raises:
        ConfigError: For invalid settings (e.g. ``k`` out of range).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up lines (the rest: quiet_output)
    log_to_file()
    resolved = find_database(path)
    if _kind(resolved) == "text":
        if weights is not None or config:
            raise ConfigError(f"{path} holds texts: weights and {sorted(config) or 'the image settings'} apply to "
                              "image databases")
        return text_search_app(resolved, k=k)
    try:
        app = SimilarImagesApp.from_path(resolved, k=k, weights=weights, preload_model=preload_model, **config)
    except DatabaseError as exc:
        logger.info("No app for %s: %s", resolved, exc)
        return no_database_message(path, exc, what="image database", commands=_build_commands(str(path)),
                                   note=_NOTE)
    if preload_model:
        # Now, not when the page shows the app: Voilà runs the notebook in a pre-heated kernel before the first
        # visitor comes, so the model is ready when the page opens.
        app.preload_model()
    return app
