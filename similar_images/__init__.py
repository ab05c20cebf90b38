"""similar-images: find similar images and short texts with Keras features and Faiss.

Quick use::

    from similar_images import Database, ExtractConfig
    db = Database.create("photos/", "photos-db", ExtractConfig(model="vgg16-avg"))
    db.build_index()
    for match in db.search("query.jpg", k=8):
        print(match.rank, round(match.score, 3), match.path)

The names in ``__all__`` are the whole public API: the :class:`Database` (create, open, index, search, add,
remove), its configs, search results, near-duplicates, evaluation, explanations and the image app. Each is
imported from its layer on first use (so ``import similar_images`` is cheap), and heavy dependencies
(TensorFlow, torch) only when a model is first used. The errors are imported from :mod:`similar_images.errors`
(all derive from :class:`SimilarImagesError`, the one exported here). Everything else stays importable from its
subpackage, e.g. ``similar_images.store.extract_features`` (the build that returns a summary, for the CLI) or
``similar_images.index.build_index`` (an index over raw vectors).

Subpackages are attributes once imported, as in any package: ``similar_images.search`` is the module
:mod:`similar_images.search` (search with :meth:`Database.search`). The layers, from the bottom up:
:mod:`.errors`, :mod:`._util`, :mod:`.sources`, :mod:`.embed` and :mod:`.index`, :mod:`.search`, :mod:`.store`,
:mod:`.measure` and :mod:`.methods`, :mod:`.apps` and :mod:`.service`, :mod:`.cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as _errors
from ._version import __version__
from .errors import SimilarImagesError

#: Where each public name lives.
_LAZY: dict[str, str] = {
    "Database": "store",
    "ExtractConfig": "store",
    "TextBuildConfig": "store",
    "IndexConfig": "index",
    "Match": "search",
    "Results": "search",
    "DuplicateConfig": "methods",
    "find_duplicates": "methods",
    "EvalConfig": "measure",
    "evaluate_database": "measure",
    "Explanation": "methods.explain",
    "explain": "methods.explain",
    "explanation_png": "methods.explain",
    "open_app": "apps",
}

__all__ = ["__version__", "SimilarImagesError", *_LAZY]

#: Names the package exported before its API was narrowed, and where they live now (for the error message).
_MOVED: dict[str, str] = {
    **{name: "errors" for name in _errors.__all__ if name != "SimilarImagesError"},
    **{name: "sources.images" for name in ("find_images", "load_image", "collect_inputs")},
    "read_texts": "sources.texts",
    "FetchConfig": "_util.http",
    "fetch_url": "_util.http",
    **{name: "embed" for name in (
        "Embedder", "ImageEmbedder", "TextEmbedder", "ModelSpec", "TextEncoderSpec", "available_models",
        "get_model_spec", "register_model", "available_text_encoders", "register_text_encoder")},
    **{name: "index" for name in ("BuildReport", "build_index", "default_factory")},
    "search_batch": "search",
    **{name: "store" for name in (
        "AddSummary", "BuildConfig", "ExtractSummary", "Manifest", "TextBuildSummary", "build_database",
        "build_text_database", "extract_features", "write_database")},
    **{name: "measure" for name in ("TuneConfig", "tune_database")},
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        moved = _MOVED.get(name)
        where = f"; import it from {__name__}.{moved}" if moved else ""
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}{where}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from .apps import open_app
    from .index import IndexConfig
    from .measure import EvalConfig, evaluate_database
    from .methods import DuplicateConfig, find_duplicates
    from .methods.explain import Explanation, explain, explanation_png
    from .search import Match, Results
    from .store import Database, ExtractConfig, TextBuildConfig
