"""similar-images: find similar images and short texts with Keras features and Faiss.

The public API is re-exported here. Heavy dependencies (TensorFlow, torch) are
imported only when a model is first used.
"""

from __future__ import annotations

__version__ = "0.1.0"
