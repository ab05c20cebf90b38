"""Inference backends: what runs an image model on a preprocessed batch.

A :class:`Runner` maps a preprocessed float32 ``(n, h, w, 3)`` batch to the
model's raw ``(n, dim)`` features. :func:`make_runner` builds the runner of a
backend and precision; the Keras fp32 runner is the reference every other
backend is measured against.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ...errors import ConfigError
from .keras import KerasRunner

if TYPE_CHECKING:
    from ..image_models import ModelSpec

__all__ = ["Runner", "BACKENDS", "PRECISIONS", "make_runner"]

#: Inference backends.
BACKENDS = ("keras",)
#: Numeric precisions a runner may use.
PRECISIONS = ("fp32",)


@runtime_checkable
class Runner(Protocol):
    """Runs an image model.

    Attributes:
        backend: ``"keras"``, ...
        precision: ``"fp32"``, ...
    """

    backend: str
    precision: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32 ``(n, h, w, 3)`` batch -> raw ``(n, dim)`` float32 features."""
        ...

    def run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The outputs of ``batches``, in order (a runtime may keep several batches in flight)."""
        ...


def make_runner(spec: ModelSpec, weights: str | None, *, backend: str = "keras", precision: str = "fp32",
                seed: int = 0) -> Runner:
    """The runner of ``spec`` with ``weights`` on ``backend`` at ``precision``.

    Raises:
        ConfigError: For an unknown backend or precision.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"Unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r} for {backend}; choose one of: {', '.join(PRECISIONS)}")
    return KerasRunner(spec, weights, seed=seed)
