"""HTTP search service: a FastAPI application over one database, read-only.

Endpoints (all answers are JSON except the images):

* ``GET /search?id=N&k=8`` (or ``?url=...``): search with a stored item or an image URL.
* ``POST /search``: search with an uploaded image (multipart field ``file``,
  or a raw ``image/*`` body), a URL (form field or JSON ``{"url": ..., "k": ...}``)
  or an id (``{"id": N}``).
* ``GET /images/{id}``: the stored image; ``?size=thumb`` or ``?size=N`` for a
  JPEG thumbnail made on the server.
* ``GET /health``: status of this worker (its process id, the database, the model).
* ``GET /docs``: the API documentation, one HTML page rendered on the server
  from the OpenAPI description by :func:`~similar_images.api_docs.render_api_docs`
  (no script or style from a CDN, so it works offline; FastAPI's Swagger UI
  and ReDoc pages are switched off).
* ``GET /openapi.json``: the machine-readable OpenAPI description.

Bad input always gets a 4xx answer of the form
``{"error": CODE, "detail": MESSAGE, "status": STATUS}``: 400 (bad URL or
request), 404 (unknown id), 413 (body over the size limit), 415 (not an image),
422 (bad parameter such as ``k``), 502 (the URL could not be fetched).

The application is made by :func:`create_app`. Under ``uvicorn --workers N``
each worker calls the factory with no argument, so the settings travel in
environment variables (see :meth:`ServeConfig.to_env`); each worker opens the
database and loads the model once, in the application's lifespan. Searches run
in a thread pool; model calls are serialised by a lock, and queries that wait
for the model meanwhile are embedded together in one batch.

FastAPI is imported inside :func:`create_app`, so importing this module is cheap.
"""

import contextlib
import functools
import io
import json
import logging
import mimetypes
import os
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .api_docs import render_api_docs
from .errors import ImageLoadError, QueryError
from .fetch import FetchConfig, fetch_url

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .database import Database

__all__ = ["ServeConfig", "ServiceState", "ApiError", "create_app", "ENV_PREFIX", "APP_FACTORY"]

logger = logging.getLogger(__name__)

#: Prefix of the environment variables that carry a :class:`ServeConfig` to the workers.
ENV_PREFIX = "SIMILAR_IMAGES_SERVE_"

#: Import string of the application factory, for ``uvicorn --factory``.
APP_FACTORY = "similar_images.server:create_app"

MAX_URL_LENGTH = 2048
MIN_THUMB_SIZE = 16
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class ServeConfig:
    """Settings of the search service.

    Attributes:
        db: The database folder (opened read-only).
        weights: Weights to embed queries with, overriding the database's
            (``"imagenet"``, ``"random"`` or a file path).
        max_upload_bytes: Largest accepted request body (and fetched URL body).
        fetch_timeout: Seconds allowed for connecting to a query URL and for each read.
        allow_urls: Whether URL queries are accepted (the server fetches any
            http(s) address a client names, internal ones included).
        max_k: Largest number of results a client may ask for.
        default_k: Number of results when the client does not say (at most ``max_k``).
        thumb_size: Longest side of ``?size=thumb`` thumbnails.
        max_thumb_size: Largest ``?size=N`` allowed.
        batch_queries: Embed queries that wait for the model together in one batch.
        max_batch: Most queries embedded in one model call.
        warmup: Build the model and run it once at startup (otherwise on the first query).
        faiss_threads: OpenMP threads of each Faiss search; ``0`` keeps Faiss' default (all
            cores). A single query gains nothing from more threads, and with several
            request threads each gets its own team of spinning OpenMP threads, which on
            a busy machine turns a 0.1 ms search into 15-20 ms.
    """

    db: Path
    weights: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    fetch_timeout: float = 10.0
    allow_urls: bool = True
    max_k: int = 1000
    default_k: int = 8
    thumb_size: int = 256
    max_thumb_size: int = 1024
    batch_queries: bool = True
    max_batch: int = 16
    warmup: bool = True
    faiss_threads: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "db", Path(self.db).expanduser())
        if self.max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
        if self.fetch_timeout <= 0:
            raise ValueError(f"fetch_timeout must be positive, got {self.fetch_timeout}")
        if not 1 <= self.max_k <= 10_000:
            raise ValueError(f"max_k must be from 1 to 10000, got {self.max_k}")
        if self.default_k < 1:
            raise ValueError(f"default_k must be at least 1, got {self.default_k}")
        object.__setattr__(self, "default_k", min(self.default_k, self.max_k))
        if not MIN_THUMB_SIZE <= self.thumb_size <= self.max_thumb_size:
            raise ValueError(f"thumb_size must be from {MIN_THUMB_SIZE} to max_thumb_size ({self.max_thumb_size}), "
                             f"got {self.thumb_size}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.faiss_threads < 0:
            raise ValueError(f"faiss_threads must be 0 (Faiss' default) or more, got {self.faiss_threads}")

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables (``SIMILAR_IMAGES_SERVE_DB``, ...); ``None`` values are left out."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool):
                value = "1" if value else "0"
            elif f.name == "db":
                value = Path(value).resolve()
            env[ENV_PREFIX + f.name.upper()] = str(value)
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServeConfig":
        """Read the settings written by :meth:`to_env`.

        Raises:
            ValueError: If ``SIMILAR_IMAGES_SERVE_DB`` is missing or a value does not parse.
        """
        environ = os.environ if environ is None else environ
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            default = f.default
            try:
                if isinstance(default, bool):
                    if raw.strip().lower() not in _TRUE | _FALSE:
                        raise ValueError(f"expected 1 or 0, got {raw!r}")
                    kwargs[f.name] = raw.strip().lower() in _TRUE
                elif isinstance(default, int):
                    kwargs[f.name] = int(raw)
                elif isinstance(default, float):
                    kwargs[f.name] = float(raw)
                else:
                    kwargs[f.name] = raw
            except ValueError as exc:
                raise ValueError(f"Environment variable {ENV_PREFIX}{f.name.upper()}: {exc}") from exc
        if "db" not in kwargs:
            raise ValueError(
                f"{ENV_PREFIX}DB is not set: start the service with 'similar-images serve DB', "
                f"or set {ENV_PREFIX}DB to a database folder before running uvicorn --factory {APP_FACTORY}"
            )
        return cls(**kwargs)


class ApiError(Exception):
    """An error answered to the client as ``{"error": code, "detail": message, "status": status}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _Pending:
    __slots__ = ("arrays", "result", "error", "done")

    def __init__(self, arrays: np.ndarray) -> None:
        self.arrays = arrays
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class SerializedEmbedder:
    """Wraps an :class:`~similar_images.features.ImageEmbedder` for use from many threads.

    Images are decoded in the calling threads, in parallel; the model runs
    under a lock. With ``batch=True``, the thread that gets the lock embeds
    every query queued meanwhile (up to ``max_batch``) in one model call.
    Other attributes are those of the wrapped embedder.
    """

    def __init__(self, inner: Any, *, batch: bool = True, max_batch: int = 16) -> None:
        self._inner = inner
        self._batch = batch
        self._max_batch = max_batch
        self._model_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self.model_calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed(self, sources: Sequence[Any]) -> np.ndarray:
        """Decode and embed images; raises :class:`ImageLoadError` on the first bad one."""
        arrays = [self._inner.prepare(s) for s in sources]
        if not arrays:
            return np.zeros((0, self._inner.dim), dtype=np.float32)
        return self.embed_arrays(np.stack(arrays))

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed a uint8 ``(n, h, w, 3)`` batch, serialised (and batched) with other threads."""
        if not self._batch:
            with self._model_lock:
                self.model_calls += 1
                return self._inner.embed_arrays(batch)
        item = _Pending(batch)
        with self._queue_lock:
            self._queue.append(item)
        while not item.done:
            with self._model_lock:
                if item.done:
                    break
                with self._queue_lock:
                    group: list[_Pending] = []
                    n = 0
                    while self._queue and (not group or n + len(self._queue[0].arrays) <= self._max_batch):
                        group.append(self._queue.pop(0))
                        n += len(group[-1].arrays)
                try:
                    self.model_calls += 1
                    out = self._inner.embed_arrays(np.concatenate([p.arrays for p in group]))
                    start = 0
                    for p in group:
                        p.result = out[start:start + len(p.arrays)]
                        start += len(p.arrays)
                except BaseException as exc:  # every waiting query gets the error
                    for p in group:
                        p.error = exc
                finally:
                    for p in group:
                        p.done = True
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result


@dataclass
class ServiceState:
    """What one worker holds: the open database and its (serialised) embedder."""

    config: ServeConfig
    db: "Database"
    embedder: SerializedEmbedder | None
    started_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def load(cls, config: ServeConfig) -> "ServiceState":
        """Open the database (and, for an image database, load and warm up the model)."""
        from .database import Database  # noqa: PLC0415

        t0 = time.perf_counter()
        db = Database.open(config.db, weights=config.weights)
        embedder = None
        if db.kind == "image":
            embedder = SerializedEmbedder(db.embedder, batch=config.batch_queries, max_batch=config.max_batch)
            db.embedder = embedder
            if config.warmup:
                w, h = embedder.spec.input_size
                embedder.embed_arrays(np.full((1, h, w, 3), 128, dtype=np.uint8))
        state = cls(config=config, db=db, embedder=embedder, load_seconds=time.perf_counter() - t0)
        logger.info("Worker %d serves %r (loaded in %.1f s)", state.pid, db, state.load_seconds)
        return state

    def health(self) -> dict[str, Any]:
        db = self.db
        index = db.manifest.get("index")
        return {
            "status": "ok",
            "pid": self.pid,
            "version": __version__,
            "database": str(db.path),
            "kind": db.kind,
            "model": db.model_name,
            "dim": db.dim,
            "items": len(db),
            "index": index["factory"] if index else None,
            "uptime_s": round(time.time() - self.started_at, 3),
            "load_s": round(self.load_seconds, 3),
            "model_calls": self.embedder.model_calls if self.embedder is not None else 0,
            "limits": {"max_upload_bytes": self.config.max_upload_bytes, "max_k": self.config.max_k,
                       "fetch_timeout_s": self.config.fetch_timeout, "urls": self.config.allow_urls},
        }

    # ------------------------------------------------------------ validation
    def check_id(self, item_id: Any) -> int:
        try:
            return self.db.check_id(item_id)
        except QueryError as exc:
            raise ApiError(404, "unknown_id", str(exc)) from exc

    def check_k(self, k: Any) -> int:
        if k is None:
            return self.config.default_k
        value = _as_int(k, "k")
        if not 1 <= value <= self.config.max_k:
            raise ApiError(422, "invalid_parameter", f"k must be an integer from 1 to {self.config.max_k}, got {k!r}")
        return value

    def require_images(self) -> None:
        if self.db.kind != "image":
            raise ApiError(400, "unsupported_query",
                           f"This database holds {self.db.kind}s, not images: search it by id")

    def fetch(self, url: Any) -> bytes:
        """Download a query image, turning every failure into a 4xx/502 :class:`ApiError`."""
        if not isinstance(url, str) or not url.strip():
            raise ApiError(422, "invalid_parameter", "url must be a non-empty string")
        if not self.config.allow_urls:
            raise ApiError(403, "urls_disabled", "URL queries are disabled on this server; upload the image instead")
        url = url.strip()
        if len(url) > MAX_URL_LENGTH:
            raise ApiError(400, "bad_url", f"The URL is longer than {MAX_URL_LENGTH} characters")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise ApiError(400, "bad_url", f"Only http:// and https:// URLs are allowed, got "
                                           f"{(parts.scheme + '://') if parts.scheme else 'no scheme'} in {url!r}")
        if not parts.hostname:
            raise ApiError(400, "bad_url", f"The URL has no host name: {url!r}")
        self.require_images()
        try:
            limits = FetchConfig(timeout=self.config.fetch_timeout, max_bytes=self.config.max_upload_bytes)
            return fetch_url(url, limits)
        except QueryError as exc:
            raise ApiError(502, "url_fetch_failed", f"Could not fetch the query image: {exc}") from exc

    # ---------------------------------------------------------------- search
    def search(self, query: Any, k: int, query_info: dict[str, Any], *, exact: bool = False,
               nprobe: int | None = None, ef_search: int | None = None) -> dict[str, Any]:
        """Run one search; ``query`` is an id (already checked) or image bytes."""
        t0 = time.perf_counter()
        if self.config.faiss_threads:
            # OpenMP's thread count is a per-thread setting: set it in the thread that searches.
            # Otherwise each pool thread gets its own team of spinning OpenMP threads, and on a
            # busy machine a 0.1 ms search takes 15-20 ms.
            _faiss().omp_set_num_threads(self.config.faiss_threads)
        if isinstance(query, (bytes, bytearray)):
            self.require_images()
        try:
            results = self.db.search(query, k, exact=exact, nprobe=nprobe, ef_search=ef_search)
        except ImageLoadError as exc:
            raise ApiError(415, "not_an_image", f"The query is not a readable image: {exc}") from exc
        except QueryError as exc:
            raise ApiError(422, "invalid_parameter", str(exc)) from exc
        out = results.to_dict()
        if self.db.kind == "image":
            for r in out["results"]:
                r["image_url"] = f"/images/{r['id']}"
                r["thumb_url"] = f"/images/{r['id']}?size=thumb"
        return {"query": query_info, "k": k, "count": len(results), "model": self.db.model_name, **out,
                "elapsed_ms": round((time.perf_counter() - t0) * 1e3, 3)}

    def search_request(self, *, item_id: Any = None, url: Any = None, data: bytes | None = None,
                       filename: str | None = None, k: Any = None, exact: Any = False, nprobe: Any = None,
                       ef_search: Any = None) -> dict[str, Any]:
        """Validate one request's fields (exactly one of id, url, data) and search (blocking)."""
        t0 = time.perf_counter()
        given = [name for name, v in (("file", data), ("url", url), ("id", item_id)) if v is not None]
        if len(given) != 1:
            what = "none" if not given else " and ".join(given)
            raise ApiError(422, "invalid_query",
                           f"Give exactly one query: an uploaded image ('file'), a 'url', or an 'id' (got {what})")
        k = self.check_k(k)
        exact_b = _as_bool(exact, "exact")
        nprobe_i = None if nprobe is None else _as_int(nprobe, "nprobe", minimum=1)
        ef_i = None if ef_search is None else _as_int(ef_search, "ef_search", minimum=1)
        query: Any
        if item_id is not None:
            query = self.check_id(_as_int(item_id, "id"))
            info: dict[str, Any] = {"type": "id", "id": query}
        elif url is not None:
            query = self.fetch(url)
            info = {"type": "url", "url": url.strip(), "bytes": len(query)}
        else:
            assert data is not None
            if not data:
                raise ApiError(415, "not_an_image", "The uploaded file is empty (0 bytes)")
            query = data
            info = {"type": "upload", "bytes": len(data), **({"filename": filename} if filename else {})}
        out = self.search(query, k, info, exact=exact_b, nprobe=nprobe_i, ef_search=ef_i)
        out["elapsed_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return out

    # ---------------------------------------------------------------- images
    def image_path(self, item_id: int) -> Path:
        if self.db.kind != "image":
            raise ApiError(404, "not_an_image_database", f"This database holds {self.db.kind}s, not images")
        path = Path(self.db.items[self.check_id(item_id)])
        if not path.is_file():
            raise ApiError(404, "image_missing", f"The image file of id {item_id} is no longer on the server")
        return path

    def thumb_size(self, size: str) -> int:
        s = size.strip().lower()
        if s == "thumb":
            return self.config.thumb_size
        try:
            n = int(s)
        except ValueError:
            n = -1
        if not MIN_THUMB_SIZE <= n <= self.config.max_thumb_size:
            raise ApiError(422, "invalid_parameter",
                           f"size must be 'thumb', 'original' or an integer from {MIN_THUMB_SIZE} to "
                           f"{self.config.max_thumb_size}, got {size!r}")
        return n

    @functools.lru_cache(maxsize=512)  # noqa: B019  (one state per worker, lives as long as the worker)
    def thumbnail(self, item_id: int, size: int) -> bytes:
        """JPEG thumbnail of a stored image, at most ``size`` pixels on its longest side."""
        from PIL import Image  # noqa: PLC0415

        from .images import load_image  # noqa: PLC0415

        path = self.image_path(item_id)
        try:
            img = load_image(path, draft_size=(size, size))
        except ImageLoadError as exc:
            raise ApiError(500, "unreadable_image",
                           f"The stored image of id {item_id} cannot be decoded: {exc}") from exc
        img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85, optimize=True)
        return buf.getvalue()

    def __hash__(self) -> int:  # for lru_cache on methods
        return id(self)


def _faiss() -> Any:
    import faiss  # noqa: PLC0415

    return faiss


def _as_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ApiError(422, "invalid_parameter", f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        result = int(value.strip())
    else:
        raise ApiError(422, "invalid_parameter", f"{name} must be an integer, got {value!r}")
    if minimum is not None and result < minimum:
        raise ApiError(422, "invalid_parameter", f"{name} must be at least {minimum}, got {result}")
    return result


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if value is None:
        return False
    raise ApiError(422, "invalid_parameter", f"{name} must be true or false, got {value!r}")


def _error_body(status: int, code: str, detail: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail, "status": status}


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
               415: "unsupported_media_type", 422: "invalid_parameter"}

_JSON_FIELDS = {"url", "id", "k", "exact", "nprobe", "ef_search"}
_FORM_FIELDS = _JSON_FIELDS | {"file"}

_POST_SEARCH_DOC = """Search with an uploaded image, an image URL, or a database id.

Send one of:

* `multipart/form-data` with a `file` field (the image), or a `url` or `id` field; optional `k`, `exact`, `nprobe`.
* `application/json`: `{"url": "https://...", "k": 8}` or `{"id": 3, "k": 8}`.
* a raw body with `Content-Type: image/jpeg` (or any `image/*`); `k` etc. in the query string.

Bodies over the server's size limit are refused with 413 before they are read.
"""

_SEARCH_OPTIONS_SCHEMA = {
    "k": {"type": "integer", "minimum": 1, "description": "Number of results (default 8)."},
    "exact": {"type": "boolean", "description": "Exact search over all vectors instead of the index."},
    "nprobe": {"type": "integer", "minimum": 1, "description": "IVF lists to visit."},
    "ef_search": {"type": "integer", "minimum": 1, "description": "HNSW search depth."},
}

_POST_SEARCH_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": {
                "file": {"type": "string", "format": "binary", "description": "The query image."},
                "url": {"type": "string", "description": "An http(s) address of the query image."},
                "id": {"type": "integer", "description": "A database id."},
                **_SEARCH_OPTIONS_SCHEMA}}},
            "application/json": {"schema": {"type": "object", "additionalProperties": False, "properties": {
                "url": {"type": "string", "description": "An http(s) address of the query image."},
                "id": {"type": "integer", "description": "A database id."},
                **_SEARCH_OPTIONS_SCHEMA}},
                "example": {"url": "https://example.com/cat.jpg", "k": 8}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


#: The /docs page needs nothing but its own inline style sheet; the browser is told so.
_DOCS_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; "
                                            "form-action 'none'; frame-ancestors 'none'"}


def create_app(config: "ServeConfig | None" = None) -> "FastAPI":
    """Make the FastAPI application.

    Args:
        config: The settings; ``None`` reads them from the environment
            (:meth:`ServeConfig.from_env`), as uvicorn's ``--factory`` workers do.

    Returns:
        The application. The database and model are loaded when it starts
        (its lifespan), once per worker process.

    Raises:
        ValueError: If ``config`` is ``None`` and the environment holds no valid settings.
    """
    from fastapi import FastAPI, Query, Request  # noqa: PLC0415
    from fastapi.concurrency import run_in_threadpool  # noqa: PLC0415
    from fastapi.exceptions import RequestValidationError  # noqa: PLC0415
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response  # noqa: PLC0415
    from pydantic import BaseModel  # noqa: PLC0415
    from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: PLC0415
    from starlette.requests import ClientDisconnect  # noqa: PLC0415

    cfg = config if config is not None else ServeConfig.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = await run_in_threadpool(ServiceState.load, cfg)
        yield

    app = FastAPI(
        title="similar-images search service",
        version=__version__,
        description=("Find the images of a similar-images database most similar to a query image "
                     "(upload, URL, or database id). Scores are cosine similarities: 1.0 is identical."),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN: /docs below works offline
        redoc_url=None,
    )

    class MatchOut(BaseModel):
        rank: int
        id: int
        score: float
        path: str
        image_url: str
        thumb_url: str

    class SearchOut(BaseModel):
        query: dict[str, Any]
        k: int
        count: int
        model: str
        query_id: int | None
        search_ms: float
        total_ms: float
        params: dict[str, Any]
        results: list[MatchOut]
        elapsed_ms: float

    class ErrorOut(BaseModel):
        error: str
        detail: Any
        status: int

    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorOut, "description": desc} for code, desc in (
            (400, "Bad request or bad URL"), (404, "Unknown id"), (413, "Body too large"),
            (415, "Not an image"), (422, "Invalid parameter"), (502, "The URL could not be fetched"))
    }

    def service(request: Request) -> ServiceState:
        return request.app.state.service  # type: ignore[no-any-return]

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc.message)
        return JSONResponse(_error_body(exc.status, exc.code, exc.message), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body"))
            parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')} (got {err.get('input')!r})")
        body = _error_body(422, "invalid_parameter", "; ".join(parts) or "Invalid request")
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return JSONResponse(_error_body(exc.status_code, code, exc.detail), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("Unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(_error_body(500, "internal_error", "Internal server error; see the server log"),
                            status_code=500)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs(request: Request) -> HTMLResponse:
        openapi_url = request.scope.get("root_path", "") + (app.openapi_url or "/openapi.json")
        return HTMLResponse(render_api_docs(app.openapi(), openapi_url=openapi_url), headers=_DOCS_HEADERS)

    @app.get("/health", summary="Status of the worker that answers")
    def health(request: Request) -> dict[str, Any]:
        """The worker's process id, the database (items, model, index) and the server's limits."""
        return service(request).health()

    @app.get("/search", response_model=SearchOut, responses=error_responses,
             summary="Search with a database id or an image URL")
    def search_get(
        request: Request,
        id: int | None = Query(None, description="A database id: its stored vector is the query."),  # noqa: A002
        url: str | None = Query(None, description="An http(s) address of the query image."),
        k: int = Query(cfg.default_k, ge=1, le=cfg.max_k, description="Number of results."),
        exact: bool = Query(False, description="Exact search over all vectors instead of the index."),
        nprobe: int | None = Query(None, ge=1, description="IVF lists to visit."),
        ef_search: int | None = Query(None, ge=1, description="HNSW search depth."),
    ) -> JSONResponse:
        """Give exactly one of `id` and `url`. Results are best first, with cosine similarity scores."""
        out = service(request).search_request(item_id=id, url=url, k=k, exact=exact, nprobe=nprobe,
                                              ef_search=ef_search)
        return JSONResponse(out)

    async def _read_body(request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ApiError(400, "bad_request", f"Invalid Content-Length header {length!r}")
            if int(length) > limit:
                raise ApiError(413, "too_large", f"The request body ({int(length):,} bytes) is over the limit of "
                                                 f"{limit:,} bytes; send a smaller image")
        buf = bytearray()
        try:
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > limit:
                    raise ApiError(413, "too_large", f"The request body is over the limit of {limit:,} bytes; "
                                                     "send a smaller image")
        except ClientDisconnect as exc:
            raise ApiError(400, "bad_request", "The client disconnected before sending the whole body") from exc
        return bytes(buf)

    @app.post("/search", response_model=SearchOut, responses=error_responses, openapi_extra=_POST_SEARCH_OPENAPI,
              summary="Search with an uploaded image, an image URL, or a database id", description=_POST_SEARCH_DOC)
    async def search_post(request: Request) -> JSONResponse:
        state = service(request)
        mime = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        body = await _read_body(request, state.config.max_upload_bytes)
        fields_: dict[str, Any] = {k: v for k, v in request.query_params.items() if k in _JSON_FIELDS}
        data: bytes | None = None
        filename: str | None = None
        if mime == "application/json":
            try:
                obj = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ApiError(400, "bad_request", f"The body is not valid JSON: {exc}") from exc
            if not isinstance(obj, dict):
                raise ApiError(422, "invalid_query", 'The JSON body must be an object such as {"url": "...", "k": 8}')
            unknown = sorted(set(obj) - _JSON_FIELDS)
            if unknown:
                raise ApiError(422, "invalid_query", f"Unknown field(s) {', '.join(unknown)}; expected some of "
                                                     f"{', '.join(sorted(_JSON_FIELDS))} (upload files as multipart)")
            fields_.update({key: v for key, v in obj.items() if v is not None})
        elif mime in ("multipart/form-data", "application/x-www-form-urlencoded"):
            async def replay() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            form = await Request(request.scope, replay).form(max_files=1, max_fields=len(_FORM_FIELDS))
            try:
                unknown = sorted(set(form.keys()) - _FORM_FIELDS)
                if unknown:
                    raise ApiError(422, "invalid_query", f"Unknown form field(s) {', '.join(unknown)}; expected some "
                                                         f"of {', '.join(sorted(_FORM_FIELDS))}")
                for key, value in form.multi_items():
                    if key == "file":
                        if isinstance(value, str):
                            raise ApiError(422, "invalid_query", "The 'file' field must be a file upload")
                        data = await value.read()
                        filename = value.filename
                    elif value != "":
                        fields_[key] = value
            finally:
                await form.close()
        elif mime.startswith("image/") or mime == "application/octet-stream":
            data = body
        elif not body:
            raise ApiError(422, "invalid_query", "Send an image (multipart field 'file' or an image/* body), "
                                                 "or a JSON body with a 'url' or an 'id'")
        else:
            raise ApiError(415, "unsupported_media_type",
                           f"Unsupported Content-Type {mime or 'none'!r}: use multipart/form-data, application/json "
                           "or image/*")
        result = await run_in_threadpool(
            state.search_request, item_id=fields_.get("id"), url=fields_.get("url"), data=data, filename=filename,
            k=fields_.get("k"), exact=fields_.get("exact", False), nprobe=fields_.get("nprobe"),
            ef_search=fields_.get("ef_search"))
        return JSONResponse(result)

    @app.get("/images/{item_id}", responses={200: {"content": {"image/jpeg": {}}, "description": "The image"},
                                             404: {"model": ErrorOut, "description": "Unknown id"},
                                             422: {"model": ErrorOut, "description": "Invalid size"}},
             response_class=Response, summary="A stored image, or a thumbnail of it")
    def get_image(
        request: Request,
        item_id: int,
        size: str | None = Query(None, description="'thumb' (the server's thumbnail size), 'original', or the "
                                                   "longest side in pixels; a JPEG thumbnail is made on the server."),
    ) -> Response:
        """The original file of an id, or with `size` a JPEG thumbnail no larger than `size` pixels."""
        state = service(request)
        if size is None or size.strip().lower() == "original":
            path = state.image_path(item_id)
            media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=3600"})
        n = state.thumb_size(size)
        return Response(state.thumbnail(state.check_id(item_id), n), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=3600"})

    return app
