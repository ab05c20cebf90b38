"""CLI command group ``sift``: SIFT local-feature extraction, search and info."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import DatabaseCorruptError
from ..methods.sift import SiftConfig, SiftDatabase, extract_sift
from ._common import configure_logging, handle_errors


def _open(db: Path) -> SiftDatabase:
    """Open a SIFT database; a damaged one gets the command that rebuilds it."""
    try:
        return SiftDatabase.open(db)
    except DatabaseCorruptError as exc:
        raise click.ClickException(f"{exc}: similar-images sift extract IMAGES {db} --force") from exc


def register(group: click.Group) -> None:
    """Add the ``sift`` group to ``group``."""

    @group.group()
    def sift() -> None:
        """SIFT local features: extract descriptors into one Faiss index, search by votes.

        Example: similar-images sift extract photos/ photos-sift &&
        similar-images sift search photos-sift query.jpg
        """

    @sift.command("extract")
    @click.argument("images", type=click.Path(exists=True, path_type=Path))
    @click.argument("db", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--max-features", type=click.IntRange(1), default=200, show_default=True,
                  help="Most SIFT descriptors kept per image (strongest keypoints).")
    @click.option("--root-sift/--no-root-sift", default=True, show_default=True,
                  help="RootSIFT normalisation (L1 then square root) of the descriptors.")
    @click.option("--max-side", type=click.IntRange(16), default=640, show_default=True,
                  help="Images are downscaled to at most this many pixels on their longer side.")
    @click.option("--index", "factory", default="Flat", show_default=True,
                  help="Faiss index_factory string of the descriptor index (L2), e.g. 'Flat', 'IVF1024,Flat', "
                       "'HNSW32'.")
    @click.option("--train-size", type=click.IntRange(1), default=200_000, show_default=True,
                  help="Descriptors used to train an index that needs training (IVF).")
    @click.option("--shard-size", default=256, show_default=True, type=click.IntRange(1),
                  help="Images per committed shard (the most an interruption can lose).")
    @click.option("--force", is_flag=True, help="Replace an existing SIFT database at DB.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar or log messages.")
    @click.option("--verbose", "-v", count=True, help="More log messages.")
    @handle_errors
    def sift_extract(images: Path, db: Path, max_features: int, root_sift: bool, max_side: int, factory: str,
                     train_size: int, shard_size: int, force: bool, quiet: bool, verbose: int) -> None:
        """Extract SIFT descriptors of IMAGES (a folder or a file list) into the folder DB.

        Unreadable images are skipped and listed in DB/failures.csv. If it is
        interrupted, running the same command again resumes it.

        Example: similar-images sift extract photos/ photos-sift --max-features 200
        """
        configure_logging(verbose, quiet)
        config = SiftConfig(max_features=max_features, root_sift=root_sift, max_side=max_side, factory=factory,
                            train_size=train_size, shard_size=shard_size, verbose=not quiet)
        s = extract_sift(images, db, config, force=force)
        resumed = f" (resumed after {s.resumed_from})" if s.resumed_from else ""
        click.echo(f"Extracted {s.descriptors} SIFT descriptors of {s.extracted} of {s.total} images{resumed} into "
                   f"{db} in {s.seconds:.1f} s ({s.images_per_second:.1f} images/s); {s.failed} failed"
                   + (f", listed in {db / 'failures.csv'}" if s.failed else ""))

    @sift.command("search")
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
    @click.option("-k", type=click.IntRange(1, 10_000), default=10, show_default=True, help="Images returned.")
    @click.option("--knn", type=click.IntRange(1, 10_000), default=5, show_default=True,
                  help="Nearest database descriptors looked up per query descriptor.")
    @click.option("--ratio", type=click.FloatRange(0.0, 1.0, min_open=True), default=None,
                  help="Lowe ratio test (e.g. 0.8): vote only for clearly best matches [default: off].")
    @click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
    @handle_errors
    def sift_search(db: Path, image: Path, k: int, knn: int, ratio: float | None, as_json: bool) -> None:
        """Rank the images of the SIFT database DB by matches with IMAGE.

        Example: similar-images sift search photos-sift query.jpg -k 5 --ratio 0.8
        """
        sdb = _open(db)
        res = sdb.search(image, k, knn=knn, ratio=ratio)
        if as_json:
            click.echo(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
            return
        click.echo(f"{'rank':>4}  {'id':>7}  {'votes':>5}  path")
        for m in res:
            click.echo(f"{m.rank:>4}  {m.id:>7}  {m.votes:>5}  {m.path}")
        click.echo(f"({len(res)} results from {res.n_descriptors} query descriptors, search {res.search_ms:.1f} ms, "
                   f"total {res.total_ms:.0f} ms)")

    @sift.command("info")
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
    @handle_errors
    def sift_info(db: Path, as_json: bool) -> None:
        """Describe the SIFT database DB (counts, settings, index).

        Example: similar-images sift info photos-sift
        """
        sdb = _open(db)
        if as_json:
            click.echo(json.dumps(sdb.manifest.to_dict(), indent=2, ensure_ascii=False))
            return
        m, c, idx = sdb.manifest.model, sdb.manifest.counts, sdb.manifest.index
        click.echo(f"{sdb.path}: {c.items} images, {c.extra.get('descriptors', c.indexed)} descriptors, "
                   f"{c.failed} failed")
        click.echo(f"SIFT: max {m['max_features']} per image, RootSIFT {m['root_sift']}, max side {m['max_side']}")
        if idx is not None:
            click.echo(f"Index: {idx.factory} ({idx.get('index_bytes', 0):,} bytes)")
