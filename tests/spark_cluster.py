"""A Spark standalone cluster on 127.0.0.1 for the slow tests and the benchmarks: a master and N workers.

Started with the pyspark package's own ``bin/spark-class`` (``org.apache.spark.deploy.master.Master`` and
``org.apache.spark.deploy.worker.Worker``) on free ports, each worker with ``--cores 1`` and a small memory,
their work folders and logs under the given folder. :func:`standalone_cluster` waits until every worker is
registered (the master's web UI lists it as ALIVE at ``/json/``), and on exit stops everything in bounded time:
the daemons' process groups (a worker's executors are in its group), then any process left below them (PySpark's
Python daemons make their own groups), with SIGTERM, then SIGKILL.

The workers get the caller's ``PYTHONPATH`` and ``PYSPARK_PYTHON`` (this interpreter), as a cluster's
nodes would have the package installed; nothing else of a cluster's set-up is assumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the project: the workers' Python imports this checkout's package
#: Seconds to wait for the master and the workers to come up, and for each step of the teardown.
START_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0


def spark_home() -> Path:
    """The pyspark package's folder (it holds ``bin/spark-class`` and the jars)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class StandaloneCluster:
    """A running cluster: its master URL, web UI, and the daemons' processes (``spark-class`` execs the JVM)."""

    url: str
    webui: str
    folder: Path
    master: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        """The master's view of the cluster (its web UI's JSON: ``workers``, ``activeapps``, ...)."""
        with urllib.request.urlopen(f"{self.webui}/json/", timeout=5) as r:
            return json.loads(r.read())

    def alive_workers(self) -> int:
        """Workers the master sees as ALIVE."""
        return sum(1 for w in self.state().get("workers", []) if w.get("state") == "ALIVE")

    def kill_worker(self, i: int) -> None:
        """Kill worker ``i``'s JVM and its executors (its process group) at once, as a lost machine would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.workers[i].pid, signal.SIGKILL)
        self.workers[i].wait(STOP_TIMEOUT)

    def processes(self) -> list[Any]:
        """Every process of the cluster still alive: the daemons and all processes below them (psutil)."""
        import psutil

        found: dict[int, Any] = {}
        for proc in (self.master, *self.workers):
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(proc.pid)
                found[p.pid] = p
                for c in p.children(recursive=True):
                    found[c.pid] = c
        return list(found.values())


def _env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    conf = folder / "conf"  # an empty configuration folder: no site's spark-defaults.conf or spark-env.sh
    conf.mkdir(exist_ok=True)
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    env.update({
        "SPARK_HOME": str(spark_home()),
        "SPARK_CONF_DIR": str(conf),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_LOCAL_DIRS": str(tmp),
        "SPARK_DAEMON_MEMORY": "256m",
        "SPARK_DAEMON_JAVA_OPTS": f"-Djava.io.tmpdir={tmp}",
        "PYSPARK_PYTHON": env.get("PYSPARK_PYTHON", sys.executable),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    })
    return env


def _spawn(folder: Path, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (folder / f"{name}.log").open("wb")
    try:
        return subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], cwd=folder, env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        log.close()


def leftover_processes(folder: Path) -> list[str]:
    """Processes of the cluster in ``folder`` still running: a command line naming it (the daemons, ``pgrep -f``
    would find them) or a working folder inside it (executors, Python workers). None after a stop."""
    import psutil

    folder = Path(folder).resolve()
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmd = " ".join(p.info["cmdline"] or [])
        cwd = p.info["cwd"] or ""
        if p.pid != os.getpid() and (str(folder) in cmd or cwd.startswith(str(folder))):
            found.append(f"{p.pid} {cmd[:200]}")
    return found


def _stop(cluster: StandaloneCluster) -> None:
    """SIGTERM every process of the cluster, wait, then SIGKILL what is left (bounded in time)."""
    import psutil

    procs = cluster.processes()
    daemons = [cluster.master, *cluster.workers]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for d in daemons:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(d.pid, sig)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        _gone, procs = psutil.wait_procs(procs, timeout=STOP_TIMEOUT)
        if not procs:
            break
    for d in daemons:
        with contextlib.suppress(subprocess.TimeoutExpired):
            d.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def standalone_cluster(folder: Path, workers: int = 2, *, cores: int = 1, memory: str = "1g",
                       timeout: float = START_TIMEOUT) -> Iterator[StandaloneCluster]:
    """A master and ``workers`` workers on 127.0.0.1, registered, stopped on exit (see the module docstring).

    Args:
        folder: Where the daemons' logs, the workers' work folders and scratch files go.
        workers: Number of workers.
        cores: ``--cores`` of each worker.
        memory: ``--memory`` of each worker (executors get ``spark.executor.memory``, 1g by default).
        timeout: Seconds to wait for every worker to register.

    Raises:
        RuntimeError: If the cluster does not come up in time (the daemons' logs are named).
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    env = _env(folder)
    port, ui = free_port(), free_port()
    master = _spawn(folder, "master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                       "--port", str(port), "--webui-port", str(ui)], env)
    cluster = StandaloneCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}", folder, master)
    try:
        for i in range(workers):
            work = folder / f"worker-{i}"
            work.mkdir(exist_ok=True)
            cluster.workers.append(_spawn(folder, f"worker-{i}", [
                "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--port", str(free_port()),
                "--webui-port", str(free_port()), "--cores", str(cores), "--memory", memory,
                "--work-dir", str(work), cluster.url], env))
        deadline = time.monotonic() + timeout
        while True:
            dead = [p for p in (master, *cluster.workers) if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a Spark daemon exited at start: see the logs in {folder}")
            with contextlib.suppress(OSError, ValueError):
                if cluster.alive_workers() == workers:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{workers} Spark workers did not register in {timeout:.0f} s: see the logs "
                                   f"in {folder}")
            time.sleep(0.5)
        yield cluster
    finally:
        _stop(cluster)
