"""What one worker of the service does, without HTTP: validate a request's fields, search, make thumbnails.

:class:`ServiceState` holds the open database and its (serialised) embedder.
Its methods raise the library's errors and those of :mod:`.errors`; the
routes (:mod:`.app`) turn them into HTTP answers with
:func:`~.errors.status_for`.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import faiss
import numpy as np

from .._util.http import AddressPolicy, FetchConfig, check_url, fetch_url
from .._util.parsing import MAX_INT_DIGITS, parse_int, shown
from .._version import __version__
from ..embed import item_kind
from ..errors import DatabaseNotReadyError, ImageLoadError
from ..methods.explain import Explanation, explain, explanation_png
from ..presentation.thumbnails import make_thumbnail
from ..search import Query
from ..store import Database
from ..store.live import LiveDatabase
from .batching import SerializedEmbedder
from .config import MIN_THUMB_SIZE, ServeConfig
from .errors import (
    ImageMissingError,
    InvalidParameterError,
    InvalidQueryError,
    NotAnImageDatabaseError,
    ServiceBusyError,
    UnreadableStoredImageError,
    UnsupportedQueryError,
    URLsDisabledError,
)

__all__ = ["ServiceState", "as_int", "as_bool"]

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def as_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """A request field as an integer: a JSON integer, or text of an optional sign and ASCII digits
    (:func:`~similar_images._util.parsing.parse_int`), the same in every route and content type.

    Raises:
        InvalidParameterError: If it is not an integer, or below ``minimum``.
    """
    result: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        result = value if len(str(abs(value))) <= MAX_INT_DIGITS else None
    elif isinstance(value, float) and value.is_integer() and abs(value) < 10**MAX_INT_DIGITS:
        result = int(value)
    elif isinstance(value, str):
        result = parse_int(value)
    if result is None:
        raise InvalidParameterError(f"{name} must be an integer (ASCII digits, at most {MAX_INT_DIGITS}), "
                                    f"got {shown(value)}")
    if minimum is not None and result < minimum:
        raise InvalidParameterError(f"{name} must be at least {minimum}, got {result}")
    return result


def as_bool(value: object, name: str) -> bool:
    """A request field as a boolean (``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``).

    Raises:
        InvalidParameterError: For anything else.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        return False
    raise InvalidParameterError(f"{name} must be true or false, got {shown(value)}")


def _indexed_rows(db: Database | None) -> int:
    """Rows an index answers for: all with the database's own index, the first ones of an unfinished build once
    its reader's interim index is trained (the rest are searched exactly), else 0."""
    if db is None:
        return 0
    if db.index is not None:
        return db.ntotal
    part = db.indexed_part
    return part.rows if part is not None else 0


@dataclass
class ServiceState:
    """What one worker holds: the database it follows (:class:`~similar_images.store.live.LiveDatabase`: new
    shards, adds, removes and index builds by any process show without a restart) and its (serialised)
    embedder."""

    config: ServeConfig
    live: LiveDatabase | None = None
    embedder: SerializedEmbedder | None = None
    started_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    pid: int = field(default_factory=os.getpid)
    explain_lock: threading.Lock = field(default_factory=threading.Lock)
    fetch_pool: ThreadPoolExecutor | None = None
    fetch_slots: threading.BoundedSemaphore | None = None

    def __post_init__(self) -> None:
        if self.fetch_pool is None:
            self.fetch_pool = ThreadPoolExecutor(max_workers=self.config.max_fetches, thread_name_prefix="url-fetch")
            self.fetch_slots = threading.BoundedSemaphore(self.config.max_fetches)

    @classmethod
    def load(cls, config: ServeConfig) -> ServiceState:
        """Open the database, or what its build has committed so far (and, for an image database, load and warm
        up the model); a build that has committed nothing yet is followed until it does."""
        t0 = time.perf_counter()
        state = cls(config=config)
        state.live = LiveDatabase(config.db, on_open=state._adopt, interval=config.refresh_interval,
                                  weights=config.weights, backend=config.backend, precision=config.precision,
                                  allow_backend_mismatch=config.allow_backend_mismatch)
        try:
            db: Database | None = state.live.get()
        except DatabaseNotReadyError:
            db = None
            logger.info("Worker %d follows %s: no items are ready yet", state.pid, config.db)
        if state.embedder is not None and config.warmup:
            w, h = state.embedder.spec.input_size
            state.embedder.embed_arrays(np.full((1, h, w, 3), 128, dtype=np.uint8))
        state.load_seconds = time.perf_counter() - t0
        logger.info("Worker %d serves %r (loaded in %.1f s)", state.pid, db, state.load_seconds)
        return state

    def _adopt(self, db: Database) -> None:
        """Give a newly opened version of the database this worker's one serialised embedder."""
        if not item_kind(db.kind).files:
            return
        if self.embedder is None:
            self.embedder = SerializedEmbedder(db.embedder, batch=self.config.batch_queries,
                                               max_batch=self.config.max_batch)
        db.embedder = self.embedder

    @property
    def db(self) -> Database:
        """The newest version of the database (checked for changes at most once per ``refresh_interval``).

        Raises:
            DatabaseNotReadyError: While its build has committed nothing.
        """
        assert self.live is not None
        return self.live.get()

    @property
    def fetch_config(self) -> FetchConfig:
        """Limits of URL queries (internal addresses only with ``allow_private_urls``)."""
        return FetchConfig(timeout=self.config.fetch_timeout, deadline=self.config.fetch_deadline,
                           max_bytes=self.config.max_upload_bytes,
                           policy=AddressPolicy(allow_private=self.config.allow_private_urls))

    def health(self) -> dict[str, object]:
        assert self.live is not None
        db = self.live.current()
        index = db.manifest.index if db is not None else None
        progress = self.live.progress()
        return {
            "status": "ok",
            "pid": self.pid,
            "version": __version__,
            "database": str(self.live.path),
            "kind": db.kind if db is not None else None,
            "model": db.model_name if db is not None else None,
            "dim": db.dim if db is not None else None,
            "items": len(db) if db is not None else 0,
            "index": index.factory if index else None,
            "indexed_rows": _indexed_rows(db),
            "build": progress.to_dict(),
            "uptime_s": round(time.time() - self.started_at, 3),
            "load_s": round(self.load_seconds, 3),
            "model_calls": self.embedder.model_calls if self.embedder is not None else 0,
            "limits": {"max_upload_bytes": self.config.max_upload_bytes, "max_k": self.config.max_k,
                       "fetch_timeout_s": self.config.fetch_timeout, "fetch_deadline_s": self.config.fetch_deadline,
                       "max_fetches": self.config.max_fetches, "upload_timeout_s": self.config.upload_timeout,
                       "urls": self.config.allow_urls, "private_urls": self.config.allow_private_urls},
        }

    # ------------------------------------------------------------ validation
    def check_k(self, k: object) -> int:
        if k is None:
            return self.config.default_k
        value = as_int(k, "k")
        if not 1 <= value <= self.config.max_k:
            raise InvalidParameterError(f"k must be an integer from 1 to {self.config.max_k}, got {shown(k)}")
        return value

    def require_images(self) -> None:
        if not item_kind(self.db.kind).files:
            raise UnsupportedQueryError(f"This database holds {self.db.kind}s, not images: search it by id")

    def fetch(self, url: object) -> bytes:
        """Download a query image.

        Raises:
            InvalidParameterError: If ``url`` is not a non-empty string.
            URLsDisabledError: If URL queries are off.
            BadURLError: If the URL is malformed or names a refused address.
            FetchError: If it cannot be fetched.
        """
        if not isinstance(url, str) or not url.strip():
            raise InvalidParameterError("url must be a non-empty string")
        if not self.config.allow_urls:
            raise URLsDisabledError("URL queries are disabled on this server; upload the image instead")
        config = self.fetch_config
        url = check_url(url, policy=config.policy)
        self.require_images()
        return fetch_url(url, config)

    def start_fetch(self, url: object) -> Future[bytes]:
        """Fetch a query image in the fetch threads (see :attr:`ServeConfig.max_fetches`), not the caller's.

        Returns:
            A future of the body bytes (it raises what :meth:`fetch` raises).

        Raises:
            ServiceBusyError: If ``max_fetches`` fetches are already running.
        """
        assert self.fetch_pool is not None and self.fetch_slots is not None
        if not self.fetch_slots.acquire(blocking=False):
            raise ServiceBusyError(f"{self.config.max_fetches} URL queries are being fetched already; try again "
                                   "shortly, or upload the image")
        try:
            future = self.fetch_pool.submit(self.fetch, url)
        except BaseException:
            self.fetch_slots.release()
            raise
        future.add_done_callback(lambda _: self.fetch_slots.release())  # type: ignore[union-attr]
        return future

    def close(self) -> None:
        """Stop the fetch threads (fetches in progress end at their deadline)."""
        if self.fetch_pool is not None:
            self.fetch_pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- search
    def search(self, query: Query, k: int, query_info: dict[str, object], *, exact: bool = False,
               nprobe: int | None = None, ef_search: int | None = None) -> dict[str, object]:
        """Run one search; ``query`` is an id (already checked) or image bytes."""
        t0 = time.perf_counter()
        if self.config.faiss_threads:
            # OpenMP's thread count is a per-thread setting: set it in the thread that searches.
            # Otherwise each pool thread gets its own team of spinning OpenMP threads, and on a
            # busy machine a 0.1 ms search takes 15-20 ms.
            faiss.omp_set_num_threads(self.config.faiss_threads)
        db = self.db  # one version for the whole request
        if isinstance(query, (bytes, bytearray)):
            self.require_images()
        results = db.search(query, k, exact=exact, nprobe=nprobe, ef_search=ef_search)
        out = results.to_dict()
        if item_kind(db.kind).files:
            for r in cast("list[dict[str, object]]", out["results"]):
                r["image_url"] = f"/images/{r['id']}"
                r["thumb_url"] = f"/images/{r['id']}?size=thumb"
        return {"query": query_info, "k": k, "count": len(results), "model": db.model_name, **out,
                "elapsed_ms": round((time.perf_counter() - t0) * 1e3, 3)}

    def search_request(self, *, item_id: object = None, url: object = None, data: bytes | None = None,
                       filename: str | None = None, k: object = None, exact: object = False, nprobe: object = None,
                       ef_search: object = None, fetched: bytes | None = None) -> dict[str, object]:
        """Validate one request's fields (exactly one of id, url, data) and search (blocking).

        ``fetched`` is the body of ``url`` when the caller fetched it already (see :meth:`start_fetch`).
        """
        t0 = time.perf_counter()
        given = [name for name, v in (("file", data), ("url", url), ("id", item_id)) if v is not None]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise InvalidQueryError(f"Give exactly one query: an uploaded image ('file'), a 'url', or an 'id' "
                                    f"(got {what})")
        k = self.check_k(k)
        exact_b = as_bool(exact, "exact")
        nprobe_i = None if nprobe is None else as_int(nprobe, "nprobe", minimum=1)
        ef_i = None if ef_search is None else as_int(ef_search, "ef_search", minimum=1)
        query: Query
        if item_id is not None:
            query = self.db.check_id(as_int(item_id, "id"))
            info: dict[str, object] = {"type": "id", "id": query}
        elif url is not None:
            query = fetched if fetched is not None else self.fetch(url)
            info = {"type": "url", "url": str(url).strip(), "bytes": len(query)}
        else:
            assert data is not None
            if not data:
                raise ImageLoadError("the uploaded file is empty (0 bytes)")
            query = data
            info = {"type": "upload", "bytes": len(data), **({"filename": filename} if filename else {})}
        out = self.search(query, k, info, exact=exact_b, nprobe=nprobe_i, ef_search=ef_i)
        out["elapsed_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return out

    # ---------------------------------------------------------------- explanations
    def check_explain(self, *, query_id: object = None, url: object = None, item_id: object = None,
                      method: str = "auto") -> None:
        """Validate an explanation request's fields (before its URL, if any, is fetched).

        Raises:
            InvalidQueryError: Without exactly one query, or without ``item_id``.
            InvalidParameterError: For an unknown method or a malformed id.
        """
        given = [name for name, v in (("query_id", query_id), ("url", url)) if v is not None]
        if len(given) != 1:
            raise InvalidQueryError("Give exactly one query: 'query_id' (a database id) or 'url'")
        if item_id is None:
            raise InvalidQueryError("Give 'id': the database id of the result to explain")
        if method not in ("auto", "exact", "gradient"):
            raise InvalidParameterError(f"method must be auto, exact or gradient, got {shown(method)}")
        as_int(item_id, "id")
        if query_id is not None:
            as_int(query_id, "query_id")

    def explain(self, *, query_id: object = None, url: object = None, item_id: object = None,
                method: str = "auto", fetched: bytes | None = None) -> Explanation:
        """Why database item ``item_id`` is similar to the query (a database id or an image URL).

        ``fetched`` is the body of ``url`` when the caller fetched it already (see :meth:`start_fetch`).
        """
        self.check_explain(query_id=query_id, url=url, item_id=item_id, method=method)
        query: Query
        if query_id is not None:
            query = self.db.check_id(as_int(query_id, "query_id"))
        else:
            query = fetched if fetched is not None else self.fetch(url)
        lock = self.embedder.model_lock if self.embedder is not None else self.explain_lock
        with lock:  # one model, shared with the searches' embedder
            return explain(self.db, query, self.db.check_id(as_int(item_id, "id")), method=method)  # type: ignore[arg-type]

    @functools.lru_cache(maxsize=256)  # noqa: B019  (one state per worker, lives as long as the worker)
    def explanation_png(self, query_id: int, item_id: int, method: str, height: int) -> bytes:
        """The PNG of an explanation between two database items (cached: repeated views cost nothing)."""
        return explanation_png(self.explain(query_id=query_id, item_id=item_id, method=method), height=height)

    # ---------------------------------------------------------------- images
    def image_path(self, item_id: int) -> Path:
        db = self.db
        if not item_kind(db.kind).files:
            raise NotAnImageDatabaseError(f"This database holds {db.kind}s, not images")
        path = Path(db.items[db.check_id(item_id)])
        if not path.is_file():
            raise ImageMissingError(f"The image file of id {item_id} is no longer on the server")
        return path

    def thumb_size(self, size: str) -> int:
        s = size.strip().lower()
        if s == "thumb":
            return self.config.thumb_size
        n = parse_int(s)
        if n is None or not MIN_THUMB_SIZE <= n <= self.config.max_thumb_size:
            raise InvalidParameterError(f"size must be 'thumb', 'original' or an integer from {MIN_THUMB_SIZE} to "
                                   f"{self.config.max_thumb_size}, got {shown(size)}")
        return n

    @functools.lru_cache(maxsize=512)  # noqa: B019  (one state per worker, lives as long as the worker)
    def thumbnail(self, item_id: int, size: int) -> bytes:
        """JPEG thumbnail of a stored image, at most ``size`` pixels on its longest side."""
        path = self.image_path(item_id)
        try:
            return make_thumbnail(path, size, quality=85)
        except ImageLoadError as exc:
            raise UnreadableStoredImageError(f"The stored image of id {item_id} cannot be decoded: {exc}") from exc

    def __hash__(self) -> int:  # for lru_cache on methods
        return id(self)
