"""CLI commands of the image pipeline: extract, build-index, search, info, add, remove, models."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..apps.common import progress_sentence
from ..embed import DEFAULT_MODEL, available_models, get_model_spec
from ..embed.backends import (
    AUTO_MIN_FACTOR,
    BACKENDS,
    DEFAULT_CALIBRATION_SIZE,
    DEFAULT_THRESHOLD,
    PRECISION_CHOICES,
    PRECISIONS,
)
from ..index import IndexConfig
from ..sources.images import DEFAULT_MAX_PIXELS
from ..store import Database, ExtractConfig, extract_features
from ..store.live import build_progress, open_readable
from ._common import (
    configure_logging,
    echo_build_report,
    echo_results,
    engine_options,
    engine_path,
    handle_errors,
    index_build_options,
    make_engine,
    query_backend_options,
    run_build_index,
    search_options,
    search_query,
)

WEIGHTS_HELP = (
    "'imagenet' (Keras download, cached in ~/.keras), 'random' (untrained, for tests), "
    "or the path of a local weights file."
)


def register(group: click.Group) -> None:
    """Add the image commands to ``group``."""

    @group.command()
    @click.argument("images", type=click.Path(exists=True, path_type=Path))
    @click.argument("db", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                  help="Feature extractor; see 'similar-images models'.")
    @click.option("--weights", "-w", default="imagenet", show_default=True, help=WEIGHTS_HELP)
    @click.option("--batch-size", "-b", default=32, show_default=True, type=click.IntRange(1),
                  help="Images per model call.")
    @click.option("--workers", type=click.IntRange(1), default=None,
                  help="Decoding threads [default: CPU count, max 8].")
    @click.option("--shard-size", default=1024, show_default=True, type=click.IntRange(1),
                  help="Images per committed shard (the most an interruption can lose).")
    @click.option("--max-pixels", type=click.IntRange(1), default=DEFAULT_MAX_PIXELS, show_default=True,
                  help="Skip images with more pixels than this (a guard against decompression bombs); the limit "
                       "is recorded and also applies to later adds and queries.")
    @click.option("--backend", type=click.Choice(BACKENDS), default="keras", show_default=True,
                  help="Inference backend; openvino needs 'pip install openvino nncf'.")
    @click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
                  help="Inference precision; auto keeps the fastest whose top-10 agreement with fp32, measured on "
                       "a sample of IMAGES, reaches --agreement (fp32 at once where the CPU runs no lower "
                       "precision natively; recorded in the manifest; queries use the same).")
    @click.option("--calibration-size", type=click.IntRange(1), default=None,
                  help=f"Images sampled from IMAGES to calibrate int8 and to measure agreement for auto [default: "
                       f"up to {DEFAULT_CALIBRATION_SIZE}]; auto measures only when IMAGES holds at least "
                       f"{AUTO_MIN_FACTOR} times as many, else runs fp32.")
    @click.option("--agreement", type=click.FloatRange(0.0), default=DEFAULT_THRESHOLD, show_default=True,
                  help="Top-10 agreement with fp32 that auto requires of a lower precision.")
    @click.option("--decoder", type=click.Choice(["pil", "fast"]), default="pil", show_default=True,
                  help="fast: JPEGs decoded at a reduced scale by libjpeg-turbo (needs simplejpeg; slightly "
                       "different pixels, recorded so that queries decode the same way).")
    @click.option("--force", is_flag=True, help="Replace an existing database at DB.")
    @click.option("--index", "index_factory", default=None, metavar="FACTORY|auto",
                  help="Build this index as soon as the extraction ends ('auto': the one build-index picks), "
                       "unless DB has one; a service or app following DB switches to it.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar or log messages.")
    @click.option("--verbose", "-v", count=True, help="More log messages.")
    @engine_options
    @handle_errors
    def extract(images: Path, db: Path, model: str, weights: str, batch_size: int, workers: int | None,
                shard_size: int, max_pixels: int, backend: str, precision: str, calibration_size: int | None,
                agreement: float, decoder: str, force: bool, index_factory: str | None, quiet: bool, verbose: int,
                engine: str, master: str | None, partitions: int | None, spark_conf: dict[str, str]) -> None:
        """Extract feature vectors of IMAGES into the database folder DB.

        IMAGES is a folder (searched recursively for jpg, jpeg, png, bmp, gif,
        webp and tiff files) or a text file listing one image path per line.
        Unreadable images are skipped and listed in DB/failures.csv. If the run
        is interrupted, running the same command again resumes it.

        With --engine spark the shards are embedded by Spark tasks (one model load
        per executor process) and committed into DB/.partial/; a killed job resumes
        at the shard level.

        The database can be searched (search, serve, the app) from the first
        committed shard on; with --index the index is built when the
        extraction ends, and readers switch to it.

        Example: similar-images extract photos/ photos-db --model vgg16-avg --index auto
        """
        configure_logging(verbose, quiet)
        runner = make_engine(engine, master, partitions, spark_conf)
        db = engine_path(db, runner)
        wanted = None if index_factory is None or index_factory.strip().lower() == "auto" else index_factory
        config = ExtractConfig(model=model, weights=weights, batch_size=batch_size, workers=workers,
                               shard_size=shard_size, max_pixels=max_pixels, verbose=not quiet, backend=backend,
                               precision=precision, calibration_size=calibration_size, agreement=agreement,
                               decoder=decoder)
        if runner is not None and index_factory is not None:  # one Spark application for both jobs (a second
            click.get_current_context().with_resource(runner.context())  # waits for the first's executors to go)
        s = extract_features(images, db, config, force=force, engine=runner)
        resumed = f" (resumed after {s.resumed_from})" if s.resumed_from else ""
        click.echo(f"Extracted {s.extracted} of {s.total} images{resumed} into {db} in {s.seconds:.1f} s "
                   f"({s.images_per_second:.1f} images/s); {s.failed} failed"
                   + (f", listed in {db / 'failures.csv'}" if s.failed else ""))
        if s.choice is not None:
            click.echo(f"Precision: {s.choice.backend} {s.choice.precision} ({s.choice.reason}); {s.choice.cost()}")
        if index_factory is None:
            click.echo(f"Next: similar-images build-index {db}")
        elif Database.open(db, load_index=False).manifest.index is not None:
            click.echo(f"{db} has an index already (build-index {db} --force replaces it)")
        else:
            report = run_build_index(db, IndexConfig(factory=wanted), force=False, engine=runner)
            if not quiet:
                echo_build_report(report)

    @group.command("build-index")
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--index", "factory", default=None,
                  help="Faiss index_factory string, e.g. 'Flat', 'IVF256,PQ16', 'OPQ16,IVF256,PQ16', 'HNSW32' "
                       "[default: Flat below 9,984 vectors, else IVF{sqrt N},PQ{d/16}].")
    @index_build_options
    @click.option("--ef-search", type=click.IntRange(1), default=None, help="HNSW efSearch, saved as the default.")
    @click.option("--k-factor", type=click.IntRange(1), default=None, help="Re-ranking depth for ',RFlat' indexes.")
    @click.option("--force", is_flag=True, help="Replace an existing index.")
    @click.option("--json", "as_json", is_flag=True, help="Print the build report as JSON.")
    @click.option("--quiet", "-q", is_flag=True, help="Only the result.")
    @engine_options(index_only=True)
    @click.option("--on-disk/--in-memory", "on_disk", default=None,
                  help="With --engine spark: merge the inverted lists into an index-NNNN.ivfdata file beside the "
                       "index (memory-mapped) or in memory [default: on disk when the index would not fit in "
                       "half the free memory].")
    @handle_errors
    def build_index(db: Path, factory: str | None, train_size: int | None, nprobe: int | None,
                    ef_search: int | None, k_factor: int | None, eval_queries: int, force: bool,
                    as_json: bool, quiet: bool, engine: str, master: str | None, partitions: int | None,
                    spark_conf: dict[str, str], on_disk: bool | None) -> None:
        """Train a Faiss index over the vectors of DB and measure it.

        Prints recall@10 against exact search (the index alone, and as
        'search' serves it: candidates re-ranked exactly), the index size and
        the build time; all are also saved in DB/manifest.json. Unless
        --nprobe is given, an IVF index's nprobe is measured: recall at
        nprobe 1, 2, 4, ... and the smallest within 0.5% of the best is kept.

        With --engine spark an IVF index is trained here, filled in parts by
        Spark tasks, and merged here (in memory or on disk).

        Example: similar-images build-index photos-db --index IVF64,PQ16 --nprobe 8
        """
        configure_logging(0, quiet or as_json)
        runner = make_engine(engine, master, partitions, spark_conf)
        db = engine_path(db, runner)
        config = IndexConfig(factory=factory, train_size=train_size, nprobe=nprobe, ef_search=ef_search,
                             k_factor=k_factor, eval_queries=eval_queries)
        report = run_build_index(db, config, force=force, engine=runner, on_disk=on_disk)
        if as_json:
            click.echo(json.dumps(report.to_dict(), indent=2))
            return
        echo_build_report(report)

    @group.command()
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.argument("query")
    @search_options
    @click.option("--ef-search", type=click.IntRange(1), default=None, help="HNSW efSearch for this query.")
    @click.option("--weights", "-w", default=None, help="Weights for embedding the query, overriding the database's. "
                  + WEIGHTS_HELP)
    @query_backend_options
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @handle_errors
    def search(db: Path, query: str, k: int, by_id: bool, exact: bool, nprobe: int | None, rerank: int,
               ef_search: int | None, weights: str | None, backend: str | None, precision: str | None,
               allow_backend_mismatch: bool, as_json: bool) -> None:
        """Find the images (or texts) in DB most similar to QUERY.

        QUERY is an image path, an http(s) URL, or a database id (digits
        that name no file, or any QUERY with --id); for a text database, the
        query text.

        Example: similar-images search photos-db cat.jpg -k 8
        """
        configure_logging(0, True)
        database = open_readable(db, weights=weights, backend=backend, precision=precision,
                                 allow_backend_mismatch=allow_backend_mismatch)  # all that is committed so far
        results = search_query(database, query, by_id, k, exact=exact, nprobe=nprobe, ef_search=ef_search,
                               rerank=rerank)
        echo_results(results, as_json)

    @group.command()
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
    @handle_errors
    def info(db: Path, as_json: bool) -> None:
        """Describe the database DB: model, counts, index and its measured recall.

        Every file is checked against the manifest (the index is read too), so a
        damaged database is reported here rather than at the next search.

        While DB is being extracted, says how far the extraction has got
        (--json: its progress as data).

        Example: similar-images info photos-db
        """
        progress = build_progress(db)
        if progress.phase in ("extracting", "interrupted"):
            if as_json:
                click.echo(json.dumps({"build": progress.to_dict()}, indent=2))
            else:
                click.echo(f"Database {db} is being built: {progress_sentence(progress, 'items')}")
            return
        database = Database.open(db, mmap_index=True)  # checks the vectors, the items and the index
        m = database.manifest
        listed = len(database.failures)
        if listed != m.counts.failed:
            click.echo(f"Warning: {db / str(m.files['failures'])} lists {listed} failures but the manifest counts "
                       f"{m.counts.failed}", err=True)
        if as_json:
            click.echo(json.dumps(m.to_dict(), indent=2, ensure_ascii=False))
            return
        c = m.counts
        click.echo(f"Database {db} ({m.kind})\n"
                   f"  model: {m.model_name} ({m.model.get('layer', '')}, {m.dim}-d, "
                   f"weights {m.model.get('weights', 'n/a')})\n"
                   f"  items: {c.items} ({len(database)} searchable, {c.removed} removed), failed: {c.failed}")
        idx = m.index
        if idx:
            click.echo(f"  index: {idx.factory}, {c.indexed} vectors ({c.added_after_training} added after "
                       f"training), recall@10 {idx.get('recall_at_10')}, {idx.get('index_bytes', 0):,} bytes, "
                       f"search defaults {idx.search_params}")
        else:
            click.echo(f"  index: none yet (run: similar-images build-index {db})")
        click.echo(f"  created {m.created_at}, updated {m.updated_at}")

    @group.command()
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.argument("images", type=click.Path(exists=True, path_type=Path))
    @click.option("--weights", "-w", default=None, help="Weights overriding the database's. " + WEIGHTS_HELP)
    @click.option("--backend", type=click.Choice(BACKENDS), default=None,
                  help="Inference backend [default: the database's; another one is refused: its vectors would "
                       "not match the database's].")
    @click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                  help="Inference precision [default: the database's; another one is refused].")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
    @engine_options
    @handle_errors
    def add(db: Path, images: Path, weights: str | None, backend: str | None, precision: str | None, quiet: bool,
            engine: str, master: str | None, partitions: int | None, spark_conf: dict[str, str]) -> None:
        """Add the images in IMAGES (a folder or file list) to DB without retraining.

        New images get new ids; images already in DB are skipped.

        Example: similar-images add photos-db more-photos/
        """
        configure_logging(0, quiet)
        runner = make_engine(engine, master, partitions, spark_conf)
        db = engine_path(db, runner)
        database = Database.open(db, weights=weights, backend=backend, precision=precision)
        summary = database.add(images, verbose=not quiet, engine=runner)
        first = f" (ids {summary.ids[0]}..{summary.ids[-1]})" if summary.ids else ""
        click.echo(f"Added {len(summary.ids)} images{first}; {len(summary.failures)} failed")
        for path, reason in summary.failures:
            click.echo(f"  failed: {path}: {reason}", err=True)

    @group.command()
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.argument("targets", nargs=-1, required=True)
    @handle_errors
    def remove(db: Path, targets: tuple[str, ...]) -> None:
        """Remove items from DB by id or by path (TARGETS); other ids do not change.

        Example: similar-images remove photos-db 12 photos/dup.jpg
        """
        database = Database.open(db)
        parsed: list[int | str] = [int(t) if t.isascii() and t.isdigit() else t for t in targets]
        removed = database.remove(parsed)
        click.echo(f"Removed {len(removed)} items: ids {', '.join(map(str, removed))}")

    @group.command()
    def models() -> None:
        """List the available feature extractors.

        Example: similar-images models
        """
        for name in available_models():
            spec = get_model_spec(name)
            click.echo(f"{name:<14} {spec.dim:>5}-d  {spec.description}")
