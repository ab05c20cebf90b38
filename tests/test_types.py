"""The package's types: few ``Any``, mypy clean at the strictness README states, ``py.typed`` shipped, and the
manifest's free-form sections read through typed accessors."""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tokenize
from collections import Counter
from pathlib import Path

import pytest

from similar_images.store.manifest import Counts, Manifest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "similar_images"

#: The most ``Any`` uses the package may have (issue 22: there were 396, then 446 counted this way).
MAX_ANY = 150


def any_uses(source: str) -> int:
    """``Any`` names used in code: annotations, aliases, casts (not its import, comments or docstrings)."""
    count = 0
    in_import = False
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.string in ("import", "from") and not in_import:
            in_import = tok.line.lstrip().startswith(("import ", "from "))
        elif tok.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
            in_import = False
        elif tok.type == tokenize.NAME and tok.string == "Any" and not in_import:
            count += 1
        elif tok.type == tokenize.STRING and not tok.string.lstrip("rbuRBU").startswith(('"""', "'''")):
            # a quoted annotation ("dict[str, Any]"), not a docstring
            try:
                tree = ast.parse(ast.literal_eval(tok.string), mode="eval")
            except (SyntaxError, ValueError):
                continue
            count += sum(isinstance(n, ast.Name) and n.id == "Any" for n in ast.walk(tree))
    return count


def any_per_file() -> Counter[str]:
    return Counter({str(p.relative_to(ROOT)): n for p in sorted(PACKAGE.rglob("*.py"))
                    if (n := any_uses(p.read_text(encoding="utf-8")))})


def test_any_counter_counts_uses_not_imports_comments_or_docstrings() -> None:
    src = ('"""Any docstring."""\nfrom typing import Any, cast\nimport typing\n# Any comment\n'
           'x: Any = cast("dict[str, Any]", {})\ndef f(a: typing.Any) -> list[Any]: ...\ns = "Any text"\n')
    assert any_uses(src) == 4


def test_the_package_uses_any_at_most_150_times() -> None:
    per_file = any_per_file()
    total = sum(per_file.values())
    top = ", ".join(f"{f} {n}" for f, n in per_file.most_common(8))
    assert total <= MAX_ANY, (f"{total} uses of Any in similar_images (at most {MAX_ANY}); name the type instead "
                              f"(similar_images._util.types, index.types.FaissIndex, search.Query). Most: {top}")


def _toml_section(name: str) -> str:
    """The text of one ``[name]`` table of pyproject.toml (tomllib is Python 3.11+; the package supports 3.10)."""
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(rf"^\[{re.escape(name)}\]\n(.*?)(?=^\[)", text + "\n[", flags=re.M | re.S)
    assert match, f"pyproject.toml has no [{name}]"
    return match.group(1)


def test_py_typed_is_shipped() -> None:
    assert (PACKAGE / "py.typed").is_file()
    assert re.search(r'^"similar_images" = \["py.typed"\]', _toml_section("tool.setuptools.package-data"), flags=re.M)


def test_mypy_is_configured_at_the_stated_strictness() -> None:
    mypy = _toml_section("tool.mypy")
    for flag in ("check_untyped_defs", "disallow_untyped_defs", "disallow_incomplete_defs", "no_implicit_optional",
                 "strict_equality", "warn_unused_ignores", "warn_redundant_casts"):
        assert re.search(rf"^{flag} = true$", mypy, flags=re.M), flag
        assert flag in (ROOT / "README.md").read_text(), f"README's Development section names {flag}"
    assert "mypy similar_images" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow  # about 45 s without mypy's cache on two busy cores; CI runs the same command before the tests
def test_mypy_finds_no_error() -> None:
    pytest.importorskip("mypy")
    result = subprocess.run([sys.executable, "-m", "mypy", "similar_images"], cwd=ROOT, capture_output=True,
                            text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout


# --------------------------------------------------------------------------- the manifest's sections
def _manifest(**extra: object) -> Manifest:
    return Manifest(kind="image", model={"name": "m", "dim": 4}, files={"vectors": "v.npy", "items": "i.txt"},
                    counts=Counts(items=3), extra=dict(extra))


def test_manifest_sections_have_typed_accessors() -> None:
    choice = {"candidates": [{"precision": "int8", "agreement": 0.97}]}
    m = _manifest(build={"plan_digest": "abc", "shards_ready": 5}, extraction={"inference": {"choice": choice}},
                  text_build={"backend": "onnx"})
    assert m.build_plan_digest == "abc"
    assert m.shards_ready == 5
    assert m.precision_choice == choice
    assert m.extraction["inference"]["choice"] == choice
    assert m.text_build == {"backend": "onnx"}
    # what they read survives the JSON form, and the sections travel unchanged
    again = Manifest.from_dict(m.to_dict())
    assert (again.build_plan_digest, again.shards_ready, again.precision_choice) == ("abc", 5, choice)


def test_manifest_accessors_tolerate_missing_or_odd_sections() -> None:
    for m in (_manifest(), _manifest(build="not a section", extraction=[1, 2], text_build=None),
              _manifest(build={}, extraction={"inference": "fp32"})):
        assert m.build_plan_digest is None
        assert m.shards_ready == 0
        assert m.precision_choice == {}
        assert m.extraction == {} or m.extraction == {"inference": "fp32"}
        assert m.text_build == {}


def test_no_code_reaches_into_the_manifest_extra() -> None:
    """Readers use the typed accessors; only the manifest module itself touches ``extra``'s sections."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "manifest.py" and path.parent.name == "store":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            target = node.value if isinstance(node, ast.Subscript) else (
                node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "setdefault", "pop") else None)
            if isinstance(target, ast.Attribute) and target.attr == "extra" \
                    and "manifest" in ast.unparse(target.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "read the section through a Manifest accessor:\n" + "\n".join(offenders)
