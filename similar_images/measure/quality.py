"""Retrieval quality with class labels: precision@k and mAP@k of leave-one-out queries.

Labels come from the images' folders (class sub-folders) or from a CSV of
``path,label``. Average precision at k of one query, with ``rel_i`` = 1 when
result ``i`` has the query's label and ``R`` = the number of other items with
that label::

    AP@k = sum_{i<=k} P@i * rel_i / min(k, R)

Queries whose label no other item has (``R = 0``) are skipped.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..embed import item_kind
from ..errors import ConfigError, InputError, SourceNotFoundError

if TYPE_CHECKING:
    from ..store import Database

__all__ = [
    "ClassQuality",
    "QualityReport",
    "precision_at_k",
    "average_precision_at_k",
    "labels_from_folders",
    "folders_not_classes",
    "read_labels_csv",
    "resolve_labels",
    "retrieval_quality",
]

logger = logging.getLogger(__name__)


@dataclass
class ClassQuality:
    """Retrieval quality of the queries of one class."""

    label: str
    n_queries: int
    precision: float
    map: float


@dataclass
class QualityReport:
    """Precision@k and mAP@k with leave-one-out labeled queries.

    Attributes:
        k: The cut-off.
        search: ``"exact"`` (the features' own quality) or ``"index"`` (as served by the index).
        labels_source: Where the labels came from (``"folders"`` or a CSV path).
        n_queries: Queries counted (labeled, with at least one other item of their label).
        n_classes: Distinct labels.
        precision: Mean precision@k.
        map: Mean average precision@k.
        chance: Expected precision@k of a random ranking (mean share of same-label items).
        per_class: Figures by label.
    """

    k: int
    search: str
    labels_source: str
    n_queries: int
    n_classes: int
    precision: float
    map: float
    chance: float
    per_class: list[ClassQuality] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        for key in ("precision", "map", "chance"):
            d[key] = round(d[key], 4)
        for row in d["per_class"]:
            row["precision"] = round(row["precision"], 4)
            row["map"] = round(row["map"], 4)
        return d


def precision_at_k(result_labels: np.ndarray, query_labels: np.ndarray, k: int) -> np.ndarray:
    """Per-query share of the top ``k`` results that carry the query's label.

    Args:
        result_labels: ``(q, >=k)`` label codes of the results (``-1``: unlabeled or missing, never relevant).
        query_labels: ``(q,)`` label codes of the queries.
        k: The cut-off (missing results count as misses).
    """
    rel = (np.asarray(result_labels)[:, :k] == np.asarray(query_labels)[:, None]) & (
        np.asarray(result_labels)[:, :k] >= 0)
    return rel.sum(axis=1) / float(k)


def average_precision_at_k(result_labels: np.ndarray, query_labels: np.ndarray, n_relevant: np.ndarray,
                           k: int) -> np.ndarray:
    """Per-query AP@k = sum over ranks i <= k of P@i * rel_i, divided by min(k, R).

    Args:
        result_labels: ``(q, >=k)`` label codes of the results, best first (``-1`` never relevant).
        query_labels: ``(q,)`` label codes of the queries.
        n_relevant: ``(q,)`` number ``R`` of relevant items for each query (excluding itself); must be >= 1.
        k: The cut-off.
    """
    labels = np.asarray(result_labels)[:, :k]
    rel = ((labels == np.asarray(query_labels)[:, None]) & (labels >= 0)).astype(np.float64)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    prec_at_i = np.cumsum(rel, axis=1) / ranks
    denom = np.minimum(k, np.asarray(n_relevant, dtype=np.float64))
    if np.any(denom < 1):
        raise ValueError("average_precision_at_k needs at least one relevant item per query (R >= 1)")
    return (prec_at_i * rel).sum(axis=1) / denom


def labels_from_folders(items: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Label every image by the name of the folder that holds it.

    Returns:
        ``(codes, names)``: ``codes[i]`` indexes ``names`` (sorted label names).
    """
    parents = [Path(p).parent.name for p in items]
    names = sorted(set(parents))
    lookup = {name: i for i, name in enumerate(names)}
    return np.asarray([lookup[p] for p in parents], dtype=np.int64), names


#: Folder names that say where or when an image came from rather than what it shows: dataset splits (train,
#: val2014, test-2), dates (2024, 2024-05, 20240501, 2024_05_01 trip), camera and catch-all folders (DCIM,
#: 100APPLE, photos). Plain numbers may be class ids (0 ... 9): they are not on this list.
_NOT_A_CLASS = re.compile(
    r"(?:train|training|val|valid|validation|test|testing|dev|eval)[-_]?\d*"
    r"|(?:19|20)\d\d(?:[-_.]?\d\d){0,2}(?:[-_ T].*)?"
    r"|dcim|\d{3}[a-z_]{3,}|camera|camera roll|screenshots|images|photos|pictures|img|imgs",
    re.IGNORECASE,
)


def folders_not_classes(names: Sequence[str], counts: np.ndarray) -> str | None:
    """Why folder labels do not look like classes, or ``None`` when they may be classes.

    Folders are not classes when they hold fewer than two images each on average, or when most of their names
    are dates, dataset splits or camera folders (``val2014``, ``2024-05-01``, ``100APPLE``).

    Args:
        names: The folder names (label names).
        counts: Images per folder, indexed like ``names``.
    """
    counts = np.asarray(counts)
    used = [name for name, c in zip(names, counts, strict=True) if c > 0]
    total = int(counts.sum())
    if len(used) < 2:
        where = f"one folder ({used[0]!r})" if used else "no folder"
        return f"the images sit in {where}: there is only one class"
    if 2 * len(used) > total:
        return f"the {total} images sit in {len(used)} folders, fewer than two per folder: they are not classes"
    odd = [name for name in used if _NOT_A_CLASS.fullmatch(name.strip())]
    if 2 * len(odd) >= len(used):
        shown = ", ".join(odd[:4]) + (", ..." if len(odd) > 4 else "")
        return (f"{len(odd)} of the {len(used)} folder names ({shown}) are dates, dataset splits or camera folders, "
                "not classes")
    return None


def read_labels_csv(path: str | os.PathLike[str], items: Sequence[str], *, kind: str = "image") -> tuple[
        np.ndarray, list[str]]:
    """Read ``path,label`` rows (a header row ``path,label`` is optional) and label the matching items.

    Relative paths are taken relative to the CSV file's folder. For a text
    database the first column is the text itself.

    Returns:
        ``(codes, names)``; items the CSV does not mention get code ``-1``.

    Raises:
        FileNotFoundError: If the CSV does not exist.
        SourceNotFoundError: If the CSV does not exist.
        InputError: If it has no usable row or matches no item.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise SourceNotFoundError(f"No such labels file: {path} (expected a CSV with columns path,label)")
    with open(path, encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if rows and [c.strip().lower() for c in rows[0][:2]] in (["path", "label"], ["item", "label"],
                                                             ["text", "label"], ["file", "label"]):
        rows = rows[1:]
    bad = [i for i, r in enumerate(rows) if len(r) < 2 or not r[1].strip()]
    if bad or not rows:
        where = f" (row {bad[0] + 1} has {len(rows[bad[0]])} column(s) or an empty label)" if bad else ""
        raise InputError(f"{path} must hold rows 'path,label' with a non-empty label{where}")
    index = {it: i for i, it in enumerate(items)}
    codes = np.full(len(items), -1, dtype=np.int64)
    label_of: dict[int, str] = {}
    unknown = 0
    files = item_kind(kind).files
    for r in rows:
        key = r[0]
        if files:  # paths are relative to the CSV's folder
            p = Path(key).expanduser()
            key = item_kind(kind).normalize(p if p.is_absolute() else path.parent / p)
        i = index.get(key)
        if i is None:
            unknown += 1
            continue
        label_of[i] = r[1].strip()
    if not label_of:
        raise InputError(f"None of the {len(rows)} rows of {path} names an item of the database "
                         "(relative paths are read relative to the CSV's folder)")
    if unknown:
        logger.warning("%d of %d rows of %s name no item of the database; ignored", unknown, len(rows), path)
    names = sorted(set(label_of.values()))
    lookup = {name: c for c, name in enumerate(names)}
    for i, lab in label_of.items():
        codes[i] = lookup[lab]
    return codes, names


def resolve_labels(db: Database, labels: str | os.PathLike[str] | None, *,
                   notes: list[str] | None = None) -> tuple[np.ndarray, list[str], str] | None:
    """Labels of a database's items from ``"folders"``, ``"auto"``, ``None``/``"none"`` or a CSV path.

    ``"auto"`` uses folder names when the database holds images spread over at
    least two folders with at least two images each, and the folders look like
    classes (see :func:`folders_not_classes`); otherwise no labels.

    Args:
        db: The database.
        labels: Where the labels come from.
        notes: Where to add why folder names were not used as classes (``"auto"``), or why they may not be
            classes (``"folders"``).

    Returns:
        ``(codes, names, source)`` or ``None`` when there are no labels.
    """
    if labels is None or str(labels) == "none":
        return None
    if str(labels) in ("auto", "folders"):
        if not item_kind(db.kind).files:
            if str(labels) == "folders":
                raise ConfigError("Folder labels need image files",
                                  hint=f"Give labels=CSV_FILE for a {db.kind} database.",
                                  setting="labels", value="folders", expected="CSV_FILE")
            return None
        live = db.live_ids()
        codes, names = labels_from_folders(db.items)
        counts = np.bincount(codes[live], minlength=len(names))
        why = folders_not_classes(names, counts)
        if str(labels) == "auto" and (why is not None or np.count_nonzero(counts >= 2) < 2):
            if why is not None and notes is not None:
                notes.append(f"no retrieval quality (precision@k, mAP@k): {why}; it needs class labels "
                             "(class sub-folders, or a CSV of path,label rows)")
            return None
        if why is not None and notes is not None:
            notes.append(f"the folder labels may not be classes: {why}")
        return codes, names, "folders"
    codes, names = read_labels_csv(labels, db.items, kind=db.kind)
    return codes, names, str(labels)


def retrieval_quality(result_ids: np.ndarray, query_ids: np.ndarray, codes: np.ndarray, names: Sequence[str],
                      k: int, *, live: np.ndarray | None = None, search: str = "exact",
                      labels_source: str = "labels") -> QualityReport:
    """Precision@k and mAP@k of leave-one-out queries.

    Args:
        result_ids: ``(q, >=k)`` result ids of each query, its own id already removed.
        query_ids: ``(q,)`` ids of the (labeled) queries.
        codes: Label code of every id (``-1``: unlabeled).
        names: Label names indexed by code.
        k: Cut-off.
        live: Boolean mask of searchable ids (default: all) -- for counting ``R``.
        search: Name of the search that produced the results.
        labels_source: Where the labels came from, for the report.
    """
    codes = np.asarray(codes)
    live = np.ones(len(codes), dtype=bool) if live is None else live
    counts = np.bincount(codes[live & (codes >= 0)], minlength=len(names))
    qlab = codes[query_ids]
    n_rel = counts[qlab] - 1  # the query itself is live and labeled
    ok = n_rel >= 1
    res = np.asarray(result_ids)[ok]
    res_labels = np.where(res >= 0, codes[np.maximum(res, 0)], -1)
    qlab, n_rel = qlab[ok], n_rel[ok]
    prec = precision_at_k(res_labels, qlab, k)
    ap = average_precision_at_k(res_labels, qlab, n_rel, k)
    per_class = [ClassQuality(label=names[c], n_queries=int((qlab == c).sum()), precision=float(prec[qlab == c].mean()),
                              map=float(ap[qlab == c].mean())) for c in range(len(names)) if (qlab == c).any()]
    total = int(counts.sum())
    chance = float(np.mean(n_rel / max(total - 1, 1))) if len(n_rel) else float("nan")
    return QualityReport(k=k, search=search, labels_source=labels_source, n_queries=int(ok.sum()),
                         n_classes=int(np.count_nonzero(counts)), precision=float(prec.mean()) if len(prec) else
                         float("nan"), map=float(ap.mean()) if len(ap) else float("nan"), chance=chance,
                         per_class=per_class)
