"""The Sentiment140 tweets (Go, Bhayani and Huang, Stanford, 2009): download, read and sample.

:func:`get_sentiment140` downloads the training archive (1.6 million tweets,
about 81 MB, resumable) with :func:`similar_images._util.http.download_file`,
checks it with :func:`~similar_images._util.archives.verify_zip`, reads it
(:func:`read_sentiment140`: latin-1, no header, 6 columns) and writes a
reproducible random sample to a CSV with a ``text`` column.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .._util import io as _io
from .._util.archives import move_aside, verify_zip
from .._util.download import download_file
from .._util.progress import byte_progress
from ..errors import ConfigError, DownloadError, SourceNotFoundError, TextInputError

__all__ = [
    "SENTIMENT140_URL",
    "SENTIMENT140_MEMBER",
    "SENTIMENT140_COLUMNS",
    "SENTIMENT140_ROWS",
    "LOCAL_TEXTS_HINT",
    "read_sentiment140",
    "sample_tweets",
    "write_texts_csv",
    "get_sentiment140",
]

logger = logging.getLogger(__name__)

#: The Sentiment140 archive (Go, Bhayani and Huang, Stanford, 2009).
SENTIMENT140_URL = "https://cs.stanford.edu/people/alecmgo/trainingandtestdata.zip"
#: The training file inside the archive: 1.6 million tweets, latin-1, no header.
SENTIMENT140_MEMBER = "training.1600000.processed.noemoticon.csv"
#: Its six columns.
SENTIMENT140_COLUMNS = ("target", "id", "date", "flag", "user", "text")
#: Number of tweets in the training file.
SENTIMENT140_ROWS = 1_600_000

#: Appended to network errors: what to do without network access.
LOCAL_TEXTS_HINT = (
    "Without network access, use a local CSV file with a 'text' column instead (build a text database from "
    "it)."
)


def _open_sentiment140(path: Path) -> io.TextIOBase:
    if zipfile.is_zipfile(path):
        zf = zipfile.ZipFile(path)
        names = zf.namelist()
        member = next((n for n in names if n.rsplit("/", 1)[-1] == SENTIMENT140_MEMBER), None)
        if member is None:
            zf.close()
            raise TextInputError(f"{path} does not contain {SENTIMENT140_MEMBER} (it holds {names[:10]})")
        raw = zf.open(member)
        text = io.TextIOWrapper(raw, encoding="latin-1", newline="")
        text._similar_zip = zf  # type: ignore[attr-defined]  # keep the archive open with the member
        return text
    return open(path, encoding="latin-1", newline="")


def read_sentiment140(path: str | os.PathLike[str]) -> Iterator[dict[str, str]]:
    """Read the Sentiment140 training file, row by row.

    Args:
        path: The archive ``trainingandtestdata.zip`` or the extracted
            ``training.1600000.processed.noemoticon.csv`` (latin-1, no
            header, six columns: target, id, date, flag, user, text).

    Yields:
        One dict per tweet with the keys of :data:`SENTIMENT140_COLUMNS`.

    Raises:
        SourceNotFoundError: If ``path`` does not exist.
        TextInputError: If a row does not have six columns, or the archive lacks the file.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceNotFoundError(f"No such file: {path}")
    fh = _open_sentiment140(path)
    try:
        for i, rec in enumerate(csv.reader(fh), start=1):
            if len(rec) != len(SENTIMENT140_COLUMNS):
                raise TextInputError(
                    f"{path}: row {i} has {len(rec)} columns, expected 6 ({', '.join(SENTIMENT140_COLUMNS)}); "
                    "is this the Sentiment140 training file?"
                )
            yield dict(zip(SENTIMENT140_COLUMNS, rec))
    finally:
        fh.close()
        zf = getattr(fh, "_similar_zip", None)
        if zf is not None:
            zf.close()


def sample_tweets(rows: Iterable[dict[str, str]], n: int = 20_000, *, seed: int = 0) -> list[dict[str, str]]:
    """A reproducible uniform random sample of ``n`` rows, in their original order.

    Reservoir sampling (one pass, memory for ``n`` rows): the same input and
    seed always give the same sample.

    Raises:
        ConfigError: If ``n`` is not positive.
    """
    if n < 1:
        raise ConfigError(f"n must be a positive integer, got {n}")
    rng = random.Random(seed)
    reservoir: list[tuple[int, dict[str, str]]] = []
    for i, row in enumerate(rows):
        if i < n:
            reservoir.append((i, row))
        else:
            j = rng.randint(0, i)
            if j < n:
                reservoir[j] = (i, row)
    reservoir.sort(key=lambda x: x[0])
    return [row for _, row in reservoir]


def write_texts_csv(rows: Iterable[dict[str, str]], dest: str | os.PathLike[str],
                    columns: Sequence[str] = ("text", "target", "id")) -> int:
    """Atomically write rows to a UTF-8 CSV file with a header (``text`` first).

    Returns:
        The number of rows written.
    """
    n = 0
    with _io.atomic_path(dest) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row.get(c, "") for c in columns])
            n += 1
    return n


def get_sentiment140(dest: str | os.PathLike[str], *, n: int = 20_000, seed: int = 0,
                     archive: str | os.PathLike[str] | None = None, url: str = SENTIMENT140_URL,
                     download_dir: str | os.PathLike[str] | None = None, timeout: float = 10.0,
                     verbose: bool = True) -> Path:
    """Write a random sample of ``n`` Sentiment140 tweets to the CSV file ``dest``.

    Downloads the archive (about 81 MB, resumable) unless ``archive`` names a
    local copy (the zip or the extracted CSV), checks it, and samples it with
    :func:`sample_tweets`.

    Args:
        dest: The CSV file to write (columns ``text``, ``target``, ``id``).
        n: Tweets to sample.
        seed: Seed of the sample.
        archive: A local ``trainingandtestdata.zip`` or training CSV (no download).
        url: Address of the archive.
        download_dir: Where the archive is kept (default: next to ``dest``).
        timeout: Seconds allowed for the name lookup and for connecting.
        verbose: Show progress bars.

    Returns:
        ``dest``.

    Raises:
        DownloadError: If the download fails (with a hint to use a local CSV) or the archive is corrupt.
    """
    dest = Path(dest).expanduser()
    if archive is None:
        folder = Path(download_dir).expanduser() if download_dir else dest.parent
        archive = folder / url.rstrip("/").rsplit("/", 1)[-1]
        with byte_progress(archive.name, enabled=verbose) as progress:
            download_file(url, archive, timeout=timeout, progress=progress, offline_hint=LOCAL_TEXTS_HINT,
                          offline_source="texts")
        try:
            verify_zip(archive, verbose=verbose)
        except DownloadError as exc:
            aside = move_aside(archive)
            raise DownloadError(f"{exc}. It was moved aside to {aside}; re-run to download it again.") from exc
    archive = Path(archive).expanduser()
    rows: Iterable[dict[str, str]] = read_sentiment140(archive)
    if verbose:
        rows = tqdm(rows, total=SENTIMENT140_ROWS, unit="tweet", desc="sample")
    sample = sample_tweets(rows, n, seed=seed)
    count = write_texts_csv(sample, dest)
    logger.info("Wrote %d tweets (seed %d) to %s", count, seed, dest)
    return dest
