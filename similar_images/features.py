"""Feature extraction: images in, L2-normalised vectors out, streamed to disk.

:func:`extract_features` decodes images in a thread pool while the model runs
on the previous batch, writes the vectors in fixed-size shards, and records
every file it could not read. Each shard is committed atomically, so a run
killed at any moment resumes where it stopped when the same command runs
again; shard boundaries are fixed by position in the (saved) plan, so the
result equals an uninterrupted run's.
"""

from __future__ import annotations

import collections
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import _io
from ._resume import load_or_create_plan, pending_pieces, start_partial
from .errors import ImageLoadError
from .images import DEFAULT_MAX_PIXELS, ImageSource, find_images, prepare_array, read_file_list
from .models import DEFAULT_MODEL, ModelSpec, get_model_spec, resolve_weights, weights_label

__all__ = ["ExtractConfig", "ExtractSummary", "ImageEmbedder", "extract_features", "collect_inputs"]

logger = logging.getLogger(__name__)


@dataclass
class ExtractConfig:
    """Settings of the extraction stage.

    Attributes:
        model: Name of a registered :class:`~similar_images.models.ModelSpec`.
        weights: ``"imagenet"`` (Keras download), ``"random"``, or a weights file path.
        batch_size: Images per model call.
        workers: Decoding threads (default: number of CPUs, at most 8).
        shard_size: Images per committed shard (the most a crash can lose).
        max_pixels: Larger images are skipped (decompression-bomb guard).
        seed: Seed for randomly initialised weights, so runs are reproducible.
        verbose: Show a progress bar.
    """

    model: str = DEFAULT_MODEL
    weights: str | None = "imagenet"
    batch_size: int = 32
    workers: int | None = None
    shard_size: int = 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {self.shard_size}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")


@dataclass
class ExtractSummary:
    """What an extraction run did."""

    total: int
    extracted: int
    failed: int
    resumed_from: int
    seconds: float
    images_per_second: float
    failures: list[tuple[str, str]] = field(default_factory=list)


class ImageEmbedder:
    """Turns images into L2-normalised feature vectors with a Keras model.

    Args:
        model: A model name or :class:`ModelSpec`.
        weights: ``"imagenet"``, ``"random"``/``None``, or a weights file path.
        batch_size: Images per model call in :meth:`embed`.
        seed: Seed used when the weights are random.
        max_pixels: Decompression-bomb guard for decoded images.
    """

    def __init__(
        self,
        model: str | ModelSpec = DEFAULT_MODEL,
        weights: str | os.PathLike[str] | None = "imagenet",
        *,
        batch_size: int = 32,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.spec = get_model_spec(model) if isinstance(model, str) else model
        self.weights = resolve_weights(weights)
        self.batch_size = batch_size
        self.seed = seed
        self.max_pixels = max_pixels
        self._model: Any = None

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def model(self) -> Any:
        """The Keras model, built on first use."""
        if self._model is None:
            t0 = time.perf_counter()
            if self.weights is None:
                import keras  # noqa: PLC0415

                keras.utils.set_random_seed(self.seed)
            self._model = self.spec.builder(self.weights)
            logger.info("Built %s (%s weights) in %.1f s", self.spec.name, weights_label(self.weights),
                        time.perf_counter() - t0)
        return self._model

    def info(self) -> dict[str, Any]:
        """Model description for manifests."""
        return {**self.spec.info(), "weights": weights_label(self.weights), "seed": self.seed}

    def prepare(self, source: ImageSource) -> np.ndarray:
        """Decode and resize one image to the model's input size (uint8 HxWx3)."""
        return prepare_array(source, self.spec.input_size, max_pixels=self.max_pixels)

    def embed_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a uint8 ``(n, h, w, 3)`` batch; returns normalised float32 ``(n, dim)``."""
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"Expected a batch of shape (n, h, w, 3), got {batch.shape}")
        out = np.asarray(self.model.predict_on_batch(self.spec.preprocess(batch)), dtype=np.float32)
        out = out.reshape(len(batch), -1)
        if out.shape[1] != self.spec.dim:
            raise ValueError(f"Model {self.spec.name} produced {out.shape[1]}-d vectors, expected {self.spec.dim}")
        return l2_normalize(out)

    def embed(self, sources: Sequence[ImageSource]) -> np.ndarray:
        """Decode and embed images (raises :class:`ImageLoadError` on the first bad one)."""
        arrays = [self.prepare(s) for s in sources]
        if not arrays:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [self.embed_arrays(np.stack(arrays[i:i + self.batch_size]))
                  for i in range(0, len(arrays), self.batch_size)]
        return np.concatenate(chunks)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation (zero rows stay zero), float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return x / norms


def collect_inputs(inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Resolve the extraction input: a folder (recursive), a file list (.txt), or paths.

    Raises:
        FileNotFoundError: If a folder or file list does not exist.
        ValueError: If no image is found.
    """
    if isinstance(inputs, (str, os.PathLike)):
        p = Path(inputs).expanduser()
        if p.is_dir():
            paths = find_images(p)
        elif p.is_file():
            paths = read_file_list(p)
        else:
            raise FileNotFoundError(f"No such folder or file list: {p}")
        where = str(p)
    else:
        paths = [Path(x).expanduser() for x in inputs]
        where = "the given paths"
    paths = [x if x.is_absolute() else x.resolve() for x in paths]
    if not paths:
        raise ValueError(
            f"No images found in {where}. Expected files ending in .jpg, .jpeg, .png, .bmp, .gif, .webp or .tiff "
            "(any case), or a text file listing one image path per line."
        )
    return paths


def _plan_settings(embedder: ImageEmbedder, config: ExtractConfig) -> dict[str, Any]:
    return {"model": embedder.info(), "shard_size": config.shard_size, "batch_size": config.batch_size}


def _load_or_create_plan(partial: Path, paths: list[Path], settings: dict[str, Any]) -> list[str]:
    str_paths = [str(p) for p in paths]
    plan = load_or_create_plan(partial, "plan.json", {"settings": settings, "paths": str_paths},
                               what="extraction with other settings", settings_key="settings",
                               foreign="an interrupted text build; resume it with `similar-images text build`")
    saved = plan["paths"]
    if saved != str_paths:
        logger.warning("The input changed since the interrupted run; resuming with the saved list of %d images",
                       len(saved))
    return list(saved)


def _shard_meta_path(partial: Path, shard: int) -> Path:
    return partial / f"shard-{shard:06d}.json"


def _shard_done(partial: Path, shard: int) -> bool:
    meta = _shard_meta_path(partial, shard)
    if not meta.exists():
        return False
    info = _io.read_json(meta)
    vec = partial / info["vectors"]
    return vec.exists()


def _write_shard(partial: Path, shard: int, ok: list[int], vectors: list[np.ndarray],
                 failures: list[tuple[int, str]], dim: int) -> None:
    name = f"shard-{shard:06d}.npy"
    arr = np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)
    with _io.atomic_path(partial / name) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    # The JSON file is the commit marker: a shard counts only once it exists.
    _io.write_json(_shard_meta_path(partial, shard), {"vectors": name, "ok": ok, "failures": failures})


def _decode(embedder: ImageEmbedder, path: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return embedder.prepare(path), None
    except ImageLoadError as exc:
        return None, str(exc)
    except Exception as exc:  # a failure report must never abort the run
        return None, f"{exc.__class__.__name__}: {exc}"


def _decoded_stream(embedder: ImageEmbedder, paths: list[str], indices: Iterable[int], workers: int,
                    prefetch: int) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """Decode images in a thread pool, yielding them in order, ``prefetch`` ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: collections.deque[tuple[int, Future]] = collections.deque()
        it = iter(indices)
        for idx in it:
            pending.append((idx, pool.submit(_decode, embedder, paths[idx])))
            if len(pending) >= prefetch:
                break
        while pending:
            idx, fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_decode, embedder, paths[nxt])))
            arr, err = fut.result()
            yield idx, arr, err


def extract_features(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    db_path: str | os.PathLike[str],
    config: ExtractConfig | None = None,
    *,
    force: bool = False,
    embedder: ImageEmbedder | None = None,
) -> ExtractSummary:
    """Extract feature vectors of images into a new database folder.

    Args:
        inputs: A folder (searched recursively), a file list, or a list of paths.
        db_path: The database folder to create (or the interrupted one to resume).
        config: Extraction settings.
        force: Replace an existing database at ``db_path``.
        embedder: An already-loaded embedder to reuse (its model must be
            ``config.model``); by default one is built from ``config``.

    Returns:
        A summary with counts, speed and the list of ``(path, reason)`` failures.

    Raises:
        DatabaseExistsError: If a database already exists at ``db_path`` and ``force`` is false.
        DatabaseError: If an interrupted extraction with other settings is found.
        ValueError: If no image is found.
    """
    from .database import write_database  # noqa: PLC0415

    config = config or ExtractConfig()
    db = Path(db_path).expanduser()
    partial = start_partial(db, force=force)

    if embedder is None:
        embedder = ImageEmbedder(config.model, config.weights, batch_size=config.batch_size, seed=config.seed,
                                 max_pixels=config.max_pixels)
    elif embedder.spec.name != config.model:
        raise ValueError(f"The embedder runs {embedder.spec.name!r} but config.model is {config.model!r}; "
                         "make them the same")
    paths = _load_or_create_plan(partial, collect_inputs(inputs), _plan_settings(embedder, config))
    n = len(paths)
    size = config.shard_size
    n_shards = (n + size - 1) // size
    todo_shards, done_before = pending_pieces(n, size, lambda s: _shard_done(partial, s))
    if done_before:
        logger.info("Resuming: %d of %d images already extracted", done_before, n)

    workers = config.workers or min(8, os.cpu_count() or 1)
    todo = (i for s in todo_shards for i in range(s * size, min(n, (s + 1) * size)))
    if todo_shards:
        _ = embedder.model  # build it before the clock starts: the speed reported is the pipeline's
    t0 = time.perf_counter()
    processed = 0
    with tqdm(total=n, initial=done_before, unit="img", desc=f"extract {embedder.spec.name}",
              disable=not config.verbose, smoothing=0.1) as bar:
        cur = -1
        ok: list[int] = []
        vecs: list[np.ndarray] = []
        fails: list[tuple[int, str]] = []
        batch: list[np.ndarray] = []
        batch_idx: list[int] = []

        def run_batch() -> None:
            if batch:
                vecs.append(embedder.embed_arrays(np.stack(batch)))
                ok.extend(batch_idx)
                batch.clear()
                batch_idx.clear()

        for idx, arr, err in _decoded_stream(embedder, paths, todo, workers, prefetch=2 * config.batch_size):
            shard = idx // size
            if shard != cur:
                if cur >= 0:
                    run_batch()
                    _write_shard(partial, cur, ok, vecs, fails, embedder.dim)
                cur, ok, vecs, fails = shard, [], [], []
            if arr is None:
                logger.debug("Skipping %s: %s", paths[idx], err)
                fails.append((idx, err or "unknown error"))
            else:
                batch.append(arr)
                batch_idx.append(idx)
                if len(batch) >= config.batch_size:
                    run_batch()
            processed += 1
            bar.update(1)
        if cur >= 0:
            run_batch()
            _write_shard(partial, cur, ok, vecs, fails, embedder.dim)
    seconds = time.perf_counter() - t0

    # Finalise: read the shards' metadata, then stream their vectors into the database files.
    metas = [_io.read_json(_shard_meta_path(partial, s)) for s in range(n_shards)]
    items = [paths[i] for info in metas for i in info["ok"]]
    failures = [(paths[i], reason) for info in metas for i, reason in info["failures"]]
    chunks = (np.load(partial / info["vectors"], mmap_mode="r", allow_pickle=False) for info in metas)

    rate = processed / seconds if seconds > 0 and processed else 0.0
    write_database(
        db,
        kind="image",
        model=embedder.info(),
        items=items,
        vector_chunks=chunks,
        failures=failures,
        extra={"extraction": {**asdict(config), "images": n, "seconds_last_run": round(seconds, 3),
                              "images_per_second_last_run": round(rate, 2)}},
    )
    shutil.rmtree(partial, ignore_errors=True)
    if failures:
        logger.warning("%d of %d images could not be read; see %s", len(failures), n, db / "failures.csv")
    return ExtractSummary(total=n, extracted=len(items), failed=len(failures), resumed_from=done_before,
                          seconds=seconds, images_per_second=rate, failures=failures)
