"""CLI command ``explain``: why a result is similar to a query, as a PNG (or the maps as JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .._util.io import write_bytes
from ..methods.explain import explain as explain_pair_in_db
from ..methods.explain import explanation_png
from ..store import Database
from ._common import configure_logging, handle_errors, parse_query


def register(group: click.Group) -> None:
    """Add the ``explain`` command to ``group``."""

    @group.command()
    @click.argument("db", type=click.Path(exists=True, file_okay=False, path_type=Path))
    @click.argument("query")
    @click.argument("result_id", type=int)
    @click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Where to write the PNG [default: explain-QUERY-RESULT_ID.png in the current folder].")
    @click.option("--id", "by_id", is_flag=True,
                  help="QUERY is a database id (a QUERY of digits that is not a file is taken as an id anyway).")
    @click.option("--method", type=click.Choice(["auto", "exact", "gradient"]), default="auto", show_default=True,
                  help="exact: the similarity decomposed over the feature map (average and max pooling models); "
                       "gradient: an approximate Grad-CAM map (any model); auto: exact where it exists.")
    @click.option("--height", type=click.IntRange(16, 2048), default=320, show_default=True,
                  help="Height of each photo in the PNG, in pixels.")
    @click.option("--weights", "-w", default=None, help="Weights for the model, overriding the database's.")
    @click.option("--json", "as_json", is_flag=True, help="Print the maps and figures as JSON instead of a PNG.")
    @handle_errors
    def explain(db: Path, query: str, result_id: int, output: Path | None, by_id: bool, method: str, height: int,
                weights: str | None, as_json: bool) -> None:
        """Show why result RESULT_ID of DB is similar to QUERY: a heat map over each image.

        QUERY is a database id, an image path or an http(s) URL, as in search.
        For average- and max-pooled models (vgg16-avg, vgg16-max, mobilenetv2)
        the maps are the cosine similarity decomposed exactly over the last
        convolutional feature map (the cells sum to the score); for vgg16-fc2
        they are an approximate gradient map, labelled so.

        Example: similar-images explain photos-db 12 40 -o why.png
        """
        configure_logging(0, True)
        database = Database.open(db, weights=weights)
        q = parse_query(query, by_id, guess=True)
        e = explain_pair_in_db(database, q, result_id, method=method)  # type: ignore[arg-type]
        if as_json:
            click.echo(json.dumps(e.to_dict(), indent=2))
            return
        out = output or Path(f"explain-{Path(str(q)).stem or 'query'}-{result_id}.png")
        write_bytes(out, explanation_png(e, height=height))
        approx = " (approximate: a gradient map)" if e.approximate else ""
        click.echo(f"Wrote {out}: score {e.score:.4f}, {e.method}{approx}")
