"""A thread-safe least-recently-used cache bounded by item count and bytes (thumbnails, explanations)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

__all__ = ["LRUCache"]


class LRUCache:
    """A thread-safe LRU mapping bounded by item count and bytes.

    Args:
        max_items: Most entries kept.
        max_bytes: Most bytes kept (each entry's size is given when it is put); an entry larger than this is
            not kept.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self._bytes

    def get(self, key: Hashable) -> Any:
        """The value of ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> None:
        """Keep ``value`` (of ``nbytes`` bytes) under ``key``, dropping the least recently used beyond the limits."""
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
        """Drop every entry."""
        with self._lock:
            self._data.clear()
            self._bytes = 0

    def stats(self) -> dict[str, int]:
        """Counters: ``items``, ``bytes``, ``hits``, ``misses``."""
        return {"items": len(self._data), "bytes": self._bytes, "hits": self.hits, "misses": self.misses}
