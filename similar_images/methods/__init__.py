"""Methods built on a database: near-duplicates (:mod:`.duplicates`) and SIFT local features (:mod:`.sift`)."""

from __future__ import annotations

from .duplicates import DuplicateConfig, DuplicateReport, find_duplicate_pairs, find_duplicates, nearest_similarities
from .sift import SiftConfig, SiftDatabase, SiftMatch, SiftResults, extract_sift

__all__ = [
    "DuplicateConfig",
    "DuplicateReport",
    "find_duplicate_pairs",
    "find_duplicates",
    "nearest_similarities",
    "SiftConfig",
    "SiftDatabase",
    "SiftMatch",
    "SiftResults",
    "extract_sift",
]
