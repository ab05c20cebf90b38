"""OpenVINO: convert a Keras model, quantize it to int8 with NNCF, run it with asynchronous requests."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._util.types import KerasModel, OVHandle
from ...errors import BackendError, BackendUnavailableError
from .auto import topk_agreement
from .base import CPU_ENV, check_precision, cpu_capabilities

__all__ = [
    "INSTALL_COMMAND",
    "OpenVINORunner",
    "QuantizationSettings",
    "convert_keras_model",
    "import_nncf",
    "import_openvino",
    "openvino_capabilities",
    "openvino_core",
    "precision_name",
    "DEFAULT_TARGET_AGREEMENT",
    "RECIPE_VERSION",
    "quantize_int8",
    "runs_bf16",
    "save_ov_model",
]

logger = logging.getLogger(__name__)

#: The command that installs the openvino backend.
INSTALL_COMMAND = "pip install openvino nncf"


def import_openvino() -> OVHandle:
    """Import OpenVINO, or raise :class:`BackendUnavailableError` naming the install command."""
    try:
        import openvino  # noqa: PLC0415  (heavy: OpenVINO runtime)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"The openvino backend needs the OpenVINO runtime, which is not installed ({exc}); `{INSTALL_COMMAND}` "
            "installs it.", hint="Or use backend='keras'.", setting="backend", value="openvino", expected="keras",
        ) from exc
    return openvino


def import_nncf() -> OVHandle:
    """Import NNCF (int8 quantization), or raise :class:`BackendUnavailableError` naming the install command."""
    try:
        import nncf  # noqa: PLC0415  (heavy: NNCF pulls in its own stack)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"int8 precision needs NNCF for post-training quantization, which is not installed ({exc}); "
            f"`{INSTALL_COMMAND}` installs it.", hint="Or use precision='fp32' or 'bf16'.",
            setting="precision", value="int8", expected=("fp32", "bf16"),
        ) from exc
    return nncf


_CORE: OVHandle = None
_CORE_LOCK = threading.Lock()


def openvino_core() -> OVHandle:
    """The process's shared ``openvino.Core``."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = import_openvino().Core()
        return _CORE


def openvino_capabilities(device: str = "CPU") -> list[str]:
    """The device's ``OPTIMIZATION_CAPABILITIES`` (``FP32``, ``BF16``, ``INT8``, ...).

    Under ``$SIMILAR_IMAGES_CPU`` (see :func:`~.base.cpu_capabilities`) the CPU's ``BF16`` follows the override:
    dropped where it says no bf16, added where it claims bf16 (OpenVINO then runs such a CPU's bf16 in fp32).
    """
    caps = [str(c) for c in openvino_core().get_property(device, "OPTIMIZATION_CAPABILITIES")]
    if device.upper().startswith("CPU") and os.environ.get(CPU_ENV, "").strip():
        bf16 = cpu_capabilities().bf16
        caps = [c for c in caps if c != "BF16"] + (["BF16"] if bf16 else [])
    return caps


def precision_name(value: object) -> str:
    """An OpenVINO element type as its short name: ``bf16``, ``f32`` ...

    ``str()`` of an ``openvino.Type`` is ``<Type: 'bfloat16'>``; its ``get_type_name()`` is ``bf16``. Strings in
    either spelling are accepted.
    """
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    name = name.strip().lower()
    if name.startswith("<type:"):
        name = name[len("<type:"):].strip(" '>\"")
    return {"bfloat16": "bf16", "float32": "f32", "float16": "f16"}.get(name, name)


def runs_bf16(inference_precision: object) -> bool:
    """Whether OpenVINO's ``INFERENCE_PRECISION_HINT`` (a type, or its text) is bfloat16."""
    return precision_name(inference_precision) == "bf16"


def convert_keras_model(model: KerasModel, input_size: tuple[int, int]) -> OVHandle:
    """Convert a Keras model to an ``openvino.Model`` with a dynamic batch dimension.

    Args:
        model: A Keras model taking ``(n, height, width, 3)`` float32 input.
        input_size: ``(width, height)`` of the model input.
    """
    ov = import_openvino()
    w, h = input_size
    example = np.zeros((1, h, w, 3), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras' "expected keras_tensor" note about the traced input structure
        ov_model = ov.convert_model(model, example_input=example)
    ov_model.reshape([-1, h, w, 3])
    if len(ov_model.outputs) != 1:
        raise BackendError(f"Expected a model with one output, got {len(ov_model.outputs)}")
    return ov_model


def save_ov_model(ov_model: OVHandle, xml: Path) -> None:
    """Save an OpenVINO model as IR (``.xml`` + ``.bin``) without compressing weights to fp16."""
    import_openvino().save_model(ov_model, str(xml), compress_to_fp16=False)


#: The int8 recipe's version: part of every int8 cache key and of ``auto``'s cached figures, so that a changed
#: recipe never reuses a model quantized (or figures measured) by an older one. 1: plain post-training
#: quantization; 2: accuracy-aware quantization against top-10 agreement with fp32.
RECIPE_VERSION = 2


@dataclass(frozen=True)
class QuantizationSettings:
    """How NNCF's post-training quantization runs.

    The default is plain post-training quantization (recipe 1). The accuracy-aware recipe (recipe 2,
    ``accuracy_control=True``) quantizes every layer, measures the top-``k`` neighbour agreement of the int8
    model with fp32 on the calibration sample, and returns layers to floating point, the most sensitive first,
    until the agreement reaches ``target_agreement``. It is opt-in: on a CPU without VNNI it returned all 13 of
    VGG16's convolutions to fp32 (1.07x OpenVINO fp32, 10x the build time; README, "Inference backends").

    Attributes:
        preset: ``"performance"`` (symmetric activations) or ``"mixed"`` (asymmetric activations).
        fast_bias_correction: NNCF's fast bias correction (``False``: the slower full bias correction).
        keep_ends: Leave the first and the last weighted layer in floating point (NNCF ignored scope).
        keep_depthwise: Leave depthwise convolutions in floating point (MobileNet's weak spot).
        overflow_fix: NNCF's overflow fix (weights on 7 bits, so that the int16 sums of CPUs
            without VNNI cannot saturate): ``"enable"`` (every layer), ``"first_layer"``,
            ``"disable"``, or ``"auto"``: every layer on a CPU without VNNI, else the first layer.
        calibration_batch: Images per calibration inference.
        accuracy_control: NNCF's accuracy-aware quantization, recipe 2 (``False``, the default: plain
            post-training quantization, recipe 1, faster to build but below 0.99 agreement on VGG16 and
            MobileNetV2).
        target_agreement: Top-``k`` agreement with fp32 on the calibration sample that accuracy control
            restores (``None``: :data:`DEFAULT_TARGET_AGREEMENT`, ``auto``'s default threshold 0.99 plus a
            margin). It does not follow ``auto``'s threshold, so that another threshold re-decides from the
            cached figures instead of quantizing and measuring again.
        k: Neighbours compared by the agreement.
        ranking_subset: Calibration images NNCF ranks the layers' sensitivity on.
    """

    preset: str = "performance"
    fast_bias_correction: bool = True
    keep_ends: bool = False
    keep_depthwise: bool = False
    overflow_fix: str = "auto"
    calibration_batch: int = 1
    accuracy_control: bool = False
    target_agreement: float | None = None
    k: int = 10
    ranking_subset: int = 32

    def resolved_overflow_fix(self) -> str:
        """``overflow_fix`` with ``auto`` decided for this CPU."""
        if self.overflow_fix != "auto":
            return self.overflow_fix
        return "first_layer" if cpu_capabilities().vnni else "enable"

    def resolved_target(self) -> float:
        """The agreement accuracy control restores: ``target_agreement``, or :data:`DEFAULT_TARGET_AGREEMENT`."""
        return float(self.target_agreement if self.target_agreement is not None else DEFAULT_TARGET_AGREEMENT)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "preset": self.preset, "fast_bias_correction": self.fast_bias_correction, "keep_ends": self.keep_ends,
            "keep_depthwise": self.keep_depthwise, "overflow_fix": self.resolved_overflow_fix(),
            "calibration_batch": self.calibration_batch}
        if self.accuracy_control:
            out.update(recipe=RECIPE_VERSION, accuracy_control=True, target_agreement=self.resolved_target(),
                       k=self.k, ranking_subset=self.ranking_subset)
        return out


#: The agreement accuracy control restores: ``auto``'s default threshold (0.99) plus a margin, so that ``auto``'s
#: own measurement (the same sample, other batches and threads) does not fall just short of the threshold.
DEFAULT_TARGET_AGREEMENT = 0.993


_WEIGHTED = ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData")


def end_layers(ov_model: OVHandle) -> list[str]:
    """Friendly names of the first and the last weighted operation of an OpenVINO model."""
    names = [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() in _WEIGHTED]
    if not names:
        return []
    return sorted({names[0], names[-1]})


def quantize_int8(ov_model: OVHandle, calibration: np.ndarray,
                  settings: QuantizationSettings | None = None) -> OVHandle:
    """Quantize an OpenVINO model to int8 with NNCF post-training quantization.

    With ``settings.accuracy_control`` (the default) NNCF's accuracy-aware quantization runs: the validation
    metric is the top-``k`` neighbour agreement with the fp32 model on ``calibration`` (the sample ``auto``
    measures on), and layers go back to floating point, the most sensitive first, until it reaches
    ``settings.resolved_target()`` (or every layer is back: then ``auto``'s measurement keeps fp32).

    Args:
        ov_model: The float model (left unchanged).
        calibration: Preprocessed float32 ``(n, h, w, 3)`` calibration images.
        settings: Quantization settings.

    Returns:
        The quantized ``openvino.Model``.
    """
    nncf = import_nncf()
    from nncf.quantization.advanced_parameters import (  # noqa: PLC0415  (heavy: NNCF)
        AdvancedAccuracyRestorerParameters,
        AdvancedQuantizationParameters,
        OverflowFix,
    )

    settings = settings or QuantizationSettings()
    if len(calibration) == 0:
        raise BackendError("int8 quantization needs calibration images; none could be read")
    bs = max(1, settings.calibration_batch)
    items = [np.ascontiguousarray(calibration[i:i + bs], dtype=np.float32) for i in range(0, len(calibration), bs)]
    presets = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}
    if settings.preset not in presets:
        raise BackendError(f"Unknown quantization preset {settings.preset!r}; choose performance or mixed")
    kwargs: dict[str, object] = {
        "subset_size": len(items),
        "preset": presets[settings.preset],
        "fast_bias_correction": settings.fast_bias_correction,
        "target_device": nncf.TargetDevice.CPU,
    }
    names = end_layers(ov_model) if settings.keep_ends else []
    types = ["GroupConvolution"] if settings.keep_depthwise else []
    if names or types:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=names, types=types, validate=False)
        logger.info("Keeping in floating point: %s", ", ".join(names + types))
    fixes = {"enable": OverflowFix.ENABLE, "first_layer": OverflowFix.FIRST_LAYER, "disable": OverflowFix.DISABLE}
    fix = settings.resolved_overflow_fix()
    if fix not in fixes:
        raise BackendError(f"Unknown overflow_fix {settings.overflow_fix!r}; choose auto, enable, first_layer, disable")
    advanced = AdvancedQuantizationParameters(overflow_fix=fixes[fix], batchwise_statistics=bs > 1 or None)
    logger.info("Quantizing to int8 on %d calibration images (%s)", len(calibration), settings.to_dict())
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        # NNCF draws progress bars on stdout; a library prints nothing.
        with contextlib.redirect_stdout(io.StringIO()):
            if not settings.accuracy_control:
                return nncf.quantize(ov_model.clone(), nncf.Dataset(items), advanced_parameters=advanced, **kwargs)
            target = settings.resolved_target()
            validation, validate = agreement_validation(ov_model, calibration, settings.k)
            restorer = AdvancedAccuracyRestorerParameters(
                ranking_subset_size=max(1, min(settings.ranking_subset, len(calibration))), num_ranking_workers=1)
            return nncf.quantize_with_accuracy_control(
                ov_model.clone(), nncf.Dataset(items), nncf.Dataset(validation, lambda item: item[1]), validate,
                max_drop=max(0.0, 1.0 - target), drop_type=nncf.DropType.ABSOLUTE,
                advanced_quantization_parameters=advanced, advanced_accuracy_restorer_parameters=restorer, **kwargs)
    finally:
        nncf_logger.setLevel(level)


def agreement_validation(ov_model: OVHandle, x: np.ndarray, k: int = 10, batch: int = 16
                         ) -> tuple[list[tuple[np.ndarray, np.ndarray]], OVHandle]:
    """The validation data and function of accuracy-aware quantization: top-``k`` agreement with fp32.

    Args:
        ov_model: The float model (its fp32 outputs on ``x`` are the reference).
        x: Preprocessed float32 ``(n, h, w, 3)`` images.
        k: Neighbours compared.
        batch: Images per validation item.

    Returns:
        The items, ``(indices, images)`` batches, and ``validate(compiled_model, items) -> (agreement, outputs)``:
        the agreement of the items' vectors with the reference rows of the same images, and every item's output
        (NNCF then ranks layers by how far each moves the outputs).
    """
    compiled = openvino_core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = [(np.arange(i, min(i + batch, len(x))), np.ascontiguousarray(x[i:i + batch], dtype=np.float32))
             for i in range(0, len(x), batch)]
    reference = np.concatenate([_infer(compiled, images) for _ids, images in items])

    def validate(model: OVHandle,
                 data: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[float, list[list[np.ndarray]]]:
        ids, outs = [], []
        for item_ids, images in data:
            ids.append(item_ids)
            outs.append(_infer(model, images))
        rows = np.concatenate(ids)
        out = np.concatenate(outs)
        agreement = topk_agreement(reference[rows], out, min(k, len(rows) - 1)) if len(rows) > 1 else 1.0
        return agreement, [[o] for o in outs]

    return items, validate


def _infer(compiled: OVHandle, x: np.ndarray) -> np.ndarray:
    request = compiled.create_infer_request()
    request.infer({0: x})
    return request.get_output_tensor(0).data.copy().reshape(len(x), -1)


class OpenVINORunner:
    """An OpenVINO model compiled for a device, run with asynchronous inference requests.

    Args:
        model: An ``openvino.Model`` or the path of an IR ``.xml`` file.
        precision: ``"fp32"``, ``"bf16"`` (the inference-precision hint) or
            ``"int8"`` (a model quantized by :func:`quantize_int8`, its
            remaining float layers run in fp32).
        hint: ``"throughput"`` (several streams, for :meth:`run_batches`) or
            ``"latency"`` (one stream using every core: one batch at a time).
        requests: Inference requests kept in flight by :meth:`run_batches`
            (default: the device's optimal number).
        device: The OpenVINO device.
        info: Extra JSON for :meth:`info`.
    """

    backend = "openvino"

    def __init__(self, model: OVHandle, precision: str = "fp32", *, hint: str = "throughput",
                 requests: int | None = None, device: str = "CPU", info: dict[str, object] | None = None) -> None:
        import_openvino()
        self.precision = check_precision(precision, allow_auto=False)
        hint = hint.lower()
        if hint not in ("throughput", "latency"):
            raise BackendError(f"Unknown performance hint {hint!r}; choose throughput or latency")
        self.hint = hint
        self.device = device
        config = {"PERFORMANCE_HINT": hint.upper(),
                  "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32"}
        source = str(model) if isinstance(model, (str, os.PathLike)) else model
        #: The IR file the model came from (a model cache entry), or ``None`` for an in-memory model.
        self.source: Path | None = Path(source) if isinstance(source, str) else None
        self.compiled = openvino_core().compile_model(source, device, config)
        self.inference_precision = precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if self.precision == "bf16" and not runs_bf16(self.inference_precision):
            logger.warning("OpenVINO runs %s in %s on this %s: it has no native bf16", device,
                           self.inference_precision, device)
        self.requests = requests or max(1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.extra: dict[str, object] = dict(info or {})
        self._request = self.compiled.create_infer_request()
        self._request_lock = threading.Lock()
        self._queue: OVHandle = None  # reused by run_batches: requests keep their buffers between calls
        self._queue_lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        if self.requests > 1 and n >= 2 * self.requests:
            # Spread one large batch over the streams.
            parts = np.array_split(x, self.requests)
            return np.concatenate(list(self.run_batches(parts)))
        with self._request_lock:
            self._request.infer({0: x}, share_inputs=True)
            out = self._request.get_output_tensor(0).data.copy()
        return out.reshape(n, -1)

    def run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        ov = import_openvino()
        owned = self._queue_lock.acquire(blocking=False)  # busy (another thread, or nested): a queue of its own
        try:
            if owned:
                if self._queue is None:
                    self._queue = ov.AsyncInferQueue(self.compiled, self.requests)
                queue = self._queue
            else:
                queue = ov.AsyncInferQueue(self.compiled, self.requests)
            yield from self._run(queue, batches)
        finally:
            if owned:
                self._queue_lock.release()

    def _run(self, queue: OVHandle, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        done: dict[int, np.ndarray | BaseException] = {}
        keep: dict[int, np.ndarray] = {}  # inputs shared with running requests stay alive until they finish
        cond = threading.Condition()

        def callback(request: OVHandle, job: int) -> None:
            try:
                result: np.ndarray | BaseException = request.get_output_tensor(0).data.copy()
            except BaseException as exc:  # noqa: BLE001  (handed to the consumer, never lost in OpenVINO's thread)
                result = exc
            with cond:
                done[job] = result
                cond.notify_all()

        queue.set_callback(callback)
        sent = taken = 0

        def take() -> np.ndarray:
            with cond:
                cond.wait_for(lambda: taken in done)
                result = done.pop(taken)
            n = len(keep.pop(taken))
            if isinstance(result, BaseException):
                raise BackendError(f"OpenVINO inference failed: {result}") from result
            return result.reshape(n, -1)

        try:
            for batch in batches:
                batch = np.ascontiguousarray(batch, dtype=np.float32)
                keep[sent] = batch
                queue.start_async({0: batch}, sent, share_inputs=True)  # waits while every request is busy
                sent += 1
                while True:
                    with cond:
                        ready = taken in done
                    if not ready:
                        break
                    out = take()
                    taken += 1
                    yield out
            while taken < sent:
                out = take()
                taken += 1
                yield out
        finally:
            queue.wait_all()

    def info(self) -> dict[str, object]:
        """JSON description for manifests and summaries."""
        out = {"backend": self.backend, "precision": self.precision, "device": self.device, "hint": self.hint,
               "requests": self.requests, "inference_precision": self.inference_precision, **self.extra}
        if self.source is not None:
            out["model_file"] = str(self.source)
        return out

    def __repr__(self) -> str:
        return f"OpenVINORunner({self.precision}, {self.hint}, {self.requests} requests)"


def split_batches(x: np.ndarray, size: int) -> Sequence[np.ndarray]:
    """``x`` cut into consecutive batches of at most ``size`` rows."""
    return [x[i:i + size] for i in range(0, len(x), size)]
