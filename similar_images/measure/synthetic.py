"""Synthetic embeddings shaped like CNN features, for tests and benchmarks at sizes the real photos don't reach."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["clustered_chunks", "clustered_vectors"]


def clustered_chunks(n: int, d: int, *, n_clusters: int | None = None, rank: int = 16, spread: float = 0.6,
                     noise: float = 0.25, relu: bool = True, seed: int = 0,
                     chunk_size: int = 4096) -> Iterator[np.ndarray]:
    """Realistic synthetic embeddings, streamed in chunks: a seeded Gaussian mixture, L2-normalised.

    Each cluster has a random centre (norm 1), a random ``rank``-dimensional
    subspace along which its members vary (norm about ``spread``), and
    isotropic noise (norm about ``noise``). Cluster sizes are uneven (drawn
    from a Dirichlet distribution). With ``relu`` the vectors are clipped at
    zero before normalising, like the ReLU outputs of CNN layers.

    Args:
        n: Number of vectors.
        d: Dimension.
        n_clusters: Mixture components (default: about ``sqrt(n) / 2``).
        rank: Dimension of each cluster's subspace of variation.
        spread: Scale of the within-cluster variation.
        noise: Scale of the isotropic noise.
        relu: Clip at zero before normalising.
        seed: Seed; the same arguments always give the same vectors.
        chunk_size: Rows per yielded chunk.

    Yields:
        float32 arrays of shape ``(m, d)`` with unit rows, ``n`` rows in all.
    """
    if n < 1 or d < 2:
        raise ConfigError(f"Need n >= 1 and d >= 2, got n={n}, d={d}")
    c = n_clusters or max(2, int(round(math.sqrt(n) / 2)))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((c, rank, d)).astype(np.float32) * (spread / math.sqrt(d))
    weights = rng.dirichlet(np.full(c, 2.0))
    labels = rng.choice(c, size=n, p=weights)
    for i, start in enumerate(range(0, n, chunk_size)):
        lab = labels[start:start + chunk_size]
        r = np.random.default_rng([seed, i])
        z = r.standard_normal((len(lab), rank)).astype(np.float32)
        x = centres[lab].copy()
        for cl in np.unique(lab):
            rows = np.flatnonzero(lab == cl)
            x[rows] += z[rows] @ bases[cl]
        x += r.standard_normal((len(lab), d)).astype(np.float32) * (noise / math.sqrt(d))
        if relu:
            np.maximum(x, 0, out=x)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        yield (x / np.maximum(norms, 1e-12)).astype(np.float32)


def clustered_vectors(n: int, d: int, **kwargs: Any) -> np.ndarray:
    """All of :func:`clustered_chunks` as one ``(n, d)`` float32 array."""
    return np.concatenate(list(clustered_chunks(n, d, **kwargs)))
