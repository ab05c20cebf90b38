"""Errors carry data, and the edges phrase the advice (issue 22).

The library below the command line, the service and the apps says what happened in its own terms (``force=True``,
``encoding=``) and puts the facts on the exception (``path``, ``setting``, ``value``, ``expected``, ...); the command
line's :func:`~similar_images.cli._common.advice` turns those facts into flags and commands, the service and the
apps into their own words.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import similar_images
from similar_images.cli import main
from similar_images.cli._common import advice, cli_message
from similar_images.errors import (
    BackendError,
    BackendUnavailableError,
    BadURLError,
    ConfigError,
    DatabaseCorruptError,
    DatabaseFileError,
    DatabaseNotFoundError,
    DownloadError,
    IndexTrainingError,
    SimilarImagesError,
    SourceNotFoundError,
    TextInputError,
    WeightsError,
)
from similar_images.index import IndexConfig
from similar_images.store import write_database

PACKAGE = Path(similar_images.__file__).parent
#: The layers that speak to a user in their own terms: everything below them speaks the library's.
EDGES = ("cli", "apps", "service")


def _cli_vocabulary() -> tuple[set[str], set[str]]:
    """Every command name (``build-index``, ``text build``) and every long option (``--force``) of the CLI."""
    commands: set[str] = set()
    options: set[str] = set()

    def walk(cmd: click.Command, prefix: str) -> None:
        for param in cmd.params:
            options.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                commands.add(f"{prefix}{name}")
                walk(sub, f"{prefix}{name} ")

    walk(main, "")
    options.discard("--help")
    return commands, options


def _messages(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module that are not docstrings (messages, hints, report lines), with their line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.append((node.lineno, node.value))
    return found


def test_the_library_below_the_edges_names_no_cli_command_or_flag() -> None:
    commands, options = _cli_vocabulary()
    assert {"build-index", "extract", "text build", "--force", "--encoding", "--backend"} <= commands | options
    flag = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
    command = re.compile(r"similar-images ((?:[a-z][a-z0-9-]* ?){1,2})")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in EDGES:
            continue
        for line, text in _messages(path):
            named = [f for f in flag.findall(text) if f in options]
            named += [c for m in command.findall(text) for c in (m.strip(), m.split(" ")[0]) if c in commands]
            if "same command" in text:
                named.append("the same command")
            if named:
                offenders.append(f"{rel}:{line}: {sorted(set(named))} in {text[:80]!r}")
    assert not offenders, "library messages phrase CLI advice (put the data on the error instead):\n" + "\n".join(
        offenders)


# ---------------------------------------------------------------- the data each error carries, and the advice


def test_every_error_can_carry_its_data_and_keeps_its_python_bases() -> None:
    exc = SourceNotFoundError("Weights file not found: w.h5", path="w.h5", setting="weights", value="w.h5",
                              expected="imagenet")
    assert (exc.path, exc.setting, exc.value, exc.expected) == ("w.h5", "weights", "w.h5", "imagenet")
    assert isinstance(exc, FileNotFoundError) and str(exc) == "Weights file not found: w.h5"
    bare = ConfigError("bad")
    assert (bare.path, bare.setting, bare.value, bare.expected) == (None, None, None, None) and advice(bare) is None
    imp = BackendUnavailableError("no openvino", setting="backend", value="openvino", expected="keras")
    assert isinstance(imp, ImportError) and imp.expected == "keras" and str(imp) == "no openvino"
    corrupt = DatabaseFileError("x is a FIFO", path="db/index.faiss", reason="a FIFO", database="db",
                                rebuild="index")
    assert (corrupt.path, corrupt.reason, corrupt.database, corrupt.rebuild) == ("db/index.faiss", "a FIFO", "db",
                                                                                 "index")


def test_weights_file_not_found_carries_the_setting(tmp_path: Path) -> None:
    from similar_images.embed.image_models import resolve_weights

    with pytest.raises(SourceNotFoundError) as info:
        resolve_weights(tmp_path / "none.h5")
    exc = info.value
    assert (exc.setting, exc.expected, Path(exc.path)) == ("weights", "imagenet", tmp_path / "none.h5")
    assert "--" not in str(exc) and "weights='imagenet'" in str(exc)
    assert "--weights imagenet" in cli_message(exc)


def test_text_errors_carry_the_file_and_the_setting(tmp_path: Path) -> None:
    from similar_images.sources.texts import read_texts

    latin = tmp_path / "latin.csv"
    latin.write_bytes("text\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(TextInputError) as info:
        read_texts(latin)
    exc = info.value
    assert (exc.setting, exc.value, Path(exc.path)) == ("encoding", "utf-8", latin) and "--" not in str(exc)
    assert str(exc) == f"{exc.problem}. {exc.hint}" and exc.hint == "Pass its encoding, e.g. encoding='latin-1'."
    # the CLI shows what happened and its own fix, not the library's too
    assert cli_message(exc) == f"{exc.problem}. Pass the file's encoding, e.g. --encoding latin-1."

    other = tmp_path / "other.csv"
    other.write_text("tweet,label\nhello,1\n")
    with pytest.raises(TextInputError) as info:
        read_texts(other)
    exc = info.value
    assert (exc.setting, exc.value, exc.expected) == ("column", "text", ("tweet", "label")) and "--" not in str(exc)
    assert "--column NAME" in cli_message(exc) and "column=" not in cli_message(exc)


def test_index_training_error_names_train_size_or_a_smaller_index() -> None:
    from similar_images.index.build import train_index

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 8)).astype(np.float32)
    with pytest.raises(IndexTrainingError) as info:
        train_index(vectors, "IVF64,Flat", train_size=50)
    exc = info.value
    assert (exc.setting, exc.value, exc.expected) == ("train_size", 50, 64) and "--" not in str(exc)
    assert exc.hint == "Raise train_size to 64 or more." and exc.hint in str(exc)
    assert cli_message(exc) == f"{exc.problem}. Raise --train-size (at least 64)."
    with pytest.raises(IndexTrainingError) as info:
        train_index(vectors, "IVF512,Flat")
    exc = info.value
    assert exc.setting == "factory" and exc.value == "IVF512,Flat" and exc.expected[-1] == "Flat"
    assert "--index Flat" in cli_message(exc)


def test_advice_is_chosen_by_the_data_not_the_message() -> None:
    """The same data under any message gives the same advice; no data, no advice."""
    for message in ("whatever", ""):
        assert advice(ConfigError(message, setting="precision", expected=("fp32", "bf16"))) == (
            "Or choose --precision fp32 or --precision bf16.")
        assert advice(BackendError(message, setting="backend", value="onnx", expected="torch")) == (
            "Use --backend torch.")
        assert advice(WeightsError(message, setting="model", expected=("vgg16-avg", "vgg16-max"))) == (
            "Or use this file with --model vgg16-avg or --model vgg16-max.")
        assert advice(DownloadError(message, offline_source="texts")).endswith(
            "similar-images text build PATH/TO/texts.csv DB")
        assert "--allow-private-urls" in advice(BadURLError(message, setting="allow_private", value=False))
        assert advice(ConfigError(message, setting="allow_backend_mismatch", value=("openvino", "int8"),
                                  expected=("keras", "fp32"))) == (
            "Leave out --backend/--precision, or pass --allow-backend-mismatch to embed queries with openvino int8 "
            "anyway.")
    assert advice(ConfigError("Leave out --backend, or pass --allow-backend-mismatch")) is None
    assert advice(DatabaseCorruptError("damaged", path="db/index.faiss")) is None
    assert advice(DatabaseNotFoundError("gone")) is None


# ---------------------------------------------------------------- what the user sees at the command line


def test_cli_no_database_advises_the_build_commands(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    missing.mkdir()
    r = CliRunner().invoke(main, ["info", str(missing)])
    assert r.exit_code == 1, r.output
    assert f"similar-images extract IMAGES_FOLDER {missing}" in r.output
    assert f"similar-images build-index {missing}" in r.output and "Traceback" not in r.output
    with pytest.raises(DatabaseNotFoundError) as info:
        similar_images.Database.open(missing)
    exc = info.value
    assert Path(exc.path) == missing and exc.fmt == "similar-images-database" and exc.partial is None
    assert "similar-images" not in str(exc).replace("similar-images-database", "")


def test_cli_interrupted_build_advises_running_it_again(tmp_path: Path) -> None:
    db = tmp_path / "db"
    (db / ".partial").mkdir(parents=True)
    with pytest.raises(DatabaseNotFoundError) as info:
        similar_images.Database.open(db)
    assert Path(info.value.partial) == db / ".partial" and "same settings" in str(info.value)
    r = CliRunner().invoke(main, ["info", str(db)])
    assert r.exit_code == 1 and "Run the same extract (or text build) command again to resume it" in r.output


def _database(path: Path, n: int = 40) -> Path:
    """A small image database of random unit vectors (no model runs), with an exact index."""
    x = np.random.default_rng(1).normal(size=(n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_database(path, kind="image", model={"name": "synthetic", "dim": 16, "weights": "random"},
                                  items=[f"/img/{i}.jpg" for i in range(n)], vector_chunks=[x])
    similar_images.Database.open(path, load_index=False).build_index(IndexConfig(factory="Flat", eval_queries=0))
    return path


def _open_with_damaged_index(db: Path, content: bytes) -> pytest.ExceptionInfo[DatabaseCorruptError]:
    """Overwrite the database's index file with ``content`` and open it: the error it raises."""
    manifest = json.loads((db / "manifest.json").read_text())
    (db / manifest["files"]["index"]).write_bytes(content)
    with pytest.raises(DatabaseCorruptError) as info:
        similar_images.Database.open(db)
    return info


def test_cli_corrupt_index_advises_build_index_force(tmp_path: Path) -> None:
    db = _database(tmp_path / "db")
    info = _open_with_damaged_index(db, b"not a faiss index")
    exc = info.value
    assert (Path(exc.database), exc.rebuild) == (db, "index") and Path(exc.path).parent == db
    assert "build-index" not in str(exc) and "force=True" in str(exc)
    r = CliRunner().invoke(main, ["search", str(db), "0", "--id"])
    assert r.exit_code == 1 and f"Rebuild it with: similar-images build-index {db} --force" in r.output, r.output
    assert "force=True" not in r.output


def test_cli_backend_mismatch_advises_the_flags(tmp_path: Path) -> None:
    small_db = _database(tmp_path / "db")
    with pytest.raises(ConfigError) as info:
        similar_images.Database.open(small_db, backend="openvino", precision="int8")
    exc = info.value
    assert (exc.setting, exc.value, Path(exc.path)) == ("allow_backend_mismatch", ("openvino", "int8"), small_db)
    assert "--" not in str(exc) and "allow_backend_mismatch=True" in str(exc)
    r = CliRunner().invoke(main, ["search", str(small_db), "0", "--id", "--backend", "openvino", "--precision",
                                  "int8"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "pass --allow-backend-mismatch to embed queries with openvino int8 anyway" in r.output, r.output


def test_cli_tune_report_applies_with_the_cli_command_and_the_library_with_a_call() -> None:
    from similar_images.cli._common import apply_command
    from similar_images.measure.tune_report import TunePoint, build_index_call

    fields = {name: 0 for name in TunePoint.__dataclass_fields__}
    point = TunePoint(**{**fields, "factory": "IVF16,PQ8", "params": {"nprobe": 4}})
    assert build_index_call(point) == "db.build_index(IndexConfig(factory='IVF16,PQ8', nprobe=4), force=True)"
    assert apply_command(Path("db"), point) == "similar-images build-index db --force --index 'IVF16,PQ8' --nprobe 4"


def test_edges_only_import_the_data_they_phrase() -> None:
    """Every attribute the advice reads is declared on the error classes (no duck-typed guessing)."""
    for name in ("path", "setting", "value", "expected"):
        assert hasattr(SimilarImagesError, name)
    assert hasattr(DatabaseNotFoundError, "fmt") and hasattr(DatabaseNotFoundError, "partial")
    assert hasattr(DatabaseCorruptError, "database") and hasattr(DatabaseCorruptError, "rebuild")
    assert hasattr(DownloadError, "offline_source") and hasattr(DownloadError, "url")


# ---------------------------------------------------------------- the service and the apps phrase their own


def test_the_service_names_its_own_setting_for_a_refused_address() -> None:
    from similar_images._util.http import AddressPolicy, FetchConfig, fetch_url
    from similar_images.service.errors import status_for

    with pytest.raises(BadURLError) as info:
        fetch_url("http://127.0.0.1:9/cat.jpg", FetchConfig(policy=AddressPolicy(allow_private=False)))
    exc = info.value
    assert (exc.setting, exc.value) == ("allow_private", False) and "--" not in str(exc)
    status, code, message = status_for(exc)
    assert (status, code) == (400, "bad_url") and message.startswith("Refused to fetch from 127.0.0.1")
    assert "its allow_private_urls setting is off" in message and "--allow-private-urls" not in message
    assert "AddressPolicy" in str(exc) and "AddressPolicy" not in message
    assert "--allow-private-urls" in cli_message(exc)


def test_the_service_and_the_apps_say_who_rebuilds_a_damaged_index(tmp_path: Path) -> None:
    from similar_images.apps.common import user_message
    from similar_images.service.errors import status_for

    db = _database(tmp_path / "db")
    info = _open_with_damaged_index(db, b"")
    status, code, message = status_for(info.value)
    assert (status, code) == (503, "database_unavailable")
    assert message.endswith("The server's operator must rebuild the index and restart the server.")
    shown = user_message(info.value)
    assert shown.startswith(f"Index file {db}") and shown.endswith(
        f"Rebuild its index (similar-images build-index {db} --force), then open the app again.")
