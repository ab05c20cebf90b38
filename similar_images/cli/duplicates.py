"""CLI command ``duplicates``: near-duplicate pairs and groups."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..methods.duplicates import DuplicateConfig, find_duplicates
from ..store import Database
from ._common import configure_logging, handle_errors


def register(group: click.Group) -> None:
    """Add the ``duplicates`` command to ``group``."""

    @group.command()
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--threshold", "-t", type=click.FloatRange(-1.0, 1.0), default=0.85, show_default=True,
                  help="Minimum cosine similarity of a reported pair. 0.85 separated planted copies (resized, "
                       "JPEG q70, 10%% crop) from distinct COCO photos for vgg16-avg and mobilenetv2.")
    @click.option("--out-dir", "-o", type=click.Path(file_okay=False, path_type=Path), default=None,
                  help="Folder for pairs.csv, groups.csv and summary.json [default: DB/duplicates].")
    @click.option("--index", "index", type=click.Choice(["flat", "hnsw", "db"]), default="flat", show_default=True,
                  help="flat: exact range search; hnsw: approximate HNSW graph built for this run; "
                       "db: the database's own index (build-index).")
    @click.option("--batch-size", "-b", type=click.IntRange(1), default=1024, show_default=True,
                  help="Query vectors per Faiss call.")
    @click.option("--hnsw-m", type=click.IntRange(2), default=32, show_default=True,
                  help="HNSW links per node (M), for --index hnsw.")
    @click.option("--ef-construction", type=click.IntRange(1), default=80, show_default=True,
                  help="HNSW build depth (efConstruction), for --index hnsw.")
    @click.option("--ef-search", type=click.IntRange(1), default=128, show_default=True,
                  help="HNSW search depth (efSearch), for --index hnsw; raised to k when k grows past it.")
    @click.option("--initial-k", type=click.IntRange(1), default=32, show_default=True,
                  help="First k of the growing k-NN search (HNSW indexes).")
    @click.option("--max-k", type=click.IntRange(1), default=4096, show_default=True,
                  help="Largest k of the growing k-NN search; larger groups are cut (and reported).")
    @click.option("--show", type=click.IntRange(0), default=10, show_default=True,
                  help="Pairs printed (the CSV holds them all).")
    @click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
    @click.option("--quiet", "-q", is_flag=True, help="No log messages.")
    @click.option("--verbose", "-v", count=True, help="More log messages.")
    @handle_errors
    def duplicates(db: Path, threshold: float, out_dir: Path | None, index: str, batch_size: int, hnsw_m: int,
                   ef_construction: int, ef_search: int, initial_k: int, max_k: int, show: int, as_json: bool,
                   quiet: bool, verbose: int) -> None:
        """Find every pair of images in DB at least --threshold similar (near-duplicates).

        Runs a batched range search of the database vectors against an index over
        themselves (never an N x N matrix), and writes pairs.csv (path_a, path_b,
        similarity, id_a, id_b: each pair once, highest first) and groups.csv
        (group, size, id, path: connected components, one row per image).
        Removed images are left out.

        Example: similar-images duplicates photos-db --threshold 0.9 --index hnsw
        """
        configure_logging(verbose, quiet)
        config = DuplicateConfig(threshold=threshold, index=index, batch_size=batch_size, hnsw_m=hnsw_m,
                                 ef_construction=ef_construction, ef_search=ef_search,
                                 initial_k=min(initial_k, max_k), max_k=max_k)
        database = Database.open(db, load_index=index == "db")
        out = out_dir if out_dir is not None else db / "duplicates"
        report = find_duplicates(database, config, out_dir=out)
        if as_json:
            click.echo(json.dumps({**report.summary(), "out_dir": str(out)}, indent=2))
            return
        for a, b, s in list(zip(report.id_a.tolist(), report.id_b.tolist(), report.similarity.tolist()))[:show]:
            click.echo(f"{s:.4f}  {database.items[a]}  {database.items[b]}")
        if len(report) > show:
            click.echo(f"... and {len(report) - show} more")
        click.echo(f"{len(report)} pairs in {len(report.groups)} groups among {report.n_items} images at "
                   f"similarity >= {threshold} ({index}, {report.seconds:.2f} s); wrote {out / 'pairs.csv'} and "
                   f"{out / 'groups.csv'}")
