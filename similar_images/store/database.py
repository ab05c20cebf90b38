"""The database: one folder holding vectors, items, index and manifest (see :mod:`.folder`).

:class:`Database` opens a folder written by a build (:mod:`.build`), checks
it against its :class:`~.manifest.Manifest`, and searches it, adds to it,
removes from it and (re)builds its index. Every change holds the folder's
write lock (:mod:`.locking`) from re-reading the manifest to committing the
new one, so concurrent writers (two ``add`` commands, an ``add`` and a
``build-index``) never lose each other's work; readers take no lock and see
either the old version or the new one.

A new index is written under a new generation name (``index-0002.faiss``)
before the manifest that names it; the previous generation is kept until the
next change, so a reader that read the old manifest can still open it.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from .._util import io as _io
from .._util.http import FetchConfig
from .._util.io import disk_full
from ..embed import (
    DEFAULT_TEXT_BACKEND,
    Embedder,
    ImageEmbedder,
    TextEmbedder,
    check_text_backend,
    default_index_name,
    embedder_from_info,
    item_kind,
    l2_normalize,
    registered_dim,
)
from ..embed.backends import check_backend, check_precision
from ..engines.local import Engine, IndexFiles, LocalEngine
from ..errors import (
    ConfigError,
    DatabaseCorruptError,
    DatabaseError,
    DatabaseFileError,
    DatabaseNotFoundError,
    IndexExistsError,
    UnknownIdError,
)
from ..index import (
    DEFAULT_RERANK,
    BuildReport,
    IndexConfig,
    IndexedPart,
    ScoreBands,
    add_vectors,
    factory_for,
    read_index,
    set_search_params,
    write_index,
)
from ..search import Results, search, search_batch, search_vectors
from ..sources.images import collect_inputs
from .adding import embed_items
from .build import BuildConfig
from .builders import ExtractConfig, TextBuildConfig, build_text_database, extract_features
from .folder import (
    FAILURES,
    ITEMS,
    PARTIAL_DIR,
    VECTORS,
    append_items,
    index_file_name,
    index_generation,
    open_vectors,
    read_failures,
    read_items,
    vectors_crc32,
    verify_vectors,
    write_failures,
)
from .interim import InterimIndex
from .locking import database_lock
from .manifest import MANIFEST, Checksum, IndexInfo, Manifest, now

__all__ = ["Database", "AddSummary"]

logger = logging.getLogger(__name__)


@dataclass
class AddSummary:
    """Result of :meth:`Database.add`."""

    ids: list[int]
    failures: list[tuple[str, str]] = field(default_factory=list)


class Database:
    """A similarity-search database folder.

    Create one with :meth:`Database.create` (images with an :class:`~.builders.ExtractConfig`, texts with a
    :class:`~.builders.TextBuildConfig`), index it with :meth:`build_index`, search it with :meth:`search`;
    open an existing one with :meth:`Database.open`.

    Example:
        >>> db = Database.create("photos/", "photos-db", ExtractConfig(model="vgg16-avg"))  # doctest: +SKIP
        >>> db.build_index()                                                            # doctest: +SKIP
        >>> for m in db.search("query.jpg", k=5):                                       # doctest: +SKIP
        ...     print(m.rank, m.score, m.path)
    """

    def __init__(self, path: Path, manifest: Manifest, vectors: np.ndarray, items: list[str], index: Any | None,
                 *, weights: str | None = None, inference: dict[str, str] | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.vectors = vectors
        self.items = items
        self.index = index
        self._weights_override = weights
        self._inference_override = dict(inference or {})
        self._embedder: Embedder | None = None
        self.index_lock = threading.RLock()
        self._id_by_item: dict[str, int] | None = None
        self._removed = self._removed_mask(manifest, len(items))
        self._measured_bands: ScoreBands | None = None
        #: A read-only view of the shards an unfinished build has committed (see :mod:`.live`).
        self.partial = False
        #: The interim index a reader trains over such a view's rows (see :mod:`.interim`).
        self._interim: InterimIndex | None = None

    @staticmethod
    def _removed_mask(manifest: Manifest, n: int) -> np.ndarray:
        mask = np.zeros(n, dtype=bool)
        mask[np.asarray(manifest.removed_ids, dtype=np.int64)] = True
        return mask

    # ------------------------------------------------------------------ loading
    @classmethod
    def create(cls, source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | Sequence[str],
               path: str | os.PathLike[str], config: ExtractConfig | TextBuildConfig | None = None, *,
               engine: Engine | None = None, force: bool = False, embedder: Embedder | None = None,
               calibration: Sequence[str | os.PathLike[str]] | None = None) -> Database:
        """Build a new database folder from images or texts, resumably, and open it (without an index yet:
        then :meth:`build_index`).

        The kind of database follows the config: an :class:`~.builders.ExtractConfig` (the default) embeds
        images, a :class:`~.builders.TextBuildConfig` texts. Run again with the same source and settings, an
        interrupted build resumes where it stopped; a finished database is refused unless ``force``.
        ``config.verbose`` shows a progress bar. Unreadable inputs are skipped and listed in
        :attr:`failures`.

        Args:
            source: Images: a folder (searched recursively), a file list, or paths. Texts: a CSV file or a
                sequence of texts (see :func:`~similar_images.sources.texts.read_texts`).
            path: The database folder to create (or the interrupted one to resume).
            config: What to embed and how: :class:`~.builders.ExtractConfig` (images, the default) or
                :class:`~.builders.TextBuildConfig` (texts).
            engine: Runs the embedding (default: this process; e.g. a
                :class:`~similar_images.engines.spark.SparkEngine`).
            force: Replace an existing database at ``path`` (and discard an interrupted build).
            embedder: An already-loaded embedder to reuse, of the config's kind and model (default: one is
                built from ``config``).
            calibration: Images only: the images ``auto`` precision and int8 sample from (default: the inputs).

        Returns:
            The new :class:`Database`, opened.

        Raises:
            ConfigError: If ``config`` is neither config, or ``embedder``/``calibration`` do not fit its kind.
            DatabaseExistsError: If a database already exists at ``path`` and ``force`` is false.
            InterruptedBuildError: If an interrupted build with other settings is found.
            SourceNotFoundError, NoInputsError, TextInputError: If the input is missing or holds nothing usable.
        """
        config = ExtractConfig() if config is None else config
        if isinstance(config, ExtractConfig):
            if embedder is not None and not isinstance(embedder, ImageEmbedder):
                raise ConfigError(f"config is an ExtractConfig (images) but the embedder embeds {embedder.kind}s; "
                                  "pass a TextBuildConfig to build a text database")
            extract_features(source, path, config, force=force, embedder=embedder, engine=engine,
                             calibration=calibration)
        elif isinstance(config, TextBuildConfig):
            if calibration is not None:
                raise ConfigError("calibration applies to images (an ExtractConfig); a TextBuildConfig builds texts")
            if embedder is not None and not isinstance(embedder, TextEmbedder):
                raise ConfigError(f"config is a TextBuildConfig (texts) but the embedder embeds {embedder.kind}s; "
                                  "pass an ExtractConfig to build an image database")
            texts = source if isinstance(source, (str, os.PathLike, Sequence)) else list(source)
            build_text_database(texts, path, config, force=force, embedder=embedder, engine=engine)
        else:
            raise ConfigError(f"config must be an ExtractConfig (images) or a TextBuildConfig (texts), "
                              f"not {type(config).__name__}")
        db = cls.open(path)
        if embedder is not None:
            db.embedder = embedder  # the loaded model embeds the queries too
        return db

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, model: str | None = None, weights: str | None = None,
             load_index: bool = True, mmap_index: bool = False, backend: str | None = None,
             precision: str | None = None, allow_backend_mismatch: bool = False) -> Database:
        """Open a database folder and check it against its manifest.

        Args:
            path: The database folder.
            model: If given, fail unless the database was built with this model.
            weights: Weights to embed queries with, overriding the manifest's
                (e.g. a local file when the database was built with ``imagenet``).
            load_index: Load the Faiss index (otherwise only exact search works).
            mmap_index: Memory-map the index file where Faiss supports it.
            backend: The inference backend queries must use (``None``: the one recorded in the manifest):
                ``keras``/``openvino`` for an image database, ``torch``/``onnx`` for a text one.
                Another than the recorded one is refused unless ``allow_backend_mismatch``.
            precision: The precision queries must use (``None``: the recorded one; image databases only);
                as ``backend``.
            allow_backend_mismatch: Embed queries with another backend or precision than the database's
                (a warning states the agreement measured at extraction, when there is one).

        Raises:
            DatabaseNotFoundError: If the folder holds no database.
            DatabaseCorruptError: If a file is damaged or contradicts the manifest.
            DatabaseError: If the database was built with another model than ``model``.
            ConfigError: If ``backend`` or ``precision`` differ from the database's without
                ``allow_backend_mismatch``.
        """
        db = Path(path).expanduser()
        inference = {k: v for k, v in (("backend", backend), ("precision", precision)) if v is not None}
        if inference:
            inference["allow"] = "1" if allow_backend_mismatch else ""
        for attempt in range(20):
            manifest = cls._load_manifest(db)
            try:
                return cls._open_with(db, manifest, model=model, weights=weights, load_index=load_index,
                                      mmap_index=mmap_index, inference=inference)
            except _GenerationChangedError:
                # A writer committed a new index generation (and dropped an older one) while we read: read again.
                time.sleep(min(0.2, 0.01 * (attempt + 1)))
        raise DatabaseCorruptError(f"The index file named by {db / MANIFEST} is missing",
                                   hint="Rebuild the index (force=True).", path=db / MANIFEST, database=db,
                                   rebuild="index")

    @staticmethod
    def _load_manifest(db: Path) -> Manifest:
        try:
            return Manifest.load(db)
        except DatabaseNotFoundError as exc:
            if (db / PARTIAL_DIR).exists():
                raise DatabaseNotFoundError(
                    f"No database at {db} yet: a build was interrupted there",
                    hint="Building again with the same settings resumes it.", path=db, fmt=exc.fmt,
                    partial=db / PARTIAL_DIR) from exc
            raise

    @classmethod
    def _open_with(cls, db: Path, manifest: Manifest, *, model: str | None, weights: str | None, load_index: bool,
                   mmap_index: bool, inference: dict[str, str] | None = None) -> Database:
        if model is not None and manifest.model_name != model:
            raise DatabaseError(f"{db} was built with model {manifest.model_name!r}, not {model!r}; "
                                "use the same model or rebuild the database")
        inference = _check_inference(db, manifest, inference or {})
        try:
            kind = item_kind(manifest.kind)
        except ConfigError as exc:
            raise DatabaseError(f"{db / MANIFEST}: {exc} (was it written by a newer similar-images?)") from None
        dim, n = manifest.dim, manifest.counts.items
        _check_model_dim(db, manifest)
        vpath = db / str(manifest.files["vectors"])
        vectors = open_vectors(vpath, n, dim)
        _check_unit_rows(db, manifest, vectors)  # first: it says when the dimension is what is wrong
        verify_vectors(vpath, vectors, manifest.checksums.get("vectors"))
        items = read_items(db / str(manifest.files["items"]), n, kind.item_key,
                           checksum=manifest.checksums.get("items"))
        index = None
        if load_index and manifest.index is not None:
            index = _read_checked_index(db, manifest, mmap_index)
        return cls(db, manifest, vectors, items, index, weights=weights, inference=inference)

    # --------------------------------------------------------------- properties
    @property
    def kind(self) -> str:
        """``"image"`` or ``"text"``."""
        return self.manifest.kind

    @property
    def item_key(self) -> str:
        """Key of an item in ``items.jsonl`` and JSON results (``"path"`` or ``"text"``)."""
        return item_kind(self.kind).item_key

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def model_name(self) -> str:
        return self.manifest.model_name

    @property
    def failures(self) -> list[tuple[str, str]]:
        """``(path, reason)`` of the inputs that could not be read."""
        name = self.manifest.files.get("failures")
        return read_failures(self.path / str(name)) if name else []

    @property
    def removed(self) -> np.ndarray:
        """Boolean mask over ids: True for removed items."""
        return self._removed

    @property
    def search_defaults(self) -> dict[str, int]:
        """The index's saved search parameters (``nprobe``, ``efSearch``, ``k_factor``)."""
        return dict(self.manifest.index.search_params) if self.manifest.index else {}

    @property
    def filtered_ids(self) -> np.ndarray:
        """Removed ids still inside an index that cannot delete them (filtered out of its results)."""
        ids = self.manifest.index.filtered_ids if self.manifest.index else []
        return np.asarray(ids, dtype=np.int64)

    @property
    def indexed_part(self) -> IndexedPart | None:
        """The interim index over the first rows of a view of an unfinished build, once trained (searches then
        merge it with exact search over the newer rows); ``None`` otherwise."""
        return self._interim.covering(len(self.items)) if self._interim is not None else None

    @property
    def ntotal(self) -> int:
        """Number of ids ever assigned (removed ones included)."""
        return len(self.items)

    def __len__(self) -> int:
        """Number of searchable (not removed) items."""
        return int(len(self.items) - self._removed.sum())

    def __repr__(self) -> str:
        idx = self.manifest.index.factory if self.manifest.index else "no index"
        return f"Database({str(self.path)!r}, {self.kind}, {self.model_name}, {len(self)} items, {idx})"

    def score_bands(self, *, sample: int = 500, seed: int = 0) -> ScoreBands | None:
        """The score bands of this database (:class:`~similar_images.index.ScoreBands`): plain words for scores.

        Their thresholds are measured when the index is built and stored in the manifest. A database without
        them (built by an older version, or without an index) measures them now on ``sample`` of its items
        (their nearest neighbour through the index, exact without one), once per opened database; nothing is
        written. ``None`` when the database has fewer than two items.
        """
        stored = self.manifest.index.get("score_bands") if self.manifest.index else None
        if stored:
            return ScoreBands.from_dict(stored)
        if self._measured_bands is None:
            live = self.live_ids()
            if len(live) < 2:
                return None
            rng = np.random.default_rng(seed)
            ids = np.sort(rng.choice(live, size=min(sample, len(live)), replace=False))
            xq = np.ascontiguousarray(self.vectors[ids], dtype=np.float32)
            scores, found, _ = search_vectors(self, xq, 2, exact=self.index is None)
            nearest = np.where(found[:, 0] == ids, scores[:, 1], scores[:, 0])
            self._measured_bands = ScoreBands.from_similarities(nearest[np.isfinite(nearest)])
            logger.info("Score bands of %s measured on %d items: %s", self.path, len(ids), self._measured_bands)
        return self._measured_bands

    def live_ids(self) -> np.ndarray:
        """Ids of the items that can be returned by a search."""
        return np.flatnonzero(~self._removed)

    def check_id(self, item_id: int) -> int:
        """Validate an id.

        Raises:
            UnknownIdError: If the id is not an integer, out of range, or removed.
        """
        try:
            i = int(item_id)
        except (TypeError, ValueError):
            raise UnknownIdError(f"Item id must be an integer, got {item_id!r}") from None
        if not 0 <= i < len(self.items):
            raise UnknownIdError(f"Unknown id {i}: ids run from 0 to {len(self.items) - 1}")
        if self._removed[i]:
            raise UnknownIdError(f"Id {i} was removed from the database")
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
            UnknownIdError: If the database does not hold it.
        """
        key = item_kind(self.kind).normalize(item)
        if self._id_by_item is None:
            # the live id of each item (one removed and added again has a live id besides its removed ones)
            self._id_by_item = {it: i for i, it in enumerate(self.items) if not self._removed[i]}
        i = self._id_by_item.get(key)
        if i is None or self._removed[i]:
            raise UnknownIdError(f"{item} is not in the database")
        return i

    # ----------------------------------------------------------------- embedder
    @property
    def embedder(self) -> Embedder:
        """The embedder that embeds queries the way the database was built (its model loads on first use)."""
        if self._embedder is None:
            info = {**self.manifest.model, **self._inference_override}
            self._embedder = embedder_from_info(info, kind=self.kind, weights=self._weights_override)
        return self._embedder

    @embedder.setter
    def embedder(self, value: Embedder) -> None:
        self._embedder = value

    # ------------------------------------------------------------------- search
    def search(self, query: Any, k: int = 8, *, exact: bool = False, nprobe: int | None = None,
               ef_search: int | None = None, k_factor: int | None = None, rerank: int = DEFAULT_RERANK,
               fetch_config: FetchConfig | None = None, exclude_query: bool = False) -> Results:
        """Find the ``k`` items most similar to ``query``.

        Args:
            query: A database id, an image path, bytes, a PIL image, an http(s) URL, a vector, or (text
                database) a string.
            k: Number of results (fewer if the database is smaller).
            exact: Brute-force search over the stored vectors instead of the index.
            nprobe: IVF lists to visit (default: the index's saved value).
            ef_search: HNSW search depth (default: the index's saved value).
            k_factor: Re-ranking depth of a refine stage.
            rerank: Index candidates per result re-ranked with the stored vectors, so scores are exact cosine
                similarities; ``1`` keeps the index's own ranking and (for compressed indexes, approximate)
                scores.
            fetch_config: Limits for URL queries.
            exclude_query: When the query is a database id, leave it out of the results (``k`` *other* items).

        Returns:
            :class:`~similar_images.search.Results`, best first.

        Raises:
            QueryError: For a bad query or parameter.
            ImageLoadError: For an unreadable image.
        """
        return search(self, query, k, exact=exact, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor,
                      rerank=rerank, fetch_config=fetch_config, exclude_query=exclude_query)

    def search_batch(self, queries: Sequence[Any], k: int = 8, *, exact: bool = False, nprobe: int | None = None,
                     ef_search: int | None = None, k_factor: int | None = None, rerank: int = DEFAULT_RERANK,
                     fetch_config: FetchConfig | None = None) -> list[Results]:
        """Search several queries in one model call and one index call; the keywords are :meth:`search`'s."""
        return search_batch(self, queries, k, exact=exact, nprobe=nprobe, ef_search=ef_search, k_factor=k_factor,
                            rerank=rerank, fetch_config=fetch_config)

    # -------------------------------------------------------------------- index
    @property
    def has_index(self) -> bool:
        return self.index is not None

    def default_factory(self) -> str:
        """The index :meth:`build_index` builds when none is named (it depends on the embedder and the size)."""
        return factory_for(default_index_name(self.manifest.model, kind=self.kind), len(self), self.dim)

    def build_index(self, config: IndexConfig | None = None, *, engine: Engine | None = None,
                    force: bool = False) -> BuildReport:
        """Train and save an index over all stored vectors: the one way to index a database.

        The write lock is held throughout; the engine trains and fills the index, then it is installed as the
        next generation with its build report (and the engine's figures) in the manifest.

        Args:
            config: Index settings (default: :meth:`default_factory`, nprobe measured).
            engine: Trains and fills the index (default: :class:`~similar_images.engines.local.LocalEngine`,
                in this process; :class:`~similar_images.engines.spark.SparkEngine` on Spark, reading the
                vectors file from storage every executor reaches).
            force: Replace an existing index.

        Returns:
            The build report (recall@10 alone and served, size, times, search defaults).

        Raises:
            IndexExistsError: If an index exists and ``force`` is false.
            IndexTrainingError: If there are too few vectors for the index.
        """
        self._refuse_partial()
        with database_lock(self.path):
            self._refresh()
            self._refuse_existing_index(force)
            config = config or IndexConfig()
            if config.factory is None:
                config = IndexConfig(**{**config.__dict__, "factory": self.default_factory()})
            live = self.live_ids()
            all_rows = len(live) == len(self.items)
            vectors = self.vectors if all_rows else np.asarray(self.vectors[live])
            files = IndexFiles(vectors=self.path / str(self.manifest.files["vectors"]), n_rows=len(self.items),
                               work_dir=self.path / ".partial-index",
                               ivfdata=self.path / (Path(self.next_index_name()).stem + ".ivfdata"))
            built = (engine or LocalEngine()).build_index(vectors, config, ids=None if all_rows else live,
                                                          files=files)
            self.install_index(built.index, built.report, force=True, extra=built.figures)
        return built.report

    def _refuse_existing_index(self, force: bool) -> None:
        if self.manifest.index is not None and not force:
            raise IndexExistsError(self.path, self.manifest.index.factory)

    def next_index_name(self) -> str:
        """The file name the next index generation will get (``index-0003.faiss``); files that must sit beside
        it (on-disk inverted lists) take its stem. Stable while the write lock is held."""
        return index_file_name(max(index_generation(self.manifest.files.get("index")),
                                   _newest_generation(self.path)) + 1)

    def install_index(self, index: Any, report: BuildReport, *, force: bool = False,
                      extra: dict[str, Any] | None = None) -> None:
        """Install an index over the live vectors (from :meth:`build_index`, or built in parts elsewhere) as
        the next generation, with its build report as the manifest's figures.

        Args:
            index: The trained, filled index; its ids are the database ids of the live items.
            report: Its build report (search defaults, measured recall, ...).
            force: Replace an existing index.
            extra: More figures for the manifest's index section (e.g. the engine that built it).

        Raises:
            IndexExistsError: If an index exists and ``force`` is false.
            ConfigError: If the index does not hold exactly the live items or has another dimension.
        """
        self._refuse_partial()
        with database_lock(self.path):
            self._refresh()
            self._refuse_existing_index(force)
            live = self.live_ids()
            if index.ntotal != len(live) or index.d != self.dim:
                raise ConfigError(f"The index holds {index.ntotal} {index.d}-d vectors; the database has "
                                  f"{len(live)} live {self.dim}-d ones")
            manifest = self.manifest.copy()
            figures = {k: v for k, v in report.to_dict().items() if k not in ("factory", "search_params")}
            manifest.index = IndexInfo(factory=report.factory, search_params=dict(report.search_params),
                                       filtered_ids=[], built_at=now(), figures={**figures, **(extra or {})})
            manifest.counts.indexed = len(live)
            manifest.counts.added_after_training = 0
            self._commit(manifest, index)

    # ------------------------------------------------------------ add / remove
    def add_vectors(self, vectors: np.ndarray, items: Sequence[str],
                    failures: Sequence[tuple[str, str]] = (), *, skip_existing: bool = False) -> list[int]:
        """Append already-embedded vectors (normalised here) with their items; returns their new ids.

        Args:
            vectors: ``(len(items), dim)`` vectors.
            items: Their paths (or texts).
            failures: ``(item, reason)`` of inputs that could not be embedded (added to ``failures.csv``).
            skip_existing: Leave out the items the database already holds (checked under the write lock, so
                that two processes adding the same files add them once).

        Raises:
            ConfigError: If the vectors do not match the database's dimension or the items.
        """
        self._refuse_partial()
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.size and (vectors.ndim != 2 or len(vectors) != len(items)):
            raise ConfigError(f"Got vectors of shape {vectors.shape} for {len(items)} items")
        vectors = l2_normalize(vectors.reshape(len(items), -1)) if len(items) else vectors.reshape(0, self.dim)
        if vectors.shape[1] != self.dim:
            raise ConfigError(f"Vectors have dimension {vectors.shape[1]}, the database {self.dim}")
        with database_lock(self.path):
            self._refresh()
            if skip_existing and len(items):
                known = self.live_items()
                keep = [i for i, item in enumerate(items) if str(item) not in known]
                if len(keep) < len(items):
                    vectors, items = vectors[keep], [items[i] for i in keep]
                if not items and not failures:
                    return []
            n_old = len(self.items)
            new_ids = list(range(n_old, n_old + len(items)))
            vpath = self.path / str(self.manifest.files["vectors"])
            vectors_checksum = self._extended_vectors_checksum(vectors)
            try:
                with open(vpath, "r+b") as fh:  # drop rows of an interrupted add, then append
                    fh.truncate(n_old * self.dim * 4)
                    fh.seek(0, os.SEEK_END)
                    fh.write(vectors.tobytes())
                    fh.flush()
                    os.fsync(fh.fileno())
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # the rows beyond the manifest's count are ignored
                    raise disk_full(vpath, exc.errno) from exc
                raise
            items_checksum = append_items(self.path / str(self.manifest.files["items"]), self.item_key,
                                          [str(x) for x in items], keep=n_old)
            if failures:
                write_failures(self.path / str(self.manifest.files["failures"]), self.failures + list(failures))
            manifest = self.manifest.copy()
            manifest.checksums = {**manifest.checksums, "vectors": vectors_checksum, "items": items_checksum}
            manifest.counts.items = n_old + len(items)
            manifest.counts.failed += len(failures)
            index = self.index
            if index is None and manifest.index is not None:
                index = _read_checked_index(self.path, self.manifest, False)
            if index is not None and new_ids:
                add_vectors(index, vectors, np.asarray(new_ids, dtype=np.int64))
                manifest.counts.indexed = int(index.ntotal)
                manifest.counts.added_after_training += len(new_ids)
                self._commit(manifest, index)
            else:
                self._commit(manifest, None)
        logger.info("Added %d items to %s", len(new_ids), self.path)
        return new_ids

    def live_items(self) -> set[str]:
        """The items a search can return (removed ones left out: adding one of those again gives it a new id)."""
        return {item for item, removed in zip(self.items, self._removed) if not removed}

    def _extended_vectors_checksum(self, new: np.ndarray) -> Checksum:
        """The vectors checksum once ``new`` rows are appended (the rows the current one does not cover, from a
        database written before checksums or an add by an older version, are read for it first)."""
        current = self.manifest.checksums.get("vectors")
        rows, crc = (current.rows, current.crc32) if current else (0, 0)
        crc = vectors_crc32(self.vectors, rows, len(self.items), crc)
        return Checksum(len(self.items) + len(new), zlib.crc32(new.tobytes(), crc))

    def add(self, sources: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], *,
            batch_size: int = 32, verbose: bool = False, engine: Any = None) -> AddSummary:
        """Embed new images (a folder, a file list or paths) and add them without retraining the index.

        Images already in the database are skipped (a removed image is added again, under a new id); unreadable
        ones are reported.

        Args:
            sources: A folder, a file list, or paths.
            batch_size: Images per model call.
            verbose: Show a progress bar.
            engine: Runs the embedding (default: this process; see :class:`~similar_images.engines.local.Engine`).

        Raises:
            ConfigError: For a text database (use :meth:`add_vectors`).
            SourceNotFoundError, NoInputsError: For a missing or empty input.
        """
        if not item_kind(self.kind).files:
            raise ConfigError("add() takes image files; for a text database use add_vectors()")
        known = self.live_items()
        paths = [str(p) for p in collect_inputs(sources) if str(p) not in known]
        if not paths:
            return AddSummary(ids=[])
        config = BuildConfig(batch_size=batch_size, verbose=verbose, unit="img")
        ok, vectors, failures = embed_items(paths, self.embedder, self.path, config, engine=engine)
        ids = self.add_vectors(vectors, ok, failures, skip_existing=True) if ok or failures else []
        return AddSummary(ids=ids, failures=failures)

    def remove(self, targets: Iterable[int | str | os.PathLike[str]]) -> list[int]:
        """Remove items by id or path; ids of the others do not change.

        Returns:
            The removed ids.

        Raises:
            UnknownIdError: If an id or path is unknown (nothing is removed then).
        """
        self._refuse_partial()
        with database_lock(self.path):
            self._refresh()
            ids = sorted({self.check_id(t) if isinstance(t, (int, np.integer)) else self.id_of(t) for t in targets})
            if not ids:
                return []
            manifest = self.manifest.copy()
            manifest.removed_ids = sorted(set(manifest.removed_ids) | set(ids))
            manifest.counts.removed = len(manifest.removed_ids)
            index = self.index
            if index is None and manifest.index is not None:
                index = _read_checked_index(self.path, self.manifest, False)
            if index is not None and manifest.index is not None:
                arr = np.asarray(ids, dtype=np.int64)
                try:
                    n_removed = index.remove_ids(arr)
                    if n_removed != len(ids):
                        raise RuntimeError(f"removed {n_removed} of {len(ids)}")
                except RuntimeError as exc:  # e.g. HNSW cannot delete: filter at search time instead
                    logger.info("Index cannot delete (%s); removed ids are filtered at search time",
                                str(exc).splitlines()[-1])
                    manifest.index.filtered_ids = sorted(set(manifest.index.filtered_ids) | set(ids))
                manifest.counts.indexed = int(index.ntotal)
                self._commit(manifest, index)
            else:
                self._commit(manifest, None)
        return ids

    # ------------------------------------------------------------------ commits
    def _refresh(self) -> None:
        """Re-read the database if another process committed a change since it was opened (call under the lock).

        Raises:
            DatabaseError: If this is a view of an unfinished build (it cannot be changed until the build ends).
        """
        self._refuse_partial()
        disk = self._load_manifest(self.path)
        if disk.to_dict() == self.manifest.to_dict():
            return
        fresh = self._open_with(self.path, disk, model=None, weights=self._weights_override,
                                load_index=self.index is not None, mmap_index=False,
                                inference={**self._inference_override, "allow": "1"})
        self.manifest, self.vectors, self.items, self.index = fresh.manifest, fresh.vectors, fresh.items, fresh.index
        self._removed = fresh._removed
        self._id_by_item = None

    def _refuse_partial(self) -> None:
        """Refuse to change a view of an unfinished build (before taking the lock its build holds).

        Raises:
            DatabaseError: If this is such a view.
        """
        if self.partial:
            raise DatabaseError(f"{self.path} is still being built; it can be searched but not changed until its "
                                "build ends")

    def _commit(self, manifest: Manifest, index: Any | None) -> None:
        """Write ``index`` (if given) as a new generation, then the manifest; keep the previous generation only."""
        previous = manifest.files.get("index")
        if index is not None:
            name = self.next_index_name()
            write_index(index, self.path / name)
            manifest.files["index"] = name
            if manifest.index is not None:  # what `info` reports: the size now, not at the first build
                stem = Path(name).stem  # with its on-disk inverted lists, if any
                manifest.index.figures["index_bytes"] = sum(
                    (self.path / f"{stem}{suffix}").stat().st_size for suffix in (".faiss", ".ivfdata")
                    if (self.path / f"{stem}{suffix}").exists())
        try:
            manifest.save(self.path)
        except BaseException:
            if index is not None:  # no manifest names it (a full disk): the generation is dropped
                (self.path / str(manifest.files["index"])).unlink(missing_ok=True)
            raise
        self.manifest = manifest
        n = manifest.counts.items
        if len(self.items) != n:
            self.items = read_items(self.path / str(manifest.files["items"]), n, self.item_key)
            self.vectors = open_vectors(self.path / str(manifest.files["vectors"]), n, self.dim)
        self._removed = self._removed_mask(manifest, n)
        self._id_by_item = None  # the live id of an item changes when it is removed or added again
        if index is not None:
            self.index = index
            keep = {Path(str(n)).stem for n in (manifest.files["index"], previous) if n}
            for old in [*self.path.glob("index-*.faiss"), *self.path.glob("index-*.ivfdata")]:
                if old.stem not in keep:  # an older generation and its on-disk inverted lists
                    old.unlink(missing_ok=True)
        _remove_stale_temporaries(self.path)


#: Temporary files of the database's own files (see :func:`similar_images._util.io.atomic_path`).
_TEMPORARIES = (".index-*.faiss.*.tmp", f".{MANIFEST}.*.tmp", f".{ITEMS}.*.tmp", f".{VECTORS}.*.tmp",
                f".{FAILURES}.*.tmp")


def _remove_stale_temporaries(db: Path) -> None:
    """Remove the temporary files that killed writers left (call under the write lock: no writer is running)."""
    for pattern in _TEMPORARIES:
        for stale in db.glob(pattern):
            stale.unlink(missing_ok=True)


class _GenerationChangedError(Exception):
    """The index file named by the manifest just read is gone (a writer moved on)."""


def _newest_generation(db: Path) -> int:
    return max((index_generation(p.name) for p in db.glob("index-*.faiss")), default=0)


def measured_agreement(manifest: Manifest, precision: str) -> float | None:
    """The top-10 agreement with fp32 of ``precision`` measured when the database was extracted (``auto``)."""
    choice = manifest.precision_choice
    for c in choice.get("candidates", []):
        if c.get("precision") == precision and c.get("agreement") is not None:
            return float(c["agreement"])
    return None


def _check_inference(db: Path, manifest: Manifest, asked: dict[str, str]) -> dict[str, str]:
    """The backend and precision queries use instead of the recorded ones ({} for the recorded ones).

    Raises:
        ConfigError: If they differ from the recorded ones and the mismatch is not allowed.
    """
    if not asked or ("backend" not in asked and "precision" not in asked):
        return {}
    if manifest.kind == "text":
        return _check_text_inference(db, manifest, asked)
    if manifest.kind != "image":
        raise ConfigError(f"{db} is a {manifest.kind} database: backend and precision apply to image and text "
                          "models only")
    recorded = manifest.image_inference
    backend = check_backend(asked.get("backend", recorded[0]))
    precision = check_precision(asked.get("precision", recorded[1]))
    if precision == "auto":
        raise ConfigError(f"Queries of {db} use a fixed precision; it was built with {recorded[0]} {recorded[1]}",
                          hint="precision=None uses it.", path=db, setting="precision", value=precision,
                          expected=recorded[1])
    if (backend, precision) == recorded:
        return {}
    figures = [f"{p} {a:.3f}" for p in {recorded[1], precision} - {"fp32"}
               if (a := measured_agreement(manifest, p)) is not None]
    measured = (f"measured top-10 agreement with fp32 at extraction: {', '.join(figures)}" if figures
                else "no agreement between them was measured at extraction")
    if not asked.get("allow"):
        raise ConfigError(
            f"{db} was built with {recorded[0]} {recorded[1]}; its queries use the same backend and precision so "
            "that query and database vectors come from the same model", hint=f"backend=None and precision=None use "
            f"them; allow_backend_mismatch=True embeds queries with {backend} {precision} anyway ({measured}).",
            path=db, setting="allow_backend_mismatch", value=(backend, precision), expected=recorded)
    logger.warning("Queries of %s use %s %s, but the database was built with %s %s (%s)", db, backend, precision,
                   recorded[0], recorded[1], measured)
    return {"backend": backend, "precision": precision}


def _check_text_inference(db: Path, manifest: Manifest, asked: dict[str, str]) -> dict[str, str]:
    """As :func:`_check_inference`, for a text database: a backend (torch, onnx) and no precision."""
    if "precision" in asked:
        raise ConfigError(f"{db} is a text database: its encoder has no precision setting", hint="precision=None.",
                          path=db, setting="precision", value=asked["precision"], expected=None)
    recorded = str(manifest.model.get("backend", DEFAULT_TEXT_BACKEND))
    backend = check_text_backend(asked["backend"])
    if backend == recorded:
        return {}
    if not asked.get("allow"):
        raise ConfigError(
            f"{db} was built with the {recorded} text backend; its queries use the same backend so that query and "
            "database vectors come from the same model", hint=f"backend=None uses it; allow_backend_mismatch=True "
            f"embeds queries with {backend} anyway.", path=db, setting="allow_backend_mismatch", value=(backend,),
            expected=(recorded,))
    logger.warning("Queries of %s use the %s text backend, but the database was built with %s", db, backend,
                   recorded)
    return {"backend": backend}


def _check_model_dim(db: Path, manifest: Manifest) -> None:
    """Refuse a manifest whose dimension contradicts its registered model (a hand-edited or damaged manifest)."""
    spec_dim = registered_dim(manifest.model, kind=manifest.kind)
    if spec_dim is not None and spec_dim != manifest.dim:
        raise DatabaseCorruptError(
            f"{db / MANIFEST} gives the dimension {manifest.dim} for model {manifest.model_name!r}, whose vectors "
            f"have {spec_dim}; the manifest is damaged: rebuild the database")


def _check_unit_rows(db: Path, manifest: Manifest, vectors: np.ndarray, samples: int = 16) -> None:
    """Refuse vectors that are not unit length although the manifest says they are normalised.

    Read with the wrong dimension, normalised rows are not unit length (two consecutive rows of a halved
    dimension split one vector's unit norm between them), so this catches a manifest whose dimension is wrong
    even for a model that is not registered, and a damaged vectors file.
    """
    n = len(vectors)
    if not manifest.normalized or n == 0:
        return
    rows = np.unique(np.concatenate([np.arange(min(n, 2)), np.linspace(0, n - 1, min(n, samples)).astype(np.int64),
                                     np.arange(max(0, n - 2), n)]))
    norms = np.linalg.norm(np.asarray(vectors[rows], dtype=np.float64), axis=1)
    bad = np.flatnonzero(~(np.isclose(norms, 1.0, atol=1e-3) | (norms < 1e-3)))
    if len(bad):
        i = int(bad[0])
        raise DatabaseCorruptError(
            f"The vectors in {db / str(manifest.files['vectors'])} are not unit length when read as "
            f"{manifest.dim}-d vectors (id {int(rows[i])} has length {norms[i]:.4f}): the dimension in "
            f"{db / MANIFEST} is wrong or the file is damaged; rebuild the database")


def _raise_if_moved_on(db: Path, name: str) -> None:
    """Raise :class:`_GenerationChangedError` if the manifest on disk no longer names the index file ``name``."""
    try:
        current = Manifest.load(db)
    except DatabaseError:
        return
    if current.files.get("index") != name:
        raise _GenerationChangedError(name)


def _read_checked_index(db: Path, manifest: Manifest, mmap: bool) -> Any:
    """Read the index the manifest names and check it against the manifest.

    Raises:
        _GenerationChangedError: If the file is gone but a newer manifest exists.
        DatabaseCorruptError: If it cannot be read or does not match.
    """
    assert manifest.index is not None
    name = str(manifest.files["index"])
    ipath = db / name
    data: dict[str, Any] = {"path": ipath, "database": db, "rebuild": "index",
                            "hint": "Rebuild the index (force=True)."}
    if not (ipath.exists() or ipath.is_symlink()):
        _raise_if_moved_on(db, name)
        raise DatabaseCorruptError(f"Index file {ipath} named by the manifest is missing", **data)
    try:
        _io.check_regular(ipath)
    except FileNotFoundError:
        _raise_if_moved_on(db, name)
        raise DatabaseCorruptError(f"Index file {ipath} named by the manifest is missing", **data) from None
    except DatabaseFileError as exc:
        raise DatabaseFileError(str(exc), reason=exc.reason, **data) from None
    try:
        index = read_index(ipath, mmap=mmap)
    except (RuntimeError, MemoryError) as exc:
        _raise_if_moved_on(db, name)  # removed while it was being read
        logger.debug("Faiss cannot read %s: %s", ipath, exc)
        size = ipath.stat().st_size if ipath.exists() else 0
        why = "it is empty" if size == 0 else f"{size:,} bytes, truncated or not a Faiss index"
        raise DatabaseCorruptError(f"Index file {ipath} cannot be read ({why})", **data) from None
    if index.d != manifest.dim:
        raise DatabaseCorruptError(f"Index dimension {index.d} does not match the vectors' dimension {manifest.dim}",
                                   **data)
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise DatabaseCorruptError("The index does not use the inner-product metric", **data)
    if index.ntotal != manifest.counts.indexed:
        raise DatabaseCorruptError(f"The index holds {index.ntotal} vectors but the manifest says "
                                   f"{manifest.counts.indexed}", **data)
    try:
        set_search_params(index, manifest.index.search_params)
    except ConfigError as exc:
        raise DatabaseCorruptError(f"{db / MANIFEST}: {exc}", **data) from None
    return index
