"""The manifest: one typed description of a database folder, its commit point.

``manifest.json`` says what every file of the folder is: the kind of items,
the model that made the vectors (its dimension first), the file names, the
counts, the index and its measured figures, and the package versions. A
database is whatever the manifest says; files or rows it does not count are
ignored (they are what an interrupted write left). Every reader and writer of
a database folder (feature vectors, SIFT descriptors) goes through
:class:`Manifest`: :meth:`Manifest.load` checks the format, version and
numbers, :meth:`Manifest.save` writes it atomically.

Sections the package does not interpret (``extraction``, ``text_build``, ...)
are kept as they are in :attr:`Manifest.extra`, so that a manifest written by
an older version is saved back unchanged; code reads them through typed
accessors (:attr:`Manifest.build_plan_digest`, :attr:`Manifest.shards_ready`,
:attr:`Manifest.extraction`, :attr:`Manifest.text_build`,
:attr:`Manifest.precision_choice`), never through ``extra`` itself.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import io as _io
from .._util.types import JSON
from .._version import __version__
from ..errors import DatabaseCorruptError, DatabaseError, DatabaseFileError, DatabaseNotFoundError

__all__ = [
    "MANIFEST",
    "FORMAT",
    "FORMAT_VERSION",
    "Checksum",
    "Counts",
    "IndexInfo",
    "Manifest",
    "now",
    "package_versions",
]

#: File name of the manifest in a database folder.
MANIFEST = "manifest.json"
#: ``format`` of a feature-vector database.
FORMAT = "similar-images-database"
#: The newest format version this package reads and writes.
FORMAT_VERSION = 1


def now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Versions of the packages that produce a database (those that are imported)."""
    versions = {"similar_images": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod, name in (("faiss", "faiss"), ("tensorflow", "tensorflow"), ("keras", "keras"), ("cv2", "opencv"),
                      ("openvino", "openvino"), ("sentence_transformers", "sentence_transformers"),
                      ("torch", "torch")):
        if mod in sys.modules:
            versions[name] = str(getattr(sys.modules[mod], "__version__", "unknown"))
    return versions


def _plain_file_name(name: object) -> bool:
    """Whether ``name`` is the name of a file directly inside the database folder (no folder, no ``..``)."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and "\x00" not in name


@dataclass(frozen=True)
class Checksum:
    """The CRC-32 of the first ``rows`` rows of a data file (vectors) or lines (items), as committed.

    The files only grow, so the checksum of a prefix stays valid: a manifest whose checksum covers fewer rows
    than it counts (the rows an older version added) is verified on that prefix.
    """

    rows: int
    crc32: int

    @classmethod
    def from_dict(cls, d: JSON) -> Checksum:
        return cls(rows=int(d["rows"]), crc32=int(d["crc32"]))

    def to_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "crc32": self.crc32}


@dataclass
class Counts:
    """The numbers of a database.

    Attributes:
        items: Ids assigned (rows of vectors and items in use); removed ones included.
        failed: Inputs that could not be read (rows of ``failures.csv``).
        removed: Ids removed.
        indexed: Vectors in the index.
        added_after_training: Vectors added to the index after it was trained.
        extra: Other counts (SIFT: ``descriptors``, ``images_without_descriptors``).
    """

    items: int = 0
    failed: int = 0
    removed: int = 0
    indexed: int = 0
    added_after_training: int = 0
    extra: dict[str, int] = field(default_factory=dict)

    _KEYS = ("items", "failed", "removed", "indexed", "added_after_training")

    @classmethod
    def from_dict(cls, d: JSON) -> Counts:
        values = {k: int(d.get(k, 0)) for k in cls._KEYS}
        extra = {k: int(v) for k, v in d.items() if k not in cls._KEYS}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, int]:
        return {**{k: int(getattr(self, k)) for k in self._KEYS}, **self.extra}


@dataclass
class IndexInfo:
    """The index a database searches with, and its measured figures.

    Attributes:
        factory: The Faiss ``index_factory`` string.
        search_params: Search defaults (``nprobe``, ``efSearch``, ``k_factor``).
        filtered_ids: Removed ids still inside an index that cannot delete them (filtered out of results).
        built_at: When it was built.
        figures: Everything else measured at build time (recall@10 alone and served, size, times, ...).
    """

    factory: str
    search_params: dict[str, int] = field(default_factory=dict)
    filtered_ids: list[int] = field(default_factory=list)
    built_at: str | None = None
    figures: JSON = field(default_factory=dict)

    _KEYS = ("factory", "search_params", "filtered_ids", "built_at")

    @classmethod
    def from_dict(cls, d: JSON) -> IndexInfo:
        return cls(factory=str(d["factory"]), search_params={k: int(v) for k, v in d.get("search_params", {}).items()},
                   filtered_ids=[int(i) for i in d.get("filtered_ids", [])], built_at=d.get("built_at"),
                   figures={k: v for k, v in d.items() if k not in cls._KEYS})

    def to_dict(self) -> dict[str, object]:
        return {**self.figures, "factory": self.factory, "search_params": dict(self.search_params),
                "filtered_ids": list(self.filtered_ids), "built_at": self.built_at}

    def get(self, key: str, default: object = None) -> Any:
        """A figure by name (``recall_at_10``, ``index_bytes``, ...), or one of the attributes."""
        if key in self._KEYS:
            return getattr(self, key)
        return self.figures.get(key, default)


@dataclass
class Manifest:
    """The typed content of ``manifest.json``.

    Attributes:
        kind: The kind of items (``"image"``, ``"text"``; ``"sift"`` for a SIFT database).
        model: What made the vectors (``name`` and ``dim`` at least): the embedder's ``info()``.
        files: File names by role (``vectors``, ``items``, ``failures``, ``index`` ...); ``None`` when absent.
        counts: The numbers.
        index: The index and its figures (``None``: no index, searches are exact).
        removed_ids: Ids removed (never returned by a search).
        checksums: The checksum of each data file by role (``vectors``, ``items``); none in a database written
            before checksums existed (it gets them at its next add).
        metric: ``"cosine"`` (L2-normalised vectors, inner product) or ``"l2"``.
        normalized: Whether the stored vectors are L2-normalised.
        created_at, updated_at: ISO 8601 times.
        versions: Versions of the packages that wrote it.
        format, format_version: What kind of folder this is, and the layout version.
        extra: Other sections, kept as they are (``extraction``, ``text_build``, ...).
    """

    kind: str
    model: JSON
    files: dict[str, str | None]
    counts: Counts = field(default_factory=Counts)
    index: IndexInfo | None = None
    removed_ids: list[int] = field(default_factory=list)
    checksums: dict[str, Checksum] = field(default_factory=dict)
    metric: str = "cosine"
    normalized: bool = True
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    versions: dict[str, str] = field(default_factory=package_versions)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    extra: JSON = field(default_factory=dict)

    _KEYS = ("format", "format_version", "kind", "created_at", "updated_at", "model", "metric", "normalized", "files",
             "checksums", "counts", "removed_ids", "index", "versions")

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Dimension of the vectors."""
        return int(self.model["dim"])

    @property
    def model_name(self) -> str:
        return str(self.model["name"])

    @property
    def image_inference(self) -> tuple[str, str]:
        """The backend and precision an image database's vectors were made with (``keras``, ``fp32`` when not
        recorded: the defaults are not written)."""
        return str(self.model.get("backend", "keras")), str(self.model.get("precision", "fp32"))

    def copy(self) -> Manifest:
        """A deep copy, to change and commit."""
        return copy.deepcopy(self)

    # ------------------------------------------------------------------ sections kept in extra
    def section(self, name: str) -> JSON:
        """A section kept as it is in :attr:`extra` (``build``, ``extraction``, ``text_build``, ...): ``{}`` when
        absent or not a JSON object. Read sections through the typed accessors below, not through ``extra``."""
        value = self.extra.get(name)
        return value if isinstance(value, dict) else {}

    @property
    def build_plan_digest(self) -> str | None:
        """The digest of the build plan that made the database (``build.plan_digest``; ``None`` when the build
        recorded none: a database built before plans, or the live view of a running build)."""
        digest = self.section("build").get("plan_digest")
        return str(digest) if digest else None

    @property
    def shards_ready(self) -> int:
        """Shards committed so far, for the live view of a running build (``build.shards_ready``; 0 otherwise)."""
        return int(self.section("build").get("shards_ready") or 0)

    @property
    def extraction(self) -> JSON:
        """How the vectors were extracted (``extraction``: settings, engine, inference; ``{}`` when not recorded)."""
        return self.section("extraction")

    @property
    def text_build(self) -> JSON:
        """How a text database was built (``text_build``: backend, window, duplicates; ``{}`` when not recorded)."""
        return self.section("text_build")

    @property
    def precision_choice(self) -> JSON:
        """How ``--precision auto`` chose (``extraction.inference.choice``: the candidates with their measured
        agreement; ``{}`` when the precision was given or not recorded)."""
        inference = self.extraction.get("inference")
        choice = inference.get("choice") if isinstance(inference, dict) else None
        return choice if isinstance(choice, dict) else {}

    # ------------------------------------------------------------------ dict form
    @classmethod
    def from_dict(cls, d: JSON, *, where: str = "manifest") -> Manifest:
        """Build and check a manifest from its JSON form.

        Raises:
            DatabaseCorruptError: If a section is missing or has the wrong type.
        """
        try:
            m = cls(
                kind=str(d["kind"]),
                model=dict(d["model"]),
                files=dict(d["files"]),
                counts=Counts.from_dict(d.get("counts", {})),
                index=IndexInfo.from_dict(d["index"]) if d.get("index") else None,
                removed_ids=[int(i) for i in d.get("removed_ids", [])],
                checksums={str(k): Checksum.from_dict(v) for k, v in dict(d.get("checksums") or {}).items()},
                metric=str(d.get("metric", "cosine")),
                normalized=bool(d.get("normalized", True)),
                created_at=str(d.get("created_at", "")),
                updated_at=str(d.get("updated_at", d.get("created_at", ""))),
                versions=dict(d.get("versions", {})),
                format=str(d.get("format", "")),
                format_version=int(d.get("format_version", 0)),
                extra={k: v for k, v in d.items() if k not in cls._KEYS},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            missing = f"no {exc.args[0]!r} section" if isinstance(exc, KeyError) else str(exc)
            raise DatabaseCorruptError(f"{where} is damaged ({missing}); rebuild the database") from None
        return m

    def to_dict(self) -> dict[str, object]:
        """The JSON form (keys in the order of the files written by earlier versions)."""
        return {
            "format": self.format,
            "format_version": self.format_version,
            "kind": self.kind,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "model": self.model,
            "metric": self.metric,
            "normalized": self.normalized,
            "files": self.files,
            **({"checksums": {k: v.to_dict() for k, v in self.checksums.items()}} if self.checksums else {}),
            "counts": self.counts.to_dict(),
            "removed_ids": list(self.removed_ids),
            "index": self.index.to_dict() if self.index else None,
            "versions": self.versions,
            **self.extra,
        }

    # ------------------------------------------------------------------ checks
    def validate(self, *, where: str = "manifest", fmt: str = FORMAT) -> Manifest:
        """Check the format, version and numbers; returns ``self``.

        Raises:
            DatabaseError: If it is another format, or a newer version than this package reads.
            DatabaseCorruptError: If a number is impossible (negative counts, a bad dimension, removed ids
                out of range).
        """
        if self.format != fmt:
            raise DatabaseError(f"{where} is not a {fmt} manifest (format {self.format!r})")
        if self.format_version > FORMAT_VERSION:
            raise DatabaseError(f"{where} was written by a newer similar-images (format {self.format_version}); "
                                "upgrade the package")
        try:
            dim = self.dim
        except (KeyError, TypeError, ValueError):
            raise DatabaseCorruptError(f"{where} gives no valid model dimension; rebuild the database") from None
        if dim < 1:
            raise DatabaseCorruptError(f"{where} gives the dimension {dim}; rebuild the database")
        c = self.counts
        if min(c.items, c.failed, c.removed, c.indexed, c.added_after_training) < 0:
            raise DatabaseCorruptError(f"{where} has negative counts ({c.to_dict()}); rebuild the database")
        if self.removed_ids and (min(self.removed_ids) < 0 or max(self.removed_ids) >= c.items):
            raise DatabaseCorruptError(f"{where} lists removed ids outside 0..{c.items - 1}; rebuild the database")
        for role, ck in self.checksums.items():
            if ck.rows < 0 or not 0 <= ck.crc32 < 2**32:  # more rows than counted: see folder.verify_vectors
                raise DatabaseCorruptError(f"{where} records an impossible {role} checksum ({ck.to_dict()}); "
                                           "rebuild the database")
        for role, name in self.files.items():
            if name is not None and not _plain_file_name(name):
                raise DatabaseCorruptError(f"{where} names {name!r} as its {role} file; a database's files are plain "
                                           "names inside its folder: rebuild the database")
        required = ("vectors", "items") if fmt == FORMAT else ()
        missing = [role for role in required if not self.files.get(role)]
        if missing:
            raise DatabaseCorruptError(f"{where} names no {' and no '.join(missing)} file; rebuild the database")
        return self

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, fmt: str = FORMAT) -> Manifest:
        """Read and check the manifest of ``folder``.

        Args:
            folder: The database folder.
            fmt: The expected ``format``.

        Raises:
            DatabaseNotFoundError: If the folder has no manifest.
            DatabaseCorruptError: If it is not valid JSON or misses a section.
            DatabaseError: If it is another format, or too new.
        """
        path = Path(folder).expanduser() / MANIFEST
        if not (path.exists() or path.is_symlink()):
            raise DatabaseNotFoundError(f"No database at {path.parent} (no {MANIFEST})", path=path.parent, fmt=fmt)
        try:
            data = _io.read_json(path)
        except FileNotFoundError:  # a link to nothing, or removed meanwhile
            raise DatabaseNotFoundError(f"No database at {path.parent} ({MANIFEST} is a link to nothing, or was "
                                        "removed)", path=path.parent, fmt=fmt) from None
        except DatabaseFileError as exc:
            raise DatabaseFileError(f"{exc}; a manifest is a small JSON file: rebuild the database", path=path,
                                    reason=exc.reason) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatabaseCorruptError(f"{path} is not valid JSON ({exc}); rebuild the database") from None
        except ValueError as exc:  # beyond the bounds: too deep, 1e400, NaN
            raise DatabaseFileError(f"{path} is damaged (its JSON is {exc}); rebuild the database", path=path,
                                    reason=str(exc)) from None
        if not isinstance(data, dict):
            raise DatabaseCorruptError(f"{path} does not hold a JSON object; rebuild the database")
        if data.get("format") != fmt:
            raise DatabaseError(f"{path} is not a similar-images manifest of the right kind (format "
                                f"{data.get('format')!r}, expected {fmt!r})")
        return cls.from_dict(data, where=str(path)).validate(where=str(path), fmt=fmt)

    def save(self, folder: str | os.PathLike[str], *, touch: bool = True) -> None:
        """Write ``manifest.json`` into ``folder`` atomically (the commit point of every change).

        Args:
            folder: The database folder.
            touch: Update ``updated_at`` and the package versions.
        """
        if touch:
            self.updated_at = now()
            self.versions = {**self.versions, **package_versions()}
        _io.write_json(Path(folder) / MANIFEST, self.to_dict())
