"""API documentation as one self-contained HTML page, rendered from an OpenAPI description.

FastAPI's own ``/docs`` (Swagger UI) and ``/redoc`` pages load their scripts
and styles from a CDN, so on a machine without internet access they stay
blank. :func:`render_api_docs` turns the OpenAPI description (``app.openapi()``)
into a plain HTML page instead: every path and method with its summary and
description, parameters, request body media types and responses, then the
schemas they refer to. It has an inline style sheet and no script, image, font
or link to another host; the only links are anchors in the page and the
machine-readable description (``/openapi.json``).

Example:
    >>> page = render_api_docs({"openapi": "3.1.0", "info": {"title": "demo", "version": "1"},
    ...                         "paths": {"/ping": {"get": {"summary": "Ping", "responses": {}}}}})
    >>> "<code>/ping</code>" in page and "GET" in page
    True
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterable

from .._util.types import JSON

__all__ = ["render_api_docs", "HTTP_METHODS"]

#: The operations of an OpenAPI path item, in the order they are shown.
HTTP_METHODS = ("get", "post", "put", "patch", "delete", "head", "options", "trace")

_REF_PREFIX = "#/components/schemas/"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 60rem;
       padding: 1rem 1.5rem 3rem; color: #1f2328; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; padding-bottom: 0.3rem; }
h3 { font-size: 1.25rem; margin-top: 2rem; }
h4 { margin: 1.2rem 0 0.4rem; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 0.6rem 0.8rem; overflow-x: auto; border-radius: 6px; }
table { border-collapse: collapse; width: 100%; margin: 0.3rem 0 0.8rem; }
th, td { border: 1px solid #d0d7de; padding: 0.3rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.op { border: 1px solid #d0d7de; border-radius: 6px; padding: 0 1rem 0.6rem; margin: 1rem 0; }
.method { display: inline-block; min-width: 4.2rem; text-align: center; border-radius: 4px; padding: 0.1rem 0.4rem;
          margin-right: 0.5rem; color: #fff; background: #57606a; font-size: 0.85em; font-weight: 600; }
.get { background: #0969da; } .post { background: #1a7f37; } .put, .patch { background: #9a6700; }
.delete { background: #cf222e; }
.muted { color: #57606a; }
nav li { margin: 0.15rem 0; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _inline(text: str) -> str:
    """Escape text and turn Markdown ``code`` spans into ``<code>`` (no links: nothing leaves the page)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", _esc(text))


def _markdown(text: str | None) -> str:
    """A small Markdown subset: paragraphs, ``*``/``-`` bullet lists and ``code`` spans."""
    if not text:
        return ""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        if all(line[:2] in ("* ", "- ") for line in lines):
            out.append("<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out)


def _anchor(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-")


def _schema_anchor(name: str) -> str:
    return _anchor("schema", name)


def _type(schema: JSON | None) -> str:
    """A one-line HTML description of a JSON schema's type (references link to the schemas section)."""
    if not schema:
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix(_REF_PREFIX)
        return f'<a href="#{_schema_anchor(name)}">{_esc(name)}</a>'
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return " or ".join(_type(s) for s in schema[key])
    if "allOf" in schema:
        return " and ".join(_type(s) for s in schema["allOf"])
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_esc(json.dumps(v))}</code>" for v in schema["enum"])
    if "const" in schema:
        return f"<code>{_esc(json.dumps(schema['const']))}</code>"
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        text = " or ".join(_esc(k) for k in kind)
    elif kind == "array":
        text = f"array of {_type(schema.get('items'))}"
    else:
        text = _esc(kind)
    if "format" in schema:
        text += f" ({_esc(schema['format'])})"
    bounds = [f"&ge; {_esc(schema['minimum'])}" if "minimum" in schema else "",
              f"&le; {_esc(schema['maximum'])}" if "maximum" in schema else ""]
    bounds = [b for b in bounds if b]
    return text + (f", {', '.join(bounds)}" if bounds else "")


def _table(headers: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    """An HTML table; cells are HTML already (escape them before)."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _properties(schema: JSON) -> str:
    """The table of an object schema's properties, or its type when it has none."""
    props: JSON = schema.get("properties") or {}
    if not props:
        return f"<p>{_type(schema)}</p>"
    required = set(schema.get("required", ()))
    rows = [(f"<code>{_esc(name)}</code>", _type(sub), "yes" if name in required else "no",
             _inline(sub.get("description", ""))) for name, sub in props.items()]
    return _table(("Field", "Type", "Required", "Description"), rows)


def _parameters(params: list[JSON]) -> str:
    if not params:
        return ""
    rows = []
    for p in params:
        schema = p.get("schema") or {}
        default = f"<code>{_esc(json.dumps(schema['default']))}</code>" if "default" in schema else ""
        rows.append((f"<code>{_esc(p.get('name', '?'))}</code>", _esc(p.get("in", "")), _type(schema),
                     "yes" if p.get("required") else "no", default,
                     _inline(p.get("description") or schema.get("description", ""))))
    return "<h4>Parameters</h4>" + _table(("Name", "In", "Type", "Required", "Default", "Description"), rows)


def _request_body(body: JSON | None) -> str:
    if not body:
        return ""
    parts = ["<h4>Request body" + (" (required)" if body.get("required") else "") + "</h4>",
             _markdown(body.get("description"))]
    for media, content in (body.get("content") or {}).items():
        parts.append(f"<p>Media type <code>{_esc(media)}</code></p>")
        schema = content.get("schema") or {}
        if schema:
            parts.append(_properties(schema))
        if "example" in content:
            parts.append(f"<p class=\"muted\">Example</p><pre>{_esc(json.dumps(content['example'], indent=2))}</pre>")
    return "\n".join(p for p in parts if p)


def _responses(responses: JSON) -> str:
    if not responses:
        return ""
    rows = []
    for status, resp in responses.items():
        media = [f"<code>{_esc(m)}</code>" + (f": {_type(c.get('schema'))}" if c.get("schema") else "")
                 for m, c in (resp.get("content") or {}).items()]
        rows.append((f"<code>{_esc(status)}</code>", _inline(resp.get("description", "")), "<br>".join(media)))
    return "<h4>Responses</h4>" + _table(("Status", "Description", "Media types"), rows)


def _operations(spec: JSON) -> list[tuple[str, str, JSON, list[JSON]]]:
    """``(path, method, operation, parameters)`` of every operation, parameters of the path item included."""
    ops = []
    for path, item in (spec.get("paths") or {}).items():
        shared = list(item.get("parameters", ()))
        for method in HTTP_METHODS:
            op = item.get(method)
            if op is not None:
                ops.append((path, method, op, shared + list(op.get("parameters", ()))))
    return ops


def _operation(path: str, method: str, op: JSON, params: list[JSON]) -> str:
    summary = (op.get("summary") or "").strip()
    description = (op.get("description") or "").strip()
    first, _, rest = description.partition("\n\n")
    if summary and first.strip().rstrip(".") == summary.rstrip("."):  # FastAPI repeats the docstring's first line
        description = rest
    return "\n".join(part for part in (
        f'<section class="op" id="{_anchor(method, path)}">',
        f'<h3><span class="method {_esc(method)}">{_esc(method.upper())}</span><code>{_esc(path)}</code></h3>',
        f"<p><strong>{_inline(summary)}</strong></p>" if summary else "",
        "<p><strong>Deprecated.</strong></p>" if op.get("deprecated") else "",
        _markdown(description),
        _parameters(params),
        _request_body(op.get("requestBody")),
        _responses(op.get("responses") or {}),
        "</section>",
    ) if part)


def render_api_docs(spec: JSON, *, openapi_url: str = "/openapi.json") -> str:
    """Render an OpenAPI description as a self-contained HTML page.

    Args:
        spec: The OpenAPI description, e.g. ``app.openapi()`` of a FastAPI app.
        openapi_url: Where the page links to the machine-readable description
            (a path on the same server).

    Returns:
        The HTML document: inline style, no script, and no link to another host.
    """
    info = spec.get("info") or {}
    title = info.get("title") or "API"
    ops = _operations(spec)
    toc = "".join(
        f'<li><a href="#{_anchor(method, path)}"><span class="method {_esc(method)}">{_esc(method.upper())}</span>'
        f"<code>{_esc(path)}</code></a> {_inline(op.get('summary') or '')}</li>"
        for path, method, op, _ in ops
    )
    schemas: JSON = (spec.get("components") or {}).get("schemas") or {}
    schema_html = "\n".join(
        f'<section id="{_schema_anchor(name)}"><h3><code>{_esc(name)}</code></h3>'
        f"{_markdown(schema.get('description'))}{_properties(schema)}</section>"
        for name, schema in schemas.items()
    )
    return "\n".join(part for part in (
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}: API documentation</title>",
        f"<style>{_STYLE}</style></head>",
        "<body>",
        f"<h1>{_esc(title)}</h1>",
        f'<p class="muted">Version {_esc(info["version"])}</p>' if info.get("version") else "",
        _markdown(info.get("description")),
        f'<p>Machine-readable description (OpenAPI {_esc(spec.get("openapi", ""))}): '
        f'<a href="{_esc(openapi_url)}">{_esc(openapi_url)}</a></p>',
        f"<nav><h2>Endpoints</h2><ul>{toc}</ul></nav>" if ops else "<p>No endpoints.</p>",
        "<h2>Operations</h2>" if ops else "",
        *(_operation(*op) for op in ops),
        f"<h2>Schemas</h2>\n{schema_html}" if schemas else "",
        "</body></html>",
    ) if part)
