"""The spatial feature map behind an image model's vector.

An image model's vector is made from its last convolutional feature map, a
grid of ``H x W`` positions with ``C`` channels each:

==============  ================  ========  =======================================
model           layer             grid      vector made by
==============  ================  ========  =======================================
``vgg16-avg``   ``block5_pool``   7x7x512   global average pooling (exact)
``vgg16-max``   ``block5_pool``   7x7x512   global max pooling (exact)
``mobilenetv2`` ``out_relu``      7x7x1280  global average pooling (exact)
``vgg16-fc2``   ``block5_conv3``  14x14x512 max pooling, flatten, fc1, fc2 (no spatial decomposition)
==============  ================  ========  =======================================

A :class:`FeatureMapSpec` says where that map is and how the vector is made
from it; it is registered per model name with :func:`register_feature_map`.
When the vector is a global average or max pooling of the map
(``pooling="avg"`` / ``"max"``), the cosine similarity of two images
decomposes exactly over the grid positions (see
:mod:`similar_images.methods.explain`). For any other model
(``pooling=None``), only a gradient map can be made:
:meth:`FeatureMapModel.similarity_gradients` differentiates the cosine
similarity of two images with respect to both feature maps.

Checked with the real ImageNet weights: the max-pooled vector equals the
maximum over the map bit for bit; the average-pooled one equals the mean of
the map to float32 rounding (relative difference about 2e-7). Every forward
pass of a model registered with a pooling checks this again, so a wrong
registration fails loudly instead of drawing a wrong map.

TensorFlow is imported only when a :class:`FeatureMapModel` is built.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from .._util.registry import Registry
from .._util.types import KerasModel
from ..errors import ConfigError, FeatureMapError
from .tf_import import import_keras, import_tensorflow

if TYPE_CHECKING:
    from .image import ImageEmbedder
    from .image_models import ModelSpec

__all__ = [
    "FeatureMapModel",
    "FeatureMapSpec",
    "available_feature_maps",
    "feature_map_spec",
    "pool",
    "register_feature_map",
]

logger = logging.getLogger(__name__)

Pooling = Literal["avg", "max"]

#: Relative tolerance of the check that the pooled map reproduces the model's vector.
POOLING_RTOL = 1e-4


@dataclass(frozen=True)
class FeatureMapSpec:
    """Where a model's spatial feature map is, and how the model's vector is made from it.

    Attributes:
        model: Name of the :class:`~similar_images.models.ModelSpec` it belongs to.
        layer: The Keras layer whose output is the ``(H, W, C)`` map: a name,
            or an index into ``model.layers`` (for models with generated names).
        pooling: ``"avg"`` or ``"max"`` when the model's vector is exactly the
            global average or max pooling of that map (the similarity then
            decomposes exactly over the grid); ``None`` when more layers
            follow (only a gradient map, labelled approximate, can be made).
        description: One line for listings.
    """

    model: str
    layer: str | int
    pooling: Pooling | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.pooling not in (None, "avg", "max"):
            raise ConfigError(f"pooling must be 'avg', 'max' or None, got {self.pooling!r}")

    @property
    def name(self) -> str:
        """The registry key: the model name."""
        return self.model

    @property
    def exact(self) -> bool:
        """Whether the similarity decomposes exactly over this map."""
        return self.pooling is not None


_REGISTRY: Registry[FeatureMapSpec] = Registry(
    "feature map", hint="register one with similar_images.embed.feature_maps.register_feature_map"
)


def register_feature_map(spec: FeatureMapSpec, *, replace: bool = False) -> None:
    """Say where the feature map of a model is (for models registered with ``register_model``).

    Raises:
        ConfigError: If the model already has one and ``replace`` is false.
    """
    _REGISTRY.register(spec, replace=replace)


def available_feature_maps() -> list[str]:
    """Names of the models whose feature map is known."""
    return _REGISTRY.names()


def feature_map_spec(model: str) -> FeatureMapSpec:
    """The feature map of a model.

    Raises:
        FeatureMapError: If the model's feature map is not registered (the
            message lists the models that have one and says how to add one).
    """
    if model not in _REGISTRY:
        raise FeatureMapError(
            f"The feature map of model {model!r} cannot be reached: explanations need to know which layer holds "
            f"its last convolutional feature map. Models with one: {', '.join(available_feature_maps())}. "
            "For your own model, call similar_images.embed.feature_maps.register_feature_map("
            f"FeatureMapSpec({model!r}, layer=LAYER_NAME, pooling='avg'|'max'|None))."
        )
    return _REGISTRY.get(model)


def pool(maps: np.ndarray, pooling: Pooling) -> np.ndarray:
    """Global pooling of ``(n, H, W, C)`` maps into ``(n, C)`` vectors."""
    if pooling == "avg":
        return maps.mean(axis=(1, 2))
    return maps.max(axis=(1, 2))


def _keras() -> KerasModel:
    return import_keras()


class FeatureMapModel:
    """An image model with a second output: its spatial feature map.

    It shares the layers (and so the loaded weights) of the embedder's Keras
    model; building it costs no weight loading.

    Args:
        keras_model: The model that maps a preprocessed batch to vectors.
        spec: Where its feature map is.
        preprocess: The model's preprocessing of a uint8 ``(n, h, w, 3)`` batch.

    Raises:
        FeatureMapError: If the layer does not exist or its output is not a
            fixed-size ``(H, W, C)`` map.
    """

    def __init__(self, keras_model: KerasModel, spec: FeatureMapSpec, preprocess: KerasModel) -> None:
        keras = _keras()
        self.spec = spec
        self._preprocess = preprocess
        try:
            layer = (keras_model.get_layer(spec.layer) if isinstance(spec.layer, str)
                     else keras_model.layers[spec.layer])
        except (ValueError, IndexError) as exc:
            raise FeatureMapError(
                f"Model {spec.model!r} has no layer {spec.layer!r} ({exc}); register its feature map with the "
                "name of the layer that outputs its last convolutional map"
            ) from exc
        shape = tuple(layer.output.shape)
        if len(shape) != 4 or any(s is None for s in shape[1:]):
            raise FeatureMapError(
                f"Layer {layer.name!r} of model {spec.model!r} outputs shape {shape}, not a spatial (H, W, C) map; "
                "register the last convolutional layer instead"
            )
        self.layer_name: str = layer.name
        self.grid: tuple[int, int] = (int(shape[1]), int(shape[2]))
        self.channels: int = int(shape[3])
        inputs, outputs = keras_model.inputs, keras_model.outputs
        if len(outputs) != 1:
            raise FeatureMapError(f"Model {spec.model!r} has {len(outputs)} outputs; explanations need one vector")
        self._model = keras.Model(inputs[0] if len(inputs) == 1 else inputs, [layer.output, outputs[0]],
                                  name=f"{keras_model.name}_feature_map")
        self._lock = threading.Lock()
        self._forward: KerasModel = None
        self.forward_passes = 0
        self.backward_passes = 0

    @classmethod
    def from_embedder(cls, embedder: ImageEmbedder) -> FeatureMapModel:
        """The feature-map model of an :class:`~similar_images.features.ImageEmbedder` (sharing its weights).

        Raises:
            FeatureMapError: If the embedder's model has no registered feature map.
        """
        spec = feature_map_spec(embedder.spec.name)
        return cls(embedder.model, spec, embedder.spec.preprocess)

    @classmethod
    def from_model_spec(cls, model_spec: ModelSpec, keras_model: KerasModel) -> FeatureMapModel:
        """The feature-map model of a built model of ``model_spec``."""
        return cls(keras_model, feature_map_spec(model_spec.name), model_spec.preprocess)

    def _check_pooling(self, maps: np.ndarray, vectors: np.ndarray) -> None:
        if self.spec.pooling is None:
            return
        pooled = pool(maps, self.spec.pooling)
        if pooled.shape != vectors.shape:
            raise FeatureMapError(
                f"Model {self.spec.model!r}: {self.spec.pooling} pooling of layer {self.layer_name!r} gives "
                f"{pooled.shape[1]}-d vectors, the model {vectors.shape[1]}-d; register it with pooling=None"
            )
        err = float(np.abs(pooled - vectors).max(initial=0.0))
        scale = float(np.abs(vectors).max(initial=0.0))
        if err > POOLING_RTOL * scale + 1e-12:
            raise FeatureMapError(
                f"Model {self.spec.model!r} is registered as the {self.spec.pooling} pooling of layer "
                f"{self.layer_name!r}, but its vectors differ from that pooling by {err:.3g} (largest value "
                f"{scale:.3g}); register it with pooling=None to get a gradient map instead"
            )

    def _compiled_forward(self) -> KerasModel:
        """The forward pass as one TensorFlow graph for any batch size (traced once: no retracing per size)."""
        if self._forward is None:
            tf = import_tensorflow()
            spec = tf.TensorSpec((None, *tuple(self._model.inputs[0].shape)[1:]), tf.float32)
            model = self._model
            self._forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        return self._forward

    def maps(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feature maps and vectors of a uint8 ``(n, h, w, 3)`` batch, in one forward pass.

        Returns:
            ``(maps, vectors)``: float32 ``(n, H, W, C)`` and the model's raw
            (not normalised) ``(n, dim)`` vectors.

        Raises:
            FeatureMapError: If the model is registered with a pooling that
                does not reproduce its vectors.
        """
        x = self._preprocess(batch)
        with self._lock:
            a, v = self._compiled_forward()(x)
            self.forward_passes += 1
        maps = np.asarray(a, dtype=np.float32)
        vectors = np.asarray(v, dtype=np.float32).reshape(len(batch), -1)
        self._check_pooling(maps, vectors)
        return maps, vectors

    def similarity_gradients(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Gradient of the cosine similarity of two images with respect to both feature maps.

        One forward pass of the pair and one backward pass from the similarity
        down to the feature map (not through the convolutions below it).

        Args:
            batch: uint8 ``(2, h, w, 3)``: the query and the result.

        Returns:
            ``(maps, grads, score)``: float32 ``(2, H, W, C)`` feature maps, the
            gradients of the cosine similarity with respect to them, and the
            similarity itself.

        Raises:
            FeatureMapError: If the similarity does not depend on the feature map.
        """
        if len(batch) != 2:
            raise ValueError(f"similarity_gradients takes a pair of images, got {len(batch)}")
        tf = import_tensorflow()
        x = tf.convert_to_tensor(self._preprocess(batch))
        with self._lock:
            with tf.GradientTape() as tape:
                a, v = self._model(x, training=False)
                v = tf.reshape(v, (2, -1))
                vn = tf.math.l2_normalize(v, axis=1)
                score = tf.reduce_sum(vn[0] * vn[1])
            grads = tape.gradient(score, a)
            self.forward_passes += 1
            self.backward_passes += 1
        if grads is None:
            raise FeatureMapError(
                f"The similarity of model {self.spec.model!r} does not depend on layer {self.layer_name!r}; "
                "register a layer that its vector is computed from"
            )
        return np.asarray(a, dtype=np.float32), np.asarray(grads, dtype=np.float32), float(score)


register_feature_map(FeatureMapSpec("vgg16-avg", "block5_pool", "avg", "VGG16 block5 after its 2x2 max pool, 7x7x512"))
register_feature_map(FeatureMapSpec("vgg16-max", "block5_pool", "max", "VGG16 block5 after its 2x2 max pool, 7x7x512"))
register_feature_map(FeatureMapSpec("mobilenetv2", "out_relu", "avg", "MobileNetV2 last activation, 7x7x1280"))
register_feature_map(FeatureMapSpec(
    "vgg16-fc2", "block5_conv3", None,
    "VGG16 last convolution, 14x14x512 (fc1 and fc2 follow: gradient map only)",
))
