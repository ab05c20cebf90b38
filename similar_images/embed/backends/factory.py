"""``make_runner``: a backend and precision for a model, converted, quantized and cached as needed."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..._util.types import KerasModel, OVHandle
from ...errors import BackendError
from ..image_models import ModelSpec, get_model_spec, resolve_weights
from .auto import (
    CandidateFigures,
    PrecisionChoice,
    cosine_to_reference,
    measure_runner,
    pick_precision,
    topk_agreement,
)
from .base import PRECISIONS, Runner, check_inference, cpu_capabilities
from .cache import ModelCache, file_sha256, package_versions
from .calibration import Calibration
from .keras import KerasRunner
from .openvino import (
    OpenVINORunner,
    convert_keras_model,
    import_nncf,
    import_openvino,
    openvino_capabilities,
    openvino_core,
    quantize_int8,
    save_ov_model,
)

__all__ = ["RunnerFactory", "make_runner", "weights_identity"]

logger = logging.getLogger(__name__)


def weights_identity(weights: str | None, seed: int) -> dict[str, object]:
    """What the weights are, for cache keys: a file's SHA-256, ``imagenet``, or random with its seed."""
    if weights is None:
        return {"random_seed": seed}
    if weights == "imagenet":
        return {"imagenet": True}
    return {"file": Path(weights).name, "sha256": file_sha256(weights)}


class RunnerFactory:
    """Builds runners of one model and weights, sharing the Keras model and the cached conversions.

    Args:
        spec: The model.
        weights: ``"imagenet"``, ``"random"``/``None`` or a weights file path.
        seed: Seed of random weights.
        cache_dir: The model cache folder (default: ``$SIMILAR_IMAGES_CACHE`` or ``~/.cache/similar-images``).
        use_cache: Keep converted and quantized models on disk (``False``: convert in memory every time).
        hint: OpenVINO performance hint, ``throughput`` (asynchronous requests) or ``latency``.
        requests: OpenVINO requests in flight (default: the device's optimum).
        emulate: Run bf16 in Keras even on a CPU without native bf16 (slow; for comparisons).
    """

    def __init__(self, spec: ModelSpec | str, weights: str | os.PathLike[str] | None, *, seed: int = 0,
                 cache_dir: str | os.PathLike[str] | None = None, use_cache: bool = True,
                 hint: str = "throughput", requests: int | None = None, emulate: bool = False) -> None:
        self.spec = get_model_spec(spec) if isinstance(spec, str) else spec
        self.weights = resolve_weights(weights)
        self.seed = seed
        self.cache = ModelCache(cache_dir)
        self.use_cache = use_cache
        self.hint = hint
        self.requests = requests
        self.emulate = emulate
        self._keras: dict[str, KerasRunner] = {}
        self._ov_fp32: OVHandle = None
        self.cache_hits: dict[str, bool] = {}

    # ---- sources ----

    def keras_runner(self, precision: str = "fp32") -> KerasRunner:
        """The Keras runner of one precision (one per factory; its model is built on first use)."""
        if precision not in self._keras:
            self._keras[precision] = KerasRunner(self.spec, self.weights, seed=self.seed, precision=precision)
        return self._keras[precision]

    def keras_model(self, precision: str = "fp32") -> KerasModel:
        """The Keras model of one precision (built on first use)."""
        return self.keras_runner(precision).model

    def _fields(self, precision: str, **extra: object) -> dict[str, object]:
        return {"kind": "openvino-ir", "model": self.spec.name, "spec": self.spec.info(),
                "weights": weights_identity(self.weights, self.seed), "precision": precision,
                "versions": package_versions("openvino", "nncf" if precision == "int8" else "openvino", "keras",
                                             "tensorflow"),
                **extra}

    def ov_fp32(self) -> OVHandle:
        """The float OpenVINO model: a cached IR path, or an in-memory model."""

        if self._ov_fp32 is not None:
            return self._ov_fp32
        if not self.use_cache:
            self._ov_fp32 = convert_keras_model(self.keras_model("fp32"), self.spec.input_size)
            return self._ov_fp32

        def build(folder: Path) -> dict[str, object]:
            save_ov_model(convert_keras_model(self.keras_model("fp32"), self.spec.input_size), folder / "model.xml")
            return {}

        entry, hit = self.cache.get_or_build(self._fields("fp32"), build)
        self.cache_hits["fp32"] = hit
        self._ov_fp32 = entry / "model.xml"
        return self._ov_fp32

    def ov_int8(self, calibration: Calibration) -> OVHandle:
        """The int8 OpenVINO model quantized on ``calibration``'s sample (cached)."""

        import_nncf()  # fail early, with the install command, before any work
        arrays = calibration.arrays(self.spec.input_size)
        x = self.spec.preprocess(arrays)

        def quantized() -> OVHandle:
            fp32 = self.ov_fp32()
            model = openvino_core().read_model(str(fp32)) if isinstance(fp32, Path) else fp32
            return quantize_int8(model, x, calibration.quantization)

        if not self.use_cache:
            return quantized()
        fields = self._fields("int8", calibration={"digest": Calibration.digest(arrays), "images": len(arrays),
                                                   **calibration.quantization_key()})

        def build(folder: Path) -> dict[str, object]:
            save_ov_model(quantized(), folder / "model.xml")
            return {}

        entry, hit = self.cache.get_or_build(fields, build)
        self.cache_hits["int8"] = hit
        return entry / "model.xml"

    # ---- support ----

    def supported(self, backend: str, precision: str) -> tuple[bool, str]:
        """Whether ``precision`` runs natively on this machine with ``backend``, and a note."""
        cpu = cpu_capabilities()
        if precision == "fp32":
            return True, ""
        if backend == "keras":
            if precision == "int8":
                return False, "the keras backend has no int8; use openvino"
            if cpu.bf16:
                return True, ""
            if self.emulate:
                return True, "emulated: this CPU has no native bf16 (avx512_bf16 / amx_bf16)"
            return False, f"this CPU ({cpu.model}) has no native bf16 (avx512_bf16 / amx_bf16)"

        caps = openvino_capabilities()
        if precision == "bf16":
            if "BF16" in caps:
                return True, ""
            return False, f"OpenVINO's CPU plugin has no bf16 on this CPU ({cpu.model}; capabilities {caps})"
        if "INT8" not in caps:
            return False, f"OpenVINO's CPU plugin has no int8 here (capabilities {caps})"
        if not cpu.vnni:
            return True, "no VNNI: int8 runs on the slower AVX2 path"
        return True, ""

    # ---- runners ----

    def runner(self, backend: str, precision: str, calibration: Calibration | None = None,
               info: dict[str, object] | None = None) -> Runner:
        """A runner of exactly this backend and precision (no fallback, no measurement)."""
        if backend == "keras":
            runner = self.keras_runner(precision)
            runner.extra.update(info or {})
            return runner

        if precision == "int8":
            if calibration is None:
                raise BackendError("int8 needs calibration images: pass calibration=Calibration(your_images) "
                                   "(at least 300 recommended)")
            model = self.ov_int8(calibration)
        else:
            model = self.ov_fp32()
        return OpenVINORunner(model, precision, hint=self.hint, requests=self.requests, info=info)


def make_runner(
    spec: ModelSpec | str,
    weights: str | os.PathLike[str] | None,
    backend: str = "keras",
    precision: str = "fp32",
    *,
    calibration: Calibration | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    seed: int = 0,
    hint: str = "throughput",
    requests: int | None = None,
    batch_size: int = 32,
    emulate: bool = False,
    factory: RunnerFactory | None = None,
) -> Runner:
    """A runner for ``spec`` with the given backend and precision.

    ``precision="auto"`` measures every precision the CPU runs natively on the
    calibration sample and keeps the fastest whose top-k neighbour agreement
    with fp32 reaches ``calibration.threshold`` (the measured choice is cached
    with the models). An explicit precision the CPU lacks falls back to fp32
    with a log line. The returned runner has a ``choice`` attribute, a
    :class:`~.auto.PrecisionChoice`, and an ``info()`` method for manifests.

    Args:
        spec: The model (name or spec).
        weights: ``"imagenet"``, ``"random"``/``None``, or a weights file path.
        backend: ``"keras"`` or ``"openvino"``.
        precision: ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"auto"``.
        calibration: A sample of the user's images (needed by ``int8`` and ``auto``).
        cache_dir: Model cache folder (default ``$SIMILAR_IMAGES_CACHE`` or ``~/.cache/similar-images``).
        use_cache: Keep converted and quantized models (and ``auto``'s choice) on disk.
        seed: Seed of random weights.
        hint: OpenVINO ``throughput`` (asynchronous requests) or ``latency``.
        requests: OpenVINO requests in flight (default: the device's optimum).
        batch_size: Batch size used to measure speed for ``auto``.
        emulate: Allow Keras bf16 on a CPU without native bf16 (slow).
        factory: Reuse the Keras model and conversions of an earlier call (same model and weights).

    Raises:
        BackendError: Unknown backend or precision, or int8/auto without calibration images.
        BackendUnavailableError: OpenVINO or NNCF is not installed (the message names the pip command).
    """
    backend, precision = check_inference(backend, precision)
    if backend == "openvino":

        import_openvino()
    if factory is None:
        factory = RunnerFactory(spec, weights, seed=seed, cache_dir=cache_dir, use_cache=use_cache, hint=hint,
                                requests=requests, emulate=emulate)
    cpu = cpu_capabilities()
    if precision != "auto":
        ok, note = factory.supported(backend, precision)
        if ok:
            reason = "requested" + (f" ({note})" if note else "")
            if note:
                logger.info("%s %s: %s", backend, precision, note)
            chosen = precision
        else:
            logger.warning("%s %s is not available: %s; falling back to fp32", backend, precision, note)
            reason, chosen = f"{precision} requested, fell back to fp32: {note}", "fp32"
        choice = PrecisionChoice(backend=backend, requested=precision, precision=chosen, reason=reason,
                                 cpu=cpu.to_dict())
        runner = factory.runner(backend, chosen, calibration)
    else:
        if calibration is None:
            raise BackendError("precision auto measures agreement on a sample of your images: pass "
                               "calibration=Calibration(images), or choose a precision (fp32, bf16, int8)")
        runner, choice = _auto(factory, backend, calibration, batch_size)
    runner.choice = choice  # type: ignore[attr-defined]
    runner.extra["choice"] = choice.to_dict()  # type: ignore[attr-defined]
    if factory.cache_hits:
        runner.extra["cache"] = {"root": str(factory.cache.root), "hits": dict(factory.cache_hits)}  # type: ignore[attr-defined]
    logger.info("Inference: %s", choice.summary())
    return runner


def _fp32_unmeasured(factory: RunnerFactory, backend: str, calibration: Calibration, reason: str,
                     figures: list[CandidateFigures], sample_size: int | None = None
                     ) -> tuple[Runner, PrecisionChoice]:
    """``auto``'s fp32 without a measurement, logged in one line with its reason."""
    logger.info("precision auto: %s fp32, not measured: %s", backend, reason)
    choice = PrecisionChoice(backend=backend, requested="auto", precision="fp32", reason=reason,
                             threshold=calibration.threshold, k=calibration.k, sample_size=sample_size,
                             candidates=figures, cpu=cpu_capabilities().to_dict())
    return factory.runner(backend, "fp32", calibration), choice


def _auto(factory: RunnerFactory, backend: str, calibration: Calibration, batch_size: int
          ) -> tuple[Runner, PrecisionChoice]:
    """``auto`` by the rule of :mod:`.auto`: fp32 at once where nothing else runs natively or the images are too
    few; else figures measured once per machine and model (cached), and the fastest that agrees."""
    cpu = cpu_capabilities()
    candidates = [p for p in PRECISIONS if not (backend == "keras" and p == "int8")]
    support = {p: factory.supported(backend, p) for p in candidates}
    unsupported = [CandidateFigures(p, "unsupported", note) for p, (ok, note) in support.items() if not ok]
    if not any(ok for p, (ok, _note) in support.items() if p != "fp32"):
        # Nothing to compare fp32 with: no sample to decode, no model to run twice.
        return _fp32_unmeasured(factory, backend, calibration, "no lower precision runs natively here", unsupported)
    too_few = calibration.too_few_to_measure()
    if too_few is not None:
        return _fp32_unmeasured(factory, backend, calibration, too_few, unsupported)
    arrays = calibration.arrays(factory.spec.input_size)
    if len(arrays) < calibration.k + 1:
        return _fp32_unmeasured(
            factory, backend, calibration, f"{len(arrays)} readable calibration images, fewer than the "
            f"{calibration.k + 1} that comparing {calibration.k} neighbours needs", unsupported, len(arrays))
    # Measured once per machine and model (not per sample); the choice is made afresh from the figures.
    record_fields = {
        "kind": "precision-figures", "backend": backend, "hint": factory.hint, "model": factory.spec.name,
        "weights": weights_identity(factory.weights, factory.seed), "k": calibration.k,
        "quantization": calibration.quantization_key(), "cpu": cpu.to_dict(), "emulate": factory.emulate,
        "batch_size": batch_size, "versions": package_versions("openvino", "nncf", "keras", "tensorflow"),
    }
    saved = factory.cache.load_record("measurements", record_fields) if factory.use_cache else None
    runners: dict[str, Runner] = {}
    if saved is not None:
        figures = [CandidateFigures(**c) for c in saved["candidates"]]
        seconds = saved.get("seconds")
        logger.info("auto: using the figures measured earlier on this machine (%s)",
                    factory.cache.record_path("measurements", record_fields))
    else:
        t0 = time.perf_counter()
        figures = _measure(factory, backend, support, calibration, factory.spec.preprocess(arrays), batch_size,
                           runners)
        seconds = round(time.perf_counter() - t0, 2)
        if factory.use_cache:
            factory.cache.save_record("measurements", record_fields,
                                      {"candidates": [asdict(c) for c in figures], "sample_size": len(arrays),
                                       "seconds": seconds})
    chosen, reason = pick_precision(figures, calibration.threshold)
    choice = PrecisionChoice(backend=backend, requested="auto", precision=chosen, reason=reason,
                             threshold=calibration.threshold, k=calibration.k, sample_size=len(arrays),
                             candidates=figures, cpu=cpu.to_dict(), measured=True, from_cache=saved is not None,
                             seconds=seconds)
    runner = runners.get(chosen) or factory.runner(backend, chosen, calibration)
    return runner, choice


def _measure(factory: RunnerFactory, backend: str, support: dict[str, tuple[bool, str]], calibration: Calibration,
             x: np.ndarray, batch_size: int, runners: dict[str, Runner]) -> list[CandidateFigures]:
    """Run every supported candidate (``support``: precision -> whether it runs here, and a note, fp32 first) on
    the sample; figures against fp32."""
    figures: list[CandidateFigures] = []
    reference: np.ndarray | None = None
    ref_speed = 0.0
    for p, (ok, note) in support.items():
        if not ok:
            logger.info("auto: skipping %s %s (%s)", backend, p, note)
            figures.append(CandidateFigures(p, "unsupported", note))
            continue
        try:
            runner = factory.runner(backend, p, calibration)
            out, speed = measure_runner(runner, x, batch_size)
        except Exception as exc:  # a candidate that fails to build is reported, never fatal
            if p == "fp32":
                raise
            logger.warning("auto: %s %s failed (%s: %s)", backend, p, exc.__class__.__name__, exc)
            figures.append(CandidateFigures(p, "failed", f"{exc.__class__.__name__}: {exc}"))
            continue
        runners[p] = runner
        if reference is None:
            reference, ref_speed = out, speed
        mean_cos, min_cos = cosine_to_reference(reference, out)
        figures.append(CandidateFigures(
            p, "measured", note, agreement=topk_agreement(reference, out, calibration.k), mean_cosine=mean_cos,
            min_cosine=min_cos, images_per_second=speed, speedup=speed / ref_speed if ref_speed else None))
        logger.info("auto: %s %s agreement %.4f, cosine %.5f, %.1f images/s", backend, p, figures[-1].agreement,
                    mean_cos, speed)
    return figures
