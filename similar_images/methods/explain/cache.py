"""Caches of explanations: feature maps of images, maps of pairs, rendered PNGs (repeated views run no model)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from PIL import Image

from ...errors import ImageLoadError

__all__ = ["ExplainCache", "default_cache", "source_key", "normalise_source"]

class _LRU:
    """A thread-safe LRU mapping bounded by item count and bytes."""

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> Any:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.max_bytes:
                return
            self._data[key] = (value, nbytes)
            self._bytes += nbytes
            while self._data and (len(self._data) > self.max_items or self._bytes > self.max_bytes):
                _, (_, n) = self._data.popitem(last=False)
                self._bytes -= n

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        return {"items": len(self._data), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}


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
        self.maps = _LRU(100_000, max_map_bytes)
        self.pairs = _LRU(max_pairs, 64 * max_pairs * 2**10)
        self.pngs = _LRU(100_000, max_png_bytes)

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


def normalise_source(source: Any) -> Any:
    """Read file objects into bytes (so an image can be decoded twice: model input and overlay)."""
    if isinstance(source, (bytearray, memoryview)):
        return bytes(source)
    if hasattr(source, "read") and not isinstance(source, Image.Image):
        return source.read()
    if isinstance(source, os.PathLike):
        return str(source)
    return source


def source_key(source: Any) -> tuple[Any, ...] | None:
    if isinstance(source, str):
        p = Path(source).expanduser()
        try:
            st = p.stat()
        except FileNotFoundError:
            raise ImageLoadError(f"file not found: {p}") from None
        except OSError as exc:
            raise ImageLoadError(f"cannot read {p}: {exc.strerror or exc}") from exc
        return ("file", str(p.resolve()), st.st_mtime_ns, st.st_size)
    if isinstance(source, bytes):
        return ("bytes", hashlib.sha256(source).hexdigest())
    return None


