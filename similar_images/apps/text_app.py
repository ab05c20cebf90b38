"""The interactive text-similarity search of ``notebooks/text_similarity.ipynb``.

:func:`text_search_app` opens a text database and returns a
:class:`TextSearchApp` (ipywidgets): a query box (Enter or the Search button
searches), a "Random tweet" button, a k slider, and the results with their
rank and cosine score, each with a button that searches with that text.
If the database cannot be opened it returns a :class:`DatabaseMessage` instead, with
the exact commands that build one. All logic lives here so that the
notebook stays a few lines long and the callbacks can be tested in Python.
"""

from __future__ import annotations

import html
import logging
import os
import random
import shlex
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from ..errors import ConfigError, DatabaseError, SimilarImagesError
from ..index import DEFAULT_RERANK
from ..search import Results
from ..sources.texts import shorten
from ..store import Database
from .common import DatabaseMessage, find_database, no_database_message, user_message

__all__ = ["TextSearchApp", "text_search_app", "build_commands"]

logger = logging.getLogger(__name__)


def build_commands(db_path: str | os.PathLike[str]) -> list[str]:
    """Shell commands that build a text database at ``db_path`` (absolute paths, ready to paste).

    ``TEXTS.csv`` is any CSV file with a ``text`` column; ``get-sentiment140`` makes one from the Sentiment140
    tweets (it needs network access).
    """
    db = shlex.quote(str(Path(db_path).expanduser().resolve()))
    return ["similar-images text get-sentiment140 TEXTS.csv    # or use your own CSV with a 'text' column",
            f"similar-images text build TEXTS.csv {db}"]


class TextSearchApp:
    """Search a text database interactively.

    Attributes:
        db: The open :class:`~similar_images.store.Database`.
        query: The query box (press Enter to search).
        search_button: Runs the search.
        random_button: Searches with a random text of the database.
        k_slider: Number of results (changing it repeats the last search).
        status: One line: timing, or what went wrong.
        results: One row per match (rank, score, text, "search with this" button).
        result_buttons: The buttons of the current rows.
        last_results: The :class:`~similar_images.search.Results` shown, or ``None``.
        widget: The whole app (display it, or display the app itself).

    Args:
        db: A text database (open, or its folder).
        k: Initial number of results.
        max_k: Largest value of the k slider.
        seed: Seed of the random-tweet button.
        preload: Load the sentence encoder now (a few seconds), so the first search is fast.
        rerank: Index candidates per result re-ranked with the stored vectors
            (see :mod:`similar_images.index.rerank`); 1 shows the index's own ranking.
    """

    def __init__(self, db: Any, *, k: int = 8, max_k: int = 50, seed: int | None = None,
                 preload: bool = True, rerank: int = DEFAULT_RERANK) -> None:
        self.db = db if isinstance(db, Database) else Database.open(db)
        if self.db.kind != "text":
            raise ConfigError(f"{self.db.path} is an {self.db.kind} database; open it with the image search app")
        max_k = max(1, min(max_k, len(self.db)))
        self._rng = random.Random(seed)
        self.rerank = rerank
        self.query = widgets.Text(placeholder="Type a sentence and press Enter",
                                  layout=widgets.Layout(width="60%"), description="Query")
        self.search_button = widgets.Button(description="Search", button_style="primary", icon="search",
                                            tooltip="Find the most similar texts")
        self.random_button = widgets.Button(description="Random tweet", icon="random",
                                            tooltip="Search with a random text of the database")
        self.k_slider = widgets.IntSlider(value=max(1, min(k, max_k)), min=1, max=max_k, description="k",
                                          continuous_update=False)
        self.status = widgets.HTML()
        self.results = widgets.VBox()
        self.result_buttons: list[Any] = []
        self.last_results: Any = None
        self._last_query: str | int | None = None
        info = self.db.manifest.index
        recall = info.get("recall_at_10") if info else None
        header = widgets.HTML(
            f"<small>{len(self.db):,} texts, model {html.escape(self.db.model_name)}, index "
            f"{html.escape(info.factory if info else 'none (exact search)')}"
            + (f", recall@10 {recall}" if recall is not None else "") + "</small>"
        )
        self.widget = widgets.VBox([
            header,
            widgets.HBox([self.query, self.search_button, self.random_button]),
            self.k_slider,
            self.status,
            self.results,
        ])
        self.search_button.on_click(lambda _b: self.search())
        self.random_button.on_click(lambda _b: self.random_search())
        self.query.on_msg(self._on_query_msg)  # the front end sends {"event": "submit"} on Enter
        self.k_slider.observe(self._on_k_change, names="value")
        if preload:
            self.db.embedder.warm_up()  # type: ignore[attr-defined]

    # ------------------------------------------------------------ callbacks
    def _on_query_msg(self, _widget: Any, content: dict[str, Any], _buffers: Any) -> None:
        if content.get("event") == "submit":
            self.search()

    def _on_k_change(self, _change: dict[str, Any]) -> None:
        if self._last_query is not None:
            self._run(self._last_query)

    # -------------------------------------------------------------- actions
    def search(self, text: str | None = None) -> Any:
        """Search with ``text`` (default: the query box); returns the results, or ``None`` with a message."""
        if text is not None:
            self.query.value = text
        q = self.query.value
        if not q.strip():
            self._show_message("Type some text to search for.")
            return None
        return self._run(q)

    def random_search(self) -> Any:
        """Put a random text of the database in the query box and search with its stored vector."""
        live = self.db.live_ids()
        i = int(live[self._rng.randrange(len(live))])
        self.query.value = self.db.items[i]
        return self._run(i)

    def search_with_result(self, rank: int) -> Any:
        """Search with the text of the result at ``rank`` (1-based), as its button does."""
        match = self.last_results[rank - 1]
        self.query.value = match.text
        return self._run(match.id)

    # -------------------------------------------------------------- helpers
    def _show_message(self, text: str) -> None:
        self.status.value = f"<span style='color:#a00'>{html.escape(text)}</span>"
        self.results.children = ()
        self.result_buttons = []
        self.last_results = None
        self._last_query = None

    def _run(self, query: str | int) -> Results | None:
        try:
            results = self.db.search(query, int(self.k_slider.value), rerank=self.rerank)
        except SimilarImagesError as exc:
            self._show_message(user_message(exc))
            return None
        self._last_query = query
        self.last_results = results
        self._render(results)
        return results

    def _render(self, results: Results) -> None:
        rows = []
        self.result_buttons = []
        for m in results:
            button = widgets.Button(description="Search with this", icon="search",
                                    layout=widgets.Layout(width="150px", flex="0 0 auto"),
                                    tooltip="Search with this text")
            button.on_click(lambda _b, rank=m.rank: self.search_with_result(rank))
            self.result_buttons.append(button)
            rows.append(widgets.HBox([
                widgets.HTML(f"<b>{m.rank}</b>", layout=widgets.Layout(width="32px", flex="0 0 auto")),
                widgets.HTML(f"<code>{m.score:.3f}</code>", layout=widgets.Layout(width="60px", flex="0 0 auto")),
                # Tweets carry HTML entities (&quot;, &amp;): show the characters they stand for.
                widgets.HTML(html.escape(shorten(html.unescape(m.text))), layout=widgets.Layout(flex="1 1 auto")),
                button,
            ]))
        self.results.children = tuple(rows)
        index = self.db.manifest.index
        mode = "exact" if results.params.get("exact") or index is None else index.factory
        if results.params.get("rerank"):
            mode += f", re-ranked x{results.params['rerank']}"
        self.status.value = (f"{len(results)} results in {results.search_ms:.2f} ms "
                             f"({results.total_ms:.0f} ms with encoding, {html.escape(mode)})")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def text_search_app(db_path: str | os.PathLike[str], *, k: int = 8, max_k: int = 50,
                    seed: int | None = None) -> TextSearchApp | DatabaseMessage:
    """The search app for the text database at ``db_path``, or a message saying how to build one.

    Never raises for a missing or unusable database: the returned message explains the problem and lists the
    commands to run.
    """
    db = find_database(db_path)
    try:
        return TextSearchApp(Database.open(db), k=k, max_k=max_k, seed=seed)
    except DatabaseError as exc:
        logger.info("No app for %s: %s", db, exc)
        return no_database_message(db_path, exc, what="text database", commands=build_commands(db),
                                   note="A build takes a few minutes for 20,000 tweets on 2 CPU cores.")
    except ConfigError as exc:
        return DatabaseMessage(f"{db_path} is not a text database", f"{exc}. Build a text database there with:",
                               [c.replace(" text build ", " text build --force ", 1) for c in build_commands(db)
                                if " text build " in c])
