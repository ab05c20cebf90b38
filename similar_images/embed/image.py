"""The image embedder: decoded, resized images in, L2-normalised feature vectors out."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._util.http import FetchConfig, fetch_url, is_url
from ..errors import ConfigError, QueryError
from ..sources import fastjpeg
from ..sources.images import DEFAULT_MAX_PIXELS, ImageSource, prepare_array
from .backends import (
    AUTO_MIN_FACTOR,
    DEFAULT_THRESHOLD,
    RECIPE_VERSION,
    Calibration,
    PrecisionChoice,
    QuantizationSettings,
    Runner,
    RunnerFactory,
    check_inference,
    make_runner,
)
from .base import SpecBacked, l2_normalize
from .image_models import DEFAULT_MODEL, ModelSpec, get_model_spec, resolve_weights, weights_label

__all__ = ["ImageEmbedder", "DECODERS"]

logger = logging.getLogger(__name__)

#: How images are decoded: Pillow, or libjpeg-turbo's scaled JPEG decoding (see sources.fastjpeg).
DECODERS = ("pil", "fast")


class ImageEmbedder(SpecBacked):
    """Turns images into L2-normalised feature vectors with a registered image model.

    Args:
        model: A model name or :class:`~similar_images.embed.image_models.ModelSpec`.
        weights: ``"imagenet"``, ``"random"``/``None``, or a weights file path.
        backend: The inference backend, ``"keras"`` or ``"openvino"`` (see :mod:`similar_images.embed.backends`).
        precision: ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"auto"`` (the fastest precision whose top-10
            neighbour agreement with fp32, measured on the calibration sample, reaches ``agreement``). A
            precision the CPU lacks falls back to fp32 (logged); :attr:`precision` then names what runs.
        calibration: The user's images to sample for int8 calibration and for ``auto``'s measurement
            (:func:`~similar_images.store.extract_features` passes the images being extracted).
        calibration_size: Images in the calibration sample (default: up to
            :data:`~similar_images.embed.backends.DEFAULT_CALIBRATION_SIZE`, without a warning when there are fewer).
        agreement: The top-10 agreement with fp32 that ``auto`` requires of a lower precision.
        auto_min_factor: ``auto`` measures only when ``calibration`` holds at least this many times the sample
            size; fewer images run fp32 without measuring (see :mod:`similar_images.embed.backends.auto`).
        cache_dir: The converted-model cache (default ``$SIMILAR_IMAGES_CACHE`` or ``~/.cache/similar-images``).
        decoder: ``"pil"`` (Pillow) or ``"fast"``: JPEGs decoded at a reduced scale by libjpeg-turbo
            (``simplejpeg``; slightly different pixels, so it is recorded and queries use it too).
        quantization: How int8 is quantized (default: plain post-training quantization; a database records
            its recipe, so that its queries quantize the same way).
        batch_size: Images per model call in :meth:`embed`.
        seed: Seed used when the weights are random.
        max_pixels: Decompression-bomb guard for decoded images.

    Raises:
        ConfigError: For an unknown model, or a batch size below 1.
        SourceNotFoundError: If ``weights`` names a file that does not exist.

    Example:
        >>> emb = ImageEmbedder("vgg16-avg", "vgg16_notop.weights.h5")   # doctest: +SKIP
        >>> emb.embed(["cat.jpg", "dog.jpg"]).shape                        # doctest: +SKIP
        (2, 512)
    """

    kind = "image"
    #: Decoding is CPU work that releases the GIL: a build prepares images in a thread pool.
    parallel_prepare = True

    def __init__(
        self,
        model: str | ModelSpec = DEFAULT_MODEL,
        weights: str | os.PathLike[str] | None = "imagenet",
        *,
        backend: str = "keras",
        precision: str = "fp32",
        batch_size: int = 32,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        calibration: Sequence[ImageSource] | None = None,
        calibration_size: int | None = None,
        agreement: float = DEFAULT_THRESHOLD,
        auto_min_factor: float = AUTO_MIN_FACTOR,
        cache_dir: str | os.PathLike[str] | None = None,
        decoder: str = "pil",
        quantization: QuantizationSettings | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if max_pixels < 1:
            raise ConfigError(f"max_pixels must be at least 1, got {max_pixels}")
        self.spec = get_model_spec(model) if isinstance(model, str) else model
        self.weights = resolve_weights(weights)
        self.backend, self.precision = check_inference(backend, precision)
        if calibration_size is not None and calibration_size < 1:
            raise ConfigError(f"calibration_size must be at least 1, got {calibration_size}")
        if not 0.0 <= agreement:
            raise ConfigError(f"agreement must be from 0 to 1, got {agreement}")
        if decoder not in DECODERS:
            raise ConfigError(f"Unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
        if decoder == "fast" and not fastjpeg.available():
            logger.warning("decoder 'fast' needs simplejpeg (pip install simplejpeg); decoding with Pillow")
        self.decoder = decoder
        self.batch_size = batch_size
        self.seed = seed
        self.max_pixels = max_pixels
        self.calibration = list(calibration) if calibration is not None else None
        self.calibration_size = calibration_size
        self.agreement = agreement
        self.quantization = quantization or QuantizationSettings()
        self.auto_min_factor = auto_min_factor
        self.cache_dir = cache_dir
        #: The precision asked for (``auto``, or one that may fall back).
        self.requested_precision = self.precision
        #: How the precision was chosen, with the measured figures (set once the runner is made).
        self.choice: PrecisionChoice | None = None
        self._runner: Runner | None = None
        self._factory: RunnerFactory | None = None
        self._sample: list[ImageSource] | None = None

    @property
    def factory(self) -> RunnerFactory:
        """Builds the runners of this model (shares the Keras model and the cached conversions)."""
        if self._factory is None:
            self._factory = RunnerFactory(self.spec, self.weights, seed=self.seed, cache_dir=self.cache_dir)
        return self._factory

    def _calibration(self) -> Calibration | None:
        if self.backend != "openvino" and self.precision != "auto":
            return None
        if self.calibration is None:
            if self.precision in ("int8", "auto"):
                raise ConfigError(
                    f"Precision {self.precision} needs a sample of your images (calibration=...; extraction passes "
                    "the images it extracts)", hint="Or choose precision='fp32' or 'bf16'.",
                    setting="precision", value=self.precision, expected=("fp32", "bf16"))
            return None
        cal = Calibration(self.calibration, size=self.calibration_size, threshold=self.agreement,
                          max_pixels=self.max_pixels, fast_jpeg=self.decoder == "fast",
                          min_factor=self.auto_min_factor, quantization=self.quantization)
        self._sample = cal.sample()
        return cal

    @property
    def runner(self) -> Runner:
        """The inference runner, made on first use (for ``auto``, after measuring the precisions)."""
        if self._runner is None:
            runner = make_runner(self.spec, self.weights, backend=self.backend, precision=self.precision,
                                 calibration=self._calibration(), seed=self.seed, batch_size=self.batch_size,
                                 factory=self.factory)
            self.choice = getattr(runner, "choice", None)
            self.precision = runner.precision  # what runs (auto's choice, or a fallback)
            self._runner = runner
        return self._runner

    def resolve(self) -> ImageEmbedder:
        """Make the runner now, so that :attr:`precision` and :meth:`info` name what runs (``auto`` measures)."""
        _ = self.runner
        return self

    def inference_info(self) -> dict[str, object]:
        """The backend, the precision asked for and the one that runs, and ``auto``'s figures (for summaries)."""
        out: dict[str, object] = {"backend": self.backend, "requested_precision": self.requested_precision,
                               "precision": self.precision}
        if self.choice is not None:
            out["choice"] = self.choice.to_dict()
        return out

    @property
    def model(self) -> Any:
        """The Keras fp32 model (built on first use): what explanations and feature maps read."""
        return self.factory.keras_model("fp32")

    def warm_up(self) -> None:
        """Build the model now (a build does this before it starts its clock)."""
        _ = self.runner(self.spec.preprocess(np.zeros((1, self.spec.input_size[1], self.spec.input_size[0], 3),
                                                       dtype=np.uint8)))

    def info(self) -> dict[str, object]:
        """Model description for manifests (what :func:`~similar_images.embed.embedder_from_info` rebuilds)."""
        info = {**self.spec.info(), "weights": weights_label(self.weights), "seed": self.seed}
        if self.max_pixels != DEFAULT_MAX_PIXELS:  # recorded only when changed: older manifests stay equal
            info["max_pixels"] = self.max_pixels
        if self.decoder != "pil":
            info["decoder"] = self.decoder
        if (self.backend, self.precision) != ("keras", "fp32"):
            self.resolve()  # record what runs (auto's choice, or a fallback), not what was asked for
        if (self.backend, self.precision) != ("keras", "fp32"):
            info.update(backend=self.backend, precision=self.precision)
        if self.precision == "int8" and self._sample is not None:
            # The quantized model depends on its calibration images: record them, so that queries of the
            # database rebuild the same model (from the model cache, or by quantizing again).
            if all(isinstance(x, (str, os.PathLike)) for x in self._sample):
                info["calibration"] = [str(x) for x in self._sample]
            # ... and the recipe (absent: recipe 1, plain post-training quantization, before issue 21).
            info["int8_recipe"] = RECIPE_VERSION if self.quantization.accuracy_control else 1
        return info

    # ------------------------------------------------------------------ the two steps
    def prepare(self, item: ImageSource) -> np.ndarray:
        """Decode and resize one image to the model's input size (uint8 ``(h, w, 3)``).

        Raises:
            ImageLoadError: If the image cannot be read.
        """
        return prepare_array(item, self.spec.input_size, max_pixels=self.max_pixels, fast_jpeg=self.decoder == "fast")

    def embed_prepared(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """Embed prepared images (see :meth:`prepare`)."""
        if not len(batch):
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_arrays(np.stack(batch))

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a uint8 ``(n, h, w, 3)`` batch; returns normalised float32 ``(n, dim)``."""
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"Expected a batch of shape (n, h, w, 3), got {batch.shape}")
        return self._finish(self.runner(self.spec.preprocess(batch)), len(batch))

    def embed_batches(self, batches: Iterable[Sequence[np.ndarray] | np.ndarray]) -> Iterator[np.ndarray]:
        """Embed batches of prepared images (uint8 ``(n, h, w, 3)`` arrays, or lists of ``(h, w, 3)`` arrays) in
        order, letting the backend keep several batches in flight."""
        sizes: list[int] = []

        def preprocessed() -> Iterator[np.ndarray]:
            for b in batches:
                arr = b if isinstance(b, np.ndarray) else np.stack(b)
                sizes.append(len(arr))
                yield self.spec.preprocess(arr)

        for i, out in enumerate(self.runner.run_batches(preprocessed())):
            yield self._finish(out, sizes[i])

    def _finish(self, out: np.ndarray, n: int) -> np.ndarray:
        out = np.asarray(out, dtype=np.float32).reshape(n, -1)
        if out.shape[1] != self.spec.dim:
            raise ValueError(f"Model {self.spec.name} produced {out.shape[1]}-d vectors, expected {self.spec.dim}")
        return l2_normalize(out)

    def embed(self, items: Sequence[ImageSource]) -> np.ndarray:
        """Decode and embed images (raises :class:`~similar_images.errors.ImageLoadError` on the first bad one)."""
        arrays = [self.prepare(s) for s in items]
        chunks = [self.embed_prepared(arrays[i:i + self.batch_size]) for i in range(0, len(arrays), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), dtype=np.float32)

    # ------------------------------------------------------------------ queries
    def coerce_query(self, query: Any, *, fetch_config: FetchConfig | None = None, **_: Any) -> ImageSource:
        """An image query: a path, an http(s) URL (fetched), bytes, a file object or a PIL image.

        Raises:
            QueryError: For another type, or a path that does not exist.
            BadURLError, FetchError: For a URL that is refused or cannot be fetched.
        """
        if isinstance(query, (str, os.PathLike)):
            text = str(query)
            if is_url(text):
                return fetch_url(text, fetch_config)
            path = Path(text).expanduser()
            if not path.exists():
                raise QueryError(f"No such image file: {text} (give a path, an http(s) URL, or a database id)")
            return path
        if isinstance(query, (bytes, bytearray, memoryview, Image.Image)) or hasattr(query, "read"):
            return query
        raise QueryError(
            f"Unsupported query type {type(query).__name__}; use an id, a path, a URL, bytes, a PIL image or a vector"
        )
