"""ONNX Runtime for sentence-transformers encoders (a transformer with mean pooling, e.g. all-MiniLM-L6-v2).

The transformer and its mean pooling are exported once with ``torch.onnx.export``
into the :class:`~.cache.ModelCache` (keyed by the weights' SHA-256, the export
settings and the torch/transformers/onnx versions); later loads need only
onnxruntime and the tokenizer. The texts are tokenized by the model folder's
own tokenizer with sentence-transformers' settings (truncation at
``max_seq_length`` tokens, padding to the longest text of the batch), so the
vectors match the torch encoder's (cosine above 0.9999 on tweets).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._util import io as _io
from ...errors import BackendError, BackendUnavailableError, ConfigError
from .cache import ModelCache, file_sha256, package_versions

__all__ = ["ONNX_INSTALL_COMMAND", "OPSET", "import_onnxruntime", "load_onnx_sentence_encoder"]

logger = logging.getLogger(__name__)

#: The command that installs the onnx text backend (onnx itself is needed once, to export the model).
ONNX_INSTALL_COMMAND = "pip install onnxruntime onnx"
#: ONNX opset of the exported graph (part of the cache key).
OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def import_onnxruntime() -> Any:
    """Import onnxruntime, or raise :class:`BackendUnavailableError` naming the install command."""
    try:
        import onnxruntime  # noqa: PLC0415  (heavy: ONNX Runtime)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"The onnx text backend needs ONNX Runtime, which is not installed ({exc}); `{ONNX_INSTALL_COMMAND}` "
            "installs it.", hint="Or use backend='torch'.",
            setting="backend", value="onnx", expected="torch",
        ) from exc
    return onnxruntime


def _read_json(path: Path) -> Any:
    try:
        return _io.read_json(path)
    except (OSError, ValueError):
        return None


def _check_layout(folder: Path) -> int:
    """Check that ``folder`` is a transformer + mean pooling sentence-transformers model; returns max_seq_length.

    Raises:
        ConfigError: If it holds another architecture (the onnx backend reproduces mean pooling only).
    """
    modules = _read_json(folder / "modules.json") or []
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules if isinstance(m, dict)]
    pooling: dict[str, object] = {}
    for m in modules:
        if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling"):
            pooling = _read_json(folder / str(m.get("path", "")) / "config.json") or {}
    modes = [k for k, v in pooling.items() if k.startswith("pooling_mode") and v]
    mean_pooled = kinds[:2] == ["Transformer", "Pooling"] and modes == ["pooling_mode_mean_tokens"]
    if not mean_pooled or set(kinds[2:]) - {"Normalize"}:
        raise ConfigError(
            f"The onnx text backend runs sentence-transformers models made of a transformer and mean pooling; "
            f"{folder} holds {kinds or 'no modules.json'} (pooling {modes or 'unknown'})", hint="Use backend='torch'.",
            path=folder, setting="backend", value="onnx", expected="torch")
    config = _read_json(folder / "sentence_bert_config.json") or {}
    return int(config.get("max_seq_length") or 512)


def _weights_file(folder: Path) -> Path:
    for name in _WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"{folder} holds no {' or '.join(_WEIGHT_FILES)}: it is not a local transformer model folder")


def _export(folder: Path, out: Path) -> dict[str, object]:
    """Export the transformer with mean pooling to ``out/model.onnx``."""
    try:
        import onnx  # noqa: PLC0415, F401  (heavy: needed by torch.onnx.export)
        import torch  # noqa: PLC0415  (heavy: torch)
        from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415  (heavy: torch)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"Exporting the text encoder to ONNX needs torch, transformers and onnx ({exc}); "
            f"`{ONNX_INSTALL_COMMAND} torch==2.13.0 transformers` installs them.", hint="Or use backend='torch'.",
            setting="backend", value="onnx", expected="torch",
        ) from exc

    class MeanPooled(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModel.from_pretrained(str(folder)).eval()
    sample = tokenizer(["a sample text", "another, somewhat longer sample text"], padding=True, return_tensors="pt")
    args = tuple(sample[k] if k in sample else torch.zeros_like(sample["input_ids"]) for k in _INPUTS)
    axes = {k: {0: "batch", 1: "tokens"} for k in _INPUTS} | {"embedding": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(MeanPooled(model), args, str(out / "model.onnx"), input_names=list(_INPUTS),
                          output_names=["embedding"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return {"exported_with": package_versions("torch", "transformers", "onnx")}


def load_onnx_sentence_encoder(folder: str | os.PathLike[str], *, name: str,
                               cache: ModelCache | None = None) -> Callable[[Sequence[str]], np.ndarray]:
    """An ``encode(batch) -> (n, dim)`` function running the model in ``folder`` on ONNX Runtime.

    The function has the attributes ``count_tokens`` (tokens per text, special tokens included),
    ``cache_entry`` (the cache folder of the ONNX model) and ``from_cache`` (whether it was there already).

    Args:
        folder: A local sentence-transformers model folder (transformer + mean pooling).
        name: The encoder's name (labels the cache entry).
        cache: Where the exported model is kept (default: the user's model cache).

    Raises:
        BackendUnavailableError: If onnxruntime (or, for the first export, torch/transformers/onnx) is missing.
        ConfigError: If the folder holds another architecture.
        BackendError: If the export or the ONNX Runtime session fails.
    """
    ort = import_onnxruntime()
    folder = Path(folder)
    max_length = _check_layout(folder)
    weights = _weights_file(folder)
    cache = cache or ModelCache()
    fields = {"model": f"{name}-onnx", "precision": "fp32", "weights": file_sha256(weights), "opset": OPSET,
              "pooling": "mean", "versions": package_versions("torch", "transformers", "onnx")}
    try:
        entry, cached = cache.get_or_build(fields, lambda tmp: _export(folder, tmp))
    except (BackendUnavailableError, ConfigError):
        raise
    except Exception as exc:  # the exporter raises many types
        raise BackendError(f"Could not export {folder} to ONNX ({exc.__class__.__name__}: {exc})",
                           hint="Use backend='torch'.", path=folder, setting="backend", value="onnx",
                           expected="torch") from exc
    try:
        from transformers import AutoTokenizer  # noqa: PLC0415  (heavy: transformers)

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(entry / "model.onnx"), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # a broken model file or tokenizer: many types
        raise BackendError(f"Could not load the ONNX model {entry} ({exc.__class__.__name__}: {exc}); "
                           "deleting that folder exports it again", hint="Or use backend='torch'.", path=entry,
                           setting="backend", value="onnx", expected="torch") from exc
    wanted = [i.name for i in session.get_inputs()]

    def encode(batch: Sequence[str]) -> np.ndarray:
        tokens = tokenizer(list(batch), padding=True, truncation=True, max_length=max_length, return_tensors="np")
        feed = {k: np.asarray(tokens[k], dtype=np.int64) if k in tokens
                else np.zeros_like(tokens["input_ids"], dtype=np.int64) for k in wanted}
        return np.asarray(session.run(None, feed)[0], dtype=np.float32)

    def count_tokens(batch: Sequence[str]) -> list[int]:
        ids = tokenizer(list(batch), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    encode.count_tokens = count_tokens  # type: ignore[attr-defined]
    encode.cache_entry = entry  # type: ignore[attr-defined]
    encode.from_cache = cached  # type: ignore[attr-defined]
    return encode
