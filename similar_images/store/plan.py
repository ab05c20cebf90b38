"""The plan of the one resumable build: ``DB/.partial/plan.json`` pins the settings (the embedder's ``info()``,
the shard size) and ``DB/.partial/items.jsonl`` the items, so that running the same command again resumes, and
running it with other settings is refused instead of mixing vectors of two models (unless nothing was committed
yet: then the new settings simply replace the old plan)."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._util import io as _io
from ..engines.shards import committed_shards
from ..errors import DatabaseError, InterruptedBuildError

__all__ = ["PLAN", "PLAN_ITEMS", "digest", "load_or_create_plan", "plan_settings", "read_plan_items"]

logger = logging.getLogger(__name__)

#: The plan file of an unfinished build.
PLAN = "plan.json"
#: The planned items of an unfinished build, one JSON string a line.
PLAN_ITEMS = "items.jsonl"


def digest(items: Sequence[str]) -> str:
    """A SHA-256 of the items, in order (the manifest's ``build.plan_digest``)."""
    h = hashlib.sha256()
    for t in items:
        h.update(str(t).encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


def load_or_create_plan(partial: Path, items: list[str], settings: dict[str, Any]) -> list[str]:
    """The items of the build: this run's, or those of the interrupted build being resumed.

    Raises:
        DatabaseError: If ``partial`` holds committed shards made with other settings.
    """
    plan_file = partial / PLAN
    items_digest = digest(items)
    if plan_file.exists():
        try:
            saved = _io.read_json(plan_file)
            if not isinstance(saved, dict) or not isinstance(saved.get("settings"), dict):
                raise ValueError("not a plan")
            saved_items = read_plan_items(partial / PLAN_ITEMS)
            if len(saved_items) != saved.get("n"):
                raise ValueError(f"{partial / PLAN_ITEMS} is damaged")
        except (OSError, ValueError, KeyError, TypeError, DatabaseError) as exc:
            saved, saved_items = None, None
            logger.warning("The plan of the interrupted build in %s is unreadable (%s); starting over", partial, exc)
        if saved is not None and saved_items is not None and saved.get("settings") == settings:
            if saved.get("digest") != items_digest:
                logger.warning("The input changed since the interrupted run; resuming with the saved list of %d "
                               "items (a forced build starts over with the new input)", len(saved_items))
            return saved_items
        committed = committed_shards(partial)
        if saved is not None and committed:
            shown = {k: v for k, v in (saved.get("settings") or {}).items()}
            raise InterruptedBuildError(partial.parent, shown, committed)
        logger.info("Replacing the plan of an interrupted build that committed nothing (settings changed)")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    with _io.atomic_path(partial / PLAN_ITEMS) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    _io.write_json(plan_file, {"settings": settings, "n": len(items), "digest": items_digest})
    return items


def read_plan_items(path: Path) -> list[str]:
    """The items of a plan (``.partial/items.jsonl``).

    Raises:
        ValueError: If the file is damaged.
    """
    with _io.open_regular(path) as fh:  # a FIFO or a device is refused, not read forever
        items = [json.loads(line.decode("utf-8")) for line in fh]
    if not all(isinstance(item, str) for item in items):
        raise ValueError(f"{path} is damaged")
    return items


def plan_settings(embedder_info: dict[str, Any], kind: str, shard_size: int) -> dict[str, Any]:
    """The settings a plan pins: a build with other settings may not resume it."""
    return {"kind": kind, "model": embedder_info, "shard_size": shard_size}
