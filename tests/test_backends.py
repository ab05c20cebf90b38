"""Inference backends (issue 13): Keras and OpenVINO runners, the model cache, ``auto``, fast JPEG decoding,
and databases whose queries use the backend and precision they were built with.

Fast tests use the 16-d ``tiny`` test model; the ``slow`` ones run VGG16 and MobileNetV2 with real
ImageNet weights on real photos.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_image
from PIL import Image

from similar_images.cli import main
from similar_images.embed import ImageEmbedder, get_model_spec
from similar_images.embed.backends import (
    Calibration,
    CpuCapabilities,
    KerasRunner,
    ModelCache,
    OpenVINORunner,
    QuantizationSettings,
    Runner,
    RunnerFactory,
    cosine_to_reference,
    make_runner,
    topk_agreement,
)
from similar_images.embed.backends.auto import CandidateFigures, pick_precision
from similar_images.embed.backends.base import check_precision, parse_cpuinfo
from similar_images.embed.backends.openvino import runs_bf16
from similar_images.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ImageLoadError,
    SimilarImagesError,
)
from similar_images.sources import fastjpeg
from similar_images.sources.images import find_images, prepare_array
from similar_images.store import Database, ExtractConfig, extract_features

pytestmark = pytest.mark.usefixtures("temporary_model_cache")


# ---------------------------------------------------------------- pure logic


def test_parse_cpuinfo_finds_bf16_and_vnni() -> None:
    xeon = "model name\t: Intel Xeon Platinum 8480\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni amx_int8\n"
    caps = parse_cpuinfo(xeon)
    assert caps.bf16 and caps.vnni and caps.model == "Intel Xeon Platinum 8480"
    epyc = "model name\t: AMD EPYC\nflags\t\t: fpu avx avx2 fma sha_ni\n"
    caps = parse_cpuinfo(epyc)
    assert not caps.bf16 and not caps.vnni and caps.flags == ()


def test_precision_names() -> None:
    assert check_precision("FP32") == "fp32" and check_precision("bfloat16") == "bf16"
    with pytest.raises(ConfigError, match="choose one of"):
        check_precision("fp8")
    with pytest.raises(ConfigError):
        check_precision("auto", allow_auto=False)


def test_topk_agreement_and_cosine() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(60, 16))
    assert topk_agreement(ref, ref * 3.0) == 1.0  # scale does not change cosine neighbours
    noisy = ref + rng.normal(scale=0.3, size=ref.shape)
    shuffled = rng.permutation(ref)
    assert 0.0 < topk_agreement(ref, shuffled) < topk_agreement(ref, noisy) < 1.0
    mean, low = cosine_to_reference(ref, noisy)
    assert low <= mean < 1.0


def test_pick_precision_keeps_the_fastest_that_agrees() -> None:
    def figs(int8_agreement: float) -> list[CandidateFigures]:
        return [CandidateFigures("fp32", "measured", agreement=1.0, images_per_second=10.0, speedup=1.0),
                CandidateFigures("bf16", "unsupported", "no bf16"),
                CandidateFigures("int8", "measured", agreement=int8_agreement, images_per_second=30.0, speedup=3.0)]

    assert pick_precision(figs(0.995), 0.99)[0] == "int8"
    precision, reason = pick_precision(figs(0.98), 0.99)
    assert precision == "fp32" and "int8 agreement 0.980" in reason
    assert pick_precision(figs(1.0), 1.01)[0] == "fp32"  # a threshold nobody meets


# ---------------------------------------------------------------- model cache


def _write_model(folder: Path, payload: bytes = b"weights" * 1000) -> dict[str, str]:
    (folder / "model.xml").write_text("<net/>")
    (folder / "model.bin").write_bytes(payload)
    return {"note": "test"}


def test_cache_builds_once_then_reuses(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)
    fields = {"model": "m", "precision": "int8", "weights": {"sha256": "abc"}}
    calls = []

    def build(folder: Path) -> dict[str, str]:
        calls.append(folder)
        return _write_model(folder)

    entry, hit = cache.get_or_build(fields, build)
    assert not hit and entry.name.startswith("m-int8-") and (entry / "entry.json").exists()
    assert cache.metadata(entry)["note"] == "test" and cache.metadata(entry)["fields"] == fields
    again, hit = ModelCache(tmp_path).get_or_build(fields, build)
    assert hit and again == entry and len(calls) == 1
    other, hit = cache.get_or_build({**fields, "precision": "fp32"}, build)
    assert not hit and other != entry
    assert not [p for p in cache.models_dir.iterdir() if p.name.startswith(".")]  # no temporary folders left


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete file", "bad json"])
def test_cache_rebuilds_a_corrupt_entry(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = ModelCache(tmp_path)
    fields = {"model": "m", "precision": "fp32"}
    entry, _ = cache.get_or_build(fields, _write_model)
    weights = entry / "model.bin"
    if damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[10] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete file":
        weights.unlink()
    else:
        (entry / "entry.json").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        entry2, hit = cache.get_or_build(fields, _write_model)
    assert not hit and entry2 == entry and "corrupt" in caplog.text
    assert cache.verify(entry2) is None and weights.read_bytes() == b"weights" * 1000


def test_cache_keeps_nothing_of_a_failed_build(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path)

    def broken(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        cache.get_or_build({"model": "m", "precision": "fp32"}, broken)
    assert list(cache.models_dir.iterdir()) == []


def test_cache_location_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMILAR_IMAGES_CACHE", str(tmp_path / "envcache"))
    assert ModelCache().root == tmp_path / "envcache"
    assert ModelCache(tmp_path / "arg").root == tmp_path / "arg"


# ---------------------------------------------------------------- missing packages


def test_missing_openvino_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tiny_model: str) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails
    with pytest.raises(BackendUnavailableError, match="pip install openvino") as info:
        make_runner(tiny_model, "random", "openvino", "fp32")
    assert isinstance(info.value, SimilarImagesError) and isinstance(info.value, ImportError)


def test_missing_nncf_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tiny_model: str,
                                                tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "nncf", None)
    calibration = Calibration(np.zeros((4, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(BackendUnavailableError, match="pip install openvino nncf"):
        make_runner(tiny_model, "random", "openvino", "int8", calibration=calibration, cache_dir=tmp_path)


def test_int8_and_auto_need_calibration(tiny_model: str, tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="calibration"):
        make_runner(tiny_model, "random", "openvino", "auto", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="int8"):
        make_runner(tiny_model, "random", "keras", "int8")


# ---------------------------------------------------------------- tiny model, real runtimes


@pytest.fixture(scope="module")
def tiny_batch(tiny_model: str) -> np.ndarray:
    rng = np.random.default_rng(1)
    arrays = rng.integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)
    return get_model_spec(tiny_model).preprocess(arrays)


def test_openvino_matches_keras_on_the_tiny_model(tiny_model: str, tiny_batch: np.ndarray, tmp_path: Path) -> None:
    factory = RunnerFactory(tiny_model, "random", seed=3, cache_dir=tmp_path)
    keras_runner = make_runner(tiny_model, "random", "keras", "fp32", factory=factory)
    assert isinstance(keras_runner, KerasRunner) and isinstance(keras_runner, Runner)
    ref = keras_runner(tiny_batch)
    for hint in ("throughput", "latency"):
        ov_runner = make_runner(tiny_model, "random", "openvino", "fp32", seed=3, cache_dir=tmp_path, hint=hint)
        assert isinstance(ov_runner, OpenVINORunner) and ov_runner.precision == "fp32"
        assert ov_runner.info()["choice"]["requested"] == "fp32"
        out = ov_runner(tiny_batch)
        assert out.shape == (40, 16) and out.dtype == np.float32
        assert cosine_to_reference(ref, out)[1] >= 0.9999
        # several batches in flight, outputs in order, uneven last batch
        parts = [tiny_batch[i:i + 7] for i in range(0, 40, 7)]
        streamed = np.concatenate(list(ov_runner.run_batches(parts)))
        np.testing.assert_allclose(streamed, out, rtol=1e-5, atol=1e-6)
    streamed = np.concatenate(list(keras_runner.run_batches(iter(parts))))
    np.testing.assert_allclose(streamed, ref, rtol=1e-5, atol=1e-6)


def test_a_missing_precision_falls_back_with_a_log_line(cpu: CpuCapabilities, tiny_model: str,
                                                        tiny_batch: np.ndarray, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        runner = make_runner(tiny_model, "random", "keras", "bf16", cache_dir=tmp_path)
    if cpu.bf16:
        assert runner.precision == "bf16"
    else:
        assert runner.precision == "fp32" and "falling back to fp32" in caplog.text
        assert "fell back" in runner.choice.reason
    emulated = make_runner(tiny_model, "random", "keras", "bf16", emulate=True)
    assert emulated.precision == "bf16"
    ref = make_runner(tiny_model, "random", "keras", "fp32")(tiny_batch)
    assert cosine_to_reference(ref, emulated(tiny_batch))[0] >= 0.999


def test_second_run_reuses_the_cache_and_rebuilds_a_corrupt_one(tiny_model: str, tiny_batch: np.ndarray,
                                                                 tmp_path: Path) -> None:
    first = RunnerFactory(tiny_model, "random", seed=5, cache_dir=tmp_path)
    out1 = first.runner("openvino", "fp32")(tiny_batch)
    assert first.cache_hits == {"fp32": False}
    second = RunnerFactory(tiny_model, "random", seed=5, cache_dir=tmp_path)
    out2 = second.runner("openvino", "fp32")(tiny_batch)
    assert second.cache_hits == {"fp32": True}
    assert second._keras == {}  # a cache hit does not even build the Keras model
    np.testing.assert_array_equal(out1, out2)
    (entry,) = ModelCache(tmp_path).models_dir.iterdir()
    data = bytearray((entry / "model.bin").read_bytes())
    data[len(data) // 2] ^= 0x55
    (entry / "model.bin").write_bytes(bytes(data))
    third = RunnerFactory(tiny_model, "random", seed=5, cache_dir=tmp_path)
    out3 = third.runner("openvino", "fp32")(tiny_batch)
    assert third.cache_hits == {"fp32": False}
    np.testing.assert_array_equal(out1, out3)
    # other weights, other entry
    other = RunnerFactory(tiny_model, "random", seed=6, cache_dir=tmp_path)
    other.runner("openvino", "fp32")
    assert other.cache_hits == {"fp32": False} and len(list(ModelCache(tmp_path).models_dir.iterdir())) == 2


def test_auto_on_the_tiny_model(tiny_model: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    calibration = Calibration(rng.integers(0, 256, size=(48, 32, 32, 3), dtype=np.uint8), size=48, threshold=0.0,
                              quantization=QuantizationSettings(fast_bias_correction=True))
    runner = make_runner(tiny_model, "random", "openvino", "auto", calibration=calibration, cache_dir=tmp_path)
    choice = runner.choice
    assert choice.measured and not choice.from_cache and choice.sample_size == 48
    measured = {c.precision: c for c in choice.candidates if c.status == "measured"}
    assert {"fp32", "int8"} <= set(measured)
    fastest = max(measured.values(), key=lambda c: c.images_per_second)
    assert choice.precision == fastest.precision == runner.precision  # threshold 0: everything agrees
    strict = Calibration(calibration.images, size=48, threshold=1.01)
    runner = make_runner(tiny_model, "random", "openvino", "auto", calibration=strict, cache_dir=tmp_path)
    assert runner.precision == "fp32" and runner.choice.from_cache  # the same figures, re-decided
    assert runner.info()["choice"]["threshold"] == 1.01


# ---------------------------------------------------------------- fast JPEG decoding


def _photo(size: tuple[int, int] = (640, 427)) -> Image.Image:
    w, h = size
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    arr = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    arr[: h // 3, : w // 4] = (255, 0, 0)  # a red block top left shows the orientation
    return Image.fromarray(arr)


@pytest.mark.skipif(not fastjpeg.available(), reason="simplejpeg is not installed")
@pytest.mark.parametrize("orientation", range(1, 9))
def test_fast_jpeg_path_matches_pillow(tmp_path: Path, orientation: int) -> None:
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    _photo().save(path, exif=exif.tobytes(), quality=92)
    assert fastjpeg.load_scaled(path, (224, 224), 10**8) is not None
    fast = prepare_array(path, (224, 224), fast_jpeg=True).astype(int)
    slow = prepare_array(path, (224, 224)).astype(int)
    assert fast.shape == slow.shape == (224, 224, 3)
    assert np.abs(fast - slow).mean() < 3.0  # the same picture, the same way up


@pytest.mark.skipif(not fastjpeg.available(), reason="simplejpeg is not installed")
def test_fast_jpeg_path_leaves_errors_and_other_images_to_pillow(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    _photo().save(good, quality=90)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert fastjpeg.load_scaled(truncated, (224, 224), 10**8) is None
    with pytest.raises(ImageLoadError, match="truncated|corrupt"):
        prepare_array(truncated, (224, 224), fast_jpeg=True)
    with pytest.raises(ImageLoadError, match="too large"):
        prepare_array(good, (224, 224), max_pixels=1000, fast_jpeg=True)  # the decompression-bomb guard holds
    cmyk = tmp_path / "cmyk.jpg"
    _photo().convert("CMYK").save(cmyk)
    assert fastjpeg.load_scaled(cmyk, (224, 224), 10**8) is None
    assert prepare_array(cmyk, (224, 224), fast_jpeg=True).shape == (224, 224, 3)
    png = tmp_path / "a.png"
    _photo().save(png)
    assert fastjpeg.load_scaled(png, (224, 224), 10**8) is None
    gray = tmp_path / "gray.jpg"
    _photo().convert("L").save(gray)
    arr = prepare_array(gray, (224, 224), fast_jpeg=True)
    assert arr.shape == (224, 224, 3) and (arr[..., 0] == arr[..., 1]).all()




# ---------------------------------------------------------------- databases: queries use what the database used


@pytest.fixture()
def photo_folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(24):
        make_image(root / f"p{i:02d}.jpg", seed=100 + i, size=(48, 40))
    return root


def test_a_database_records_its_backend_and_its_queries_use_it(tiny_model: str, photo_folder: Path,
                                                               tmp_path: Path) -> None:
    db = tmp_path / "db"
    config = ExtractConfig(model=tiny_model, weights="random", backend="openvino", precision="int8",
                           calibration_size=16, verbose=False, batch_size=8)
    summary = extract_features(photo_folder, db, config)
    assert summary.extracted == 24
    manifest = json.loads((db / "manifest.json").read_text())
    model = manifest["model"]
    assert (model["backend"], model["precision"]) == ("openvino", "int8")
    assert len(model["calibration"]) == 16 and all(Path(p).exists() for p in model["calibration"])
    inference = manifest["extraction"]["inference"]
    assert inference["precision"] == "int8" and inference["requested_precision"] == "int8"
    database = Database.open(db)
    emb = database.embedder
    assert isinstance(emb, ImageEmbedder) and (emb.backend, emb.precision) == ("openvino", "int8")
    assert isinstance(emb.runner, OpenVINORunner) and emb.runner.precision == "int8"
    # the query of a stored image gives its stored vector: the same quantized model (from the cache)
    first = database.items[0]
    np.testing.assert_allclose(emb.embed([first])[0], database.vectors[0], atol=1e-5)
    assert database.search(first, k=1)[0].id == 0
    # another combination is refused, naming the recorded one ...
    with pytest.raises(ConfigError, match="built with openvino int8.*allow_backend_mismatch=True") as info:
        Database.open(db, backend="keras")
    assert (info.value.setting, info.value.expected) == ("allow_backend_mismatch", ("openvino", "int8"))
    with pytest.raises(ConfigError, match="openvino int8"):
        Database.open(db, precision="fp32")
    Database.open(db, backend="openvino", precision="int8")  # the same one, said explicitly, is fine
    # ... or allowed, explicitly, with a warning
    other = Database.open(db, backend="keras", precision="fp32", allow_backend_mismatch=True)
    assert isinstance(other.embedder.runner, KerasRunner)
    assert cosine_to_reference(database.vectors[:4], other.embedder.embed(database.items[:4]))[0] > 0.9
    # adding images embeds them with the recorded backend too
    make_image(tmp_path / "more" / "new.jpg", seed=999, size=(48, 40))
    added = database.add(tmp_path / "more")
    assert len(added.ids) == 1
    assert json.loads((db / "manifest.json").read_text())["model"]["precision"] == "int8"


@pytest.mark.skipif(not fastjpeg.available(), reason="simplejpeg is not installed")
def test_the_fast_decoder_is_recorded_and_used_by_queries(tiny_model: str, tmp_path: Path) -> None:
    root = tmp_path / "big"
    for i in range(6):
        make_image(root / f"b{i}.jpg", seed=200 + i, size=(300, 200))
    db = tmp_path / "db"
    extract_features(root, db, ExtractConfig(model=tiny_model, weights="random", decoder="fast", verbose=False))
    database = Database.open(db)
    assert database.manifest.model["decoder"] == "fast" and database.embedder.decoder == "fast"  # type: ignore
    np.testing.assert_allclose(database.embedder.embed(database.items[:3]), database.vectors[:3], atol=1e-6)
    with pytest.raises(ConfigError, match="Unknown decoder"):
        ExtractConfig(decoder="turbo")


def test_the_service_embeds_queries_with_the_recorded_backend(tiny_model: str, photo_folder: Path,
                                                             tmp_path: Path) -> None:
    from similar_images.service.config import ServeConfig
    from similar_images.service.logic import ServiceState

    db = tmp_path / "db"
    extract_features(photo_folder, db, ExtractConfig(model=tiny_model, weights="random", backend="openvino",
                                                     verbose=False))
    state = ServiceState.load(ServeConfig(db=db, warmup=True, batch_queries=False))
    assert isinstance(state.db.embedder.runner, OpenVINORunner)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="built with openvino fp32"):
        ServiceState.load(ServeConfig(db=db, backend="keras"))
    state = ServiceState.load(ServeConfig(db=db, backend="keras", allow_backend_mismatch=True, warmup=False))
    assert isinstance(state.db.embedder.runner, KerasRunner)  # type: ignore[attr-defined]


def test_auto_records_its_choice_and_figures(cpu: CpuCapabilities, tiny_model: str, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for i in range(48):  # auto measures a collection of at least 4 calibration samples
        make_image(photos / f"p{i:02d}.jpg", seed=200 + i, size=(48, 40))
    db = tmp_path / "db"
    config = ExtractConfig(model=tiny_model, weights="random", backend="openvino", precision="auto",
                           calibration_size=12, agreement=1.01, verbose=False)
    extract_features(photos, db, config)
    manifest = json.loads((db / "manifest.json").read_text())
    choice = manifest["extraction"]["inference"]["choice"]
    assert choice["requested"] == "auto" and choice["threshold"] == 1.01 and choice["sample_size"] == 12
    assert choice["measured"] and choice["seconds"] > 0
    measured = {c["precision"]: c for c in choice["candidates"] if c["status"] == "measured"}
    assert {"fp32", "int8"} <= set(measured) and 0.0 <= measured["int8"]["agreement"] <= 1.0
    assert ("bf16" in measured) == cpu.bf16  # OpenVINO's BF16 follows the CPU
    # nothing reaches agreement 1.01: fp32 is kept and recorded (the default, so not written in "model")
    assert choice["precision"] == "fp32" and "no lower precision" in choice["reason"]
    assert manifest["model"].get("precision", "fp32") == "fp32"
    assert Database.open(db).embedder.precision == "fp32"


def test_the_default_auto_keeps_keras_fp32_at_once_without_a_lower_native_precision_or_enough_images(
        cpu: CpuCapabilities, tiny_model: str, photo_folder: Path, tmp_path: Path) -> None:
    extract_features(photo_folder, tmp_path / "db", ExtractConfig(model=tiny_model, weights="random", verbose=False))
    manifest = json.loads((tmp_path / "db" / "manifest.json").read_text())
    inference = manifest["extraction"]["inference"]
    assert inference["requested_precision"] == "auto" and inference["precision"] == "fp32"
    choice = inference["choice"]
    # no sample decoded, no second model run, and the reason says why
    assert not choice["measured"] and choice["sample_size"] is None
    if cpu.bf16:  # 24 images: measuring would cost more than bf16 could save
        assert choice["reason"].startswith("24 images, fewer than 1200 (4 x the 300-image calibration sample)")
        assert choice["candidates"] == []
    else:  # nothing to compare fp32 with
        assert choice["reason"] == "no lower precision runs natively here"
        assert [(c["precision"], c["status"]) for c in choice["candidates"]] == [("bf16", "unsupported")]
    assert Database.open(tmp_path / "db").embedder.precision == "fp32"


def test_keras_bf16_without_native_support_is_recorded_as_fp32(cpu: CpuCapabilities, tiny_model: str,
                                                               photo_folder: Path, tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        extract_features(photo_folder, tmp_path / "db",
                         ExtractConfig(model=tiny_model, weights="random", precision="bf16", verbose=False))
    manifest = json.loads((tmp_path / "db" / "manifest.json").read_text())
    assert manifest["extraction"]["inference"]["requested_precision"] == "bf16"
    if cpu.bf16:  # what runs is recorded, and the database's queries run it too
        assert "falling back" not in caplog.text and manifest["model"]["precision"] == "bf16"
        assert Database.open(tmp_path / "db").embedder.precision == "bf16"
        return
    assert "falling back to fp32" in caplog.text
    assert manifest["model"].get("precision", "fp32") == "fp32"


def test_cli_backend_options(tiny_model: str, photo_folder: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "db"
    runner = CliRunner()
    r = runner.invoke(main, ["extract", str(photo_folder), str(db), "--model", tiny_model, "-w", "random", "-q",
                             "--backend", "openvino", "--precision", "fp32"])
    assert r.exit_code == 0, r.output
    assert json.loads((db / "manifest.json").read_text())["model"]["backend"] == "openvino"
    query = str(photo_folder / "p03.jpg")
    r = runner.invoke(main, ["search", str(db), query, "-k", "1", "--exact", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["results"][0]["path"].endswith("p03.jpg")
    r = runner.invoke(main, ["search", str(db), query, "--backend", "keras"])
    assert r.exit_code != 0 and "built with openvino fp32" in r.output
    r = runner.invoke(main, ["search", str(db), query, "--exact", "--backend", "keras", "--allow-backend-mismatch"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["add", str(db), str(photo_folder), "--precision", "int8", "-q"])
    assert r.exit_code != 0 and "built with openvino fp32" in r.output
    r = runner.invoke(main, ["extract", str(photo_folder), str(tmp_path / "db2"), "--model", tiny_model, "-w",
                             "random", "-q", "--precision", "int8"])
    assert r.exit_code != 0 and "for int8 use backend 'openvino'" in r.output
    monkeypatch.setitem(sys.modules, "openvino", None)
    r = runner.invoke(main, ["extract", str(photo_folder), str(tmp_path / "db3"), "--model", tiny_model, "-w",
                             "random", "-q", "--backend", "openvino"])
    assert r.exit_code != 0 and "pip install openvino nncf" in r.output


# ---------------------------------------------------------------- real weights (slow)


@pytest.fixture(scope="module")
def flower_sample(assets: Path) -> list[Path]:
    photos = find_images(assets / "images" / "flowers5")
    return [photos[i] for i in np.random.default_rng(0).choice(len(photos), 96, replace=False)]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vgg16-avg", "mobilenetv2"])
def test_every_backend_and_precision_close_to_keras_fp32(model: str, vgg_weights: Path, mobilenet_weights: Path,
                                                         flower_sample: list[Path], tmp_path: Path) -> None:
    weights = str(vgg_weights if model == "vgg16-avg" else mobilenet_weights)
    spec = get_model_spec(model)
    calibration = Calibration(flower_sample, size=64)
    x = spec.preprocess(calibration.arrays(spec.input_size))
    factory = RunnerFactory(spec, weights, cache_dir=tmp_path, emulate=True)
    ref = make_runner(spec, weights, "keras", "fp32", factory=factory)(x)
    ov32 = make_runner(spec, weights, "openvino", "fp32", factory=factory)
    assert cosine_to_reference(ref, ov32(x))[1] >= 0.999
    # bf16: native where the CPU has it (else OpenVINO falls back to fp32, with a log line); Keras emulates
    ov16 = make_runner(spec, weights, "openvino", "bf16", factory=factory)
    # MobileNetV2 loses more in bf16: 0.99599 mean cosine measured by OpenVINO with native bf16 (AVX512_BF16),
    # 0.996 by Keras' emulated bf16 below; 0.99 leaves room for other bf16 hardware (AMX), and auto measures the
    # agreement rather than assuming it. Where OpenVINO runs fp32 (no native bf16) the fp32 bound holds.
    bound16 = 0.999 if model == "vgg16-avg" or not runs_bf16(ov16.inference_precision) else 0.99
    assert cosine_to_reference(ref, ov16(x))[0] >= bound16
    keras16 = make_runner(spec, weights, "keras", "bf16", factory=factory)
    assert keras16.precision == "bf16"
    mean16 = cosine_to_reference(ref[:16], keras16(x[:16]))[0]
    if model == "vgg16-avg":
        assert mean16 >= 0.999
    else:  # MobileNetV2 loses more in bf16 (0.996 measured, see above)
        assert mean16 >= 0.99
    # int8: the agreement check (what auto decides on), measured on held-out images
    int8 = make_runner(spec, weights, "openvino", "int8", calibration=calibration, factory=factory)
    assert int8.precision == "int8" and factory.cache_hits["int8"] is False
    mean8, _ = cosine_to_reference(ref, int8(x))
    agreement = topk_agreement(ref, int8(x))
    assert mean8 >= (0.995 if model == "vgg16-avg" else 0.95)
    assert agreement >= (0.8 if model == "vgg16-avg" else 0.5)


def _fastest_passing(candidates: list[CandidateFigures], threshold: float) -> str:
    ok = [c for c in candidates if c.status == "measured" and (c.precision == "fp32" or c.agreement >= threshold)]
    return max(ok, key=lambda c: c.images_per_second).precision


@pytest.mark.slow
def test_auto_picks_int8_only_when_its_agreement_holds(cpu: CpuCapabilities, vgg_weights: Path,
                                                       flower_sample: list[Path], tmp_path: Path) -> None:
    spec = get_model_spec("vgg16-avg")
    images = flower_sample[:48]
    lenient = make_runner(spec, vgg_weights, "openvino", "auto", cache_dir=tmp_path,
                          calibration=Calibration(images, size=48, threshold=0.5))
    choice = lenient.choice
    int8 = choice.figures("int8")
    assert int8 is not None and int8.status == "measured" and int8.agreement >= 0.5 and int8.passed
    assert (choice.figures("bf16").status == "measured") == cpu.bf16
    # the fastest that agrees: int8 here, or bf16 where it runs natively and is faster
    assert choice.precision == lenient.precision == _fastest_passing(choice.candidates, 0.5)
    strict = make_runner(spec, vgg_weights, "openvino", "auto", cache_dir=tmp_path,
                         calibration=Calibration(images, size=48, threshold=1.01))
    assert strict.precision == "fp32" and "no lower precision reached agreement 1.01" in strict.choice.reason
    assert not strict.choice.figures("int8").passed
    default = make_runner(spec, vgg_weights, "openvino", "auto", cache_dir=tmp_path,
                          calibration=Calibration(images, size=48))
    assert default.choice.from_cache and default.precision == _fastest_passing(choice.candidates, 0.99)
