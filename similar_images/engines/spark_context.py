"""Starting Apache Spark for the engine: checks for pyspark and Java, one quiet JVM per process, a context.

:func:`spark_context` yields the active Spark context (under ``spark-submit``, or in a script that made one)
or a new one: Spark's logging at WARN, the web UI and the console progress bar off, its scratch folders in
one temporary folder per process (removed at exit), and in local mode the driver bound to 127.0.0.1.
Settings given to one context of a process never carry over to the next.

Settings, from the strongest: those given (``--conf``), then ``spark-defaults.conf`` (in ``SPARK_CONF_DIR``,
else ``$SPARK_HOME/conf``; under ``spark-submit``, whatever it was given), then this module's defaults.
Executors run the driver's Python (``sys.executable``) unless ``spark.pyspark.python`` or the environment
variable ``PYSPARK_PYTHON`` names another.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import SparkUnavailableError

__all__ = ["check_spark", "spark_context", "max_failures", "spark_defaults", "read_properties", "executor_python"]

logger = logging.getLogger(__name__)

_JAVA_HINT = ("On Debian or Ubuntu: `sudo apt-get install openjdk-17-jre-headless`; elsewhere install a Java 17 "
              "runtime and set JAVA_HOME to its folder.")

_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss} %p %c{1}: %m%n%ex
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
logger.utils.name = org.apache.spark.util.Utils
logger.utils.level = error
"""


# ------------------------------------------------------------------ availability
def _find_java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        return str(java) if java.is_file() else None
    return shutil.which("java")


def check_spark() -> None:
    """Check that pyspark and a Java runtime are installed.

    Raises:
        SparkUnavailableError: Naming what to install.
    """
    try:
        import pyspark  # noqa: F401, PLC0415  (heavy: the Spark engine only)
    except ImportError as exc:
        raise SparkUnavailableError(
            "The Spark engine needs pyspark, which is not installed: `pip install pyspark` (Spark also needs "
            f"Java 17: {_JAVA_HINT})"
        ) from exc
    if _find_java() is None:
        where = (f"JAVA_HOME is {os.environ['JAVA_HOME']!r} but holds no bin/java"
                 if os.environ.get("JAVA_HOME") else "`java` is not on PATH and JAVA_HOME is not set")
        raise SparkUnavailableError(f"The Spark engine needs a Java runtime: {where}. {_JAVA_HINT}")


def max_failures(master: str, conf: Any) -> int:
    """Attempts Spark gives a task: ``F`` of ``local[N,F]``, 1 in other local masters, else the setting."""
    m = re.fullmatch(r"local\[\s*(\*|\d+)\s*,\s*(\d+)\s*\]", master)
    if m:
        return max(1, int(m.group(2)))
    if master == "local" or re.fullmatch(r"local\[\s*(\*|\d+)\s*\]", master):
        return 1
    return max(1, int(conf.get("spark.task.maxFailures", "4")))


_PROCESS_TMP: Path | None = None


def _process_tmp() -> Path:
    """This process's scratch folder for Spark (the JVM's temporary files, logging settings), removed at exit.

    One per process, not per context: the JVM is started once per process and keeps its settings.
    """
    global _PROCESS_TMP
    if _PROCESS_TMP is None:
        _PROCESS_TMP = Path(tempfile.mkdtemp(prefix="similar-images-spark-"))
        atexit.register(shutil.rmtree, _PROCESS_TMP, ignore_errors=True)
    return _PROCESS_TMP


def _start_gateway(submitted: bool) -> None:
    """Start Spark's JVM in this process, once: WARN logging, temporary files in :func:`_process_tmp`.

    Under ``spark-submit`` (``submitted``) connect to its JVM instead. Nothing else is given to the JVM at
    its start, since what it is given becomes the default of every later context in this process.
    """
    from pyspark import SparkConf, SparkContext  # noqa: PLC0415  (heavy: the Spark engine only)

    if SparkContext._gateway is not None:
        return
    if submitted:
        SparkContext._ensure_initialized()
        return
    tmp = _process_tmp()
    (tmp / "log4j2.properties").write_text(_LOG4J2)
    opts = f"-Djava.io.tmpdir={tmp} -Dlog4j2.configurationFile=file:{tmp / 'log4j2.properties'}"
    SparkContext._ensure_initialized(conf=SparkConf(loadDefaults=False).set("spark.driver.extraJavaOptions", opts))


# ------------------------------------------------------------------ settings
def read_properties(text: str) -> dict[str, str]:
    """The settings of a Java properties file such as ``spark-defaults.conf`` (``key value`` or ``key=value``).

    As Spark reads it: ``#`` and ``!`` comment lines, a key ends at the first ``=``, ``:`` or blank, a trailing
    backslash continues a line, values are trimmed; only ``spark.*`` keys are kept.
    """
    out: dict[str, str] = {}
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending += line[:-1]
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        logical.append(pending)
    for line in logical:
        m = re.match(r"([^=:\s]+)\s*[=:]?\s*(.*)", line)
        if m and m.group(1).startswith("spark."):
            out[m.group(1)] = m.group(2).strip()
    return out


def spark_defaults() -> tuple[dict[str, str], Path | None]:
    """The settings of ``spark-defaults.conf`` (``SPARK_CONF_DIR``, else ``$SPARK_HOME/conf``) and its path.

    ``({}, None)`` when neither variable names a folder holding one.
    """
    folder = os.environ.get("SPARK_CONF_DIR") or (
        str(Path(os.environ["SPARK_HOME"]) / "conf") if os.environ.get("SPARK_HOME") else None)
    if not folder:
        return {}, None
    path = Path(folder).expanduser() / "spark-defaults.conf"
    try:
        return read_properties(path.read_text(encoding="utf-8")), path
    except FileNotFoundError:
        return {}, None
    except (OSError, UnicodeDecodeError) as exc:
        raise SparkUnavailableError(f"Could not read Spark's settings file {path}: {exc}") from exc


def executor_python(conf: Any) -> str:
    """The Python the executors run: ``spark.pyspark.python``, else ``PYSPARK_PYTHON``, else this one."""
    return conf.get("spark.pyspark.python", None) or os.environ.get("PYSPARK_PYTHON") or sys.executable


def _last_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else exc.__class__.__name__)[:300]


@contextlib.contextmanager
def spark_context(master: str | None = None, settings: dict[str, str] | None = None, *,
                  app_name: str = "similar-images", started: list[float] | None = None) -> Iterator[Any]:
    """The active Spark context, or a new one (stopped on exit).

    Args:
        master: The Spark master; ``None``: the one ``spark-submit`` was given, else ``local[*]``.
        settings: More Spark settings (``spark.executor.memory``, ``spark.executorEnv.NAME``, ...).
        app_name: The application name shown by the cluster manager.
        started: If given, receives the start-up time in seconds (0 when an active context is reused).

    Raises:
        SparkUnavailableError: If pyspark or Java is missing, or Spark does not start.
    """
    check_spark()
    from pyspark import SparkConf, SparkContext  # noqa: PLC0415  (heavy: the Spark engine only)

    active = SparkContext._active_spark_context
    if active is not None:
        if master and active.master != master:
            logger.warning("Using the active Spark context (master %s), not %s", active.master, master)
        if started is not None:
            started.append(0.0)
        yield active
        return
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # this driver was started by spark-submit
    try:
        _start_gateway(submitted)
    except Exception as exc:
        raise SparkUnavailableError(
            f"Spark's JVM did not start ({exc.__class__.__name__}: {_last_line(exc)}). {_JAVA_HINT}"
        ) from exc
    # Under spark-submit its settings (spark-defaults.conf included) are the defaults; otherwise those of
    # spark-defaults.conf, read here: the JVM's own copy of them (system properties) would also carry the
    # settings given to an earlier context of this process into this one.
    conf = SparkConf(loadDefaults=submitted)
    if not submitted:
        defaults, where = spark_defaults()
        if defaults:
            logger.info("Spark settings from %s: %s", where, ", ".join(sorted(defaults)))
        for key, value in defaults.items():
            conf.set(key, value)
    for key, value in (settings or {}).items():
        conf.set(key, value)
    master = master or conf.get("spark.master", None) or "local[*]"
    local = master.startswith("local")
    conf.setMaster(master).setAppName(app_name)
    conf.setIfMissing("spark.ui.enabled", "false")
    conf.setIfMissing("spark.ui.showConsoleProgress", "false")
    conf.setIfMissing("spark.python.worker.reuse", "true")  # the embedder cache lives in the workers
    if not submitted:
        conf.setIfMissing("spark.sql.warehouse.dir", str(_process_tmp() / "warehouse"))
    if local:
        conf.setIfMissing("spark.driver.host", "127.0.0.1")
        conf.setIfMissing("spark.driver.bindAddress", "127.0.0.1")
    # Executors run this interpreter (or the one configured), not whatever `python3` is on their PATH.
    # pyspark reads the executors' Python from PYSPARK_PYTHON when the context starts.
    python = executor_python(conf)
    saved_python = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = python
    t0 = time.perf_counter()
    try:
        sc = SparkContext(conf=conf)
    except Exception as exc:
        raise SparkUnavailableError(
            f"Spark did not start ({exc.__class__.__name__}: {_last_line(exc)}). Check the master {master!r}."
        ) from exc
    finally:
        if saved_python is None:
            del os.environ["PYSPARK_PYTHON"]
        else:
            os.environ["PYSPARK_PYTHON"] = saved_python
    sc.setLogLevel("WARN")
    seconds = time.perf_counter() - t0
    if started is not None:
        started.append(seconds)
    logger.info("Started Spark (%s) in %.1f s; executors run %s", master, seconds, python)
    try:
        yield sc
    finally:
        sc.stop()
