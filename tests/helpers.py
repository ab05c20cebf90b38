"""Helpers shared by the tests and the benchmarks: local HTTP servers, free ports, processes that are always
stopped (their whole process group), a tiny real text encoder, and edited copies of photos (planted
near-duplicates). Everything listens on 127.0.0.1 only.

Benchmarks import this module with ``sys.path.insert(0, "tests")``.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from similar_images._util.io import write_bytes
from similar_images.errors import ConfigError
from similar_images.sources.images import load_image

__all__ = ["Route", "serving", "http_server", "free_port", "closed_port", "running_process", "stop_process",
           "assets_dir", "plugin_env", "trigram_encoder", "send_head", "EDITS", "edited_copy"]

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"


def assets_dir() -> Path:
    """The offline assets: ``SIMILAR_IMAGES_ASSETS``, or ``../shared/assets`` from the project root."""
    return Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets")).resolve()


def plugin_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess that knows the test models (``tiny``): this package and
    ``tests/plugins`` on ``PYTHONPATH``, ``SIMILAR_IMAGES_PLUGINS=tiny_model``, TensorFlow's logs quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), str(ROOT), env.get("PYTHONPATH", "")])
    env["SIMILAR_IMAGES_PLUGINS"] = "tiny_model"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env


@dataclass
class Route:
    """What a local server answers for one path.

    Attributes:
        body: The body.
        content_type: Its ``Content-Type``.
        status: The HTTP status.
        headers: More headers (``Location`` for a redirect ...).
        delay: Seconds to wait before answering.
        trickle: Seconds between the body's bytes (a server that sends one byte at a time); ``None``: all at once.
        length: The ``Content-Length`` announced (default: the body's length).
    """

    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    trickle: float | None = None
    length: int | None = None


def redirect(location: str, status: int = 302) -> Route:
    """A route that redirects to ``location``."""
    return Route(status=status, content_type="text/plain", headers={"Location": location})


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: Mapping[str, Route] = {}
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        route = self.routes.get(self.path.split("?", 1)[0]) or Route(b"not found", "text/plain", 404)
        try:
            if route.delay:
                time.sleep(route.delay)
            self.send_response(route.status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(route.length if route.length is not None else len(route.body)))
            for name, value in route.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if route.trickle is None:
                self.wfile.write(route.body)
                return
            for i in range(len(route.body)):
                self.wfile.write(route.body[i:i + 1])
                self.wfile.flush()
                time.sleep(route.trickle)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass

    def log_message(self, *args: object) -> None:
        pass


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def send_head(handler: http.server.BaseHTTPRequestHandler, size: int, range_header: str | None,
              content_type: str = "application/octet-stream") -> tuple[int, int] | None:
    """Send the status line and headers of a GET for a body of ``size`` bytes, honouring a ``Range`` header
    (``bytes=a-b``, ``a-`` or ``-n``): 206 with ``Content-Range``; 416 from past the end; 400 if malformed;
    200 without one.

    Returns:
        The part of the body to send, ``(start, stop)`` (``stop`` excluded), or ``None`` when the answer is
        complete (416, 400).
    """
    start, stop, status = 0, size, 200
    if range_header:
        m = _RANGE.match(range_header)
        if not m or not (m.group(1) or m.group(2)):
            handler.send_error(400)
            return None
        if m.group(1):
            start = int(m.group(1))
            stop = min(int(m.group(2)) + 1, size) if m.group(2) else size
        else:
            start = max(0, size - int(m.group(2)))
        if start >= size:
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{size}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        status = 206
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(stop - start))
    handler.send_header("Accept-Ranges", "bytes")
    if status == 206:
        handler.send_header("Content-Range", f"bytes {start}-{stop - 1}/{size}")
    handler.end_headers()
    return start, stop


@contextlib.contextmanager
def serving(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 with ``handler``, on a free port; yields its base URL and stops it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def http_server(routes: Mapping[str, Route]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering ``routes`` (path -> :class:`Route`); yields its base URL."""
    with serving(type("Handler", (_Handler,), {"routes": dict(routes)})) as url:
        yield url


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (connections are refused)."""
    return free_port()


def stop_process(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stop a process started in its own session: SIGTERM to its group, then SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: it and its children only
        proc.wait(timeout=10)


@contextlib.contextmanager
def running_process(cmd: list[str], *, ready: Callable[[], bool], log: Path, timeout: float = 300.0,
                    env: Mapping[str, str] | None = None, cwd: Path | None = None,
                    poll: float = 0.5) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` in its own session (output to ``log``), wait until ``ready()`` is true, and always stop it.

    Raises:
        RuntimeError: If the process exits, or is not ready within ``timeout`` seconds (with the log's end).
    """
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=dict(env) if env is not None else None,
                                cwd=cwd, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(Exception):  # not listening yet: connection errors of any client library
                if ready():
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready within {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(poll)
        yield proc
    finally:
        stop_process(proc)


def trigram_encoder(dim: int = 64, fail_after: list[int] | None = None) -> Callable[[str | None], Any]:
    """The loader of a real (if crude) text encoder for a ``TextEncoderSpec``: hashed character trigrams, ``dim``-d.
    ``fail_after[0]`` batches, then it raises ``KeyboardInterrupt`` (an interrupted build)."""

    def load(_source: str | None) -> Callable[[Sequence[str]], np.ndarray]:
        def encode(batch: Sequence[str]) -> np.ndarray:
            if fail_after is not None:
                if fail_after[0] <= 0:
                    raise KeyboardInterrupt("simulated interruption")
                fail_after[0] -= 1
            out = np.zeros((len(batch), dim), dtype=np.float32)
            for r, t in enumerate(batch):
                t = f"  {t.lower()} "
                for i in range(len(t) - 2):
                    out[r, hash(t[i:i + 3]) % dim] += 1.0
            return out

        return encode

    return load


# ---------------------------------------------------------------------------- planted near-duplicates
#: Edits used to plant near-duplicates in tests, benchmarks and demos.
EDITS = ("exact", "resize", "jpeg70", "crop10")


def edited_copy(source: str | Path, dest: str | Path, edit: str) -> Path:
    """Write an edited copy of an image, to plant a known near-duplicate.

    Args:
        source: The original image.
        dest: Where to write the copy (JPEG for every edit but ``exact``).
        edit: ``"exact"`` (byte copy), ``"resize"`` (half size), ``"jpeg70"``
            (re-encoded at JPEG quality 70) or ``"crop10"`` (central 90% of
            each side, i.e. a 10% crop).

    Returns:
        ``dest``.

    Raises:
        ConfigError: For an unknown edit.
        ImageLoadError: If ``source`` cannot be decoded.
    """
    if edit not in EDITS:
        raise ConfigError(f"edit must be one of {', '.join(EDITS)}, got {edit!r}")
    dest = Path(dest)
    if edit == "exact":
        write_bytes(dest, Path(source).read_bytes())
        return dest
    img = load_image(source)
    w, h = img.size
    quality = 90
    if edit == "resize":
        img = img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)
    elif edit == "jpeg70":
        quality = 70
    else:
        dx, dy = round(w * 0.05), round(h * 0.05)
        img = img.crop((dx, dy, w - dx, h - dy))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    write_bytes(dest, buf.getvalue())
    return dest
