"""Small pieces of what a page shows: HTML that Jupyter displays, a matplotlib figure as PNG, a long name
shortened in the middle."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["HTML", "figure_png", "shorten_middle"]


class HTML:
    """HTML shown as such by Jupyter (``_repr_html_``), without importing IPython here."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_html_(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


def figure_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (for ``ipywidgets.Image`` or ``IPython.display.Image``), without any GUI
    backend."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def shorten_middle(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters in the middle, keeping its end (where file names differ)."""
    if len(text) <= width or width < 8:
        return text
    tail = -(-(width - 1) * 6 // 10)
    head = width - 1 - tail
    return text[:head] + "\u2026" + text[len(text) - tail:]
