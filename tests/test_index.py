"""Faiss index building on synthetic vectors: metric, training limits, recall, parameters."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from similar_images.embed import l2_normalize
from similar_images.errors import IndexTrainingError
from similar_images.index import (
    MIN_PQ_VECTORS,
    IndexConfig,
    build_index,
    calibrate_nprobe,
    choose_nprobe,
    default_factory,
    exact_search,
    make_index,
    min_training_vectors,
    nprobe_cap,
    original_factory,
    recall_at_k,
    recall_within,
    set_search_params,
)


def clustered(n: int, d: int, seed: int = 0, centers: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d))
    x = c[rng.integers(0, centers, n)] + 0.5 * rng.normal(size=(n, d))
    return l2_normalize(x.astype(np.float32))


def test_original_factory_is_ivf_sqrt_n_pq16() -> None:
    assert original_factory(40_504, 4096) == "IVF201,PQ16"
    assert original_factory(256, 512) == "IVF16,PQ16"
    assert original_factory(1000, 100) == "IVF32,PQ10"  # 16 does not divide 100


def test_default_factory_flat_when_small_else_pq_of_d_over_16() -> None:
    assert MIN_PQ_VECTORS == 9984
    assert default_factory(4064, 512) == "Flat"
    assert default_factory(MIN_PQ_VECTORS - 1, 4096) == "Flat"
    assert default_factory(40_504, 4096) == "IVF201,PQ256"
    assert default_factory(20_000, 512) == "IVF141,PQ32"
    assert default_factory(20_000, 384) == "IVF141,PQ24"
    assert default_factory(50_000, 1280) == "IVF224,PQ80"
    assert default_factory(10_000, 100) == "IVF100,PQ10"  # at least 16 bytes, a divisor of d
    assert default_factory(10**6, 8192) == "IVF1000,PQ256"  # capped at 256 bytes


def test_choose_nprobe_smallest_within_tolerance_of_best() -> None:
    recalls = {1: 0.50, 2: 0.80, 4: 0.969, 8: 0.972, 16: 0.973}
    assert choose_nprobe(recalls) == 4  # 0.969 >= 0.995 x 0.973
    assert choose_nprobe(recalls, tolerance=0.001) == 16  # 0.972 < 0.999 x 0.973
    # relative: low recalls (random vectors) are not all "the same"
    assert choose_nprobe({1: 0.017, 2: 0.021, 4: 0.0245, 7: 0.0295}) == 7
    assert choose_nprobe({1: 1.0}) == 1
    with pytest.raises(ValueError):
        choose_nprobe({})


def test_recall_within_equals_recall_after_exact_reranking() -> None:
    x = clustered(2000, 32)
    index, _ = build_index(x, IndexConfig(factory="IVF32,PQ4", nprobe=2, eval_queries=0))
    q = x[1000:1100] + 0.05 * np.random.default_rng(1).normal(size=(100, 32)).astype(np.float32)
    _, truth = exact_search(x, q, 10)
    _, cand = index.search(q, 40)
    rescored = np.take_along_axis(cand, np.argsort(-np.einsum("qd,qkd->qk", q, x[cand]), axis=1), axis=1)
    assert recall_within(cand, truth, 10) == pytest.approx(recall_at_k(rescored, truth, 10))
    assert recall_within(cand, truth, 10) > recall_at_k(cand, truth, 10)


@pytest.mark.slow
def test_build_calibrates_nprobe_by_measured_served_recall() -> None:
    x = clustered(4000, 64, centers=200)
    index, report = build_index(x, IndexConfig(factory="IVF64,PQ8", eval_queries=300))
    measured = {int(p): r for p, r in report.nprobe_recalls.items()}
    assert list(measured)[:3] == [1, 2, 4]
    chosen = report.search_params["nprobe"]
    assert chosen == choose_nprobe(measured) and faiss.extract_index_ivf(index).nprobe == chosen
    assert measured[chosen] >= 0.995 * max(measured.values()) - 1e-9
    assert measured[1] < measured[chosen]  # one list is not enough on this data
    assert report.recall_at_10_served >= report.recall_at_10
    # the calibration alone, on its own sample, agrees within sampling noise
    again, recalls = calibrate_nprobe(index, x, n_queries=300, seed=7)
    assert abs(recalls[again] - measured[chosen]) < 0.05
    # a given nprobe is kept, and nothing is calibrated
    _, fixed = build_index(x, IndexConfig(factory="IVF64,PQ8", nprobe=3, eval_queries=100))
    assert fixed.search_params == {"nprobe": 3} and fixed.nprobe_recalls is None
    with pytest.raises(ValueError, match="IVF"):
        calibrate_nprobe(make_index("Flat", 64), x)


@pytest.mark.slow
def test_nprobe_calibration_stays_within_the_scan_budget() -> None:
    x = clustered(4000, 64, centers=200)
    index, _ = build_index(x, IndexConfig(factory="IVF64,PQ8", nprobe=1, eval_queries=0))
    # 4,000 / 64 lists x 8 bytes a code = 500 bytes a list
    assert nprobe_cap(index, 2000) == 4 and nprobe_cap(index, 10**9) == 64 and nprobe_cap(index, 1) == 1
    assert nprobe_cap(make_index("Flat", 64)) is None
    chosen, recalls = calibrate_nprobe(index, x, n_queries=200, max_scan_bytes=3000)
    assert list(recalls) == [1, 2, 4, 6] and chosen <= 6
    _, unbounded = calibrate_nprobe(index, x, n_queries=200, max_scan_bytes=None)
    assert max(unbounded) > 6


def test_hadamard_rotation_keeps_inner_products_and_round_trips() -> None:
    x = clustered(3000, 96)  # padded to 128 by the rotation
    index, report = build_index(x, IndexConfig(factory="HR,SQ8", eval_queries=200))
    assert report.recall_at_10 > 0.9 and report.search_params == {}
    copy = faiss.deserialize_index(faiss.serialize_index(index))
    d1, i1 = index.search(x[:20], 5)
    d2, i2 = copy.search(x[:20], 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(d1[:, 0], 1.0, atol=0.02)  # each vector finds itself with cosine ~1


@pytest.mark.parametrize("factory", ["IVF16,PQ8", "OPQ8,IVF16,PQ8", "IVF16,Flat", "IVF16,PQ8,RFlat", "HNSW16",
                                     "Flat", "IVF16,SQ8", "PCA32,IVF16,PQ8"])
def test_every_part_uses_inner_product(factory: str) -> None:
    index = make_index(factory, 64)
    parts = [index]
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        parts += [ivf, ivf.quantizer]
    assert all(p.metric_type == faiss.METRIC_INNER_PRODUCT for p in parts)


def test_polysemous_training_disabled() -> None:
    for factory in ("IVF16,PQ8", "PQ8", "OPQ8,IVF16,PQ8"):
        index = make_index(factory, 64)
        pq_parts = [faiss.downcast_index(index), faiss.try_extract_index_ivf(index)]
        assert not any(getattr(p, "do_polysemous_training", False) for p in pq_parts if p is not None)


def test_too_few_vectors_says_how_many(tmp_path: object) -> None:
    x = clustered(100, 32)
    with pytest.raises(IndexTrainingError, match=r"at least 256 training vectors.*'Flat'"):
        build_index(x, IndexConfig(factory="IVF10,PQ8"))
    assert min_training_vectors(make_index("IVF300,Flat", 32)) == 300
    assert min_training_vectors(make_index("HNSW8", 32)) == 0


def test_invalid_factory_is_a_clear_error() -> None:
    with pytest.raises(IndexTrainingError, match="Examples"):
        make_index("IVF12,Bogus", 32)


def test_flat_has_perfect_recall_and_ids() -> None:
    x = clustered(500, 32)
    ids = np.arange(1000, 1500)
    index, report = build_index(x, IndexConfig(factory="Flat", eval_queries=100), ids=ids)
    assert report.recall_at_10 == 1.0 and report.n_eval_queries == 100
    _, found = index.search(x[:5], 1)
    assert found[:, 0].tolist() == ids[:5].tolist()


@pytest.mark.slow
def test_ivfpq_recall_measured_against_exact_and_nprobe_matters() -> None:
    x = clustered(4000, 64)
    index, report = build_index(x, IndexConfig(factory="IVF64,PQ16", nprobe=64, eval_queries=200))
    assert report.search_params == {"nprobe": 64}
    assert report.index_bytes > 0 and report.n_train == 4000 and report.build_seconds > 0
    _, truth = exact_search(x, x[:200], 10)
    _, found = index.search(x[:200], 10)
    assert recall_at_k(found, truth, 10) == pytest.approx(report.recall_at_10, abs=0.1)
    set_search_params(index, {"nprobe": 1})
    _, found1 = index.search(x[:200], 10)
    assert recall_at_k(found1, truth, 10) < recall_at_k(found, truth, 10)


def test_default_nprobe_and_hnsw_params() -> None:
    x = clustered(1024, 32)
    _, report = build_index(x, IndexConfig(factory="IVF32,Flat", eval_queries=0))
    assert report.search_params == {"nprobe": 16} and report.recall_at_10 is None  # min(nlist, max(16, nlist/8))
    _, report = build_index(x, IndexConfig(factory="IVF8,Flat", eval_queries=0))
    assert report.search_params == {"nprobe": 8}
    index, report = build_index(x, IndexConfig(factory="HNSW16", ef_search=40, eval_queries=50))
    assert report.search_params == {"efSearch": 40}
    with pytest.raises(ValueError, match="only to IVF"):
        set_search_params(index, {"nprobe": 3})


def test_exact_search_blocks_ids_and_exclusions() -> None:
    x = clustered(300, 16)
    scores, ids = exact_search(x, x[:3], 5, block_size=64)
    brute = x[:3] @ x.T
    np.testing.assert_array_equal(ids, np.argsort(-brute, axis=1)[:, :5])
    np.testing.assert_allclose(scores, -np.sort(-brute, axis=1)[:, :5], rtol=1e-5)
    exclude = np.zeros(300, dtype=bool)
    exclude[[0, 1, 2]] = True
    _, ids2 = exact_search(x, x[:3], 5, exclude=exclude, block_size=64)
    assert not set(ids2.ravel()) & {0, 1, 2}


def test_recall_at_k_counts_overlap() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 2, 9], [7, 8, 9]])
    assert recall_at_k(found, truth, 3) == pytest.approx(2 / 6)
