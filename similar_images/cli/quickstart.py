"""CLI commands of the quick start's background work: ``extract-coco`` (download, extract and index at once) and
``wait`` (until a database can be searched)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from ..embed import DEFAULT_MODEL
from ..embed.backends import BACKENDS, PRECISION_CHOICES
from ..errors import DatabaseError
from ..index import IndexConfig
from ..sources.coco import COCO_VAL2014_URL, DownloadConfig
from ..store import ExtractConfig
from ..store.manifest import Manifest
from ..store.streaming import extract_while_downloading
from ._common import configure_logging, handle_errors

try:  # readers that search an unfinished database from its first shard
    from ..store.live import build_progress
except ImportError:  # without them, a database can be searched once its extraction has finished
    build_progress = None  # type: ignore[assignment]

#: Set to a zip's address to fetch it instead of the COCO one (the benchmark and tests serve their own).
URL_ENV = "SIMILAR_IMAGES_COCO_URL"


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""

    @group.command("extract-coco")
    @click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
    @click.argument("db", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--url", envvar=URL_ENV, default=None, show_envvar=True,
                  help="Address of the zip archive [default: the MS-COCO 2014 validation images].")
    @click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                  help="Feature extractor; see 'similar-images models'.")
    @click.option("--weights", "-w", default="imagenet", show_default=True,
                  help="'imagenet', 'random', or the path of a local weights file.")
    @click.option("--backend", type=click.Choice(BACKENDS), default="keras", show_default=True,
                  help="Inference backend.")
    @click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
                  help="Inference precision (auto and int8 calibrate on the first photos to arrive).")
    @click.option("--shard-size", default=256, show_default=True, type=click.IntRange(1),
                  help="Photos per committed shard: the first search waits for the first shard (VGG16 on 2 cores "
                       "embeds 256 photos in about 20 s).")
    @click.option("--batch-size", "-b", default=32, show_default=True, type=click.IntRange(1),
                  help="Photos per model call.")
    @click.option("--expected-members", type=click.IntRange(0), default=None,
                  help="Number of files the archive must hold [default: 40,504 for the COCO address].")
    @click.option("--no-index", is_flag=True, help="Do not build the index at the end.")
    @click.option("--quiet", "-q", is_flag=True, help="No progress bar or log messages.")
    @handle_errors
    def extract_coco(dest: Path, db: Path, url: str | None, model: str, weights: str, backend: str, precision: str,
                     shard_size: int, batch_size: int, expected_members: int | None, no_index: bool,
                     quiet: bool) -> None:
        """Download the COCO photos into DEST and extract their features into DB while they download.

        Each photo is extracted from the archive as soon as its bytes have arrived,
        and embedded shard by shard, so the database can be searched long before
        the 6.2 GB have arrived; the index is built at the end. Stopping it keeps
        the partial download, the photos and the committed shards: running the
        same command again resumes. A truncated or corrupt archive stops it with
        the member named; the photos already embedded are kept.

        Example: similar-images extract-coco data/coco data/coco-db --model vgg16-avg
        """
        configure_logging(0, quiet)
        download = DownloadConfig(dest=dest, url=url or COCO_VAL2014_URL, expected_members=expected_members,
                                  verbose=not quiet)
        config = ExtractConfig(model=model, weights=weights, batch_size=batch_size, shard_size=shard_size,
                               verbose=not quiet, backend=backend, precision=precision)
        summary = extract_while_downloading(download, db, config, index=None if no_index else IndexConfig())
        s = summary.extraction
        if s is None:
            click.echo(f"{db} was complete already")
        else:
            resumed = f" (resumed after {s.resumed_from})" if s.resumed_from else ""
            click.echo(f"Extracted {s.extracted} of {s.total} photos{resumed} into {db} in {s.seconds:.1f} s; "
                       f"{s.failed} failed")
        if summary.index_built:
            click.echo(f"Built the index of {db}")

    @group.command("wait")
    @click.argument("db", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--timeout", type=click.FloatRange(0), default=0, show_default=True,
                  help="Seconds to wait at most (0: no limit).")
    @click.option("--pid", type=click.IntRange(1), default=None,
                  help="The process that builds DB: stop waiting (with an error) if it ends first.")
    @click.option("--log", "log_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="That process's log, quoted in the error if it ends first.")
    @handle_errors
    def wait(db: Path, timeout: float, pid: int | None, log_file: Path | None) -> None:
        """Wait until DB can be searched, and print how many items it has.

        That is as soon as its first shard is committed where readers follow an
        unfinished database, and once its extraction has finished otherwise.
        """
        deadline = time.monotonic() + timeout if timeout else None
        while True:
            ready = searchable_items(db)
            if ready:
                click.echo(f"{db}: {ready:,} items can be searched")
                return
            if pid is not None and not _alive(pid):
                if searchable_items(db):
                    continue
                tail = ""
                if log_file is not None and log_file.is_file():
                    lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
                    tail = f"; its last words: {lines[-1].strip()}" if lines else ""
                    tail += f" (the whole log: {log_file})"
                raise click.ClickException(f"The process building {db} ended before it could be searched{tail}")
            if deadline is not None and time.monotonic() > deadline:
                raise click.ClickException(f"{db} could not be searched within {timeout:g} s")
            time.sleep(0.5)


def searchable_items(db: Path) -> int:
    """How many items of ``db`` can be searched now: the committed shards where the store reads an unfinished
    database (``similar_images.store.live``), otherwise those of the finished database (0 before)."""
    if build_progress is not None:
        return int(build_progress(db).ready)
    try:
        return Manifest.load(db).counts.items
    except DatabaseError:
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent) counts as ended
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
