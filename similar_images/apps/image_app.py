"""The image-search app for Jupyter (JupyterLab, Notebook 7) and Voilà, built with ipywidgets.

Query an image database with a random database photo, an uploaded image or an
image URL, and browse the ``k`` most similar photos as thumbnails; each
result's "Search similar" button makes it the new query.

In a notebook::

    from similar_images.apps import open_app
    app = open_app("data/coco-db", k=8)
    app                      # displays the app (or how to build the database)

Or as a standalone app: ``voila notebooks/similar_images.ipynb``.

The app is also driven from Python, which is how it is tested::

    app.search_random(); app.search_id(3); app.search_upload(jpeg_bytes); app.search_url(url)
    app.results              # the last :class:`~similar_images.search.Results`
    app.result_cards[0].button.click()
    app.message              # the message shown for a bad input ("" when none)

Thumbnails are made on the server (:mod:`similar_images.sources.thumbnails`),
small and cached: full-size photos never go to the browser.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as w
import numpy as np

from .._util.http import AddressPolicy, FetchConfig, fetch_url
from ..embed import item_kind
from ..errors import ConfigError, DatabaseError, ImageLoadError, QueryError
from ..index import ivf_of
from ..search import Match, Results, query_vectors
from ..sources.thumbnails import ThumbnailCache, ThumbnailConfig, make_thumbnail, placeholder_thumbnail
from ..store import Database
from .common import DatabaseMessage, find_database, no_database_message, user_message

__all__ = [
    "AppConfig",
    "ResultCard",
    "SimilarImagesApp",
    "open_app",
    "MAX_K",
    "UPLOAD_ACCEPT",
]

logger = logging.getLogger(__name__)

#: Largest number of results the app shows.
MAX_K = 50

#: File types offered by the upload dialog.
UPLOAD_ACCEPT = ".jpg,.jpeg,.png,.gif,.bmp,.webp,.tif,.tiff,image/*"

_CSS = """
<style>
.si-app { font-family: var(--jp-ui-font-family, system-ui, sans-serif); color: var(--jp-ui-font-color1, #222); }
.si-header h2 { margin: 0 0 2px 0; font-size: 1.45em; font-weight: 600; }
.si-header .si-sub { color: var(--jp-ui-font-color2, #666); font-size: 0.92em; }
.si-toolbar { align-items: center; gap: 8px; }
.si-query { gap: 18px; margin-bottom: 14px; }
.si-qcap { overflow: hidden; line-height: 1.5; }
.si-qname { font-size: 1.1em; font-weight: 600; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.si-qdetail { color: var(--jp-ui-font-color2, #666); font-size: 0.9em; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; }
.si-status { color: var(--jp-ui-font-color2, #555); font-size: 0.92em; }
.si-status b { color: var(--jp-ui-font-color1, #222); }
.si-msg { border-radius: 6px; padding: 8px 12px; font-size: 0.95em; white-space: pre-wrap; }
.si-msg.si-error { background: #fdecea; color: #8a1c13; border: 1px solid #f5c2bd; }
.si-msg.si-info { background: #e8f1fb; color: #12406d; border: 1px solid #bcd6f2; }
.si-panel-title { font-weight: 600; font-size: 0.95em; margin: 0 0 6px 0; color: var(--jp-ui-font-color1, #222); }
.si-panel-title span { font-weight: 400; color: var(--jp-ui-font-color2, #666); }
.si-card, .si-query { border: 1px solid var(--jp-border-color2, #e0e0e0); border-radius: 8px;
  background: var(--jp-layout-color1, #fff); box-shadow: 0 1px 3px rgba(0,0,0,0.08); padding: 8px; }
.si-card.si-self { border-color: #5b9bd5; }
.si-thumb img, img.si-thumb { background: var(--jp-layout-color2, #f5f5f5); border-radius: 4px; }
.si-cap { font-size: 0.86em; line-height: 1.35; overflow: hidden; }
.si-cap .si-row { display: flex; justify-content: space-between; align-items: baseline; }
.si-cap .si-rank { font-weight: 600; }
.si-cap .si-score { font-variant-numeric: tabular-nums; font-weight: 600; color: #1f6fb2; }
.si-cap .si-bar { height: 4px; background: #e4e8ee; border-radius: 2px; margin: 3px 0 4px 0; }
.si-cap .si-bar div { height: 4px; background: #5b9bd5; border-radius: 2px; }
.si-cap .si-name { color: var(--jp-ui-font-color2, #555); white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.si-empty { color: var(--jp-ui-font-color2, #666); padding: 24px 4px; }
</style>
"""


@dataclass(frozen=True)
class AppConfig:
    """Settings of the app.

    Attributes:
        k: Number of results shown at first (1 to :data:`MAX_K`).
        columns: Thumbnails per row.
        thumb_size: Longest side of result thumbnails, in pixels.
        query_thumb_size: Longest side of the query thumbnail.
        max_upload_bytes: Largest accepted upload (and URL download).
        url_timeout: Seconds allowed for fetching a URL.
        preload_model: Load the query model in a background thread at start,
            so the first upload or URL query does not wait for it.
        seed: Seed of the random-image picker (``None``: unpredictable).
    """

    k: int = 8
    columns: int = 4
    thumb_size: int = 160
    query_thumb_size: int = 200
    max_upload_bytes: int = 20 * 1024 * 1024
    url_timeout: float = 10.0
    preload_model: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= MAX_K:
            raise ConfigError(f"k must be an integer from 1 to {MAX_K}, got {self.k!r}")
        if not 1 <= self.columns <= 12:
            raise ConfigError(f"columns must be 1 to 12, got {self.columns}")
        if self.max_upload_bytes < 1:
            raise ConfigError("max_upload_bytes must be positive")

    @property
    def fetch(self) -> FetchConfig:
        """Limits used for URL queries (the app runs on the user's own machine: local addresses are allowed)."""
        return FetchConfig(timeout=self.url_timeout, max_bytes=self.max_upload_bytes,
                           policy=AddressPolicy(allow_private=True))


@dataclass
class _Query:
    kind: str  # "id" | "upload" | "url" | "path"
    label: str
    detail: str
    thumbnail: bytes
    id: int | None = None
    vector: np.ndarray | None = None
    embed_ms: float = 0.0


@dataclass
class _Timing:
    embed_ms: float = 0.0
    search_ms: float = 0.0
    total_ms: float = 0.0


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{max(n, 1) / 1024:.0f} KB"


def _short_path(path: Path) -> str:
    """``path`` relative to the current folder when that is shorter."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


class ResultCard:
    """One result tile: thumbnail, rank, score, file name and a "Search similar" button.

    Attributes:
        image: The thumbnail (``ipywidgets.Image``, JPEG).
        caption: Rank, score and file name (``ipywidgets.HTML``).
        button: "Search similar": makes this result the new query.
        widget: The tile (``ipywidgets.VBox``).
        match: The :class:`~similar_images.search.Match` shown, or ``None``.
    """

    def __init__(self, app: SimilarImagesApp, size: int) -> None:
        self.match: Match | None = None
        self.image = w.Image(format="jpeg", layout=w.Layout(width=f"{size}px", height=f"{size}px",
                                                            object_fit="contain"))
        self.image.add_class("si-thumb")
        self.caption = w.HTML(layout=w.Layout(width=f"{size}px", margin="4px 0 0 0"))
        self.button = w.Button(description="Search similar", icon="search", tooltip="Use this image as the query",
                               layout=w.Layout(width=f"{size}px", height="28px", margin="4px 0 0 0"))
        self.widget = w.VBox([self.image, self.caption, self.button],
                             layout=w.Layout(width=f"{size + 18}px", align_items="center"))
        self.widget.add_class("si-card")
        self._app = app
        self._size = size
        self.button.on_click(self._clicked)

    def _clicked(self, _button: Any = None) -> None:
        if self.match is not None:
            self._app._safely(self._app.search_id, self.match.id)

    def show(self, match: Match, thumbnail: bytes, *, is_query: bool = False) -> None:
        """Display ``match`` with its thumbnail."""
        self.match = match
        self.image.value = thumbnail
        name = Path(match.path).name
        pct = max(0.0, min(1.0, match.score)) * 100
        tag = " <span title='the query itself'>(query)</span>" if is_query else ""
        self.caption.value = (
            f"<div class='si-cap' style='width:{self._size}px'><div class='si-row'>"
            f"<span class='si-rank'>#{match.rank}{tag}</span>"
            f"<span class='si-score' title='cosine similarity'>{match.score:.3f}</span></div>"
            f"<div class='si-bar'><div style='width:{pct:.0f}%'></div></div>"
            f"<div class='si-name' title='{html.escape(match.path, quote=True)}'>{html.escape(name)}</div></div>"
        )
        if is_query:
            self.widget.add_class("si-self")
        else:
            self.widget.remove_class("si-self")


class SimilarImagesApp:
    """Interactive similar-image search over a :class:`~similar_images.store.Database`.

    Display it in a notebook by making it the last expression of a cell
    (or ``display(app.widget)``).

    The ``search_*`` methods run a query, show its results, and return them;
    on a bad input they show the reason in the app and raise it
    (:class:`~similar_images.errors.QueryError` or
    :class:`~similar_images.errors.ImageLoadError`). The widget callbacks
    (buttons, upload, URL box) catch those errors, so the app never shows a
    traceback and stays usable.

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
        self.db = db
        self.config = config or AppConfig()
        self.thumbnails = thumbnails or ThumbnailCache(ThumbnailConfig(size=self.config.thumb_size))
        self._rng = np.random.default_rng(self.config.seed)
        self._model_lock = threading.Lock()
        self._preload_thread: threading.Thread | None = None
        self._query: _Query | None = None
        self._results: Results | None = None
        self._message = ""
        self._cards: list[ResultCard] = []
        self._last_url = ""
        self._last_url_done = 0.0
        self.timing = _Timing()

        cfg = self.config
        # ---- header
        idx = db.manifest.index
        index_text = idx.factory + " index" if idx else "no index (exact search)"
        self.header = w.HTML(
            _CSS + "<div class='si-header'><h2>Similar images</h2>"
            f"<div class='si-sub'>{len(db):,} images &middot; model {html.escape(db.model_name)} ({db.dim}-d) "
            f"&middot; {html.escape(index_text)} &middot; <code>{html.escape(_short_path(db.path))}</code></div></div>"
        )
        # ---- query inputs
        self.random_button = w.Button(description="Random image", icon="random", button_style="primary",
                                      tooltip="Search with a random image of the database",
                                      layout=w.Layout(width="150px"))
        self.upload = w.FileUpload(accept=UPLOAD_ACCEPT, multiple=False, description="Upload image",
                                   icon="upload", tooltip=f"An image file up to {_mb(cfg.max_upload_bytes)}",
                                   layout=w.Layout(width="150px"))
        self.url_text = w.Text(placeholder="Paste an image URL (https://...) and press Enter",
                               continuous_update=False, layout=w.Layout(width="380px"))
        self.url_button = w.Button(description="Search URL", icon="search", tooltip="Search with the image at the URL",
                                   layout=w.Layout(width="120px"))
        # ---- search parameters
        self.k_slider = w.IntSlider(value=cfg.k, min=1, max=MAX_K, step=1, description="Results",
                                    continuous_update=False, style={"description_width": "56px"},
                                    layout=w.Layout(width="260px"))
        self.exact_checkbox = w.Checkbox(value=False, description="Exact search", indent=False,
                                         tooltip="Brute force over all stored vectors (slower, always exact)",
                                         layout=w.Layout(width="120px"))
        self.speed_param, speed_default, speed_max = self._speed_control_spec()
        self.speed_slider = w.IntSlider(
            value=speed_default, min=1, max=max(speed_max, 1), description=self.speed_param or "nprobe",
            continuous_update=False, style={"description_width": "56px"}, layout=w.Layout(width="250px"),
            tooltip="Higher: more accurate, slower" if self.speed_param else "",
        )
        if self.speed_param is None:
            self.speed_slider.layout.display = "none"
        self.status = w.HTML("<span class='si-status'>Ready.</span>")
        self.message_box = w.HTML(layout=w.Layout(display="none", margin="4px 0"))
        # ---- results
        self.query_image = w.Image(format="jpeg", layout=w.Layout(
            width=f"{cfg.query_thumb_size}px", height=f"{cfg.query_thumb_size}px", object_fit="contain"))
        self.query_image.add_class("si-thumb")
        grid_width = cfg.columns * (cfg.thumb_size + 18) + (cfg.columns - 1) * 12
        self.query_caption = w.HTML(layout=w.Layout(flex="1 1 auto", min_width="0"))
        self.query_panel = w.HBox([self.query_image, self.query_caption], layout=w.Layout(
            width=f"{grid_width}px", max_width="100%", align_items="center", display="none"))
        self.query_panel.add_class("si-query")
        self.results_title = w.HTML()
        cols = f"repeat({cfg.columns}, {cfg.thumb_size + 18}px)"
        self.grid = w.GridBox([], layout=w.Layout(grid_template_columns=cols, grid_gap="12px"))
        self.empty_hint = w.HTML(
            "<div class='si-empty'>Click <b>Random image</b>, upload a photo, or paste an image URL "
            "to find the most similar images in the database.</div>")
        body = w.VBox([self.query_panel, self.results_title, self.grid, self.empty_hint],
                      layout=w.Layout(margin="10px 0 0 0"))
        row1 = w.HBox([self.random_button, self.upload, self.url_text, self.url_button],
                      layout=w.Layout(flex_flow="row wrap", align_items="center", margin="8px 0 2px 0"))
        row2 = w.HBox([self.k_slider, self.exact_checkbox, self.speed_slider, self.status],
                      layout=w.Layout(flex_flow="row wrap", align_items="center"))
        row1.add_class("si-toolbar")
        row2.add_class("si-toolbar")
        self.widget = w.VBox([self.header, row1, row2, self.message_box, body], layout=w.Layout(padding="4px"))
        self.widget.add_class("si-app")

        # ---- callbacks
        self.random_button.on_click(lambda _b: self._safely(self.search_random))
        self.url_button.on_click(self._on_url_button)
        self.url_text.observe(self._on_url_value, names="value")
        self.upload.observe(self._on_upload, names="value")
        self.k_slider.observe(self._on_params, names="value")
        self.exact_checkbox.observe(self._on_exact, names="value")
        self.speed_slider.observe(self._on_params, names="value")
        if self.config.preload_model:
            self.preload_model()

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
        db = Database.open(path, weights=weights or None)
        return cls(db, AppConfig(k=k, **config))

    def _speed_control_spec(self) -> tuple[str | None, int, int]:
        """Which speed/accuracy parameter the index has: (name, default, max)."""
        if self.db.index is None:
            return None, 1, 1
        params = self.db.search_defaults
        if "nprobe" in params:
            ivf = ivf_of(self.db.index)
            nlist = int(ivf.nlist) if ivf is not None else max(int(params["nprobe"]), 1) * 8
            return "nprobe", int(params["nprobe"]), nlist
        if "efSearch" in params:
            return "efSearch", int(params["efSearch"]), 1024
        return None, 1, 1

    def preload_model(self) -> threading.Thread:
        """Load the query model in a background thread (uploads and URLs wait for it)."""
        if self._preload_thread is None:
            def load() -> None:
                with self._model_lock:
                    try:
                        self.db.embedder.warm_up()  # type: ignore[attr-defined]
                    except Exception:  # reported again, to the user, on the first upload
                        logger.warning("Could not preload the query model", exc_info=True)

            self._preload_thread = threading.Thread(target=load, name="similar-images-preload", daemon=True)
            self._preload_thread.start()
        return self._preload_thread

    # ------------------------------------------------------------ display
    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        """Close every widget of the app (frees them in the kernel and the browser)."""
        def close_tree(widget: Any) -> None:
            for child in getattr(widget, "children", ()):
                close_tree(child)
            widget.close()

        for card in self._cards:
            close_tree(card.widget)
        close_tree(self.widget)

    # ------------------------------------------------------------ state readers
    @property
    def results(self) -> Results | None:
        """The results shown, or ``None`` before the first search."""
        return self._results

    @property
    def message(self) -> str:
        """The message shown to the user (e.g. why an input was refused); ``""`` when none."""
        return self._message

    @property
    def result_cards(self) -> list[ResultCard]:
        """The result tiles shown, best first."""
        return self._cards[:len(self._results)] if self._results is not None else []

    @property
    def query_label(self) -> str:
        """Short description of the current query (file name, upload name or URL)."""
        return self._query.label if self._query else ""

    @property
    def k(self) -> int:
        return int(self.k_slider.value)

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
        def build() -> _Query:
            i = self.db.check_id(item_id)
            path = self.db.items[i]
            thumb = self._thumb(path, self.config.query_thumb_size)
            return _Query("id", Path(path).name, f"database image #{i}", thumb, id=i)

        return self._run(build)

    def search_path(self, path: str | os.PathLike[str]) -> Results:
        """Search with an image file on the server (the model runs on it).

        Raises:
            QueryError, ImageLoadError: If the file is missing or not a readable image.
        """
        p = Path(path).expanduser()

        def build() -> _Query:
            if not p.is_file():
                raise QueryError(f"No such image file: {p}")
            data = p.read_bytes()
            return self._embedded_query("path", p.name, f"file, {_mb(len(data))}", data)

        return self._run(build, slow=True)

    def search_upload(self, data: bytes | bytearray | memoryview, name: str = "upload") -> Results:
        """Search with the bytes of an uploaded image file.

        Raises:
            QueryError: If the file is larger than ``config.max_upload_bytes``.
            ImageLoadError: If it is not a readable image.
        """
        def build() -> _Query:
            size = len(data) if not isinstance(data, memoryview) else data.nbytes
            if size > self.config.max_upload_bytes:
                raise QueryError(f"'{name}' is {_mb(size)}; the upload limit is {_mb(self.config.max_upload_bytes)}. "
                                 "Upload a smaller image.")
            if size == 0:
                raise QueryError(f"'{name}' is empty (0 bytes). Upload an image file.")
            return self._embedded_query("upload", name, f"uploaded, {_mb(size)}", bytes(data))

        return self._run(build, slow=True)

    def search_url(self, url: str) -> Results:
        """Search with the image at an http(s) URL.

        Raises:
            QueryError: If the URL is not http(s), unreachable, not an image, or too large.
            ImageLoadError: If the download is not a readable image.
        """
        url = str(url).strip()

        def build() -> _Query:
            if not url:
                raise QueryError("Paste an image URL first (http:// or https://).")
            data = fetch_url(url, self.config.fetch)
            name = Path(url.split("?", 1)[0].rstrip("/")).name or url
            return self._embedded_query("url", name, url, data)

        try:
            return self._run(build, slow=True)
        finally:
            self._last_url, self._last_url_done = url, time.monotonic()

    # ------------------------------------------------------------ internals
    def _thumb(self, path: str, size: int | None = None) -> bytes:
        try:
            return self.thumbnails.get(path, size)
        except ImageLoadError as exc:
            logger.warning("No thumbnail for %s: %s", path, exc)
            return placeholder_thumbnail(size or self.config.thumb_size, "image missing")

    def _embedded_query(self, kind: str, name: str, detail: str, data: bytes) -> _Query:
        """Embed image bytes with the database's model (waits for a preload in progress)."""
        t0 = time.perf_counter()
        try:
            thumb = make_thumbnail(data, self.config.query_thumb_size)  # checks the image before the model loads
        except ImageLoadError as exc:
            raise ImageLoadError(f"'{name}': {user_message(exc)}. Use a JPEG, PNG, GIF, BMP, WebP or TIFF "
                                 "image.") from exc
        with self._model_lock:
            vectors, _ = query_vectors(self.db, [data])
        return _Query(kind, name, detail, thumb, vector=vectors[0], embed_ms=(time.perf_counter() - t0) * 1e3)

    def _search(self, query: _Query) -> Results:
        kwargs: dict[str, Any] = {"exact": bool(self.exact_checkbox.value)}
        if self.speed_param and not kwargs["exact"]:
            kwargs["nprobe" if self.speed_param == "nprobe" else "ef_search"] = int(self.speed_slider.value)
        target: Any = query.id if query.id is not None else query.vector
        results = self.db.search(target, self.k, **kwargs)  # one query: one Faiss thread (see search.py)
        if query.id is None:
            results.query_id = None
        return results

    def _run(self, build: Callable[[], _Query], *, slow: bool = False) -> Results:
        t0 = time.perf_counter()
        with self._busy(slow):
            try:
                query = build()
                results = self._search(query)
                self._render(query, results)
            except BaseException as exc:
                self._show_error(exc)
                raise
        self.timing = _Timing(embed_ms=query.embed_ms, search_ms=results.search_ms,
                              total_ms=(time.perf_counter() - t0) * 1e3)
        self._show_status()
        return results

    def _rerun(self) -> None:
        """Search again with the current query (after a parameter change)."""
        if self._query is None:
            return
        query = dataclasses.replace(self._query, embed_ms=0.0)
        self._safely(self._run, lambda: query)

    def _render(self, query: _Query, results: Results) -> None:
        self._query, self._results = query, results
        self._set_message("")
        self.query_image.value = query.thumbnail
        where = self.db.items[query.id] if query.id is not None else ""
        self.query_caption.value = (
            "<div class='si-qcap'><div class='si-panel-title'>Query</div>"
            f"<div class='si-qname'>{html.escape(query.label)}</div>"
            f"<div class='si-qdetail' title='{html.escape(query.detail, quote=True)}'>{html.escape(query.detail)}</div>"
            + (f"<div class='si-qdetail' title='{html.escape(where, quote=True)}'>{html.escape(where)}</div>"
               if where else "") + "</div>")
        self.query_panel.layout.display = "flex"
        while len(self._cards) < len(results):
            self._cards.append(ResultCard(self, self.config.thumb_size))
        for card, match in zip(self._cards, results):
            card.show(match, self._thumb(match.path), is_query=match.id == query.id)
        shown = tuple(c.widget for c in self._cards[:len(results)])
        if self.grid.children != shown:
            self.grid.children = shown
        self.results_title.value = (f"<div class='si-panel-title'>{len(results)} most similar "
                                    "<span>(cosine similarity)</span></div>")
        self.empty_hint.layout.display = "none"

    def _show_status(self) -> None:
        r = self._results
        if r is None:
            self.status.value = "<span class='si-status'>Ready.</span>"
            return
        if r.params.get("exact"):
            mode = "exact"
        else:
            idx = self.db.manifest.index
            mode = ", ".join([idx.factory if idx else "index"]
                             + [f"{k}={v}" for k, v in r.params.items() if k != "exact"])
        t = self.timing
        embed = f" &middot; model {t.embed_ms:.0f} ms" if t.embed_ms else ""
        self.status.value = (f"<span class='si-status'>search <b>{r.search_ms:.2f} ms</b> "
                             f"({html.escape(mode)}){embed} &middot; total {t.total_ms:.0f} ms"
                             "</span>")

    @contextlib.contextmanager
    def _busy(self, slow: bool) -> Iterator[None]:
        if not slow:
            yield
            return
        controls = (self.random_button, self.url_button, self.upload)
        for c in controls:
            c.disabled = True
        self.status.value = "<span class='si-status'>Searching&hellip;</span>"
        try:
            yield
        finally:
            for c in controls:
                c.disabled = False

    def _set_message(self, text: str, kind: str = "error") -> None:
        self._message = text
        if text:
            icon = "&#9888; " if kind == "error" else ""
            self.message_box.value = f"<div class='si-msg si-{kind}'>{icon}{html.escape(text)}</div>"
            self.message_box.layout.display = "block"
        elif self.message_box.layout.display != "none":
            self.message_box.value = ""
            self.message_box.layout.display = "none"

    def _show_error(self, exc: BaseException) -> None:
        if not isinstance(exc, (QueryError, ImageLoadError, DatabaseError, KeyboardInterrupt, SystemExit)):
            logger.error("Error in the app", exc_info=exc)
        self._set_message(user_message(exc))
        self._show_status()

    def _safely(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an action from a widget callback: errors are shown in the app, never raised."""
        try:
            return func(*args, **kwargs)
        except Exception:  # noqa: BLE001  (already shown in the app by _run; a callback must not raise)
            return None

    # ------------------------------------------------------------ callbacks
    def _on_url_value(self, change: dict[str, Any]) -> None:
        url = str(change["new"]).strip()
        if url:
            self._safely(self.search_url, url)

    def _on_url_button(self, _button: Any = None) -> None:
        url = self.url_text.value.strip()
        if url and url == self._last_url and time.monotonic() - self._last_url_done < 1.0:
            return  # the box's own change event (Enter, or leaving it to click here) just searched it
        self._safely(self.search_url, url)

    def _on_upload(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if not files:
            return
        f = files[-1]
        try:
            self._safely(self.search_upload, f["content"], name=str(f.get("name") or "upload"))
        finally:
            self.upload.value = ()  # ready for the next file (also resets the button's counter)

    def _on_params(self, _change: dict[str, Any]) -> None:
        self._rerun()

    def _on_exact(self, change: dict[str, Any]) -> None:
        self.speed_slider.disabled = bool(change["new"])
        self._rerun()


# ---------------------------------------------------------------------------- opening


def _build_commands(path: str) -> list[str]:
    return [f"similar-images extract IMAGES {path}", f"similar-images build-index {path}"]


_NOTE = ("IMAGES is a folder of images. Or, from the project folder, 'bash data_scripts/quickstart.sh' downloads the "
         "MS-COCO photos and builds data/coco-db. Or point SIMILAR_IMAGES_DB at an existing database.")


def open_app(path: str | os.PathLike[str], *, k: int = 8, weights: str | None = None,
             preload_model: bool = True, **config: Any) -> SimilarImagesApp | DatabaseMessage:
    """Build the app for the database at ``path``, or explain how to build the database.

    This is what the notebook calls: it never raises for a missing or
    damaged database, it returns a :class:`DatabaseMessage` (displayed as
    HTML, with the commands that build one) instead.

    Args:
        path: The database folder (see :func:`find_database` for relative paths).
        k: Number of results shown at first.
        weights: Query-model weights overriding the database's (a local file).
        preload_model: Load the query model in the background at start.
        **config: More :class:`AppConfig` fields.

    Raises:
        ConfigError: For invalid settings (e.g. ``k`` out of range).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up logs out of the page
    resolved = find_database(path)
    try:
        return SimilarImagesApp.from_path(resolved, k=k, weights=weights, preload_model=preload_model, **config)
    except DatabaseError as exc:
        logger.info("No app for %s: %s", resolved, exc)
        return no_database_message(path, exc, what="image database", commands=_build_commands(str(path)),
                                   note=_NOTE)
