"""What every notebook app shares: finding the database, the "no database" message, plain-words errors,
a clean output area, and the query model loading in the background (thumbnails and figures are
:mod:`similar_images.presentation`'s).

Each app's ``open_*`` function never raises for a missing or damaged
database: it returns a :class:`DatabaseMessage` (shown as HTML, with the
commands that build one). Errors met while the app runs are turned into one
plain sentence by :func:`user_message`, chosen by the error's type.

Nothing the libraries print belongs in a notebook's output area: the apps send
the package's log records, and everything TensorFlow, Keras, absl or Faiss
write while a model loads or runs (:func:`quiet_output`), to a log file
(:func:`app_log_path`).
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TextIO

import numpy as np

from .._util.io import user_cache_dir
from ..embed import item_kind
from ..errors import (
    BadURLError,
    DatabaseCorruptError,
    DatabaseError,
    DatabaseNotFoundError,
    FetchError,
    ImageLoadError,
    InputError,
    QueryError,
    SimilarImagesError,
    UnknownIdError,
    WeightsError,
)
from ..index import ScoreBands
from ..index.bands import BandWords, calibrate_words, folder_labels
from ..store import Database
from ..store.live import BuildProgress
from ..store.manifest import MANIFEST

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

__all__ = ["DatabaseMessage", "find_database", "no_database_message", "user_message", "app_log_path", "log_to_file",
           "quiet_output", "ModelLoader", "database_header", "index_words", "band_legend", "band_words",
           "unreadable_image", "progress_sentence"]


class DatabaseMessage:
    """What a notebook shows instead of an app when the database cannot be opened.

    Displayed as HTML, and as plain text (so the commands show in any front end, with or without a widget
    manager).

    Attributes:
        title: One line: what is wrong.
        detail: More about it (may be empty).
        commands: Shell commands that fix it.
        note: A last line (e.g. other ways to get a database).
    """

    def __init__(self, title: str, detail: str = "", commands: Sequence[str] = (), note: str = "") -> None:
        self.title = title
        self.detail = detail
        self.commands = list(commands)
        self.note = note

    @property
    def text(self) -> str:
        """The message as plain text."""
        parts = [self.title]
        if self.detail:
            parts.append(self.detail)
        if self.commands:
            parts.append("\n".join(f"  {c}" for c in self.commands))
        if self.note:
            parts.append(self.note)
        return "\n\n".join(parts)

    @property
    def html(self) -> str:
        """The message as HTML."""
        cmds = (f"<pre style='background:#fff;border:1px solid #dde;border-radius:4px;padding:8px;margin:8px 0'>"
                f"{html.escape(chr(10).join(self.commands))}</pre>") if self.commands else ""
        note = f"<div style='color:#555;font-size:0.92em'>{html.escape(self.note)}</div>" if self.note else ""
        return ("<div class='si-db-message' style='font-family:var(--jp-ui-font-family,system-ui,sans-serif);"
                "border:1px solid #bcd6f2;background:#f3f8fd;border-radius:8px;padding:12px 16px;max-width:820px'>"
                f"<div style='font-size:1.15em;font-weight:600;margin-bottom:6px'>{html.escape(self.title)}</div>"
                f"<div style='white-space:pre-wrap'>{html.escape(self.detail)}</div>{cmds}{note}</div>")

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return self.html


def find_database(path: str | os.PathLike[str]) -> Path:
    """Resolve a database folder: a relative path is looked up from the current folder, then its parent.

    The parent lets ``data/coco-db`` (relative to the project) work from a notebook that runs in
    ``notebooks/``. Returns ``path`` unchanged when it is found nowhere.
    """
    p = Path(path).expanduser()
    if p.is_absolute() or (p / MANIFEST).exists():
        return p
    parent = Path.cwd().parent / p
    return parent if (parent / MANIFEST).exists() else p


def no_database_message(path: str | os.PathLike[str], exc: DatabaseError, *, what: str,
                        commands: Sequence[str], note: str = "") -> DatabaseMessage:
    """The message shown when the database at ``path`` cannot be opened.

    Args:
        path: The database folder as the user named it.
        exc: Why it cannot be opened.
        what: What kind of database the app wants ("image database", "text database").
        commands: The commands that build one.
        note: A last line (other ways to get one).
    """
    name = str(path)
    if isinstance(exc, DatabaseNotFoundError):
        return DatabaseMessage(f"No {what} at {name}",
                               f"Looked in {Path.cwd()} and its parent. Build one, then run this notebook again:",
                               commands, note)
    fix = "Rebuild it:" if isinstance(exc, DatabaseCorruptError) else ""
    return DatabaseMessage(f"The {what} at {name} cannot be opened", f"{exc}\n{fix}".strip(),
                           commands if fix else (), note if fix else "")


_ADDRESS = re.compile(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>")


def _unknown_format(text: str) -> bool:
    """Whether an image error's text says the data is no image format Pillow knows."""
    return any(words in text for words in ("cannot identify image file", "UnidentifiedImageError",
                                           "not a readable image"))


def user_message(exc: BaseException) -> str:
    """One plain sentence about an error met while an app runs, chosen by the error's type."""
    ready = getattr(exc, "user_text", None)
    if ready:
        return str(ready)
    text = _ADDRESS.sub("the data", str(exc)).strip()
    if isinstance(exc, ImageLoadError):
        if _unknown_format(text):
            return ("This is not an image the app can read (unknown or unsupported format). Use a JPEG, PNG, GIF, "
                    "BMP, WebP or TIFF file.")
        return f"This image cannot be read: {text}"
    if isinstance(exc, FetchError):
        return text
    if isinstance(exc, BadURLError):
        return text
    if isinstance(exc, UnknownIdError):
        return text
    if isinstance(exc, (QueryError, InputError)):
        return text
    if isinstance(exc, WeightsError):
        return "The model could not be loaded: " + _with_advice(text, exc)
    if isinstance(exc, SimilarImagesError):
        return _with_advice(text, exc)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "Interrupted."
    return (f"Something went wrong ({type(exc).__name__}: {text}). The app is still usable; "
            f"details are in {app_log_path()}.")


def app_advice(exc: SimilarImagesError) -> str | None:
    """What an app's user can do about a library error, from the data it carries (``None``: nothing to add).

    The apps are opened with :func:`open_app`-style keywords (``weights=``) and show their databases: the advice
    names those, and the command that repairs a database outside the app.
    """
    if isinstance(exc, DatabaseCorruptError) and exc.rebuild == "index" and exc.database is not None:
        return f"Rebuild its index (similar-images build-index {exc.database} --force), then open the app again."
    if isinstance(exc, DatabaseNotFoundError) and exc.partial is not None:
        return "Its build was interrupted: run the same build again to resume it, then open the app again."
    if exc.setting == "weights" and exc.value == "imagenet":
        return "Without internet access, open the app with weights= the path of a local weights file."
    if exc.setting == "model_path":
        return "Open the app with the path of a local model folder."
    return None


def _with_advice(text: str, exc: SimilarImagesError) -> str:
    """``text`` (the error's message), or the problem alone followed by the app's advice where it has one."""
    hint = app_advice(exc)
    if hint is None:
        return text
    problem = _ADDRESS.sub("the data", exc.problem or text).strip()  # the app's advice replaces the library's hint
    return f"{problem}{'' if problem.endswith('.') else '.'} {hint}"


def unreadable_image(name: str, exc: ImageLoadError) -> ImageLoadError:
    """The error to show for an image named ``name`` that cannot be read, in one plain sentence."""
    text = _ADDRESS.sub("the data", str(exc)).strip()
    if _unknown_format(text):
        words = (f"'{name}' is not an image the app can read (unknown or unsupported format). Use a JPEG, PNG, GIF, "
                 "BMP, WebP or TIFF file.")
    elif "truncated" in text:
        words = f"'{name}' is damaged or incomplete (the image data is cut short). Use the whole file."
    else:
        words = f"'{name}' cannot be read as an image ({text})."
    err = ImageLoadError(words)
    err.user_text = words  # type: ignore[attr-defined]
    return err


# ---------------------------------------------------------------------------- a clean output area
_LOG_LOCK = threading.Lock()
_LOG_STREAM: IO[str] | None = None


def app_log_path() -> Path:
    """Where the apps write their log: ``SIMILAR_IMAGES_APP_LOG``, or ``similar-images/apps.log`` in the user's
    cache folder (``XDG_CACHE_HOME`` or ``~/.cache``)."""
    env = os.environ.get("SIMILAR_IMAGES_APP_LOG")
    if env:
        return Path(env).expanduser()
    return user_cache_dir() / "apps.log"


def _log_stream() -> IO[str]:
    """The log file, opened once per process (appended to; ``os.devnull`` if it cannot be written)."""
    global _LOG_STREAM
    with _LOG_LOCK:
        if _LOG_STREAM is None:
            path = app_log_path()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _LOG_STREAM = open(path, "a", encoding="utf-8", buffering=1)
            except OSError:
                _LOG_STREAM = open(os.devnull, "w", encoding="utf-8")
        return _LOG_STREAM


_LOGGERS = ("similar_images", "faiss", "tensorflow", "absl", "keras", "h5py", "sentence_transformers",
            "transformers", "torch", "PIL", "matplotlib", "py.warnings")


def log_to_file() -> Path:
    """Send the log records of this package and of the libraries the apps use to :func:`app_log_path`, so that
    none reaches a notebook's output area (Python's last-resort handler prints warnings there otherwise).

    Loggers that already have handlers (configured by the user) keep them. Returns the log file's path.
    Called by every app when it opens; calling it again does nothing.
    """
    stream = _log_stream()
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        if not any(getattr(h, "_similar_images_app", False) for h in lg.handlers):
            handler = logging.StreamHandler(stream)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            handler._similar_images_app = True  # type: ignore[attr-defined]
            lg.addHandler(handler)  # levels are left alone: the process's logging setup is not the app's
    return app_log_path()


class _Router:
    """Stands for ``sys.stdout`` or ``sys.stderr``: what a quiet thread writes goes to the log, the rest to the
    stream it replaced. Handlers created meanwhile (TensorFlow's, absl's) may keep it: it stays correct."""

    def __init__(self, original: TextIO) -> None:
        self._original = original

    def write(self, text: str) -> int:
        if _QUIET_THREADS.get(threading.get_ident()):
            return _log_stream().write(text)
        return self._original.write(text)

    def flush(self) -> None:
        if _QUIET_THREADS.get(threading.get_ident()):
            _log_stream().flush()
        else:
            self._original.flush()

    def close(self) -> None:
        """Never closes the stream it stands for (absl's handler closes its stream when the process exits)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


_QUIET_LOCK = threading.Lock()
_QUIET_THREADS: Counter[int] = Counter()
_QUIET_STATE: dict[str, Any] = {}  # saved descriptors and streams, nesting depth


@contextlib.contextmanager
def quiet_output() -> Iterator[Path]:
    """Send what is written while the block runs to the app log instead of the notebook.

    For the calling thread: ``print``, warnings and log handlers that write to ``sys.stdout``/``sys.stderr``.
    For the whole process, while any such block runs: what C and C++ code writes to file descriptors 1 and 2
    (TensorFlow's and absl's start-up lines, Faiss' clustering warnings). Blocks may nest and run in several
    threads at once. Yields the log file's path.
    """
    ident = threading.get_ident()
    with _QUIET_LOCK:
        _QUIET_THREADS[ident] += 1
        if _QUIET_STATE.get("depth", 0) == 0:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            log_fd = _log_stream().fileno()
            saved: list[int] = []
            try:
                for fd in (1, 2):
                    saved.append(os.dup(fd))
                    os.dup2(log_fd, fd)
            except OSError:  # no such descriptors (an embedded interpreter): Python-level routing only
                for fd, old in zip((1, 2), saved):
                    os.dup2(old, fd)
                    os.close(old)
                saved = []
            _QUIET_STATE["saved"] = saved
            _QUIET_STATE["streams"] = (sys.stdout, sys.stderr)
            if not isinstance(sys.stdout, _Router):
                sys.stdout = _Router(sys.stdout)
            if not isinstance(sys.stderr, _Router):
                sys.stderr = _Router(sys.stderr)
        _QUIET_STATE["depth"] = _QUIET_STATE.get("depth", 0) + 1
    try:
        yield app_log_path()
    finally:
        with _QUIET_LOCK:
            _QUIET_THREADS[ident] -= 1
            if _QUIET_THREADS[ident] <= 0:
                del _QUIET_THREADS[ident]
            _QUIET_STATE["depth"] -= 1
            if _QUIET_STATE["depth"] == 0:
                with contextlib.suppress(Exception):
                    _log_stream().flush()
                for fd, old in zip((1, 2), _QUIET_STATE.pop("saved", [])):
                    os.dup2(old, fd)
                    os.close(old)
                out, err = _QUIET_STATE.pop("streams")
                if isinstance(sys.stdout, _Router) and sys.stdout is not out:
                    sys.stdout = out
                if isinstance(sys.stderr, _Router) and sys.stderr is not err:
                    sys.stderr = err


# ---------------------------------------------------------------------------- the query model, in the background
class ModelLoader:
    """Loads a query model once, in a background thread, and says how far it got (for the status line).

    Args:
        load: Builds the model (its output goes to the app log, see :func:`quiet_output`).
        what: What is loaded, for the status line ("the image model (vgg16-avg)").
        on_change: Called (from the loading thread too) whenever :attr:`state` changes.

    Attributes:
        state: ``"idle"``, ``"loading"``, ``"ready"`` or ``"failed"``.
        seconds: How long loading took (``None`` until it ended).
        error: Why it failed (``None`` unless ``state == "failed"``).
    """

    def __init__(self, load: Callable[[], Any], what: str, on_change: Callable[[], None] | None = None) -> None:
        self._load = load
        self.what = what
        self.on_change = on_change
        self.state = "idle"
        self.seconds: float | None = None
        self.error: BaseException | None = None
        self._t0 = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        """Start loading in a background thread (once; later calls return the same thread)."""
        with self._lock:
            if self._thread is None:
                self._t0 = time.perf_counter()
                self.state = "loading"
                self._thread = threading.Thread(target=self._run, name="similar-images-model", daemon=True)
                self._thread.start()
                started = True
            else:
                started = False
        if started:
            self._changed()
        return self._thread

    def _run(self) -> None:
        try:
            with quiet_output():
                self._load()
        except BaseException as exc:
            if sys.is_finalizing():
                return  # the kernel is shutting down under the loading model
            logger.warning("Could not load %s", self.what, exc_info=True)
            self.error = exc
            self.state = "failed"
        else:
            self.state = "ready"
        self.seconds = time.perf_counter() - self._t0
        self._done.set()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                logger.warning("Status update failed", exc_info=True)

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def elapsed(self) -> float:
        """Seconds since loading started (its duration once it ended)."""
        if self.seconds is not None:
            return self.seconds
        return time.perf_counter() - self._t0 if self._thread is not None else 0.0

    def wait(self, timeout: float | None = None) -> None:
        """Load (if not started) and wait until the model is ready.

        Raises:
            SimilarImagesError: The error that stopped the loading (a later call tries again).
        """
        self.start().join(timeout)
        if self.state == "failed" and self.error is not None:
            exc = self.error
            with self._lock:  # try again next time (a weights file may have been fixed meanwhile)
                self._thread, self.state, self.error, self.seconds = None, "idle", None, None
                self._done.clear()
            raise exc

    def status(self) -> dict[str, object]:
        """The model part of the status line, for the page."""
        if self.state == "loading":
            return {"state": "loading", "label": f"Loading {self.what}", "elapsed": round(self.elapsed(), 2),
                    "title": "Searches with database images work meanwhile; uploads and URLs wait for the model."}
        if self.state == "ready":
            return {"state": "ready", "label": f"Model ready ({self.seconds:.1f} s to load)",
                    "title": f"{self.what} is loaded"}
        if self.state == "failed":
            return {"state": "failed", "label": f"{self.what[:1].upper() + self.what[1:]} could not be loaded: "
                                               f"{user_message(self.error) if self.error else ''}",
                    "title": f"Details in {app_log_path()}"}
        return {"state": "idle", "label": "Model not loaded yet", "title": "It loads when the app is shown"}


# ---------------------------------------------------------------------------- words for the page
def index_words(db: Database) -> str:
    """The database's index in plain words ("exact search", "approximate index IVF64,PQ16, recall@10 0.97")."""
    info = db.manifest.index
    if info is None or db.index is None:
        return "exact search (no index)"
    if info.factory.strip().lower() in ("flat", "idmap,flat", "idmap2,flat"):
        return "exact index (Flat)"
    recall = info.get("recall_at_10_served") or info.get("recall_at_10")
    return f"approximate index {info.factory}" + (f", recall@10 {float(recall):.2f}" if recall is not None else "")


def band_words(db: Database) -> BandWords | None:
    """Words for the scores of ``db`` (see :func:`~similar_images.index.bands.calibrate_words`): calibrated on its
    classes when its images lie in one folder per class, compared with the collection otherwise (texts too)."""
    base = db.score_bands()
    if base is None:
        return None
    live = db.live_ids()
    if len(live) < 2:
        return None
    labels = folder_labels([db.items[i] for i in live]) if item_kind(db.kind).files else None
    rows = live if len(live) <= _CALIBRATION_ROWS else np.sort(np.random.default_rng(0).choice(
        live, _CALIBRATION_ROWS, replace=False))
    if labels is not None and len(rows) < len(live):
        labels = [labels[int(j)] for j in np.searchsorted(live, rows)]
    return calibrate_words(np.asarray(db.vectors[rows], dtype=np.float32), base, labels, sample=_CALIBRATION_QUERIES,
                           item="picture" if item_kind(db.kind).files else "text")


#: Most items a calibration looks at (their nearest neighbours are searched exactly among them), and the queries
#: it samples: at most a second or so when an app opens, even for 4096-d vectors.
_CALIBRATION_ROWS = 5_000
_CALIBRATION_QUERIES = 400


def database_header(db: Database, title: str, noun: str) -> dict[str, object]:
    """The app header in plain words: title, how many items, how they are compared, the collection's name.

    The model and the index (what a class does not need to read) are on hover; the folder's path on the server is
    not sent to the page.
    """
    how = "compared by meaning" if db.kind == "text" else "compared by what they show"
    return {"title": title, "parts": [
        {"text": f"{len(db):,} {noun}"},
        {"text": how, "title": f"model {db.model_name} ({db.dim}-d), {index_words(db)}"},
        {"text": Path(db.path).name},
    ]}


_BAND_WORDS = {
    "near-duplicate": "the same picture, resized, recompressed or lightly edited",
    "very similar": "as close as the best match of a typical item in this database",
    "similar": "closer than the best match of 1 item in 10 of this database",
    "weak": "most items of this database have a closer match: probably unrelated",
}


def band_legend(bands: ScoreBands | None, words: BandWords | None = None) -> tuple[list[dict[str, object]], str]:
    """The legend for the page: ``([{name, min, title, label, text}], note)``; empty without bands.

    With ``words`` (see :func:`band_words`) the legend says what each band means on this collection: the measured
    share of results of the query's class (labeled collections), or how the score compares with the collection.
    """
    if words is not None:
        bands = words.bands
    if bands is None:
        return [], ""
    legend = []
    for name, lo in bands.legend():
        item = {"name": name, "min": round(max(lo, 0.0), 4), "title": _BAND_WORDS[name]}
        if words is not None:
            item.update(label=words.label(name), text=words.describe(name), title=words.describe(name))
        legend.append(item)
    if words is not None and words.kind == "labels":
        return legend, (f"Measured on {words.queries:,} labeled photos of this collection (one folder per class): how "
                        f"often results in each band show the query's class (a random photo: "
                        f"{words.in_ten(words.chance)}).")
    if words is not None:
        return legend, ("This collection has no labels (one folder per class): a score is compared with random pairs "
                        "of its items, which says how close two items are, not whether they show the same thing.")
    n = bands.n or bands.percentiles.get("n", 0)
    note = (f"Thresholds measured on this database: the similarity of each of {int(n):,} items to its nearest "
            f"neighbour (median {bands.very_similar:.2f}).")
    return legend, note


def _about(seconds: float) -> str:
    """A duration in plain words: "less than a minute", "about 38 minutes", "about 1 hour 20 minutes"."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "less than a minute"
    if minutes < 90:
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    hours, rest = divmod(minutes, 60)
    return f"about {hours} hour{'s' if hours != 1 else ''}" + (f" {rest} minutes" if rest else "")


def progress_sentence(progress: BuildProgress, noun: str = "photos") -> str | None:
    """A database build's progress in plain words, for a status line (``None`` when nothing is in progress).

    Example: "12,345 of 40,504 photos ready; the rest in about 38 minutes; search works now."
    """
    p = progress
    if p.phase == "extracting":
        if p.ready == 0:
            return f"No {noun} ready yet: the first ones are being extracted ({p.total:,} in all)."
        rest = f"the rest in {_about(p.eta_s)}" if p.eta_s is not None else "the rest are being extracted"
        return f"{p.ready:,} of {p.total:,} {noun} ready; {rest}; search works now."
    if p.phase == "interrupted":
        return (f"{p.ready:,} of {p.total:,} {noun} ready; the extraction stopped (run it again to resume); "
                "search works now.")
    if p.phase == "indexing":
        return f"All {p.ready:,} {noun} ready; the index is being built; search works now (exact until it is done)."
    return None
