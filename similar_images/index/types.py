"""The Faiss index type, for annotations (faiss ships its own stubs: ``faiss.Index`` is the base of every index)."""

from __future__ import annotations

from typing import TypeAlias

import faiss

FaissIndex: TypeAlias = faiss.Index
"""Any Faiss index: a CPU index from ``index_factory`` or ``read_index``, possibly wrapped (IDMap, PreTransform)."""
