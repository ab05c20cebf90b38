"""The Keras backend: the model as Keras builds it, in float32 (the reference)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..image_models import ModelSpec

__all__ = ["KerasRunner"]

logger = logging.getLogger(__name__)


class KerasRunner:
    """Runs a :class:`~similar_images.embed.image_models.ModelSpec`'s Keras model (built on first use).

    Args:
        spec: The model.
        weights: ``"imagenet"``, ``None`` (random, seeded) or a weights file path.
        seed: Seed of random weights.
    """

    backend = "keras"
    precision = "fp32"

    def __init__(self, spec: ModelSpec, weights: str | None, *, seed: int = 0) -> None:
        self.spec = spec
        self.weights = weights
        self.seed = seed
        self._model: Any = None

    @property
    def model(self) -> Any:
        """The Keras model, built on first use."""
        if self._model is None:
            t0 = time.perf_counter()
            if self.weights is None:
                import keras  # noqa: PLC0415  (heavy: TensorFlow)

                keras.utils.set_random_seed(self.seed)
            self._model = self.spec.builder(self.weights)
            logger.info("Built %s (%s weights) in %.1f s", self.spec.name, self.weights or "random",
                        time.perf_counter() - t0)
        return self._model

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(x), dtype=np.float32)

    def run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for batch in batches:
            yield self(batch)
