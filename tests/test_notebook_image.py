"""The image-search notebook, executed headless in a real Jupyter kernel (nbclient)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT
from nbclient import NotebookClient

NOTEBOOK = ROOT / "notebooks" / "similar_images.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.slow


def _execute(nb: nbformat.NotebookNode, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> nbformat.NotebookNode:
    for name in ("SIMILAR_IMAGES_DB", "SIMILAR_IMAGES_K", "SIMILAR_IMAGES_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
    client = NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def _text(nb: nbformat.NotebookNode) -> str:
    parts = []
    for out in _outputs(nb):
        if out.get("output_type") == "stream":
            parts.append(out["text"])
        for mime in ("text/plain", "text/html"):
            if mime in out.get("data", {}):
                parts.append(out["data"][mime])
    return "\n".join(parts)


def test_committed_notebook_is_clean_and_parameterised() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    for name in ("SIMILAR_IMAGES_DB", "SIMILAR_IMAGES_K", "SIMILAR_IMAGES_WEIGHTS", '"data/coco-db"'):
        assert name in code[0].source
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "clear the outputs"
    assert "widgets" not in nb.metadata  # no saved widget state either
    assert [c.cell_type for c in nb.cells] == ["code", "code"]  # Voilà shows the app only
    assert sum(len(c.source.splitlines()) for c in code) < 25  # the app lives in the package


def test_notebook_runs_and_searches_in_a_real_kernel(small_db: Path, mobilenet_weights: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # A check appended to an in-memory copy: drive the app the notebook built, in the same kernel.
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json\n"
        "r = app.search_random()\n"
        "u = app.search_path(app.db.items[r.query_id])  # runs the model in the kernel\n"
        "print('CHECK', json.dumps({'k': K, 'n': len(r), 'grid': len(app.gallery.results), 'ids': r.ids,\n"
        "      'query': r.query_id, 'scores': r.scores, 'u_top': u[0].id, 'u_score': u[0].score,\n"
        "      'msg': app.message}))"
    ))
    _execute(nb, monkeypatch, {"SIMILAR_IMAGES_DB": str(small_db), "SIMILAR_IMAGES_K": "6",
                               "SIMILAR_IMAGES_WEIGHTS": str(mobilenet_weights)})
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    app_outputs = nb.cells[1].outputs
    assert any(WIDGET_VIEW in o.get("data", {}) for o in app_outputs), app_outputs
    line = next(ln for ln in _text(nb).splitlines() if ln.startswith("CHECK "))
    check = json.loads(line[len("CHECK "):])
    assert check["k"] == 6 and check["n"] == 6 and check["grid"] == 6
    assert check["query"] not in check["ids"] and check["msg"] == ""  # the k most similar OTHER images
    streams = [o for o in outputs if o.get("output_type") == "stream" and not o["text"].startswith("CHECK")]
    assert streams == [], streams  # the model loaded and ran: still nothing but the app in the output area
    assert check["scores"] == sorted(check["scores"], reverse=True)
    assert check["u_top"] == check["query"] and check["u_score"] > 0.99


def test_notebook_without_a_database_shows_the_build_commands(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-db-here"
    nb = _execute(nbformat.read(NOTEBOOK, as_version=4), monkeypatch, {"SIMILAR_IMAGES_DB": str(missing)})
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    html_out = "\n".join(o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}))
    assert f"similar-images extract IMAGES {missing}" in html_out
    assert f"similar-images build-index {missing}" in html_out
    assert "Traceback" not in _text(nb)
    assert not missing.exists()
