"""The service under a hostile client: slow URLs and stalled uploads do not starve other requests, deeply nested
JSON is a 400 on a connection that stays usable, and URL queries never reach internal addresses unless allowed
(issue 12, points 10 to 12). Everything listens on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import socket
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_image
from helpers import Route, closed_port, free_port, http_server, plugin_env, redirect, running_process

from similar_images import ExtractConfig, IndexConfig
from similar_images._util.http import AddressPolicy, FetchConfig, check_url, fetch_url, host_address, is_internal
from similar_images.errors import BadURLError, FetchError
from similar_images.service import ENV_PREFIX, ServeConfig, create_app
from similar_images.store import extract_features

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


# ----------------------------------------------------------------------------- issue 20: every route, every field
#: Text values that a client may send in any field: integers that pass ``str.isdigit()`` but not ``int()``, other
#: numbers ``int()`` or pydantic take that are no ASCII integers, too long numbers, and URLs that must be refused
#: before any connection (none needs a name lookup). Bytes are sent as they are (not valid UTF-8).
HOSTILE_TEXT: list[str | bytes] = [
    "--1", "²", "١٢", "１", "+-1", "1_000", "1.0", "1e3", "0x10", "nan", "inf", "true", "[1]", "\u200b1", "1 1",
    "-1", "0", "", " ", "9" * 19, "9" * 5000, "1\x00", "\n", b"\xff\xfe", b"caf\xe9",
    "http://[::1", "http://[::1]x/", "http://[::127.0.0.1]/a.png", "http://[64:ff9b::7f00:1]/a.png",
    "http://[::ffff:127.0.0.1]/a.png", "http://[2002:7f00:1::]/a.png", "http://0x7f.1/a.png", "http://127.1/a.png",
    "http://2130706433/a.png", "http://localhost./a.png", "http://0.0.0.0/a.png", "http://999.1.1.1/a.png",
    "http://\uff11\uff12\uff17.0.0.1/a.png", "http://", "ftp://127.0.0.1/a.png", "javascript:alert(1)",
    "http://" + "a" * 3000 + ".png", "é" * 3000,
]
#: Field names nobody expects: not UTF-8 (raw, or a lone surrogate escaped in JSON), control characters, very long,
#: and very many.
HOSTILE_NAMES: list[list[str | bytes]] = [[b"\xff\xfe"], ["\\udcff"], ["a\nb\r\x00"], ["n" * 5000],
                                          [f"f{i}" for i in range(2000)]]
#: JSON values of other types than text.
HOSTILE_JSON: list[object] = [None, True, False, 1.5, -1, 0, 10**30, -(10**30), 1e308, [], {}, [1], {"a": 1}]


def _quoted(value: str | bytes) -> str:
    import urllib.parse

    return urllib.parse.quote(value, safe="")


def _multipart(fields: dict[Any, str | bytes], boundary: str = "fuzzboundary") -> bytes:
    """A multipart/form-data body of plain fields, names and values sent as they are (bytes: not UTF-8)."""
    out = b""
    for name, value in fields.items():
        raw_name = name if isinstance(name, bytes) else name.encode("utf-8", "surrogatepass")
        data = value if isinstance(value, bytes) else value.encode()
        out += (b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="' + raw_name + b'"\r\n\r\n'
                + data + b"\r\n")
    return out + f"--{boundary}--\r\n".encode()


#: Fields that name the query (sent alone, so that they are read); the others are sent beside a valid query.
_QUERY_FIELDS = {"id", "query_id", "url", "file"}


def _fuzz_requests(schema: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """``(label, method, url, httpx keywords)`` of every hostile value in every field of every route of the
    OpenAPI description, in every content type a route takes; a query field alone (with the route's required
    parameters), any other beside a valid query."""
    import urllib.parse

    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            params = op.get("parameters", [])
            required = {p["name"]: "1" for p in params if p.get("required")}
            names = {p["name"] for p in params}
            valid_query = next(({n: "2"} for n in ("id", "query_id") if n in names and n not in required), {})
            in_path = {p["name"] for p in params if p["in"] == "path"}

            def url_of(values: dict[str, str | bytes], path: str = path, in_path: set[str] = in_path) -> str:
                target = path
                for name in in_path:
                    target = target.replace("{" + name + "}", _quoted(values[name]))
                query = {k: v for k, v in values.items() if k not in in_path}
                return target + ("?" + urllib.parse.urlencode(query) if query else "")

            for p in params:
                base = required if p["name"] in _QUERY_FIELDS else {**required, **valid_query}
                for value in HOSTILE_TEXT:
                    yield (f"{method.upper()} {path} {p['name']}={value!r:.40}", method, url_of(
                        {**base, p["name"]: value}), {})
            content = (op.get("requestBody") or {}).get("content", {})
            for media, body in content.items():
                props = list(body.get("schema", {}).get("properties", {}))
                target = url_of(required)
                for name in props:
                    base = {} if name in _QUERY_FIELDS else {"id": 2}
                    for value in HOSTILE_TEXT + HOSTILE_JSON:
                        label = f"{method.upper()} {path} {media} {name}={value!r:.40}"
                        if media == "application/json":
                            if isinstance(value, bytes):
                                raw = b'{"%s": "%s"}' % (name.encode(), value)
                                yield label, method, target, {"content": raw, "headers": {
                                    "Content-Type": media}}
                            else:
                                yield label, method, target, {"json": {**base, name: value}}
                        elif isinstance(value, (str, bytes)):
                            fields = {k: str(v) for k, v in base.items()}
                            if media == "multipart/form-data":
                                yield label, method, target, {"content": _multipart({**fields, name: value}),
                                                              "headers": {"Content-Type": f"{media}; boundary="
                                                                                          "fuzzboundary"}}
                            else:
                                yield label, method, target, {"content": urllib.parse.urlencode(
                                    {**fields, name: value}), "headers": {"Content-Type": media}}
                for names in HOSTILE_NAMES:  # unknown fields
                    label = f"{method.upper()} {path} {media} field names {names[0]!r:.30} ({len(names)})"
                    if media == "application/json":
                        yield label, method, target, {"content": b"{" + b", ".join(
                            b'"%s": 1' % (n.encode("utf-8", "surrogatepass") if isinstance(n, str) else n)
                            for n in names) + b"}", "headers": {"Content-Type": media}}
                    elif media == "multipart/form-data":
                        yield label, method, target, {"content": _multipart(dict.fromkeys(names, "1")), "headers": {
                            "Content-Type": f"{media}; boundary=fuzzboundary"}}
                    elif media == "application/x-www-form-urlencoded":
                        yield label, method, target, {"content": urllib.parse.urlencode(dict.fromkeys(names, "1")),
                                                      "headers": {"Content-Type": media}}
                if media.startswith("image/"):  # the body is the image; the fields go in the query string
                    for name in ("id", "url", "k", "exact", "nprobe", "ef_search"):
                        for value in HOSTILE_TEXT:
                            yield (f"{method.upper()} {path} image body, query {name}={value!r:.40}", method,
                                   url_of({**required, name: value}),
                                   {"content": b"\x89PNG not really", "headers": {"Content-Type": "image/png"}})


def test_every_field_of_every_route_answers_hostile_values_with_a_one_line_4xx(tiny_db: Path) -> None:
    """Issue 20: values that pass ``str.isdigit()`` but not ``int()`` (``"--1"``, ``"²"``) answered 500 in JSON, the
    query string, forms and multipart, and so did a malformed IPv6 URL (``http://[::1``). Every route of the
    OpenAPI description (a new route is covered without touching this test), every field, every content type:
    never a 5xx, always a JSON error of one bounded line (or a 200)."""
    import tiny_model  # noqa: F401
    from fastapi.testclient import TestClient

    app = create_app(ServeConfig(db=tiny_db, warmup=False, fetch_timeout=2, fetch_deadline=3))
    cases = list(_fuzz_requests(app.openapi()))
    routes = {label.split(" ")[0] + " " + label.split(" ")[1] for label, *_ in cases}
    assert {"GET /search", "POST /search", "GET /explain", "GET /images/{item_id}"} <= routes, routes
    failures = []
    with TestClient(app, raise_server_exceptions=False) as client:
        for label, method, url, kw in cases:
            r = client.request(method, url, **kw)
            if r.status_code == 200:
                continue
            try:
                body = r.json()
                ok = (r.status_code < 500 and set(body) == {"error", "detail", "status"} and
                      isinstance(body["detail"], str) and "\n" not in body["detail"] and len(body["detail"]) < 600)
            except ValueError:
                ok = False
            if not ok:
                failures.append(f"{label}: {r.status_code} {r.text[:300]}")
    print(f"service fuzz: {len(cases)} cases over {len(routes)} routes, {len(failures)} failed")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:40])


@pytest.mark.parametrize("value", ["--1", "²", "+-3", "1_0", "9" * 19])
def test_integers_that_pass_isdigit_but_not_int_are_a_422_naming_the_field(tiny_db: Path, value: str) -> None:
    """Issue 20: ``"--1"`` and ``"²"`` pass ``str.isdigit()`` (after ``lstrip("+-")``) but not ``int()``: 500 in
    JSON, the query string, forms and multipart, for id, k and nprobe. One parser for all: 422, naming the field."""
    import tiny_model  # noqa: F401
    from fastapi.testclient import TestClient

    with TestClient(create_app(ServeConfig(db=tiny_db, warmup=False)), raise_server_exceptions=False) as client:
        for name in ("id", "k", "nprobe"):
            fields = {"id": "2", name: value}
            answers = {
                "GET query": client.get("/search", params=fields),
                "POST query": client.post("/search", params=fields, json={}),
                "JSON": client.post("/search", json={**fields, "id": value if name == "id" else 2}),
                "form": client.post("/search", data=fields),
                "multipart": client.post("/search", content=_multipart(fields), headers={
                    "Content-Type": "multipart/form-data; boundary=fuzzboundary"}),
            }
            for how, r in answers.items():
                assert r.status_code == 422, (name, how, r.status_code, r.text)
                detail = r.json()["detail"]
                assert detail.startswith(name) and "must be an integer" in detail, (name, how, detail)
        r = client.get("/explain", params={"id": value, "query_id": 1})
        assert r.status_code == 422 and r.json()["detail"].startswith("id:"), r.text
        r = client.get(f"/images/{_quoted(value)}")
        assert r.status_code == 422 and "must be an integer" in r.json()["detail"], r.text


# ----------------------------------------------------------------------------- issue 20: URL checks
#: Spellings of internal addresses that passed the old check (it parsed the host, and looked at IPv4-mapped IPv6
#: only): IPv4-compatible, NAT64 and 6to4 IPv6 addresses carrying 127.0.0.1 or 10.0.0.1, site-local IPv6, local
#: names with a trailing dot, full-width digits. They are refused before any connection, like those of INTERNAL.
NEW_INTERNAL = ["[::127.0.0.1]", "[::7f00:1]", "[64:ff9b::7f00:1]", "[64:ff9b::10.0.0.1]", "[64:ff9b:1::8.8.8.8]",
                "[2002:7f00:1::1]", "[2002:a00:1::]", "[fec0::1]", "localhost.", "a.localhost",
                "\uff11\uff12\uff17.0.0.1"]
OTHER_SPELLINGS = ["0x7f.1", "0177.0.0.1", "017700000001", "127.0.0.1.", "0", "[::]", "[ff02::1]",
                   "[2001:0:4136:e378:8000:63bf:80ff:fffe]", "100.127.255.255", "198.18.0.1", "240.0.0.1"]


@pytest.mark.parametrize("host", NEW_INTERNAL + OTHER_SPELLINGS)
def test_every_spelling_of_an_internal_address_is_refused_before_connecting(host: str) -> None:
    """Issue 20: the IPv6 spellings of 127.0.0.1 (``[::127.0.0.1]``, NAT64 ``[64:ff9b::…]``) passed the check. The
    URL's host is read as the resolver will read it and refused by :func:`check_url` itself; a closed port shows
    that no connection is tried."""
    url = f"http://{host}:{closed_port()}/cat.jpg"
    policy = AddressPolicy(allow_private=False)
    with pytest.raises(BadURLError, match="loopback, private, link-local or reserved"):
        check_url(url, policy=policy)
    with pytest.raises(BadURLError, match="loopback, private, link-local or reserved"):
        fetch_url(url, FetchConfig(policy=policy, timeout=2, deadline=4))


@pytest.mark.parametrize(("internal", "public"), [("::127.0.0.1", "64:ff9b::8.8.8.8"),
                                                 ("64:ff9b::7f00:1", "2002:808:808::1"),
                                                 ("2002:7f00:1::", "::ffff:8.8.8.8"),
                                                 ("64:ff9b::a9fe:a9fe", "2001:4860:4860::8888")])
def test_ipv6_spellings_are_judged_by_the_ipv4_address_they_carry(internal: str, public: str) -> None:
    """The checks see through the IPv6 spellings rather than refusing them all: a public IPv4 address behind NAT64,
    6to4 or an IPv4-mapped address is public (an IPv6-only server reaches the web through NAT64); an internal one
    is internal."""
    policy = AddressPolicy(allow_private=False)
    with pytest.raises(BadURLError, match="loopback, private"):
        policy.check("example.com", internal)
    policy.check("example.com", public)
    assert is_internal(ipaddress.ip_address(internal)) and not is_internal(ipaddress.ip_address(public))


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1]x/a.png", "http://999.1.1.1/a.png", "http://a\x00b/",
                                 "http://1.2.3.4.5/a.png", "http://[1::2::3]/a.png", "http://ex\udcffample.com/"])
def test_malformed_urls_are_a_bad_url_error(url: str) -> None:
    """Issue 20: ``http://[::1`` raised ValueError (500 in the service, a traceback in the CLI)."""
    with pytest.raises(BadURLError):
        check_url(url)
    with pytest.raises(BadURLError):
        fetch_url(url, FetchConfig(timeout=2, deadline=4))


class _NamesLookPublic(AddressPolicy):
    """The service's policy, except that a host name never looks internal by itself: what is left is the check of
    the addresses it resolves to, right before connecting."""

    def check_host(self, host: str) -> None:
        if host_address(host) is None:
            return
        super().check_host(host)


def test_local_names_are_refused_by_name_and_every_name_again_by_its_addresses() -> None:
    """``localhost.`` (a trailing dot) was looked up and connected to; local names are now refused before the
    lookup. Any other name is checked on the addresses it resolves to, right before connecting (here: a policy
    that lets every name through the first check)."""
    with http_server({"/cat.jpg": Route(b"\x89PNG fake", "image/png")}) as base:
        port = base.rsplit(":", 1)[1]
        policy = AddressPolicy(allow_private=False)
        for name in ("localhost", "localhost.", "LocalHost", "db.localhost"):
            with pytest.raises(BadURLError, match="a local name"):
                check_url(f"http://{name}:{port}/cat.jpg", policy=policy)
        config = FetchConfig(policy=_NamesLookPublic(allow_private=False), timeout=2, deadline=4)
        with pytest.raises(BadURLError, match=r"Refused to fetch from localhost \((127\.0\.0\.1|::1)\)"):
            fetch_url(f"http://localhost:{port}/cat.jpg", config)


# ----------------------------------------------------------------------------- issue 20: /explain in the fetch pool
@contextmanager
def _gated_server(body: bytes) -> Iterator[tuple[str, threading.Event, threading.Semaphore]]:
    """An image host on 127.0.0.1 that holds every request until ``gate`` is set; ``arrived`` counts requests."""
    import http.server

    gate, arrived = threading.Event(), threading.Semaphore(0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            arrived.release()
            gate.wait(60)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/slow.png", gate, arrived
    finally:
        gate.set()
        server.shutdown()
        server.server_close()


def test_explain_fetches_its_url_in_the_capped_pool_and_id_searches_stay_answered(tiny_db: Path) -> None:
    """Issue 20: ``/explain?url=`` fetched in the request threads, outside the cap: 45 slow URLs there held a plain
    ``/search?id=`` for 18 s. Here the server has 4 request threads and 2 fetch threads; 8 explanations of a URL
    that does not answer yet: 2 are fetched, 6 are refused at once (503), and an id search is answered while the
    2 fetches still wait (the host answers only after it)."""
    import anyio
    import tiny_model  # noqa: F401
    from fastapi.testclient import TestClient

    photo = (tiny_db.parent / "images" / "4.png").read_bytes()
    app = create_app(ServeConfig(db=tiny_db, warmup=False, allow_private_urls=True, max_fetches=2,
                                 fetch_timeout=60, fetch_deadline=60))

    async def four_request_threads() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 4

    with _gated_server(photo) as (slow, gate, arrived), TestClient(app, raise_server_exceptions=False) as client, \
            ThreadPoolExecutor(9) as pool:
        client.portal.call(four_request_threads)  # type: ignore[union-attr]
        explains = [pool.submit(client.get, "/explain", params={"id": 1, "url": slow, "format": "json"})
                    for _ in range(8)]
        assert arrived.acquire(timeout=60) and arrived.acquire(timeout=60)  # two fetches reached the host
        refused = wait_for(explains, 6, timeout=30)
        busy = [f.result() for f in refused]
        assert len(busy) == 6 and all(r.status_code == 503 and r.json()["error"] == "busy" for r in busy), busy
        search = pool.submit(client.get, "/search", params={"id": 2, "k": 1})
        try:
            answer = search.result(timeout=30)
        finally:
            held = not gate.is_set()
            gate.set()
        assert held and answer.status_code == 200 and answer.json()["results"][0]["id"] == 2, answer.text
        assert not arrived.acquire(timeout=0), "more URLs were fetched than the fetch threads allow"
        for r in (f.result(timeout=60) for f in explains if f not in refused):
            assert r.status_code in (200, 400), r.text  # explained, or this model has no feature map to show


def wait_for(futures: list[Future[httpx.Response]], count: int, timeout: float) -> list[Future[httpx.Response]]:
    """The first ``count`` futures to finish (fewer if ``timeout`` seconds pass first)."""
    done: list[Future[httpx.Response]] = []
    for future in as_completed(futures, timeout=timeout):
        done.append(future)
        if len(done) == count:
            break
    return done
