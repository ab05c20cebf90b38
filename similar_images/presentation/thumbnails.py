"""Small JPEG thumbnails made on the server, with an in-memory LRU cache.

The notebook apps and the service never send full-size photos to the browser:
every image they show goes through :func:`make_thumbnail` (at most ``size``
pixels on the long side, JPEG). :class:`ThumbnailCache` keeps the thumbnails of
database images keyed by ``(path, mtime, file size, thumbnail size)``, so a file
that changes on disk gets a fresh thumbnail and repeated searches cost nothing.
:func:`thumbnail_bytes` and :func:`thumbnail_array` share one such cache per
process and never raise: an unreadable image shows as a grey placeholder.

Example:
    >>> cache = ThumbnailCache()                       # doctest: +SKIP
    >>> jpeg = cache.get("photos/cat.jpg")             # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .._util.lru import LRUCache
from ..errors import ImageLoadError
from ..sources.images import DEFAULT_MAX_PIXELS, ImageSource, file_signature, load_image

__all__ = ["ThumbnailConfig", "ThumbnailCache", "make_thumbnail", "placeholder_thumbnail", "thumbnail_bytes",
           "thumbnail_array"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ThumbnailConfig:
    """Settings of thumbnail making and caching.

    Attributes:
        size: Longest side of a thumbnail, in pixels.
        quality: JPEG quality (1 to 95).
        max_items: Most thumbnails kept in memory.
        max_bytes: Most bytes of thumbnails kept in memory.
        max_pixels: Decompression-bomb guard for the source images.
    """

    size: int = 160
    quality: int = 82
    max_items: int = 4096
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 2048:
            raise ValueError(f"Thumbnail size must be 16 to 2048 pixels, got {self.size}")
        if not 1 <= self.quality <= 95:
            raise ValueError(f"JPEG quality must be 1 to 95, got {self.quality}")
        if self.max_items < 1 or self.max_bytes < 1:
            raise ValueError("max_items and max_bytes must be positive")


def make_thumbnail(source: ImageSource, size: int = 160, *, quality: int = 82,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """Decode an image and return a JPEG of at most ``size`` pixels on its long side.

    JPEG sources are decoded at a reduced scale (``draft``), so this takes a
    few milliseconds even for large photos.

    Args:
        source: A path, raw bytes, a binary file object or a PIL image.
        size: Longest side of the thumbnail.
        quality: JPEG quality.
        max_pixels: Refuse larger source images.

    Returns:
        JPEG bytes.

    Raises:
        ImageLoadError: If the source cannot be decoded.
    """
    # draft() changes the image it is called on: only use it on images decoded here.
    draft = None if isinstance(source, Image.Image) else (size, size)
    img = load_image(source, max_pixels=max_pixels, draft_size=draft)
    if max(img.size) > size:
        img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def placeholder_thumbnail(size: int = 160, text: str = "missing") -> bytes:
    """A grey square JPEG with a short label, for images that cannot be shown."""
    img = Image.new("RGB", (size, size), (232, 232, 232))
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((0, 0), text)
    draw.text(((size - (box[2] - box[0])) / 2, (size - (box[3] - box[1])) / 2), text, fill=(110, 110, 110))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


class ThumbnailCache:
    """Thread-safe LRU cache of thumbnails of image files.

    Entries are keyed by ``(resolved path, mtime_ns, file size, thumbnail
    size)``: a replaced file is never served from a stale entry.

    Args:
        config: Sizes and limits.
    """

    def __init__(self, config: ThumbnailConfig | None = None) -> None:
        self.config = config or ThumbnailConfig()
        self._cache = LRUCache(self.config.max_items, self.config.max_bytes)

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    @property
    def nbytes(self) -> int:
        """Bytes of thumbnails held."""
        return self._cache.nbytes

    def stats(self) -> dict[str, Any]:
        """Counters: ``items``, ``bytes``, ``hits``, ``misses``."""
        return self._cache.stats()

    def clear(self) -> None:
        """Drop every cached thumbnail."""
        self._cache.clear()

    def _key(self, path: str | os.PathLike[str], size: int) -> tuple[str, int, int, int]:
        return (*file_signature(path), size)

    def cached(self, path: str | os.PathLike[str], size: int | None = None) -> bool:
        """Whether the thumbnail of ``path`` is in the cache (and up to date)."""
        try:
            key = self._key(path, size or self.config.size)
        except ImageLoadError:
            return False
        return key in self._cache

    def get(self, path: str | os.PathLike[str], size: int | None = None) -> bytes:
        """The JPEG thumbnail of an image file, made on the first request.

        Args:
            path: The image file.
            size: Longest side; the configured size by default.

        Raises:
            ImageLoadError: If the file is missing or cannot be decoded.
        """
        size = int(size or self.config.size)
        key = self._key(path, size)
        data = self._cache.get(key)
        if data is None:
            data = make_thumbnail(key[0], size, quality=self.config.quality, max_pixels=self.config.max_pixels)
            self._cache.put(key, data, len(data))
        return data


#: Thumbnails shared by the apps of one process (keyed by path, mtime, size and thumbnail size).
_THUMBNAILS = ThumbnailCache(ThumbnailConfig(size=128))


def thumbnail_bytes(path: str | os.PathLike[str], size: int = 128) -> bytes:
    """A JPEG thumbnail (longer side ``size``) of an image file, cached; a grey placeholder if it cannot be read."""
    try:
        return _THUMBNAILS.get(path, size)
    except ImageLoadError as exc:
        logger.warning("Cannot show %s: %s", path, exc)
        return placeholder_thumbnail(size, "unreadable")


def thumbnail_array(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """A ``(size, size, 3)`` uint8 tile with the image's thumbnail centred on white (grey if unreadable)."""
    img = Image.open(io.BytesIO(thumbnail_bytes(path, size))).convert("RGB")
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    arr = np.asarray(img)[:size, :size]
    y0, x0 = (size - arr.shape[0]) // 2, (size - arr.shape[1]) // 2
    canvas[y0:y0 + arr.shape[0], x0:x0 + arr.shape[1]] = arr
    return canvas
