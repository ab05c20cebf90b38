"""A fresh machine: README's two commands, the tests without this workplace's assets folder, and the browser
test's instructions (issue 12, points 16 to 18)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MOBILENET_FILE, ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_the_quickstart_installs_what_the_test_command_needs() -> None:
    """Point 16: after 'bash data_scripts/quickstart.sh', 'python -m pytest -ra' failed: pytest was not installed,
    since the quickstart installed only requirements.txt."""
    block = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bash data_scripts/quickstart.sh", "python -m pytest -ra"], commands
    script = (ROOT / "data_scripts" / "quickstart.sh").read_text()
    installs = [line for line in script.splitlines() if line.strip().startswith("python -m pip install")]
    files = {f for line in installs for f in re.findall(r"-r (\S+)", line)}
    assert {"requirements.txt", "requirements-dev.txt"} <= files, installs
    dev = _requirement_names(ROOT / "requirements-dev.txt")
    assert {"pytest", "nbclient", "ipykernel", "httpx", "playwright"} <= dev
    # what CI installs for the same test command, the quickstart installs too
    ci = (ROOT / ".ci" / "run").read_text()
    assert set(re.findall(r"-r (\S+)", ci)) <= files


def test_the_readme_says_how_to_install_chromium_for_the_browser_test() -> None:
    """Point 18: without chromium the browser test is skipped with a message; README must say how to install it,
    as .ci/run does."""
    assert "apt-get install" in (ROOT / ".ci" / "run").read_text() and "chromium" in (ROOT / ".ci" / "run").read_text()
    assert "sudo apt-get install chromium" in README.split("## Quick start", 1)[1].split("## How it works", 1)[0]
    assert "apt-get install chromium" in (ROOT / "tests" / "test_browser.py").read_text()  # the skip message


def _pytest(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "SIMILAR_IMAGES_ASSETS", "SIMILAR_IMAGES_COCO",
                                                           "KERAS_HOME")}
    return subprocess.run([sys.executable, "-m", "pytest", "-ra", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_without_assets_or_downloads_only_what_needs_them_is_skipped_with_the_reason(tmp_path: Path) -> None:
    """Point 17: outside this workplace there is no ../shared/assets. With neither the assets nor the quickstart's
    downloads, the tests that need real photos or weights are skipped, each with its reason, and the others run."""
    (tmp_path / "keras").mkdir()
    run = _pytest(["tests/test_duplicates.py::test_edited_copy_rejects_unknown_edit",
                   "tests/test_features.py::test_fc2_with_conv_only_weights_says_what_to_do",
                   "tests/test_text.py::test_read_texts_skips_empty_nan_and_duplicates"],
                  {"SIMILAR_IMAGES_ASSETS": str(tmp_path / "no-assets"), "SIMILAR_IMAGES_COCO": str(tmp_path / "none"),
                   "KERAS_HOME": str(tmp_path / "keras")})
    out = run.stdout
    assert run.returncode == 0, out[-3000:]
    assert "1 passed, 2 skipped" in out, out[-3000:]
    assert re.search(r"SKIPPED .*needs real photos \(at least 64 COCO photos in .*none", out), out[-3000:]
    assert re.search(r"SKIPPED .*needs VGG16 ImageNet weights .*quickstart", out), out[-3000:]
    assert "offline assets: not found" in out  # the header says where the tests look


@pytest.mark.slow
def test_the_quickstarts_photos_and_keras_cached_weights_stand_in_for_the_assets(tmp_path: Path,
                                                                                 coco_dir: Path,
                                                                                 mobilenet_weights: Path) -> None:
    """Point 17: after the quickstart a user has the COCO photos (data/coco) and Keras' cached ImageNet weights;
    the tests use them when the assets folder is absent."""
    download = tmp_path / "coco" / "val2014"
    download.mkdir(parents=True)
    for photo in sorted(coco_dir.rglob("*.jpg"))[:80]:
        (download / photo.name).symlink_to(photo.resolve())
    models = tmp_path / "keras" / "models"
    models.mkdir(parents=True)
    (models / MOBILENET_FILE).symlink_to(mobilenet_weights.resolve())
    run = _pytest(["tests/test_duplicates.py::test_edited_copy_rejects_unknown_edit",
                   "tests/test_database.py::test_copy_of_small_db_is_searchable"],
                  {"SIMILAR_IMAGES_ASSETS": str(tmp_path / "no-assets"), "SIMILAR_IMAGES_COCO": str(tmp_path / "coco"),
                   "KERAS_HOME": str(tmp_path / "keras")})
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout[-3000:]
    assert "SKIPPED" not in run.stdout
