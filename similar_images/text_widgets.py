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

__all__ = ["TextSearchApp", "DatabaseMessage", "text_search_app", "build_commands"]

logger = logging.getLogger(__name__)

_ROOT = Path(__file__).resolve().parents[1]


def _sample_csv() -> Path | None:
    """The offline 20k-tweet CSV, when the shared assets are present."""
    assets = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", _ROOT.parent / "shared" / "assets"))
    csv_file = assets / "text" / "texts_20k.csv"
    return csv_file.resolve() if csv_file.is_file() else None


def build_commands(db_path: str | os.PathLike[str]) -> list[str]:
    """Shell commands that build a text database at ``db_path`` (absolute paths, ready to paste)."""
    db = shlex.quote(str(Path(db_path).expanduser().resolve()))
    sample = _sample_csv()
    if sample is not None:
        return [f"similar-images text build {shlex.quote(str(sample))} {db}"]
    return ["similar-images text get-sentiment140 tweets.csv", f"similar-images text build tweets.csv {db}"]


class DatabaseMessage:
    """What the notebook shows instead of the app when the database cannot be used.

    Displayed as HTML (and plain text, so the commands show in any front end,
    with or without a widget manager).

    Attributes:
        title: One line: what is wrong.
        detail: More about it (may be empty).
        commands: Shell commands that fix it.
    """

    def __init__(self, title: str, detail: str, commands: list[str]) -> None:
        self.title = title
        self.detail = detail
        self.commands = commands

    def __repr__(self) -> str:
        return "\n".join([self.title, self.detail, *(f"    {c}" for c in self.commands)]).replace("\n\n", "\n")

    def _repr_html_(self) -> str:
        cmds = html.escape("\n".join(self.commands))
        return (f"<div class='similar-texts-message'><b>{html.escape(self.title)}</b><br>{html.escape(self.detail)}"
                f"<pre style='background:#f4f4f4;padding:6px'>{cmds}</pre></div>")


class TextSearchApp:
    """Search a text database interactively.

    Attributes:
        db: The open :class:`~similar_images.database.Database`.
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
            (see :func:`similar_images.text.search_texts`); 1 shows the index's own ranking.
    """

    def __init__(self, db: Any, *, k: int = 8, max_k: int = 50, seed: int | None = None,
                 preload: bool = True, rerank: int = 4) -> None:
        import ipywidgets as widgets  # noqa: PLC0415

        from .database import Database  # noqa: PLC0415

        self.db = db if isinstance(db, Database) else Database.open(db)
        if self.db.kind != "text":
            raise ValueError(f"{self.db.path} is an image database; open it with the image search app")
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
        info = self.db.manifest.get("index") or {}
        header = widgets.HTML(
            f"<small>{len(self.db):,} texts, model {html.escape(self.db.model_name)}, index "
            f"{html.escape(str(info.get('factory', 'none (exact search)')))}"
            + (f", recall@10 {info['recall_at_10']}" if info.get("recall_at_10") is not None else "") + "</small>"
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
            _ = self.db.embedder.encoder

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

    def _run(self, query: str | int) -> Any:
        from .errors import SimilarImagesError  # noqa: PLC0415
        from .text import search_text  # noqa: PLC0415

        try:
            results = search_text(self.db, query, int(self.k_slider.value), rerank=self.rerank)
        except (SimilarImagesError, ValueError) as exc:
            self._show_message(str(exc))
            return None
        self._last_query = query
        self.last_results = results
        self._render(results)
        return results

    def _render(self, results: Any) -> None:
        import ipywidgets as widgets  # noqa: PLC0415

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
                widgets.HTML(html.escape(html.unescape(m.text)), layout=widgets.Layout(flex="1 1 auto")),
                button,
            ]))
        self.results.children = tuple(rows)
        mode = "exact" if results.params.get("exact") else self.db.manifest["index"]["factory"]
        if results.params.get("rerank"):
            mode += f", re-ranked x{results.params['rerank']}"
        self.status.value = (f"{len(results)} results in {results.search_ms:.2f} ms "
                             f"({results.total_ms:.0f} ms with encoding, {html.escape(mode)})")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def text_search_app(db_path: str | os.PathLike[str], *, k: int = 8, max_k: int = 50,
                    seed: int | None = None) -> Any:
    """The search app for the text database at ``db_path``, or a message saying how to build one.

    Never raises for a missing or unusable database: the returned widget
    explains the problem and lists the commands to run.

    Returns:
        A :class:`TextSearchApp`, or a :class:`DatabaseMessage`.
    """
    from .database import MANIFEST  # noqa: PLC0415
    from .errors import SimilarImagesError  # noqa: PLC0415

    db = Path(db_path).expanduser()
    if not (db / MANIFEST).is_file():
        return DatabaseMessage(f"No text database at {db.resolve()}.",
                               "Build one (a few minutes for 20,000 tweets on 2 CPU cores) with:",
                               build_commands(db))
    try:
        return TextSearchApp(db, k=k, max_k=max_k, seed=seed)
    except (SimilarImagesError, ValueError) as exc:
        return DatabaseMessage(f"Cannot open the text database at {db.resolve()}.",
                               f"{exc} Rebuild it with:",
                               [c.replace(" text build ", " text build --force ", 1) if " text build " in c else c
                         for c in build_commands(db)])
