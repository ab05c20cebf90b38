"""The Keras backend: the model as Keras builds it, in float32 (the reference) or mixed bfloat16."""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ..._util.types import KerasModel
from ...errors import BackendError
from ..tf_import import import_keras
from .base import check_precision

if TYPE_CHECKING:
    from ..image_models import ModelSpec

__all__ = ["KerasRunner", "build_keras_model"]

logger = logging.getLogger(__name__)

# keras.config.set_dtype_policy is global: building under another policy is serialised.
_POLICY_LOCK = threading.Lock()


def build_keras_model(spec: ModelSpec, weights: str | None, *, seed: int = 0, precision: str = "fp32") -> KerasModel:
    """Build ``spec``'s Keras model, in float32 or under the ``mixed_bfloat16`` policy.

    Args:
        spec: The model.
        weights: ``"imagenet"``, ``None`` (random, drawn with ``seed``) or a weights file path.
        seed: Seed for random weights (the same seed gives the same weights in both precisions).
        precision: ``"fp32"`` or ``"bf16"`` (variables stay float32, computations run in bfloat16).
    """
    keras = import_keras()
    t0 = time.perf_counter()
    with _POLICY_LOCK:
        if weights is None:
            keras.utils.set_random_seed(seed)
        old = keras.config.dtype_policy()
        if precision == "bf16":
            keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            model = spec.builder(weights)
        finally:
            keras.config.set_dtype_policy(old)
    logger.info("Built %s (%s weights, Keras %s) in %.1f s", spec.name, weights or "random", precision,
                time.perf_counter() - t0)
    return model


class KerasRunner:
    """Runs a :class:`~similar_images.embed.image_models.ModelSpec`'s Keras model (built on first use).

    :meth:`run_batches` keeps one batch running in a helper thread while the
    next one is pulled from the input (TensorFlow releases the GIL), so the
    caller's decoding and preprocessing overlap the model.

    Args:
        spec: The model.
        weights: ``"imagenet"``, ``None`` (random, seeded) or a weights file path.
        seed: Seed of random weights.
        precision: ``"fp32"`` or ``"bf16"`` (Keras' ``mixed_bfloat16`` policy).
        model: An already built Keras model of ``spec`` at ``precision`` (default: built on first use).
        info: Extra JSON for :meth:`info` (the choice of precision, ...).
    """

    backend = "keras"

    def __init__(self, spec: ModelSpec, weights: str | None, *, seed: int = 0, precision: str = "fp32",
                 model: KerasModel = None, info: dict[str, object] | None = None) -> None:
        precision = check_precision(precision, allow_auto=False)
        if precision == "int8":
            raise BackendError("The keras backend runs fp32 or bf16", hint="int8 needs backend='openvino' (pip install "
                               "openvino nncf).", setting="backend", value="keras", expected="openvino")
        self.spec = spec
        self.weights = weights
        self.seed = seed
        self.precision = precision
        self.extra: dict[str, object] = dict(info or {})
        self._model: KerasModel = model
        self._build_lock = threading.Lock()
        self._lock = threading.Lock()

    @property
    def model(self) -> KerasModel:
        """The Keras model, built on first use."""
        if self._model is None:
            with self._build_lock:
                if self._model is None:
                    self._model = build_keras_model(self.spec, self.weights, seed=self.seed,
                                                    precision=self.precision)
        return self._model

    def __call__(self, x: np.ndarray) -> np.ndarray:
        model = self.model
        with self._lock:
            out = model.predict_on_batch(x)
        out = np.asarray(out)
        return np.ascontiguousarray(out.reshape(len(x), -1), dtype=np.float32)

    def run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="keras-runner") as pool:
            pending: collections.deque[Future[np.ndarray]] = collections.deque()
            try:
                for batch in batches:
                    pending.append(pool.submit(self, batch))
                    if len(pending) > 1:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()

    def info(self) -> dict[str, object]:
        """JSON description for manifests and summaries."""
        return {"backend": self.backend, "precision": self.precision, **self.extra}

    def __repr__(self) -> str:
        return f"KerasRunner({self.spec.name}, {self.precision})"
