"""similar-images: find similar images and short texts with Keras features and Faiss.

Quick use::

    from similar_images import ExtractConfig, extract_features, Database
    extract_features("photos/", "photos-db", ExtractConfig(model="vgg16-avg"))
    db = Database.open("photos-db")
    db.build_index()
    for match in db.search("query.jpg", k=8):
        print(match.rank, round(match.score, 3), match.path)

The names below are the public API; each is imported from its layer on first
use (so ``import similar_images`` is cheap), and heavy dependencies
(TensorFlow, torch) only when a model is first used. The layers, from the
bottom up: :mod:`.errors`, :mod:`._util`, :mod:`.sources`, :mod:`.embed` and
:mod:`.index`, :mod:`.search`, :mod:`.store`, :mod:`.measure` and
:mod:`.methods`, :mod:`.apps` and :mod:`.service`, :mod:`.cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors
from ._version import __version__
from .errors import (
    AutoPrecisionOnClusterError,
    BackendError,
    BackendUnavailableError,
    BadURLError,
    ConfigError,
    DatabaseCorruptError,
    DatabaseError,
    DatabaseExistsError,
    DatabaseFileError,
    DatabaseNotFoundError,
    DatabaseNotReadyError,
    DiskFullError,
    DownloadError,
    EngineError,
    ExplainError,
    FeatureMapError,
    FetchError,
    ImageLoadError,
    IndexDescriptionError,
    IndexExistsError,
    IndexNotBuiltError,
    IndexTrainingError,
    InputError,
    InputFileError,
    InterruptedBuildError,
    NoInputsError,
    PartitionFailedError,
    QueryError,
    SimilarImagesError,
    SourceNotFoundError,
    SparkUnavailableError,
    TextInputError,
    UnknownIdError,
    WeightsError,
)

#: Where each public name lives.
_LAZY: dict[str, str] = {
    # sources
    "find_images": "sources.images",
    "load_image": "sources.images",
    "collect_inputs": "sources.images",
    "read_texts": "sources.texts",
    "FetchConfig": "_util.http",
    "fetch_url": "_util.http",
    # embed
    "Embedder": "embed",
    "ImageEmbedder": "embed",
    "TextEmbedder": "embed",
    "ModelSpec": "embed",
    "TextEncoderSpec": "embed",
    "available_models": "embed",
    "get_model_spec": "embed",
    "register_model": "embed",
    "available_text_encoders": "embed",
    "register_text_encoder": "embed",
    # index
    "BuildReport": "index",
    "IndexConfig": "index",
    "build_index": "index",
    "default_factory": "index",
    # search
    "Match": "search",
    "Results": "search",
    "search": "search",
    "search_batch": "search",
    # store
    "AddSummary": "store",
    "BuildConfig": "store",
    "Database": "store",
    "ExtractConfig": "store",
    "ExtractSummary": "store",
    "Manifest": "store",
    "TextBuildConfig": "store",
    "TextBuildSummary": "store",
    "build_database": "store",
    "build_text_database": "store",
    "extract_features": "store",
    "write_database": "store",
    # measure and methods
    "EvalConfig": "measure",
    "evaluate_database": "measure",
    "TuneConfig": "measure",
    "tune_database": "measure",
    "DuplicateConfig": "methods",
    "find_duplicates": "methods",
    "Explanation": "methods.explain",
    "explain": "methods.explain",
    "explanation_png": "methods.explain",
}

__all__ = ["__version__", *errors.__all__, *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from ._util.http import FetchConfig, fetch_url
    from .embed import (
        Embedder,
        ImageEmbedder,
        ModelSpec,
        TextEmbedder,
        TextEncoderSpec,
        available_models,
        available_text_encoders,
        get_model_spec,
        register_model,
        register_text_encoder,
    )
    from .index import BuildReport, IndexConfig, build_index, default_factory
    from .measure import EvalConfig, TuneConfig, evaluate_database, tune_database
    from .methods import DuplicateConfig, find_duplicates
    from .methods.explain import Explanation, explain, explanation_png
    from .search import Match, Results, search, search_batch
    from .sources.images import collect_inputs, find_images, load_image
    from .sources.texts import read_texts
    from .store import (
        AddSummary,
        BuildConfig,
        Database,
        ExtractConfig,
        ExtractSummary,
        Manifest,
        TextBuildConfig,
        TextBuildSummary,
        build_database,
        build_text_database,
        extract_features,
        write_database,
    )
