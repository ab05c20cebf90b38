"""The walkthrough's helpers (similar_images.measure.walkthrough) on synthetic vectors: fast tier."""

from __future__ import annotations

import numpy as np
import pytest

from similar_images.errors import ConfigError
from similar_images.measure import walkthrough as w
from similar_images.measure.synthetic import clustered_vectors


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered_vectors(600, 64, n_clusters=6, seed=3)


def _labels(n: int = 360, d: int = 32, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors in ``k`` well separated clusters, and each vector's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    labels = np.repeat(np.arange(k), n // k)
    x = centres[labels] + 0.15 * rng.normal(size=(len(labels), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def test_vector_anatomy_pools_the_map_and_ranks_channels() -> None:
    rng = np.random.default_rng(0)
    fmap = np.maximum(rng.normal(size=(7, 7, 20)), 0).astype(np.float32)
    fmap[:, :, 5] += 10.0  # one channel far above the others
    a = w.vector_anatomy(fmap, "avg")
    mean = fmap.mean(axis=(0, 1))
    assert np.allclose(a.vector, mean / np.linalg.norm(mean), atol=1e-6)
    assert a.channels[0] == 5 and a.grid == (7, 7) and a.dim == 20
    m = w.vector_anatomy(fmap, "max")
    assert np.allclose(m.vector * np.linalg.norm(fmap.max(axis=(0, 1))), fmap.max(axis=(0, 1)), atol=1e-5)
    fmap[:, :, :10] = 0.0
    assert w.vector_anatomy(fmap).active_fraction == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"\(H, W, C\)"):
        w.vector_anatomy(np.zeros((7, 7)))


def test_brute_force_cost_is_measured_up_to_the_collection_and_fitted_linearly(vectors: np.ndarray) -> None:
    cost = w.brute_force_cost(vectors, steps=4, n_queries=10)
    assert cost.sizes[-1] == len(vectors) and cost.sizes == sorted(cost.sizes) and len(cost.sizes) == 4
    assert len(cost.ms) == 4 and all(ms > 0 for ms in cost.ms)
    # the fit is the least-squares line through the measured points
    slope, intercept = np.polyfit(cost.sizes, cost.ms, 1)
    assert cost.ms_per_vector == pytest.approx(max(slope, 0.0))
    far = cost.extrapolate()
    assert set(far) == {1_000_000, 1_000_000_000}
    assert far[1_000_000_000] == pytest.approx(cost.intercept_ms + cost.ms_per_vector * 1e9)
    assert cost.memory_bytes(1_000_000) == 1_000_000 * 64 * 4
    assert "least-squares line" in cost.method and "64-d" in cost.method
    with pytest.raises(ConfigError, match="steps"):
        w.brute_force_cost(vectors, steps=1)


def test_pq_anatomy_encodes_one_vector_with_its_nearest_centroids(vectors: np.ndarray) -> None:
    a = w.pq_anatomy(vectors, 8, row=5)
    assert a.sub_vectors.shape == (8, 8) and a.codebooks.shape == (8, 256, 8) and a.code.shape == (8,)
    assert a.bytes_per_vector == 8 and a.float_bytes == 64 * 4
    # the reconstruction is each sub-vector's chosen centroid, and that centroid is the nearest one
    assert np.allclose(a.reconstruction.reshape(8, 8), a.codebooks[np.arange(8), a.code], atol=1e-6)
    for j in range(8):
        dists = ((a.codebooks[j] - a.sub_vectors[j]) ** 2).sum(axis=1)
        assert dists[a.code[j]] == pytest.approx(dists.min())
    assert np.allclose(a.sub_vectors.reshape(-1), vectors[5])
    assert 0 < a.error < 1
    with pytest.raises(ConfigError, match="divide the dimension 64"):
        w.pq_anatomy(vectors, 7)
    with pytest.raises(ConfigError, match="at least 256 vectors"):
        w.pq_anatomy(vectors[:100], 8)


def test_pq_sweep_more_sub_vectors_recall_more_and_lose_less(vectors: np.ndarray) -> None:
    points = w.pq_sweep(vectors, [2, 8, 32], n_queries=100)
    assert [p.m for p in points] == [2, 8, 32]
    assert [p.bytes_per_vector for p in points] == [2, 8, 32]
    assert points[0].compression == 64 * 4 / 2
    recalls, errors = [p.recall for p in points], [p.error for p in points]
    assert recalls == sorted(recalls) and recalls[-1] > recalls[0] + 0.1
    assert errors == sorted(errors, reverse=True) and 0 < errors[-1] < errors[0] < 1
    assert all(p.k == 10 for p in points)


def test_ivf_clusters_group_every_vector_nearest_first(vectors: np.ndarray) -> None:
    c = w.ivf_clusters(vectors, 12)
    assert c.nlist == 12 and c.centroids.shape == (12, 64) and c.sizes.sum() == len(vectors)
    assert sorted(np.concatenate(c.members).tolist()) == list(range(len(vectors)))
    for cluster in c.largest(3):
        rows = c.members[cluster]
        sims = vectors[rows] @ c.centroids[cluster]
        assert np.all(np.diff(sims) <= 1e-5)  # nearest to the centroid first
        # each vector's cluster is its nearest centroid
        assert np.all(np.argmax(vectors[rows] @ c.centroids.T, axis=1) == cluster)
    sizes = c.sizes
    assert [sizes[i] for i in c.largest(12)] == sorted(sizes, reverse=True)
    with pytest.raises(ConfigError, match="nlist"):
        w.ivf_clusters(vectors, 0)


def test_nprobe_sweep_recall_and_scan_grow_to_exact(vectors: np.ndarray) -> None:
    points = w.nprobe_sweep(vectors, 16, n_queries=100, latency_queries=10)
    assert [p.nprobe for p in points] == [1, 2, 4, 8, 16]
    recalls, scanned = [p.recall for p in points], [p.scanned for p in points]
    assert recalls == sorted(recalls) and scanned == sorted(scanned)
    assert points[-1].recall == pytest.approx(1.0) and points[-1].scanned == pytest.approx(1.0)
    assert points[0].scanned < 0.3 and all(p.latency_ms > 0 for p in points)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_project_2d_keeps_clusters_apart(method: str) -> None:
    x, labels = _labels()
    p = w.project_2d(x, method=method)
    assert p.shape == (len(x), 2) and p.dtype == np.float32
    assert p.min() == pytest.approx(0.0) and p.max() == pytest.approx(1.0)
    # clusters are visible: a point's nearest map neighbours belong to its own cluster
    d2 = ((p[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    nearest = np.argsort(d2, axis=1)[:, :5]
    assert (labels[nearest] == labels[:, None]).mean() > 0.95
    assert w.neighbourhood_kept(x, p, k=5) > 3 * 5 / len(x)  # better than chance (k / n)


def test_neighbourhood_kept_is_one_for_a_faithful_map_and_low_for_a_random_one() -> None:
    x, _ = _labels(n=200, d=2)
    assert w.neighbourhood_kept(x, x[:, :2], k=5) == pytest.approx(1.0)
    rng = np.random.default_rng(1)
    assert w.neighbourhood_kept(x, rng.random((200, 2)).astype(np.float32), k=5) < 0.2
    with pytest.raises(ConfigError, match=r"points must be"):
        w.neighbourhood_kept(x, x[:10, :2], k=5)


def test_project_2d_refuses_bad_input() -> None:
    with pytest.raises(ConfigError, match="method"):
        w.project_2d(np.eye(5, dtype=np.float32), method="umap")
    with pytest.raises(ConfigError, match="at least 3 vectors"):
        w.project_2d(np.eye(2, dtype=np.float32))
