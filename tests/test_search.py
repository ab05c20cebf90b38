"""Search API: every kind of query, URL limits and errors, against a real database."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import HOSTED_ITEM
from helpers import closed_port
from PIL import Image

from similar_images import Database
from similar_images._util.http import FetchConfig, fetch_url, is_url
from similar_images.errors import ImageLoadError, QueryError


def test_query_by_id_reuses_stored_vector(db: Database) -> None:
    db.embedder._model = None  # an id query must not need the model
    res = db.search(7, k=5)
    assert res.ids[0] == 7 and res.query_id == 7 and res.scores[0] == pytest.approx(1.0, abs=1e-4)
    assert db.embedder._model is None
    assert res.scores == sorted(res.scores, reverse=True) and [m.rank for m in res] == [1, 2, 3, 4, 5]
    assert res[0].path == db.items[7] and res.search_ms > 0


def test_path_bytes_pil_and_url_queries_agree(db: Database, image_host: str) -> None:
    path = db.items[HOSTED_ITEM]
    by_path = db.search(path, k=3)
    by_bytes = db.search(Path(path).read_bytes(), k=3)
    by_pil = db.search(Image.open(path), k=3)
    by_url = db.search(f"{image_host}/photo.jpg", k=3)
    by_redirect = db.search(f"{image_host}/to-photo", k=3)
    for res in (by_path, by_bytes, by_pil, by_url, by_redirect):
        assert res.ids[0] == HOSTED_ITEM and res.scores[0] > 0.99
    np.testing.assert_allclose(by_path.scores, by_url.scores, rtol=1e-5)


def test_batch_search(db: Database) -> None:
    out = db.search_batch([0, db.items[1], 2], k=4)
    assert [r.ids[0] for r in out] == [0, 1, 2] and all(len(r) == 4 for r in out)
    assert db.search_batch([], k=3) == []


def test_k_is_clipped_and_validated(db: Database) -> None:
    assert len(db.search(0, k=500)) == len(db)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(QueryError, match="k must be"):
            db.search(0, k=bad)  # type: ignore[arg-type]


def test_exact_and_nprobe_options(db: Database) -> None:
    res = db.search(0, k=5, exact=True)
    assert res.params == {"exact": True} and res.ids[0] == 0
    assert db.search(0, k=5).ids == res.ids  # the small db has a Flat index
    with pytest.raises(QueryError, match="nprobe applies only to IVF"):
        db.search(0, nprobe=4)


@pytest.mark.parametrize(
    "query, error, pattern",
    [
        (10_000, QueryError, "Unknown id"),
        ("/no/such/file.jpg", QueryError, "No such image file"),
        ("ftp://example.com/a.jpg", QueryError, "Only http:// and https://"),
        ("file:///etc/passwd", QueryError, "Only http:// and https://"),
        (b"\x00\x01 garbage", ImageLoadError, "not a readable image"),
        ({"a": 1}, QueryError, "Unsupported query type"),
        (np.zeros(5, np.float32), QueryError, "dimension 5"),
    ],
)
def test_bad_queries(db: Database, query: object, error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        db.search(query, k=3)


@pytest.mark.parametrize(
    "route, pattern",
    [
        ("/page.html", "did not return an image"),
        ("/missing.jpg", "HTTP 404"),
        ("/to-file", "Refused a redirect to a file://"),
    ],
)
def test_url_errors(db: Database, image_host: str, route: str, pattern: str) -> None:
    with pytest.raises(QueryError, match=pattern):
        db.search(image_host + route, k=3)


def test_url_garbage_image_and_size_limit(db: Database, image_host: str) -> None:
    with pytest.raises(ImageLoadError):
        db.search(f"{image_host}/broken.jpg")
    with pytest.raises(QueryError, match="too large"):
        fetch_url(f"{image_host}/photo.jpg", FetchConfig(max_bytes=1000))


def test_unreachable_url_fails_fast() -> None:
    import time

    port = closed_port()
    t0 = time.monotonic()
    with pytest.raises(QueryError, match="Could not reach"):
        fetch_url(f"http://127.0.0.1:{port}/x.jpg", FetchConfig(timeout=3))
    with pytest.raises(QueryError, match="Could not reach"):
        fetch_url("http://nonexistent.invalid/x.jpg", FetchConfig(timeout=3))
    assert time.monotonic() - t0 < 10


def test_is_url() -> None:
    assert is_url("https://a/b.jpg") and is_url("ftp://x")
    assert not is_url("/tmp/a.jpg") and not is_url("C:\\pics\\a.jpg") and not is_url("cat.jpg")


def test_results_to_dict(db: Database) -> None:
    d = db.search(1, k=2).to_dict()
    assert d["query_id"] == 1 and [r["rank"] for r in d["results"]] == [1, 2]
    assert set(d["results"][0]) == {"rank", "id", "score", "path"}
    buf = io.BytesIO()
    Image.open(db.items[1]).save(buf, format="PNG")
    assert db.search(buf.getvalue(), k=1).query_id is None


def test_rerank_gives_exact_cosine_scores_on_a_pq_index(tmp_path: Path) -> None:
    from similar_images import IndexConfig
    from similar_images.embed import l2_normalize
    from similar_images.store import write_database

    rng = np.random.default_rng(0)
    x = l2_normalize(rng.normal(size=(2000, 64)).astype(np.float32) + rng.normal(size=(20, 64))[rng.integers(0, 20,
                                                                                                           2000)])
    write_database(tmp_path / "db", kind="image", model={"name": "synthetic", "dim": 64},
                   items=[f"/img/{i}.jpg" for i in range(2000)], vector_chunks=[x])
    Database.open(tmp_path / "db").build_index(IndexConfig(factory="IVF16,PQ8", nprobe=16, eval_queries=0))
    db = Database.open(tmp_path / "db")
    q = x[5] + 0.3 * rng.normal(size=64).astype(np.float32)
    raw = db.search(q, k=10, rerank=1)
    reranked = db.search(q, k=10)
    exact = db.search(q, k=10, exact=True)
    qn = q / np.linalg.norm(q)
    np.testing.assert_allclose(reranked.scores, x[reranked.ids] @ qn, atol=1e-5)
    assert reranked.params["rerank"] == 4 and "rerank" not in raw.params
    assert np.abs(np.array(raw.scores) - x[raw.ids] @ qn).max() > 1e-3  # PQ scores are approximate
    assert len(set(reranked.ids) & set(exact.ids)) >= len(set(raw.ids) & set(exact.ids))
    with pytest.raises(QueryError, match="rerank"):
        db.search(q, rerank=-1)


def test_merged_search_equals_exact_search_and_skips_excluded_rows_in_both_parts() -> None:
    """The index over the first rows + exact over the rest, merged: with an IVF probing every list, exactly
    exact search's top k, global ids, excluded rows never returned (whichever part holds them)."""
    from similar_images.index import IndexConfig, IndexedPart, build_index, exact_search, merged_search

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index, report = build_index(vectors[:150], IndexConfig(factory="IVF4,Flat", nprobe=4, eval_queries=0))
    part = IndexedPart(index, 150, report.search_params, "IVF4,Flat", trained_rows=150)
    queries = np.concatenate([vectors[[3, 160, 199]], rng.normal(size=(5, 16)).astype(np.float32)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exclude = np.zeros(200, dtype=bool)
    exclude[[3, 10, 160, 170]] = True
    for mask in (None, exclude):
        scores, ids, params = merged_search(part, vectors, queries, 12, exclude=mask)
        want_scores, want_ids = exact_search(vectors, queries, 12, exclude=mask)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
        assert params == {"exact": False, "nprobe": 4, "indexed_rows": 150, "rerank": 4}
    assert not np.isin(ids, [3, 10, 160, 170]).any() and (ids >= 150).any() and (ids < 150).any()
    assert index.nprobe == 4  # an override is undone after the search
    merged_search(part, vectors, queries, 5, overrides={"nprobe": 1})
    assert index.nprobe == 4
