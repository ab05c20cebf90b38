"""The HTTP routes of the search service (FastAPI), over one database, read-only.

Endpoints (all answers are JSON except the images):

* ``GET /search?id=N&k=8`` (or ``?url=...``): search with a stored item or an image URL.
* ``POST /search``: search with an uploaded image (multipart field ``file``,
  or a raw ``image/*`` body), a URL (form field or JSON ``{"url": ..., "k": ...}``)
  or an id (``{"id": N}``).
* ``GET /images/{id}``: the stored image; ``?size=thumb`` or ``?size=N`` for a
  JPEG thumbnail made on the server.
* ``GET /health``: status of this worker (its process id, the database, the model, how many items can be
  searched now and how far the database's build has got).
* ``GET /docs``: the API documentation, one HTML page rendered on the server
  from the OpenAPI description by :func:`~.api_docs.render_api_docs` (no script
  or style from a CDN, so it works offline).
* ``GET /openapi.json``: the machine-readable OpenAPI description.

Bad input always gets a 4xx answer of the form
``{"error": CODE, "detail": MESSAGE, "status": STATUS}``, the status taken
from one table (:data:`~.errors.STATUS_BY_ERROR`).

The application is made by :func:`create_app`. Under ``uvicorn --workers N``
each worker calls the factory with no argument, so the settings travel in
environment variables (see :meth:`~.config.ServeConfig.to_env`); each worker
opens the database and loads the model once, in the application's lifespan.
Searches run in a thread pool; model calls are serialised by a lock, and
queries that wait for the model meanwhile are embedded together in one batch.

FastAPI is imported inside :func:`create_app`, so importing this module is cheap. (No ``from __future__ import
annotations`` here: FastAPI reads the routes' annotations, whose types are imported inside :func:`create_app`.)
"""

import asyncio
import contextlib
import json
import logging
import mimetypes
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from .._util.parsing import MAX_INT_DIGITS, parse_int, shown
from .._version import __version__
from ..errors import SimilarImagesError
from ..methods.explain import explanation_png
from .api_docs import render_api_docs
from .config import ServeConfig
from .errors import (
    BadRequestError,
    InvalidQueryError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
    status_for,
)
from .logic import ServiceState

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def _ascii_int(value: object) -> object:
    """A query or path parameter's text as an integer by :func:`~similar_images._util.parsing.parse_int`, as
    :func:`~.logic.as_int` parses the JSON and form fields (pydantic's own parsing takes ``"1_000"``, ``"1.0"``
    and numbers too large for Faiss)."""
    if isinstance(value, str):
        result = parse_int(value)
        if result is None:
            raise ValueError(f"must be an integer (ASCII digits, at most {MAX_INT_DIGITS})")
        return result
    return value


def _names(names: list[str], most: int = 5) -> str:
    """Field names a client sent, for an error message: at most ``most``, each cut short and escaped."""
    shown_ = [name if name.isprintable() and len(name) <= 40 and name.isascii() else shown(name) for name in names]
    return ", ".join(shown_[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


#: Longest error message answered (the client's own input, quoted in it, is cut shorter still).
MAX_DETAIL_CHARS = 1000


def _error_body(status: int, code: str, detail: Any) -> dict[str, object]:
    if isinstance(detail, str):  # one line, bounded, and encodable: a lone surrogate would fail the JSON answer
        detail = " ".join(detail.splitlines())[:MAX_DETAIL_CHARS].encode("utf-8", "backslashreplace").decode()
    return {"error": code, "detail": detail, "status": status}


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
               415: "unsupported_media_type", 422: "invalid_parameter"}

_JSON_FIELDS = {"url", "id", "k", "exact", "nprobe", "ef_search"}
#: Largest JSON or url-encoded body: they hold a few fields (a URL of at most 2,048 characters, an id ...), and
#: are parsed on the event loop.
MAX_FIELDS_BYTES = 64 * 1024
_FORM_FIELDS = _JSON_FIELDS | {"file"}

_POST_SEARCH_DOC = """Search with an uploaded image, an image URL, or a database id.

Send one of:

* `multipart/form-data` with a `file` field (the image), or a `url` or `id` field; optional `k`, `exact`, `nprobe`.
* `application/json`: `{"url": "https://...", "k": 8}` or `{"id": 3, "k": 8}`.
* a raw body with `Content-Type: image/jpeg` (or any `image/*`); `k` etc. in the query string.

Bodies over the server's size limit (64 KiB for JSON and url-encoded bodies) are refused with 413 before they
are read; a body not received within the server's upload timeout gets 408. URL queries are fetched in their own
threads: when the server is fetching its maximum number of URLs, it answers 503 at once.
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
            "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": {
                "url": {"type": "string", "description": "An http(s) address of the query image."},
                "id": {"type": "integer", "description": "A database id."},
                **_SEARCH_OPTIONS_SCHEMA}}},
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
        ConfigError: If ``config`` is ``None`` and the environment holds no valid settings.
    """
    from fastapi import FastAPI, Query, Request  # noqa: PLC0415  (heavy: FastAPI)
    from fastapi.concurrency import run_in_threadpool  # noqa: PLC0415  (heavy: FastAPI)
    from fastapi.exceptions import RequestValidationError  # noqa: PLC0415  (heavy: FastAPI)
    from fastapi.responses import (  # noqa: PLC0415  (heavy: FastAPI)
        FileResponse,
        HTMLResponse,
        JSONResponse,
        RedirectResponse,
        Response,
    )
    from pydantic import BaseModel, BeforeValidator  # noqa: PLC0415  (heavy: FastAPI)
    from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: PLC0415  (heavy: FastAPI)
    from starlette.requests import ClientDisconnect  # noqa: PLC0415  (heavy: FastAPI)

    cfg = config if config is not None else ServeConfig.from_env()
    #: Parses an integer query or path parameter as the JSON and form fields are parsed (:func:`~.logic.as_int`).
    ascii_int = BeforeValidator(_ascii_int)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = await run_in_threadpool(ServiceState.load, cfg)
        try:
            yield
        finally:
            app.state.service.close()

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
        query: dict[str, object]
        k: int
        count: int
        model: str
        query_id: int | None
        search_ms: float
        total_ms: float
        params: dict[str, object]
        results: list[MatchOut]
        elapsed_ms: float

    class ErrorOut(BaseModel):
        error: str
        detail: Any
        status: int

    error_responses: dict[int | str, dict[str, object]] = {
        code: {"model": ErrorOut, "description": desc} for code, desc in (
            (400, "Bad request or bad URL"), (404, "Unknown id"), (408, "The body was not received in time"),
            (413, "Body too large"), (415, "Not an image"), (422, "Invalid parameter"),
            (502, "The URL could not be fetched"), (503, "Busy fetching other URLs; try again shortly"))
    }

    def service(request: Request) -> ServiceState:
        return request.app.state.service

    @app.exception_handler(SimilarImagesError)
    async def _library_error(request: Request, exc: SimilarImagesError) -> JSONResponse:
        answer = status_for(exc)
        if answer is None:  # a library error the table does not map: still the server's fault
            logger.error("%s %s: unmapped %s: %s", request.method, request.url.path, type(exc).__name__, exc)
            answer = (500, "internal_error", "Internal server error; see the server log")
        status, code, message = answer
        if status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, message)
        return JSONResponse(_error_body(status, code, message), status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body"))
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{loc or 'request'}: {msg} (got {shown(err.get('input'))})")
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
    async def health(request: Request) -> dict[str, object]:  # on the event loop: answers however busy the threads
        """The worker's process id, the database (items searchable now, model, index), how far its build has got
        (``build``: ready, total, phase, rate, ETA) and the server's limits."""
        return service(request).health()

    async def fetched(state: ServiceState, url: object) -> bytes | None:
        """The body of a URL query, fetched in the service's fetch threads (a slow URL holds one of those, never
        a thread that answers other requests); ``None`` without a URL."""
        if url is None:
            return None
        return await asyncio.wrap_future(state.start_fetch(url))

    @app.get("/search", response_model=SearchOut, responses=error_responses,
             summary="Search with a database id or an image URL")
    async def search_get(
        request: Request,
        id: Annotated[int | None, Query(description="A database id: its stored vector is the query."),
                      ascii_int] = None,
        url: str | None = Query(None, description="An http(s) address of the query image."),
        k: Annotated[int, Query(ge=1, le=cfg.max_k, description="Number of results."), ascii_int] = cfg.default_k,
        exact: bool = Query(False, description="Exact search over all vectors instead of the index."),
        nprobe: Annotated[int | None, Query(ge=1, description="IVF lists to visit."), ascii_int] = None,
        ef_search: Annotated[int | None, Query(ge=1, description="HNSW search depth."), ascii_int] = None,
    ) -> JSONResponse:
        """Give exactly one of `id` and `url`. Results are best first, with cosine similarity scores."""
        state = service(request)
        data = await fetched(state, url) if id is None else None
        out = await run_in_threadpool(state.search_request, item_id=id, url=url, k=k, exact=exact, nprobe=nprobe,
                                      ef_search=ef_search, fetched=data)
        return JSONResponse(out)

    async def _read_body(request: Request, limit: int) -> bytes:
        try:
            return await asyncio.wait_for(_read_body_now(request, limit), cfg.upload_timeout)
        except asyncio.TimeoutError:  # TimeoutError from Python 3.11
            raise RequestTimeoutError(f"The request body was not received within {cfg.upload_timeout:g} s") from None

    async def _read_body_now(request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            size = parse_int(length)
            if size is None or size < 0:
                raise BadRequestError(f"Invalid Content-Length header {shown(length)}")
            if size > limit:
                raise PayloadTooLargeError(f"The request body ({size:,} bytes) is over the limit of {limit:,} bytes; "
                                           "send a smaller image")
        buf = bytearray()
        try:
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > limit:
                    raise PayloadTooLargeError(f"The request body is over the limit of {limit:,} bytes; send a smaller "
                                          "image")
        except ClientDisconnect as exc:
            raise BadRequestError("The client disconnected before sending the whole body") from exc
        return bytes(buf)

    @app.post("/search", response_model=SearchOut, responses=error_responses, openapi_extra=_POST_SEARCH_OPENAPI,
              summary="Search with an uploaded image, an image URL, or a database id", description=_POST_SEARCH_DOC)
    async def search_post(request: Request) -> JSONResponse:
        state = service(request)
        mime = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        fields_only = mime in ("application/json", "application/x-www-form-urlencoded")  # no image in these
        body = await _read_body(request, min(MAX_FIELDS_BYTES, state.config.max_upload_bytes) if fields_only
                                else state.config.max_upload_bytes)
        fields_: dict[str, object] = {k: v for k, v in request.query_params.items() if k in _JSON_FIELDS}
        data: bytes | None = None
        filename: str | None = None
        if mime == "application/json":
            try:
                obj = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequestError(f"The body is not valid JSON: {exc}") from exc
            except RecursionError:
                raise BadRequestError("The JSON body is nested too deeply") from None
            if not isinstance(obj, dict):
                raise InvalidQueryError('The JSON body must be an object such as {"url": "...", "k": 8}')
            unknown = sorted(set(obj) - _JSON_FIELDS)
            if unknown:
                raise InvalidQueryError(f"Unknown field(s) {_names(unknown)}; expected some of "
                                   f"{', '.join(sorted(_JSON_FIELDS))} (upload files as multipart)")
            fields_.update({key: v for key, v in obj.items() if v is not None})
        elif mime in ("multipart/form-data", "application/x-www-form-urlencoded"):
            async def replay() -> dict[str, object]:
                return {"type": "http.request", "body": body, "more_body": False}

            form = await Request(request.scope, replay).form(max_files=1, max_fields=len(_FORM_FIELDS))
            try:
                unknown = sorted(set(form.keys()) - _FORM_FIELDS)
                if unknown:
                    raise InvalidQueryError(f"Unknown form field(s) {_names(unknown)}; expected some of "
                                       f"{', '.join(sorted(_FORM_FIELDS))}")
                for key, value in form.multi_items():
                    if key == "file":
                        if isinstance(value, str):
                            raise InvalidQueryError("The 'file' field must be a file upload")
                        data = await value.read()
                        filename = value.filename
                    elif value != "":
                        fields_[key] = value
            finally:
                await form.close()
        elif mime.startswith("image/") or mime == "application/octet-stream":
            data = body
        elif not body:
            raise InvalidQueryError("Send an image (multipart field 'file' or an image/* body), or a JSON body with a "
                               "'url' or an 'id'")
        else:
            raise UnsupportedMediaTypeError(f"Unsupported Content-Type {mime or 'none'!r}: use multipart/form-data, "
                                       "application/json or image/*")
        only_url = fields_.get("url") is not None and fields_.get("id") is None and data is None
        if only_url:
            state.check_k(fields_.get("k"))  # before the fetch, not after it
        url_data = await fetched(state, fields_["url"]) if only_url else None
        result = await run_in_threadpool(
            state.search_request, item_id=fields_.get("id"), url=fields_.get("url"), data=data, filename=filename,
            k=fields_.get("k"), exact=fields_.get("exact", False), nprobe=fields_.get("nprobe"),
            ef_search=fields_.get("ef_search"), fetched=url_data)
        return JSONResponse(result)

    @app.get("/explain", response_class=Response, summary="Why a result is similar to a query",
             responses={200: {"content": {"image/png": {}, "application/json": {}},
                              "description": "A PNG with the query and the result side by side, each with its "
                                             "similarity map; or the maps as JSON"},
                        **{code: error_responses[code] for code in (400, 404, 422, 502, 503)}})
    async def get_explain(
        request: Request,
        id: Annotated[int, Query(description="The database id of the result to explain."), ascii_int],
        query_id: Annotated[int | None, Query(description="The query: a database id."), ascii_int] = None,
        url: str | None = Query(None, description="The query: an http(s) address of an image."),
        format: str = Query("png", pattern="^(png|json)$", description="png (an image) or json (the maps)."),
        method: str = Query("auto", pattern="^(auto|exact|gradient)$",
                            description="exact (average- and max-pooled models), gradient (approximate), or auto."),
        height: Annotated[int, Query(ge=16, le=1024, description="Height of each photo in the PNG."), ascii_int] = 320,
    ) -> Response:
        """The similarity of the result to the query, decomposed over the last convolutional feature map
        (exact for average and max pooling, an approximate gradient map otherwise), for a database id or a URL
        as the query. Unknown ids give 404; a text database or a model without a feature map gives 400. A URL is
        fetched in the fetch threads that URL searches use (503 when they are all busy)."""
        state = service(request)
        state.check_explain(query_id=query_id, url=url, item_id=id, method=method)
        data = await fetched(state, url) if query_id is None else None
        if format == "json":
            e = await run_in_threadpool(state.explain, query_id=query_id, url=url, item_id=id, method=method,
                                        fetched=data)
            return JSONResponse(e.to_dict())
        if query_id is not None:
            png = await run_in_threadpool(state.explanation_png, state.db.check_id(query_id), state.db.check_id(id),
                                          method, height)
        else:
            e = await run_in_threadpool(state.explain, url=url, item_id=id, method=method, fetched=data)
            png = await run_in_threadpool(explanation_png, e, height=height)
        return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/images/{item_id}", responses={200: {"content": {"image/jpeg": {}}, "description": "The image"},
                                             404: {"model": ErrorOut, "description": "Unknown id"},
                                             422: {"model": ErrorOut, "description": "Invalid size"}},
             response_class=Response, summary="A stored image, or a thumbnail of it")
    def get_image(
        request: Request,
        item_id: Annotated[int, ascii_int],
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
        return Response(state.thumbnail(state.db.check_id(item_id), n), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=3600"})

    return app
