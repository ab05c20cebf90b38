"""The service under a hostile client: slow URLs and stalled uploads do not starve other requests, deeply nested
JSON is a 400 on a connection that stays usable, and URL queries never reach internal addresses unless allowed
(issue 12, points 10 to 12). Everything listens on 127.0.0.1."""

from __future__ import annotations

import http.client
import socket
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import make_image
from helpers import Route, closed_port, free_port, http_server, plugin_env, redirect, running_process

from similar_images import ExtractConfig, IndexConfig, extract_features
from similar_images._util.http import AddressPolicy, FetchConfig, fetch_url
from similar_images.errors import BadURLError, FetchError
from similar_images.service import ENV_PREFIX, ServeConfig, create_app

LOOPBACK_NAMES = ["127.0.0.1", "localhost", "2130706433", "0x7f000001", "127.1"]
INTERNAL = [*LOOPBACK_NAMES, "[::1]", "10.1.2.3", "192.168.0.1", "172.16.5.4", "169.254.169.254", "100.64.0.1",
            "0.0.0.0", "224.0.0.1", "[fe80::1]", "[::ffff:127.0.0.1]", "[fc00::1]"]


# ----------------------------------------------------------------------------- point 12: address policy
@pytest.mark.parametrize("host", INTERNAL)
def test_internal_addresses_are_refused_before_connecting(host: str) -> None:
    """Point 12: 127.0.0.1, localhost, 2130706433 and 0x7f000001 were all fetched. Nothing listens on the port:
    with the refusing policy the error is the refusal, never a connection attempt."""
    url = f"http://{host}:{closed_port()}/cat.jpg"
    with pytest.raises(BadURLError, match="loopback, private, link-local or reserved"):
        fetch_url(url, FetchConfig(policy=AddressPolicy(allow_private=False), timeout=2, deadline=4))


def test_the_library_default_allows_the_users_own_machine() -> None:
    with http_server({"/cat.jpg": Route(b"\x89PNG fake", "image/png")}) as base:
        port = base.rsplit(":", 1)[1]
        for host in LOOPBACK_NAMES:
            assert fetch_url(f"http://{host}:{port}/cat.jpg") == b"\x89PNG fake", host
        with pytest.raises(BadURLError):
            fetch_url(f"http://localhost:{port}/cat.jpg", FetchConfig(policy=AddressPolicy(allow_private=False)))


class _PublicLoopback(AddressPolicy):
    """A policy that takes the host written ``127.0.0.1`` for a public host (tests can only listen on loopback)
    and checks every other name as the service does."""

    def check(self, host: str, address: str) -> None:
        if host != "127.0.0.1":
            super().check(host, address)


@pytest.mark.parametrize("target", ["localhost", "2130706433", "[::1]", "10.0.0.1"])
def test_a_redirect_to_an_internal_address_is_refused(target: str) -> None:
    """The addresses are checked on every hop, after the name lookup: a public-looking host that redirects to
    loopback (here: a name resolving to 127.0.0.1) is refused at the second hop."""
    with http_server({"/cat.jpg": Route(b"\x89PNG fake", "image/png")}) as inner:
        port = inner.rsplit(":", 1)[1]
        with http_server({"/go": redirect(f"http://{target}:{port}/cat.jpg")}) as outer:
            config = FetchConfig(policy=_PublicLoopback(allow_private=False), timeout=2, deadline=5)
            assert fetch_url(inner + "/cat.jpg", config) == b"\x89PNG fake"  # the first hop alone is fine
            with pytest.raises(BadURLError, match=f"Refused to fetch from {target.strip('[]')}"):
                fetch_url(outer + "/go", config)


def test_a_trickling_server_cannot_outlast_the_deadline() -> None:
    """Point 10: a server sending 1 byte every 2 s held a request for more than 120 s (the timeout applied to each
    read). Here each byte comes well within the read timeout; only the deadline of the whole fetch stops it."""
    body = b"\x89PNG" + b"x" * 200
    with http_server({"/slow.png": Route(body, "image/png", trickle=0.2)}) as base:
        with pytest.raises(FetchError, match="took longer than 1.5 s"):
            fetch_url(base + "/slow.png", FetchConfig(timeout=1.0, deadline=1.5))


# ----------------------------------------------------------------------------- a served database
@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tiny_model  # noqa: F401  (registers the model in this process)

    root = tmp_path_factory.mktemp("service")
    for i in range(12):
        make_image(root / "images" / f"{i}.png", seed=i)
    db = root / "db"
    extract_features(root / "images", db, ExtractConfig(model="tiny", weights="random", verbose=False))
    from similar_images import Database

    Database.open(db).build_index(IndexConfig(factory="Flat", eval_queries=0))
    return db


def test_the_service_refuses_internal_urls_unless_allowed(tiny_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from similar_images import Database

    photo_path = tiny_db.parent / "images" / "3.png"
    photo, photo_id = photo_path.read_bytes(), Database.open(tiny_db).id_of(photo_path)
    with http_server({"/photo.png": Route(photo, "image/png")}) as base:
        port = base.rsplit(":", 1)[1]
        for allow in (False, True):
            for key, value in ServeConfig(db=tiny_db, warmup=False, allow_private_urls=allow).to_env().items():
                monkeypatch.setenv(key, value)
            with TestClient(create_app()) as client:
                assert client.get("/health").json()["limits"]["private_urls"] is allow
                for host in ("127.0.0.1", "localhost", "2130706433", "0x7f000001"):
                    r = client.post("/search", json={"url": f"http://{host}:{port}/photo.png", "k": 1})
                    if allow:
                        assert r.status_code == 200 and r.json()["results"][0]["id"] == photo_id, r.text
                    else:
                        assert r.status_code == 400 and r.json()["error"] == "bad_url", r.text
                        r = client.get("/search", params={"url": f"http://{host}:{port}/photo.png"})
                        assert r.status_code == 400 and "loopback" in r.json()["detail"], r.text


# ----------------------------------------------------------------------------- a real server under load
@contextmanager
def _serve(db: Path, log: Path, *extra: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-c", "from similar_images.cli import main; main()", "serve", str(db), "--port", str(port),
           "--no-access-log", *extra]
    env = {k: v for k, v in plugin_env().items() if not k.startswith(ENV_PREFIX)}
    with running_process(cmd, env=env, log=log, timeout=300,
                         ready=lambda: httpx.get(url + "/health", timeout=5).status_code == 200):
        yield url


@pytest.mark.slow
def test_slow_urls_and_stalled_uploads_do_not_starve_other_requests(tiny_db: Path, tmp_path: Path) -> None:
    """Point 10: 45 requests for a URL sending 1 byte every 2 s filled the worker threads, and /health, id searches
    and /docs all timed out. The fetches now run in their own few threads (more are refused at once with 503) and
    end at their deadline; everything else is answered meanwhile. An upload that stalls gets 408."""
    from similar_images import Database

    photo_path = tiny_db.parent / "images" / "5.png"
    photo, photo_id = photo_path.read_bytes(), Database.open(tiny_db).id_of(photo_path)
    slow_body = b"\x89PNG" + b"x" * 400
    with http_server({"/slow.png": Route(slow_body, "image/png", trickle=0.1)}) as host, \
            _serve(tiny_db, tmp_path / "server.log", "--allow-private-urls", "--max-fetches", "4",
                   "--fetch-timeout", "5", "--fetch-deadline", "6", "--upload-timeout", "3") as url:
        with ThreadPoolExecutor(45) as pool, httpx.Client(base_url=url, timeout=120) as client:
            slow: list[Future[httpx.Response]] = [
                pool.submit(httpx.get, url + "/search", params={"url": host + "/slow.png"}, timeout=120)
                for _ in range(45)]
            refused = 0
            while refused < 41:  # all but the 4 being fetched are refused at once
                done = [f.result() for f in slow if f.done()]
                assert all(r.status_code == 503 and r.json()["error"] == "busy" for r in done), done[:1]
                refused = len(done)
            in_flight = [f for f in slow if not f.done()]
            assert len(in_flight) == 4
            health = client.get("/health")
            by_id = client.get("/search", params={"id": 2, "k": 3})
            docs = client.get("/docs")
            upload = client.post("/search", files={"file": ("q.png", photo, "image/png")}, data={"k": "1"})
            assert not any(f.done() for f in in_flight), "the other requests waited for the slow fetches"
            assert health.status_code == by_id.status_code == docs.status_code == upload.status_code == 200
            assert by_id.json()["results"][0]["id"] == 2 and upload.json()["results"][0]["id"] == photo_id
            for f in in_flight:  # each ends at the fetch deadline, not after 40 s of trickling
                r = f.result()
                assert r.status_code == 502 and "took longer than 6 s" in r.json()["detail"], r.text

        # an upload that stalls after 10 bytes
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                         + photo[:10])
            answer = b""
            while b"not received" not in answer:  # the headers and the body may come in separate packets
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
            answer = answer.decode("latin-1")
        assert answer.startswith("HTTP/1.1 408"), answer[:300]
        assert "not received within 3 s" in answer
        assert httpx.get(url + "/health", timeout=30).status_code == 200


@pytest.mark.slow
def test_deeply_nested_json_is_a_400_and_the_connection_stays_usable(tiny_db: Path, tmp_path: Path) -> None:
    """Point 11: 100k '[' answered 500 (RecursionError) and the next request on the connection was reset."""
    with _serve(tiny_db, tmp_path / "server.log") as url:
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/search", body=b"[" * 60_000, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read().decode()
            assert r.status == 400 and "nested too deeply" in body, body
            conn.request("GET", "/health")  # the same connection
            r = conn.getresponse()
            assert r.status == 200 and b'"status":"ok"' in r.read()
            conn.request("GET", "/search?id=1&k=2")
            r = conn.getresponse()
            assert r.status == 200, r.read()
            r.read()
        finally:
            conn.close()
        huge = httpx.post(url + "/search", content=b"[" * 100_000, headers={"Content-Type": "application/json"},
                          timeout=60)
        assert huge.status_code == 413 and "65,536" in huge.json()["detail"]  # JSON bodies hold a few fields
        assert httpx.get(url + "/health", timeout=30).status_code == 200


def test_start_fetch_refuses_beyond_its_threads(tiny_db: Path) -> None:
    """The fetch threads are bounded: a URL query beyond them is refused at once, and a slot frees when a fetch
    ends (whatever its outcome)."""
    import tiny_model  # noqa: F401

    from similar_images.service.errors import ServiceBusyError
    from similar_images.service.logic import ServiceState

    with http_server({"/slow.png": Route(b"\x89PNG" + b"x" * 16, "image/png", trickle=0.05)}) as host:
        state = ServiceState.load(ServeConfig(db=tiny_db, warmup=False, max_fetches=2, allow_private_urls=True,
                                              fetch_deadline=30))
        try:
            first = state.start_fetch(host + "/slow.png")
            second = state.start_fetch(host + "/slow.png")
            with pytest.raises(ServiceBusyError, match="2 URL queries are being fetched already"):
                state.start_fetch(host + "/slow.png")
            assert first.result(timeout=60).startswith(b"\x89PNG") and second.result(timeout=60)
            bad = state.start_fetch("ftp://example.com/x.png")  # fails at once, and frees its slot
            with pytest.raises(BadURLError):
                bad.result(timeout=60)
            assert state.start_fetch(host + "/slow.png").result(timeout=60)
        finally:
            state.close()
