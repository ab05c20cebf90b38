"""An on-disk cache of converted and quantized models.

Each entry is a folder ``<root>/models/<model>-<precision>-<key>/`` holding
the files of one model (an OpenVINO ``model.xml`` + ``model.bin``) and
``entry.json``: the fields the key was computed from, and the size and
SHA-256 of every file. The key hashes everything the files depend on: the
model name, the weights (a file's SHA-256, or ``random`` and the seed), the
precision, the calibration settings and sample, and the versions of the
packages that produced it. An entry is written in a temporary folder that is
renamed into place, so a crash never leaves a half-written entry; an entry
whose files do not match its ``entry.json`` is moved aside and rebuilt.

The root is ``cache_dir`` if given, else ``$SIMILAR_IMAGES_CACHE``, else
``$XDG_CACHE_HOME/similar-images``, else ``~/.cache/similar-images``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from ..._util import io as _io
from ..._util.types import JSON

__all__ = ["CACHE_ENV", "FORMAT", "ModelCache", "cache_key", "default_cache_dir", "file_sha256", "package_versions"]

logger = logging.getLogger(__name__)

#: Environment variable that moves the cache.
CACHE_ENV = "SIMILAR_IMAGES_CACHE"
#: Layout version of an entry; part of every key.
FORMAT = 1
_ENTRY_JSON = "entry.json"


def default_cache_dir() -> Path:
    """``$SIMILAR_IMAGES_CACHE``, else ``$XDG_CACHE_HOME/similar-images``, else ``~/.cache/similar-images``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else _io.user_cache_dir()


_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, remembered for the process while its size and modification time stay the same."""
    p = Path(path)
    st = p.stat()
    memo = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if memo in _HASHES:
            return _HASHES[memo]
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _HASH_LOCK:
        _HASHES[memo] = digest
    return digest


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"absent"`` for a missing one).

    ``tensorflow`` is looked up under its CPU and GPU distribution names.
    """
    out: dict[str, str] = {}
    for name in names:
        candidates = ("tensorflow", "tensorflow-cpu", "tf-nightly", "tensorflow-macos") if name == "tensorflow" \
            else (name,)
        version = "absent"
        for dist in candidates:
            try:
                version = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
        out[name] = version
    return out


def cache_key(fields: Mapping[str, object]) -> str:
    """A short stable hash of JSON-serialisable ``fields`` (and the cache format)."""
    text = json.dumps({"format": FORMAT, **fields}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


class ModelCache:
    """Folders of model files, keyed by what they were built from.

    Args:
        root: The cache folder (default: :func:`default_cache_dir`).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def entry_path(self, fields: Mapping[str, object]) -> Path:
        """Where the entry for ``fields`` lives (it may not exist)."""
        label = f"{_safe(str(fields.get('model', 'model')))}-{_safe(str(fields.get('precision', 'x')))}"
        return self.models_dir / f"{label}-{cache_key(fields)}"

    def lookup(self, fields: Mapping[str, object]) -> Path | None:
        """The valid entry for ``fields``, or ``None``; a corrupt entry is moved aside (and deleted)."""
        path = self.entry_path(fields)
        if not path.exists():
            return None
        problem = self.verify(path)
        if problem is None:
            return path
        logger.warning("Model cache entry %s is corrupt (%s); rebuilding it", path, problem)
        self._discard(path)
        return None

    @staticmethod
    def verify(path: Path) -> str | None:
        """Check an entry's files against its ``entry.json``; returns what is wrong, or ``None``."""
        try:
            meta = _io.read_json(path / _ENTRY_JSON)
            files = meta["files"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"unreadable {_ENTRY_JSON}: {exc.__class__.__name__}"
        if not files:
            return "no files listed"
        for name, want in files.items():
            f = path / name
            try:
                size = f.stat().st_size
            except OSError:
                return f"missing {name}"
            if size != want["size"]:
                return f"{name} has {size} bytes, expected {want['size']}"
            if file_sha256(f) != want["sha256"]:
                return f"{name} does not match its SHA-256"
        return None

    def metadata(self, path: Path) -> dict[str, object]:
        """The ``entry.json`` of an entry."""
        return _io.read_json(path / _ENTRY_JSON)

    def get_or_build(self, fields: Mapping[str, object], build: Callable[[Path], Mapping[str, object] | None]
                     ) -> tuple[Path, bool]:
        """Return the entry for ``fields``, building it with ``build(folder)`` if needed.

        ``build`` writes the model files into the (temporary) folder it is
        given and may return extra JSON fields for ``entry.json``. The folder
        is renamed into place only once complete.

        Returns:
            The entry's folder, and whether it came from the cache.
        """
        found = self.lookup(fields)
        if found is not None:
            logger.info("Using the cached model %s", found)
            return found, True
        final = self.entry_path(fields)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            t0 = time.perf_counter()
            extra = build(tmp) or {}
            seconds = time.perf_counter() - t0
            files = {}
            for f in sorted(p for p in tmp.iterdir() if p.is_file()):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[f.name] = {"size": f.stat().st_size, "sha256": file_sha256(f)}
            meta = {"format": FORMAT, "key": cache_key(fields), "fields": dict(fields), "files": files,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "build_seconds": round(seconds, 2),
                    **dict(extra)}
            _io.write_json(tmp / _ENTRY_JSON, meta)
            os.chmod(tmp, 0o777 & ~_io.UMASK)
            try:
                os.rename(tmp, final)
            except OSError:
                if self.lookup(fields) is None:  # not a concurrent build that won the race
                    raise
                logger.info("Another process cached %s first; using its entry", final.name)
                shutil.rmtree(tmp, ignore_errors=True)
                return final, True
            _io.fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("Cached the model in %s (%.1f s to build)", final, seconds)
        return final, False

    def _discard(self, path: Path) -> None:
        aside = path.with_name(f".{path.name}.corrupt-{os.getpid()}-{time.monotonic_ns()}")
        with contextlib.suppress(OSError):
            os.rename(path, aside)
            path = aside
        shutil.rmtree(path, ignore_errors=True)

    # ---- small JSON records (e.g. the measured choice of precision) ----

    def record_path(self, kind: str, fields: Mapping[str, object]) -> Path:
        return self.root / kind / f"{cache_key(fields)}.json"

    def load_record(self, kind: str, fields: Mapping[str, object]) -> JSON | None:
        """A JSON record stored with :meth:`save_record` for the same fields, or ``None``."""
        path = self.record_path(kind, fields)
        try:
            data = _io.read_json(path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("Ignoring the unreadable cache record %s (%s)", path, exc)
            return None
        if not isinstance(data, dict) or data.get("key") != cache_key(fields):
            return None
        return data.get("record")

    def save_record(self, kind: str, fields: Mapping[str, object], record: Mapping[str, object]) -> Path:
        """Atomically store a JSON ``record`` under ``fields``."""
        path = self.record_path(kind, fields)
        _io.write_json(path, {"key": cache_key(fields), "fields": dict(fields), "record": dict(record)})
        return path

