"""The front end shared by the notebook apps: one custom widget that draws the whole app and reads its keys.

:class:`GalleryWidget` is an `anywidget <https://anywidget.dev>`_ widget: its
JavaScript (``static/gallery.js``, an ES module, and ``static/gallery.css``)
travels with the widget, so it works in JupyterLab 4, Notebook 7 and Voilà
without a front-end extension of its own. It draws the header, the toolbar,
the status line, the query panel, the results grid (CSS grid filling the
width, tiles resizable) and a lightbox, and handles the keys (arrows, Enter,
Esc) that ``ipywidgets`` cannot bind.

The app that owns it (:class:`~.image_app.SimilarImagesApp`,
:class:`~.text_app.TextSearchApp`) sets its traits (``query``, ``results``,
``status`` ...) and answers its events. Events from the page arrive as custom
messages; :meth:`GalleryWidget.receive` handles one, which is also how the
tests drive the app without a browser::

    gallery.receive({"event": "random"})
    gallery.receive({"event": "search", "index": 2})        # "Search similar" on the third result

Uploads are read by the page (a preview appears at once) and sent in pieces of
2 MiB, so the upload limit does not depend on the server's websocket message
limit (10 MiB by default in Jupyter Server and Voilà).

Lightbox actions
----------------
The lightbox has an actions row ("Search similar", then the app's own
actions). An action is a Python callback that gets an :class:`ActionTarget`
and returns PNG bytes, an HTML string, or an :class:`ActionResult`; the
lightbox shows the answer beside the image::

    def details(target):                     # target.match: the result shown (None for the query)
        return f"<b>#{target.match.id}</b> {html.escape(str(target.match.item))}"

    app.add_lightbox_action("details", "Details", details, tooltip="Where this photo is")

The image app's own "Explain" action is built this way (``SimilarImagesApp.explain_result``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anywidget
import traitlets as t

from .._util.types import JSON, Widget
from ..errors import ConfigError, QueryError
from ..index import BAND_NAMES, ScoreBands
from ..search import Match, Results
from .common import user_message

__all__ = ["GalleryWidget", "GalleryApp", "ActionTarget", "ActionResult", "UPLOAD_CHUNK"]

logger = logging.getLogger(__name__)

_STATIC = Path(__file__).with_name("static")

#: Size of the pieces an upload is sent in (must match ``CHUNK`` in gallery.js).
UPLOAD_CHUNK = 2 * 1024 * 1024


@dataclass
class ActionTarget:
    """What a lightbox action acts on.

    Attributes:
        index: Position of the item shown: ``-1`` for the query, ``0`` for the first result, ...
        match: The :class:`~similar_images.search.Match` shown (``None`` for the query).
        query: The app's current query (for the image app: its ``QueryInfo``, with ``id``, ``vector``, ``data``).
        app: The app.
    """

    index: int
    match: Match | None
    query: Any
    app: Any


@dataclass
class ActionResult:
    """What a lightbox action shows beside the image.

    Attributes:
        kind: ``"png"``, ``"html"``, ``"text"``, ``"error"`` or ``"explain"`` (drawn by the page: ``data`` holds
            ``query_key``, ``result_key``, ``query_map`` and ``result_map`` (lists of rows, 0 to 1), the sentence in
            ``text``, and ``details``, lines behind a "details" toggle).
        title: A line above it.
        png: PNG bytes (``kind="png"``).
        html: HTML (``kind="html"``; it is inserted as it is: build it from trusted parts).
        text: Plain text (``kind="text"``, ``"error"`` or ``"explain"``).
        data: What the page draws (``kind="explain"``), JSON-serialisable.
    """

    kind: str
    title: str = ""
    png: bytes = b""
    html: str = ""
    text: str = ""
    data: dict[str, object] = field(default_factory=dict)


@dataclass
class _Action:
    name: str
    label: str
    callback: Callable[[ActionTarget], object]
    tooltip: str = ""
    query: bool = False


@dataclass
class _Upload:
    name: str
    size: int
    mime: str
    data: bytearray
    received: dict[int, int] = field(default_factory=dict)  # offset -> length of each piece
    started: float = field(default_factory=time.perf_counter)


class GalleryWidget(anywidget.AnyWidget):
    """The app's front end (see the module documentation).

    Traits set by the app: ``mode`` (``"image"`` or ``"text"``), ``header``, ``controls``, ``upload``,
    ``speed_spec``, ``bands``, ``bands_note``, ``status``, ``message``, ``state`` (``"idle"``, ``"busy"``,
    ``"stale"``), ``query``, ``results``, ``results_title``, ``empty``, ``actions``.
    Traits the page sets too: ``k``, ``exact``, ``speed``, ``include_query``, ``min_band``, ``tile``,
    ``selected`` (grid selection, ``-1``: none), ``lightbox`` (``-2``: closed, ``-1``: the query, ``i``: result i),
    ``present`` (presenter mode: the page's "Present" button and key P).
    """

    _esm = (_STATIC / "gallery.js").read_text(encoding="utf-8")
    _css = (_STATIC / "gallery.css").read_text(encoding="utf-8")

    mode = t.Unicode("image").tag(sync=True)
    header = t.Dict().tag(sync=True)
    controls = t.Dict().tag(sync=True)
    upload = t.Dict().tag(sync=True)
    k = t.Int(8).tag(sync=True)
    exact = t.Bool(False).tag(sync=True)
    speed = t.Int(1).tag(sync=True)
    speed_spec = t.Dict().tag(sync=True)
    include_query = t.Bool(False).tag(sync=True)
    min_band = t.Unicode("").tag(sync=True)
    tile = t.Int(220).tag(sync=True)
    bands = t.List().tag(sync=True)
    bands_note = t.Unicode("").tag(sync=True)
    status = t.Dict().tag(sync=True)
    message = t.Dict().tag(sync=True)
    state = t.Unicode("idle").tag(sync=True)
    query = t.Dict().tag(sync=True)
    results = t.List().tag(sync=True)
    results_title = t.Dict().tag(sync=True)
    render_id = t.Int(0).tag(sync=True)
    empty = t.Dict().tag(sync=True)
    selected = t.Int(-1).tag(sync=True)
    lightbox = t.Int(-2).tag(sync=True)
    actions = t.List().tag(sync=True)
    present = t.Bool(False).tag(sync=True)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.handlers: dict[str, Callable[..., object]] = {}
        self.target_of: Callable[[int], ActionTarget] | None = None
        self._actions: dict[str, _Action] = {}
        self._uploads: dict[str, _Upload] = {}
        self.on_msg(self._on_msg)

    # ------------------------------------------------------------------ actions
    def add_action(self, name: str, label: str, callback: Callable[[ActionTarget], object], *, tooltip: str = "",
                   query: bool = False) -> None:
        """Add a button to the lightbox's actions row (replacing one of the same ``name``).

        Args:
            name: Identifier of the action.
            label: The button's text.
            callback: Called with an :class:`ActionTarget`; returns PNG bytes, an HTML string or an
                :class:`ActionResult`, shown beside the image. Its errors are shown there too.
            tooltip: The button's tooltip.
            query: Also offer it when the lightbox shows the query.
        """
        self._actions[name] = _Action(name, label, callback, tooltip, query)
        self.actions = [{"name": a.name, "label": a.label, "tooltip": a.tooltip, "query": a.query}
                        for a in self._actions.values()]

    def run_action(self, name: str, index: int) -> ActionResult:
        """Run the action ``name`` on the item at ``index`` (as its button does); returns what is shown."""
        action = self._actions.get(name)
        if action is None:
            return ActionResult("error", text=f"No action named {name!r}")
        try:
            if self.target_of is None:
                raise QueryError("Nothing to act on yet")
            out = action.callback(self.target_of(index))
        except Exception as exc:
            logger.warning("Lightbox action %s failed", name, exc_info=True)
            return ActionResult("error", title=action.label, text=user_message(exc))
        if isinstance(out, ActionResult):
            return out
        if isinstance(out, (bytes, bytearray, memoryview)):
            return ActionResult("png", title=action.label, png=bytes(out))
        return ActionResult("html", title=action.label, html=str(out))

    # ------------------------------------------------------------------ page events
    def receive(self, content: JSON, buffers: list[bytes] | None = None) -> None:
        """Handle one event from the page (the custom message the front end sends)."""
        event = content.get("event")
        if event in ("upload_start", "upload_chunk", "upload_end", "upload_refused"):
            self._upload_event(event, content, buffers or [])
        elif event == "preview":
            self._send_preview(str(content.get("key", "")))
        elif event == "action":
            name, index = str(content.get("name", "")), int(content.get("index", -1))
            result = self.run_action(name, index)
            self.send({"event": "action_result", "name": name, "index": index, "kind": result.kind,
                       "title": result.title, "html": result.html, "text": result.text, "data": result.data},
                      [result.png] if result.kind == "png" else None)
        elif event in self.handlers:
            args = {k: v for k, v in content.items() if k != "event"}
            self.handlers[event](**args)

    def _on_msg(self, _widget: Widget, content: object, buffers: list[bytes]) -> None:
        if not isinstance(content, dict) or "event" not in content:
            return  # anywidget's own messages
        try:
            self.receive(content, buffers)
        except Exception:
            logger.exception("Error handling %s from the page", content.get("event"))

    def _send_preview(self, key: str) -> None:
        make = self.handlers.get("preview_image")
        data = None
        if make is not None and key:
            try:
                data = make(key)
            except Exception:
                logger.warning("No preview for %s", key, exc_info=True)
        self.send({"event": "preview", "key": key, "ok": bool(data), "mime": "image/jpeg"}, [data] if data else None)

    # ------------------------------------------------------------------ uploads in pieces
    def _upload_event(self, event: str, content: JSON, buffers: list[bytes]) -> None:
        limit = int(self.upload.get("limit", 0)) or None
        token = str(content.get("token", ""))
        if event == "upload_refused":
            self.handlers["upload_error"](QueryError(_too_large(str(content.get("name", "upload")),
                                                                int(content.get("size", 0)), limit or 0)))
            return
        if event == "upload_start":
            name, size = str(content.get("name") or "upload"), int(content.get("size", 0))
            self._uploads.clear()  # a new upload replaces one still arriving
            if limit is not None and size > limit:
                self.handlers["upload_error"](QueryError(_too_large(name, size, limit)))
                return
            self._uploads[token] = _Upload(name, size, str(content.get("type", "")), bytearray(size))
            if "upload_started" in self.handlers:
                self.handlers["upload_started"](name, size)
            return
        up = self._uploads.get(token)
        if up is None:
            return  # replaced or refused
        if event == "upload_chunk":
            offset = int(content.get("offset", -1))
            piece = bytes(buffers[0]) if buffers else b""
            if offset < 0 or offset + len(piece) > up.size:
                del self._uploads[token]
                self.handlers["upload_error"](QueryError(f"'{up.name}' arrived damaged; upload it again."))
                return
            up.data[offset:offset + len(piece)] = piece
            up.received[offset] = len(piece)
            return
        del self._uploads[token]
        end = 0
        for offset in sorted(up.received):  # the pieces must cover the file, without gaps
            end = offset + up.received[offset] if offset <= end else -1
            if end < 0:
                break
        if end != up.size:
            self.handlers["upload_error"](QueryError(f"'{up.name}' arrived incomplete; upload it again."))
            return
        logger.info("Upload %s: %d bytes in %.0f ms", up.name, up.size, (time.perf_counter() - up.started) * 1e3)
        self.handlers["upload"](bytes(up.data), up.name)


def _too_large(name: str, size: int, limit: int) -> str:
    return (f"'{name}' is {_mb(size)}; the upload limit is {_mb(limit)}. Use a smaller image "
            "(or a copy saved at a lower resolution).")


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB" if n >= 1024 * 1024 else f"{max(n, 1) / 1024:.0f} KB"


class GalleryApp:
    """What the image and text apps share around their :class:`GalleryWidget`: the last results, those shown
    (above the minimum score chosen in the page), the message, ``k``, and displaying and closing the app."""

    gallery: GalleryWidget
    widget: GalleryWidget
    bands: ScoreBands | None
    _results: Results | None
    _shown: list[Match]
    _message: str

    @property
    def results(self) -> Results | None:
        """The results of the last search, or ``None`` (before the first, or after an empty query)."""
        return self._results

    @property
    def shown(self) -> list[Match]:
        """The results shown: :attr:`results` above the minimum score."""
        return list(self._shown)

    @property
    def message(self) -> str:
        """The message shown to the user (e.g. why an input was refused); ``""`` when none."""
        return self._message

    @property
    def k(self) -> int:
        """The number of results (the page's *Results* slider)."""
        return int(self.gallery.k)

    @k.setter
    def k(self, value: int) -> None:
        top = int(self.gallery.controls.get("max_k", 50))
        if isinstance(value, bool) or not 1 <= int(value) <= top:
            raise ConfigError(f"k must be an integer from 1 to {top}, got {value!r}")
        self.gallery.k = int(value)

    def _min_score(self, floor: float | None = None) -> float:
        """The lowest score shown: ``floor`` and the band chosen in the page's *Show* list."""
        lo = -float("inf") if floor is None else float(floor)
        band = self.gallery.min_band
        if band and self.bands is not None and band in BAND_NAMES:
            lo = max(lo, self.bands.lower_bound(band))
        return lo

    def _keep_shown(self, results: Results, what: str, floor: float | None = None) -> dict[str, object]:
        """Keep the results above the minimum score in :attr:`shown`; returns the results' title for the page."""
        lo = self._min_score(floor)
        self._shown = [m for m in results if m.score >= lo]
        hidden = len(results) - len(self._shown)
        if not hidden:
            return {"text": f"{len(self._shown)} most similar {what}"}
        return {"text": f"{len(self._shown)} of the {len(results)} most similar {what}",
                "note": f"({hidden} below {lo:.2f} hidden)"}

    def _empty_after_filter(self) -> dict[str, object]:
        if self._shown:
            return {}
        return {"text": f"No result reaches {self._min_score():.2f}: lower the minimum in 'Show'."}

    def _repr_mimebundle_(self, **kwargs: object) -> JSON:
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        """Close the app's widget (frees it in the kernel and the browser)."""
        self.widget.close()
