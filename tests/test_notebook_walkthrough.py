"""The teaching walkthrough (notebooks/how_it_works.ipynb), executed headless in a real Jupyter kernel (nbclient)
on a real 800-photo database. Its run time is measured by benchmarks/bench_walkthrough.py, not here."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, execute_notebook

NOTEBOOK = ROOT / "notebooks" / "how_it_works.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

pytestmark = pytest.mark.slow

CHECK = """
import json
print('CHECK', json.dumps({
    'n': len(db), 'query': QUERY, 'near': near,
    'exact_top': db.search(QUERY, k=1, exact=True, exclude_query=True)[0].id,
    'results': results.ids, 'sizes': cost.sizes, 'points': list(points.shape), 'map_query': view.selected,
    'map_results': [r['id'] for r in view.results], 'map_expected': db.search(QUERY, k=view.k, exclude_query=True).ids,
    'pq_m': [p.m for p in pq_points], 'pq_recall': [p.recall for p in pq_points],
    'pq_error': [p.error for p in pq_points],
    'pq_code': len(pq.code), 'nlist': NLIST, 'cluster_total': int(clusters.sizes.sum()),
    'nprobe_recall': [p.recall for p in nprobe_points],
    'factories': sorted({p.factory for p in report.points}), 'own': own, 'n_vectors': report.n_vectors,
}))
"""


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def test_walkthrough_runs_on_800_real_photos(walkthrough_db: Path, mobilenet_weights: Path, tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    execute_notebook(nb, {"SIMILAR_IMAGES_DB": str(walkthrough_db), "SIMILAR_IMAGES_WEIGHTS": str(mobilenet_weights),
                          "WALKTHROUGH_QUERY": "-1", "SIMILAR_IMAGES_APP_LOG": str(tmp_path / "apps.log")},
                     NOTEBOOK.parent, timeout=600)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.get("output_type") == "error"]
    streams = [o["text"] for o in outputs if o.get("output_type") == "stream" and not o["text"].startswith("CHECK")]
    assert streams == [], streams  # no TensorFlow, Faiss, scikit-learn or tqdm output in any cell
    pictures = [o for o in outputs if "image/png" in o.get("data", {}) or WIDGET_VIEW in o.get("data", {})]
    assert len(pictures) >= 6
    sections = [c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert len(sections) >= 6
    # every section shows something: a picture, a widget or a measured sentence
    code_cells = [c for c in nb.cells[:-1] if c.cell_type == "code"]
    assert all(c.outputs for c in code_cells[1:]), [c.source for c in code_cells if not c.outputs]
    md = "\n".join(o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {}))
    assert "800 photos" in md and "mobilenetv2" in md and "1280-d" in md
    line = next(ln for o in outputs if o.get("output_type") == "stream" for ln in o["text"].splitlines()
                if ln.startswith("CHECK "))
    check = json.loads(line[len("CHECK "):])
    assert check["n"] == 800 and check["near"] == check["exact_top"] and check["results"][0] == check["near"]
    assert check["sizes"][-1] == 800 and check["points"] == [800, 2]
    assert check["map_query"] == check["query"] and check["map_results"] == check["map_expected"]
    assert check["pq_m"] == [4, 8, 16, 32, 64] and check["pq_code"] == 16
    assert check["pq_recall"][-1] > check["pq_recall"][0] and check["pq_error"][-1] < check["pq_error"][0]
    assert check["nlist"] == 28 and check["cluster_total"] == 800 and check["nprobe_recall"][-1] == 1.0
    assert check["own"] == "Flat" and "Flat" in check["factories"] and check["n_vectors"] == 800
    assert any(f.startswith("IVF28,") for f in check["factories"]) and "HNSW32" in check["factories"]
    # as slides (jupyter nbconvert --to slides): one slide per section and the title, the set-up cells left out
    from nbconvert import SlidesExporter

    nb.cells.pop()  # the check cell
    html, _ = SlidesExporter().from_notebook_node(nb)
    assert html.count("<section") >= 1 + len(sections) and "How image search works" in html
    assert "SIMILAR_IMAGES_DB" not in html and "open_database" not in html


def test_walkthrough_without_a_database_says_how_to_build_one(tmp_path: Path) -> None:
    from nbclient.exceptions import CellExecutionError

    missing = tmp_path / "no-db-here"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.raises(CellExecutionError):  # "Run All" stops at the cell that opens the database
        execute_notebook(nb, {"SIMILAR_IMAGES_DB": str(missing), "SIMILAR_IMAGES_APP_LOG": str(tmp_path / "apps.log")},
                         NOTEBOOK.parent)
    outputs = _outputs(nb)
    html = "\n".join(o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {}))
    assert f"No image database at {missing}" in html
    assert f"similar-images extract IMAGES {missing}" in html and f"similar-images build-index {missing}" in html
    # the message above is all the reader sees: no traceback, no error output, no later cell run
    assert not [o for o in outputs if o.get("output_type") in ("error", "stream")]
    assert "Traceback" not in json.dumps(outputs)
    assert [bool(c.get("outputs")) for c in nb.cells if c.cell_type == "code"].count(True) == 1
    assert not missing.exists()
