"""Feature extraction: model specs, bad inputs, no silent overwrite, kill-and-resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import PLUGINS, ROOT, make_image

from similar_images import Database, ExtractConfig
from similar_images.embed import available_models, get_model_spec, resolve_weights
from similar_images.embed.image_models import preprocess_caffe, preprocess_tf
from similar_images.errors import DatabaseError, DatabaseExistsError, WeightsError
from similar_images.store import extract_features


def _config(model: str, **kw: object) -> ExtractConfig:
    return ExtractConfig(model=model, weights="random", verbose=False, **kw)  # type: ignore[arg-type]


def test_builtin_specs() -> None:
    assert {"vgg16-fc2", "vgg16-avg", "vgg16-max", "mobilenetv2"} <= set(available_models())
    assert get_model_spec("vgg16-fc2").dim == 4096 and get_model_spec("vgg16-fc2").layer == "fc2"
    assert get_model_spec("vgg16-avg").dim == 512
    with pytest.raises(ValueError, match="choose one of"):
        get_model_spec("resnet9000")


def test_numpy_preprocessing_matches_keras() -> None:
    from keras.applications import mobilenet_v2, vgg16

    batch = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    np.testing.assert_allclose(preprocess_caffe(batch), vgg16.preprocess_input(batch.astype(np.float32)), atol=1e-4)
    np.testing.assert_allclose(preprocess_tf(batch), mobilenet_v2.preprocess_input(batch.astype(np.float32)),
                               atol=1e-5)


def test_resolve_weights(tmp_path: Path) -> None:
    assert resolve_weights("ImageNet") == "imagenet"
    assert resolve_weights("random") is None
    with pytest.raises(FileNotFoundError, match="weights='imagenet'") as info:
        resolve_weights(tmp_path / "nope.h5")
    assert (info.value.setting, info.value.expected) == ("weights", "imagenet")


def test_fc2_with_conv_only_weights_says_what_to_do(vgg_weights: Path) -> None:
    with pytest.raises(WeightsError, match="vgg16-avg"):
        get_model_spec("vgg16-fc2").builder(str(vgg_weights))


def test_extract_reports_every_kind_of_bad_file(tmp_path: Path, synthetic_images: Path, tiny_model: str) -> None:
    good = sorted(synthetic_images.rglob("*.*"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.png").write_text("not an image at all")
    (bad / "truncated.jpg").write_bytes(make_image(tmp_path / "t.jpg", 9, (300, 300)).read_bytes()[:400])
    (bad / "folder.jpg").mkdir()
    listing = tmp_path / "list.txt"
    names = [str(p) for p in good] + [str(p) for p in sorted(bad.iterdir())] + [str(tmp_path / "missing.jpg")]
    listing.write_text("\n".join(names))
    summary = extract_features(listing, tmp_path / "db", _config(tiny_model))
    assert summary.total == len(good) + 5
    assert summary.extracted == len(good) and summary.failed == 5
    with open(tmp_path / "db" / "failures.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    reasons = {Path(r["path"]).name: r["reason"] for r in rows}
    assert set(reasons) == {"empty.jpg", "text.png", "truncated.jpg", "folder.jpg", "missing.jpg"}
    assert "0 bytes" in reasons["empty.jpg"] and "not found" in reasons["missing.jpg"]
    db = Database.open(tmp_path / "db")
    assert db.items == [str(p) for p in good]
    assert db.manifest.counts.to_dict() == {"items": len(good), "failed": 5, "removed": 0, "indexed": 0,
                                     "added_after_training": 0}
    norms = np.linalg.norm(np.asarray(db.vectors), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_extract_never_overwrites_without_force(tmp_path: Path, synthetic_images: Path, tiny_model: str) -> None:
    db = tmp_path / "db"
    extract_features(synthetic_images, db, _config(tiny_model))
    before = (db / "manifest.json").read_bytes()
    with pytest.raises(DatabaseExistsError, match="force=True"):
        extract_features(synthetic_images, db, _config(tiny_model))
    assert (db / "manifest.json").read_bytes() == before
    summary = extract_features(synthetic_images, db, _config(tiny_model), force=True)
    assert summary.extracted == 12 and Database.open(db).manifest.created_at


def test_reuses_a_loaded_embedder(tmp_path: Path, synthetic_images: Path, tiny_model: str) -> None:
    from similar_images.embed import ImageEmbedder

    emb = ImageEmbedder(tiny_model, "random")
    model = emb.model
    extract_features(synthetic_images, tmp_path / "db", _config(tiny_model), embedder=emb)
    assert emb.model is model and len(Database.open(tmp_path / "db")) == 12
    with pytest.raises(ValueError, match="make them the same"):
        extract_features(synthetic_images, tmp_path / "db2", _config("mobilenetv2"), embedder=emb)


def test_empty_input_is_a_clear_error(tmp_path: Path, tiny_model: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images found"):
        extract_features(tmp_path / "empty", tmp_path / "db", _config(tiny_model))


def _interrupted_build(db: Path, settings: dict) -> Path:
    """A .partial/ folder as a killed build leaves it: a plan and one committed shard."""
    from similar_images._util import io as _io
    from similar_images.engines.shards import write_shard

    partial = db / ".partial"
    partial.mkdir(parents=True)
    _io.write_json(partial / "plan.json", {"settings": settings, "n": 1, "digest": "x"})
    (partial / "items.jsonl").write_text('"a"\n')
    write_shard(partial, 0, [0], np.ones((1, 4), dtype=np.float32), [], 4)
    return partial / "shard-000000.npy"


def test_interrupted_run_with_other_settings_is_refused(tmp_path: Path, synthetic_images: Path,
                                                        tiny_model: str) -> None:
    db = tmp_path / "db"
    shard = _interrupted_build(db, {"kind": "image", "model": {"name": "other"}, "shard_size": 1024})
    with pytest.raises(DatabaseError, match="other settings"):
        extract_features(synthetic_images, db, _config(tiny_model))
    assert shard.exists()  # nothing lost
    with pytest.raises(DatabaseError, match="interrupted"):
        Database.open(db)
    assert extract_features(synthetic_images, db, _config(tiny_model), force=True).extracted == 12


def test_interrupted_text_build_is_not_mixed_with_images(tmp_path: Path, synthetic_images: Path,
                                                         tiny_model: str) -> None:
    db = tmp_path / "db"
    shard = _interrupted_build(db, {"kind": "text", "model": {"name": "all-MiniLM-L6-v2"}, "shard_size": 2048})
    with pytest.raises(DatabaseError, match="interrupted build with other settings.*'kind': 'text'"):
        extract_features(synthetic_images, db, _config(tiny_model))
    assert shard.exists()  # nothing lost


def test_plan_without_committed_work_gives_way_to_new_settings(tmp_path: Path, synthetic_images: Path,
                                                               tiny_model: str) -> None:
    """A run that failed before committing anything (e.g. offline --weights imagenet) blocks no retry."""
    db = tmp_path / "db"
    (db / ".partial").mkdir(parents=True)
    from similar_images._util import io as _io

    _io.write_json(db / ".partial" / "plan.json", {"settings": {"kind": "image", "model": {"name": "other"}},
                                                   "n": 12, "digest": "x"})
    assert extract_features(synthetic_images, db, _config(tiny_model)).extracted == 12
    assert not (db / ".partial").exists()


def _cli(args: list[str]) -> list[str]:
    return [sys.executable, "-c", "from similar_images.cli import main; main()", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGINS), str(ROOT), env.get("PYTHONPATH", "")])
    env["SIMILAR_IMAGES_PLUGINS"] = "tiny_model"
    return env


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for i in range(240):
        make_image(images / f"{i:03d}.{'png' if i % 2 else 'jpg'}", seed=i)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    args = ["--model", "tiny", "--weights", "random", "--shard-size", "16", "--batch-size", "4", "--quiet"]

    reference = tmp_path / "reference"
    subprocess.run(_cli(["extract", str(images), str(reference), *args]), env=_env(), check=True, timeout=300)

    db = tmp_path / "db"
    kills = 0
    for wait_shards in (2, 5, 9):
        proc = subprocess.Popen(_cli(["extract", str(images), str(db), *args]), env=_env())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list((db / ".partial").glob("shard-*.json"))) >= wait_shards:
                break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 2, "the extraction finished before it could be killed; make it longer"
    assert not (db / "manifest.json").exists()
    done = len(list((db / ".partial").glob("shard-*.json")))
    assert 0 < done < 16

    result = subprocess.run(_cli(["extract", str(images), str(db), *args[:-1]]), env=_env(), check=True,
                            timeout=300, capture_output=True, text=True)
    assert "resumed after" in result.stdout
    ref, res = Database.open(reference), Database.open(db)
    assert res.items == ref.items and len(res.items) == 240
    assert res.failures == ref.failures and len(res.failures) == 1
    np.testing.assert_allclose(np.asarray(res.vectors), np.asarray(ref.vectors), atol=1e-6)
    assert not (db / ".partial").exists()
