"""CLI command ``download-coco``: fetch, check and extract the MS-COCO 2014 validation images."""

from __future__ import annotations

from pathlib import Path

import click

from ..sources.coco import COCO_VAL2014_URL, DownloadConfig, download_coco_val2014
from ._common import configure_logging, handle_errors


@click.command("download-coco")
@click.argument("dest", type=click.Path(file_okay=False, writable=True, path_type=Path))
@click.option(
    "--url",
    default=COCO_VAL2014_URL,
    show_default=True,
    help="Address of the zip archive to download (http or https).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds allowed for the host name lookup and for connecting.",
)
@click.option(
    "--read-timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds without any data after which the transfer counts as stalled.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="How many times an interrupted transfer is resumed before giving up.",
)
@click.option(
    "--delete-zip",
    is_flag=True,
    help="Delete the zip after a successful extraction (frees 6.2 GB).",
)
@click.option("--quiet", "-q", is_flag=True, help="Show only warnings and errors, no progress bars.")
@handle_errors
def download_coco(
    dest: Path, url: str, timeout: float, read_timeout: float, retries: int, delete_zip: bool, quiet: bool
) -> None:
    """Download the MS-COCO 2014 validation photos (6.2 GB, 40,504 images) into DEST.

    Writes DEST/val2014.zip, the photos in DEST/val2014/ and the file list
    DEST/val2014_files.txt (one absolute path per line), whose path is printed.
    An interrupted download is resumed, the archive is tested (CRC of every
    member) before it is extracted, and steps already done are skipped, so
    running the command again is cheap.

    Without network access, use a local folder of images instead:

    \b
        similar-images extract /path/to/your/images DB
    """
    configure_logging(quiet=quiet)
    config = DownloadConfig(
        dest=dest,
        url=url,
        timeout=timeout,
        read_timeout=read_timeout,
        retries=retries,
        keep_archive=not delete_zip,
        verbose=not quiet,
    )
    file_list = download_coco_val2014(config)
    click.echo(str(file_list))


def register(group: click.Group) -> None:
    """Add this module's commands to ``group``."""
    group.add_command(download_coco)
