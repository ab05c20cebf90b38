"""The shard files of a build: what an engine commits, and what the store reads back.

A shard is committed atomically in the build's work folder (``DB/.partial/`` or an add's ``DB/.adding-XXXX/``):
``shard-NNNNNN.npy`` (the vectors of the items that embedded) then ``shard-NNNNNN.json`` (their positions and
the failures), the commit marker.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._util import io as _io
from ..errors import DatabaseError

__all__ = ["shard_meta", "shard_done", "write_shard", "valid_shard", "committed_shards"]

logger = logging.getLogger(__name__)


def shard_meta(partial: Path, shard: int) -> Path:
    """The commit marker of ``shard`` in ``partial`` (``shard-NNNNNN.json``)."""
    return partial / f"shard-{shard:06d}.json"


def shard_done(partial: Path, shard: int) -> bool:
    """Whether ``shard`` is committed in ``partial`` (its marker and its vectors exist)."""
    meta = shard_meta(partial, shard)
    if not meta.exists():
        return False
    try:
        info = _io.read_json(meta)
    except (OSError, ValueError, DatabaseError):  # damaged, or not a regular file: valid_shard says which
        return False
    return (partial / info["vectors"]).exists()


def committed_shards(partial: Path) -> int:
    """The number of commit markers in ``partial``."""
    return sum(1 for _ in partial.glob("shard-*.json"))


def write_shard(partial: Path, shard: int, ok: Sequence[int], vectors: np.ndarray,
                failures: Sequence[tuple[int, str]], dim: int, rows: Sequence[int] | None = None) -> None:
    """Commit one shard: its vectors, then the JSON marker (positions of the embedded items and failures).

    Args:
        partial: The ``.partial/`` folder of the database.
        shard: The shard number.
        ok: Positions (in the plan's items) of the items whose vectors are ``vectors``, in order.
        vectors: ``(len(ok), dim)`` float32 vectors (``(sum(rows), dim)`` with ``rows``).
        failures: ``(position, reason)`` of the items that could not be used.
        dim: The vectors' dimension (for an empty shard).
        rows: Vectors of each item of ``ok``, for an embedder that gives several (SIFT descriptors);
            ``None``: one each.
    """
    name = f"shard-{shard:06d}.npy"
    arr = np.asarray(vectors, dtype=np.float32).reshape(-1, dim) if len(ok) else np.zeros((0, dim), dtype=np.float32)
    want = len(ok) if rows is None else sum(rows)
    if len(arr) != want or (rows is not None and len(rows) != len(ok)):
        raise ValueError(f"shard {shard}: {len(arr)} vectors for {len(ok)} items")
    with _io.atomic_path(partial / name) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr, allow_pickle=False)
    meta: dict[str, object] = {"vectors": name, "ok": [int(i) for i in ok],
                               "failures": [[int(i), str(r)] for i, r in failures]}
    if rows is not None:
        meta["rows"] = [int(n) for n in rows]
    _io.write_json(shard_meta(partial, shard), meta)


def valid_shard(partial: Path, shard: int, positions: range, dim: int) -> bool:
    """Whether ``shard`` is committed and whole: its marker names its own ``positions`` and a readable vectors
    file of ``dim`` columns. A damaged shard is removed (and embedded again) with a warning."""
    meta_path = shard_meta(partial, shard)
    if not meta_path.exists():
        return False
    try:
        meta = _io.read_json(meta_path)
        name, ok, failures = meta["vectors"], meta["ok"], meta["failures"]
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad vectors file name {name!r}")
        listed = [int(i) for i in ok] + [int(i) for i, _ in failures]
        if sorted(listed) != list(positions):
            raise ValueError("its positions are not those of the shard")
        _io.check_regular(partial / name)  # a FIFO would hang np.load
        rows = meta.get("rows")
        if rows is not None and (len(rows) != len(ok) or any(int(n) < 0 for n in rows)):
            raise ValueError("its vectors per item do not match its items")
        want = len(ok) if rows is None else sum(int(n) for n in rows)
        vectors = np.load(partial / name, mmap_mode="r", allow_pickle=False)
        if vectors.dtype != np.float32 or vectors.shape != (want, dim):
            raise ValueError(f"vectors of shape {vectors.shape} ({vectors.dtype}) for {len(ok)} items")
    except FileNotFoundError:
        return False
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, DatabaseError) as exc:
        logger.warning("Shard %d of the interrupted build in %s is damaged (%s); embedding it again", shard,
                       partial, exc)
        meta_path.unlink(missing_ok=True)
        return False
    return True
