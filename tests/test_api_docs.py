"""The server-rendered API documentation page (no server needed; test_server.py checks /docs over HTTP)."""

from __future__ import annotations

import re

from similar_images.service.api_docs import render_api_docs

SPEC = {
    "openapi": "3.1.0",
    "info": {"title": "Demo <api>", "version": "2.0", "description": "Finds `things`."},
    "paths": {
        "/items/{item_id}": {
            "parameters": [{"name": "item_id", "in": "path", "required": True, "schema": {"type": "integer"}}],
            "get": {
                "summary": "One item",
                "description": "One item.\n\nSee <script>alert(1)</script> and https://example.com/x.\n\n* a\n* `b`",
                "parameters": [{"name": "size", "in": "query", "schema": {
                    "anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None}}],
                "responses": {"200": {"description": "The item", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}},
            },
            "delete": {"summary": "Remove it", "deprecated": True, "responses": {"204": {"description": "Gone"}}},
        },
        "/upload": {"post": {
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary", "description": "The file."}}}},
                "application/json": {"schema": {"type": "object"}, "example": {"url": "https://example.com/a.jpg"}},
            }},
            "responses": {},
        }},
    },
    "components": {"schemas": {"Item": {"type": "object", "required": ["id"], "properties": {
        "id": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}}}}},
}


def test_every_operation_is_documented() -> None:
    page = render_api_docs(SPEC)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    for method, path in (("GET", "/items/{item_id}"), ("DELETE", "/items/{item_id}"), ("POST", "/upload")):
        assert f'{method}</span><code>{path}</code>' in page
    assert "<code>item_id</code></td><td>path</td><td>integer</td><td>yes" in page  # the path item's parameters
    assert "<code>size</code></td><td>query</td><td>integer, &ge; 1 or null</td><td>no</td><td><code>null" in page
    assert "Request body (required)" in page and "<code>multipart/form-data</code>" in page
    assert "string (binary)</td><td>yes</td><td>The file." in page
    assert '<a href="#schema-Item">Item</a>' in page and 'id="schema-Item"' in page
    assert "array of string" in page and "Deprecated." in page and "<code>204</code>" in page
    assert '<a href="/openapi.json">' in page and "Version 2.0" in page


def test_text_is_escaped_and_nothing_links_out() -> None:
    page = render_api_docs(SPEC, openapi_url="/api/openapi.json")
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<title>Demo &lt;api&gt;: API documentation</title>" in page
    assert "Finds <code>things</code>." in page and "<li><code>b</code></li>" in page
    assert "<p>One item.</p>" not in page  # the description's first line repeats the summary
    hrefs = re.findall(r'(?:href|src)="([^"]*)"', page)
    assert hrefs and all(h.startswith("#") or h == "/api/openapi.json" for h in hrefs), hrefs
    assert "https://example.com/a.jpg" in page  # shown as text, never linked


def test_an_empty_description_renders() -> None:
    page = render_api_docs({"openapi": "3.1.0", "info": {"title": "Empty"}, "paths": {}})
    assert "<h1>Empty</h1>" in page and "No endpoints." in page
