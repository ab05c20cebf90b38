"""Reading short texts from a CSV file (or a list), ready to embed.

:func:`read_texts` skips empty, blank, NaN or missing texts (reported as
failures, with the row they came from) and, with ``dedupe``, texts equal to an
earlier one. A CSV is read with a header row; a ``.txt`` file is one text a
line.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SourceNotFoundError, TextInputError

__all__ = ["TextTable", "read_texts", "shorten"]

#: Characters of a text shown in a table of results (the rest is summarised).
DISPLAY_CHARS = 300


def shorten(text: str, limit: int = DISPLAY_CHARS) -> str:
    """``text`` for a display: at most ``limit`` characters, then how many more there are."""
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()}... [{len(text) - limit:,} more characters]"


def _clean(value: object) -> str | None:
    """The usable text of a cell, or ``None`` for a missing, NaN or blank one."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    text = str(value).strip()
    return text or None


@dataclass
class TextTable:
    """Texts read from a CSV file (or a list), ready to embed.

    Attributes:
        texts: The kept texts, in input order (stripped of outer whitespace).
        rows: For each kept text, its 1-based data row in the input (header not counted).
        failures: ``(where, reason)`` of rows without usable text (empty, blank, NaN, missing).
        duplicates: Rows skipped because the same text came earlier.
        rows_read: Data rows read.
    """

    texts: list[str]
    rows: list[int]
    failures: list[tuple[str, str]]
    duplicates: int
    rows_read: int

    def digest(self) -> str:
        """SHA-256 of the kept texts (identifies the input of an interrupted build)."""
        h = hashlib.sha256()
        for t in self.texts:
            h.update(t.encode("utf-8"))
            h.update(b"\0")
        return h.hexdigest()


def _collect(values: Iterable[tuple[int, str, object]], *, limit: int | None, dedupe: bool) -> TextTable:
    texts: list[str] = []
    rows: list[int] = []
    failures: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    duplicates = 0
    n = 0
    for row, where, value in values:
        n += 1
        text = _clean(value)
        if text is None:
            reason = "missing text" if value is None else "empty text"
            if isinstance(value, float):
                reason = "NaN text"
            failures.append((where, reason))
        elif dedupe and text in seen:
            duplicates += 1
        else:
            seen[text] = row
            texts.append(text)
            rows.append(row)
            if limit is not None and len(texts) >= limit:
                break
    return TextTable(texts=texts, rows=rows, failures=failures, duplicates=duplicates, rows_read=n)


def read_texts(source: str | os.PathLike[str] | Sequence[Any], *, column: str = "text", limit: int | None = None,
               dedupe: bool = True, encoding: str = "utf-8") -> TextTable:
    """Read texts from a CSV file with a header row, or take them from a list.

    Empty, blank, NaN or missing texts are skipped and reported as failures;
    with ``dedupe`` a text equal to an earlier one is skipped (and counted).

    Args:
        source: A CSV path (``.csv``, ``.tsv`` or any delimiter the sniffer
            recognises; a ``.txt`` file is read as one text per line), or a
            sequence of texts (``None`` and NaN allowed: they are reported).
        column: Name of the CSV column holding the texts.
        limit: Stop after this many kept texts (the first ones).
        dedupe: Skip repeated texts.
        encoding: Encoding of the file (``utf-8`` also accepts a BOM; use
            ``latin-1`` for the original Sentiment140 file).

    Returns:
        A :class:`TextTable`.

    Raises:
        SourceNotFoundError: If the file does not exist.
        TextInputError: If the column is missing, the file is not valid in
            ``encoding``, or no text is left.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be a positive integer, got {limit}")
    if not isinstance(source, (str, os.PathLike)):
        table = _collect(((i, f"item {i - 1}", v) for i, v in enumerate(source, start=1)), limit=limit, dedupe=dedupe)
        where = "the given texts"
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise SourceNotFoundError(f"No such CSV file: {path}")
        where = str(path)
        enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
        try:
            table = _read_file(path, column=column, limit=limit, dedupe=dedupe, encoding=enc)
        except UnicodeDecodeError as exc:
            raise TextInputError(
                f"{path} is not valid {encoding} text ({exc})", hint="Pass its encoding, e.g. encoding='latin-1'.",
                path=path, setting="encoding", value=encoding, expected="latin-1",
            ) from exc
        except csv.Error as exc:
            raise TextInputError(f"{path} is not a readable CSV file ({exc})") from exc
    if not table.texts:
        raise TextInputError(
            f"No usable text in {where}: {table.rows_read} rows read, {len(table.failures)} empty or missing"
            + (f", {table.duplicates} duplicates" if table.duplicates else "")
        )
    return table


def _read_file(path: Path, *, column: str, limit: int | None, dedupe: bool, encoding: str) -> TextTable:
    if path.suffix.lower() == ".txt":
        with open(path, encoding=encoding, newline="") as fh:
            return _collect(((i, f"{path.name} line {i}", line.rstrip("\r\n")) for i, line in enumerate(fh, start=1)),
                            limit=limit, dedupe=dedupe)
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))
    with open(path, encoding=encoding, newline="") as fh:
        head = fh.read(65536)
        fh.seek(0)
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        if path.suffix.lower() not in (".csv", ".tsv"):
            try:
                delimiter = csv.Sniffer().sniff(head, delimiters=",\t;|").delimiter
            except csv.Error:
                pass
        # strict: a quote that is never closed is an error, not every following line read into one text
        reader = csv.reader(fh, delimiter=delimiter, strict=True)
        header = next(reader, None)
        if header is None:
            raise TextInputError(f"{path} is empty; expected a header row with a {column!r} column")
        if column not in header:
            stripped = [h.strip() for h in header]
            if column in stripped:
                header = stripped
            else:
                raise TextInputError(
                    f"{path} has no column {column!r}; its columns are {header[:20]}",
                    hint="Pass the text column's name as column= (the file needs a header row).",
                    path=path, setting="column", value=column, expected=tuple(header[:20]),
                )
        col = header.index(column)

        def values() -> Iterator[tuple[int, str, object]]:
            i = 0
            start = reader.line_num + 1  # the line the next record starts on
            try:
                for rec in reader:
                    if rec:  # a blank line is no row
                        i += 1
                        yield i, f"{path.name} row {i} (line {start})", rec[col] if col < len(rec) else None
                    start = reader.line_num + 1
            except csv.Error as exc:
                raise TextInputError(_quote_error(path, exc, start, reader.line_num)) from None

        return _collect(values(), limit=limit, dedupe=dedupe)


def _quote_error(path: Path, exc: csv.Error, start: int, end: int) -> str:
    """Say which quote broke a CSV file, and how to fix it."""
    if "unexpected end of data" in str(exc):
        return (f"{path} line {start}: a quote (\") opens a text that is never closed, so the {end - start + 1:,} "
                f"lines from there to the end of the file would be read as one text. Close the quote, double "
                f"quotes inside quoted texts (\"\"), or remove the stray quote.")
    return (f"{path} line {end}: {exc} (in the record that starts on line {start}). A quote (\") opened on line "
            f"{start} seems never to be closed where it should be; close it, or double quotes inside quoted "
            f"texts (\"\").")
