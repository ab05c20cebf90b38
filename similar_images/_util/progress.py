"""Progress bars for downloads (tqdm), driven by :func:`similar_images._util.http.download_file` events."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tqdm.auto import tqdm

from .download import Progress

__all__ = ["byte_progress"]


@contextlib.contextmanager
def byte_progress(desc: str, *, enabled: bool = True) -> Iterator[Progress | None]:
    """Yield a ``progress(event, value)`` callback that drives a tqdm bar of bytes (``None`` when disabled)."""
    if not enabled:
        yield None
        return
    bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=desc)

    def progress(event: str, value: int | None) -> None:
        if event == "total":
            bar.reset(total=value)
        elif value:
            bar.update(value)

    try:
        yield progress
    finally:
        bar.close()
