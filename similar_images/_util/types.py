"""Type aliases shared by the layers (mypy checks them in CI: see README's "Development" section)."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

JSON: TypeAlias = dict[str, Any]
"""A JSON object read from disk or the wire (a manifest, a request body, a saved report).

Its fields are checked where they are read (``int(data["count"])``). Objects the library writes are typed
``dict[str, object]``.
"""

Vectors: TypeAlias = npt.NDArray[np.float32]
"""Rows of float32 feature vectors, shape ``(n, d)``."""

Ids: TypeAlias = npt.NDArray[np.int64]
"""Row ids, shape ``(n,)`` or ``(n, k)`` (``-1`` where Faiss found fewer than ``k`` neighbours)."""

# Handles of libraries that ship no type information (Keras, TensorFlow, OpenVINO, ipywidgets, IPython): mypy
# cannot check their use, so each gets one documented name here instead of a bare ``Any`` at every use.
KerasModel: TypeAlias = Any
"""A ``keras.Model`` (or a TensorFlow ``tf.function``/tensor the model returns)."""

OVHandle: TypeAlias = Any
"""An OpenVINO object: the ``Core``, an ``ov.Model`` (read, converted or quantized), a ``CompiledModel``, a request."""

Widget: TypeAlias = Any
"""An ipywidgets ``DOMWidget``/``Output`` or an IPython display object shown in a notebook."""
