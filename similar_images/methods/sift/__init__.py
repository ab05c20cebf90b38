"""SIFT local features: descriptor extraction, one Faiss index of all descriptors, search by votes.

Each image yields up to ``max_features`` 128-d OpenCV SIFT descriptors (the
strongest keypoints), optionally RootSIFT-normalised (L1-normalise, then
square root: the Hellinger kernel, usually better for matching). All
descriptors of all images go into one Faiss index (L2 metric) whose ids are
descriptor numbers; ``descriptor_images.npy`` maps each descriptor number to
the id of its image.

A query image is described the same way; each of its descriptors looks up its
``knn`` nearest database descriptors, and every image found gets one vote per
query descriptor. Images are ranked by votes (matches). With the Lowe ratio
test (``ratio``), a query descriptor votes only for the image of its nearest
neighbour, and only if that neighbour is clearly closer than the nearest
descriptor of any *other* image (``d1 < ratio * d2``); comparing with another
image rather than with the second neighbour keeps matches when an image has
repeated structure.

Layout of a SIFT database folder (no pickle anywhere)::

    manifest.json           format, model "sift" and its settings, counts, versions (the commit point)
    items.jsonl             {"id": i, "path": ...} per image
    failures.csv            path, reason of the files that could not be read
    descriptor_images.npy   int32, image id of each descriptor (descriptor id = row)
    descriptors.faiss       the Faiss index of all descriptors (ids = descriptor ids)
"""

from __future__ import annotations

from .extract import (
    SIFT_DIM,
    SiftConfig,
    SiftExtractor,
    SiftExtractSummary,
    extract_sift,
    root_sift,
    write_sift_database,
)
from .search import SiftDatabase, SiftMatch, SiftResults, count_votes

__all__ = [
    "SIFT_DIM",
    "SiftConfig",
    "SiftExtractor",
    "SiftExtractSummary",
    "SiftMatch",
    "SiftResults",
    "SiftDatabase",
    "count_votes",
    "root_sift",
    "extract_sift",
    "write_sift_database",
]
