"""The one HTTP client of the package: query images from URLs, and resumable downloads.

Both uses share the same connection code (:func:`build_opener`): the name
lookup and the connection are bounded by ``timeout``, every read by
``read_timeout``, only ``http`` and ``https`` are followed (redirects
included), and the addresses a host name resolves to are checked against an
:class:`AddressPolicy` on every hop, after the lookup, before connecting (so a
host name cannot point a server at its own loopback or private network unless
that is allowed).

* :func:`fetch_url` fetches a query image: a deadline for the whole fetch, a
  size limit, an ``image/*`` content type. Failures raise
  :class:`~similar_images.errors.BadURLError` (the URL itself is unusable) or
  :class:`~similar_images.errors.FetchError` (it could not be fetched).
* :func:`similar_images._util.download.download_file` (built on this module)
  downloads a large file, resumably.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import os
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from ..errors import BadURLError, FetchError
from .parsing import parse_int, shown, undecodable_at

__all__ = [
    "AddressPolicy",
    "FetchConfig",
    "fetch_url",
    "is_url",
    "looks_like_url",
    "check_url",
    "host_address",
    "is_internal",
    "describe_network_error",
    "build_opener",
]

logger = logging.getLogger(__name__)

_ALLOWED_SCHEMES = ("http", "https")
_USER_AGENT = "similar-images/0.1 (+https://pypi.org/project/similar-images/)"
MAX_URL_LENGTH = 2048


# --------------------------------------------------------------------------- addresses
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local-use NAT64, never public
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated "::a.b.c.d" (with :: and ::1)
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def is_internal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is not a public unicast address, whatever IPv4 address an IPv6 spelling embeds.

    Refused: private, loopback, link-local, site-local, reserved, multicast, unspecified and other non-global
    addresses (carrier-grade NAT 100.64/10 included), and IPv6 addresses that carry such an IPv4 address:
    IPv4-mapped (``::ffff:127.0.0.1``), IPv4-compatible (``::127.0.0.1``), NAT64 (``64:ff9b::7f00:1``, and the
    local-use ``64:ff9b:1::/48``), 6to4 (``2002:7f00:1::``) and Teredo.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_internal(ip.ipv4_mapped)
        if ip in _NAT64:
            return is_internal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in _NAT64_LOCAL or ip in _IPV4_COMPATIBLE or ip.is_site_local:
            return True
        if ip.sixtofour is not None:  # judged by its IPv4 address alone (newer Pythons call all of 2002::/16 private)
            return is_internal(ip.sixtofour)
        if ip.teredo is not None and any(is_internal(v4) for v4 in ip.teredo):
            return True
    return (not ip.is_global or ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved
            or ip.is_multicast or ip.is_unspecified)


def _refusal(host: str, ip: object) -> BadURLError:
    who = host if host == str(ip) else f"{host} ({ip})"
    return BadURLError(
        f"Refused to fetch from {who}: it is a loopback, private, link-local or reserved address.",
        hint="Use a public address, or allow internal addresses explicitly (AddressPolicy(allow_private=True)).",
        setting="allow_private", value=False, expected=True,
    )


_NUMERIC_HOST = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?")


def host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a URL's host names literally, in any spelling the system's resolver takes, or ``None`` for a
    host name.

    IPv6 literals may carry a zone (``fe80::1%eth0``); IPv4 ones may be written as ``inet_aton`` reads them:
    ``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``127.1``, with a trailing dot.

    Raises:
        BadURLError: For a host made of numbers that is no IPv4 address (``999.1.1.1``), or a bad IPv6 literal.
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise BadURLError(f"{host!r} is not a valid IPv6 address") from None
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host.rstrip(".")))
        except OSError:
            raise BadURLError(f"{host!r} is not a valid IPv4 address") from None
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a URL may lead to.

    Attributes:
        allow_private: Allow loopback (127.0.0.0/8, ::1), private (10/8, 172.16/12, 192.168/16, fc00::/7),
            link-local (169.254/16, fe80::/10), carrier-grade NAT, multicast, reserved and unspecified
            addresses, and IPv6 addresses that embed such an IPv4 address (see :func:`is_internal`). A server
            open to others should keep this ``False``: otherwise a client can make it fetch internal services
            (its own, or its network's). A notebook on the user's own machine may allow them.
    """

    allow_private: bool = False

    def check(self, host: str, address: str) -> None:
        """Refuse ``address`` (resolved from ``host``) unless the policy allows it.

        Raises:
            BadURLError: If the address is internal and the policy does not allow internal addresses.
        """
        if self.allow_private:
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if is_internal(ip):
            raise _refusal(host, ip)

    def check_host(self, host: str) -> None:
        """Refuse a URL's host before any lookup when it names an internal address itself: an address literal
        in any spelling (:func:`host_address`), or ``localhost`` and its subdomains. Host names are checked
        again by :meth:`check` on the addresses they resolve to, right before connecting.

        Raises:
            BadURLError: For an internal or malformed address literal, or a local name.
        """
        ip = host_address(host)
        if ip is not None:
            self.check(host, str(ip))
        elif not self.allow_private and (host.rstrip(".") in _LOCAL_NAMES or host.rstrip(".").endswith(".localhost")):
            raise _refusal(host, "a local name")


# --------------------------------------------------------------------------- connections
def _resolve(host: str, port: int, timeout: float) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` bounded by ``timeout`` seconds (the OS resolver itself may hang far longer)."""
    result: list[Any] = []

    def lookup() -> None:
        try:
            result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except BaseException as exc:  # noqa: BLE001  (handed to the caller's thread, which raises it)
            result.append(exc)

    thread = threading.Thread(target=lookup, name="similar-images-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        raise TimeoutError(f"looking up the host name {host!r} timed out after {timeout:g} s")
    if isinstance(result[0], BaseException):
        raise result[0]
    return list(result[0])


class _Deadline:
    """The time left of a whole exchange (``None``: no deadline), and the socket in use, whose timeout is
    re-armed before each read so that a server trickling bytes cannot outlast the deadline."""

    def __init__(self, seconds: float | None) -> None:
        self.end = None if seconds is None else time.monotonic() + seconds
        self.seconds = seconds
        self.sock: socket.socket | None = None

    def expire(self) -> None:
        """Called by a timer when the deadline passes: shut the socket so that a blocked read returns."""
        sock = self.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    @property
    def passed(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def rearm(self, read_timeout: float | None) -> None:
        """Bound the next read by ``read_timeout`` and the time left (raises once the deadline has passed)."""
        left = self.left(read_timeout)
        if self.sock is not None:
            self.sock.settimeout(left)

    def left(self, cap: float | None) -> float | None:
        if self.end is None:
            return cap
        rem = self.end - time.monotonic()
        if rem <= 0:
            raise TimeoutError(f"the fetch took longer than {self.seconds:g} s")
        return rem if cap is None else min(cap, rem)


def _connect(host: str, port: int, timeout: float, policy: AddressPolicy | None,
             deadline: _Deadline) -> socket.socket:
    """Resolve ``host``, check every address against ``policy``, and connect to the first that answers."""
    infos = _resolve(host, port, deadline.left(timeout) or timeout)
    if policy is not None:
        for info in infos:
            policy.check(host, info[4][0])
    last: BaseException | None = None
    for family, socktype, proto, _, addr in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            sock.settimeout(deadline.left(timeout))
            sock.connect(addr)
            return sock
        except OSError as exc:
            last = exc
            sock.close()
    raise last or OSError(f"no address for {host}")


def _connection_class(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
    class _Conn(base):  # type: ignore[valid-type, misc]
        """Connects through :func:`_connect` (policy checked), then bounds each read by the read timeout
        and the deadline of the whole fetch."""

        def __init__(self, *args: Any, read_timeout: float | None = None, policy: AddressPolicy | None = None,
                     deadline: _Deadline | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read_timeout = read_timeout
            self._policy = policy
            self._deadline = deadline or _Deadline(None)

        def connect(self) -> None:
            sock = _connect(self.host, self.port, self.timeout if isinstance(self.timeout, (int, float)) else 10.0,
                            self._policy, self._deadline)
            if isinstance(self, http.client.HTTPSConnection):
                context = getattr(self, "_context", None) or ssl.create_default_context()
                sock = context.wrap_socket(sock, server_hostname=self.host)
            self.sock = sock
            self._deadline.sock = sock
            sock.settimeout(self._deadline.left(self._read_timeout))

    return _Conn


_HTTPConnection = _connection_class(http.client.HTTPConnection)
_HTTPSConnection = _connection_class(http.client.HTTPSConnection)


class _Handler(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float | None, policy: AddressPolicy | None, deadline: _Deadline) -> None:
        urllib.request.HTTPHandler.__init__(self)
        urllib.request.HTTPSHandler.__init__(self)
        self._kw = {"read_timeout": read_timeout, "policy": policy, "deadline": deadline}

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req, **self._kw)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req, **self._kw)


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to well-formed http and https URLs whose host passes the policy (each hop's
    resolved addresses are checked again when it connects)."""

    max_redirections = 5

    def __init__(self, policy: AddressPolicy | None = None) -> None:
        super().__init__()
        self._policy = policy

    def http_error_302(self, req, fp, code, msg, headers):  # type: ignore[no-untyped-def]
        try:
            target = urllib.parse.urljoin(req.full_url, headers.get("Location") or headers.get("URI") or "")
            scheme = urllib.parse.urlsplit(target).scheme.lower()
        except ValueError as exc:
            raise FetchError(f"Refused a malformed redirect ({exc})") from None
        if scheme not in _ALLOWED_SCHEMES:
            raise FetchError(f"Refused a redirect to a {scheme}:// URL; only http and https are allowed")
        check_url(target, policy=self._policy)
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def build_opener(*, read_timeout: float | None, policy: AddressPolicy | None = None,
                 deadline: _Deadline | None = None) -> urllib.request.OpenerDirector:
    """An opener with per-read timeouts, an address policy checked on every hop, and an optional deadline
    for the whole exchange. Proxy settings (``https_proxy`` ...) are used only without a policy: the address
    checks need direct connections."""
    opener = urllib.request.OpenerDirector()
    if policy is None:
        opener.add_handler(urllib.request.ProxyHandler())
    for handler in (_Handler(read_timeout, policy, deadline or _Deadline(None)), _SafeRedirects(policy),
                    urllib.request.HTTPErrorProcessor(), urllib.request.HTTPDefaultErrorHandler()):
        opener.add_handler(handler)
    return opener


# --------------------------------------------------------------------------- URLs
def is_url(text: str) -> bool:
    """Whether ``text`` has a URL scheme followed by ``://``."""
    head = text.split("://", 1)[0]
    return "://" in text and head.isalpha() and len(head) < 16


_HOSTLIKE = re.compile(r"^(www\.|[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}(:\d+)?(/|$))", re.IGNORECASE)


def looks_like_url(text: str) -> bool:
    """Whether ``text`` is a URL, or a host name and path without a scheme (``www.example.com/cat.jpg``)."""
    text = text.strip()
    return is_url(text) or bool(_HOSTLIKE.match(text)) and not os.path.exists(text)


def check_url(url: str, *, assume_https: bool = False, policy: AddressPolicy | None = None) -> str:
    """Validate a URL and return it stripped.

    Args:
        url: The address.
        assume_https: Prefix ``https://`` to an address given without a scheme (``www.example.com/a.jpg``).
        policy: Refuse a host that names an internal address itself (:meth:`AddressPolicy.check_host`), before
            any connection; the addresses a host name resolves to are checked when connecting.

    Raises:
        BadURLError: If it is too long, malformed, has another scheme than http(s), has no host, or (with
            ``policy``) names a refused address.
    """
    url = url.strip()
    if assume_https and not is_url(url) and looks_like_url(url):
        url = "https://" + url
    if len(url) > MAX_URL_LENGTH:
        raise BadURLError(f"The URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        raise BadURLError(f"The URL {shown(url, 120)} is malformed ({exc})") from None
    if parts.scheme.lower() not in _ALLOWED_SCHEMES:
        got = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise BadURLError(f"Only http:// and https:// URLs are allowed, got {got} in {shown(url, 120)}")
    if not host:
        raise BadURLError(f"The URL has no host name: {shown(url, 120)}")
    after_bracket = parts.netloc.rpartition("]")[2] if "[" in parts.netloc else ""
    if after_bracket and not re.fullmatch(r":[0-9]*", after_bracket):
        raise BadURLError(f"The URL {shown(url, 120)} is malformed (text after the IPv6 address)")
    if undecodable_at(url) is not None or any(ord(c) < 32 or c == "\x7f" for c in url):
        raise BadURLError(f"The URL {shown(url, 120)} holds undecodable bytes or control characters")
    if not host.isascii():
        try:  # the resolver reads "１２７.０.０.１" as 127.0.0.1: check what it will look up
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise BadURLError(f"The URL's host name {shown(host)} is not a valid international name") from None
    if policy is not None:
        policy.check_host(host)
    else:
        host_address(host)
    return url


def describe_network_error(exc: BaseException, *, timeout: float, read_timeout: float | None,
                           connecting: bool) -> str:
    """A short, plain description of why a request failed ("the connection was refused", ...)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return describe_network_error(reason, timeout=timeout, read_timeout=read_timeout, connecting=connecting)
        return str(reason)
    if isinstance(exc, socket.gaierror):
        return "the host name could not be resolved"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"a secure connection could not be made ({exc.reason or exc})"
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError
        if exc.args and isinstance(exc.args[0], str) and ("took longer" in exc.args[0] or "timed out after" in
                                                           exc.args[0]):
            return exc.args[0]
        if connecting:
            return f"no connection within {timeout:g} s"
        return f"timed out: no data received for {read_timeout:g} s" if read_timeout else "timed out"
    if isinstance(exc, (http.client.IncompleteRead, ConnectionError, http.client.HTTPException)):
        return f"the connection was lost ({exc.__class__.__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return f"{exc.__class__.__name__}: {exc}"


# --------------------------------------------------------------------------- query images
@dataclass(frozen=True)
class FetchConfig:
    """Limits of URL fetching.

    Attributes:
        timeout: Seconds for the name lookup, connecting, and each read.
        deadline: Seconds for the whole fetch (redirects and body included): a server that trickles
            bytes cannot hold a request longer than this.
        max_bytes: Largest accepted body.
        policy: Which addresses may be fetched (see :class:`AddressPolicy`). The default allows every address:
            the library, the command line and the notebooks act for the user on the user's own machine. The
            HTTP service, which acts for its clients, refuses internal addresses unless told otherwise.
        user_agent: Sent with the request.
    """

    timeout: float = 10.0
    deadline: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    policy: AddressPolicy = AddressPolicy(allow_private=True)
    user_agent: str = _USER_AGENT


def fetch_url(url: str, config: FetchConfig | None = None) -> bytes:
    """Download a query image from an http(s) URL.

    Args:
        url: The address.
        config: Limits.

    Returns:
        The body bytes.

    Raises:
        BadURLError: For another scheme, no host, or a refused (internal) address.
        FetchError: For a network error or timeout, an HTTP error status, a body that is not an
            image, or one over the size limit.
    """
    config = config or FetchConfig()
    url = check_url(url, policy=config.policy)
    host = urllib.parse.urlsplit(url).hostname or url
    req = urllib.request.Request(url, headers={"User-Agent": config.user_agent, "Accept": "image/*"})
    deadline = _Deadline(config.deadline)
    opener = build_opener(read_timeout=config.timeout, policy=config.policy, deadline=deadline)
    connecting = True
    timer = threading.Timer(config.deadline, deadline.expire)
    timer.daemon = True
    timer.start()
    try:
        with opener.open(req, timeout=config.timeout) as resp:
            connecting = False
            ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not ctype.startswith("image/"):
                raise FetchError(f"{url} did not return an image (it answered {ctype or 'no content type'}); "
                                 "give the address of the image itself, not of a web page")
            length = parse_int(resp.headers.get("Content-Length") or "")
            if length is not None and length > config.max_bytes:
                raise FetchError(f"The image at {url} is too large ({length:,} bytes; "
                                 f"the limit is {config.max_bytes:,})")
            data = bytearray()
            while len(data) <= config.max_bytes:
                deadline.rearm(config.timeout)
                chunk = resp.read1(min(65536, config.max_bytes + 1 - len(data)))
                if not chunk:
                    break
                data += chunk
            if deadline.passed:  # the timer shut the socket: what was read is cut short
                raise TimeoutError(f"the fetch took longer than {config.deadline:g} s")
            if length is not None and len(data) < length:
                raise http.client.IncompleteRead(bytes(data), length - len(data))
    except (BadURLError, FetchError):
        raise
    except urllib.error.HTTPError as exc:
        raise FetchError(f"{host} answered HTTP {exc.code} {exc.reason} for {url}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        if deadline.passed:
            raise FetchError(f"Fetching {url} took longer than {config.deadline:g} s; try another address") from exc
        connecting = connecting and deadline.sock is None  # a socket exists once connected
        why = describe_network_error(exc, timeout=config.timeout, read_timeout=config.timeout, connecting=connecting)
        raise FetchError(f"Could not reach {host} ({why})" if connecting else f"Fetching {url} failed: {why}") from exc
    finally:
        timer.cancel()
    if len(data) > config.max_bytes:
        raise FetchError(f"The image at {url} is too large (over {config.max_bytes:,} bytes)")
    if not data:
        raise FetchError(f"{url} returned no data")
    logger.debug("Fetched %d bytes from %s", len(data), url)
    return bytes(data)
