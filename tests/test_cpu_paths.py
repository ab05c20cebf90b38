"""Defaults that hold on every CPU (issue 20): the ``SIMILAR_IMAGES_CPU`` override, ``auto``'s rule for small
collections, its figures measured once per machine and model, the calibration warning, OpenVINO's bf16 warning
and the quickstart's pass-through.

The tests about precision take the ``cpu`` fixture (conftest): each runs once as a CPU without native bf16 and
VNNI (``avx2``) and once as one with them (``bf16,vnni``), whatever this machine has.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import ROOT, make_image

from similar_images.cli import main
from similar_images.embed.backends import (
    CPU_ENV,
    Calibration,
    CpuCapabilities,
    ModelCache,
    RunnerFactory,
    cpu_capabilities,
    make_runner,
)
from similar_images.embed.backends.openvino import openvino_capabilities
from similar_images.errors import ConfigError
from similar_images.store import ExtractConfig, extract_features

pytestmark = pytest.mark.usefixtures("temporary_model_cache")


def _photos(folder: Path, n: int, seed: int = 0) -> Path:
    for i in range(n):
        make_image(folder / f"p{i:03d}.jpg", seed=seed + i, size=(40, 32))
    return folder


# ---------------------------------------------------------------- the override


def test_the_override_sets_what_the_cpu_runs(cpu: CpuCapabilities, monkeypatch: pytest.MonkeyPatch) -> None:
    claimed = os.environ[CPU_ENV]
    assert cpu.bf16 == cpu.vnni == (claimed == "bf16,vnni")
    assert cpu.source == f"{CPU_ENV}={claimed}" and cpu_capabilities() == cpu
    # OpenVINO's BF16, as this package reads it, follows the override both ways
    assert ("BF16" in openvino_capabilities()) == cpu.bf16
    monkeypatch.setenv(CPU_ENV, "none")
    assert not cpu_capabilities().bf16 and not cpu_capabilities().vnni
    monkeypatch.setenv(CPU_ENV, "bf16")
    assert cpu_capabilities().bf16 and not cpu_capabilities().vnni
    monkeypatch.setenv(CPU_ENV, "avx512")
    with pytest.raises(ConfigError, match=f"{CPU_ENV}='avx512': unknown capability 'avx512'"):
        cpu_capabilities()
    monkeypatch.delenv(CPU_ENV)
    assert cpu_capabilities().source in ("/proc/cpuinfo", "unknown")


def test_keras_auto_measures_only_where_bf16_runs(cpu: CpuCapabilities, tiny_model: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    calibration = Calibration(rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8), size=24)
    runner = make_runner(tiny_model, "random", "keras", "auto", calibration=calibration, cache_dir=tmp_path)
    choice = runner.choice
    if cpu.bf16:  # bf16 is measured against fp32 (emulated on a machine without it)
        assert choice.measured and choice.figures("bf16").status == "measured"
        assert choice.cpu["flags"] == ["bf16", "vnni"]
    else:
        assert not choice.measured and choice.reason == "no lower precision runs natively here"
        assert [(c.precision, c.status) for c in choice.candidates] == [("bf16", "unsupported")]
    assert runner.precision == choice.precision


# ---------------------------------------------------------------- auto never fails an extraction


def test_auto_never_fails_an_extraction_of_three_photos(cpu: CpuCapabilities, tiny_model: str, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Issue 20: with native bf16, 'precision auto needs at least 11 readable calibration images, got 3'."""
    photos = _photos(tmp_path / "three", 3)
    with caplog.at_level(logging.INFO, logger="similar_images"):
        summary = extract_features(photos, tmp_path / "db", ExtractConfig(model=tiny_model, weights="random",
                                                                         verbose=False))
    assert summary.extracted == 3 and summary.choice is not None
    choice = summary.choice
    assert choice.requested == "auto" and choice.precision == "fp32" and not choice.measured
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision auto")]
    assert len(lines) == 1 and choice.reason in lines[0]  # one line, saying why
    if cpu.bf16:
        assert choice.reason.startswith("3 images, fewer than 1200")
        assert "measuring would cost more than a lower precision can save" in choice.reason
    manifest = json.loads((tmp_path / "db" / "manifest.json").read_text())
    assert manifest["extraction"]["inference"]["precision"] == "fp32"
    # the CLI's summary says what ran and what choosing cost
    r = CliRunner().invoke(main, ["extract", str(photos), str(tmp_path / "db2"), "--model", tiny_model, "-w",
                                  "random", "-q"])
    assert r.exit_code == 0, r.output
    assert f"Precision: keras fp32 ({choice.reason}); not measured" in r.output


def test_auto_runs_fp32_when_too_few_sample_images_can_be_read(cpu: CpuCapabilities, tiny_model: str,
                                                               tmp_path: Path) -> None:
    images = [str(p) for p in sorted(_photos(tmp_path / "ok", 5).iterdir())]
    for i in range(40):
        (tmp_path / f"broken{i}.jpg").write_bytes(b"not a jpeg")
        images.append(str(tmp_path / f"broken{i}.jpg"))
    calibration = Calibration(images, size=45)
    runner = make_runner(tiny_model, "random", "keras", "auto", calibration=calibration, cache_dir=tmp_path)
    assert runner.precision == "fp32" and not runner.choice.measured
    if cpu.bf16:
        assert runner.choice.reason == ("5 readable calibration images, fewer than the 11 that comparing 10 "
                                        "neighbours needs")
        assert runner.choice.sample_size == 5


def test_a_collection_four_samples_large_is_measured(cpu: CpuCapabilities, tiny_model: str, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "photos", 48)
    summary = extract_features(photos, tmp_path / "db", ExtractConfig(model=tiny_model, weights="random",
                                                                     calibration_size=12, verbose=False))
    assert summary.choice is not None and summary.choice.measured == cpu.bf16
    if cpu.bf16:
        assert summary.choice.sample_size == 12 and summary.choice.figures("bf16").status == "measured"
    # one image fewer than 4 x 12: not measured
    (photos / "p047.jpg").unlink()
    summary = extract_features(photos, tmp_path / "db2", ExtractConfig(model=tiny_model, weights="random",
                                                                      calibration_size=12, verbose=False))
    assert not summary.choice.measured
    if cpu.bf16:
        assert summary.choice.reason.startswith("47 images, fewer than 48 (4 x the 12-image calibration sample)")


# ---------------------------------------------------------------- measured once per machine and model


def test_the_figures_are_measured_once_per_machine_and_model(tiny_model: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_ENV, "bf16,vnni")
    rng = np.random.default_rng(7)
    first = Calibration(rng.integers(0, 256, size=(24, 32, 32, 3), dtype=np.uint8), size=24)
    other = Calibration(rng.integers(0, 256, size=(30, 32, 32, 3), dtype=np.uint8), size=30)  # other images
    factory = RunnerFactory(tiny_model, "random", cache_dir=tmp_path)
    a = make_runner(tiny_model, "random", "keras", "auto", calibration=first, factory=factory).choice
    assert a.measured and not a.from_cache and a.seconds is not None and a.seconds > 0
    assert a.cost() == f"measured in {a.seconds:.1f} s"
    (record,) = (tmp_path / "measurements").iterdir()
    fields = json.loads(record.read_text())["fields"]
    assert fields["model"] == tiny_model and fields["cpu"]["flags"] == ["bf16", "vnni"]
    assert "keras" in fields["versions"] and fields["weights"] == {"random_seed": 0}
    assert "sample" not in fields
    b = make_runner(tiny_model, "random", "keras", "auto", calibration=other, cache_dir=tmp_path).choice
    assert b.from_cache and b.seconds == a.seconds and b.candidates == a.candidates  # nothing measured again
    assert b.cost() == f"read from the cache (measured in {a.seconds:.1f} s earlier)"
    # another CPU is another key: measured again
    monkeypatch.setenv(CPU_ENV, "bf16")
    c = make_runner(tiny_model, "random", "keras", "auto", calibration=other, cache_dir=tmp_path).choice
    assert c.measured and not c.from_cache
    assert len(list((tmp_path / "measurements").iterdir())) == 2
    assert ModelCache(tmp_path).root == tmp_path


def test_the_extract_summary_reports_the_measurement_then_the_cache(tiny_model: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_ENV, "bf16,vnni")
    photos = _photos(tmp_path / "photos", 44)
    args = ["--model", tiny_model, "-w", "random", "-q", "--calibration-size", "11"]
    r = CliRunner().invoke(main, ["extract", str(photos), str(tmp_path / "db1"), *args])
    assert r.exit_code == 0, r.output
    assert "Precision: keras " in r.output and "; measured in " in r.output
    r = CliRunner().invoke(main, ["extract", str(photos), str(tmp_path / "db2"), *args])
    assert r.exit_code == 0, r.output
    assert "; read from the cache (measured in " in r.output


# ---------------------------------------------------------------- the calibration warning


def test_the_calibration_warning_only_for_a_size_asked_for(tiny_model: str, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Issue 20: 'Calibration uses 256 images (fewer than the 300 asked for)' when nobody asked for 300."""
    photos = _photos(tmp_path / "photos", 20)
    config = {"model": tiny_model, "weights": "random", "backend": "openvino", "precision": "int8", "verbose": False}
    with caplog.at_level(logging.WARNING):
        extract_features(photos, tmp_path / "db1", ExtractConfig(**config))
    assert "fewer than" not in caplog.text
    manifest = json.loads((tmp_path / "db1" / "manifest.json").read_text())
    assert len(manifest["model"]["calibration"]) == 20  # all of them, up to the default 300
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        extract_features(photos, tmp_path / "db2", ExtractConfig(**config, calibration_size=300))
    assert "Calibration uses 20 images (fewer than the 300 asked for)" in caplog.text


# ---------------------------------------------------------------- OpenVINO's bf16 warning


def test_openvino_bfloat16_counts_as_bf16(tiny_model: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 20: 'it has no native bf16' while bf16 ran, since str(openvino.Type.bf16) is "<Type: 'bfloat16'>"."""
    import openvino as ov

    from similar_images.embed.backends.openvino import precision_name, runs_bf16

    assert "bfloat16" in str(ov.Type.bf16)  # what the old check looked for 'bf16' in
    assert runs_bf16(ov.Type.bf16) and runs_bf16(str(ov.Type.bf16)) and runs_bf16("bfloat16") and runs_bf16("bf16")
    assert not runs_bf16(ov.Type.f32) and precision_name(ov.Type.f32) == "f32"
    # a real runner warns exactly when OpenVINO does not run bf16
    with caplog.at_level(logging.WARNING):
        runner = RunnerFactory(tiny_model, "random", cache_dir=tmp_path).runner("openvino", "bf16")
    assert runner.inference_precision in ("bf16", "f32")
    assert ("no native bf16" in caplog.text) == (runner.inference_precision != "bf16")
    assert runner.info()["inference_precision"] == runner.inference_precision


# ---------------------------------------------------------------- the quickstart


@pytest.mark.slow
def test_the_quickstart_passes_backend_and_precision_to_extract(mobilenet_weights: Path, tmp_path: Path) -> None:
    """Issue 20: quickstart.sh dropped --backend and --precision. The real script, the real CLI; only pip is
    kept off the network (a `python` first on PATH answers `-m pip` and runs everything else)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\n[ "$1 $2" = "-m pip" ] && exit 0\nexec {sys.executable} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    cli = shutil.which("similar-images")
    assert cli is not None
    photos = _photos(tmp_path / "photos", 3)
    db = tmp_path / "db"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "JAVA_HOME": os.environ.get("JAVA_HOME", str(tmp_path))}
    out = subprocess.run(["bash", str(ROOT / "data_scripts" / "quickstart.sh"), "--images", str(photos), "--db",
                          str(db), "--model", "mobilenetv2", "--weights", str(mobilenet_weights), "--app", "none",
                          "--backend", "openvino", "--precision", "fp32"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    model = json.loads((db / "manifest.json").read_text())["model"]
    assert (model["backend"], model.get("precision", "fp32")) == ("openvino", "fp32")
