"""The text-similarity notebook, executed headless with a real Jupyter kernel (nbclient)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nbformat
import pytest
from conftest import execute_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "text_similarity.ipynb"


@pytest.fixture(scope="module")
def text_db_2k(assets: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 real tweets, real all-MiniLM-L6-v2 vectors, default index (Flat at this size)."""
    from similar_images.store import Database, TextBuildConfig, build_text_database

    with open(assets / "text" / "texts_20k.csv", encoding="utf-8", newline="") as fh:
        texts = [r["text"] for r in csv.DictReader(fh)][-2000:]
    db = tmp_path_factory.mktemp("nb") / "tweets-2k"
    build_text_database(texts, db, TextBuildConfig(verbose=False))
    Database.open(db).build_index()
    return db


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]


def test_committed_notebook_is_thin_and_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert "SIMILAR_TEXTS_DB" in code[0].source and "SIMILAR_TEXTS_K" in code[0].source
    assert sum(len(c.source.splitlines()) for c in code) <= 20
    assert [c.cell_type for c in nb.cells] == ["code", "code"]  # Voilà shows the app only: no markdown


@pytest.mark.slow
def test_notebook_runs_and_searches(text_db_2k: Path, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    query = "I really need a holiday"
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json\n"
        f"res = app.search({query!r})\n"
        "app.gallery.receive({'event': 'random'})\n"
        "print('RESULTS', json.dumps({'n': len(res), 'ranks': [m.rank for m in res], 'k': app.k,\n"
        "      'random_excludes_itself': app.results.query_id not in app.results.ids,\n"
        "      'status': app.gallery.status['timing']}))"
    ))
    execute_notebook(nb, {"SIMILAR_TEXTS_DB": str(text_db_2k), "SIMILAR_TEXTS_K": "6"}, tmp_path)
    outs = _outputs(nb)
    assert not [o for o in outs if o.output_type == "error"]
    views = [o for o in outs if o.output_type in ("display_data", "execute_result")
             and "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert views, "the app cell shows no widget"
    printed = "".join(o.get("text", "") for o in outs if o.output_type == "stream")
    data = json.loads(printed.split("RESULTS", 1)[1])
    assert data == {**data, "n": 6, "ranks": [1, 2, 3, 4, 5, 6], "k": 6, "random_excludes_itself": True}
    assert data["status"].startswith("Found in")
    streams = [o for o in outs if o.output_type == "stream" and "RESULTS" not in o.get("text", "")]
    assert streams == [], streams  # nothing but the app in the output area (no library log lines)


def test_notebook_without_database_shows_build_commands(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    missing = tmp_path / "no-db"
    execute_notebook(nb, {"SIMILAR_TEXTS_DB": str(missing)}, tmp_path)
    outs = _outputs(nb)
    assert not [o for o in outs if o.output_type == "error"]
    shown = json.dumps([o.get("data", {}) for o in outs])
    assert "similar-images text build" in shown and str(missing.resolve()) in shown
    assert "Traceback" not in shown
