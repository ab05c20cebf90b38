"""Near-duplicate finder: planted copies among real COCO photos, exactness against brute force,
HNSW growing-k search, CSV report, CLI and the notebook."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import execute_notebook, photo_sample
from helpers import EDITS, edited_copy

from similar_images import Database, ExtractConfig, IndexConfig
from similar_images.cli import main
from similar_images.methods.duplicates import (
    DuplicateConfig,
    connected_components,
    find_duplicate_pairs,
    find_duplicates,
    nearest_similarities,
    write_report,
)
from similar_images.store import extract_features, write_database

ROOT = Path(__file__).resolve().parents[1]

# MobileNetV2 (0.35, real ImageNet weights) on this sample: planted copies score >= 0.88 (a 10% crop is the
# hardest edit; resize >= 0.98, JPEG q70 >= 0.99, exact 1.0) while the most similar distinct photos
# score <= 0.69, so 0.80 sits in the middle of the gap.
THRESHOLD = 0.80


@pytest.fixture(scope="module")
def planted(coco_dir: Path, mobilenet_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """100 real COCO photos plus 20 planted copies (5 each: exact, resized, JPEG q70, 10% crop)."""
    root = tmp_path_factory.mktemp("planted")
    photos = photo_sample(coco_dir, 100, seed=5)
    for p in photos:
        (root / "images" / "orig").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, root / "images" / "orig" / p.name)
    copies = {}
    for i, p in enumerate(photos[:20]):
        edit = EDITS[i % len(EDITS)]
        copy = edited_copy(p, root / "images" / "copies" / f"{edit}_{p.stem}.jpg", edit)
        copies[copy.name] = (p.name, edit)
    db = root / "db"
    extract_features(root / "images", db, ExtractConfig(model="mobilenetv2", weights=str(mobilenet_weights),
                                                        verbose=False))
    database = Database.open(db, load_index=False)
    ids = {Path(p).name: i for i, p in enumerate(database.items)}
    pairs = {tuple(sorted((ids[c], ids[o]))): edit for c, (o, edit) in copies.items()}
    return {"db": db, "pairs": pairs, "root": root}


def _brute_force_pairs(vectors: np.ndarray, threshold: float, live: np.ndarray) -> set[tuple[int, int]]:
    sims = vectors[live] @ vectors[live].T  # test oracle only: small N
    a, b = np.nonzero(np.triu(sims >= np.float32(threshold), k=1))
    return set(zip(live[a].tolist(), live[b].tolist()))


def _synthetic_db(path: Path, n: int = 300, d: int = 32, group: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:group] = x[0] + rng.normal(scale=0.02, size=(group, d))  # one big group of near-identical vectors
    for i in range(group, group + 20, 2):  # ten planted pairs at various distances
        x[i + 1] = x[i] + rng.normal(scale=0.05 * (1 + (i % 7)), size=d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_database(path, kind="image", model={"name": "synthetic", "dim": d}, items=[f"/img/{i}.jpg" for i in range(n)],
                   vector_chunks=[x])
    return path


# ------------------------------------------------------------------ planted real photos
def test_planted_copies_found_with_few_false_pairs(planted: dict) -> None:
    db = Database.open(planted["db"], load_index=False)
    report = find_duplicates(db, DuplicateConfig(threshold=THRESHOLD))
    found = report.pair_set()
    assert set(planted["pairs"]) <= found, f"missed {set(planted['pairs']) - found}"
    unplanted = found - set(planted["pairs"])
    assert len(unplanted) <= 3, f"too many unplanted pairs: {unplanted}"
    # Each edit type scores as measured; exact copies are identical vectors.
    sims = dict(zip(zip(report.id_a.tolist(), report.id_b.tolist()), report.similarity.tolist()))
    assert min(sims[p] for p, e in planted["pairs"].items() if e == "exact") > 0.9999
    assert all(sims[p] >= THRESHOLD for p in planted["pairs"])


def test_every_copy_nearest_neighbour_is_its_original(planted: dict) -> None:
    db = Database.open(planted["db"], load_index=False)
    nn = nearest_similarities(db)
    assert len(nn.ids) == len(db)
    partner = {a: b for a, b in planted["pairs"]} | {b: a for a, b in planted["pairs"]}
    for i, j, s in zip(nn.ids.tolist(), nn.neighbor.tolist(), nn.similarity.tolist()):
        if i in partner:
            assert j == partner[i] and s >= THRESHOLD
        else:
            assert j != i and s < THRESHOLD
    # Agrees with a brute-force oracle.
    sims = np.asarray(db.vectors) @ np.asarray(db.vectors).T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(nn.similarity, sims.max(axis=1), atol=1e-5)


def test_hnsw_and_db_indexes_agree_with_exact(planted: dict, tmp_path: Path) -> None:
    db = Database.open(planted["db"], load_index=False)
    exact = find_duplicate_pairs(db, DuplicateConfig(threshold=0.6))
    assert len(exact) > len(planted["pairs"])  # a lower threshold also links distinct photos
    hnsw = find_duplicate_pairs(db, DuplicateConfig(threshold=0.6, index="hnsw", hnsw_m=16, ef_construction=40,
                                                    ef_search=16, initial_k=2))
    assert hnsw.method == "knn"
    assert hnsw.pair_set() == exact.pair_set()
    np.testing.assert_allclose(hnsw.similarity, exact.similarity, atol=1e-5)
    copy = tmp_path / "db"
    shutil.copytree(planted["db"], copy)
    for factory, method in (("Flat", "range_search"), ("IVF4,Flat", "range_search"), ("HNSW16", "knn")):
        Database.open(copy, load_index=False).build_index(
            IndexConfig(factory=factory, eval_queries=10, nprobe=4 if "IVF" in factory else None), force=True)
        rep = find_duplicate_pairs(Database.open(copy), DuplicateConfig(threshold=0.6, index="db", initial_k=2))
        assert rep.method == method
        assert rep.pair_set() == exact.pair_set(), factory


def test_removed_images_are_excluded(planted: dict, tmp_path: Path) -> None:
    copy = tmp_path / "db"
    shutil.copytree(planted["db"], copy)
    (a, b), _ = next(iter(planted["pairs"].items()))
    db = Database.open(copy, load_index=False)
    db.build_index(IndexConfig(factory="HNSW16", eval_queries=10))  # HNSW cannot delete: filtered ids
    db.remove([b])
    for index in ("flat", "hnsw", "db"):
        rep = find_duplicate_pairs(Database.open(copy), DuplicateConfig(threshold=THRESHOLD, index=index))
        assert b not in set(rep.id_a.tolist()) | set(rep.id_b.tolist()), index
        assert (a, b) not in rep.pair_set()
        assert set(planted["pairs"]) - {(a, b)} <= rep.pair_set(), index
        assert rep.n_items == len(db)


def test_cli_writes_pairs_and_groups(planted: dict, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["duplicates", str(planted["db"]), "--threshold", str(THRESHOLD),
                                       "--out-dir", str(out), "--batch-size", "7", "--index", "hnsw",
                                       "--hnsw-m", "16", "--ef-construction", "64", "--ef-search", "32", "-q"])
    assert result.exit_code == 0, result.output
    assert "pairs in" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["groups.csv", "pairs.csv", "summary.json"]  # no temp files
    db = Database.open(planted["db"], load_index=False)
    with open(out / "pairs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path_a", "path_b", "similarity", "id_a", "id_b"]
    sims = [float(r["similarity"]) for r in rows]
    assert sims == sorted(sims, reverse=True) and min(sims) >= THRESHOLD
    pairs = {(int(r["id_a"]), int(r["id_b"])) for r in rows}
    assert len(pairs) == len(rows) and all(a < b for a, b in pairs)
    assert all(db.items[int(r["id_a"])] == r["path_a"] and db.items[int(r["id_b"])] == r["path_b"] for r in rows)
    assert set(planted["pairs"]) <= pairs
    with open(out / "groups.csv", newline="") as fh:
        grows = list(csv.DictReader(fh))
    groups: dict[int, set[int]] = {}
    for r in grows:
        groups.setdefault(int(r["group"]), set()).add(int(r["id"]))
        assert db.items[int(r["id"])] == r["path"]
    assert all(len(groups[int(r["group"])]) == int(r["size"]) for r in grows)
    assert sorted(map(sorted, groups.values())) == sorted(connected_components(*zip(*pairs)))
    # Bad input is a clear error, not a traceback.
    bad = CliRunner().invoke(main, ["duplicates", str(planted["db"]), "--threshold", "1.5"])
    assert bad.exit_code != 0 and "1.5" in bad.output
    no_index = CliRunner().invoke(main, ["duplicates", str(planted["db"]), "--index", "db", "-o", str(tmp_path / "x")])
    assert no_index.exit_code != 0 and "build-index" in no_index.output


# ------------------------------------------------------------------------ synthetic
def test_flat_range_search_equals_brute_force(tmp_path: Path) -> None:
    path = _synthetic_db(tmp_path / "syn")
    db = Database.open(path, load_index=False)
    for t in (0.5, 0.8, 0.95):
        truth = _brute_force_pairs(np.asarray(db.vectors), t, db.live_ids())
        # Small blocks and batches: pairs across blocks must be found exactly once.
        rep = find_duplicate_pairs(db, DuplicateConfig(threshold=t, batch_size=50, block_size=64))
        assert rep.pair_set() == truth
        assert len(rep) == len(truth)  # no repeats
        assert np.all(np.diff(rep.similarity) <= 0) and np.all(rep.id_a < rep.id_b)
    db.remove(list(range(0, 40, 3)))
    db = Database.open(path, load_index=False)
    truth = _brute_force_pairs(np.asarray(db.vectors), 0.8, db.live_ids())
    rep = find_duplicate_pairs(db, DuplicateConfig(threshold=0.8, batch_size=50, block_size=64))
    assert rep.pair_set() == truth


def test_hnsw_k_grows_until_below_threshold(tmp_path: Path) -> None:
    db = Database.open(_synthetic_db(tmp_path / "syn", group=40), load_index=False)
    truth = _brute_force_pairs(np.asarray(db.vectors), 0.9, db.live_ids())
    assert len(truth) >= 40 * 39 // 2  # the big group alone is 780 pairs: far more than initial_k per query
    rep = find_duplicate_pairs(db, DuplicateConfig(threshold=0.9, index="hnsw", initial_k=2, ef_search=8))
    assert rep.pair_set() == truth
    assert rep.truncated_queries == 0
    assert [len(g) for g in rep.groups][0] == 40
    # With k capped below the group size, the lists are cut and the cut is reported.
    capped = find_duplicate_pairs(db, DuplicateConfig(threshold=0.9, index="hnsw", initial_k=2, max_k=8))
    assert capped.truncated_queries >= 40 and len(capped) < len(truth)


def test_connected_components_and_config_errors() -> None:
    groups = connected_components(np.array([5, 1, 2, 9, 7]), np.array([6, 2, 3, 1, 8]))
    assert groups == [[1, 2, 3, 9], [5, 6], [7, 8]]
    long_chain = connected_components(np.arange(0, 999), np.arange(1, 1000))
    assert long_chain == [list(range(1000))]
    assert connected_components(np.array([], int), np.array([], int)) == []
    with pytest.raises(ValueError, match="between -1 and 1"):
        DuplicateConfig(threshold=2.0)
    with pytest.raises(ValueError, match="flat, hnsw, db"):
        DuplicateConfig(index="ivf")
    with pytest.raises(ValueError, match="batch_size"):
        DuplicateConfig(batch_size=0)


def test_report_above_and_write(tmp_path: Path) -> None:
    db = Database.open(_synthetic_db(tmp_path / "syn"), load_index=False)
    low = find_duplicate_pairs(db, DuplicateConfig(threshold=0.7))
    high = find_duplicate_pairs(db, DuplicateConfig(threshold=0.95))
    assert low.above(0.95).pair_set() == high.pair_set()
    assert low.above(0.95).groups == high.groups
    with pytest.raises(ValueError, match="search again"):
        high.above(0.7)
    paths = write_report(high, db, tmp_path / "out")
    text = paths["pairs"].read_text().splitlines()
    assert len(text) == len(high) + 1


# -------------------------------------------------------------------------- notebook UI
def test_browser_slider_filters_pairs(planted: dict) -> None:
    from similar_images.apps.duplicates_app import DuplicateBrowser
    from similar_images.presentation.thumbnails import thumbnail_bytes

    db = Database.open(planted["db"], load_index=False)
    browser = DuplicateBrowser(db, min_threshold=0.5, threshold=0.6, max_pairs=8, thumb_size=64)
    n_low = len(browser.pairs_at(0.6))
    assert n_low > len(planted["pairs"]) and len(browser.shown) == 8
    assert browser.pairs_html.value.count("class='sid-pair'") == 8
    assert browser.histogram.value[:8] == b"\x89PNG\r\n\x1a\n"
    browser.slider.value = 0.9999  # as a user drags the slider: only the exact copies are left
    n_exact = sum(e == "exact" for e in planted["pairs"].values())
    assert len(browser.shown) == len(browser.pairs_at(0.9999)) == n_exact
    assert f"<b>{n_exact}</b> pairs" in browser.summary.value and "<b>0.9999</b>" not in browser.summary.value
    assert "&ge; <b>1.000</b>" in browser.summary.value  # the summary follows the slider
    browser.slider.value = 0.52  # below what was searched: searched again
    assert browser.report.config.threshold == pytest.approx(0.52) and len(browser.shown) == 8
    thumb = thumbnail_bytes(db.items[0], 64)
    import io

    from PIL import Image

    img = Image.open(io.BytesIO(thumb))
    assert img.format == "JPEG" and max(img.size) == 64


def test_default_threshold_comes_from_the_distribution(planted: dict) -> None:
    from similar_images.apps.duplicates_app import DuplicateBrowser, default_thresholds
    from similar_images.index import ScoreBands

    db = Database.open(planted["db"], load_index=False)
    browser = DuplicateBrowser(db)
    sims = browser.neighbors.similarity
    bands = ScoreBands.from_similarities(sims)
    assert browser.threshold == pytest.approx(bands.near_duplicate, abs=1e-3) == default_thresholds(sims)[0]
    assert browser.slider.min < 0.8 and browser.slider.min <= np.percentile(sims, 5)
    found = browser.pairs_at(browser.threshold).pair_set()
    planted_pairs = set(planted["pairs"])
    # The planted copies (exact, resized, recompressed, cropped) are found; few other pairs are flagged.
    assert len(found & planted_pairs) >= 0.8 * len(planted_pairs), (len(found & planted_pairs), len(planted_pairs))
    assert len(found - planted_pairs) <= 2, sorted(found - planted_pairs)
    assert str(round(browser.default_threshold, 3)) in browser.header.value


def test_notebook_runs_headless(planted: dict, tmp_path: Path) -> None:
    import nbformat

    nb = nbformat.read(ROOT / "notebooks" / "near_duplicates.ipynb", as_version=4)
    env = {"SIMILAR_IMAGES_DB": str(planted["db"]), "DUPLICATES_THRESHOLD": str(THRESHOLD),
           "DUPLICATES_MIN_THRESHOLD": "0.7", "DUPLICATES_OUT_DIR": str(tmp_path / "out")}
    execute_notebook(nb, env, tmp_path)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not any("image/png" in o.get("data", {}) for o in outputs)  # the histogram is drawn once, in the browser
    assert sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs) == 1
    text = "".join(o.get("text", "") for o in outputs)
    assert text.startswith("pairs: ") and (tmp_path / "out" / "pairs.csv").exists()
    n = len(find_duplicate_pairs(Database.open(planted["db"], load_index=False), DuplicateConfig(threshold=THRESHOLD)))
    assert len((tmp_path / "out" / "pairs.csv").read_text().splitlines()) == n + 1
    assert [o for o in outputs if o.output_type == "stream" and o.get("name") == "stderr"] == []


def test_edited_copy_rejects_unknown_edit(tmp_path: Path, coco_dir: Path) -> None:
    src = next(coco_dir.rglob("*.jpg"))
    with pytest.raises(ValueError, match="exact, resize"):
        edited_copy(src, tmp_path / "x.jpg", "blur")
    out = edited_copy(src, tmp_path / "c.jpg", "crop10")
    from PIL import Image

    w, h = Image.open(src).size
    assert Image.open(out).size == (w - 2 * round(w * 0.05), h - 2 * round(h * 0.05))
