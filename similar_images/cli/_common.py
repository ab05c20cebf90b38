"""Shared helpers of the command-line interface: logging setup, turning the library's errors into one-line
messages at the edge, and the printing of build reports and results."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .._util.parsing import parse_int, shown
from ..embed.backends import BACKENDS, PRECISIONS
from ..embed.tf_import import quiet_tensorflow
from ..engines.spark import SparkEngine
from ..errors import (
    AutoPrecisionOnClusterError,
    BackendUnavailableError,
    DatabaseCorruptError,
    DatabaseExistsError,
    DatabaseNotFoundError,
    DownloadError,
    IndexExistsError,
    IndexNotBuiltError,
    InterruptedBuildError,
    PartitionFailedError,
    SimilarImagesError,
    UnknownIdError,
)
from ..index import DEFAULT_RERANK, BuildReport, IndexConfig
from ..measure.tune_report import PARAM_NAMES, TunePoint
from ..methods.sift.extract import FORMAT as SIFT_FORMAT
from ..search import Results
from ..sources.images import normalize_path
from ..sources.texts import shorten
from ..store import Database

F = TypeVar("F", bound=Callable[..., Any])


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Configure the root logger for CLI use (the library itself never does)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    # Other libraries' INFO lines (e.g. faiss.loader's four lines about CPU builds) are noise for a CLI user.
    for name in ("faiss", "faiss.loader", "py4j"):
        logging.getLogger(name).setLevel(logging.WARNING if level == logging.INFO else logging.NOTSET)
    quiet_tensorflow()  # TensorFlow is chatty on import (the user's own settings win)


def handle_errors(func: F) -> F:
    """Turn the library's errors (and a denied file access) into a one-line :class:`click.ClickException`.

    Anything else is a bug: it is left alone, so that it shows with its traceback.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SimilarImagesError as exc:
            raise click.ClickException(cli_message(exc)) from exc
        except PermissionError as exc:
            raise click.ClickException(f"Permission denied: {exc.filename or exc}") from exc

    return wrapper  # type: ignore[return-value]


def cli_message(exc: SimilarImagesError) -> str:
    """The message of a library error, with the command line's advice (its flags) where the error carries the data.

    The library describes the problem in its own terms (``force=True``); the options that fix it are the CLI's.
    """
    if isinstance(exc, IndexExistsError):
        return f"{exc.path} already has an index ({exc.factory}); pass --force to rebuild it"
    if isinstance(exc, DatabaseExistsError) and exc.path is not None:
        return f"A database already exists at {exc.path}. Choose another folder, or pass --force to replace it."
    if isinstance(exc, InterruptedBuildError):
        return (f"{exc.path} holds an interrupted build with other settings ({exc.settings}), {exc.shards} shard(s) "
                "done. Re-run with the same options to resume it, or pass --force to start over.")
    if isinstance(exc, AutoPrecisionOnClusterError):
        return (f"--precision auto measures this machine's CPU, but the executors of {exc.master} run on other "
                "machines; pass --precision fp32 (or bf16/int8 if every executor's CPU runs it natively)")
    if isinstance(exc, IndexNotBuiltError):
        return f"{exc.path} has no index; run 'similar-images build-index {exc.path}' first, or use --index flat"
    hint = advice(exc)
    if hint is None:
        return str(exc)
    text = (exc.problem or str(exc)).rstrip()  # the library's own fix (exc.hint) gives way to the CLI's
    return f"{text}{'' if text.endswith(('.', ':')) else '.'}{'' if hint.startswith(chr(10)) else ' '}{hint}"


def _or(flag: str, values: object) -> str:
    """``--precision fp32 or --precision bf16`` for a tuple of choices, ``--backend torch`` for one."""
    choices = values if isinstance(values, tuple) else (values,)
    return " or ".join(f"{flag} {v}" for v in choices)


def advice(exc: SimilarImagesError) -> str | None:
    """What to do on the command line about a library error, from the data it carries (never from its message).

    Returns:
        A sentence naming the commands and flags that fix it, or ``None`` where the message says it all.
    """
    if isinstance(exc, DatabaseNotFoundError):
        if exc.partial is not None:
            return "Run the same extract (or text build) command again to resume it."
        if exc.path is None:
            return None
        if exc.fmt == SIFT_FORMAT:
            return f"Build one with:\n  similar-images sift extract IMAGES_FOLDER {exc.path}"
        return (f"Build one with:\n  similar-images extract IMAGES_FOLDER {exc.path}\n"
                f"  similar-images build-index {exc.path}")
    if isinstance(exc, DatabaseCorruptError):
        if exc.rebuild == "index" and exc.database is not None:
            return f"Rebuild it with: similar-images build-index {exc.database} --force"
        return None
    if isinstance(exc, PartitionFailedError):
        return "Run the same command again to resume." if exc.resumable else None
    if isinstance(exc, DownloadError):
        return {"images": "Without network access: similar-images extract /path/to/your/images DB",
                "texts": "Without network access: similar-images text build PATH/TO/texts.csv DB"}.get(
                    exc.offline_source or "")
    setting, value, expected = exc.setting, exc.value, exc.expected
    if setting == "encoding":
        return f"Pass the file's encoding, e.g. --encoding {expected or 'latin-1'}."
    if setting == "column":
        return "Pass --column NAME (the file needs a header row)."
    if setting == "weights":
        if value == "imagenet":
            return "Without internet access, pass --weights PATH with a local weights file."
        return "Pass --weights imagenet to download Keras' ImageNet weights, or --weights PATH of a local file."
    if setting == "model_path":
        return "Or pass a local model folder with --model-path PATH."
    if setting == "model":
        if expected:
            return f"Or use this file with {_or('--model', expected)}."
        return "Or choose the model the file belongs to with --model (similar-images models lists them)."
    if setting == "backend" and expected:
        return f"{'Or use' if isinstance(exc, BackendUnavailableError) else 'Use'} {_or('--backend', expected)}."
    if setting == "precision":
        if isinstance(expected, tuple):
            return f"Or choose {_or('--precision', expected)}."
        return "Leave out --precision" + (f" to use {expected}." if expected else ".")
    if setting == "allow_backend_mismatch":
        asked = " ".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
        return (f"Leave out --backend{'/--precision' if isinstance(value, tuple) and len(value) > 1 else ''}, or "
                f"pass --allow-backend-mismatch to embed queries with {asked} anyway.")
    if setting == "train_size":
        return f"Raise --train-size (at least {expected:,})." if isinstance(expected, int) else "Raise --train-size."
    if setting == "factory" and expected:
        return f"Choose a smaller index: {_or('--index', expected)}."
    if setting == "labels":
        return "Give --labels CSV."
    if setting == "allow_private":
        return "Start the server with --allow-private-urls to allow internal addresses."
    return None


def apply_command(db: Path, point: TunePoint) -> str:
    """The command that builds the index of a tuning point: ``similar-images build-index DB --force --index ...``."""
    parts = [f"similar-images build-index {db} --force --index '{point.factory}'"]
    parts += [f"--{PARAM_NAMES[name].replace('_', '-')} {value}" for name, value in point.params.items()]
    return " ".join(parts)


def parse_query(query: str, by_id: bool, *, guess: bool = False) -> str | int:
    """A QUERY argument: the text as given, or with ``--id`` the database id it names (with ``guess``, digits that
    name no file are an id too)."""
    if not by_id and not (guess and query.isascii() and query.isdigit() and not Path(query).exists()):
        return query
    value = parse_int(query)
    if value is None:
        raise click.BadParameter(f"--id needs an integer, got {shown(query)}", param_hint="QUERY")
    return value


def parse_spark_conf(ctx: click.Context | None, param: click.Parameter | None,
                     values: tuple[str, ...]) -> dict[str, str]:
    """``--conf KEY=VALUE`` options as a dict of Spark settings (a click callback; the last of a key wins).

    Raises:
        click.BadParameter: For a value without ``=`` or with an empty key.
    """
    out: dict[str, str] = {}
    for value in values:
        key, sep, setting = value.partition("=")
        key = key.strip()
        if not sep or not key or any(c.isspace() for c in key):
            raise click.BadParameter(f"needs KEY=VALUE (e.g. spark.executor.memory=4g), got {shown(value)}",
                                     ctx=ctx, param=param)
        out[key] = setting.strip()
    return out


def engine_options(func: F | None = None, *, index_only: bool = False) -> Any:
    """``--engine``, ``--master``, ``--partitions`` and ``--conf``: where the embedding (or the index build) runs.

    ``@engine_options`` for commands that embed (and may build an index); ``@engine_options(index_only=True)``
    for those that only build an index (their ``--partitions`` help states the index build's default).
    """
    if func is None:
        return functools.partial(engine_options, index_only=index_only)
    index_default = "max(Spark's default parallelism, one per million vectors)"
    extract_default = "one per Spark task slot (core), and at least one per 4,096 items"
    partitions_default = (index_default if index_only
                          else f"{extract_default}; for an index, {index_default}")
    options = [
        click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
                     help="local: this process; spark: Apache Spark (needs pyspark and Java; the database folder "
                          "must be on storage every executor reaches)."),
        click.option("--master", default=None,
                     help="Spark master with --engine spark: local[*], local[N], spark://HOST:7077, yarn ... "
                          "[default: the one spark-submit was given, else local[*]]."),
        click.option("--partitions", type=click.IntRange(1), default=None,
                     help=f"Spark partitions (tasks) with --engine spark [default: {partitions_default}]."),
        click.option("--conf", "spark_conf", multiple=True, metavar="KEY=VALUE", callback=parse_spark_conf,
                     help="A Spark setting with --engine spark, as for spark-submit (repeatable), e.g. "
                          "spark.executor.memory=4g; it wins over spark-defaults.conf (SPARK_CONF_DIR, else "
                          "$SPARK_HOME/conf)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def query_backend_options(func: F) -> F:
    """``--backend``, ``--precision`` and ``--allow-backend-mismatch`` for commands that embed with an existing
    database's model (add, search, serve): by default the backend and precision recorded in its manifest."""
    options = [
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Inference backend [default: the one the database was built with]."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                     help="Inference precision [default: the one the database was built with]."),
        click.option("--allow-backend-mismatch", is_flag=True,
                     help="Allow another backend or precision than the database's (a warning states the measured "
                          "agreement with fp32); otherwise such a request is refused."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_engine(engine: str, master: str | None, partitions: int | None,
                spark_conf: dict[str, str] | None = None) -> SparkEngine | None:
    """The engine the options name (``None``: the local one)."""
    if engine == "local":
        if master is not None or partitions is not None or spark_conf:
            raise click.UsageError("--master, --partitions and --conf go with --engine spark")
        return None
    return SparkEngine(master=master, partitions=partitions, conf=spark_conf)


def engine_path(path: Path, engine: SparkEngine | None) -> Path:
    """A database path as an engine gets it: for Spark absolute (``~`` expanded, links kept), since its
    executors resolve a relative path in their own working folders; for the local engine as given."""
    return path if engine is None else normalize_path(path)


def run_build_index(db: Path, config: IndexConfig, *, force: bool, engine: SparkEngine | None = None,
                    on_disk: bool | None = None) -> BuildReport:
    """Build the index of ``db`` in this process, or with a Spark engine."""
    if engine is None and on_disk is not None:
        raise click.UsageError("--on-disk and --in-memory go with --engine spark")
    if engine is not None and on_disk is not None:
        engine.on_disk = on_disk
    return Database.open(db, load_index=False).build_index(config, engine=engine, force=force)


def index_build_options(func: F) -> F:
    """The options every index-building command shares: --nprobe, --train-size and --eval-queries."""
    options = [
        click.option("--nprobe", type=click.IntRange(1), default=None,
                     help="IVF lists visited per query, saved as the default [default: measured: the smallest "
                          "nprobe within 0.5% of the best recall@10]."),
        click.option("--train-size", type=click.IntRange(1), default=None,
                     help="Vectors sampled for training [default: all, at most 100,000]."),
        click.option("--eval-queries", type=click.IntRange(0), default=1000, show_default=True,
                     help="Database vectors used as queries to measure recall@10 (0 skips it)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def echo_build_report(report: BuildReport) -> None:
    """Print an index build report: recall@10 against exact search, size, time, search defaults."""
    recall = "n/a" if report.recall_at_10 is None else f"{report.recall_at_10:.3f}"
    served = report.recall_at_10_served
    if served is not None:
        recall += f" index alone, {served:.3f} as served (candidates re-ranked exactly)"
    params = ", ".join(f"{k}={v}" for k, v in report.search_params.items()) or "none"
    calibration = report.nprobe_recalls
    if calibration:
        params += " (measured recall by nprobe: " + ", ".join(f"{p}: {r:.3f}" for p, r in calibration.items()) + ")"
    click.echo(f"Index {report.factory} over {report.n_vectors} vectors (trained on {report.n_train})\n"
               f"  recall@10 vs exact: {recall} ({report.n_eval_queries} queries)\n"
               f"  size: {report.index_bytes:,} bytes\n"
               f"  build time: {report.build_seconds:.2f} s\n"
               f"  search defaults: {params}")
    if report.score_bands:
        b = report.score_bands
        click.echo(f"  score bands (from each item's nearest neighbour): near-duplicate >= {b['near_duplicate']:.3f}, "
                   f"very similar >= {b['very_similar']:.3f}, similar >= {b['similar']:.3f}, weak below")


def search_options(func: F) -> F:
    """The options every search command shares (results, exact search, per-query index settings, re-ranking)."""
    options = [
        click.option("-k", default=8, show_default=True, type=click.IntRange(1, 10_000), help="Number of results."),
        click.option("--id", "by_id", is_flag=True,
                     help="QUERY is a database id (reuses its stored vector); for images, a QUERY of digits that "
                          "names no file is taken as an id anyway."),
        click.option("--exact", is_flag=True, help="Exact search over all vectors instead of the index."),
        click.option("--nprobe", type=click.IntRange(1), default=None, help="IVF lists to visit for this query."),
        click.option("--rerank", type=click.IntRange(0), default=DEFAULT_RERANK, show_default=True,
                     help="Fetch k x RERANK candidates from the index and re-rank them with the stored vectors "
                          "(exact scores); 1 shows the index's own approximate ranking and scores."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def echo_results(results: Results, as_json: bool) -> None:
    """Print search results as a table, or as JSON."""
    if as_json:
        click.echo(json.dumps(results.to_dict(), indent=2, ensure_ascii=False))
        return
    key = results.item_key
    click.echo(f"{'rank':>4}  {'id':>7}  {'score':>7}  {key}")
    for m in results:
        item = m.item if key == "path" else shorten(m.item.replace("\n", " "))
        click.echo(f"{m.rank:>4}  {m.id:>7}  {m.score:>7.4f}  {item}")
    mode = "exact" if results.params.get("exact") else ", ".join(f"{k}={v}" for k, v in results.params.items()
                                                                 if k != "exact")
    click.echo(f"({len(results)} results, search {results.search_ms:.2f} ms, total {results.total_ms:.0f} ms, "
               f"{mode or 'index defaults'})")


def search_query(database: Database, query: str, by_id: bool, k: int, **options: Any) -> Results:
    """Search ``database`` for a QUERY argument.

    In an image database, digits that name no file are an id, as in ``explain`` (``search DB 128`` and
    ``explain DB 128 40`` read ``128`` the same way); in a text database they are text unless ``--id`` is given.
    """
    q = parse_query(query, by_id, guess=database.item_key == "path")
    try:
        return database.search(q, k, **options)
    except UnknownIdError as exc:
        if by_id or not isinstance(q, int):
            raise
        raise click.ClickException(f"{exc}; no image file is named {query!r} either") from exc
