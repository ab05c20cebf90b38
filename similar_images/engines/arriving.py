"""An engine for items that are still arriving (the quick start embeds photos while their archive downloads).

:class:`ArrivingEngine` runs each shard of a build once its items are on disk, so shards are committed while
the rest downloads; :func:`similar_images.store.streaming.extract_while_downloading` plans the build and uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..index import IndexConfig
from .local import BuildJob, Engine, IndexBuild, IndexFiles, LocalEngine, ShardEmbedder

__all__ = ["ArrivingEngine"]


class ArrivingEngine:
    """Runs the shards of a build whose items arrive in order: each run of shards once their items are there.

    Args:
        ready: ``ready(n)`` blocks until the first ``n`` items of the build can be read, and returns how many
            can (at least ``n``); it raises if they never will (the archive is truncated or corrupt).
        inner: The engine that embeds the shards (default: :class:`~similar_images.engines.local.LocalEngine`).
    """

    def __init__(self, ready: Callable[[int], int], inner: Engine | None = None) -> None:
        self.ready = ready
        self.inner = inner or LocalEngine()

    def describe(self) -> dict[str, Any]:
        """The engine, for manifests."""
        describe = getattr(self.inner, "describe", None)
        return {"name": "arriving", "inner": describe() if describe is not None else type(self.inner).__name__}

    def run(self, job: BuildJob, shards: Sequence[int], embedder: ShardEmbedder | None,
            progress: Callable[[int], None]) -> None:
        """Embed ``shards`` in order, each run of them as soon as their items have arrived."""
        todo = sorted(shards)
        while todo:
            first = job.shard_items(todo[0])
            available = self.ready(first.stop)  # at least the first shard's items
            batch = [s for s in todo if job.shard_items(s).stop <= available]
            self.inner.run(job, batch, embedder, progress)
            todo = todo[len(batch):]

    def build_index(self, vectors: np.ndarray, config: IndexConfig, *, ids: np.ndarray | None = None,
                    files: IndexFiles | None = None) -> IndexBuild:
        """The inner engine's index build (the vectors have all arrived by then)."""
        return self.inner.build_index(vectors, config, ids=ids, files=files)
