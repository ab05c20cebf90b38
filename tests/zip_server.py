"""A local HTTP server (127.0.0.1) for zip archives: byte ranges (``a-b``, ``a-``, ``-n``), a bandwidth limit, and
a truncated or corrupted body, for the streaming-extraction tests and ``benchmarks/bench_first_search.py``."""

from __future__ import annotations

import contextlib
import io
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from helpers import send_head, serving


@dataclass
class ZipServerState:
    """What the server serves and how.

    Attributes:
        data: The archive.
        rate: Bytes per second of each download (a response without a range, or from a byte to the end; other
            ranges, such as the central directory's, are not throttled); ``None``: as fast as it goes.
        cut_at: Close every download (a response without a range, or from a byte to the end) once the archive's
            byte ``cut_at`` is sent (a transfer that keeps breaking there); other ranges are served whole.
        requests: The ``Range`` headers seen (``None`` for none).
    """

    data: bytes = b""
    rate: float | None = None
    cut_at: int | None = None
    requests: list[str | None] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    state: ZipServerState

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        st = self.state
        data, header = st.data, self.headers.get("Range")
        st.requests.append(header)
        span = send_head(self, len(data), header, "application/zip")
        if span is None:
            return
        start, end = span
        download = not header or header.endswith("-")  # no range, or from a byte to the end
        stop = end if st.cut_at is None or not download else max(start, min(end, st.cut_at))
        # With a rate, pieces of at most a twentieth of a second: a small archive must not arrive in one piece.
        chunk = 64 * 1024 if not (st.rate and download) else max(256, min(64 * 1024, int(st.rate / 20)))
        t0 = time.monotonic()
        sent = 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for pos in range(start, stop, chunk):
                piece = data[pos:min(pos + chunk, stop)]
                self.wfile.write(piece)
                sent += len(piece)
                if st.rate and download:
                    ahead = sent / st.rate - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)
            self.wfile.flush()
        if stop < end:
            self.close_connection = True


@contextlib.contextmanager
def zip_server(state: ZipServerState) -> Iterator[str]:
    """Serve ``state.data`` at ``http://127.0.0.1:PORT/zips/val2014.zip`` (any path) and yield that address."""
    with serving(type("Handler", (_Handler,), {"state": state})) as url:
        yield f"{url}/zips/val2014.zip"


def coco_style_zip(photos: Sequence[Path], copies: int = 1, *, compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip like COCO's: ``val2014/COCO_val2014_<12 digits>.jpg`` members (``copies`` of each photo under new
    names)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        zf.writestr(zipfile.ZipInfo("val2014/"), b"")
        n = 0
        for _ in range(copies):
            for photo in photos:
                n += 1
                zf.writestr(f"val2014/COCO_val2014_{n:012d}.jpg", photo.read_bytes())
    return buf.getvalue()
