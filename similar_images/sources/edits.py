"""Edited copies of an image (resized, re-encoded, cropped): known near-duplicates for tests, benchmarks and demos."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from .._util import io as _io
from ..errors import ConfigError
from .images import load_image

__all__ = ["EDITS", "edited_copy"]

#: Edits used to plant near-duplicates in tests, benchmarks and demos.
EDITS = ("exact", "resize", "jpeg70", "crop10")


def edited_copy(source: str | Path, dest: str | Path, edit: str) -> Path:
    """Write an edited copy of an image, to plant a known near-duplicate.

    Args:
        source: The original image.
        dest: Where to write the copy (JPEG for every edit but ``exact``).
        edit: ``"exact"`` (byte copy), ``"resize"`` (half size), ``"jpeg70"``
            (re-encoded at JPEG quality 70) or ``"crop10"`` (central 90% of
            each side, i.e. a 10% crop).

    Returns:
        ``dest``.

    Raises:
        ConfigError: For an unknown edit.
        ImageLoadError: If ``source`` cannot be decoded.
    """
    if edit not in EDITS:
        raise ConfigError(f"edit must be one of {', '.join(EDITS)}, got {edit!r}")
    dest = Path(dest)
    if edit == "exact":
        _io.write_bytes(dest, Path(source).read_bytes())
        return dest
    img = load_image(source)
    w, h = img.size
    quality = 90
    if edit == "resize":
        img = img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)
    elif edit == "jpeg70":
        quality = 70
    else:
        dx, dy = round(w * 0.05), round(h * 0.05)
        img = img.crop((dx, dy, w - dx, h - dy))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    _io.write_bytes(dest, buf.getvalue())
    return dest
