"""The calibration sample: a seeded sample of the user's own images, decoded once."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ...errors import BackendError, ConfigError, ImageLoadError
from ...sources.images import DEFAULT_MAX_PIXELS, ImageSource, prepare_array
from .openvino import QuantizationSettings

__all__ = ["DEFAULT_CALIBRATION_SIZE", "DEFAULT_THRESHOLD", "Calibration"]

logger = logging.getLogger(__name__)

#: Images in the calibration sample unless told otherwise.
DEFAULT_CALIBRATION_SIZE = 300
#: Top-10 neighbour agreement with fp32 that a lower precision must reach.
DEFAULT_THRESHOLD = 0.99


@dataclass
class Calibration:
    """A sample of the user's images, for int8 calibration and for measuring agreement (``auto``).

    Args:
        images: The user's images (paths, bytes, PIL images), or already decoded
            uint8 ``(n, h, w, 3)`` arrays at the model's input size.
        size: Images in the sample (a seeded random sample of ``images``; all of
            them if there are fewer); ``None``: :data:`DEFAULT_CALIBRATION_SIZE`. Only a size
            given is warned about when the images are fewer.
        seed: Seed of the sample.
        threshold: Top-``k`` neighbour agreement with fp32 that ``auto`` requires
            (above 1, no lower precision qualifies).
        k: Neighbours compared by the agreement measure.
        quantization: NNCF settings for int8.
        workers: Decoding threads (default: the number of CPUs, at most 8).
        max_pixels: Decompression-bomb guard for the decoded images.
        fast_jpeg: Decode JPEGs with libjpeg-turbo's scaling (as the embedder does with ``decoder="fast"``).
        min_factor: ``auto`` measures only when ``images`` holds at least this many times the sample size
            (an extraction sets :data:`~.auto.AUTO_MIN_FACTOR`; 0, the default, always measures).
    """

    images: Sequence[ImageSource] | np.ndarray
    size: int | None = None
    seed: int = 0
    threshold: float = DEFAULT_THRESHOLD
    k: int = 10
    quantization: QuantizationSettings = field(default_factory=QuantizationSettings)
    workers: int | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    fast_jpeg: bool = False
    min_factor: float = 0.0
    _arrays: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 1:
            raise ConfigError(f"The calibration size must be at least 1, got {self.size}")
        if not (np.isfinite(self.threshold) and self.threshold >= 0.0):
            raise ConfigError(f"The agreement threshold must be a number from 0 to 1, got {self.threshold}")
        if self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")

    def arrays(self, input_size: tuple[int, int]) -> np.ndarray:
        """The sample decoded and resized to ``input_size`` (width, height): uint8 ``(n, h, w, 3)``.

        Unreadable images are skipped (and logged).

        Raises:
            BackendError: If no image of the sample can be read.
        """
        key = (int(input_size[0]), int(input_size[1]))
        if key in self._arrays:
            return self._arrays[key]
        w, h = input_size
        if isinstance(self.images, np.ndarray):
            arr = self.images
            if arr.ndim != 4 or arr.shape[1:] != (h, w, 3):
                raise BackendError(f"Calibration arrays have shape {arr.shape}; expected (n, {h}, {w}, 3)")
            pick = self._pick(len(arr))
            out = np.ascontiguousarray(arr[pick], dtype=np.uint8)
        else:
            items = list(self.images)
            pick = self._pick(len(items))
            workers = self.workers or min(8, os.cpu_count() or 1)

            def decode(i: int) -> np.ndarray | None:
                try:
                    return prepare_array(items[i], (w, h), max_pixels=self.max_pixels, fast_jpeg=self.fast_jpeg)
                except ImageLoadError as exc:
                    logger.debug("Calibration: skipping %s (%s)", items[i], exc)
                    return None

            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="calibration") as pool:
                decoded = [a for a in pool.map(decode, pick) if a is not None]
            if len(decoded) < len(pick):
                logger.warning("Calibration: %d of %d sampled images could not be read", len(pick) - len(decoded),
                               len(pick))
            if not decoded:
                raise BackendError(
                    f"None of the {len(pick)} calibration images could be read (first: {items[pick[0]]}); pass "
                    "readable images. A database built in int8 names them in its manifest: its queries quantize "
                    "the model again from them when the model cache has no copy")
            out = np.stack(decoded)
        if self.size is not None and len(out) < self.size:  # a size nobody asked for is no promise to warn about
            logger.warning("Calibration uses %d images (fewer than the %d asked for)", len(out), self.size)
        self._arrays[key] = out
        return out

    def sample(self) -> list[ImageSource]:
        """The images of the sample (a seeded choice of ``size`` of ``images``), in order.

        Raises:
            BackendError: If ``images`` is an array (decoded images have no names) or empty.
        """
        if isinstance(self.images, np.ndarray):
            raise BackendError("The calibration sample is an array of decoded images; it has no image names")
        items = list(self.images)
        return [items[i] for i in self._pick(len(items))]

    @property
    def sample_size(self) -> int:
        """Images the sample takes (the size asked for, else :data:`DEFAULT_CALIBRATION_SIZE`)."""
        return self.size if self.size is not None else DEFAULT_CALIBRATION_SIZE

    def too_few_to_measure(self) -> str | None:
        """Why ``auto`` should not measure on these images (fewer than ``min_factor`` samples), or ``None``."""
        n = len(self.images)
        need = int(np.ceil(self.min_factor * self.sample_size))
        if n >= need:
            return None
        return (f"{n} images, fewer than {need} ({self.min_factor:g} x the {self.sample_size}-image calibration "
                "sample): measuring would cost more than a lower precision can save")

    def _pick(self, n: int) -> np.ndarray:
        if n == 0:
            raise BackendError("The calibration sample is empty; pass some of your images")
        if n <= self.sample_size:
            return np.arange(n)
        return np.sort(np.random.default_rng(self.seed).choice(n, size=self.sample_size, replace=False))

    @staticmethod
    def digest(arrays: np.ndarray) -> str:
        """SHA-256 of the decoded sample (part of the int8 cache key)."""
        h = hashlib.sha256(repr(arrays.shape).encode())
        h.update(np.ascontiguousarray(arrays).data)
        return h.hexdigest()

    def quantization_key(self) -> dict[str, object]:
        """The quantization settings as they shape an int8 model (cache keys, manifests): the recipe's version
        and settings, with ``auto`` decided for this CPU."""
        return self.quantization.to_dict()

    def settings(self) -> dict[str, object]:
        """The JSON settings that shape a quantized model or a measured choice."""
        return {"size": self.sample_size, "seed": self.seed, "threshold": self.threshold, "k": self.k,
                "quantization": self.quantization_key()}
