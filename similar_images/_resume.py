"""Resumable builds: work committed piece by piece in ``DB/.partial/``.

An image extraction (:func:`similar_images.features.extract_features`) and a
text build (:func:`similar_images.text.build_text_database`) both write their
vectors in fixed-size pieces (shards, chunks) to the ``.partial/`` folder of
the database they create. A plan file there pins the settings the pieces
were made with, so that running the same command again resumes the work, and
running it with other settings is refused instead of mixing vectors of two
models. When the database is written the folder is removed.

This module holds the steps both builds share: :func:`start_partial` (refuse
or replace an existing database), :func:`load_or_create_plan` (check or write
the plan) and :func:`pending_pieces` (what is left to do).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from . import _io
from .errors import DatabaseError, DatabaseExistsError

__all__ = ["PARTIAL_DIR", "start_partial", "load_or_create_plan", "pending_pieces"]

logger = logging.getLogger(__name__)

#: The folder, inside the database folder, where an unfinished build keeps its pieces.
PARTIAL_DIR = ".partial"

_START_OVER = "or pass --force (force=True) to start over."


def start_partial(db: Path, *, force: bool) -> Path:
    """Make way for a new database at ``db`` and return its ``.partial/`` folder.

    An existing database is refused, or removed when ``force`` is true; with
    ``force`` an interrupted build is discarded too. The folder returned is
    not created here (see :func:`load_or_create_plan`).

    Args:
        db: The database folder to create (or the interrupted one to resume).
        force: Replace an existing database and discard an interrupted build.

    Raises:
        DatabaseExistsError: If a database already exists at ``db`` and ``force`` is false.
    """
    from .database import MANIFEST, remove_database_files  # noqa: PLC0415  (database imports the builders)

    partial = db / PARTIAL_DIR
    if (db / MANIFEST).exists():
        if not force:
            raise DatabaseExistsError(
                f"A database already exists at {db}. Choose another folder, or pass --force (force=True) to replace it."
            )
        remove_database_files(db)
    if force and partial.exists():
        shutil.rmtree(partial)
    return partial


def load_or_create_plan(
    partial: Path,
    name: str,
    plan: dict[str, Any],
    *,
    what: str,
    settings_key: str | None = None,
    hidden: Collection[str] = (),
    foreign: str | None = None,
) -> dict[str, Any]:
    """Check the plan file of an interrupted build, or start a new build with ``plan``.

    Args:
        partial: The ``.partial/`` folder of the database.
        name: File name of the plan in ``partial`` (each kind of build has its own).
        plan: The plan of this run (JSON-serialisable).
        what: The build named in the refusal, e.g. ``"extraction with other
            settings"``: the message reads "DB holds an interrupted {what} (...)".
        settings_key: The key of ``plan`` holding the settings that must match;
            ``None``: the whole plan must match.
        hidden: Keys of the settings left out of the refusal message (e.g. digests).
        foreign: The refusal message when ``partial`` holds files but no plan
            of this kind (another kind of build); ``None`` lets them be.

    Returns:
        The saved plan when resuming (its settings equal this run's, other
        keys may differ), else ``plan`` itself, now saved.

    Raises:
        DatabaseError: If the interrupted build has other settings, or the
            folder holds another kind of build (``foreign``).
    """
    plan_file = partial / name
    if plan_file.exists():
        saved: dict[str, Any] = _io.read_json(plan_file)
        saved_settings = saved if settings_key is None else saved[settings_key]
        wanted = plan if settings_key is None else plan[settings_key]
        if saved_settings != wanted:
            shown = {k: v for k, v in saved_settings.items() if k not in hidden}
            raise DatabaseError(
                f"{partial.parent} holds an interrupted {what} ({shown}). Re-run with the same options to resume "
                f"it, {_START_OVER}"
            )
        return saved
    if foreign is not None and partial.exists() and any(partial.iterdir()):
        raise DatabaseError(f"{partial} holds {foreign}, {_START_OVER}")
    partial.mkdir(parents=True, exist_ok=True)
    _io.write_json(plan_file, plan)
    return plan


def pending_pieces(n: int, size: int, is_done: Callable[[int], bool]) -> tuple[list[int], int]:
    """The pieces of a build still to do, and how many items the others hold.

    Args:
        n: Items in the build.
        size: Items per piece (the last piece may hold fewer).
        is_done: ``is_done(piece)`` tells whether a piece is committed.

    Returns:
        ``(pieces to do, in order; number of items already done)``.
    """
    n_pieces = (n + size - 1) // size
    todo = [p for p in range(n_pieces) if not is_done(p)]
    done_before = n - sum(min(size, n - p * size) for p in todo)
    return todo, done_before
