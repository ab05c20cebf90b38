"""Damaged database files reach the user as one plain message naming the file, never as a traceback, and
``info`` checks the files it reports on (issue 12, points 3 and 4)."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_image, tiny_database

from similar_images import Database, IndexConfig
from similar_images.cli import main
from similar_images.embed import ImageEmbedder, l2_normalize
from similar_images.engines.shards import write_shard
from similar_images.store import write_database
from similar_images.store.plan import load_or_create_plan, plan_settings

INDEX = "index-0001.faiss"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 40-image tiny-model database with an IVF index, a 10-item database, an 8-d one, and new images."""
    root = tmp_path_factory.mktemp("corruption")
    made = tiny_database(root, IndexConfig(factory="IVF4,Flat", eval_queries=0, nprobe=2))
    for name, n, d in (("other", 10, 16), ("other8", 40, 8)):
        write_database(root / name, kind="image", model={"name": name, "dim": d}, items=[str(i) for i in range(n)],
                       vector_chunks=[l2_normalize(np.ones((n, d), np.float32))])
        Database.open(root / name).build_index(IndexConfig(factory="Flat", eval_queries=0))
        _OTHER_DBS[name] = root / name
    return {**made, "image": root / "images" / "0.png"}


def _truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def change(db: Path) -> None:
        data = (db / name).read_bytes()
        (db / name).write_bytes(data[:int(len(data) * keep)])
    return change


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda db: (db / name).write_bytes(data)


def _remove(name: str) -> Callable[[Path], None]:
    return lambda db: (db / name).unlink()


def _manifest(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def change(db: Path) -> None:
        m = json.loads((db / "manifest.json").read_text())
        edit(m)
        (db / "manifest.json").write_text(json.dumps(m))
    return change


def _items(edit: Callable[[list[str]], object]) -> Callable[[Path], None]:
    def change(db: Path) -> None:
        lines = (db / "items.jsonl").read_text().splitlines(keepends=True)
        edit(lines)
        (db / "items.jsonl").write_text("".join(lines))
    return change


_OTHER_DBS: dict[str, Path] = {}  # filled by the ``pristine`` fixture


def _index_of(other: str) -> Callable[[Path], None]:
    return lambda db: shutil.copy(_OTHER_DBS[other] / INDEX, db / INDEX)


def _append(name: str, data: bytes) -> Callable[[Path], None]:
    def change(db: Path) -> None:
        with open(db / name, "ab") as fh:
            fh.write(data)
    return change


def _nan_vectors(db: Path) -> None:
    np.full(40 * 16, np.nan, dtype=np.float32).tofile(db / "vectors.f32")


def _lock_folder(db: Path) -> None:
    (db / ".lock").unlink(missing_ok=True)
    (db / ".lock").mkdir()


GARBAGE = bytes(range(256)) * 20

# name -> (damage, what every failing command must say; None: the database still works)
CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str | None]] = {
    "index truncated": (_truncate(INDEX), r"index-0001\.faiss cannot be read \(.*truncated"),
    "index header only": (_truncate(INDEX, 0.02), r"index-0001\.faiss cannot be read"),
    "index empty": (_write(INDEX, b""), r"index-0001\.faiss cannot be read \(it is empty\)"),
    "index garbage": (_write(INDEX, GARBAGE), r"index-0001\.faiss cannot be read"),
    "index missing": (_remove(INDEX), r"index-0001\.faiss named by the manifest is missing"),
    "index of another database": (_index_of("other"), r"index holds 10 vectors but the manifest says 40"),
    "index of another dimension": (_index_of("other8"), r"Index dimension 8 does not match"),
    "items truncated": (_truncate("items.jsonl"), r"items\.jsonl line \d+ is damaged"),
    "items empty": (_write("items.jsonl", b""), r"items\.jsonl lists 0 items but the manifest counts 40"),
    "items missing": (_remove("items.jsonl"), r"items\.jsonl is missing"),
    "items not UTF-8": (_write("items.jsonl", b"\xff\xfe" + GARBAGE), r"items\.jsonl is not valid UTF-8"),
    "items bad JSON line": (_items(lambda lines: lines.__setitem__(3, "{not json\n")), r"items\.jsonl line 4"),
    "items ids out of order": (_items(lambda lines: lines.__setitem__(3, lines[4])), r"items\.jsonl line 4"),
    "items line without path": (_items(lambda lines: lines.__setitem__(3, '{"id": 3}\n')), r"items\.jsonl line 4"),
    "items line a list": (_items(lambda lines: lines.__setitem__(3, "[1, 2]\n")), r"items\.jsonl line 4"),
    "items extra lines (interrupted add)": (_items(lambda lines: lines.append('{"id": 40, "path": "/x.jpg"}\n')),
                                            None),
    "vectors truncated": (_truncate("vectors.f32"), r"vectors\.f32 holds 20 vectors .* manifest counts 40"),
    "vectors empty": (_write("vectors.f32", b""), r"vectors\.f32 holds 0 vectors"),
    "vectors missing": (_remove("vectors.f32"), r"vectors\.f32 is missing"),
    "vectors odd size": (_append("vectors.f32", b"abc"), r"vectors\.f32 size 2563 is not a multiple"),
    "vectors NaN": (_nan_vectors, r"vectors\.f32 are not unit length"),
    "vectors extra rows (interrupted add)": (_append("vectors.f32", np.zeros(16, np.float32).tobytes()), None),
    "manifest truncated": (_truncate("manifest.json"), r"manifest\.json is not valid JSON"),
    "manifest empty": (_write("manifest.json", b""), r"manifest\.json is not valid JSON"),
    "manifest garbage": (_write("manifest.json", GARBAGE), r"manifest\.json"),
    "manifest a list": (_write("manifest.json", b"[1, 2]"), r"manifest\.json does not hold a JSON object"),
    "manifest without model": (_manifest(lambda m: m.pop("model")), r"manifest\.json is damaged \(no 'model'"),
    "manifest model a list": (_manifest(lambda m: m.__setitem__("model", [1])), r"manifest\.json is damaged"),
    "manifest dimension 0": (_manifest(lambda m: m["model"].__setitem__("dim", 0)), r"manifest\.json gives the dim"),
    "manifest dimension text": (_manifest(lambda m: m["model"].__setitem__("dim", "abc")), r"manifest\.json gives no"),
    "manifest dimension halved": (_manifest(lambda m: m["model"].__setitem__("dim", 8)),
                                  r"manifest\.json gives the dimension 8 for model 'tiny', whose vectors have 16"),
    "manifest negative count": (_manifest(lambda m: m["counts"].__setitem__("items", -1)), r"negative counts"),
    "manifest count text": (_manifest(lambda m: m["counts"].__setitem__("items", "many")), r"manifest\.json is dam"),
    "manifest removed id out of range": (_manifest(lambda m: m.__setitem__("removed_ids", [999])),
                                         r"manifest\.json lists removed ids outside 0\.\.39"),
    "manifest bad search parameter": (_manifest(lambda m: m["index"].__setitem__("search_params", {"nprobe": "x"})),
                                      r"manifest\.json is damaged"),
    "manifest unknown search parameter": (_manifest(lambda m: m["index"].__setitem__("search_params", {"bogus": 3})),
                                          r"manifest\.json: Unknown search parameter 'bogus'"),
    "manifest index a list": (_manifest(lambda m: m.__setitem__("index", [1])), r"manifest\.json is damaged"),
    "manifest index outside the folder": (_manifest(lambda m: m["files"].__setitem__("index", f"../other/{INDEX}")),
                                          r"manifest\.json names '\.\./other/index-0001\.faiss' as its index file"),
    "manifest without items file": (_manifest(lambda m: m["files"].__setitem__("items", None)),
                                    r"manifest\.json names no items file"),
    "manifest unknown kind": (_manifest(lambda m: m.__setitem__("kind", "audio")),
                              r"manifest\.json: Unknown kind of item 'audio'"),
    "failures not UTF-8": (_write("failures.csv", b"\xff\x00garbage,\"unterminated\n"), None),
    "failures missing": (_remove("failures.csv"), None),
    "failures truncated": (_truncate("failures.csv", 0.7), None),
    "stale plan beside a finished database": (lambda db: (db / ".partial").mkdir() or
                                              (db / ".partial" / "plan.json").write_bytes(GARBAGE), None),
    "lock file is a folder": (_lock_folder, None),  # readers need no lock; writers say what is wrong
}

COMMANDS = {
    "info": ["info", "{db}"],
    "info --json": ["info", "{db}", "--json"],
    "search --id": ["search", "{db}", "1", "--id"],
    "search --id --exact": ["search", "{db}", "1", "--id", "--exact"],
    "search image": ["search", "{db}", "{image}"],
    "remove": ["remove", "{db}", "3"],
    "add": ["add", "{db}", "{new}", "-q"],
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_no_command_prints_a_traceback_for_a_damaged_database(corruption: str, pristine: dict[str, Path],
                                                                tmp_path: Path, tiny_model: str) -> None:
    damage, message = CORRUPTIONS[corruption]
    runner = CliRunner()
    outcomes = {}
    for name, template in COMMANDS.items():
        db = tmp_path / name.replace(" ", "_")
        shutil.copytree(pristine["base"], db)
        damage(db)
        args = [a.format(db=db, image=pristine["image"], new=pristine["new"]) for a in template]
        result = runner.invoke(main, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{name}: {type(result.exception).__name__}: {result.exception}")
        assert "Traceback" not in result.output, (name, result.output)
        outcomes[name] = (result.exit_code, result.output)
    if message is None:
        if corruption == "lock file is a folder":  # readers work; writers refuse in one line
            assert outcomes["remove"][0] == outcomes["add"][0] == 1
            assert "Cannot lock the database for writing" in outcomes["remove"][1]
            del outcomes["remove"], outcomes["add"]
        assert {name: code for name, (code, _) in outcomes.items()} == dict.fromkeys(outcomes, 0), outcomes
        return
    for name, (code, output) in outcomes.items():
        assert code == 1, (name, output)  # info too: it checks the files it reports on
        last = output.strip().splitlines()[-1]
        assert last.startswith("Error: ") and len(output.strip().splitlines()) == 1, (name, output)
        assert re.search(message, last), (name, last)


@pytest.mark.parametrize("corruption", ["index truncated", "index garbage", "index missing",
                                        "index of another database", "manifest unknown search parameter"])
def test_the_advice_for_a_damaged_index_works(corruption: str, pristine: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "db"
    shutil.copytree(pristine["base"], db)
    CORRUPTIONS[corruption][0](db)
    runner = CliRunner()
    failed = runner.invoke(main, ["search", str(db), "1", "--id"])
    assert failed.exit_code == 1 and f"similar-images build-index {db} --force" in failed.output
    assert runner.invoke(main, ["build-index", str(db), "--force", "--eval-queries", "0"]).exit_code == 0
    ok = runner.invoke(main, ["search", str(db), "1", "--id", "--json"])
    assert ok.exit_code == 0 and json.loads(ok.output)["results"][0]["id"] == 1


def test_info_warns_when_failures_csv_disagrees_with_the_manifest(pristine: dict[str, Path], tmp_path: Path) -> None:
    db = tmp_path / "db"
    shutil.copytree(pristine["base"], db)
    (db / "failures.csv").unlink()
    result = CliRunner().invoke(main, ["info", str(db)])
    assert result.exit_code == 0 and "failures.csv lists 0 failures but the manifest counts 1" in result.output


# ----------------------------------------------------------------------------- point 3: a wrong dimension
def test_a_halved_dimension_is_refused_for_an_unregistered_model(tmp_path: Path) -> None:
    """Point 3: with the dimension set to 640 (real 1280) and no index, 'search DB 5 --id' answered with a
    self-score of 0.4871 and blamed 'an interrupted add'. A model that is not registered has no dimension to
    compare with: the vectors, which are unit length, show it."""
    db = tmp_path / "db"
    write_database(db, kind="image", model={"name": "my-plugin-model", "dim": 64},
                   items=[f"/img/{i}.jpg" for i in range(50)],
                   vector_chunks=[l2_normalize(np.random.default_rng(1).normal(size=(50, 64)).astype(np.float32))])
    m = json.loads((db / "manifest.json").read_text())
    m["model"]["dim"] = 32
    (db / "manifest.json").write_text(json.dumps(m))
    result = CliRunner().invoke(main, ["search", str(db), "5", "--id"])
    assert result.exit_code == 1, result.output
    assert "not unit length when read as 32-d vectors" in result.output and "manifest.json" in result.output
    assert "interrupted" not in result.output
    m["model"]["dim"] = 128  # doubled: twice as few rows, each of length sqrt(2)
    m["counts"]["items"] = 25
    (db / "manifest.json").write_text(json.dumps(m))
    result = CliRunner().invoke(main, ["info", str(db)])
    assert result.exit_code == 1 and "length 1.41" in result.output


def test_a_halved_dimension_is_refused_for_a_registered_model(tmp_path: Path, pristine: dict[str, Path],
                                                              tiny_model: str) -> None:
    db = tmp_path / "db"
    shutil.copytree(pristine["base"], db)
    m = json.loads((db / "manifest.json").read_text())
    m["model"]["dim"], m["index"] = 8, None
    m["files"]["index"] = None
    (db / "manifest.json").write_text(json.dumps(m))
    result = CliRunner().invoke(main, ["search", str(db), "5", "--id"])
    assert result.exit_code == 1 and "gives the dimension 8 for model 'tiny', whose vectors have 16" in result.output


# ----------------------------------------------------------------------------- .partial: damaged shards
def _partial_corruptions() -> dict[str, Callable[[Path], None]]:
    def half(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    meta = "shard-000000.json"
    return {
        "shard marker garbage": lambda p: (p / meta).write_bytes(b"\x00{garbage"),
        "shard marker truncated": lambda p: half(p / meta),
        "shard marker a list": lambda p: (p / meta).write_text("[1]"),
        "shard marker with other positions": lambda p: (p / meta).write_text(
            json.dumps({"vectors": "shard-000000.npy", "ok": [0, 1, 2, 99], "failures": []})),
        "shard marker with fewer positions": lambda p: (p / meta).write_text(
            json.dumps({"vectors": "shard-000000.npy", "ok": [0, 1], "failures": []})),
        "shard marker naming a file outside": lambda p: (p / meta).write_text(
            json.dumps({"vectors": "../../images/00.png", "ok": [0, 1, 2, 3], "failures": []})),
        "shard vectors truncated": lambda p: half(p / "shard-000000.npy"),
        "shard vectors garbage": lambda p: (p / "shard-000000.npy").write_bytes(GARBAGE),
        "shard vectors missing": lambda p: (p / "shard-000000.npy").unlink(),
        "shard vectors of another dimension": lambda p: np.save(p / "shard-000000.npy", np.ones((4, 8), np.float32)),
        "plan garbage": lambda p: (p / "plan.json").write_bytes(b"\xffgarbage"),
        "plan a list": lambda p: (p / "plan.json").write_text("[]"),
        "plan items truncated": lambda p: half(p / "items.jsonl"),
        "plan items missing": lambda p: (p / "items.jsonl").unlink(),
    }


@pytest.mark.parametrize("corruption", list(_partial_corruptions()))
def test_a_damaged_interrupted_build_is_resumed_or_restarted(corruption: str, tmp_path: Path,
                                                               tiny_model: str) -> None:
    """A damaged shard is embedded again and a damaged plan starts the build over, with a warning; the result is
    the same as an uninterrupted run."""
    images = [make_image(tmp_path / "images" / f"{i:02d}.png", seed=i) for i in range(12)]
    args = ["--model", tiny_model, "--weights", "random", "--shard-size", "4", "-q"]
    runner = CliRunner()
    assert runner.invoke(main, ["extract", str(tmp_path / "images"), str(tmp_path / "ref"), *args]).exit_code == 0
    reference = Database.open(tmp_path / "ref")
    db = tmp_path / "db"
    partial = db / ".partial"
    settings = plan_settings(ImageEmbedder(tiny_model, None).info(), "image", 4)
    load_or_create_plan(partial, [str(p) for p in images], settings)
    for shard in (0, 1):
        rows = list(range(4 * shard, 4 * shard + 4))
        write_shard(partial, shard, rows, np.asarray(reference.vectors[rows]), [], 16)
    _partial_corruptions()[corruption](partial)
    result = runner.invoke(main, ["extract", str(tmp_path / "images"), str(db), *args])
    assert result.exit_code == 0 and result.exception is None, result.output
    rebuilt = Database.open(db)
    assert rebuilt.items == reference.items
    np.testing.assert_allclose(np.asarray(rebuilt.vectors), np.asarray(reference.vectors), atol=1e-6)
    assert not partial.exists() and os.listdir(db)


def test_write_database_stores_unit_rows_so_the_check_holds(tmp_path: Path) -> None:
    """The unit-length check above relies on every writer storing unit rows: write_database normalises what it is
    given (rows that already are unit length keep their exact bits, so a resumed build stays byte-identical)."""
    raw = np.random.default_rng(3).normal(size=(20, 8)).astype(np.float32) * 5
    unit = l2_normalize(raw[:5])
    write_database(tmp_path / "db", kind="image", model={"name": "raw", "dim": 8}, items=[str(i) for i in range(25)],
                   vector_chunks=[raw, unit])
    stored = np.asarray(Database.open(tmp_path / "db").vectors)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-6)
    assert stored[20:].tobytes() == unit.tobytes()
