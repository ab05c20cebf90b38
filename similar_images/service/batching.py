"""Many request threads, one model: queries that wait for the model are embedded together in one batch."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SerializedEmbedder"]


class _Pending:
    __slots__ = ("arrays", "result", "error", "done")

    def __init__(self, arrays: np.ndarray) -> None:
        self.arrays = arrays
        self.result: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class SerializedEmbedder:
    """Wraps an :class:`~similar_images.embed.ImageEmbedder` for use from many threads.

    Images are decoded in the calling threads, in parallel; the model runs
    under a lock. With ``batch=True``, the thread that gets the lock embeds
    every query queued meanwhile (up to ``max_batch``) in one model call.
    Other attributes are those of the wrapped embedder.
    """

    def __init__(self, inner: Any, *, batch: bool = True, max_batch: int = 16) -> None:
        self._inner = inner
        self._batch = batch
        self._max_batch = max_batch
        self._model_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self.model_calls = 0

    @property
    def model_lock(self) -> threading.Lock:
        """Held while the model runs (other users of the model, e.g. explanations, take it too)."""
        return self._model_lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed(self, sources: Sequence[Any]) -> np.ndarray:
        """Decode and embed images; raises :class:`ImageLoadError` on the first bad one."""
        arrays = [self._inner.prepare(s) for s in sources]
        if not arrays:
            return np.zeros((0, self._inner.dim), dtype=np.float32)
        return self.embed_arrays(np.stack(arrays))

    def embed_prepared(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """Embed prepared (decoded) images, serialised (and batched) with other threads."""
        if not len(batch):
            return np.zeros((0, self._inner.dim), dtype=np.float32)
        return self.embed_arrays(np.stack(batch))

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Embed a uint8 ``(n, h, w, 3)`` batch, serialised (and batched) with other threads."""
        if not self._batch:
            with self._model_lock:
                self.model_calls += 1
                return self._inner.embed_arrays(batch)
        item = _Pending(batch)
        with self._queue_lock:
            self._queue.append(item)
        while not item.done:
            with self._model_lock:
                if item.done:
                    break
                with self._queue_lock:
                    group: list[_Pending] = []
                    n = 0
                    while self._queue and (not group or n + len(self._queue[0].arrays) <= self._max_batch):
                        group.append(self._queue.pop(0))
                        n += len(group[-1].arrays)
                try:
                    self.model_calls += 1
                    out = self._inner.embed_arrays(np.concatenate([p.arrays for p in group]))
                    start = 0
                    for p in group:
                        p.result = out[start:start + len(p.arrays)]
                        start += len(p.arrays)
                except BaseException as exc:  # noqa: BLE001  (every waiting query gets the error, and raises it)
                    for p in group:
                        p.error = exc
                finally:
                    for p in group:
                        p.done = True
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result
