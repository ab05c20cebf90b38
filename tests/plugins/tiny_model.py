"""A tiny Keras model registered as ``tiny`` (16-d), for fast tests.

Loaded by the CLI through ``SIMILAR_IMAGES_PLUGINS=tiny_model`` (with this
folder on ``PYTHONPATH``), the way users plug in their own models.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from similar_images.embed import ModelSpec, get_model_spec, register_model
from similar_images.errors import ConfigError


def _build(weights: str | None) -> Any:
    import keras

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(16),
        ],
        name="tiny",
    )
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    return model


def _preprocess(batch: np.ndarray) -> np.ndarray:
    return batch.astype(np.float32) / 255.0


try:
    get_model_spec("tiny")
except ConfigError:
    register_model(ModelSpec("tiny", 16, "dense", (32, 32), _build, _preprocess, "tiny test model"))
