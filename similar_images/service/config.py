"""Settings of the HTTP service, and how they travel to uvicorn's worker processes (environment variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from .._util.types import JSON
from ..errors import ConfigError

__all__ = ["ServeConfig", "ENV_PREFIX", "APP_FACTORY", "MIN_THUMB_SIZE"]

#: Prefix of the environment variables that carry a :class:`ServeConfig` to the workers.
ENV_PREFIX = "SIMILAR_IMAGES_SERVE_"

#: Import string of the application factory, for ``uvicorn --factory``.
APP_FACTORY = "similar_images.service:create_app"

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
        backend: Inference backend of the queries (``None``: the one recorded in the database's manifest).
        precision: Inference precision of the queries (``None``: the recorded one).
        allow_backend_mismatch: Allow another backend or precision than the database's (otherwise refused).
        max_upload_bytes: Largest accepted request body (and fetched URL body).
        fetch_timeout: Seconds allowed for connecting to a query URL and for each read.
        fetch_deadline: Seconds allowed for a whole URL fetch (redirects and body included).
        max_fetches: URL fetches one worker runs at once, in their own threads (so that slow URLs never hold
            the threads that answer other requests); a URL query beyond them is answered 503 at once.
        upload_timeout: Seconds allowed for receiving a whole request body (a client that stalls mid-upload
            gets 408).
        allow_urls: Whether URL queries are accepted.
        allow_private_urls: Whether URL queries may name loopback, private, link-local or other internal
            addresses (checked after the name lookup, on every redirect). Off by default: a client could
            otherwise make the server fetch internal services.
        max_k: Largest number of results a client may ask for.
        default_k: Number of results when the client does not say (at most ``max_k``).
        thumb_size: Longest side of ``?size=thumb`` thumbnails.
        max_thumb_size: Largest ``?size=N`` allowed.
        batch_queries: Embed queries that wait for the model together in one batch.
        max_batch: Most queries embedded in one model call.
        warmup: Build the model and run it once at startup (otherwise on the first query).
        refresh_interval: Seconds between two checks for changes to the database (new shards of its build,
            adds, removes, a new index by any process); a change shows within about this plus its reload time.
        faiss_threads: OpenMP threads of each Faiss search; ``0`` keeps Faiss' default (all
            cores). A single query gains nothing from more threads, and with several
            request threads each gets its own team of spinning OpenMP threads, which on
            a busy machine turns a 0.1 ms search into 15-20 ms.
    """

    db: Path
    weights: str | None = None
    backend: str | None = None
    precision: str | None = None
    allow_backend_mismatch: bool = False
    max_upload_bytes: int = 20 * 1024 * 1024
    fetch_timeout: float = 10.0
    fetch_deadline: float = 20.0
    max_fetches: int = 16
    upload_timeout: float = 30.0
    allow_urls: bool = True
    allow_private_urls: bool = False
    max_k: int = 1000
    default_k: int = 8
    thumb_size: int = 256
    max_thumb_size: int = 1024
    batch_queries: bool = True
    max_batch: int = 16
    warmup: bool = True
    faiss_threads: int = 1
    refresh_interval: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "db", Path(self.db).expanduser())
        if self.max_upload_bytes < 1:
            raise ConfigError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
        if self.fetch_timeout <= 0 or self.fetch_deadline <= 0:
            raise ConfigError(f"fetch_timeout and fetch_deadline must be positive, got {self.fetch_timeout} and "
                              f"{self.fetch_deadline}")
        if self.max_fetches < 1 or self.upload_timeout <= 0:
            raise ConfigError(f"max_fetches must be at least 1 and upload_timeout positive, got {self.max_fetches} "
                              f"and {self.upload_timeout}")
        if not 1 <= self.max_k <= 10_000:
            raise ConfigError(f"max_k must be from 1 to 10000, got {self.max_k}")
        if self.default_k < 1:
            raise ConfigError(f"default_k must be at least 1, got {self.default_k}")
        object.__setattr__(self, "default_k", min(self.default_k, self.max_k))
        if not MIN_THUMB_SIZE <= self.thumb_size <= self.max_thumb_size:
            raise ConfigError(f"thumb_size must be from {MIN_THUMB_SIZE} to max_thumb_size ({self.max_thumb_size}), "
                             f"got {self.thumb_size}")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {self.max_batch}")
        if not 0 <= self.refresh_interval <= 3600:
            raise ConfigError(f"refresh_interval must be from 0 to 3600 seconds, got {self.refresh_interval}")
        if self.faiss_threads < 0:
            raise ConfigError(f"faiss_threads must be 0 (Faiss' default) or more, got {self.faiss_threads}")

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
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """Read the settings written by :meth:`to_env`.

        Raises:
            ConfigError: If ``SIMILAR_IMAGES_SERVE_DB`` is missing or a value does not parse.
        """
        environ = os.environ if environ is None else environ
        kwargs: JSON = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            default = f.default
            try:
                if isinstance(default, bool):
                    if raw.strip().lower() not in _TRUE | _FALSE:
                        raise ConfigError(f"expected 1 or 0, got {raw!r}")
                    kwargs[f.name] = raw.strip().lower() in _TRUE
                elif isinstance(default, int):
                    kwargs[f.name] = int(raw)
                elif isinstance(default, float):
                    kwargs[f.name] = float(raw)
                else:
                    kwargs[f.name] = raw
            except ValueError as exc:
                raise ConfigError(f"Environment variable {ENV_PREFIX}{f.name.upper()}: {exc}") from exc
        if "db" not in kwargs:
            raise ConfigError(
                f"{ENV_PREFIX}DB is not set: start the service with 'similar-images serve DB', "
                f"or set {ENV_PREFIX}DB to a database folder before running uvicorn --factory {APP_FACTORY}"
            )
        return cls(**kwargs)
