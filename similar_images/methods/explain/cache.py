"""Caches of explanations: feature maps of images, maps of pairs, rendered PNGs (repeated views run no model)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Hashable

from PIL import Image

from ..._util.lru import LRUCache
from ...sources.images import ImageSource, file_signature

__all__ = ["ExplainCache", "default_cache", "source_key", "normalise_source"]


class ExplainCache:
    """Feature maps of images, maps of pairs and rendered PNGs, kept in memory.

    Image entries are keyed by the model, its weights and seed, and the image:
    ``(resolved path, mtime_ns, size)`` for a file (a changed file is never
    served stale) or the SHA-256 of bytes. PIL images and file objects are not
    cached.

    Args:
        max_map_bytes: Most bytes of feature maps (a VGG16 map is 100 KB, a
            MobileNetV2 one 250 KB).
        max_png_bytes: Most bytes of rendered PNGs.
        max_pairs: Most pairs whose maps are kept.
    """

    def __init__(self, *, max_map_bytes: int = 64 * 2**20, max_png_bytes: int = 32 * 2**20,
                 max_pairs: int = 4096) -> None:
        self.maps = LRUCache(100_000, max_map_bytes)
        self.pairs = LRUCache(max_pairs, 64 * max_pairs * 2**10)
        self.pngs = LRUCache(100_000, max_png_bytes)

    def clear(self) -> None:
        """Drop everything."""
        self.maps.clear()
        self.pairs.clear()
        self.pngs.clear()

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters of each part: ``items``, ``bytes``, ``hits``, ``misses``."""
        return {"maps": self.maps.stats(), "pairs": self.pairs.stats(), "pngs": self.pngs.stats()}


_DEFAULT_CACHE = ExplainCache()


def default_cache() -> ExplainCache:
    """The process-wide cache used unless another is given."""
    return _DEFAULT_CACHE


def normalise_source(source: ImageSource) -> ImageSource:
    """Read file objects into bytes (so an image can be decoded twice: model input and overlay)."""
    if isinstance(source, (bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read") and not isinstance(source, Image.Image):
        return source.read()
    if isinstance(source, os.PathLike):
        return str(source)
    return source


def source_key(source: ImageSource) -> tuple[Hashable, ...] | None:
    if isinstance(source, str):
        return ("file", *file_signature(source))
    if isinstance(source, bytes):
        return ("bytes", hashlib.sha256(source).hexdigest())
    return None


