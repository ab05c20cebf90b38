"""Strict parsing of untrusted text: integers written in ASCII digits, and text that must be valid UTF-8.

``str.isdigit()`` is true for ``"²"`` and ``"١"``, and ``"--1".lstrip("+-")`` is all digits, yet ``int()`` refuses
all three; ``int()`` itself takes ``"1_000"`` and non-ASCII digits. Every integer a client or a server sends (a
request field, a ``Content-Length`` header, a command-line target) goes through :func:`parse_int` instead.
"""

from __future__ import annotations

import re

__all__ = ["MAX_INT_DIGITS", "parse_int", "shown", "undecodable_at"]

#: Most digits of an integer field: 18 digits fit a signed 64-bit integer (Faiss, NumPy), so no value that passes
#: reaches a C library as an overflow.
MAX_INT_DIGITS = 18

_INT = re.compile(r"[+-]?[0-9]+")
_SPACE = " \t\r\n"


def parse_int(text: str, *, max_digits: int = MAX_INT_DIGITS) -> int | None:
    """``text`` as an integer: an optional sign and 1 to ``max_digits`` ASCII digits, spaces around allowed.

    Args:
        text: The text, e.g. a query-string value or a header.
        max_digits: Most digits accepted (longer numbers are refused, not parsed: bounded work, and no
            value too large for a 64-bit integer).

    Returns:
        The integer, or ``None`` for anything else (``"--1"``, ``"²"``, ``"1_000"``, ``"1.0"``, ``""``, a longer
        number); the caller raises its own error, naming its field.
    """
    if len(text) > max_digits + 64:  # bounded work before the regular expression
        return None
    stripped = text.strip(_SPACE)
    if not _INT.fullmatch(stripped) or len(stripped.lstrip("+-")) > max_digits:
        return None
    return int(stripped)


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for an error message that names a bad input (one line,
    however long or multi-line the input)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def undecodable_at(text: str) -> int | None:
    """The position of the first character of ``text`` that was an undecodable byte, or ``None``.

    Python hands undecodable bytes of command-line arguments and file names over as lone surrogates
    (``"\\udcff"`` for the byte 0xff); they cannot be encoded as UTF-8, so a tokenizer or a JSON writer fails on
    them far from where they came in.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None
