"""The database folder: its typed manifest, its files, the :class:`Database`, and the one resumable build.

* :mod:`.manifest`: :class:`Manifest`, the commit point, read and written by everyone;
* :mod:`.folder`: the files (vectors, items, failures, index generations);
* :mod:`.database`: :class:`Database` (open, search, add, remove, build the index);
* :mod:`.plan`, :mod:`.build`: :func:`build_database`, the resumable sharded build (its engines, the seam
  :class:`~similar_images.engines.local.Engine`, live in :mod:`similar_images.engines`);
* :mod:`.adding`: :func:`embed_items`, the embedding of items added to a database;
* :mod:`.builders`: :func:`extract_features` (images) and :func:`build_text_database` (texts);
* :mod:`.locking`: the write lock that serialises concurrent writers;
* :mod:`.live`: reading a database that changes: :func:`open_readable` (what a build has committed so far),
  :class:`LiveDatabase` (a folder followed as any process changes it), :func:`build_progress`.
* :mod:`.interim`: :class:`~.interim.InterimIndex`, the index a reader trains in the background over the rows
  of a build still running (searches merge it with exact search over the newer rows).
"""

from __future__ import annotations

from ..engines.local import BuildJob, Engine, LocalEngine
from .adding import embed_items
from .build import BuildConfig, BuildSummary, build_database, write_database
from .builders import (
    ExtractConfig,
    ExtractSummary,
    TextBuildConfig,
    TextBuildSummary,
    build_text_database,
    extract_features,
)
from .database import AddSummary, Database
from .folder import remove_database_files
from .live import BuildProgress, LiveDatabase, build_progress, open_readable
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, Counts, IndexInfo, Manifest, package_versions

__all__ = [
    "AddSummary",
    "BuildConfig",
    "BuildProgress",
    "BuildJob",
    "BuildSummary",
    "Counts",
    "Database",
    "Engine",
    "ExtractConfig",
    "ExtractSummary",
    "FORMAT",
    "FORMAT_VERSION",
    "IndexInfo",
    "LiveDatabase",
    "LocalEngine",
    "MANIFEST",
    "Manifest",
    "TextBuildConfig",
    "TextBuildSummary",
    "build_database",
    "build_progress",
    "build_text_database",
    "embed_items",
    "extract_features",
    "open_readable",
    "package_versions",
    "remove_database_files",
    "write_database",
]
