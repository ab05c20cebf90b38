"""CLI command ``serve``: the HTTP search service (FastAPI + uvicorn)."""

from __future__ import annotations

import copy
import os
import socket
from pathlib import Path
from typing import Any

import click

from ..embed import resolve_weights
from ..errors import DatabaseNotReadyError
from ..service.config import APP_FACTORY, ENV_PREFIX, ServeConfig
from ..store.live import open_readable
from ._common import configure_logging, handle_errors, query_backend_options

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def _log_config(level: str) -> dict[str, object]:
    """Uvicorn's logging setup plus a handler for the package's own loggers (applied in every worker)."""
    from uvicorn.config import LOGGING_CONFIG  # noqa: PLC0415  (heavy: the HTTP server stack)

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["similar_images"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    config["loggers"]["uvicorn"]["level"] = level.upper()
    return config


def _run_uvicorn(app: str, *, workers: int, **options: Any) -> None:
    """``uvicorn.run(app, factory=True, ...)``, with TCP_NODELAY kept on in multi-worker mode.

    With ``workers > 1`` uvicorn binds the listening socket itself with ``proto=0``; accepted
    connections inherit it and asyncio then leaves Nagle's algorithm on, which costs every
    keep-alive request after the first about 40 ms (Kludex/uvicorn#3149). The socket is re-wrapped
    with ``IPPROTO_TCP`` before the workers are started.
    """
    import uvicorn  # noqa: PLC0415  (heavy: the HTTP server stack)
    from uvicorn.supervisors import Multiprocess  # noqa: PLC0415  (heavy: the HTTP server stack)

    if workers == 1:
        uvicorn.run(app, factory=True, **options)
        return
    config = uvicorn.Config(app, factory=True, workers=workers, **options)
    sock = config.bind_socket()
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto != socket.IPPROTO_TCP:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        sock.set_inheritable(True)
    try:
        Multiprocess(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()


def register(group: click.Group) -> None:
    """Add the ``serve`` command to ``group``."""

    @group.command()
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--host", default="127.0.0.1", show_default=True,
                  help="Address to listen on. The default accepts only local clients; 0.0.0.0 exposes the "
                       "service to the network (put it behind a proxy with authentication).")
    @click.option("--port", "-p", default=8000, show_default=True, type=click.IntRange(0, 65535),
                  help="TCP port to listen on.")
    @click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
                  help="Worker processes; each opens the database read-only and loads the model once.")
    @click.option("--weights", "-w", default=None,
                  help="Weights for embedding query images, overriding the database's: 'imagenet', 'random', "
                       "or the path of a local weights file.")
    @query_backend_options
    @click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(min=0.001),
                  help="Largest request body (and image fetched from a URL), in MiB; larger ones get 413.")
    @click.option("--fetch-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
                  help="Seconds allowed to connect to a query URL and for each read from it.")
    @click.option("--fetch-deadline", default=20.0, show_default=True, type=click.FloatRange(min=0.1),
                  help="Seconds allowed for a whole URL fetch (redirects and body included).")
    @click.option("--max-fetches", default=16, show_default=True, type=click.IntRange(1, 1024),
                  help="URL queries fetched at once by each worker, in their own threads (slow URLs never hold "
                       "the threads that answer other requests); more get 503 at once.")
    @click.option("--upload-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
                  help="Seconds allowed for receiving a whole request body; a stalled upload gets 408.")
    @click.option("--max-k", default=1000, show_default=True, type=click.IntRange(1, 10_000),
                  help="Most results a client may ask for.")
    @click.option("--no-urls", is_flag=True, help="Refuse URL queries (clients upload images or name ids).")
    @click.option("--allow-private-urls", is_flag=True,
                  help="Let URL queries name loopback, private and link-local addresses (refused by default, so "
                       "that clients cannot make the server fetch internal services).")
    @click.option("--no-batching", is_flag=True,
                  help="Run the model once per query instead of batching the queries that arrive together.")
    @click.option("--faiss-threads", default=1, show_default=True, type=click.IntRange(0),
                  help="Faiss OpenMP threads of each search (0: Faiss' default, all cores). Requests are "
                       "searched in parallel threads, so one Faiss thread each is fastest.")
    @click.option("--log-level", default="info", show_default=True, type=click.Choice(_LOG_LEVELS),
                  help="Server log level.")
    @click.option("--access-log/--no-access-log", default=True, show_default=True,
                  help="Log every request.")
    @handle_errors
    def serve(db: Path, host: str, port: int, workers: int, weights: str | None, backend: str | None,
              precision: str | None, allow_backend_mismatch: bool, max_upload_mb: float,
              fetch_timeout: float, fetch_deadline: float, max_fetches: int, upload_timeout: float, max_k: int,
              no_urls: bool, allow_private_urls: bool,
              no_batching: bool, faiss_threads: int, log_level: str, access_log: bool) -> None:
        """Serve searches of the database DB over HTTP.

        Endpoints: POST /search (an uploaded image, a URL or an id), GET
        /search?id=N&k=8, GET /images/ID (?size=thumb for a thumbnail),
        GET /health, the API documentation at /docs (one HTML page made by
        the server, so it works offline) and the OpenAPI description at
        /openapi.json.

        Example: similar-images serve photos-db --port 8000 --workers 2

        then: curl -F file=@cat.jpg 'http://127.0.0.1:8000/search?k=5'
        """
        configure_logging(0, log_level in ("critical", "error", "warning"))
        try:  # fail here, not in every worker; a database whose extraction has begun is served as it grows
            database = repr(open_readable(db, weights=weights, mmap_index=True, backend=backend,
                                             precision=precision, allow_backend_mismatch=allow_backend_mismatch))
        except DatabaseNotReadyError as exc:
            database = f"{db} (no photos ready yet: {exc.total:,} planned; searches work once its first shard lands)"
        if weights is not None:
            resolve_weights(weights)
        config = ServeConfig(db=db, weights=weights, backend=backend, precision=precision,
                             allow_backend_mismatch=allow_backend_mismatch,
                             max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                             fetch_timeout=fetch_timeout, fetch_deadline=fetch_deadline, max_fetches=max_fetches,
                             upload_timeout=upload_timeout, max_k=max_k,
                             allow_urls=not no_urls, allow_private_urls=allow_private_urls,
                             batch_queries=not no_batching, faiss_threads=faiss_threads)
        os.environ.update(config.to_env())
        for name, value in (("WEIGHTS", weights), ("BACKEND", backend), ("PRECISION", precision)):
            if value is None:
                os.environ.pop(ENV_PREFIX + name, None)

        shown = f"[{host}]" if ":" in host else host
        click.echo(f"Serving {database} at http://{shown}:{port} with {workers} worker(s); "
                   f"documentation at http://{shown}:{port}/docs", err=True)
        _run_uvicorn(APP_FACTORY, workers=workers, host=host, port=port, log_level=log_level, access_log=access_log,
                     log_config=_log_config(log_level), timeout_graceful_shutdown=10)
