"""The HTTP search service, over real HTTP.

A real server is started with the CLI (``similar-images serve``, a uvicorn
subprocess) on a free loopback port, against the real ``small_db`` (48 COCO
photos, MobileNetV2 with real weights), and always terminated. URL queries
are served by a real HTTP server thread on 127.0.0.1.
"""

from __future__ import annotations

import io
import os
import re
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import HOSTED_ITEM, SLOW_ANSWER_S
from helpers import free_port, running_process
from PIL import Image

from similar_images import Database
from similar_images.cli import main
from similar_images.service import ENV_PREFIX, ServeConfig, create_app

pytestmark = pytest.mark.slow

MAX_UPLOAD_MB = 1
FETCH_TIMEOUT = 2.0
START_TIMEOUT = 300.0


class RunningServer:
    """A ``similar-images serve`` subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc = proc
        self.url = url
        self.log = log

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=60, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=60, **kw)


@contextmanager
def serve(db: Path, tmp: Path, *extra: str) -> Iterator[RunningServer]:
    """Start the CLI server on a free port, wait for /health, and always stop it."""
    port = free_port()
    log = tmp / f"server-{port}.log"
    cmd = [sys.executable, "-c", "from similar_images.cli import main; main()", "serve", str(db),
           "--port", str(port), "--max-upload-mb", str(MAX_UPLOAD_MB), "--fetch-timeout", str(FETCH_TIMEOUT), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    url = f"http://127.0.0.1:{port}"
    try:
        with running_process(cmd, env=env, log=log, timeout=START_TIMEOUT,
                             ready=lambda: httpx.get(url + "/health", timeout=5).status_code == 200) as proc:
            yield RunningServer(proc, url, log)
    except RuntimeError as exc:
        pytest.fail(f"the server did not start: {exc}")


@pytest.fixture(scope="module")
def server(small_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # the URL queries of these tests go to a server on 127.0.0.1: internal addresses must be allowed
    with serve(small_db, tmp_path_factory.mktemp("server"), "--allow-private-urls") as s:
        yield s


def assert_error(r: httpx.Response, status: int, code: str | None = None, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == status and body["error"] and isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["error"] == code, body
    for w in words:
        assert w.lower() in body["detail"].lower(), body
    return body


def check_results(body: dict[str, Any], db: Database, k: int) -> None:
    res = body["results"]
    assert body["count"] == len(res) == k
    assert [r["rank"] for r in res] == list(range(1, k + 1))
    scores = [r["score"] for r in res]
    assert scores == sorted(scores, reverse=True)
    for r in res:
        assert r["path"] == db.items[r["id"]]
        assert r["image_url"] == f"/images/{r['id']}"
    assert body["search_ms"] >= 0 and body["total_ms"] >= body["search_ms"] and body["elapsed_ms"] > 0


# ------------------------------------------------------------------ health, docs
def test_health_reports_the_worker_and_database(server: RunningServer, db: Database) -> None:
    h = server.get("/health").json()
    assert h["status"] == "ok"
    assert h["pid"] == server.proc.pid  # one worker: uvicorn serves in the CLI process
    assert h["items"] == len(db) == 48
    assert h["model"] == "mobilenetv2" and h["dim"] == 1280 and h["kind"] == "image"
    assert h["limits"]["max_upload_bytes"] == MAX_UPLOAD_MB * 1024 * 1024


def test_openapi_and_docs(server: RunningServer) -> None:
    spec = server.get("/openapi.json").json()
    assert {"get", "post"} <= set(spec["paths"]["/search"])
    assert "/images/{item_id}" in spec["paths"] and "/health" in spec["paths"]
    content = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    docs = server.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")


_EXTERNAL = re.compile(r"""\b(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def test_docs_page_works_offline(server: RunningServer) -> None:
    """/docs is rendered on the server from the OpenAPI description: nothing loads from a CDN."""
    docs = server.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
    page = docs.text
    assert "/search" in page and "POST" in page and "GET" in page and "/images/{item_id}" in page
    assert "multipart/form-data" in page and "application/json" in page and "image/*" in page  # request bodies
    assert "Number of results" in page and "413" in page and "Body too large" in page  # parameters, responses
    assert 'href="/openapi.json"' in page
    assert not _EXTERNAL.findall(page), _EXTERNAL.findall(page)
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    assert "default-src 'none'" in docs.headers["content-security-policy"]
    assert server.get("/redoc").status_code == 404  # FastAPI's CDN pages are off
    assert server.get("/docs/oauth2-redirect").status_code == 404
    assert server.get("/openapi.json").json()["paths"]["/search"]["post"]


# ---------------------------------------------------------------------- search
def test_search_by_id_matches_the_library(server: RunningServer, db: Database) -> None:
    for item in (0, 17, 47):
        r = server.get("/search", params={"id": item, "k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        check_results(body, db, 5)
        assert body["query"] == {"type": "id", "id": item} and body["query_id"] == item
        assert body["results"][0]["id"] == item and body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
        expected = db.search(item, 5)
        assert [m["id"] for m in body["results"]] == expected.ids
        assert np.allclose([m["score"] for m in body["results"]], expected.scores, atol=1e-5)
    default = server.get("/search", params={"id": 3}).json()
    assert default["count"] == 8  # default k


def test_search_by_id_in_post_bodies(server: RunningServer) -> None:
    by_get = server.get("/search", params={"id": 9, "k": 4}).json()["results"]
    by_json = server.post("/search", json={"id": 9, "k": 4}).json()["results"]
    by_form = server.post("/search", data={"id": "9", "k": "4"}).json()["results"]
    assert by_get == by_json == by_form


def test_search_by_uploaded_image(server: RunningServer, db: Database) -> None:
    data = Path(db.items[5]).read_bytes()
    r = server.post("/search", files={"file": ("query.jpg", data, "image/jpeg")}, data={"k": "6"})
    assert r.status_code == 200, r.text
    body = r.json()
    check_results(body, db, 6)
    assert body["query"] == {"type": "upload", "bytes": len(data), "filename": "query.jpg"}
    # The photo itself is in the database: same preprocessing, same vector.
    assert body["results"][0]["id"] == 5 and body["results"][0]["score"] > 0.999
    # A raw image body with k in the query string gives the same answer.
    raw = server.post("/search", content=data, headers={"Content-Type": "image/jpeg"}, params={"k": 6})
    assert raw.status_code == 200 and raw.json()["results"] == body["results"]


def test_search_by_modified_upload_still_finds_the_photo(server: RunningServer, db: Database) -> None:
    img = Image.open(db.items[20]).convert("RGB")
    img = img.resize((img.width // 2, img.height // 2)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    body = server.post("/search", files={"file": ("q.png", buf.getvalue(), "image/png")}).json()
    assert body["results"][0]["id"] == 20
    assert 0.5 < body["results"][0]["score"] < 0.9999


def test_concurrent_uploads_get_their_own_answers(server: RunningServer, db: Database) -> None:
    """Queries that share a model batch must each get their own results."""
    items = list(range(0, 48, 3))

    def one(i: int) -> int:
        r = server.post("/search", files={"file": ("q.jpg", Path(db.items[i]).read_bytes(), "image/jpeg")},
                        data={"k": "1"})
        assert r.status_code == 200, r.text
        return int(r.json()["results"][0]["id"])

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(one, items)) == items


def test_search_by_url(server: RunningServer, image_host: str) -> None:
    url = image_host + "/photo.jpg"
    for r in (server.post("/search", json={"url": url, "k": 3}),
              server.post("/search", data={"url": url, "k": "3"}),
              server.get("/search", params={"url": url, "k": 3})):
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query"]["type"] == "url" and body["query"]["url"] == url
        assert body["results"][0]["id"] == HOSTED_ITEM and body["results"][0]["score"] > 0.999


# ---------------------------------------------------------------------- errors
def test_url_errors(server: RunningServer, image_host: str) -> None:
    for bad in ("file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "gopher://x/", "/etc/passwd", "javascript:alert(1)"):
        assert_error(server.post("/search", json={"url": bad}), 400, "bad_url", "http")
    assert_error(server.get("/search", params={"url": "file:///etc/hosts"}), 400, "bad_url")
    # nothing listens on this port
    assert_error(server.post("/search", json={"url": f"http://127.0.0.1:{free_port()}/x.jpg"}), 502,
                 "url_fetch_failed", "could not reach")
    assert_error(server.post("/search", json={"url": image_host + "/missing.jpg"}), 502, "url_fetch_failed", "404")
    assert_error(server.post("/search", json={"url": image_host + "/page.html"}), 502, "url_fetch_failed",
                 "not return an image")
    assert_error(server.post("/search", json={"url": image_host + "/to-file"}), 502, "url_fetch_failed", "redirect")
    assert_error(server.post("/search", json={"url": image_host + "/broken.jpg"}), 415, "not_an_image")
    t0 = time.monotonic()
    assert_error(server.post("/search", json={"url": image_host + "/slow.jpg"}), 502, "url_fetch_failed", "timed out")
    assert time.monotonic() - t0 < SLOW_ANSWER_S


def test_oversized_uploads_get_413(server: RunningServer) -> None:
    limit = MAX_UPLOAD_MB * 1024 * 1024
    big = os.urandom(limit + 200_000)
    assert_error(server.post("/search", files={"file": ("big.jpg", big, "image/jpeg")}), 413, "too_large")
    assert_error(server.post("/search", content=big, headers={"Content-Type": "image/jpeg"}), 413, "too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must cap its read
        for _ in range(limit // 50_000 + 10):
            yield b"\xff" * 50_000

    assert_error(server.post("/search", content=chunks(), headers={"Content-Type": "image/jpeg"}), 413, "too_large")
    # A huge declared body is refused at once, before a byte of it is sent.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 5000000000\r\n\r\n")
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]


def test_bad_images_get_415(server: RunningServer, db: Database) -> None:
    jpeg = Path(db.items[2]).read_bytes()
    for name, data in (("garbage.jpg", b"\x00\x01garbage bytes, not an image" * 40),
                       ("truncated.jpg", jpeg[: len(jpeg) // 3]),
                       ("empty.jpg", b"")):
        assert_error(server.post("/search", files={"file": (name, data, "image/jpeg")}), 415, "not_an_image")
    assert_error(server.post("/search", content=b"%PDF-1.4 not an image", headers={"Content-Type": "image/png"}),
                 415, "not_an_image")
    assert_error(server.post("/search", content=png_bomb(), headers={"Content-Type": "image/png"}), 415,
                 "not_an_image", "pixels")
    assert_error(server.post("/search", content=b"hello", headers={"Content-Type": "text/plain"}), 415)


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims 2.5 billion pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    assert data[12:16] == b"IHDR"
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def test_unknown_ids_get_404(server: RunningServer) -> None:
    assert_error(server.get("/search", params={"id": 48}), 404, "unknown_id", "48")
    assert_error(server.get("/search", params={"id": -1}), 404, "unknown_id")
    assert_error(server.post("/search", json={"id": 10**9}), 404, "unknown_id")
    assert_error(server.post("/search", data={"id": "4800"}), 404, "unknown_id")
    assert_error(server.get("/images/48"), 404, "unknown_id")
    assert_error(server.get("/images/48", params={"size": "thumb"}), 404, "unknown_id")


@pytest.mark.parametrize("k", ["0", "-3", "abc", "1.5", "1001", "99999999999999999999", ""])
def test_bad_k_gets_422(server: RunningServer, k: str) -> None:
    assert_error(server.get("/search", params={"id": 1, "k": k}), 422, "invalid_parameter", "k")
    if k:
        assert_error(server.post("/search", data={"id": "1", "k": k}), 422, "invalid_parameter", "k")


@pytest.mark.parametrize("k", [0, -1, 1001, 2.5, True, "x", [3], {"n": 1}])
def test_bad_k_in_json_gets_422(server: RunningServer, k: Any) -> None:
    assert_error(server.post("/search", json={"id": 1, "k": k}), 422, "invalid_parameter", "k")


def test_other_bad_requests_get_clear_4xx(server: RunningServer, image_host: str) -> None:
    assert_error(server.get("/search"), 422, "invalid_query", "exactly one")
    assert_error(server.post("/search", json={}), 422, "invalid_query", "exactly one")
    assert_error(server.post("/search"), 422, "invalid_query")
    assert_error(server.post("/search", json={"id": 1, "url": image_host + "/photo.jpg"}), 422, "invalid_query",
                 "exactly one")
    assert_error(server.post("/search", json={"id": 1, "colour": "red"}), 422, "invalid_query", "colour")
    assert_error(server.post("/search", json=[1, 2]), 422, "invalid_query")
    assert_error(server.post("/search", content=b"{not json", headers={"Content-Type": "application/json"}), 400)
    assert_error(server.post("/search", json={"id": "seven"}), 422, "invalid_parameter", "id")
    assert_error(server.get("/search", params={"id": "seven"}), 422, "invalid_parameter", "id")
    assert_error(server.post("/search", json={"id": 1, "exact": "maybe"}), 422, "invalid_parameter", "exact")
    assert_error(server.get("/search", params={"id": 1, "nprobe": 4}), 422, "invalid_parameter", "nprobe")
    assert_error(server.post("/search", data={"url": 5, "file": "not a file"}), 422)
    assert_error(server.get("/no/such/page"), 404, "not_found")
    assert_error(httpx.delete(server.url + "/search"), 405)
    assert_error(server.get("/images/abc"), 422, "invalid_parameter")


def test_exact_search_flag(server: RunningServer) -> None:
    body = server.get("/search", params={"id": 30, "k": 3, "exact": "true"}).json()
    assert body["params"]["exact"] is True and body["results"][0]["id"] == 30


# ---------------------------------------------------------------------- images
def test_images_original_and_thumbnails(server: RunningServer, db: Database) -> None:
    original = Path(db.items[7]).read_bytes()
    r = server.get("/images/7")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == original
    assert server.get("/images/7", params={"size": "original"}).content == original
    w, h = Image.open(io.BytesIO(original)).size
    for size, side in (("thumb", 256), ("64", 64), ("1024", min(1024, max(w, h)))):
        t = server.get("/images/7", params={"size": size})
        assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
        img = Image.open(io.BytesIO(t.content))
        assert img.format == "JPEG" and max(img.size) == side
        assert abs(img.width / img.height - w / h) < 0.05  # aspect ratio kept
        assert len(t.content) < len(original) or side == max(w, h)
    for bad in ("5", "2000", "big", "-64"):
        assert_error(server.get("/images/7", params={"size": bad}), 422, "invalid_parameter", "size")


def test_no_server_error_was_ever_answered(server: RunningServer) -> None:
    """Runs after the tests above (file order): no request of theirs produced a 500 or a traceback."""
    log = server.log.read_text()
    assert '" 200' in log  # the access log is there
    assert '" 500' not in log and "Traceback" not in log, log[-3000:]


# --------------------------------------------------------------------- workers
def test_two_workers_share_the_database(small_db: Path, tmp_path: Path) -> None:
    with serve(small_db, tmp_path, "--workers", "2", "--no-access-log") as srv:
        pids: set[int] = set()
        deadline = time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            with httpx.Client(timeout=30) as client:  # a new connection each time
                pids.add(client.get(srv.url + "/health").json()["pid"])
        assert len(pids) == 2, f"only {pids} answered"
        for pid in pids:  # both are worker processes of the CLI's uvicorn supervisor
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert ppid == srv.proc.pid != pid

        items = Database.open(small_db, load_index=False).items

        def one(i: int) -> tuple[int, int]:
            r = httpx.post(srv.url + "/search", files={"file": ("q.jpg", Path(items[i]).read_bytes(), "image/jpeg")},
                           timeout=60)
            assert r.status_code == 200, r.text
            return i, r.json()["results"][0]["id"]

        with ThreadPoolExecutor(4) as pool:
            assert all(i == top for i, top in pool.map(one, range(0, 48, 6)))
    assert srv.proc.returncode is not None
    deadline = time.monotonic() + 20
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids), "a worker outlived the server"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


# ------------------------------------------------------------------------- CLI
def test_cli_refuses_bad_databases_and_weights(tmp_path: Path, small_db: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["serve", str(tmp_path / "missing")])
    assert r.exit_code != 0 and "does not exist" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(main, ["serve", str(tmp_path / "empty")])
    assert r.exit_code != 0 and "No database" in r.output
    r = runner.invoke(main, ["serve", str(small_db), "--weights", str(tmp_path / "nope.h5")])
    assert r.exit_code != 0 and "Weights file not found" in r.output
    r = runner.invoke(main, ["serve", str(small_db), "--port", "70000"])
    assert r.exit_code != 0
    help_text = runner.invoke(main, ["serve", "--help"]).output
    assert "127.0.0.1" in help_text and "--workers" in help_text


# --------------------------------------------------------- app factory (in-process)
def test_config_round_trips_through_the_environment(small_db: Path) -> None:
    config = ServeConfig(db=small_db, weights="random", max_upload_bytes=1234, fetch_timeout=2.5, allow_urls=False,
                         max_k=50, batch_queries=False)
    env = config.to_env()
    assert env[ENV_PREFIX + "DB"] == str(small_db.resolve())
    assert ServeConfig.from_env(env) == config
    with pytest.raises(ValueError, match=ENV_PREFIX + "DB"):
        ServeConfig.from_env({})
    with pytest.raises(ValueError, match="MAX_K"):
        ServeConfig.from_env({**env, ENV_PREFIX + "MAX_K": "many"})
    with pytest.raises(ValueError, match="max_k"):
        ServeConfig(db=small_db, max_k=0)


def test_app_factory_with_testclient(small_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The factory reads its settings from the environment (as uvicorn workers do); id queries need no model."""
    from fastapi.testclient import TestClient

    for key, value in ServeConfig(db=small_db, allow_urls=False, max_k=5, warmup=False).to_env().items():
        monkeypatch.setenv(key, value)
    with TestClient(create_app()) as client:
        h = client.get("/health").json()
        assert h["pid"] == os.getpid() and h["model_calls"] == 0 and h["limits"]["urls"] is False
        body = client.get("/search", params={"id": 2, "k": 5}).json()
        assert body["results"][0]["id"] == 2 and body["count"] == 5
        assert_error(client.get("/search", params={"id": 2, "k": 6}), 422, "invalid_parameter")
        assert_error(client.post("/search", json={"url": "http://127.0.0.1/x.jpg"}), 403, "urls_disabled")
        assert client.get("/images/2", params={"size": "32"}).headers["content-type"] == "image/jpeg"
        assert client.get("/health").json()["model_calls"] == 0  # no query needed the model
