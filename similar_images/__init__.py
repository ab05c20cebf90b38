"""similar-images: find similar images and short texts with Keras features and Faiss.

Quick use::

    from similar_images import ExtractConfig, extract_features, Database
    extract_features("photos/", "photos-db", ExtractConfig(model="vgg16-avg"))
    db = Database.open("photos-db")
    db.build_index()
    for match in db.search("query.jpg", k=8):
        print(match.rank, round(match.score, 3), match.path)

Heavy dependencies (TensorFlow, torch) are imported only when a model is first used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .database import AddSummary, Database, write_database
from .errors import (
    DatabaseError,
    DatabaseExistsError,
    DownloadError,
    ImageLoadError,
    IndexTrainingError,
    QueryError,
    SimilarImagesError,
    WeightsError,
)
from .features import ExtractConfig, ExtractSummary, ImageEmbedder, extract_features
from .fetch import FetchConfig, fetch_url
from .images import find_images, load_image
from .index import BuildReport, IndexConfig, build_index, default_factory
from .models import ModelSpec, available_models, get_model_spec, register_model
from .search import Match, Results, search, search_batch

__all__ = [
    "__version__",
    "AddSummary",
    "BuildReport",
    "Database",
    "DatabaseError",
    "DatabaseExistsError",
    "DownloadError",
    "ExtractConfig",
    "ExtractSummary",
    "FetchConfig",
    "ImageEmbedder",
    "ImageLoadError",
    "IndexConfig",
    "IndexTrainingError",
    "Match",
    "ModelSpec",
    "QueryError",
    "Results",
    "SimilarImagesError",
    "WeightsError",
    "available_models",
    "build_index",
    "default_factory",
    "extract_features",
    "fetch_url",
    "find_images",
    "get_model_spec",
    "load_image",
    "register_model",
    "search",
    "search_batch",
    "write_database",
]
