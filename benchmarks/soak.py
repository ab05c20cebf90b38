"""Soak test of one database shared by several processes, with random SIGKILLs.

Worker processes work on one database folder at once, for a bounded time:

* adders append new items (``Database.add_vectors``, a vector made from each item's name) and write each
  acknowledged add to their log only after the call returned;
* a CLI adder runs ``similar-images add DB FOLDER`` on new folders of images (the ``tiny`` test model);
* a remover removes acknowledged ids (``Database.remove``) and logs them after the call returned;
* a rebuilder rebuilds the index (``build_index(force=True)``) with Flat, IVF and HNSW indexes in turn;
* searchers open the database and search stored ids, exactly and through the index, in a loop, and a CLI
  searcher runs ``similar-images search DB ID --id``: any exception, or a traceback, is an error.

A killer SIGKILLs a random worker every ``--kill-every`` seconds on average; the orchestrator restarts it.
At the end every worker is stopped, one more CLI add and an index rebuild run, and the folder is checked:

* every acknowledged add is present exactly once, with its own vector;
* every acknowledged remove is removed;
* no search raised (library or CLI);
* ``similar-images info DB --json`` agrees with the files (items, vectors, failures, index);
* no temporary file or work folder of a killed writer is left.

Everything runs on this machine; nothing listens on the network.

    python benchmarks/soak.py                       # 180 s, 2 adders, 3 searchers
    python benchmarks/soak.py --seconds 60 --kill-every 2
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import stop_process  # noqa: E402  (shared with the tests)

DIM = 16
MODEL = {"name": "tiny", "dim": DIM, "layer": "dense", "input_size": [32, 32], "weights": "random", "seed": 0}
FACTORIES = ("Flat", "IVF8,Flat", "HNSW16", "IVF4,Flat")
CLI = [sys.executable, "-c", "from similar_images.cli import main; main()"]


def vector_of(name: str) -> np.ndarray:
    """The (unnormalised) vector an adder stores for ``name``: reproducible from the name alone."""
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def _append(log: Path, lines: list[str]) -> None:
    """Append acknowledged work to a log, durably, before it is counted."""
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("".join(line + "\n" for line in lines))
        fh.flush()
        os.fsync(fh.fileno())


def _read_log(log_dir: Path, pattern: str) -> list[list[str]]:
    rows = []
    for log in sorted(log_dir.glob(pattern)):
        text = log.read_text(encoding="utf-8")
        for line in text[:text.rfind("\n") + 1].splitlines():  # complete lines only
            if line.strip():
                rows.append(line.split("\t"))
    return rows


# --------------------------------------------------------------------------- workers
def worker_add(db_path: Path, log_dir: Path, tag: str, rng: random.Random) -> None:
    from similar_images import Database

    db = Database.open(db_path, load_index=False)
    seq = 0
    while True:
        names = [f"/soak/{tag}-{os.getpid()}-{seq + i}.jpg" for i in range(rng.randint(1, 20))]
        seq += len(names)
        ids = db.add_vectors(np.stack([vector_of(n) for n in names]), names)
        _append(log_dir / f"acked-{tag}.log", [f"{n}\t{i}" for n, i in zip(names, ids, strict=True)])
        time.sleep(rng.uniform(0, 0.05))


def worker_cli_add(db_path: Path, log_dir: Path, tag: str, rng: random.Random) -> None:
    from conftest import make_image

    images = log_dir / "images"
    while True:
        folder = images / f"{tag}-{os.getpid()}-{time.monotonic_ns()}"
        paths = [make_image(folder / f"{i}.png", seed=rng.randrange(1 << 30)) for i in range(5)]
        run = subprocess.run([*CLI, "add", str(db_path), str(folder), "-q"], capture_output=True, text=True)
        if run.returncode != 0 or "Traceback" in run.stderr:
            _append(log_dir / f"errors-{tag}.log", [f"cli add exited {run.returncode}: {run.stderr[-500:]!r}"])
        else:
            _append(log_dir / f"acked-{tag}.log", [f"{p.resolve()}\t-" for p in paths])


def worker_remove(db_path: Path, log_dir: Path, tag: str, rng: random.Random) -> None:
    from similar_images import Database

    while True:
        time.sleep(rng.uniform(0.05, 0.3))
        acked = [row for row in _read_log(log_dir, "acked-adder*.log") if row[1] != "-"]
        if not acked:
            continue
        ids = [int(row[1]) for row in rng.sample(acked, min(len(acked), rng.randint(1, 3)))]
        db = Database.open(db_path, load_index=False)
        ids = [i for i in ids if not db.removed[i]]  # only this worker removes: still live when it removes
        if ids:
            db.remove(ids)
            _append(log_dir / f"removed-{tag}.log", [str(i) for i in ids])


def worker_rebuild(db_path: Path, log_dir: Path, tag: str, rng: random.Random) -> None:
    from similar_images import Database, IndexConfig
    from similar_images.errors import IndexTrainingError

    db = Database.open(db_path, load_index=False)
    while True:
        time.sleep(rng.uniform(0.2, 1.5))
        factory = rng.choice(FACTORIES)
        with contextlib.suppress(IndexTrainingError):  # too few vectors yet for this index
            db.build_index(IndexConfig(factory=factory, eval_queries=0, nprobe=4 if "IVF" in factory else None),
                           force=True)
            _append(log_dir / f"rebuilt-{tag}.log", [factory])


def worker_search(db_path: Path, log_dir: Path, tag: str, rng: random.Random) -> None:
    from similar_images import Database

    done = 0
    db = None
    while True:
        try:
            if db is None or rng.random() < 0.3:
                db = Database.open(db_path, mmap_index=rng.random() < 0.5)  # often a fresh open
            live = db.live_ids()
            if len(live):
                q = int(live[rng.randrange(len(live))])
                res = db.search(q, k=5, exact=rng.random() < 0.3)
                if len(res) == 0:
                    raise AssertionError(f"no results for id {q}")
            done += 1
        except Exception:  # noqa: BLE001  (every exception of a search is what this soak looks for)
            _append(log_dir / f"errors-{tag}.log", [traceback.format_exc().replace("\n", " | ")])
        if done % 50 == 0:
            _append(log_dir / f"searches-{tag}.log", ["50"])


def worker_cli_search(db_path: Path, log_dir: Path, tag: str, rng: random.Random) -> None:
    while True:
        run = subprocess.run([*CLI, "search", str(db_path), str(rng.randrange(200)), "--id", "-k", "3"],
                             capture_output=True, text=True)
        removed = "was removed" in run.stderr or "Unknown id" in run.stderr  # a clean answer about the id
        if "Traceback" in run.stderr or (run.returncode != 0 and not removed):
            _append(log_dir / f"errors-{tag}.log", [f"cli search exited {run.returncode}: {run.stderr[-800:]!r}"])
        else:
            _append(log_dir / f"searches-{tag}.log", ["1"])


WORKERS = {"adder": worker_add, "cli-adder": worker_cli_add, "remover": worker_remove, "rebuilder": worker_rebuild,
           "searcher": worker_search, "cli-searcher": worker_cli_search}


def run_worker(role: str, db: Path, log_dir: Path, tag: str) -> None:
    rng = random.Random(f"{tag}-{os.getpid()}")
    try:
        WORKERS[role](db, log_dir, tag, rng)
    except Exception:  # a writer that raised is an error of the soak, written down
        _append(log_dir / f"errors-{tag}.log", [f"{role} raised: " + traceback.format_exc().replace("\n", " | ")])
        raise


# --------------------------------------------------------------------------- the run
def make_database(db: Path) -> None:
    from similar_images import Database, IndexConfig
    from similar_images.embed import l2_normalize
    from similar_images.store import write_database

    names = [f"/soak/seed-{i}.jpg" for i in range(300)]
    write_database(db, kind="image", model=MODEL, items=names,
                   vector_chunks=[l2_normalize(np.stack([vector_of(n) for n in names]))])
    Database.open(db, load_index=False).build_index(IndexConfig(factory="Flat", eval_queries=0))


def start(role: str, tag: str, db: Path, log_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log_dir / f"stderr-{tag}.log", "ab") as log:
        return subprocess.Popen([sys.executable, __file__, "worker", role, str(db), str(log_dir), tag], env=env,
                                stdout=log, stderr=log, start_new_session=True)


def check(db_path: Path, log_dir: Path, env: dict[str, str]) -> dict[str, object]:
    """The final checks; returns the figures (``problems`` lists what did not hold)."""
    from similar_images import Database
    from similar_images.embed import l2_normalize

    problems: list[str] = []
    db = Database.open(db_path)
    counts = Counter(db.items)
    twice = [item for item, c in counts.items() if c > 1]
    if twice:
        problems.append(f"{len(twice)} items stored more than once, e.g. {twice[:3]}")
    acked = _read_log(log_dir, "acked-*.log")
    index_of = {item: i for i, item in enumerate(db.items)}
    missing = [row[0] for row in acked if row[0] not in index_of]
    if missing:
        problems.append(f"{len(missing)} acknowledged adds are missing, e.g. {missing[:3]}")
    wrong_id = [row for row in acked if row[1] != "-" and index_of.get(row[0]) != int(row[1])]
    if wrong_id:
        problems.append(f"{len(wrong_id)} acknowledged adds have another id than acknowledged, e.g. {wrong_id[:3]}")
    soak_rows = [(i, item) for i, item in enumerate(db.items) if item.startswith("/soak/")]
    expected = l2_normalize(np.stack([vector_of(item) for _, item in soak_rows]))
    stored = np.asarray(db.vectors[[i for i, _ in soak_rows]])
    bad_vec = int((np.sum(expected * stored, axis=1) < 0.9999).sum())
    if bad_vec:
        problems.append(f"{bad_vec} stored vectors differ from their item's vector")
    removed_acked = {int(r[0]) for r in _read_log(log_dir, "removed-*.log")}
    not_removed = sorted(i for i in removed_acked if not db.removed[i])
    if not_removed:
        problems.append(f"{len(not_removed)} acknowledged removes are not removed, e.g. {not_removed[:3]}")
    # info against the files
    run = subprocess.run([*CLI, "info", str(db_path), "--json"], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        problems.append(f"info exited {run.returncode}: {run.stderr[-500:]}")
        info: dict = {}
    else:
        info = json.loads(run.stdout)
    c = info.get("counts", {})
    item_lines = sum(1 for _ in open(db_path / "items.jsonl", encoding="utf-8"))
    vector_rows = (db_path / "vectors.f32").stat().st_size // (DIM * 4)
    failure_rows = len(db.failures)
    filtered = set(info.get("index", {}).get("filtered_ids", []) if info.get("index") else [])
    facts = {"items": (c.get("items"), item_lines, vector_rows), "failed": (c.get("failed"), failure_rows),
             "removed": (c.get("removed"), int(db.removed.sum())),
             "indexed": (c.get("indexed"), int(db.index.ntotal) if db.index is not None else 0,
                         len(db.live_ids()) + len(filtered))}
    for name, values in facts.items():
        if len(set(values)) != 1:
            problems.append(f"info's {name} count disagrees with the files: {values}")
    leftovers = [p.name for p in db_path.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".adding-")]
    if leftovers:
        problems.append(f"files left by killed writers: {leftovers[:5]}")
    generations = sorted(p.name for p in db_path.glob("index-*.faiss"))
    if len(generations) > 2:
        problems.append(f"more than two index generations kept: {generations}")
    return {"items": len(db.items), "live": len(db), "acked_adds": len(acked),
            "acked_cli_adds": sum(1 for row in acked if row[1] == "-"), "acked_removes": len(removed_acked),
            "index": db.manifest.index.factory if db.manifest.index else None, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="how long the workers run [default: 180]")
    ap.add_argument("--adders", type=int, default=2, help="library adder processes [default: 2]")
    ap.add_argument("--searchers", type=int, default=3, help="library searcher processes [default: 3]")
    ap.add_argument("--no-cli", action="store_true", help="no CLI adder and searcher (no TensorFlow start-ups)")
    ap.add_argument("--kill-every", type=float, default=3.0, help="mean seconds between SIGKILLs [default: 3]")
    ap.add_argument("--max-kills", type=int, default=200, help="at most this many SIGKILLs [default: 200]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "plugins"),
                                                        str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "SIMILAR_IMAGES_PLUGINS": "tiny_model", "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        db, log_dir = work / "db", work / "logs"
        log_dir.mkdir(exist_ok=True)
        make_database(db)
        roles = ([("adder", f"adder{i}") for i in range(args.adders)] + [("remover", "remover"),
                 ("rebuilder", "rebuilder")] + [("searcher", f"searcher{i}") for i in range(args.searchers)])
        if not args.no_cli:
            roles += [("cli-adder", "cli-adder"), ("cli-searcher", "cli-searcher")]
        procs = {tag: start(role, tag, db, log_dir, env) for role, tag in roles}
        role_of = dict((tag, role) for role, tag in roles)
        kills: Counter[str] = Counter()
        t0 = time.monotonic()
        next_kill = t0 + rng.expovariate(1 / args.kill_every)
        try:
            while time.monotonic() - t0 < args.seconds:
                time.sleep(0.1)
                for tag, proc in procs.items():
                    if proc.poll() is not None:  # killed (or crashed: its error is in its log): restart it
                        procs[tag] = start(role_of[tag], tag, db, log_dir, env)
                if time.monotonic() >= next_kill and sum(kills.values()) < args.max_kills:
                    tag = rng.choice(list(procs))
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(procs[tag].pid, signal.SIGKILL)  # the worker and any CLI it runs
                    kills[role_of[tag]] += 1
                    next_kill = time.monotonic() + rng.expovariate(1 / args.kill_every)
        finally:
            for proc in procs.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # stopped mid-write, like the others
                stop_process(proc)
        seconds = time.monotonic() - t0
        # After the chaos: one more CLI add (it cleans what killed adds left) and an index rebuild.
        from conftest import make_image

        final = log_dir / "images" / "final"
        finals = [make_image(final / f"{i}.png", seed=10_000 + i) for i in range(3)]
        last = subprocess.run([*CLI, "add", str(db), str(final), "-q"], capture_output=True, text=True, env=env)
        rebuild = subprocess.run([*CLI, "build-index", str(db), "--index", "IVF8,Flat", "--force", "-q",
                                  "--eval-queries", "0"], capture_output=True, text=True, env=env)
        _append(log_dir / "acked-final.log", [f"{p.resolve()}\t-" for p in finals])
        figures = check(db, log_dir, env)
        problems = list(figures.pop("problems"))  # type: ignore[call-overload]
        for name, run in (("final add", last), ("final build-index", rebuild)):
            if run.returncode != 0:
                problems.append(f"{name} exited {run.returncode}: {run.stderr[-500:]}")
        errors = _read_log(log_dir, "errors-*.log")
        searches = sum(int(r[0]) for r in _read_log(log_dir, "searches-searcher*.log"))
        cli_searches = sum(int(r[0]) for r in _read_log(log_dir, "searches-cli*.log"))
        rebuilds = Counter(r[0] for r in _read_log(log_dir, "rebuilt-*.log"))
        print(f"soak: {seconds:.0f} s, {len(procs)} worker processes, {sum(kills.values())} SIGKILLs "
              f"({', '.join(f'{k} {v}' for k, v in sorted(kills.items()))})")
        by_factory = ", ".join(f"{k} {v}" for k, v in sorted(rebuilds.items()))
        print(f"  adds acknowledged: {figures['acked_adds']} items ({figures['acked_cli_adds']} by "
              f"'similar-images add', the others by Database.add_vectors); "
              f"removes acknowledged: {figures['acked_removes']}; "
              f"index rebuilds: {sum(rebuilds.values())} ({by_factory})")
        print(f"  searches: {searches} (library, counted in 50s) + {cli_searches} (CLI); errors: {len(errors)}")
        print(f"  database: {figures['items']} items, {figures['live']} searchable, index {figures['index']}")
        for row in errors[:10]:
            print("  error:", row[0][:1000])
        for p in problems:
            print("  PROBLEM:", p)
        ok = not problems and not errors
        print("  every acknowledged add present exactly once, no search raised, info agrees with the files: "
              + ("yes" if ok else "NO"))
        return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        run_worker(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(main())
