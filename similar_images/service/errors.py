"""Errors of the HTTP service, and the one table that maps every error type to an HTTP status.

The service's logic (:mod:`.logic`) raises the library's own errors
(:class:`~similar_images.errors.UnknownIdError`, ...) and the few below,
none of which knows about HTTP; :func:`status_for` turns any of them into
``(status, code, message)`` for the JSON error body ``{"error", "detail",
"status"}``.
"""

from __future__ import annotations

from ..errors import (
    BadURLError,
    ConfigError,
    DatabaseCorruptError,
    DatabaseError,
    DatabaseNotReadyError,
    ExplainError,
    FetchError,
    ImageLoadError,
    InputError,
    QueryError,
    SimilarImagesError,
    UnknownIdError,
)

__all__ = [
    "ServiceError",
    "InvalidParameterError",
    "InvalidQueryError",
    "UnsupportedQueryError",
    "URLsDisabledError",
    "NotAnImageDatabaseError",
    "ImageMissingError",
    "UnreadableStoredImageError",
    "BadRequestError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "RequestTimeoutError",
    "ServiceBusyError",
    "STATUS_BY_ERROR",
    "service_advice",
    "status_for",
]


class ServiceError(SimilarImagesError):
    """A request the service cannot answer (the subclasses say why)."""


class InvalidParameterError(ServiceError, ValueError):
    """A parameter has a bad value (``k`` out of range, not an integer, ...)."""


class InvalidQueryError(ServiceError):
    """The request does not name exactly one query, or has unknown fields."""


class UnsupportedQueryError(ServiceError):
    """This database cannot take this kind of query (an image for a text database)."""


class URLsDisabledError(ServiceError):
    """URL queries are switched off on this server."""


class NotAnImageDatabaseError(ServiceError):
    """Images were asked of a database that holds no image files."""


class ImageMissingError(ServiceError):
    """The image file of an id is no longer on the server."""


class UnreadableStoredImageError(ServiceError):
    """The image file of an id cannot be decoded."""


class BadRequestError(ServiceError):
    """The request itself is malformed (body, headers, JSON)."""


class PayloadTooLargeError(ServiceError):
    """The request body is over the size limit."""


class UnsupportedMediaTypeError(ServiceError):
    """The request body has a content type the service does not take."""


class RequestTimeoutError(ServiceError):
    """The client did not send the whole request body in time."""


class ServiceBusyError(ServiceError):
    """Too many requests of one kind (URL fetches) are in progress; the client may retry later."""


#: ``(error type, HTTP status, error code, message prefix)``; the first type an error is an instance of wins,
#: so subclasses come before their bases.
STATUS_BY_ERROR: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (PayloadTooLargeError, 413, "too_large", ""),
    (RequestTimeoutError, 408, "request_timeout", ""),
    (ServiceBusyError, 503, "busy", ""),
    (UnsupportedMediaTypeError, 415, "unsupported_media_type", ""),
    (BadRequestError, 400, "bad_request", ""),
    (URLsDisabledError, 403, "urls_disabled", ""),
    (NotAnImageDatabaseError, 404, "not_an_image_database", ""),
    (ImageMissingError, 404, "image_missing", ""),
    (UnreadableStoredImageError, 500, "unreadable_image", ""),
    (UnsupportedQueryError, 400, "unsupported_query", ""),
    (InvalidQueryError, 422, "invalid_query", ""),
    (InvalidParameterError, 422, "invalid_parameter", ""),
    (UnknownIdError, 404, "unknown_id", ""),
    (BadURLError, 400, "bad_url", ""),
    (FetchError, 502, "url_fetch_failed", "Could not fetch the query image: "),
    (ImageLoadError, 415, "not_an_image", "The query is not a readable image: "),
    (ExplainError, 400, "cannot_explain", ""),
    (QueryError, 422, "invalid_parameter", ""),
    (ConfigError, 422, "invalid_parameter", ""),
    (InputError, 422, "invalid_query", ""),
    (DatabaseNotReadyError, 503, "not_ready", "No photos ready yet; searches work once the first shard is "
                                              "committed. "),
    (DatabaseError, 503, "database_unavailable", "The database cannot be read: "),
)


def service_advice(exc: BaseException) -> str | None:
    """What the service adds to a library error's message for its client, from the data the error carries.

    The library names its own settings (``AddressPolicy(allow_private=True)``); a client cannot change those, so
    the service says which setting of the server decides, or what the server's operator must do.
    """
    if not isinstance(exc, SimilarImagesError):
        return None
    if isinstance(exc, BadURLError) and exc.setting == "allow_private":
        return "This server does not fetch from internal addresses (its allow_private_urls setting is off)."
    if isinstance(exc, DatabaseCorruptError) and exc.rebuild == "index":
        return "The server's operator must rebuild the index and restart the server."
    return None


def status_for(exc: BaseException) -> tuple[int, str, str] | None:
    """``(status, code, message)`` of an error the service answers, or ``None`` for an unexpected one (a bug)."""
    for kind, status, code, prefix in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            hint = service_advice(exc)
            if not hint:
                return status, code, prefix + str(exc)
            problem = (getattr(exc, "problem", None) or str(exc)).rstrip()  # the service's advice replaces the hint
            return status, code, f"{prefix}{problem}{'' if problem.endswith('.') else '.'} {hint}"
    return None
