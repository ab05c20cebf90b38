"""The two ways to make a database, as thin calls of the one resumable build (:func:`.build.build_database`).

* :func:`extract_features`: images (a folder, a file list, or paths) embedded
  with an image model (:class:`~similar_images.embed.ImageEmbedder`);
* :func:`build_text_database`: texts (a CSV file or a list) embedded with a
  sentence encoder (:class:`~similar_images.embed.TextEmbedder`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..embed import (
    DEFAULT_MODEL,
    DEFAULT_TEXT_BACKEND,
    DEFAULT_TEXT_ENCODER,
    ImageEmbedder,
    TextEmbedder,
    check_text_backend,
)
from ..embed.backends import DEFAULT_THRESHOLD, PrecisionChoice, check_inference
from ..embed.image import DECODERS
from ..engines.local import Engine, describe_engine
from ..errors import AutoPrecisionOnClusterError, ConfigError
from ..sources.images import DEFAULT_MAX_PIXELS, collect_inputs
from ..sources.texts import read_texts
from .build import BuildConfig, BuildSummary, build_database

__all__ = [
    "ExtractConfig",
    "ExtractSummary",
    "extract_features",
    "TextBuildConfig",
    "TextBuildSummary",
    "build_text_database",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- images
@dataclass
class ExtractConfig:
    """Settings of the extraction stage.

    Attributes:
        model: Name of a registered :class:`~similar_images.embed.ModelSpec`.
        weights: ``"imagenet"`` (Keras download), ``"random"``, or a weights file path.
        batch_size: Images per model call.
        workers: Decoding threads (default: number of CPUs, at most 8).
        shard_size: Images per committed shard (the most a crash can lose).
        max_pixels: Larger images are skipped (decompression-bomb guard).
        seed: Seed for randomly initialised weights, so runs are reproducible.
        verbose: Show a progress bar.
        backend: Inference backend, ``"keras"`` or ``"openvino"`` (``pip install openvino nncf``).
        precision: ``"fp32"``, ``"bf16"``, ``"int8"`` or ``"auto"`` (the default): the fastest precision whose
            top-10 neighbour agreement with fp32, measured on a sample of the images, reaches ``agreement``
            (fp32 without measuring where the CPU runs no lower precision natively, as for Keras without bf16).
            What runs (after ``auto`` or a fallback on a CPU without bf16) and the measured figures go into the
            manifest;
            queries of the database use the same backend and precision.
        calibration_size: Images sampled (seeded) from the inputs for int8 calibration and ``auto``'s measurement
            (``None``: up to 300, :data:`~similar_images.embed.backends.DEFAULT_CALIBRATION_SIZE`). ``auto``
            measures only an extraction of at least 4 times the sample (1,200 images by default); fewer run
            fp32, with the reason logged (:mod:`similar_images.embed.backends.auto` states the rule).
        agreement: The top-10 agreement with fp32 that ``auto`` requires of a lower precision.
        decoder: ``"pil"`` or ``"fast"`` (JPEGs decoded at a reduced scale by libjpeg-turbo through
            ``simplejpeg``; recorded, and used for the database's queries too).
    """

    model: str = DEFAULT_MODEL
    weights: str | None = "imagenet"
    batch_size: int = 32
    workers: int | None = None
    shard_size: int = 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0
    verbose: bool = True
    backend: str = "keras"
    precision: str = "auto"
    calibration_size: int | None = None
    agreement: float = DEFAULT_THRESHOLD
    decoder: str = "pil"

    def __post_init__(self) -> None:
        self.build_config()  # validates the sizes
        self.backend, self.precision = check_inference(self.backend, self.precision)
        if self.decoder not in DECODERS:
            raise ConfigError(f"Unknown decoder {self.decoder!r}; choose one of: {', '.join(DECODERS)}")
        if self.calibration_size is not None and self.calibration_size < 1:
            raise ConfigError(f"calibration_size must be at least 1, got {self.calibration_size}")

    def build_config(self) -> BuildConfig:
        return BuildConfig(batch_size=self.batch_size, workers=self.workers, shard_size=self.shard_size,
                           verbose=self.verbose, unit="img")


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
    #: How the precision was chosen (``None``: keras fp32 asked for); :meth:`PrecisionChoice.cost` says what
    #: choosing cost (measured in this run, or read from the cache).
    choice: PrecisionChoice | None = None


def extract_features(
    inputs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    db_path: str | os.PathLike[str],
    config: ExtractConfig | None = None,
    *,
    force: bool = False,
    embedder: ImageEmbedder | None = None,
    engine: Engine | None = None,
    calibration: Sequence[str | os.PathLike[str]] | None = None,
) -> ExtractSummary:
    """Extract feature vectors of images into a new database folder (resumable).

    Args:
        inputs: A folder (searched recursively), a file list, or a list of paths.
        db_path: The database folder to create (or the interrupted one to resume).
        config: Extraction settings.
        force: Replace an existing database at ``db_path``.
        embedder: An already-loaded embedder to reuse (its model must be ``config.model``); by default one is
            built from ``config``.
        engine: Runs the shards (default: this process; e.g. a Spark engine).
        calibration: The images ``auto`` precision and int8 sample from (default: the inputs); e.g. the first
            photos of an archive still downloading.

    Returns:
        A summary with counts, speed and the list of ``(path, reason)`` failures.

    Raises:
        DatabaseExistsError: If a database already exists at ``db_path`` and ``force`` is false.
        DatabaseError: If an interrupted extraction with other settings is found.
        SourceNotFoundError, NoInputsError: If the input does not exist or holds no image.
        AutoPrecisionOnClusterError: If ``config.precision`` is ``"auto"`` and the engine's executors run on other
            machines (a Spark master other than ``local``).
    """
    config = config or ExtractConfig()
    remote = getattr(engine, "remote_master", None)
    master = remote() if remote is not None and config.precision == "auto" else None
    if master is not None:  # auto would measure this machine's CPU, not the executors'
        raise AutoPrecisionOnClusterError(master)
    paths = [str(p) for p in collect_inputs(inputs)]
    if embedder is None:
        needs_sample = config.backend == "openvino" or config.precision == "auto"
        embedder = ImageEmbedder(config.model, config.weights, batch_size=config.batch_size, seed=config.seed,
                                 max_pixels=config.max_pixels, backend=config.backend, precision=config.precision,
                                 calibration=(paths if calibration is None else [str(p) for p in calibration])
                                 if needs_sample else None,
                                 calibration_size=config.calibration_size, agreement=config.agreement,
                                 decoder=config.decoder)
    elif embedder.spec.name != config.model:
        raise ConfigError(f"The embedder runs {embedder.spec.name!r} but config.model is {config.model!r}; "
                          "make them the same")
    if (embedder.backend, embedder.precision) != ("keras", "fp32"):
        embedder.resolve()  # auto measures here; the plan and the manifest record what runs
        logger.info("Inference: %s %s (asked: %s)", embedder.backend, embedder.precision,
                    embedder.requested_precision)

    def extra(s: BuildSummary) -> dict[str, object]:
        return {"extraction": {**asdict(config), "images": s.total, "seconds_last_run": round(s.seconds, 3),
                               "images_per_second_last_run": round(s.items_per_second, 2),
                               "engine": describe_engine(engine), "inference": embedder.inference_info()}}

    s = build_database(paths, embedder, db_path, config.build_config(), extra=extra, force=force, engine=engine)
    return ExtractSummary(total=s.total, extracted=s.embedded, failed=s.failed, resumed_from=s.resumed_from,
                          seconds=s.seconds, images_per_second=s.items_per_second, failures=s.failures,
                          choice=embedder.choice)


# --------------------------------------------------------------------------- texts
@dataclass
class TextBuildConfig:
    """Settings of the text encoding stage.

    Attributes:
        encoder: Name of a registered :class:`~similar_images.embed.TextEncoderSpec`.
        source: Model files overriding the encoder's default (folder or name).
        column: CSV column holding the texts.
        limit: Keep only the first ``limit`` usable texts.
        dedupe: Skip texts equal to an earlier one.
        encoding: Encoding of the CSV file.
        batch_size: Texts per model call.
        backend: ``"torch"`` (sentence-transformers, the default) or ``"onnx"`` (ONNX Runtime); recorded in
            the manifest, and the database's queries use the same.
        chunk_size: Texts per committed shard (the most an interruption can lose).
        verbose: Show a progress bar.
    """

    encoder: str = DEFAULT_TEXT_ENCODER
    source: str | None = None
    column: str = "text"
    limit: int | None = None
    dedupe: bool = True
    encoding: str = "utf-8"
    batch_size: int = 64
    chunk_size: int = 2048
    verbose: bool = True
    #: ``"torch"`` (sentence-transformers) or ``"onnx"`` (ONNX Runtime); recorded, and used by the queries.
    backend: str = DEFAULT_TEXT_BACKEND

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be a positive integer, got {self.limit}")
        self.backend = check_text_backend(self.backend)
        self.build_config()  # validates the sizes

    def build_config(self) -> BuildConfig:
        # One model call embeds a whole batch of texts (sorted by length inside it).
        return BuildConfig(batch_size=self.chunk_size, workers=1, shard_size=self.chunk_size, verbose=self.verbose,
                           unit="text")


@dataclass
class TextBuildSummary:
    """What a text build did."""

    total: int
    encoded: int
    failed: int
    duplicates: int
    resumed_from: int
    seconds: float
    texts_per_second: float
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Texts longer than the encoder's window (embedded from their start only; stored whole).
    over_window: int = 0
    #: The encoder's window in tokens (``None``: not known).
    window: int | None = None


def build_text_database(source: str | os.PathLike[str] | Sequence[Any], db_path: str | os.PathLike[str],
                        config: TextBuildConfig | None = None, *, force: bool = False,
                        embedder: TextEmbedder | None = None, engine: Engine | None = None) -> TextBuildSummary:
    """Embed texts into a new database folder (without an index; then :meth:`Database.build_index`).

    The texts are encoded ``chunk_size`` at a time; each chunk is committed to
    ``DB/.partial/`` as soon as it is done, so an interrupted build resumes
    where it stopped when run again with the same input and settings.

    Args:
        source: A CSV file or a sequence of texts (see :func:`~similar_images.sources.texts.read_texts`).
        db_path: The database folder to create (or the interrupted one to resume).
        config: Reading and encoding settings.
        force: Replace an existing database (and any interrupted build).
        embedder: A ready :class:`~similar_images.embed.TextEmbedder` (default: built from ``config``).
        engine: Runs the shards (default: this process).

    Returns:
        A summary with counts, speed and the ``(row, reason)`` failures.

    Raises:
        DatabaseExistsError: If a database already exists and ``force`` is false.
        InterruptedBuildError: If an interrupted build with other settings is found.
        TextInputError: If the input holds no usable text.
    """
    config = config or TextBuildConfig()
    table = read_texts(source, column=config.column, limit=config.limit, dedupe=config.dedupe,
                       encoding=config.encoding)
    embedder = embedder or TextEmbedder(config.encoder, config.source, batch_size=config.batch_size,
                                        backend=config.backend)
    where = str(Path(source).expanduser().resolve()) if isinstance(source, (str, os.PathLike)) else None
    over = embedder.overlong(table.texts)
    if over:
        first = table.rows[over[0]]
        logger.warning("%d of %d texts are longer than the %s-token window of %s (the first: row %d): only their "
                       "start is embedded; they are stored whole", len(over), len(table.texts), embedder.window,
                       embedder.spec.name, first)

    def extra(s: BuildSummary) -> dict[str, object]:
        return {"text_build": {**{k: v for k, v in asdict(config).items() if k != "verbose"}, "input": where,
                               "texts_over_window": len(over), "window_tokens": embedder.window,
                               "rows_read": table.rows_read, "duplicates_skipped": table.duplicates,
                               "seconds_last_run": round(s.seconds, 3),
                               "texts_per_second_last_run": round(s.items_per_second, 2),
                               "engine": describe_engine(engine)}}

    s = build_database(table.texts, embedder, db_path, config.build_config(), failures=table.failures, extra=extra,
                       force=force, engine=engine)
    return TextBuildSummary(total=table.rows_read, encoded=s.embedded, failed=s.failed, duplicates=table.duplicates,
                            resumed_from=s.resumed_from, seconds=s.seconds, texts_per_second=s.items_per_second,
                            failures=s.failures, over_window=len(over), window=embedder.window)
