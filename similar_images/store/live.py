"""Reading a database that changes: one being extracted, or one that other processes add to and remove from.

A build (:mod:`.build`) commits its shards into ``DB/.partial/`` long before it
writes the manifest. :func:`open_readable` opens whatever is committed: the
finished database when there is one, otherwise a read-only view of the
committed shards (the contiguous run from the first, so that every id is the
one the finished database will give it). :class:`LiveDatabase` follows a
folder as it changes: on each :meth:`~LiveDatabase.get` it checks, at most
once per ``interval`` seconds, a cheap stamp (two ``stat`` calls and a listing
of ``.partial/``); when the stamp moved it opens the new version (in a
background thread once it holds one) and swaps it in, so a request never
waits for a reload and never sees a half-read database. :func:`build_progress`
says how far a build has got.

A reader that follows a build (``interim_index_at``, by default in :class:`LiveDatabase`) trains an interim
index over the committed rows once there are enough of them (:mod:`.interim`, in the background); its views
then search that index for the rows it holds and the newer rows exactly, the two merged.

Example:
    >>> live = LiveDatabase("coco-db")            # doctest: +SKIP
    >>> live.get().search("cat.jpg", k=5)          # doctest: +SKIP
    >>> build_progress("coco-db").to_dict()        # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._util import io as _io
from .._util.locks import LockTimeoutError, file_lock
from .._util.types import JSON
from ..engines.local import Engine
from ..engines.shards import shard_meta
from ..errors import DatabaseError, DatabaseNotFoundError, DatabaseNotReadyError
from ..index import IndexConfig
from .build import unit_rows
from .database import Database, _check_inference
from .folder import LOCK_FILE, PARTIAL_DIR
from .interim import InterimIndex, default_interim_rows
from .manifest import MANIFEST, Counts, Manifest
from .plan import PLAN, PLAN_ITEMS, read_plan_items

__all__ = ["BuildProgress", "LiveDatabase", "build_progress", "open_readable", "stamp"]

logger = logging.getLogger(__name__)

#: Seconds between two checks of a followed database for changes.
DEFAULT_INTERVAL = 1.0
#: Committed shards whose times give the build's rate (the most recent ones).
_RATE_WINDOW = 8
#: ``interim_index_at`` that picks the row count from the vectors' dimension (:func:`.default_interim_rows`).
AUTO = "auto"


# --------------------------------------------------------------------------- the partial view
@dataclass(frozen=True)
class _Shard:
    number: int
    ok: list[int]
    failures: list[tuple[int, str]]
    vectors: str
    mtime: float


def _read_plan(partial: Path) -> tuple[JSON, int]:
    """``(settings, planned items)`` of the build in ``partial``.

    Raises:
        FileNotFoundError: If there is no plan (no build, or it just finished).
        DatabaseError: If the plan is damaged.
    """
    try:
        plan = _io.read_json(partial / PLAN)
        settings, n = plan["settings"], int(plan["n"])
        if not isinstance(settings, dict) or not isinstance(settings.get("model"), dict):
            raise ValueError("no settings")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatabaseError(f"The plan of the build in {partial} cannot be read ({exc})") from None
    return settings, n


def _committed(partial: Path, n_items: int, shard_size: int) -> list[_Shard]:
    """The committed shards, in order (damaged or half-written markers count as not committed)."""
    shards = []
    for s in range((n_items + shard_size - 1) // shard_size):
        meta_path = shard_meta(partial, s)
        try:
            meta = _io.read_json(meta_path)
            shards.append(_Shard(s, [int(i) for i in meta["ok"]], [(int(i), str(r)) for i, r in meta["failures"]],
                                 str(meta["vectors"]), meta_path.stat().st_mtime))
        except (OSError, ValueError, KeyError, TypeError, DatabaseError):
            continue
    return shards


def _prefix(shards: list[_Shard]) -> list[_Shard]:
    """The committed shards from the first up to the first gap (their ids are final)."""
    out = []
    for expected, shard in enumerate(shards):
        if shard.number != expected:
            break
        out.append(shard)
    return out


def open_partial(path: str | os.PathLike[str], *, model: str | None = None, weights: str | None = None,
                 inference: dict[str, str] | None = None, previous: Database | None = None,
                 interim_index_at: int | str | None = None, interim_config: IndexConfig | None = None,
                 interim_engine: Engine | None = None) -> Database:
    """A read-only :class:`Database` of the shards a build has committed so far (no index of its own).

    Ids are final: the view holds the committed shards from the first up to the first one still missing.
    The vectors live in one buffer sized for the whole build (its pages are only used as rows are written);
    a view made with the ``previous`` view of the same build shares its buffer and reads only the new shards,
    so following a build costs no copy of what was read already (a view's rows never change).

    Searches are exact until an interim index is trained (``interim_index_at``, see :mod:`.interim`): then
    they search it for the rows it holds and the others exactly, merged. The interim index is carried from
    the ``previous`` view like the buffer.

    Args:
        path: The database folder.
        model, weights, inference: As :meth:`Database.open` (the model the build must use, the weights and
            inference settings of query embedding).
        previous: The view opened before, whose buffer and interim index a view of the same build reuses.
        interim_index_at: Rows from which an interim index is trained in the background (:data:`AUTO`: from
            the dimension, :func:`~.interim.default_interim_rows`; ``None``: never, searches stay exact).
        interim_config: Its index settings (default: the project's default index for the rows).
        interim_engine: What trains it (default: the :class:`~similar_images.engines.local.LocalEngine`).

    Raises:
        FileNotFoundError: If the folder holds no build (or it finished while being read: open it again).
        DatabaseNotReadyError: If the build has committed no shard yet.
        DatabaseError: If its plan is damaged, or it was built with another model than ``model``.
    """
    db = Path(path).expanduser()
    partial = db / PARTIAL_DIR
    settings, n = _read_plan(partial)
    kind, info, shard_size = str(settings["kind"]), dict(settings["model"]), int(settings["shard_size"])
    if model is not None and info.get("name") != model:
        raise DatabaseError(f"{db} is being built with model {info.get('name')!r}, not {model!r}")
    shards = _prefix(_committed(partial, n, shard_size))
    if not shards:
        raise DatabaseNotReadyError(db, n)
    items_all = read_plan_items(partial / PLAN_ITEMS)
    dim = int(info["dim"])
    key = (str(db.resolve()), n, shard_size, dim, json.dumps(info, sort_keys=True, default=str))
    shared = getattr(previous, "_live_buffer", None)
    done = previous.manifest.shards_ready if previous is not None and shared is not None else 0
    interim: InterimIndex | None = getattr(previous, "_interim", None)
    if shared is None or shared[0] != key or done > len(shards):  # another build, or it re-embeds a shard
        shared, done = (key, np.empty((n, dim), dtype=np.float32)), 0
        if interim is not None:
            interim.close()
        interim = None
    buffer: np.ndarray = shared[1]
    rows = sum(len(shard.ok) for shard in shards[:done])
    for shard in shards[done:]:
        arr = np.load(partial / shard.vectors, mmap_mode="r", allow_pickle=False)
        if arr.shape != (len(shard.ok), dim):
            raise DatabaseError(f"Shard {shard.number} of the build in {partial} holds vectors of shape "
                                f"{arr.shape} for {len(shard.ok)} items")
        buffer[rows:rows + len(arr)] = unit_rows(np.asarray(arr, dtype=np.float32))
        rows += len(arr)
    vectors = buffer[:rows]
    items = [items_all[i] for shard in shards for i in shard.ok]
    failed = sum(len(shard.failures) for shard in shards)
    manifest = Manifest(kind=kind, model=info, files={"vectors": None, "items": None, "failures": None,
                                                      "index": None},
                        counts=Counts(items=len(items), failed=failed),
                        extra={"build": {"partial": True, "planned": n, "shard_size": shard_size,
                                         "shards_ready": len(shards)}})
    checked = _check_inference(db, manifest, inference or {})
    view = Database(db, manifest, vectors, items, None, weights=weights, inference=checked)
    view.partial = True
    view._live_buffer = shared  # type: ignore[attr-defined]
    if interim is None and interim_index_at is not None:
        at = default_interim_rows(dim) if interim_index_at == AUTO else interim_index_at
        interim = InterimIndex(at, config=interim_config, engine=interim_engine)  # type: ignore[arg-type]
    if interim is not None:
        interim.offer(vectors)  # starts training or extending in the background when due; never waits
        view._interim = interim
    return view


def open_readable(path: str | os.PathLike[str], *, model: str | None = None, weights: str | None = None,
                  load_index: bool = True, mmap_index: bool = False, backend: str | None = None,
                  precision: str | None = None, allow_backend_mismatch: bool = False,
                  previous: Database | None = None, interim_index_at: int | str | None = None,
                  interim_config: IndexConfig | None = None, interim_engine: Engine | None = None) -> Database:
    """Open everything committed in a database folder, for reading: the database, or the part of it that its
    build has committed so far (see :func:`open_partial`). Takes the arguments of :meth:`Database.open`, and
    ``previous``: the version opened before, whose shards (and interim index) a new view of the same build
    reuses, and :func:`open_partial`'s ``interim_*`` settings (off by default: a reader that searches once
    has no use for an index trained in the background).

    Raises:
        DatabaseNotReadyError: If a build has begun but committed nothing yet.
        DatabaseNotFoundError: If the folder holds neither a database nor a build.
        DatabaseError: As :meth:`Database.open`.
    """
    inference = {k: v for k, v in (("backend", backend), ("precision", precision)) if v is not None}
    if inference:
        inference["allow"] = "1" if allow_backend_mismatch else ""
    for _ in range(20):
        try:
            return Database.open(path, model=model, weights=weights, load_index=load_index, mmap_index=mmap_index,
                                 backend=backend, precision=precision, allow_backend_mismatch=allow_backend_mismatch)
        except DatabaseNotReadyError:
            raise
        except DatabaseNotFoundError:
            if not (Path(path).expanduser() / PARTIAL_DIR / PLAN).exists():
                raise
        try:
            view = open_partial(path, model=model, weights=weights, inference=inference, previous=previous,
                                interim_index_at=interim_index_at, interim_config=interim_config,
                                interim_engine=interim_engine)
        except DatabaseNotReadyError:
            if not (Path(path).expanduser() / MANIFEST).exists():
                raise
            continue  # the build finished and is removing its shards: open the database
        except FileNotFoundError:  # the build finished (or a shard moved) while being read: read again
            time.sleep(0.05)
            continue
        if not (Path(path).expanduser() / MANIFEST).exists():
            return view
        # the build committed while its shards were read (some may be gone already): open the database
    raise DatabaseError(f"{path} changed too often while it was being read; try again")


# --------------------------------------------------------------------------- progress
@dataclass(frozen=True)
class BuildProgress:
    """How far a database folder's build has got.

    Attributes:
        ready: Items that can be searched now.
        total: Items the build plans (``ready`` plus failures when no build is unfinished).
        done: Items the build has processed (embedded or failed).
        phase: ``"extracting"`` (a build runs), ``"interrupted"`` (a build is unfinished and nothing runs it),
            ``"indexing"`` (the build finished and a process holds the write lock while the database has no
            index yet), ``"ready"`` (nothing in progress), or ``"empty"`` (neither database nor build).
        rate: Items per second over the last committed shards (``None`` until two are committed).
        eta_s: Seconds the rest should take at that rate (``None`` when unknown or not extracting).
        indexed: Whether the database has a trained index.
    """

    ready: int
    total: int
    done: int
    phase: str
    rate: float | None = None
    eta_s: float | None = None
    indexed: bool = False

    @property
    def building(self) -> bool:
        """Whether a build or an index build is running."""
        return self.phase in ("extracting", "indexing")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["building"] = self.building
        d["rate"] = None if self.rate is None else round(self.rate, 3)
        d["eta_s"] = None if self.eta_s is None else round(self.eta_s, 1)
        return d


def _writer_running(db: Path) -> bool:
    """Whether a process holds the folder's write lock now (a build, an add, an index build)."""
    if not (db / LOCK_FILE).exists():
        return False
    try:
        with file_lock(db / LOCK_FILE, timeout=0):
            return False
    except LockTimeoutError:
        return True
    except OSError:  # a read-only folder: nothing can be writing it
        return False


def build_progress(path: str | os.PathLike[str]) -> BuildProgress:
    """How far the build of the database folder ``path`` has got (cheap: the plan, the shard markers, the
    manifest; no vectors are read).

    Args:
        path: The database folder.

    Returns:
        The :class:`BuildProgress`.
    """
    db = Path(path).expanduser()
    partial = db / PARTIAL_DIR
    manifest: Manifest | None
    try:
        manifest = Manifest.load(db)
    except DatabaseError:
        manifest = None
    try:
        settings, n = _read_plan(partial)
    except (FileNotFoundError, DatabaseError):
        settings, n = {}, -1
    if manifest is not None and (n < 0 or manifest.build_plan_digest):
        ready = manifest.counts.items - len(manifest.removed_ids)
        indexed = manifest.index is not None
        phase = "indexing" if not indexed and _writer_running(db) else "ready"
        return BuildProgress(ready=ready, total=ready + manifest.counts.failed,
                             done=manifest.counts.items + manifest.counts.failed, phase=phase, indexed=indexed)
    if n < 0:
        return BuildProgress(ready=0, total=0, done=0, phase="empty")
    shards = _committed(partial, n, int(settings["shard_size"]))
    ready = sum(len(s.ok) for s in _prefix(shards))
    done = sum(len(s.ok) + len(s.failures) for s in shards)
    running = _writer_running(db)
    rate = _rate(shards, partial)
    eta = (n - done) / rate if running and rate else None
    return BuildProgress(ready=ready, total=n, done=done, phase="extracting" if running else "interrupted",
                         rate=rate, eta_s=eta)


def _rate(shards: list[_Shard], partial: Path) -> float | None:
    """Items per second over the most recent committed shards (from their markers' times)."""
    recent = sorted(shards, key=lambda s: s.mtime)[-_RATE_WINDOW:]
    if len(recent) >= 2:
        seconds = recent[-1].mtime - recent[0].mtime
        items = sum(len(s.ok) + len(s.failures) for s in recent[1:])
    elif len(recent) == 1:
        try:
            seconds = recent[0].mtime - (partial / PLAN).stat().st_mtime  # the first shard of a first run
        except OSError:
            return None
        items = len(recent[0].ok) + len(recent[0].failures)
    else:
        return None
    return items / seconds if seconds > 0 and items else None


# --------------------------------------------------------------------------- following
def stamp(path: str | os.PathLike[str]) -> tuple[object, ...]:
    """What changes whenever a database folder commits a change: the manifest's identity (it is replaced
    atomically by every commit) and the ``.partial/`` folder's listing (every committed shard adds a file)."""
    db = Path(path).expanduser()

    def ident(p: Path) -> tuple[int, ...] | None:
        try:
            st = p.stat()
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    partial = db / PARTIAL_DIR
    try:
        entries = len(os.listdir(partial))
    except OSError:
        entries = -1
    return ident(db / MANIFEST), ident(partial), entries


class LiveDatabase:
    """A database folder followed as it changes (new shards, adds, removes, a new index by any process).

    :meth:`get` returns the newest version opened; at most once per ``interval`` seconds it compares the
    folder's :func:`stamp` with the one of that version and, when it moved, opens the new version: at once
    while none is open, otherwise in a background thread while requests go on with the one they have.
    A version that fails to open (a damaged file) is logged once and tried again when the folder changes next;
    the one in use stays.

    Args:
        path: The database folder.
        interval: Seconds between two checks.
        on_open: Called with each newly opened version before it is served (e.g. to give it the embedder
            of the previous one; by default the previous version's embedder is carried over).
        interim_index_at: Rows of an unfinished build from which an interim index is trained in the
            background (:data:`AUTO`: about 50 ms of exact search, :func:`~.interim.default_interim_rows`;
            ``None``: never). See :func:`open_partial`.
        **open_options: Passed to :func:`open_readable` (``weights``, ``mmap_index``, ``backend``,
            ``interim_config``...).
    """

    def __init__(self, path: str | os.PathLike[str], *, interval: float = DEFAULT_INTERVAL,
                 on_open: Callable[[Database], None] | None = None, interim_index_at: int | str | None = AUTO,
                 **open_options: Any) -> None:
        self.path = Path(path).expanduser()
        self.interval = interval
        self.on_open = on_open
        self.open_options = {**open_options, "interim_index_at": interim_index_at}
        self._db: Database | None = None
        self._stamp: tuple[object, ...] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self._reloading: threading.Thread | None = None
        self._failed: tuple[object, ...] | None = None  # the stamp of a version that failed to open
        self.reloads = 0

    def current(self) -> Database | None:
        """The newest version opened (``None`` while nothing is searchable), after a rate-limited check."""
        now = time.monotonic()
        if now - self._checked >= self.interval:
            self._checked = now
            now_stamp = stamp(self.path)
            if now_stamp != self._stamp and now_stamp != self._failed:
                if self._db is None:
                    self._reload()
                else:
                    self._reload_in_background()
        return self._db

    def get(self) -> Database:
        """The newest version opened.

        Raises:
            DatabaseNotReadyError: If a build has begun and committed nothing yet.
            DatabaseNotFoundError: If the folder holds neither a database nor a build.
        """
        db = self.current()
        if db is None:
            self._reload(raise_errors=True)
            db = self._db
            assert db is not None
        return db

    def progress(self) -> BuildProgress:
        """How far the folder's build has got (see :func:`build_progress`)."""
        return build_progress(self.path)

    def wait_reloaded(self, timeout: float | None = None) -> None:
        """Wait for a background reload in progress (for tests and scripts)."""
        thread = self._reloading
        if thread is not None:
            thread.join(timeout)

    def _reload_in_background(self) -> None:
        with self._lock:
            if self._reloading is not None and self._reloading.is_alive():
                return
            self._reloading = threading.Thread(target=self._reload, name="database-reload", daemon=True)
            self._reloading.start()

    def _reload(self, *, raise_errors: bool = False) -> None:
        with self._lock:
            before = stamp(self.path)
            if before == self._stamp and self._db is not None:
                return
            try:
                db = open_readable(self.path, previous=self._db, **self.open_options)
            except DatabaseError as exc:
                if raise_errors:
                    raise
                if not isinstance(exc, DatabaseNotFoundError):  # tried again when the folder changes next
                    self._failed = before
                logger.log(logging.DEBUG if isinstance(exc, DatabaseNotFoundError) else logging.WARNING,
                           "%s cannot be opened now (%s); keeping the version in use", self.path, exc)
                return
            old = self._db
            if old is not None and old._embedder is not None:
                db.embedder = old._embedder
            old_interim = getattr(old, "_interim", None)
            if old_interim is not None and old_interim is not getattr(db, "_interim", None):
                old_interim.close()  # the build finished (its own index replaces it) or started again
            if self.on_open is not None:
                self.on_open(db)
            self._db, self._stamp = db, before
            self.reloads += 1
            logger.info("Following %s: %d items now%s", self.path, len(db),
                        " (its build goes on)" if getattr(db, "partial", False) else "")

