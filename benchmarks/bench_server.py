"""Load check of the HTTP search service.

Starts ``similar-images serve`` on 127.0.0.1 (a free port), sends a fixed
number of requests from concurrent client threads (each with its own
keep-alive ``httpx`` client) for each scenario, checks every answer, prints
throughput and latency percentiles, and stops the server.

Scenarios:

* ``health``: ``GET /health`` -- the HTTP and framework overhead, the baseline;
* ``id``: ``GET /search?id=N&k=8`` -- a stored vector, no model run;
* ``upload``: ``POST /search`` with a real photo (multipart) -- decoding, a CNN
  forward pass, the index search; the answer's top hit must be the photo itself.

* ``mixed``: a second server (with ``--allow-private-urls``, so that URL queries can reach the local image
  host, and the ``--fetch-deadline``/``--upload-timeout`` given here) gets ``--requests`` requests of every
  kind from ``--concurrency`` clients, ``--hostile`` of them hostile: URLs that trickle one byte at a time,
  uploads that stall after 10 bytes, bodies over the size limit (announced, or chunked without a length),
  malformed JSON (broken, 60,000 levels deep), garbage uploads, unknown content types, integers that pass
  ``str.isdigit()`` but not ``int()`` (``--1``, ``²``) in every content type, malformed URLs (``http://[::1``),
  explanations of a trickling URL (``/explain?url=``, fetched in the same capped threads as URL searches) and
  bodies that are not UTF-8. The legitimate ones (searches by id in GET and POST, uploads, URLs on a fast host,
  /health, /docs) must all succeed with the right answer; their p50/p90/p99 are printed, and every hostile kind's
  answers (status counts): none may be a 500.

With ``--compare-batching`` the upload scenario is compared with a second
server started with ``--no-batching`` (one model call per query); with
``--compare-faiss-threads`` the id scenario with a second server started with
``--faiss-threads 0`` (Faiss' default OpenMP threads instead of one per
search). Both servers are up at once and take turns (``--rounds``), so both
see the same load of a shared machine.

Without ``--db`` a database of the offline COCO photos (256) is built first in
a temporary folder with MobileNetV2 (or ``--model vgg16-avg``), real weights,
and a Flat index.

    python benchmarks/bench_server.py                      # builds a COCO DB, 1,000 requests x 8 clients
    python benchmarks/bench_server.py --db my-db --requests 2000 --workers 2
    python benchmarks/bench_server.py --scenarios mixed --requests 2000 --concurrency 16   # 10% hostile
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import Route, free_port, http_server, running_process  # noqa: E402  (shared with the tests)

CLI = [sys.executable, "-c", "from similar_images.cli import main; main()"]
WEIGHTS = {
    "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
    "vgg16-avg": "vgg16_imagenet_notop.weights.h5",
}


@dataclass
class Outcome:
    name: str
    latencies: list[float] = field(default_factory=list)
    search_ms: list[float] = field(default_factory=list)  # the server's own index-search time
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stopped_by_time: bool = False

    def merge(self, other: Outcome) -> None:
        self.latencies += other.latencies
        self.search_ms += other.search_ms
        self.errors += other.errors
        self.seconds += other.seconds
        self.stopped_by_time |= other.stopped_by_time

    def add(self, err: str | None, seconds: float, server_ms: float | None = None) -> None:
        """Count one request: its latency (and the server's search time), or its error."""
        if err is not None:
            self.errors.append(err)
            return
        self.latencies.append(seconds)
        if server_ms is not None:
            self.search_ms.append(server_ms)

    @property
    def done(self) -> int:
        return len(self.latencies) + len(self.errors)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds else 0.0

    def row(self, baseline: float | None) -> str:
        lat = np.asarray(self.latencies) * 1e3 if self.latencies else np.zeros(1)
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        ratio = f"{self.rate / baseline:8.3f}" if baseline else f"{'1.000':>8}"
        flag = " (time limit)" if self.stopped_by_time else ""
        index = f"{np.median(self.search_ms):>9.3f}" if self.search_ms else f"{'-':>9}"
        return (f"{self.name:<28} {self.done:>6} {len(self.errors):>6} {self.seconds:>7.1f} {self.rate:>8.1f} "
                f"{ratio} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f} {lat.max():>8.1f} {index}{flag}")


HEADER = (f"{'scenario':<28} {'reqs':>6} {'errors':>6} {'secs':>7} {'req/s':>8} {'vs base':>8} {'p50 ms':>8} "
          f"{'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'index ms':>9}")


@contextmanager
def running_server(db: Path, workers: int, extra: list[str], log: Path, start_timeout: float) -> Iterator[str]:
    """Start the CLI server, wait until it answers /health, and always stop it."""
    port = free_port()
    cmd = [*CLI, "serve", str(db), "--port", str(port), "--workers", str(workers), "--no-access-log", *extra]
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    try:
        with running_process(cmd, log=log, timeout=start_timeout,
                             ready=lambda: httpx.get(url + "/health", timeout=5).status_code == 200):
            options = ", " + " ".join(extra) if extra else ""
            print(f"server up in {time.monotonic() - t0:.1f} s ({workers} worker(s){options})", flush=True)
            yield url
    except RuntimeError as exc:
        raise SystemExit(f"the server did not start: {exc}") from exc


Request = Callable[[httpx.Client, int], "tuple[str | None, float | None]"]


def timed(call: Callable[[], tuple[str | None, float | None]],
          label: str = "") -> tuple[str | None, float | None, float]:
    """``(error or None, the server's search_ms or None, seconds)`` of one request (``call``)."""
    t0 = time.perf_counter()
    try:
        err, server_ms = call()
    except httpx.HTTPError as exc:
        err, server_ms = f"{label}{type(exc).__name__}: {exc}", None
    return err, server_ms, time.perf_counter() - t0


def drive(url: str, n: int, concurrency: int, time_limit: float,
          handle: Callable[[httpx.Client, int], None]) -> tuple[float, bool]:
    """Call ``handle(client, i)`` for ``i`` in ``range(n)`` from ``concurrency`` threads, each with its own
    keep-alive client; returns ``(seconds, stopped by the time limit)``."""
    lock = threading.Lock()
    counter = iter(range(n))
    t_end = time.monotonic() + time_limit
    stopped = False

    def worker() -> None:
        nonlocal stopped
        with httpx.Client(base_url=url, timeout=120) as client:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                if time.monotonic() > t_end:
                    stopped = True
                    return
                handle(client, i)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, stopped


def run_load(name: str, url: str, make_request: Request, n: int, concurrency: int, time_limit: float) -> Outcome:
    """Send ``n`` requests from ``concurrency`` threads.

    ``make_request`` returns ``(error text or None, the server's search_ms or None)``.
    """
    out = Outcome(name)
    lock = threading.Lock()

    def handle(client: httpx.Client, i: int) -> None:
        err, server_ms, dt = timed(lambda: make_request(client, i))
        with lock:
            out.add(err, dt, server_ms)

    out.seconds, out.stopped_by_time = drive(url, n, concurrency, time_limit, handle)
    return out


def id_request(n_items: int, k: int) -> Request:
    rng = random.Random(0)
    ids = [rng.randrange(n_items) for _ in range(100_000)]

    def request(client: httpx.Client, i: int) -> tuple[str | None, float | None]:
        q = ids[i % len(ids)]
        r = client.get("/search", params={"id": q, "k": k})
        if r.status_code != 200:
            return f"HTTP {r.status_code}: {r.text[:200]}", None
        body = r.json()
        res = body["results"]
        if len(res) != min(k, n_items) or res[0]["id"] != q:
            return f"wrong answer for id {q}: {res[:1]}", None
        return None, float(body["search_ms"])

    return request


def upload_request(photos: list[tuple[int, bytes]], k: int) -> Request:
    def request(client: httpx.Client, i: int) -> tuple[str | None, float | None]:
        item, data = photos[i % len(photos)]
        r = client.post("/search", files={"file": ("query.jpg", data, "image/jpeg")}, data={"k": str(k)})
        if r.status_code != 200:
            return f"HTTP {r.status_code}: {r.text[:200]}", None
        body = r.json()
        top = body["results"][0]
        if top["id"] != item or top["score"] < 0.99:
            return f"wrong answer for photo {item}: {top}", None
        return None, float(body["search_ms"])

    return request


def health_request(client: httpx.Client, i: int) -> tuple[str | None, float | None]:
    r = client.get("/health")
    return (None if r.status_code == 200 and r.json()["status"] == "ok" else f"HTTP {r.status_code}"), None


# --------------------------------------------------------------------------- the mixed, partly hostile load
LEGIT = (("id", 35), ("id-post", 15), ("upload", 25), ("url", 10), ("health", 10), ("docs", 5))
HOSTILE = ("slow-url", "stalled-upload", "huge-announced", "huge-chunked", "bad-json", "nested-json",
           "garbage-upload", "bad-content-type", "bad-integer", "bad-url", "slow-explain", "not-utf8")
#: Integers that pass ``str.isdigit()`` but not ``int()``, and others that no ASCII integer parser takes.
BAD_INTEGERS = ("--1", "²", "+-3", "1_0", "١٢", "9" * 40)
#: URLs that are malformed (refused before any connection, even with --allow-private-urls).
BAD_URLS = ("http://[::1", "http://[::1]x/a.jpg", "http://999.1.1.1/a.jpg", "http://1.2.3.4.5/a.jpg", "ftp://x/a.jpg")


def _raw(port: int, head: bytes, body: bytes, timeout: float) -> int:
    """Send a request by hand (a client that stalls, or lies about its body); the answer's status, or 0."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head + body)
            answer = sock.recv(4096)
        except OSError:
            return 0
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def mixed_load(url: str, host: str, photos: list[tuple[int, bytes]], n_items: int, n: int, concurrency: int,
               hostile: float, k: int, upload_limit: int, time_limit: float, upload_timeout: float,
               seed: int = 0) -> tuple[Outcome, dict[str, collections.Counter[str]], dict[str, list[float]]]:
    """Send ``n`` requests of every kind from ``concurrency`` clients; ``hostile`` of them hostile.

    Returns the legitimate requests' outcome, the status counts of every hostile kind, and the legitimate
    latencies by kind.
    """
    rng = random.Random(seed)
    kinds, weights = zip(*LEGIT, strict=True)
    plan = [rng.choice(HOSTILE) if rng.random() < hostile else rng.choices(kinds, weights)[0] for _ in range(n)]
    port = int(url.rsplit(":", 1)[1])
    legit = Outcome("mixed: legitimate")
    by_kind: dict[str, list[float]] = collections.defaultdict(list)
    hostile_status: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    lock = threading.Lock()

    def legit_request(client: httpx.Client, kind: str, i: int) -> str | None:
        if kind in ("id", "id-post"):
            q = rng.randrange(n_items)
            r = (client.get("/search", params={"id": q, "k": k}) if kind == "id"
                 else client.post("/search", json={"id": q, "k": k}))
            if r.status_code != 200 or r.json()["results"][0]["id"] != q:
                return f"{kind} {q}: HTTP {r.status_code} {r.text[:200]}"
            return None
        if kind in ("upload", "url"):
            item, data = photos[i % len(photos)]
            r = (client.post("/search", files={"file": ("q.jpg", data, "image/jpeg")}, data={"k": str(k)})
                 if kind == "upload" else client.get("/search", params={"url": f"{host}/photo/{i % len(photos)}.jpg",
                                                                         "k": k}))
            if r.status_code != 200 or r.json()["results"][0]["id"] != item:
                return f"{kind} {item}: HTTP {r.status_code} {r.text[:200]}"
            return None
        r = client.get("/health" if kind == "health" else "/docs")
        return None if r.status_code == 200 else f"{kind}: HTTP {r.status_code}"

    def hostile_request(client: httpx.Client, kind: str) -> str:
        try:
            if kind == "slow-url":
                return str(client.get("/search", params={"url": host + "/slow.jpg"}).status_code)
            if kind == "stalled-upload":
                head = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: 100000\r\n\r\n")
                return str(_raw(port, head, b"\xff\xd8\xff\xe0" + b"x" * 6, upload_timeout + 30))
            if kind == "huge-announced":
                head = (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                        b"Content-Length: %d\r\n\r\n" % (upload_limit * 4))
                return str(_raw(port, head, b"x" * 65536, 60))
            if kind == "huge-chunked":
                def chunks() -> Iterator[bytes]:
                    block = os.urandom(1 << 20)
                    for _ in range(upload_limit // len(block) + 2):
                        yield block
                r = client.post("/search", content=chunks(), headers={"Content-Type": "image/jpeg"})
                return str(r.status_code)
            if kind == "bad-json":
                return str(client.post("/search", content=b'{"id": 1, "k": ', headers={
                    "Content-Type": "application/json"}).status_code)
            if kind == "nested-json":
                return str(client.post("/search", content=b"[" * 60_000, headers={
                    "Content-Type": "application/json"}).status_code)
            if kind == "garbage-upload":
                return str(client.post("/search", files={"file": ("x.jpg", os.urandom(50_000), "image/jpeg")})
                           .status_code)
            if kind == "bad-integer":  # every field and content type in turn
                value, field_ = rng.choice(BAD_INTEGERS), rng.choice(("id", "k", "nprobe"))
                fields = {"id": "1", field_: value}
                how = rng.randrange(5)
                r = (client.get("/search", params=fields) if how == 0 else
                     client.post("/search", json={**fields, "id": value if field_ == "id" else 1}) if how == 1 else
                     client.post("/search", data=fields) if how == 2 else
                     client.post("/search", files={k: (None, v) for k, v in fields.items()}) if how == 3 else
                     client.get("/explain", params={"id": value, "query_id": 1}))
                return str(r.status_code)
            if kind == "bad-url":
                url_ = rng.choice(BAD_URLS)
                return str((client.get("/search", params={"url": url_}) if rng.random() < 0.5 else
                            client.get("/explain", params={"id": 1, "url": url_})).status_code)
            if kind == "slow-explain":  # fetched in the same capped threads as URL searches
                return str(client.get("/explain", params={"id": 1, "url": host + "/slow.jpg",
                                                          "format": "json"}).status_code)
            if kind == "not-utf8":
                body, ctype = rng.choice(((b'{"url": "http://\xff\xfe/a.jpg"}', "application/json"),
                                          (b"url=http%3A%2F%2F%FF%FE%2Fa.jpg", "application/x-www-form-urlencoded"),
                                          (b"id=%FF%FE", "application/x-www-form-urlencoded")))
                return str(client.post("/search", content=body, headers={"Content-Type": ctype}).status_code)
            return str(client.post("/search", content=b"hello", headers={"Content-Type": "text/x-bogus"})
                       .status_code)
        except httpx.HTTPError as exc:
            return type(exc).__name__

    def handle(client: httpx.Client, i: int) -> None:
        kind = plan[i]
        if kind in HOSTILE:
            status = hostile_request(client, kind)
            with lock:
                hostile_status[kind][status] += 1
            return
        err, _, dt = timed(lambda: (legit_request(client, kind, i), None), f"{kind}: ")
        with lock:
            legit.add(err, dt)
            if err is None:
                by_kind[kind].append(dt)

    legit.seconds, legit.stopped_by_time = drive(url, n, concurrency, time_limit, handle)
    return legit, hostile_status, by_kind


def run_mixed(args: argparse.Namespace, db_path: Path, photos: list[tuple[int, bytes]], n_items: int,
              log: Path) -> int:
    """The mixed scenario: its own server and image hosts; prints the figures; returns the number of errors."""
    upload_limit = 20 * 1024 * 1024
    extra = ["--allow-private-urls", "--fetch-deadline", str(args.fetch_deadline), "--upload-timeout",
             str(args.upload_timeout), "--no-access-log"]
    routes = {f"/photo/{j}.jpg": Route(data, "image/jpeg") for j, (_, data) in enumerate(photos)}
    routes["/slow.jpg"] = Route(b"\xff\xd8\xff\xe0" + b"x" * 10_000, "image/jpeg", trickle=0.5)
    with http_server(routes) as host, running_server(db_path, args.workers, extra, log, args.start_timeout) as url:
        # A warm-up first (not counted): the model's first calls at each batch size are slow, and in a short run
        # they would be the baseline's p99.
        mixed_load(url, host, photos, n_items, 8 * args.concurrency, args.concurrency, 0.0, args.k, upload_limit,
                   args.time_limit, args.upload_timeout, seed=1)
        # The same legitimate requests without the hostile ones first: the baseline of this run, on this machine.
        base, _, base_by_kind = mixed_load(url, host, photos, n_items, args.requests, args.concurrency, 0.0, args.k,
                                           upload_limit, args.time_limit, args.upload_timeout)
        base.name = "mixed: no hostile (baseline)"
        legit, hostile, by_kind = mixed_load(url, host, photos, n_items, args.requests, args.concurrency,
                                             args.hostile, args.k, upload_limit, args.time_limit,
                                             args.upload_timeout)
        legit.name = f"mixed: legitimate, {args.hostile:.0%} hostile"
        healthy = httpx.get(url + "/health", timeout=30).status_code == 200
    n_hostile = sum(sum(c.values()) for c in hostile.values())
    print(f"\nmixed: {legit.done + n_hostile} requests from {args.concurrency} clients in {legit.seconds:.1f} s; "
          f"server flags: {' '.join(extra)}")
    print(HEADER)
    print(base.row(None))
    print(legit.row(base.rate))
    print("vs base = throughput of the legitimate requests / throughput without hostile ones, same server and run")
    for kind, lat in sorted(by_kind.items()):
        ms = np.asarray(lat) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        b99 = np.percentile(np.asarray(base_by_kind[kind]) * 1e3, 99) if base_by_kind.get(kind) else float("nan")
        print(f"  legitimate {kind:<10} {len(lat):>5} requests  p50 {p50:7.1f}  p90 {p90:7.1f}  p99 {p99:7.1f} ms "
              f"(p99 without hostile: {b99:7.1f} ms)")
    for kind in HOSTILE:
        counts = ", ".join(f"{status}: {c}" for status, c in sorted(hostile[kind].items()))
        print(f"  hostile {kind:<17} {sum(hostile[kind].values()):>4}  answers {counts or '-'}")
    p99 = float(np.percentile(np.asarray(legit.latencies) * 1e3, 99)) if legit.latencies else float("nan")
    hostile_500 = sum(hostile[kind].get("500", 0) for kind in HOSTILE)
    print(json.dumps({"legitimate": legit.done, "legitimate_errors": len(legit.errors), "hostile": n_hostile,
                      "hostile_500": hostile_500, "legitimate_p99_ms": round(p99, 1), "health_after": healthy}))
    for e in (base.errors + legit.errors)[:10]:
        print(f"error: {e}")
    ok = (not legit.errors and not base.errors and healthy and p99 < 2000 and not legit.stopped_by_time
          and not hostile_500)
    verdict = "yes" if p99 < 2000 else "NO"
    print(f"legitimate requests: {len(legit.errors)} errors, p99 {p99:.0f} ms (< 2000 ms: {verdict})")
    return 0 if ok else 1


def build_db(dest: Path, model: str, assets: Path) -> Path:
    coco = assets / "images" / "coco"
    weights = assets / "weights" / WEIGHTS[model]
    if not weights.exists():
        raise SystemExit(f"weights not found: {weights} (set --assets or SIMILAR_IMAGES_ASSETS)")
    db = dest / f"coco-{model}"
    t0 = time.perf_counter()
    subprocess.run([*CLI, "extract", str(coco), str(db), "--model", model, "--weights", str(weights), "-q"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*CLI, "build-index", str(db), "--index", "Flat", "--eval-queries", "0", "-q"], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"built {db} from {coco} with {model} in {time.perf_counter() - t0:.1f} s", flush=True)
    return db


def main(argv: list[str] | None = None) -> int:
    default_assets = Path(os.environ.get("SIMILAR_IMAGES_ASSETS", ROOT.parent / "shared" / "assets"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, help="database to serve [default: build one from the COCO assets]")
    ap.add_argument("--model", choices=sorted(WEIGHTS), default="mobilenetv2",
                    help="model of the database built without --db [default: mobilenetv2]")
    ap.add_argument("--assets", type=Path, default=default_assets, help="offline assets folder")
    ap.add_argument("--requests", type=int, default=1000, help="requests per scenario [default: 1000]")
    ap.add_argument("--concurrency", type=int, default=8, help="client threads [default: 8]")
    ap.add_argument("--workers", type=int, default=1, help="server worker processes [default: 1]")
    ap.add_argument("-k", type=int, default=8, help="results per query [default: 8]")
    ap.add_argument("--scenarios", default="health,id,upload", help="comma-separated: health, id, upload")
    ap.add_argument("--compare-batching", action="store_true",
                    help="also run the upload scenario against a server started with --no-batching")
    ap.add_argument("--compare-faiss-threads", action="store_true",
                    help="also run the id scenario against a server started with --faiss-threads 0")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating rounds of a comparison (each server gets --requests in all) [default: 5]")
    ap.add_argument("--photos", type=int, default=64, help="distinct photos uploaded in turn [default: 64]")
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds per scenario at most [default: 300]")
    ap.add_argument("--start-timeout", type=float, default=300.0, help="seconds to wait for the server to start")
    ap.add_argument("--hostile", type=float, default=0.1, help="share of hostile requests in 'mixed' [default: 0.1]")
    ap.add_argument("--fetch-deadline", type=float, default=5.0,
                    help="the 'mixed' server's --fetch-deadline: how long a trickling URL holds a client [default: 5]")
    ap.add_argument("--upload-timeout", type=float, default=5.0,
                    help="the 'mixed' server's --upload-timeout: how long a stalled upload holds a client [default: 5]")
    args = ap.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(scenarios) - {"health", "id", "upload", "mixed"}
    if unknown or args.requests < 1 or args.concurrency < 1 or args.rounds < 1:
        ap.error(f"bad --scenarios {sorted(unknown)} or --requests/--concurrency")

    from similar_images.store import Database

    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        tmp_path = Path(tmp)
        db_path = args.db or build_db(tmp_path, args.model, args.assets)
        db = Database.open(db_path, load_index=False)
        live = [int(i) for i in db.live_ids()]
        rng = random.Random(1)
        picked = rng.sample(live, min(args.photos, len(live)))
        photos = [(i, Path(db.items[i]).read_bytes()) for i in picked if Path(db.items[i]).is_file()]
        mean_kb = np.mean([len(p) for _, p in photos]) / 1024 if photos else 0
        print(f"database {db_path}: {len(db)} items, model {db.model_name}, index "
              f"{db.manifest.index.factory if db.manifest.index else 'none'}; {len(photos)} upload photos "
              f"(mean {mean_kb:.0f} KiB); {os.cpu_count()} CPUs; {args.requests} requests x {args.concurrency} "
              f"clients per scenario", flush=True)
        log = tmp_path / "server.log"
        results: list[Outcome] = []
        pairs: list[tuple[str, Outcome, Outcome]] = []
        calls: dict[str, list[int]] = {}

        def model_calls(url: str) -> int:
            return int(httpx.get(url + "/health", timeout=30).json()["model_calls"])

        def make_request(name: str) -> Request:
            if name == "health":
                return health_request
            if name == "id":
                if db.removed.any():
                    raise SystemExit("the id scenario needs a database without removed items")
                return id_request(len(live), args.k)
            return upload_request(photos, args.k)

        def measure(url: str, name: str, label: str, n: int) -> Outcome:
            req = make_request(name)
            before = model_calls(url) if args.workers == 1 else 0
            out = run_load(label, url, req, n, args.concurrency, args.time_limit)
            if args.workers == 1 and name == "upload":
                counts = calls.setdefault(label, [0, 0])
                counts[0] += out.done
                counts[1] += model_calls(url) - before
            return out

        if scenarios == ["mixed"]:
            return run_mixed(args, db_path, photos, len(live), log)
        if "mixed" in scenarios:
            ap.error("run 'mixed' on its own (--scenarios mixed)")
        comparisons = []
        if args.compare_batching and "upload" in scenarios:
            comparisons.append((["--no-batching"], "upload", "batching", "no batching"))
        if args.compare_faiss_threads and "id" in scenarios:
            comparisons.append((["--faiss-threads", "0"], "id", "1 Faiss thread", "Faiss default threads"))
        try:
            with running_server(db_path, args.workers, [], log, args.start_timeout) as url:
                for name in scenarios:
                    run_load(name, url, make_request(name), min(16, args.requests), args.concurrency, 60)  # warm-up
                    out = measure(url, name, name, args.requests)
                    results.append(out)
                    print(f"  {name}: {out.done} requests in {out.seconds:.1f} s, {len(out.errors)} errors",
                          flush=True)
                for extra, name, label_a, label_b in comparisons:
                    # Both servers run at once and take turns, so that both see the same machine load.
                    with running_server(db_path, args.workers, extra, log, args.start_timeout) as vurl:
                        run_load(name, vurl, make_request(name), min(16, args.requests), args.concurrency, 60)
                        a, b = Outcome(f"{name} ({label_a})"), Outcome(f"{name} ({label_b})")
                        chunk = max(1, args.requests // args.rounds)
                        for r in range(args.rounds):  # the order alternates too
                            for out, where in ((a, url), (b, vurl))[:: 1 if r % 2 == 0 else -1]:
                                out.merge(measure(where, name, out.name, chunk))
                        pairs.append((f"{name} throughput, {label_a} / {label_b}", a, b))
                        print(f"  {a.name} vs {b.name}: {a.done} + {b.done} requests in {args.rounds} alternating "
                              f"rounds, {len(a.errors) + len(b.errors)} errors", flush=True)
        finally:
            everything = results + [o for _, a, b in pairs for o in (a, b)]
            if any(o.errors for o in everything) and log.exists():
                print("--- server log (tail) ---\n" + log.read_text()[-3000:])

    base = next((o.rate for o in results if o.name == "health"), None)
    print(f"\n{HEADER}")
    for o in results:
        print(o.row(base if o.name != "health" else None))
    if base is None:
        print("(no health baseline in this run: 'vs base' is 1)")
    else:
        print("vs base = throughput / throughput of GET /health (HTTP + framework overhead only), same run")
    print("index ms = median of the server's own index-search time (search_ms in the answers)")
    if pairs:
        print(f"\nComparisons: two servers up at once, {args.rounds} alternating rounds each ('vs base' = a / b)")
        print(HEADER)
        for title, a, b in pairs:
            print(a.row(b.rate))
            print(b.row(None))
            print(f"  {title}: {a.rate / b.rate if b.rate else float('nan'):.2f}x")
    for label, (n, m) in calls.items():
        print(f"{label}: {n} queries in {m} model calls (mean batch {n / max(m, 1):.2f})")
    everything = results + [o for _, a, b in pairs for o in (a, b)]
    errors = sum(len(o.errors) for o in everything)
    for o in everything:
        for e in o.errors[:5]:
            print(f"error in {o.name}: {e}")
    print(f"total errors: {errors}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
