"""What every notebook app shares: finding the database, the "no database" message, and plain-words errors.

Each app's ``open_*`` function never raises for a missing or damaged
database: it returns a :class:`DatabaseMessage` (shown as HTML, with the
commands that build one). Errors met while the app runs are turned into one
plain sentence by :func:`user_message`, chosen by the error's type.
"""

from __future__ import annotations

import html
import io
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

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
from ..sources.thumbnails import ThumbnailCache, ThumbnailConfig, placeholder_thumbnail
from ..store.manifest import MANIFEST

logger = logging.getLogger(__name__)

#: Thumbnails shared by the apps of one kernel (keyed by path, mtime, size and thumbnail size).
_THUMBNAILS = ThumbnailCache(ThumbnailConfig(size=128))

__all__ = ["DatabaseMessage", "find_database", "no_database_message", "user_message", "figure_png",
           "thumbnail_bytes", "thumbnail_array"]


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


def user_message(exc: BaseException) -> str:
    """One plain sentence about an error met while an app runs, chosen by the error's type."""
    text = _ADDRESS.sub("the data", str(exc)).strip()
    if isinstance(exc, ImageLoadError):
        if "cannot identify image file" in text or "UnidentifiedImageError" in text:
            return "not a readable image (unknown or unsupported format)"
        return text
    if isinstance(exc, FetchError):
        return text
    if isinstance(exc, BadURLError):
        return text
    if isinstance(exc, UnknownIdError):
        return text
    if isinstance(exc, (QueryError, InputError)):
        return text
    if isinstance(exc, WeightsError):
        return f"The model could not be loaded: {text}"
    if isinstance(exc, SimilarImagesError):
        return text
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "Interrupted."
    return f"Something went wrong ({type(exc).__name__}: {text}). The app is still usable."


def thumbnail_bytes(path: str | os.PathLike[str], size: int = 128) -> bytes:
    """A JPEG thumbnail (longer side ``size``) of an image file, cached; a grey placeholder if it cannot be read."""
    try:
        return _THUMBNAILS.get(path, size)
    except ImageLoadError as exc:
        logger.warning("Cannot show %s: %s", path, exc)
        return placeholder_thumbnail(size, "unreadable")


def thumbnail_array(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 tile with the image's thumbnail centred on white (grey if unreadable)."""
    img = Image.open(io.BytesIO(thumbnail_bytes(path, size))).convert("RGB")
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    arr = np.asarray(img)[:size, :size]
    y0, x0 = (size - arr.shape[0]) // 2, (size - arr.shape[1]) // 2
    canvas[y0:y0 + arr.shape[0], x0:x0 + arr.shape[1]] = arr
    return canvas


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (for ``ipywidgets.Image`` or ``IPython.display.Image``), without any GUI
    backend."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
