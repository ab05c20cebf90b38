"""The text-search app of ``notebooks/text_similarity.ipynb`` (JupyterLab 4, Notebook 7, Voilà).

:func:`text_search_app` opens a text database and returns a
:class:`TextSearchApp`: a query box (Enter or the Search button searches), a
"Random tweet" button, and the results as cards, each with its score in plain
words (see :mod:`similar_images.index.bands`), the query's words highlighted,
and a button that searches with that text. The sentence encoder loads in the
background as soon as the app is shown; the status line says so.

If the database cannot be opened it returns a :class:`DatabaseMessage`
instead, with the exact commands that build one. All logic lives here so that
the notebook stays a few lines long and the app can be tested in Python::

    app.search("I love rainy days"); app.random_search(); app.search_with_result(2)
    app.results, app.shown, app.message
"""

from __future__ import annotations

import html
import logging
import os
import random
import re
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from .._util.types import JSON
from ..errors import ConfigError, DatabaseError, SimilarImagesError
from ..index import DEFAULT_RERANK
from ..search import Match, Results
from ..sources.texts import shorten
from ..store import Database
from .common import (
    DatabaseMessage,
    ModelLoader,
    band_legend,
    band_words,
    database_header,
    find_database,
    log_to_file,
    no_database_message,
    quiet_output,
    user_message,
)
from .gallery import GalleryApp, GalleryWidget

__all__ = ["TextSearchApp", "text_search_app", "build_commands", "highlight_marks", "collapse_case_duplicates",
           "EXAMPLES"]

logger = logging.getLogger(__name__)

#: Example queries offered when the query box is empty.
EXAMPLES = ("I love rainy days", "my flight got cancelled again", "best pizza in town", "can't sleep tonight")

_WORD = re.compile(r"[\w']+", re.UNICODE)
_STOP = frozenset("""a an and are as at be but by for from had has have he her his i i'm im in is it it's its me my
no not of on or our so that the their them then there they this to too was we were what when who will with you your
just am do did been being can could would should get got""".split())


def _stem(word: str) -> str:
    w = word.lower().strip("'")
    for suffix in ("ing", "ed", "es", "s", "y"):
        if len(w) - len(suffix) >= 3 and w.endswith(suffix):
            return w[: -len(suffix)]
    return w


def highlight_marks(text: str, query: str) -> list[list[int]]:
    """Character ranges ``[start, end)`` of the words of ``text`` that match a word of ``query``.

    Words match when they are equal after lower-casing and dropping a common ending ("rainy" and "rain",
    "days" and "day"); very common words ("the", "I", "and" ...) are not marked.
    """
    wanted = {_stem(w) for w in _WORD.findall(query) if w.lower() not in _STOP and len(w) > 1}
    if not wanted:
        return []
    return [[m.start(), m.end()] for m in _WORD.finditer(text)
            if m.group().lower() not in _STOP and _stem(m.group()) in wanted]


def build_commands(db_path: str | os.PathLike[str]) -> list[str]:
    """Shell commands that build a text database at ``db_path`` (absolute paths, ready to paste).

    ``TEXTS.csv`` is any CSV file with a ``text`` column; ``get-sentiment140`` makes one from the Sentiment140
    tweets (it needs network access).
    """
    db = shlex.quote(str(Path(db_path).expanduser().resolve()))
    return ["similar-images text get-sentiment140 TEXTS.csv    # or use your own CSV with a 'text' column",
            f"similar-images text build TEXTS.csv {db}"]


class TextSearchApp(GalleryApp):
    """Search a text database interactively.

    Attributes:
        db: The open :class:`~similar_images.store.Database`.
        gallery: The app's front end (:class:`~similar_images.apps.gallery.GalleryWidget`).
        widget: The whole app (display it, or display the app itself).
        loader: The sentence encoder, loading in the background.

    Args:
        db: A text database (open, or its folder).
        k: Initial number of results.
        max_k: Largest number of results offered.
        seed: Seed of the random-tweet button.
        preload: Load the sentence encoder in the background as soon as the app is shown.
        rerank: Index candidates per result re-ranked with the stored vectors
            (see :mod:`similar_images.index.rerank`); 1 shows the index's own ranking.
        include_query: Show a database text among its own results (as result #1).
        noun: What the items are ("tweets", "texts"), for the page.
        fast_queries: Embed typed queries with the ONNX Runtime encoder when the database's encoder is the torch
            one and ONNX Runtime is installed (the same model, vectors within 0.9999 cosine of torch's, a query in
            milliseconds instead of a second under load); the torch encoder when that cannot load.

    Results whose texts differ only in case or spacing are shown once (the best of them), so that one tweet
    posted twice does not fill #1 and #2.
    """

    def __init__(self, db: Database | str | os.PathLike[str], *, k: int = 8, max_k: int = 50, seed: int | None = None,
                 preload: bool = True, rerank: int = DEFAULT_RERANK, include_query: bool = False,
                 noun: str = "tweets", fast_queries: bool = True) -> None:
        self.db = db if isinstance(db, Database) else Database.open(db)
        self.fast_queries = fast_queries
        self.query_backend = str(self.db.manifest.model.get("backend", "torch"))
        if self.db.kind != "text":
            raise ConfigError(f"{self.db.path} is an {self.db.kind} database; open it with the image search app")
        log_to_file()
        max_k = max(1, min(max_k, len(self.db)))
        self._rng = random.Random(seed)
        self.rerank = rerank
        self.preload = preload
        self.noun = noun
        self.words = band_words(self.db)
        self.bands = self.words.bands if self.words is not None else self.db.score_bands()
        self._results: Results | None = None
        self._shown: list[Match] = []
        self._query: str | int | None = None
        self._query_text = ""
        self._message = ""
        self.loader = ModelLoader(self._load_encoder, f"the sentence encoder ({self.db.model_name})",
                                  self._show_status)
        g = self.gallery = GalleryWidget(mode="text")
        legend, note = band_legend(self.bands, self.words)
        one = noun[:-1] if noun.endswith("s") else noun
        with g.hold_sync():
            g.header = database_header(self.db, f"Similar {noun}", noun)
            g.controls = {"random_label": f"Random {one}",
                          "random_title": f"Search with a random {one} of the database",
                          "upload": False, "placeholder": "Type a sentence and press Enter", "go_label": "Search",
                          "max_k": max_k, "include_query_option": True}
            g.upload = {"enabled": False}
            g.k, g.include_query, g.tile = max(1, min(k, max_k)), include_query, 260
            g.bands, g.bands_note = legend, note
            g.empty = self._explain()
        g.handlers.update({
            "ready": self._on_ready,
            "random": lambda: self._safely(self.random_search),
            "text": self._on_text,
            "search": self._on_search_result,
        })
        g.observe(self._on_params, names=["k", "exact", "include_query"])
        g.observe(self._on_filter, names=["min_band"])
        self.widget = g
        self._show_status()

    def _load_encoder(self) -> None:
        """Load the query encoder: ONNX Runtime's when asked and possible (see ``fast_queries``), else the
        database's own."""
        if self.fast_queries and self.query_backend == "torch":
            try:
                fast = Database.open(self.db.path, load_index=False, backend="onnx", allow_backend_mismatch=True)
                fast.embedder.embed(["warm up"])
            except (SimilarImagesError, ImportError, OSError, RuntimeError) as exc:
                logger.info("Typed queries use the torch encoder: the ONNX one cannot load (%s)", exc)
            else:
                self.db.embedder = fast.embedder
                self.query_backend = "onnx"
                return
        self.db.embedder.embed(["warm up"])

    # ------------------------------------------------------------ state
    @property
    def last_results(self) -> Results | None:
        """The results of the last search (the same as :attr:`results`)."""
        return self._results

    @property
    def query_text(self) -> str:
        """The text of the current query."""
        return self._query_text

    # ------------------------------------------------------------ callbacks
    def _on_text(self, text: object = "") -> None:
        self._safely(self.search, str(text))

    def _on_search_result(self, index: object = 0) -> None:
        self._safely(self.search_with_result, int(str(index)) + 1)

    def _on_ready(self) -> None:
        if self.preload:
            self.loader.start()

    def _on_params(self, _change: JSON) -> None:
        if self._query is not None:
            self._safely(self._run, self._query, self._query_text)

    def _on_filter(self, _change: JSON) -> None:
        if self._results is not None:
            self._render(self._results, self._query_text, self._query)

    # -------------------------------------------------------------- actions
    def search(self, text: str | None = None) -> Results | None:
        """Search with ``text``; returns the results, or ``None`` (with an explanation) for an empty query."""
        q = "" if text is None else str(text)
        if not q.strip():
            self._show_message(f"Type a few words to find the most similar {self.noun}, or press "
                               f"{self.gallery.controls.get('random_label', 'Random')}.", kind="info")
            return None
        return self._run(q, q)

    def random_search(self) -> Results | None:
        """Search with a random text of the database (its stored vector: no encoder run)."""
        live = self.db.live_ids()
        i = int(live[self._rng.randrange(len(live))])
        return self._run(i, self.db.items[i])

    def search_with_result(self, rank: int) -> Results | None:
        """Search with the text of the result shown at ``rank`` (1-based), as its button does."""
        if not 1 <= rank <= len(self._shown):
            self._show_message(f"There is no result #{rank} to search with.")
            return None
        match = self._shown[rank - 1]
        return self._run(match.id, match.text)

    # -------------------------------------------------------------- helpers
    def _explain(self) -> dict[str, object]:
        return {"text": f"Type a sentence to find the {self.noun} that say something similar, in other words too: "
                        f"the search compares meanings (sentence embeddings), not letters. Try one of these:",
                "examples": list(EXAMPLES)}

    def _show_message(self, text: str, kind: str = "error") -> None:
        self._message = text
        g = self.gallery
        with g.hold_sync():
            g.message = {"text": text, "kind": kind}
            if kind == "info":  # an empty query: explain, with examples, instead of old results
                self._results, self._shown, self._query = None, [], None
                g.results, g.query, g.state = [], {}, "idle"
                g.results_title = {}
                g.empty = self._explain()
                g.render_id += 1
            else:
                g.state = "stale" if self._results is not None else "idle"

    def _run(self, query: str | int, text: str) -> Results | None:
        g = self.gallery
        t0 = time.perf_counter()
        if isinstance(query, str):
            with g.hold_sync():
                g.state = "busy"
                g.message = {}
                g.query = {"text": text, "name": "Query", "detail": "typed",
                           "note": "" if self.loader.ready else "Waiting for the sentence encoder to load \u2026"}
        wanted = min(len(self.db), 2 * self.k)  # room for the duplicates collapsed below
        try:
            if isinstance(query, str):
                self.loader.wait()
                with quiet_output():
                    results = self.db.search(query, wanted, rerank=self.rerank, exact=bool(g.exact))
            else:
                results = self.db.search(query, wanted, rerank=self.rerank, exact=bool(g.exact),
                                         exclude_query=not g.include_query)
        except SimilarImagesError as exc:
            self._show_message(user_message(exc))
            return None
        results = collapse_case_duplicates(results, self.k)
        self._query, self._query_text, self._message = query, text, ""
        self._results = results
        self._render(results, text, query, total_ms=(time.perf_counter() - t0) * 1e3)
        return results

    def _render(self, results: Results, text: str, query: str | int | None, total_ms: float | None = None) -> None:
        g = self.gallery
        what = f"other {self.noun}" if isinstance(query, int) and not g.include_query else self.noun
        title = self._keep_shown(results, what)
        items = []
        for m in self._shown:
            # tweets carry HTML entities (&quot;, &amp;); a very long text is cut for its card
            shown_text = shorten(html.unescape(m.text))
            words, words_title = self.words.words(m.score) if self.words is not None else ("", "")
            items.append({"id": m.id, "rank": m.rank, "score": round(float(m.score), 4),
                          "band": self.bands.band(m.score) if self.bands else "", "text": shown_text,
                          "marks": highlight_marks(shown_text, text), "key": f"db:{m.id}",
                          "words": words, "words_title": words_title,
                          "is_query": isinstance(query, int) and m.id == query})
        detail = f"a {self.noun[:-1] if self.noun.endswith('s') else self.noun} of the database" \
            if isinstance(query, int) else "typed"
        with g.hold_sync():
            g.query = {"text": html.unescape(text), "name": "Query", "detail": detail}
            g.results = items
            g.results_title = title
            g.message = {}
            g.state = "idle"
            g.empty = self._empty_after_filter()
            g.render_id += 1
            g.status = self._status_dict(results, total_ms)

    def _status_dict(self, results: Results | None = None, total_ms: float | None = None) -> dict[str, object]:
        status: dict[str, object] = {"model": self.loader.status()}
        r = results if results is not None else self._results
        if r is not None:
            index = self.db.manifest.index
            mode = "exact search" if r.params.get("exact") or index is None else f"index {index.factory}"
            if r.params.get("rerank"):
                mode += f", best {r.params['rerank']}x candidates re-ranked exactly"
            total = f" \u00b7 total {total_ms:.0f} ms" if total_ms is not None else ""
            status["timing"] = f"Found in {total_ms if total_ms is not None else r.search_ms:.0f} ms"
            status["timing_title"] = (f"search {r.search_ms:.1f} ms ({mode}){total}; typed queries embedded with "
                                      f"the {self.query_backend} encoder")
        return status

    def _show_status(self) -> None:
        self.gallery.status = self._status_dict()

    def _safely(self, func: Callable[..., object], *args: object) -> object:
        try:
            return func(*args)
        except Exception as exc:
            logger.error("Error in the text app", exc_info=exc)
            self._show_message(user_message(exc))
            return None


def _same_text(text: str) -> str:
    """What two texts that differ only in case, spacing or HTML entities have in common."""
    return " ".join(html.unescape(text).casefold().split())


def collapse_case_duplicates(results: Results, k: int) -> Results:
    """The first ``k`` results whose texts differ by more than case, spacing or HTML entities (the best of each
    group kept), ranked 1 to ``k`` again."""
    seen: set[str] = set()
    kept: list[Match] = []
    for m in results:
        key = _same_text(m.text)
        if key in seen:
            continue
        seen.add(key)
        kept.append(Match(len(kept) + 1, m.id, m.score, m.item))
        if len(kept) == k:
            break
    return Results(kept, search_ms=results.search_ms, total_ms=results.total_ms, query_id=results.query_id,
                   params=results.params, item_key=results.item_key)


def text_search_app(db_path: str | os.PathLike[str], *, k: int = 8, max_k: int = 50,
                    seed: int | None = None, noun: str = "tweets") -> TextSearchApp | DatabaseMessage:
    """The search app for the text database at ``db_path``, or a message saying how to build one.

    Never raises for a missing or unusable database: the returned message explains the problem and lists the
    commands to run.
    """
    log_to_file()
    db = find_database(db_path)
    try:
        app = TextSearchApp(Database.open(db), k=k, max_k=max_k, seed=seed, noun=noun)
    except DatabaseError as exc:
        logger.info("No app for %s: %s", db, exc)
        return no_database_message(db_path, exc, what="text database", commands=build_commands(db),
                                   note="A build takes a few minutes for 20,000 tweets on 2 CPU cores.")
    except ConfigError as exc:
        return DatabaseMessage(f"{db_path} is not a text database", f"{exc}. Build a text database there with:",
                               [c.replace(" text build ", " text build --force ", 1) for c in build_commands(db)
                                if " text build " in c])
    app.loader.start()  # now: in a pre-heated Voilà kernel the encoder is ready before the first visitor
    return app
