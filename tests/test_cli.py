"""The command-line interface, in-process with click's CliRunner."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT
from helpers import plugin_env, running_process

from similar_images.cli import main
from similar_images.cli._common import parse_query
from similar_images.store import write_database


def _all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append(((*prefix, name), cmd))
        if isinstance(cmd, click.Group):
            out += _all_commands(cmd, (*prefix, name))
    return out


def test_every_command_and_option_has_help() -> None:
    commands = _all_commands(main)
    assert {"extract", "build-index", "search", "info", "add", "remove", "models", "download-coco"} <= {
        c[0][0] for c in commands
    }
    runner = CliRunner()
    for path, cmd in commands:
        result = runner.invoke(main, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert cmd.help and len(cmd.help.strip()) > 20, f"{' '.join(path)} has no help text"
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.help, f"{' '.join(path)} {param.opts} has no help"


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    code = ("import sys, time; t=time.perf_counter(); from similar_images.cli import main; "
            "import click.testing as ct; r=ct.CliRunner().invoke(main, ['--help']); "
            "heavy=[m for m in ('tensorflow','keras','torch','cv2','sentence_transformers','fastapi','matplotlib', "
            "'ipywidgets','pyspark','openvino') "
            "if m in sys.modules]; print(heavy, r.exit_code, time.perf_counter()-t)")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    heavy, exit_code, _ = out.stdout.rsplit(" ", 2)
    assert heavy == "[]" and exit_code == "0", out.stdout
    assert time.perf_counter() - t0 < 10


def test_full_flow(tmp_path: Path, synthetic_images: Path, tiny_model: str) -> None:
    runner = CliRunner()
    db = tmp_path / "db"
    (synthetic_images / "corrupt.jpg").write_bytes(b"\xff\xd8 broken")
    r = runner.invoke(main, ["extract", str(synthetic_images), str(db), "--model", tiny_model, "--weights", "random",
                             "--quiet"])
    assert r.exit_code == 0, r.output
    assert "Extracted 12 of 13 images" in r.output and "1 failed" in r.output

    r = runner.invoke(main, ["extract", str(synthetic_images), str(db), "--model", tiny_model, "-w", "random", "-q"])
    assert r.exit_code == 1 and "--force" in r.output

    r = runner.invoke(main, ["build-index", str(db), "--index", "IVF4,PQ4", "--quiet"])
    assert r.exit_code == 1 and "at least 256 training vectors" in r.output and "Flat" in r.output

    r = runner.invoke(main, ["build-index", str(db), "--index", "Flat", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["factory"] == "Flat" and report["recall_at_10"] == 1.0

    r = runner.invoke(main, ["search", str(db), "3", "--id", "-k", "4"])
    assert r.exit_code == 0 and r.output.splitlines()[1].split()[:2] == ["1", "3"], r.output
    assert len([line for line in r.output.splitlines() if line.strip()[:1].isdigit()]) == 4

    img = sorted(synthetic_images.rglob("img05*"))[0]
    r = runner.invoke(main, ["search", str(db), str(img), "-k", "2", "--json"])
    out = json.loads(r.stdout)
    assert out["results"][0]["path"] == str(img) and out["results"][0]["score"] == pytest.approx(1, abs=1e-4)

    r = runner.invoke(main, ["search", str(db), "x", "--id"])
    assert r.exit_code == 2 and "--id needs an integer" in r.output
    r = runner.invoke(main, ["search", str(db), "99", "--id"])
    assert r.exit_code == 1 and "Unknown id 99" in r.output

    r = runner.invoke(main, ["info", str(db)])
    assert "items: 12 (12 searchable, 0 removed), failed: 1" in r.output and "index: Flat" in r.output
    assert json.loads(runner.invoke(main, ["info", str(db), "--json"]).stdout)["counts"]["failed"] == 1

    more = tmp_path / "more"
    more.mkdir()
    (more / "a.png").write_bytes(img.read_bytes())
    r = runner.invoke(main, ["add", str(db), str(more), "-q"])
    assert r.exit_code == 0 and "Added 1 images (ids 12..12)" in r.output

    r = runner.invoke(main, ["remove", str(db), "0", str(more / "a.png")])
    assert r.exit_code == 0 and "ids 0, 12" in r.output
    assert "11 searchable, 2 removed" in runner.invoke(main, ["info", str(db)]).output


def test_missing_database_says_how_to_build_one(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(main, ["search", str(tmp_path / "empty"), "q.jpg"])
    assert r.exit_code == 1
    assert "similar-images extract IMAGES_FOLDER" in r.output and "build-index" in r.output


def test_models_lists_builtins() -> None:
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0 and "vgg16-fc2" in r.output and "4096-d" in r.output


def test_data_scripts_are_thin_wrappers(tmp_path: Path) -> None:
    for script, command in (("extract_image_vectors.py", "extract"), ("build_search_db.py", "build-index")):
        out = subprocess.run([sys.executable, str(ROOT / "data_scripts" / script), "--help"], capture_output=True,
                             text=True, check=True)
        assert f"{command} [OPTIONS]" in out.stdout
    out = subprocess.run(["bash", str(ROOT / "data_scripts" / "quickstart.sh"), "--help"], capture_output=True,
                         text=True, check=True)
    assert "--images" in out.stdout and "--backend" in out.stdout and "--precision" in out.stdout
    # only the help: the comment block without its '#', no line of the script itself
    assert out.stdout.startswith("One command") and not out.stderr, out.stdout
    assert "set -euo" not in out.stdout and "cd " not in out.stdout and "#" not in out.stdout, out.stdout


def test_cli_logging_shows_our_progress_not_faiss_loader_lines() -> None:
    import logging

    from similar_images.cli._common import configure_logging

    root_level = logging.getLogger().level
    try:
        configure_logging(0)
        assert logging.getLogger("similar_images.index").isEnabledFor(logging.INFO)
        assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
        configure_logging(2)  # -vv: everything, other libraries included
        assert logging.getLogger("faiss.loader").isEnabledFor(logging.DEBUG)
    finally:
        logging.getLogger().setLevel(root_level)
        logging.getLogger("faiss").setLevel(logging.NOTSET)
        logging.getLogger("faiss.loader").setLevel(logging.NOTSET)


def test_search_rerank_option_picks_exact_or_index_scores(tmp_path: Path) -> None:
    """`search --rerank 1` shows the PQ index's own approximate scores; the default re-ranks them exactly."""
    x = np.random.default_rng(0).normal(size=(400, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    db = tmp_path / "db"
    write_database(db, kind="image", model={"name": "synthetic", "dim": 16, "weights": "random"},
                   items=[f"/img/{i}.jpg" for i in range(400)], vector_chunks=[x])
    runner = CliRunner()
    assert runner.invoke(main, ["build-index", str(db), "--index", "PQ4", "--quiet"]).exit_code == 0

    def top(*extra: str) -> dict:
        r = runner.invoke(main, ["search", str(db), "7", "--id", "-k", "3", "--json", *extra])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)["results"][0]

    exact, approximate = top(), top("--rerank", "1")
    assert exact["id"] == 7 and exact["score"] == pytest.approx(1.0, abs=1e-5)
    assert abs(approximate["score"] - 1.0) > 1e-3  # PQ4 codes cannot reproduce a vector exactly


# --- issue 20: a quiet, consistent command line -------------------------------------------------------------------

#: TensorFlow's and absl's start-up lines: absl's pre-init notice, glog-style "I0000 00:00:..." lines, the CPU
#: instruction list of cpu_feature_guard, oneDNN's notice, and absl's Python "WARNING:absl:" records.
_TF_NOISE = re.compile(r"absl|cpu_feature_guard|oneDNN|^[IWEF]\d{4} \d\d:\d\d:|rebuild TensorFlow", re.MULTILINE)


def _small_db(path: Path, n: int = 40, model: str = "synthetic") -> Path:
    x = np.random.default_rng(1).normal(size=(n, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    write_database(path, kind="image", model={"name": model, "dim": 16, "weights": "random"},
                   items=[f"/img/{i}.jpg" for i in range(n)], vector_chunks=[x])
    return path


@pytest.mark.slow
def test_python_api_prints_no_tensorflow_start_up_lines(tmp_path: Path, synthetic_images: Path) -> None:
    """A library user who set nothing sees no absl / cpu_feature_guard / oneDNN lines when a model loads."""
    env = plugin_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    code = ("import tiny_model\n"
            "from similar_images import Database, ExtractConfig\n"
            f"db = Database.create({str(synthetic_images)!r}, {str(tmp_path / 'db')!r}, "
            "ExtractConfig(model='tiny', weights='random', verbose=False, precision='fp32'))\n"
            "print('extracted', len(db))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "extracted 12" in out.stdout
    assert not _TF_NOISE.search(out.stdout + out.stderr), out.stderr[-2000:]


@pytest.mark.slow
def test_a_plugin_that_imports_keras_at_the_top_prints_no_tensorflow_start_up_lines(tmp_path: Path) -> None:
    """SIMILAR_IMAGES_PLUGINS modules are imported before any command runs; one that imports Keras at the top used
    to bring TensorFlow's start-up lines to every command."""
    (tmp_path / "eager_plugin.py").write_text("import keras  # at the top, as plugins often do\n")
    env = plugin_env(SIMILAR_IMAGES_PLUGINS="eager_plugin")
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    out = subprocess.run([sys.executable, "-m", "similar_images", "models"], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0 and "vgg16-fc2" in out.stdout, out.stderr[-2000:]
    assert not _TF_NOISE.search(out.stdout + out.stderr), out.stderr[-2000:]


def test_quiet_tensorflow_keeps_what_the_user_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from similar_images.embed.tf_import import quiet_tensorflow

    absl = logging.getLogger("absl")
    old = absl.level
    try:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
        absl.setLevel(logging.NOTSET)
        quiet_tensorflow()
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and absl.level == logging.ERROR
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
        absl.setLevel(logging.INFO)
        quiet_tensorflow()
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and absl.level == logging.INFO
    finally:
        absl.setLevel(old)


def test_a_bare_number_is_an_id_in_search_as_in_explain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _small_db(tmp_path / "db")
    runner = CliRunner()
    assert runner.invoke(main, ["build-index", str(db), "--index", "Flat", "-q"]).exit_code == 0
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(main, ["search", str(db), "7", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["id"] == 7
    r = runner.invoke(main, ["search", str(db), "128"])
    assert r.exit_code == 1 and "Unknown id 128" in r.output and "no image file is named '128'" in r.output
    # The same rule as explain's: digits naming an existing file are that file.
    assert parse_query("7", False, guess=True) == 7
    (tmp_path / "7").write_bytes(b"not an image")
    assert parse_query("7", False, guess=True) == "7"
    r = runner.invoke(main, ["search", str(db), "7"])
    assert r.exit_code == 1 and "Unknown id" not in r.output, r.output  # read as the file: its model is unknown


def test_library_errors_carry_data_and_the_cli_names_the_flag(tmp_path: Path) -> None:
    from similar_images import Database, IndexConfig
    from similar_images.errors import DatabaseExistsError, IndexExistsError, IndexNotBuiltError

    db = _small_db(tmp_path / "db")
    runner = CliRunner()
    r = runner.invoke(main, ["duplicates", str(db), "--index", "db"])
    assert r.exit_code == 1 and "--index flat" in r.output and f"similar-images build-index {db}" in r.output
    from similar_images.methods.duplicates import DuplicateConfig, find_duplicates
    with pytest.raises(IndexNotBuiltError) as no_index:
        find_duplicates(Database.open(db), DuplicateConfig(index="db"))
    assert no_index.value.path == db and "--" not in str(no_index.value)

    database = Database.open(db, load_index=False)
    database.build_index(IndexConfig(factory="Flat", eval_queries=0))
    with pytest.raises(IndexExistsError) as exists:
        database.build_index(IndexConfig(factory="Flat"))
    assert exists.value.path == db and exists.value.factory == "Flat"
    assert "--" not in str(exists.value) and "similar-images" not in str(exists.value)
    r = runner.invoke(main, ["build-index", str(db), "--index", "Flat"])
    assert r.exit_code == 1 and "already has an index (Flat); pass --force to rebuild it" in r.output

    with pytest.raises(DatabaseExistsError) as folder:
        _small_db(db)
    assert folder.value.path == db and "--" not in str(folder.value)


def test_help_is_plain_text_without_restructuredtext_markup() -> None:
    markup = re.compile(r"``|:(?:func|class|meth|data|mod|attr|exc|obj|ref):`|`[^`\n]+`_|`")
    runner = CliRunner()
    for path, _ in [((), main), *_all_commands(main)]:
        out = runner.invoke(main, [*path, "--help"]).output
        found = [line for line in out.splitlines() if markup.search(line)]
        assert not found, (path, found)


def test_a_malformed_url_query_is_a_one_line_error(tmp_path: Path, tiny_model: str) -> None:
    db = _small_db(tmp_path / "db", model=tiny_model)
    r = CliRunner().invoke(main, ["search", str(db), "http://[::1"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "malformed" in lines[0], r.output


@pytest.mark.slow
def test_quickstart_prints_the_address_voila_serves_on_and_passes_the_precision(tmp_path: Path,
                                                                                 synthetic_images: Path) -> None:
    """With its port taken, Voila serves on another one: the quickstart announces that one (it used to print 8866
    whatever Voila did), and --precision reaches 'similar-images extract'."""
    announced = re.compile(r"==> The app: open http://localhost:(\d+)/ in a browser")
    log = tmp_path / "quickstart.log"
    db = tmp_path / "db"
    cmd = ["bash", str(ROOT / "data_scripts" / "quickstart.sh"), "--no-install", "--images", str(synthetic_images),
           "--model", "tiny", "--weights", "random", "--precision", "bf16", "--db", str(db)]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with running_process([*cmd, "--port", str(port)], ready=lambda: bool(announced.search(log.read_text())),
                             log=log, env=plugin_env(), cwd=tmp_path, timeout=400):
            text = log.read_text()
            served = int(announced.search(text).group(1))
            assert served != port and f"Voilà is running at:\nhttp://localhost:{served}/" in text, text[-2000:]
            with socket.create_connection(("127.0.0.1", served), timeout=10):
                pass  # Voila listens where the quickstart says
    assert '"requested_precision": "bf16"' in (db / "manifest.json").read_text()


@pytest.mark.parametrize("command", [["extract", "IMAGES", "DB"], ["build-index", "DB"], ["add", "DB", "IMAGES"],
                                     ["text", "build", "CSV", "DB"], ["text", "build-index", "DB"]])
def test_spark_conf_is_checked_before_anything_runs(tmp_path: Path, command: list[str]) -> None:
    """--conf KEY=VALUE (repeatable) on every command with --engine spark: a malformed one is a one-line usage
    error, and --conf without --engine spark is refused like --master."""
    (tmp_path / "DB").mkdir()
    (tmp_path / "IMAGES").mkdir()
    (tmp_path / "CSV").write_text("text\nhello\n")
    args = [str(tmp_path / a) if a in ("IMAGES", "DB", "CSV") else a for a in command]
    runner = CliRunner()
    r = runner.invoke(main, [*args, "--engine", "spark", "--conf", "spark.executor.memory=4g", "--conf", "foo"])
    assert r.exit_code == 2, r.output
    assert r.output.strip().splitlines()[-1] == (
        "Error: Invalid value for '--conf': needs KEY=VALUE (e.g. spark.executor.memory=4g), got 'foo'")
    r = runner.invoke(main, [*args, "--conf", "spark.executor.memory=4g"])
    assert r.exit_code == 2 and "--master, --partitions and --conf go with --engine spark" in r.output


def test_spark_conf_values_become_the_engines_settings() -> None:
    from similar_images.cli._common import make_engine, parse_spark_conf

    conf = parse_spark_conf(None, None, ("spark.executor.memory = 4g", "spark.executorEnv.A=x=y",
                                         "spark.executor.memory=2g"))
    assert conf == {"spark.executor.memory": "2g", "spark.executorEnv.A": "x=y"}  # the last of a key wins
    engine = make_engine("spark", "spark://127.0.0.1:7077", None, conf)
    assert engine is not None and engine.conf == conf


def test_build_index_help_states_the_real_partitions_default() -> None:
    r = CliRunner().invoke(main, ["build-index", "--help"])
    text = " ".join(r.output.split())
    assert "max(Spark's default parallelism, one per million vectors)" in text, r.output
    assert "one per shard" not in text  # what it used to say: extraction's default
