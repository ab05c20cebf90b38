"""CLI commands ``evaluate`` (recall, latency, size and retrieval quality of a database) and ``tune``
(measure a sweep of Faiss indexes on the database's own vectors and pick one)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..index import DEFAULT_RERANK
from ..measure import EvalConfig, TuneConfig, apply_choice, evaluate_database, plot_tuning, tune_database
from ..measure.evaluate import load_query_vectors
from ..store import Database
from ._common import apply_command, configure_logging, handle_errors

QUERIES_HELP = ("Query set instead of sampled database vectors: a folder of images, a file listing image paths "
                "(embedded with the database's model), or a .npy array of shape (n, dim).")
HOLDOUT_HELP = "Database vectors sampled as queries; each is excluded from its own results (exact and index)."


def _parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers, e.g. 1,10,100") from None
    if not ks or min(ks) < 1:
        raise click.BadParameter(f"cut-offs must be positive integers, e.g. 1,10,100; got {text!r}")
    return ks


def register(group: click.Group) -> None:
    """Add the ``evaluate`` and ``tune`` commands to ``group``."""

    @group.command()
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--holdout", "n_queries", type=click.IntRange(1), default=1000, show_default=True,
                  help=HOLDOUT_HELP)
    @click.option("--queries", type=click.Path(exists=False, path_type=Path), default=None, help=QUERIES_HELP)
    @click.option("-k", "ks", default="1,10,100", show_default=True,
                  help="Comma-separated cut-offs of recall@k against exact search.")
    @click.option("--labels", default="auto", show_default=True,
                  help="Class labels for precision@k and mAP@k: 'auto' (the parent folder of each image, when the "
                       "images sit in at least two folders), 'folders', 'none', or a CSV file of path,label rows "
                       "(relative paths are read relative to the CSV's folder).")
    @click.option("--quality-k", type=click.IntRange(1), default=10, show_default=True,
                  help="Cut-off k of precision@k and mAP@k.")
    @click.option("--quality-queries", type=click.IntRange(1), default=None,
                  help="Labeled images used as leave-one-out queries [default: all].")
    @click.option("--latency-queries", type=click.IntRange(1), default=200, show_default=True,
                  help="Queries timed one at a time (median and p99); all queries are also timed as one batch.")
    @click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
                  help="Faiss threads while searching and timing.")
    @click.option("--rerank", type=click.IntRange(0), default=None,
                  help="Re-ranking depth of the 'served' figures: k x RERANK index candidates re-ranked with the "
                       "stored vectors, as 'search' does [default: the search's default, "
                       f"{DEFAULT_RERANK}]; 0 or 1: index alone only.")
    @click.option("--weights", default=None, help="Weights to embed query images with (overrides the database's).")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the query samples.")
    @click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
    @click.option("--quiet", "-q", is_flag=True, help="No log messages.")
    @handle_errors
    def evaluate(db: Path, n_queries: int, queries: Path | None, ks: str, labels: str, quality_k: int,
                 quality_queries: int | None, latency_queries: int, threads: int, rerank: int | None,
                 weights: str | None, seed: int, as_json: bool, quiet: bool) -> None:
        """Measure the index of DB: recall@k against exact search, latency, size, and retrieval quality.

        Recall@1/10/100 compares the index's results with exact (brute-force)
        search, for the index alone and as 'search' serves them by default
        (index candidates re-ranked exactly with the stored vectors). Unless
        --queries is given, --holdout database vectors serve as queries and
        each is removed from both its result lists, so the index is measured
        as it is, without rebuilding it.
        Latency is the median and 99th percentile of single-query calls, and
        the per-query time of one batched call. When the images sit in class
        sub-folders (or --labels names a CSV), each labeled image is also a
        leave-one-out query for precision@k and mAP@k, with exact search and
        with the index.

        Example: similar-images evaluate flowers-db --holdout 500 --json
        """
        configure_logging(0, quiet or as_json)
        config = EvalConfig(ks=_parse_ks(ks), n_queries=n_queries, latency_queries=latency_queries,
                            quality_k=quality_k, quality_queries=quality_queries, threads=threads, rerank=rerank,
                            seed=seed)
        database = Database.open(db, weights=weights)
        report = evaluate_database(database, config, queries=queries, labels=labels)
        if as_json:
            click.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
        else:
            click.echo(report.format_table())
            if report.factory is None:
                click.echo(f"Build an index with: similar-images build-index {db}")

    @group.command()
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--target-recall", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
                  help="Recall@k the picked index must reach.")
    @click.option("-k", "k", type=click.IntRange(1), default=10, show_default=True, help="The k of recall@k.")
    @click.option("--holdout", "n_queries", type=click.IntRange(1), default=500, show_default=True,
                  help=HOLDOUT_HELP)
    @click.option("--queries", type=click.Path(exists=False, path_type=Path), default=None, help=QUERIES_HELP)
    @click.option("--index", "factories", multiple=True,
                  help="Index description to try (repeatable), instead of the default sweep (Flat, IVF-Flat, "
                       "IVF-PQ of several code sizes, OPQ/PCA + PQ, HNSW, SQ8/6/4 with and without a Hadamard "
                       "rotation, PQ + re-ranking).")
    @click.option("--max-latency-ms", type=click.FloatRange(0, min_open=True), default=None,
                  help="Also require this median single-query latency.")
    @click.option("--train-size", type=click.IntRange(1), default=None,
                  help="Training sample of each index [default: all, at most 100,000].")
    @click.option("--latency-queries", type=click.IntRange(1), default=100, show_default=True,
                  help="Queries timed one at a time per setting.")
    @click.option("--threads", type=click.IntRange(1), default=1, show_default=True,
                  help="Faiss threads while searching and timing (builds use all cores).")
    @click.option("--rerank", type=click.IntRange(0), default=DEFAULT_RERANK, show_default=True,
                  help="Also measure every setting as 'similar-images search' serves it by default: k x RERANK index "
                       "candidates re-ranked with the stored vectors (0 or 1: skip).")
    @click.option("--served", is_flag=True,
                  help="Pick by the served recall and latency (after re-ranking) instead of the index's own. The "
                       "re-ranking reads the stored vectors (vectors.f32) besides the index's memory.")
    @click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Where to save the recall/latency/memory plot (PNG) [default: DB/tune.png].")
    @click.option("--no-plot", is_flag=True, help="Do not draw the plot.")
    @click.option("--all", "all_points", is_flag=True, help="List every search setting, not one row per index.")
    @click.option("--apply", "apply_", is_flag=True,
                  help="Rebuild the index of DB with the pick and save its search parameters as the defaults.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the query sample.")
    @click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
    @click.option("--quiet", "-q", is_flag=True, help="No log messages.")
    @click.option("--verbose", "-v", count=True,
                  help="-vv: debug messages, including each index's training-size warnings (muted otherwise).")
    @handle_errors
    def tune(db: Path, target_recall: float, k: int, n_queries: int, queries: Path | None,
             factories: tuple[str, ...], max_latency_ms: float | None, train_size: int | None, latency_queries: int,
             threads: int, rerank: int, served: bool, plot_path: Path | None, no_plot: bool, all_points: bool,
             apply_: bool, seed: int, as_json: bool, quiet: bool, verbose: int) -> None:
        """Measure a sweep of Faiss indexes on the vectors of DB and pick the smallest that reaches the target.

        Every index is built on the database's own vectors and searched with
        a sweep of its search parameters (nprobe, efSearch, k_factor). For each
        setting it reports recall@k against exact search, single-query latency
        (median, p99) and batched latency, memory (the serialised index: every
        byte a search needs, including the full vectors where the index keeps
        them, as Flat, HNSW and RFlat do) and build time. Each setting is also
        measured as 'search' serves it by default (--rerank: index candidates
        re-ranked exactly with the stored vectors). The pick is the setting with
        the least memory that reaches --target-recall, with the index alone (or
        as served, with --served); --apply builds it into DB.

        Example: similar-images tune flowers-db --target-recall 0.95 --apply
        """
        configure_logging(verbose, quiet or as_json)
        config = TuneConfig(target_recall=target_recall, k=k, n_queries=n_queries, latency_queries=latency_queries,
                            factories=list(factories) or None, train_size=train_size, threads=threads,
                            max_latency_ms=max_latency_ms, rerank=rerank, served=served, seed=seed)
        database = Database.open(db, load_index=False)
        xq = load_query_vectors(database, queries) if queries is not None else None
        report = tune_database(database, config, queries=xq)
        plot_file = None
        if not no_plot:
            plot_file = plot_path or db / "tune.png"
            plot_tuning(report, plot_file, title=f"{db.name}: {report.n_vectors:,} vectors, {report.dim}-d")
        applied = None
        if apply_:
            if report.chosen is None:
                raise click.ClickException(
                    f"No index setting reaches recall@{report.k} >= {target_recall:g}"
                    + (" as served" if served else "")
                    + (f" within {max_latency_ms:g} ms" if max_latency_ms else "")
                    + "; nothing applied. Lower --target-recall or try other --index descriptions.")
            applied = apply_choice(database, report.chosen, train_size=train_size)
        if as_json:
            out = report.to_dict()
            out["plot"] = str(plot_file) if plot_file else None
            out["applied"] = applied.to_dict() if applied else None
            click.echo(json.dumps(out, indent=2))
            return
        click.echo(report.format_table(all_points=all_points, apply=lambda p: apply_command(db, p)))
        if plot_file:
            click.echo(f"Plot: {plot_file}")
        if applied:
            params = ", ".join(f"{n}={v}" for n, v in applied.search_params.items()) or "none"
            recall = "n/a" if applied.recall_at_10 is None else f"{applied.recall_at_10:.3f}"
            served_recall = "n/a" if applied.recall_at_10_served is None else f"{applied.recall_at_10_served:.3f}"
            click.echo(f"Applied: {applied.factory} over {applied.n_vectors} vectors, search defaults {params}, "
                       f"{applied.index_bytes:,} bytes; build-index's own check: recall@10 {recall} for the index "
                       f"alone, {served_recall} as served. More with: similar-images evaluate {db}")
