"""CLI commands: ``duplicates`` (near-duplicate pairs and groups) and the ``sift`` group
(local-feature extraction and search)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import configure_logging, handle_errors


def register(group: click.Group) -> None:
    """Add the ``duplicates`` command and the ``sift`` group to ``group``."""

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
        from ..database import Database
        from ..duplicates import DuplicateConfig, find_duplicates

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
    @click.option("--force", is_flag=True, help="Replace an existing SIFT database at DB.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar or log messages.")
    @click.option("--verbose", "-v", count=True, help="More log messages.")
    @handle_errors
    def sift_extract(images: Path, db: Path, max_features: int, root_sift: bool, max_side: int, factory: str,
                     train_size: int, force: bool, quiet: bool, verbose: int) -> None:
        """Extract SIFT descriptors of IMAGES (a folder or a file list) into the folder DB.

        Unreadable images are skipped and listed in DB/failures.csv.

        Example: similar-images sift extract photos/ photos-sift --max-features 200
        """
        configure_logging(verbose, quiet)
        from ..sift import SiftConfig, extract_sift

        config = SiftConfig(max_features=max_features, root_sift=root_sift, max_side=max_side, factory=factory,
                            train_size=train_size, verbose=not quiet)
        s = extract_sift(images, db, config, force=force)
        click.echo(f"Extracted {s.descriptors} SIFT descriptors of {s.extracted} of {s.total} images into {db} in "
                   f"{s.seconds:.1f} s ({s.images_per_second:.1f} images/s); {s.failed} failed"
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
        from ..sift import SiftDatabase

        sdb = SiftDatabase.open(db)
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
        """Describe the SIFT database DB (counts, settings, index)."""
        from ..sift import SiftDatabase

        sdb = SiftDatabase.open(db)
        if as_json:
            click.echo(json.dumps(sdb.manifest, indent=2, ensure_ascii=False))
            return
        m, c = sdb.manifest["model"], sdb.manifest["counts"]
        click.echo(f"{sdb.path}: {c['items']} images, {c['descriptors']} descriptors, {c['failed']} failed")
        click.echo(f"SIFT: max {m['max_features']} per image, RootSIFT {m['root_sift']}, max side {m['max_side']}")
        click.echo(f"Index: {sdb.manifest['index']['factory']} ({sdb.manifest['index']['index_bytes']:,} bytes)")
