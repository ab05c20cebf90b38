"""Inference backends: one image model's network on Keras or OpenVINO, in fp32, bf16 or int8.

- :class:`Runner`: the seam (a preprocessed float32 ``(n, h, w, 3)`` batch in,
  raw ``(n, dim)`` features out); the Keras fp32 runner is the reference every
  other backend is measured against.
- :class:`KerasRunner` (:mod:`.keras`), :class:`OpenVINORunner` (:mod:`.openvino`): the two runtimes.
- :func:`make_runner`: builds one (converting, quantizing and caching as needed);
  ``precision="auto"`` measures agreement with fp32 and keeps the fastest that holds.
- :class:`Calibration`: the sample of the user's images used by int8 and ``auto``.
- :class:`ModelCache`: converted and quantized models on disk.
- :func:`load_onnx_sentence_encoder` (:mod:`.onnx_text`): a sentence-transformers text encoder exported to ONNX
  and run on ONNX Runtime (the text encoder's ``onnx`` backend).

Nothing heavy is imported here: TensorFlow, OpenVINO and NNCF load when a runner is built.
"""

from .auto import (
    AUTO_MIN_FACTOR,
    CandidateFigures,
    PrecisionChoice,
    cosine_to_reference,
    pick_precision,
    topk_agreement,
)
from .base import (
    BACKENDS,
    CPU_ENV,
    PRECISION_CHOICES,
    PRECISIONS,
    CpuCapabilities,
    Runner,
    check_backend,
    check_inference,
    check_precision,
    cpu_capabilities,
)
from .cache import ModelCache, default_cache_dir
from .calibration import DEFAULT_CALIBRATION_SIZE, DEFAULT_THRESHOLD, Calibration
from .factory import RunnerFactory, make_runner
from .keras import KerasRunner
from .onnx_text import ONNX_INSTALL_COMMAND, load_onnx_sentence_encoder
from .openvino import INSTALL_COMMAND, RECIPE_VERSION, OpenVINORunner, QuantizationSettings

__all__ = [
    "AUTO_MIN_FACTOR",
    "BACKENDS",
    "CPU_ENV",
    "DEFAULT_CALIBRATION_SIZE",
    "DEFAULT_THRESHOLD",
    "INSTALL_COMMAND",
    "ONNX_INSTALL_COMMAND",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "Calibration",
    "CandidateFigures",
    "CpuCapabilities",
    "KerasRunner",
    "ModelCache",
    "OpenVINORunner",
    "PrecisionChoice",
    "QuantizationSettings",
    "RECIPE_VERSION",
    "Runner",
    "RunnerFactory",
    "check_backend",
    "check_inference",
    "check_precision",
    "cosine_to_reference",
    "cpu_capabilities",
    "default_cache_dir",
    "load_onnx_sentence_encoder",
    "make_runner",
    "pick_precision",
    "topk_agreement",
]
