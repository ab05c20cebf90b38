"""Embedders: one interface (:class:`Embedder`) for image models and text encoders.

* :class:`ImageEmbedder` runs a registered image model
  (:func:`register_model`, :class:`ModelSpec`) on an inference backend
  (:mod:`similar_images.embed.backends`).
* :class:`TextEmbedder` runs a registered sentence encoder
  (:func:`register_text_encoder`, :class:`TextEncoderSpec`) on torch or ONNX Runtime.
* :func:`embedder_from_info` rebuilds the embedder a database was built with,
  from the ``model`` section of its manifest.

To add an image model, register a :class:`ModelSpec`; to add a text encoder,
register a :class:`TextEncoderSpec`; to add a kind of item, implement
:class:`Embedder` and add an :class:`ItemKind`.
"""

from __future__ import annotations

from typing import Any

from .._util.types import JSON
from ..errors import ConfigError
from .backends import RECIPE_VERSION, QuantizationSettings
from .base import ITEM_KINDS, Embedder, ItemKind, item_kind, l2_normalize
from .image import ImageEmbedder
from .image_models import (
    DEFAULT_MODEL,
    ModelSpec,
    available_models,
    get_model_spec,
    register_model,
    resolve_weights,
    weights_label,
)
from .text import (
    DEFAULT_TEXT_BACKEND,
    DEFAULT_TEXT_ENCODER,
    TEXT_BACKENDS,
    TextEmbedder,
    TextEncoderSpec,
    available_text_encoders,
    check_text_backend,
    get_text_encoder,
    register_text_encoder,
)

__all__ = [
    "Embedder",
    "ItemKind",
    "ITEM_KINDS",
    "item_kind",
    "l2_normalize",
    "ImageEmbedder",
    "ModelSpec",
    "DEFAULT_MODEL",
    "register_model",
    "get_model_spec",
    "available_models",
    "resolve_weights",
    "weights_label",
    "TextEmbedder",
    "TextEncoderSpec",
    "DEFAULT_TEXT_ENCODER",
    "DEFAULT_TEXT_BACKEND",
    "TEXT_BACKENDS",
    "check_text_backend",
    "register_text_encoder",
    "get_text_encoder",
    "available_text_encoders",
    "embedder_from_info",
    "default_index_name",
    "registered_dim",
]


def embedder_from_info(info: JSON, *, kind: str = "image", weights: str | None = None,
                       **options: Any) -> Embedder:
    """Rebuild the embedder described by ``info`` (a manifest's ``model`` section).

    Args:
        info: What :meth:`Embedder.info` returned when the database was built.
        kind: The kind of item (the manifest's ``kind``); ``info["kind"]`` wins when present.
        weights: Model files overriding the recorded ones (image weights, or a text encoder's folder).
        options: More keyword arguments for the embedder (e.g. ``batch_size``).

    Raises:
        ConfigError: If the model is not registered (load the plugin that registers it first).
    """
    kind = str(info.get("kind", kind))
    item_kind(kind)  # validates
    if kind == "text":
        return TextEmbedder(info["name"], source=weights, backend=str(info.get("backend", DEFAULT_TEXT_BACKEND)),
                            **options)
    recorded = info.get("weights", "imagenet")
    if "max_pixels" in info:
        options.setdefault("max_pixels", int(info["max_pixels"]))
    if "decoder" in info:
        options.setdefault("decoder", str(info["decoder"]))
    if info.get("calibration"):  # an int8 model: quantized again (or found in the cache) from the same images
        options.setdefault("calibration", list(info["calibration"]))
        options.setdefault("calibration_size", len(info["calibration"]))
        # the recipe the database was built with (none recorded: recipe 1, plain quantization)
        options.setdefault("quantization",
                           QuantizationSettings(accuracy_control=int(info.get("int8_recipe", 1)) >= RECIPE_VERSION))
    return ImageEmbedder(info["name"], weights or (None if recorded == "random" else recorded),
                         backend=info.get("backend", "keras"), precision=info.get("precision", "fp32"),
                         seed=int(info.get("seed", 0)), **options)


def _registered_spec(info: JSON, kind: str) -> ModelSpec | TextEncoderSpec | None:
    kind = str(info.get("kind", kind))
    lookup = get_text_encoder if kind == "text" else get_model_spec
    try:
        return lookup(str(info["name"]))
    except ConfigError:
        return None  # e.g. a plugin model whose module is not imported


def default_index_name(info: JSON, *, kind: str = "image") -> str:
    """The name of the default index for vectors made by the embedder ``info`` describes (a key of
    :data:`similar_images.index.factory.DEFAULTS`); ``"ivf-pq"`` for an unregistered model."""
    spec = _registered_spec(info, kind)
    return spec.default_index if spec is not None else "ivf-pq"


def registered_dim(info: JSON, *, kind: str = "image") -> int | None:
    """The dimension of the registered model ``info`` names (``None`` when it is not registered)."""
    spec = _registered_spec(info, kind)
    return spec.dim if spec is not None else None
