"""Measuring a precision against fp32, and the typed record of the choice.

``auto`` runs every precision the CPU supports on the calibration sample,
measures each one's agreement with fp32 (the mean share of each image's ``k``
nearest neighbours within the sample that stay the same, by exact cosine
search) and its speed, and keeps the fastest one whose agreement reaches the
threshold. fp32 always qualifies, so a threshold nobody meets keeps fp32.

The rule that keeps ``auto`` from ever failing or costing more than it saves:

- fewer readable sample images than ``k + 1`` (nothing to compare ``k``
  neighbours on): fp32, with the reason in the log and the choice;
- an extraction of fewer than :data:`AUTO_MIN_FACTOR` times the calibration
  sample (1,200 images with the default 300): fp32 without measuring.
  Measuring runs the sample through fp32 and through each lower precision
  (at least twice the sample's inference, plus conversions), and a lower
  precision saves at most about half of fp32's time (bf16 and int8 measured
  1.2x to 2.5x), so below four samples' worth of images measuring costs more
  than it can save (:meth:`Calibration.too_few_to_measure`);
- the figures are measured once per machine and model: they are cached by
  backend, model, the weights' SHA-256, the CPU (model and flags, or the
  ``SIMILAR_IMAGES_CPU`` override), ``k`` and the library versions, and the
  choice is made afresh from them (so another threshold measures nothing).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..._util.types import JSON
from .base import Runner

__all__ = [
    "AUTO_MIN_FACTOR",
    "CandidateFigures",
    "PrecisionChoice",
    "cosine_to_reference",
    "measure_runner",
    "pick_precision",
    "topk_agreement",
]


#: ``auto`` measures an extraction of at least this many times its calibration sample; fewer images run fp32.
AUTO_MIN_FACTOR = 4


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _topk(vectors: np.ndarray, k: int) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)  # an image is not its own neighbour
    k = min(k, len(vectors) - 1)
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return part


def topk_agreement(reference: np.ndarray, other: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's ``k`` nearest neighbours (cosine, within the set) that two embeddings share.

    Args:
        reference: ``(n, d)`` vectors of the reference (fp32) model.
        other: ``(n, d)`` vectors of the same items by the model measured.
        k: Neighbours per item (at most ``n - 1``).
    """
    if reference.shape != other.shape:
        raise ValueError(f"Shapes differ: {reference.shape} and {other.shape}")
    if len(reference) < 2:
        raise ValueError("Agreement needs at least 2 items")
    a = _topk(_normalise(reference), k)
    b = _topk(_normalise(other), k)
    kk = a.shape[1]
    shared = [len(np.intersect1d(x, y, assume_unique=True)) for x, y in zip(a, b)]
    return float(np.mean(shared) / kk)


def cosine_to_reference(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Mean and minimum cosine similarity between matching rows."""
    if reference.shape != other.shape:
        raise ValueError(f"Shapes differ: {reference.shape} and {other.shape}")
    cos = np.sum(_normalise(reference) * _normalise(other), axis=1)
    return float(cos.mean()), float(cos.min())


def measure_runner(runner: Runner, x: np.ndarray, batch_size: int) -> tuple[np.ndarray, float]:
    """Run ``x`` through ``runner.run_batches`` in batches; returns the outputs and images/s.

    The first batch is run once before the clock starts (first-call compilation and shape caches).
    """
    batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
    runner(batches[0])
    t0 = time.perf_counter()
    out = np.concatenate(list(runner.run_batches(batches)))
    seconds = time.perf_counter() - t0
    return out, len(x) / seconds if seconds > 0 else float("inf")


@dataclass
class CandidateFigures:
    """One precision as measured against fp32 on the calibration sample.

    Attributes:
        precision: ``fp32``, ``bf16`` or ``int8``.
        status: ``measured``, ``unsupported`` (the CPU lacks it) or ``failed``.
        note: Why it was not measured, or how it ran (e.g. ``emulated``).
        agreement: Top-k neighbour agreement with fp32.
        mean_cosine: Mean cosine similarity of its vectors to fp32's.
        min_cosine: Smallest cosine similarity of one vector to fp32's.
        images_per_second: Measured speed on the sample.
        speedup: Speed relative to fp32 in the same measurement.
        passed: Agreement reached the threshold.
    """

    precision: str
    status: str
    note: str = ""
    agreement: float | None = None
    mean_cosine: float | None = None
    min_cosine: float | None = None
    images_per_second: float | None = None
    speedup: float | None = None
    passed: bool = False


@dataclass
class PrecisionChoice:
    """Which precision runs, and why: goes into the manifest and the run summary.

    Attributes:
        backend: ``keras`` or ``openvino``.
        requested: What was asked for (``auto`` or a precision).
        precision: What runs.
        reason: One sentence for the log and the summary.
        threshold: Agreement a lower precision needed (``auto``).
        k: Neighbours compared by the agreement.
        sample_size: Images of the calibration sample measured.
        candidates: Figures of every precision considered.
        cpu: The CPU's model and relevant flags.
        measured: Figures were measured (``auto``), not only decided.
        from_cache: The figures were read from the cache rather than measured in this run.
        seconds: What measuring the figures took (in this run, or in the run that cached them).
    """

    backend: str
    requested: str
    precision: str
    reason: str
    threshold: float | None = None
    k: int | None = None
    sample_size: int | None = None
    candidates: list[CandidateFigures] = field(default_factory=list)
    cpu: dict[str, object] = field(default_factory=dict)
    measured: bool = False
    from_cache: bool = False
    seconds: float | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: JSON) -> PrecisionChoice:
        d = dict(data)
        d["candidates"] = [CandidateFigures(**c) for c in d.get("candidates", [])]
        return cls(**d)

    def figures(self, precision: str) -> CandidateFigures | None:
        """The measured figures of one precision, if any."""
        return next((c for c in self.candidates if c.precision == precision), None)

    def summary(self) -> str:
        """One line: the choice and the figures behind it."""
        parts = []
        for c in self.candidates:
            if c.status == "measured":
                speed = f", {c.speedup:.2f}x" if c.speedup is not None else ""
                parts.append(f"{c.precision}: agreement {c.agreement:.3f}, cosine {c.mean_cosine:.5f}{speed}")
            else:
                parts.append(f"{c.precision}: {c.status}" + (f" ({c.note})" if c.note else ""))
        tail = f" [{'; '.join(parts)}]" if parts else ""
        return f"{self.backend} {self.precision} ({self.reason}){tail}"

    def cost(self) -> str:
        """What choosing cost, for run summaries: ``measured in 12.3 s``, ``read from the cache (measured in
        12.3 s earlier)`` or ``not measured``."""
        if not self.measured:
            return "not measured"
        took = f"{self.seconds:.1f} s" if self.seconds is not None else "an unknown time"
        if self.from_cache:
            return f"read from the cache (measured in {took} earlier)"
        return f"measured in {took}"


def pick_precision(candidates: list[CandidateFigures], threshold: float) -> tuple[str, str]:
    """The fastest measured precision whose agreement reaches ``threshold`` (fp32 always does).

    Returns:
        The precision and the reason.
    """
    ok = [c for c in candidates if c.status == "measured" and
          (c.precision == "fp32" or (c.agreement is not None and c.agreement >= threshold))]
    for c in candidates:
        c.passed = c in ok
    if not ok:
        return "fp32", "nothing was measured"
    best = max(ok, key=lambda c: c.images_per_second or 0.0)
    if best.precision == "fp32":
        lower = [c for c in candidates if c.status == "measured" and c.precision != "fp32"]
        if not lower:
            return "fp32", "no lower precision runs natively here"
        failed = [c for c in lower if not c.passed]
        if failed:
            why = ", ".join(f"{c.precision} agreement {c.agreement:.3f}" for c in failed)
            return "fp32", f"no lower precision reached agreement {threshold:g} ({why})"
        return "fp32", "no lower precision was faster"
    return best.precision, (f"fastest with agreement >= {threshold:g}: {best.agreement:.3f}, "
                            f"{best.speedup or 0:.2f}x fp32")


