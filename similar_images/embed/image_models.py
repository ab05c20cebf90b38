"""Pluggable image models: a :class:`ModelSpec` names a Keras feature extractor,
its preprocessing, input size and output dimension.

Built-in specs:

========================  =====  ==========================================
name                      dim    what
========================  =====  ==========================================
``vgg16-fc2`` (default)   4096   VGG16, second fully connected layer
``vgg16-avg``             512    VGG16 conv base, global average pooling
``vgg16-max``             512    VGG16 conv base, global max pooling
``mobilenetv2``           1280   MobileNetV2 (alpha 0.35), average pooling
========================  =====  ==========================================

Register your own with :func:`register_model`. TensorFlow is imported only
when a model is built.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._util.registry import Registry
from .._util.types import KerasModel
from ..errors import SourceNotFoundError, WeightsError
from .tf_import import import_keras

__all__ = [
    "ModelSpec",
    "register_model",
    "get_model_spec",
    "available_models",
    "resolve_weights",
    "weights_label",
    "DEFAULT_MODEL",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "vgg16-fc2"

_VGG_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def preprocess_caffe(batch: np.ndarray) -> np.ndarray:
    """VGG16 preprocessing ("caffe" mode): RGB to BGR, subtract the ImageNet mean."""
    x = batch[..., ::-1].astype(np.float32)
    x -= _VGG_MEAN_BGR
    return x


def preprocess_tf(batch: np.ndarray) -> np.ndarray:
    """MobileNet preprocessing ("tf" mode): scale pixels to [-1, 1]."""
    return batch.astype(np.float32) / 127.5 - 1.0


@dataclass(frozen=True)
class ModelSpec:
    """A feature extractor.

    Attributes:
        name: Registry name, stored in the database manifest.
        dim: Length of the output vector.
        layer: Name of the layer (or pooling) the features come from.
        input_size: (width, height) the images are resized to.
        builder: ``builder(weights)`` returns a Keras model mapping a
            preprocessed float batch to ``(n, dim)`` features; ``weights`` is
            ``"imagenet"``, ``None`` (random) or a path to a weights file.
        preprocess: Maps a uint8 ``(n, h, w, 3)`` RGB batch to the model input.
        description: One line for ``--help`` and the README.
        default_index: Name of the default index description for these vectors (a key of
            :data:`similar_images.index.factory.DEFAULTS`).
    """

    name: str
    dim: int
    layer: str
    input_size: tuple[int, int]
    builder: Callable[[str | None], KerasModel] = field(repr=False, compare=False)
    preprocess: Callable[[np.ndarray], np.ndarray] = field(repr=False, compare=False)
    description: str = ""
    default_index: str = "ivf-pq"

    def info(self) -> dict[str, object]:
        """The JSON-serialisable description stored in manifests."""
        return {"name": self.name, "dim": self.dim, "layer": self.layer, "input_size": list(self.input_size)}


_REGISTRY: Registry[ModelSpec] = Registry("model")


def register_model(spec: ModelSpec, *, replace: bool = False) -> None:
    """Add a model to the registry.

    Raises:
        ConfigError: If the name is taken and ``replace`` is false.
    """
    _REGISTRY.register(spec, replace=replace)


def available_models() -> list[str]:
    """Names of the registered models."""
    return _REGISTRY.names()


def get_model_spec(name: str) -> ModelSpec:
    """Look up a registered model.

    Raises:
        ConfigError: If no model has that name (the message lists the choices).
    """
    return _REGISTRY.get(name)


def resolve_weights(weights: str | os.PathLike[str] | None) -> str | None:
    """Normalise a weights option: ``"imagenet"``, ``None``/``"random"``, or an existing file path.

    Raises:
        SourceNotFoundError: If a path is given and does not exist.
    """
    if weights is None:
        return None
    w = str(weights)
    if w.lower() == "imagenet":
        return "imagenet"
    if w.lower() in ("random", "none"):
        return None
    path = Path(w).expanduser()
    if not path.is_file():
        raise SourceNotFoundError(
            f"Weights file not found: {path}", hint="Pass weights='imagenet' to download Keras' ImageNet "
            "weights, or the path of a local .h5 / .weights.h5 file.",
            path=path, setting="weights", value=w, expected="imagenet",
        )
    return str(path.resolve())


def weights_label(weights: str | None) -> str:
    """How a weights choice is recorded in the manifest."""
    return "random" if weights is None else weights


def _keras() -> KerasModel:
    return import_keras()


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, shortened (Keras lists every layer that failed, 48 KB)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0].split(" Example error message", 1)[0] if lines else exc.__class__.__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _load_applications_model(factory: Callable[..., KerasModel], weights: str | None, what: str,
                             **kwargs: object) -> KerasModel:
    try:
        with warnings.catch_warnings():
            # Keras warns once per layer it cannot match ("Skipping nested container ..."): hundreds of lines for a
            # file of another model. The error below says it in one line.
            warnings.simplefilter("ignore", UserWarning)
            return factory(weights=weights, **kwargs)
    except Exception as exc:  # keras raises many types for download and load failures
        if weights == "imagenet":
            raise WeightsError(
                f"Could not download the ImageNet weights for {what} ({exc.__class__.__name__}: {_first_line(exc)})",
                hint="Without internet access, pass weights=PATH with a local weights file.",
                setting="weights", value="imagenet", expected="PATH",
            ) from exc
        raise WeightsError(
            f"Could not load weights for {what} from {weights} ({_first_line(exc)}). The file does not match this "
            "model: pass the weights file of this model (with or without its fully connected top, as the model "
            "needs)", hint="Or choose the model the file belongs to (model=).",
            path=weights, setting="model",
        ) from exc


def _build_vgg16_fc2(weights: str | None) -> KerasModel:
    keras = _keras()
    try:
        base = _load_applications_model(
            keras.applications.VGG16, weights, "VGG16 with its fully connected layers (fc2)", include_top=True
        )
    except WeightsError as exc:
        if weights not in (None, "imagenet") and "fc1" in str(exc.__cause__ or exc):
            raise WeightsError(
                f"{weights} holds only VGG16's convolutional base, without the fully connected layers that fc2 "
                "needs. Pass the full VGG16 weights (vgg16_weights_tf_dim_ordering_tf_kernels.h5, 553 MB)",
                hint="Or use this file with model='vgg16-avg' or model='vgg16-max'.",
                path=weights, setting="model", value="vgg16-fc2", expected=("vgg16-avg", "vgg16-max"),
            ) from exc
        raise
    return keras.Model(base.inputs, base.get_layer("fc2").output, name="vgg16_fc2")


def _build_vgg16_pooled(pooling: str) -> Callable[[str | None], KerasModel]:
    def build(weights: str | None) -> KerasModel:
        keras = _keras()
        return _load_applications_model(
            keras.applications.VGG16,
            weights,
            f"the VGG16 convolutional base ({pooling} pooling)",
            include_top=False,
            pooling=pooling,
            input_shape=(224, 224, 3),
        )

    return build


def _build_mobilenetv2(weights: str | None) -> KerasModel:
    keras = _keras()
    return _load_applications_model(
        keras.applications.MobileNetV2,
        weights,
        "MobileNetV2 (alpha 0.35, no top)",
        alpha=0.35,
        include_top=False,
        pooling="avg",
        input_shape=(224, 224, 3),
    )


register_model(
    ModelSpec(
        "vgg16-fc2", 4096, "fc2", (224, 224), _build_vgg16_fc2, preprocess_caffe,
        "VGG16 fc2 layer, 4096-d (needs the full VGG16 weights, 553 MB)",
    )
)
register_model(
    ModelSpec(
        "vgg16-avg", 512, "block5_pool+avg", (224, 224), _build_vgg16_pooled("avg"), preprocess_caffe,
        "VGG16 last conv block, global average pooling, 512-d",
    )
)
register_model(
    ModelSpec(
        "vgg16-max", 512, "block5_pool+max", (224, 224), _build_vgg16_pooled("max"), preprocess_caffe,
        "VGG16 last conv block, global max pooling, 512-d",
    )
)
register_model(
    ModelSpec(
        "mobilenetv2", 1280, "out_relu+avg", (224, 224), _build_mobilenetv2, preprocess_tf,
        "MobileNetV2 alpha 0.35, average pooling, 1280-d (small and fast)",
    )
)
