"""Exception types. Every error the library raises on bad input derives from
:class:`SimilarImagesError`, and its message says how to fix the input."""

from __future__ import annotations

__all__ = [
    "SimilarImagesError",
    "ImageLoadError",
    "QueryError",
    "DatabaseError",
    "DatabaseExistsError",
    "IndexTrainingError",
    "WeightsError",
    "DownloadError",
]


class SimilarImagesError(Exception):
    """Base class of all errors raised by similar_images."""


class ImageLoadError(SimilarImagesError, ValueError):
    """An image could not be read or decoded (corrupt, truncated, not an image, too large)."""


class QueryError(SimilarImagesError, ValueError):
    """A search query is invalid (unknown id, unreachable URL, unsupported type, bad k)."""


class DatabaseError(SimilarImagesError):
    """A database folder is missing, incomplete, or inconsistent with its manifest."""


class DatabaseExistsError(DatabaseError, FileExistsError):
    """An output already exists and ``force`` was not given."""


class IndexTrainingError(SimilarImagesError, ValueError):
    """Too few vectors to train the requested index, or an invalid index description."""


class WeightsError(SimilarImagesError):
    """Model weights could not be downloaded or loaded."""


class DownloadError(SimilarImagesError):
    """A download failed or produced a corrupt archive."""
