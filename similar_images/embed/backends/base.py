"""The :class:`Runner` seam, the names of backends and precisions, and CPU capabilities."""

from __future__ import annotations

import functools
import logging
import os
import platform
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ...errors import ConfigError

__all__ = [
    "BACKENDS",
    "CPU_ENV",
    "PRECISIONS",
    "PRECISION_CHOICES",
    "CpuCapabilities",
    "Runner",
    "check_backend",
    "check_inference",
    "check_precision",
    "cpu_capabilities",
    "parse_cpu_override",
    "parse_cpuinfo",
]

logger = logging.getLogger(__name__)

#: Inference runtimes.
BACKENDS = ("keras", "openvino")
#: Numeric precisions, from the most to the least exact.
PRECISIONS = ("fp32", "bf16", "int8")
#: What a user may ask for: a precision, or ``auto`` (measured, see :mod:`.auto`).
PRECISION_CHOICES = (*PRECISIONS, "auto")


@runtime_checkable
class Runner(Protocol):
    """A compiled network: preprocessed float32 NHWC batches in, raw ``(n, dim)`` features out.

    Attributes:
        backend: ``"keras"`` or ``"openvino"``.
        precision: The precision it actually runs (``"fp32"``, ``"bf16"`` or ``"int8"``),
            after any fallback on a CPU that lacks the requested one.
    """

    backend: str
    precision: str

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run one batch; returns float32 ``(n, dim)`` features (not normalised)."""
        ...

    def run_batches(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Run a stream of batches, yielding their outputs in order; several may be in flight at once."""
        ...


def check_backend(backend: str, choices: Sequence[str] = BACKENDS, what: str = "backend") -> str:
    """Validate a backend name (lower-cased).

    Args:
        backend: The name given.
        choices: The valid names (default: the image backends, :data:`BACKENDS`).
        what: What the name is, for the message (e.g. ``"text backend"``).

    Raises:
        ConfigError: If it is not one of ``choices``.
    """
    name = str(backend).lower()
    if name not in choices:
        raise ConfigError(f"Unknown {what} {backend!r}; choose one of {', '.join(choices)}")
    return name


def check_precision(precision: str, *, allow_auto: bool = True) -> str:
    """Validate a precision name (``fp32``, ``bf16``, ``int8`` or, if allowed, ``auto``).

    Raises:
        ConfigError: If it is not a known precision.
    """
    name = str(precision).lower()
    aliases = {"f32": "fp32", "float32": "fp32", "bfloat16": "bf16", "u8": "int8", "i8": "int8"}
    name = aliases.get(name, name)
    allowed = PRECISION_CHOICES if allow_auto else PRECISIONS
    if name not in allowed:
        raise ConfigError(f"Unknown precision {precision!r}; choose one of {', '.join(allowed)}")
    return name


def check_inference(backend: str, precision: str) -> tuple[str, str]:
    """Validate an image model's backend and precision together (:func:`check_backend`, :func:`check_precision`).

    Raises:
        ConfigError: For an unknown name, or int8 on the keras backend.
    """
    backend, precision = check_backend(backend), check_precision(precision)
    if backend == "keras" and precision == "int8":
        raise ConfigError("The keras backend runs fp32 or bf16; for int8 use backend 'openvino' "
                          "(pip install openvino nncf)")
    return backend, precision


# /proc/cpuinfo flags that give native bf16 and int8 dot products (x86 names, then Arm names).
_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "i8mm", "asimddp"})


@dataclass(frozen=True)
class CpuCapabilities:
    """What the CPU runs natively.

    Attributes:
        model: The CPU model name.
        bf16: Native bfloat16 arithmetic (AVX512_BF16, AMX-BF16, Arm BF16).
        vnni: Native int8 dot products (AVX512_VNNI, AVX-VNNI, AMX-INT8, Arm dot product).
        flags: The relevant flags found.
        source: Where the answer comes from (``/proc/cpuinfo`` or ``unknown``).
    """

    model: str
    bf16: bool
    vnni: bool
    flags: tuple[str, ...]
    source: str

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        return d


def parse_cpuinfo(text: str) -> CpuCapabilities:
    """Read the capabilities from the text of ``/proc/cpuinfo``."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    relevant = tuple(sorted(flags & (_BF16_FLAGS | _VNNI_FLAGS)))
    return CpuCapabilities(model=model or platform.processor() or platform.machine(),
                           bf16=bool(flags & _BF16_FLAGS), vnni=bool(flags & _VNNI_FLAGS), flags=relevant,
                           source="/proc/cpuinfo")


#: Environment variable that overrides the detected CPU capabilities (see :func:`cpu_capabilities`).
CPU_ENV = "SIMILAR_IMAGES_CPU"
_OVERRIDE_WORDS = {"bf16": "bf16", "vnni": "vnni", "avx2": "", "none": "", "": ""}


def parse_cpu_override(value: str, detected: CpuCapabilities) -> CpuCapabilities:
    """The capabilities that ``$SIMILAR_IMAGES_CPU`` claims: a comma list of ``bf16`` and ``vnni``, or ``avx2``
    / ``none`` for neither.

    The CPU model stays the detected one; :attr:`CpuCapabilities.source` names the variable.

    Raises:
        ConfigError: For a word other than ``bf16``, ``vnni``, ``avx2`` or ``none``.
    """
    words = [w.strip().lower() for w in value.split(",")]
    unknown = [w for w in words if w not in _OVERRIDE_WORDS]
    if unknown:
        raise ConfigError(f"{CPU_ENV}={value!r}: unknown capability {unknown[0]!r}; use a comma list of bf16 and "
                          "vnni, or avx2 (or none) for neither, e.g. SIMILAR_IMAGES_CPU=bf16,vnni")
    claimed = {_OVERRIDE_WORDS[w] for w in words} - {""}
    return CpuCapabilities(model=detected.model, bf16="bf16" in claimed, vnni="vnni" in claimed,
                           flags=tuple(sorted(claimed)), source=f"{CPU_ENV}={value}")


@functools.lru_cache(maxsize=1)
def _detected_capabilities() -> CpuCapabilities:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return CpuCapabilities(model=platform.processor() or platform.machine(), bf16=False, vnni=False, flags=(),
                               source="unknown")
    return parse_cpuinfo(text)


def cpu_capabilities() -> CpuCapabilities:
    """This machine's CPU capabilities, or what ``$SIMILAR_IMAGES_CPU`` says they are.

    Detected from ``/proc/cpuinfo`` (unknown elsewhere: then nothing is assumed). ``SIMILAR_IMAGES_CPU=bf16,vnni``
    claims native bf16 and VNNI, ``SIMILAR_IMAGES_CPU=avx2`` (or ``none``) neither: every decision that depends
    on the CPU (``auto``'s measurement, the fallbacks, OpenVINO's capabilities as this package reads them, the
    cache keys) follows the override, so both paths can be exercised on any machine. A claimed bf16 the CPU
    lacks still runs, emulated (Keras) or in fp32 (OpenVINO), only slower.

    Raises:
        ConfigError: If ``$SIMILAR_IMAGES_CPU`` holds an unknown word.
    """
    detected = _detected_capabilities()
    value = os.environ.get(CPU_ENV, "").strip()
    return parse_cpu_override(value, detected) if value else detected
