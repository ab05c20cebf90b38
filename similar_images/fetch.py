"""Fetching a query image from a URL, safely.

Only ``http`` and ``https`` are allowed (redirects included), with a
timeout, a size limit and a content-type check. Every failure raises
:class:`~similar_images.errors.QueryError` with a message meant for the user.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from .errors import QueryError

__all__ = ["FetchConfig", "fetch_url", "is_url"]

logger = logging.getLogger(__name__)

_ALLOWED = ("http", "https")


@dataclass(frozen=True)
class FetchConfig:
    """Limits of URL fetching.

    Attributes:
        timeout: Seconds for connecting and for each read.
        max_bytes: Largest accepted body.
        user_agent: Sent with the request.
    """

    timeout: float = 10.0
    max_bytes: int = 20 * 1024 * 1024
    user_agent: str = "similar-images/0.1 (+https://pypi.org/project/similar-images/)"


def is_url(text: str) -> bool:
    """Whether ``text`` looks like a URL (has a scheme followed by ``://``)."""
    head = text.split("://", 1)[0]
    return "://" in text and head.isalpha() and len(head) < 16


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http and https URLs."""

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        target = urllib.parse.urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
        scheme = urllib.parse.urlsplit(target).scheme.lower()
        if scheme not in _ALLOWED:
            raise QueryError(f"Refused a redirect to a {scheme}:// URL; only http and https are allowed")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


_opener = urllib.request.build_opener(_SafeRedirects)


def fetch_url(url: str, config: FetchConfig | None = None) -> bytes:
    """Download an image from an http(s) URL.

    Args:
        url: The address.
        config: Limits.

    Returns:
        The body bytes.

    Raises:
        QueryError: For another scheme, a network error or timeout, an HTTP
            error status, a body that is not an image, or one over the size limit.
    """
    config = config or FetchConfig()
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme.lower() not in _ALLOWED:
        raise QueryError(f"Only http:// and https:// URLs are allowed, got {parts.scheme or 'no scheme'!r}")
    if not parts.netloc:
        raise QueryError(f"URL has no host: {url!r}")
    req = urllib.request.Request(url.strip(), headers={"User-Agent": config.user_agent, "Accept": "image/*"})
    try:
        with _opener.open(req, timeout=config.timeout) as resp:
            ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not ctype.startswith("image/"):
                raise QueryError(f"The URL did not return an image (Content-Type {ctype or 'missing'!r})")
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > config.max_bytes:
                raise QueryError(f"The image is too large ({int(length):,} bytes; the limit is {config.max_bytes:,})")
            data = resp.read(config.max_bytes + 1)
    except QueryError:
        raise
    except urllib.error.HTTPError as exc:
        raise QueryError(f"The server answered HTTP {exc.code} {exc.reason} for {url}") from exc
    except urllib.error.URLError as exc:
        raise QueryError(f"Could not reach {parts.netloc}: {exc.reason}") from exc
    except (socket.timeout, TimeoutError) as exc:
        raise QueryError(f"Timed out after {config.timeout:g} s fetching {url}") from exc
    except (OSError, ValueError) as exc:
        raise QueryError(f"Could not fetch {url}: {exc}") from exc
    if len(data) > config.max_bytes:
        raise QueryError(f"The image is too large (over {config.max_bytes:,} bytes)")
    if not data:
        raise QueryError(f"The URL returned no data: {url}")
    logger.debug("Fetched %d bytes from %s", len(data), url)
    return data
