"""The database: one folder holding vectors, items, index and manifest.

Layout of a database folder::

    manifest.json      what everything is: model, dimension, counts, index, versions
    vectors.f32        float32 vectors, row i is item id i (L2-normalised)
    items.jsonl        one JSON object per line: {"id": i, "path": ...} (or "text")
    failures.csv       files that could not be read, with the reason
    index-NNNN.faiss   the Faiss index (ids = item ids); NNNN is its generation

``manifest.json`` is the commit point. ``vectors.f32`` and ``items.jsonl``
only ever grow, and readers use the first ``counts.items`` rows of each, so
a crash while adding leaves extra rows that are ignored. A new index is
written under a new generation name before the manifest that names it, so a
crash never leaves a half-written index or manifest in use. No pickle is
used anywhere.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import logging
import os
import platform
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, _io
from .errors import DatabaseError, DatabaseExistsError, QueryError

__all__ = ["Database", "AddSummary", "write_database", "remove_database_files", "package_versions", "MANIFEST"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VECTORS = "vectors.f32"
ITEMS = "items.jsonl"
FAILURES = "failures.csv"
FORMAT = "similar-images-database"
FORMAT_VERSION = 1
ITEM_KEYS = {"image": "path", "text": "text"}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Versions of the packages that produce a database (those that are imported)."""
    import sys  # noqa: PLC0415

    versions = {"similar_images": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod, name in (("faiss", "faiss"), ("tensorflow", "tensorflow"), ("keras", "keras"),
                      ("sentence_transformers", "sentence_transformers"), ("torch", "torch")):
        if mod in sys.modules:
            versions[name] = getattr(sys.modules[mod], "__version__", "unknown")
    return versions


def _write_items(path: Path, kind: str, items: Iterable[str], start_id: int = 0) -> int:
    key = ITEM_KEYS[kind]
    n = 0
    with _io.atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for n, item in enumerate(items, start=1):
            fh.write(json.dumps({"id": start_id + n - 1, key: str(item)}, ensure_ascii=False) + "\n")
    return n


def _write_failures(path: Path, failures: Iterable[tuple[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "reason"])
    writer.writerows(failures)
    _io.write_bytes(path, buf.getvalue().encode("utf-8"))


def _read_failures(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    return [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]


def remove_database_files(db: str | os.PathLike[str]) -> None:
    """Delete the files of a database (manifest first, so a crash never leaves a half-valid one)."""
    db = Path(db)
    (db / MANIFEST).unlink(missing_ok=True)
    for name in (VECTORS, ITEMS, FAILURES):
        (db / name).unlink(missing_ok=True)
    for old in db.glob("index-*.faiss"):
        old.unlink()


def write_database(
    db: str | os.PathLike[str],
    *,
    kind: str,
    model: dict[str, Any],
    items: Sequence[str],
    vector_chunks: Iterable[np.ndarray],
    failures: Sequence[tuple[str, str]] = (),
    extra: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write a new database (without an index) from vectors streamed in chunks.

    Args:
        db: Folder to write.
        kind: ``"image"`` or ``"text"``.
        model: Model description (must contain ``name`` and ``dim``).
        items: Path (or text) of each vector, in order; item ``i`` gets id ``i``.
        vector_chunks: Arrays of shape ``(m, dim)`` whose rows concatenate to one per item.
        failures: ``(path, reason)`` of inputs that could not be read.
        extra: More manifest sections (e.g. extraction settings).
        force: Replace an existing database.

    Returns:
        The manifest.

    Raises:
        DatabaseExistsError: If a database exists and ``force`` is false.
        ValueError: If the vectors do not match the items or the dimension.
    """
    if kind not in ITEM_KEYS:
        raise ValueError(f"kind must be one of {sorted(ITEM_KEYS)}, got {kind!r}")
    db = Path(db).expanduser()
    if (db / MANIFEST).exists():
        if not force:
            raise DatabaseExistsError(f"A database already exists at {db}; pass --force (force=True) to replace it")
        remove_database_files(db)
    db.mkdir(parents=True, exist_ok=True)
    dim = int(model["dim"])
    n = 0
    with _io.atomic_path(db / VECTORS) as tmp, open(tmp, "wb") as fh:
        for chunk in vector_chunks:
            arr = np.ascontiguousarray(chunk, dtype=np.float32)
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise ValueError(f"Vectors of shape {arr.shape} do not match the model dimension {dim}")
            fh.write(arr.tobytes())
            n += len(arr)
    if n != len(items):
        (db / VECTORS).unlink(missing_ok=True)
        raise ValueError(f"Got {n} vectors for {len(items)} items")
    _write_items(db / ITEMS, kind, items)
    _write_failures(db / FAILURES, failures)
    now = _now()
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "created_at": now,
        "updated_at": now,
        "model": model,
        "metric": "cosine",
        "normalized": True,
        "files": {"vectors": VECTORS, "items": ITEMS, "failures": FAILURES, "index": None},
        "counts": {"items": n, "failed": len(failures), "removed": 0, "indexed": 0, "added_after_training": 0},
        "removed_ids": [],
        "index": None,
        "versions": package_versions(),
        **(extra or {}),
    }
    _io.write_json(db / MANIFEST, manifest)
    logger.info("Wrote database %s: %d items, %d failures", db, n, len(failures))
    return manifest


@dataclass
class AddSummary:
    """Result of :meth:`Database.add`."""

    ids: list[int]
    failures: list[tuple[str, str]] = field(default_factory=list)


class Database:
    """A similarity-search database folder.

    Open one with :meth:`Database.open`; create one with
    :func:`similar_images.extract_features` (images) or
    :func:`similar_images.text.build_text_database` (texts), then
    :meth:`build_index`.

    Example:
        >>> db = Database.open("coco-db")             # doctest: +SKIP
        >>> for m in db.search("query.jpg", k=5):     # doctest: +SKIP
        ...     print(m.rank, m.score, m.path)
    """

    def __init__(self, path: Path, manifest: dict[str, Any], vectors: np.ndarray, items: list[str],
                 index: Any | None, *, weights: str | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.vectors = vectors
        self.items = items
        self.index = index
        self._weights_override = weights
        self._embedder: Any = None
        self._lock = threading.RLock()
        self._removed = np.zeros(len(items), dtype=bool)
        self._removed[np.asarray(manifest.get("removed_ids", []), dtype=np.int64)] = True

    # ------------------------------------------------------------------ loading
    @classmethod
    def open(cls, path: str | os.PathLike[str], *, model: str | None = None, weights: str | None = None,
             load_index: bool = True, mmap_index: bool = False) -> Database:
        """Open a database folder and check it against its manifest.

        Args:
            path: The database folder.
            model: If given, fail unless the database was built with this model.
            weights: Weights to embed queries with, overriding the manifest's
                (e.g. a local file when the database was built with ``imagenet``).
            load_index: Load the Faiss index (otherwise only exact search works).
            mmap_index: Memory-map the index file where Faiss supports it.

        Raises:
            DatabaseError: If the folder is not a complete, consistent database.
        """
        db = Path(path).expanduser()
        mpath = db / MANIFEST
        if not mpath.exists():
            hint = (" An extraction was interrupted there: run the same extract command again to resume it."
                    if (db / ".partial").exists() else "")
            raise DatabaseError(
                f"No database at {db} (no {MANIFEST}).{hint} Build one with:\n"
                f"  similar-images extract IMAGES_FOLDER {db}\n  similar-images build-index {db}"
            )
        try:
            manifest = _io.read_json(mpath)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatabaseError(f"{mpath} is not valid JSON ({exc}); rebuild the database") from exc
        if manifest.get("format") != FORMAT:
            raise DatabaseError(f"{mpath} is not a similar-images manifest")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise DatabaseError(
                f"{db} was written by a newer similar-images (format {manifest['format_version']}); upgrade the package"
            )
        if model is not None and manifest["model"]["name"] != model:
            raise DatabaseError(
                f"{db} was built with model {manifest['model']['name']!r}, not {model!r}; "
                "use the same model or rebuild the database"
            )
        dim = int(manifest["model"]["dim"])
        n = int(manifest["counts"]["items"])
        vectors = cls._open_vectors(db / manifest["files"]["vectors"], n, dim)
        items = cls._read_items(db / manifest["files"]["items"], n, manifest["kind"])
        index = None
        info = manifest.get("index")
        if load_index and info is not None:
            from .index import read_index  # noqa: PLC0415

            ipath = db / manifest["files"]["index"]
            if not ipath.exists():
                raise DatabaseError(f"Index file {ipath} named by the manifest is missing; run build-index --force")
            index = read_index(ipath, mmap=mmap_index)
            import faiss  # noqa: PLC0415

            if index.d != dim:
                raise DatabaseError(f"Index dimension {index.d} does not match the vectors' dimension {dim}")
            if index.metric_type != faiss.METRIC_INNER_PRODUCT:
                raise DatabaseError("The index does not use the inner-product metric; rebuild it with build-index")
            if index.ntotal != manifest["counts"]["indexed"]:
                raise DatabaseError(
                    f"The index holds {index.ntotal} vectors but the manifest says {manifest['counts']['indexed']}; "
                    "rebuild it with build-index --force"
                )
            from .index import set_search_params  # noqa: PLC0415

            set_search_params(index, info.get("search_params", {}))
        return cls(db, manifest, vectors, items, index, weights=weights)

    @staticmethod
    def _open_vectors(path: Path, n: int, dim: int) -> np.ndarray:
        if not path.exists():
            raise DatabaseError(f"Vectors file {path} is missing")
        expected = n * dim * 4
        size = path.stat().st_size
        if size < expected:
            raise DatabaseError(
                f"{path} holds {size // (dim * 4)} vectors of dimension {dim}, but the manifest counts {n}; "
                "the database is damaged: rebuild it"
            )
        if size % (dim * 4):
            raise DatabaseError(f"{path} size {size} is not a multiple of the {dim}-d vector size")
        if size > expected:
            logger.warning("%s has %d uncommitted rows (an interrupted add); they are ignored",
                           path, (size - expected) // (dim * 4))
        if n == 0:
            return np.zeros((0, dim), dtype=np.float32)
        return np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))

    @staticmethod
    def _read_items(path: Path, n: int, kind: str) -> list[str]:
        if not path.exists():
            raise DatabaseError(f"Items file {path} is missing")
        key = ITEM_KEYS[kind]
        items: list[str] = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if len(items) == n:
                    break
                rec = json.loads(line)
                if rec["id"] != len(items):
                    raise DatabaseError(f"{path}: expected id {len(items)}, found {rec['id']}; rebuild the database")
                items.append(rec[key])
        if len(items) != n:
            raise DatabaseError(f"{path} lists {len(items)} items but the manifest counts {n}; rebuild the database")
        return items

    # --------------------------------------------------------------- properties
    @property
    def kind(self) -> str:
        """``"image"`` or ``"text"``."""
        return str(self.manifest["kind"])

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dim"])

    @property
    def model_name(self) -> str:
        return str(self.manifest["model"]["name"])

    @property
    def failures(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the inputs that could not be read."""
        return _read_failures(self.path / self.manifest["files"]["failures"])

    @property
    def removed(self) -> np.ndarray:
        """Boolean mask over ids: True for removed items."""
        return self._removed

    @property
    def ntotal(self) -> int:
        """Number of ids ever assigned (removed ones included)."""
        return len(self.items)

    def __len__(self) -> int:
        """Number of searchable (not removed) items."""
        return int(len(self.items) - self._removed.sum())

    def __repr__(self) -> str:
        idx = self.manifest["index"]["factory"] if self.manifest.get("index") else "no index"
        return f"Database({str(self.path)!r}, {self.kind}, {self.model_name}, {len(self)} items, {idx})"

    def live_ids(self) -> np.ndarray:
        """Ids of the items that can be returned by a search."""
        return np.flatnonzero(~self._removed)

    def check_id(self, item_id: int) -> int:
        """Validate an id.

        Raises:
            QueryError: If the id is out of range or removed.
        """
        try:
            i = int(item_id)
        except (TypeError, ValueError):
            raise QueryError(f"Item id must be an integer, got {item_id!r}") from None
        if not 0 <= i < len(self.items):
            raise QueryError(f"Unknown id {i}: ids run from 0 to {len(self.items) - 1}")
        if self._removed[i]:
            raise QueryError(f"Id {i} was removed from the database")
        return i

    def item(self, item_id: int) -> str:
        """The path (image database) or text (text database) of an id."""
        return self.items[self.check_id(item_id)]

    def vector(self, item_id: int) -> np.ndarray:
        """The stored (normalised) vector of an id."""
        return np.array(self.vectors[self.check_id(item_id)], dtype=np.float32)

    def id_of(self, item: str | os.PathLike[str]) -> int:
        """The id of a path (or text).

        Raises:
            QueryError: If the database does not hold it.
        """
        key = str(Path(item).expanduser().resolve()) if self.kind == "image" else str(item)
        if not hasattr(self, "_id_by_item"):
            self._id_by_item = {it: i for i, it in enumerate(self.items)}
        i = self._id_by_item.get(key)
        if i is None or self._removed[i]:
            raise QueryError(f"{item} is not in the database")
        return i

    # ----------------------------------------------------------------- embedder
    @property
    def embedder(self) -> Any:
        """The model that embeds queries the way the database was built (loaded on first use)."""
        if self._embedder is None:
            m = self.manifest["model"]
            if self.kind == "image":
                from .features import ImageEmbedder  # noqa: PLC0415

                weights = self._weights_override or m.get("weights", "imagenet")
                self._embedder = ImageEmbedder(m["name"], None if weights == "random" else weights,
                                               seed=int(m.get("seed", 0)))
            else:
                from .text import TextEmbedder  # noqa: PLC0415

                self._embedder = TextEmbedder(m["name"], source=self._weights_override)
        return self._embedder

    @embedder.setter
    def embedder(self, value: Any) -> None:
        self._embedder = value

    # ------------------------------------------------------------------- search
    def search(self, query: Any, k: int = 8, **kwargs: Any) -> Any:
        """Find the ``k`` items most similar to ``query``; see :func:`similar_images.search.search`."""
        from .search import search  # noqa: PLC0415

        return search(self, query, k, **kwargs)

    def search_batch(self, queries: Sequence[Any], k: int = 8, **kwargs: Any) -> list[Any]:
        """Search several queries at once; see :func:`similar_images.search.search_batch`."""
        from .search import search_batch  # noqa: PLC0415

        return search_batch(self, queries, k, **kwargs)

    # -------------------------------------------------------------------- index
    @property
    def has_index(self) -> bool:
        return self.index is not None

    def build_index(self, config: Any = None, *, force: bool = False) -> Any:
        """Train and save an index over all stored vectors.

        Args:
            config: An :class:`~similar_images.index.IndexConfig`.
            force: Replace an existing index.

        Returns:
            The :class:`~similar_images.index.BuildReport`.

        Raises:
            DatabaseExistsError: If an index exists and ``force`` is false.
            IndexTrainingError: If there are too few vectors for the index.
        """
        from .index import IndexConfig, build_index  # noqa: PLC0415

        if self.manifest.get("index") is not None and not force:
            raise DatabaseExistsError(
                f"{self.path} already has an index ({self.manifest['index']['factory']}); pass --force to rebuild it"
            )
        config = config or IndexConfig()
        live = self.live_ids()
        if len(live) == len(self.items):
            index, report = build_index(self.vectors, config)
        else:
            index, report = build_index(np.asarray(self.vectors[live]), config, ids=live)
        with self._lock:
            info = {**report.to_dict(), "built_at": _now(), "filtered_ids": []}
            self._commit_index(index, info, indexed=len(live), added_after_training=0)
        return report

    def _commit_index(self, index: Any, info: dict[str, Any], *, indexed: int, added_after_training: int) -> None:
        from .index import write_index  # noqa: PLC0415

        old = self.manifest["files"].get("index")
        gen = int(old.split("-")[1].split(".")[0]) + 1 if old else 1
        name = f"index-{gen:04d}.faiss"
        write_index(index, self.path / name)
        manifest = json.loads(json.dumps(self.manifest))
        manifest["files"]["index"] = name
        manifest["index"] = info
        manifest["counts"]["indexed"] = indexed
        manifest["counts"]["added_after_training"] = added_after_training
        self._commit(manifest)
        self.index = index
        if old and old != name:
            (self.path / old).unlink(missing_ok=True)

    def _commit(self, manifest: dict[str, Any]) -> None:
        manifest["updated_at"] = _now()
        manifest["versions"] = {**manifest.get("versions", {}), **package_versions()}
        _io.write_json(self.path / MANIFEST, manifest)
        self.manifest = manifest

    # ------------------------------------------------------------ add / remove
    def add_vectors(self, vectors: np.ndarray, items: Sequence[str],
                    failures: Sequence[tuple[str, str]] = ()) -> list[int]:
        """Append already-embedded vectors (normalised here) with their items; returns their new ids."""
        from .features import l2_normalize  # noqa: PLC0415

        vectors = l2_normalize(np.asarray(vectors, dtype=np.float32).reshape(len(items), -1))
        if vectors.shape[1] != self.dim:
            raise ValueError(f"Vectors have dimension {vectors.shape[1]}, the database {self.dim}")
        with self._lock:
            n_old = len(self.items)
            new_ids = list(range(n_old, n_old + len(items)))
            vpath = self.path / self.manifest["files"]["vectors"]
            with open(vpath, "r+b") as fh:  # drop rows of an interrupted add, then append
                fh.truncate(n_old * self.dim * 4)
                fh.seek(0, os.SEEK_END)
                fh.write(vectors.tobytes())
                fh.flush()
                os.fsync(fh.fileno())
            all_items = self.items + [str(x) for x in items]
            _write_items(self.path / self.manifest["files"]["items"], self.kind, all_items)
            if failures:
                _write_failures(self.path / self.manifest["files"]["failures"], self.failures + list(failures))
            manifest = json.loads(json.dumps(self.manifest))
            manifest["counts"]["items"] = len(all_items)
            manifest["counts"]["failed"] += len(failures)
            if self.index is not None and new_ids:
                from .index import add_vectors  # noqa: PLC0415

                add_vectors(self.index, vectors, np.asarray(new_ids, dtype=np.int64))
                self.manifest = manifest
                self._commit_index(self.index, manifest["index"], indexed=int(self.index.ntotal),
                                   added_after_training=manifest["counts"]["added_after_training"] + len(new_ids))
            else:
                self._commit(manifest)
            self.items = all_items
            self.vectors = self._open_vectors(vpath, len(all_items), self.dim)
            self._removed = np.concatenate([self._removed, np.zeros(len(new_ids), dtype=bool)])
            if hasattr(self, "_id_by_item"):
                del self._id_by_item
        logger.info("Added %d items to %s", len(new_ids), self.path)
        return new_ids

    def add(self, sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
            batch_size: int = 32, verbose: bool = False) -> AddSummary:
        """Embed new images (a folder, a file list or paths) and add them without retraining the index.

        Images already in the database are skipped; unreadable ones are reported.
        """
        if self.kind != "image":
            raise ValueError("add() takes images; for a text database use add_vectors() or the text module")
        from tqdm.auto import tqdm  # noqa: PLC0415

        from .errors import ImageLoadError  # noqa: PLC0415
        from .features import collect_inputs  # noqa: PLC0415

        known = set(self.items)
        paths = [p for p in collect_inputs(sources) if str(p) not in known]
        emb = self.embedder
        ok: list[str] = []
        vecs: list[np.ndarray] = []
        failures: list[tuple[str, str]] = []
        batch: list[np.ndarray] = []
        for p in tqdm(paths, unit="img", desc="add", disable=not verbose):
            try:
                batch.append(emb.prepare(p))
                ok.append(str(p))
            except ImageLoadError as exc:
                failures.append((str(p), str(exc)))
            if len(batch) >= batch_size:
                vecs.append(emb.embed_arrays(np.stack(batch)))
                batch = []
        if batch:
            vecs.append(emb.embed_arrays(np.stack(batch)))
        vectors = np.concatenate(vecs) if vecs else np.zeros((0, self.dim), dtype=np.float32)
        ids = self.add_vectors(vectors, ok, failures) if ok or failures else []
        return AddSummary(ids=ids, failures=failures)

    def remove(self, targets: Iterable[int | str | os.PathLike[str]]) -> list[int]:
        """Remove items by id or path; ids of the others do not change.

        Returns:
            The removed ids.

        Raises:
            QueryError: If an id or path is unknown (nothing is removed then).
        """
        ids = sorted({self.check_id(t) if isinstance(t, (int, np.integer)) else self.id_of(t) for t in targets})
        if not ids:
            return []
        with self._lock:
            manifest = json.loads(json.dumps(self.manifest))
            manifest["removed_ids"] = sorted(set(manifest["removed_ids"]) | set(ids))
            manifest["counts"]["removed"] = len(manifest["removed_ids"])
            if self.index is not None:
                arr = np.asarray(ids, dtype=np.int64)
                try:
                    n_removed = self.index.remove_ids(arr)
                    if n_removed != len(ids):
                        raise RuntimeError(f"removed {n_removed} of {len(ids)}")
                except RuntimeError as exc:  # e.g. HNSW cannot delete: filter at search time instead
                    logger.info("Index cannot delete (%s); removed ids are filtered at search time",
                                str(exc).splitlines()[-1])
                    manifest["index"]["filtered_ids"] = sorted(set(manifest["index"]["filtered_ids"]) | set(ids))
                self.manifest = manifest
                self._commit_index(self.index, manifest["index"], indexed=int(self.index.ntotal),
                                   added_after_training=manifest["counts"]["added_after_training"])
            else:
                self._commit(manifest)
            self._removed[ids] = True
        return ids
