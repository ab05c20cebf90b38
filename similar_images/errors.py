"""The exception hierarchy of similar-images.

Every error the library raises on bad input, a bad environment or a damaged
database derives from :class:`SimilarImagesError`, and its message says how
to fix the problem. Programming errors (bugs) are left as Python's own
exceptions, so the command line shows a traceback for them instead of
dressing them up as user messages.

::

    SimilarImagesError
    |-- ConfigError (ValueError)           an option or setting has a bad value (batch_size=0, unknown model)
    |   `-- AutoPrecisionOnClusterError    precision auto with an engine whose executors run on other machines
    |-- InputError (ValueError)            an input cannot be used
    |   |-- SourceNotFoundError (FileNotFoundError)   a folder, file list or CSV does not exist
    |   |-- NoInputsError                  a folder or list holds nothing usable
    |   |-- ImageLoadError                 an image cannot be decoded (corrupt, truncated, too large)
    |   |-- InputFileError                 a file list is an image, not UTF-8 text, a FIFO, too large
    |   `-- TextInputError                 a text table or text cannot be used
    |-- QueryError (ValueError)            a search query is invalid
    |   |-- UnknownIdError (KeyError)      no such (or a removed) database id or item
    |   |-- BadURLError                    a malformed URL, another scheme, a refused address
    |   `-- FetchError                     a well-formed URL could not be fetched (network, status, not an image)
    |-- DatabaseError                      a database folder is missing, incomplete or inconsistent
    |   |-- DatabaseNotFoundError (FileNotFoundError)
    |   |-- InterruptedBuildError          the folder holds an interrupted build made with other settings
    |   |-- IndexNotBuiltError             the database has no index yet
    |   |-- IndexExistsError (a DatabaseExistsError)  the database already has an index
    |   |-- DatabaseExistsError (FileExistsError)
    |   |-- DatabaseCorruptError           a file of the database cannot be read or contradicts the manifest
    |   |   `-- DatabaseFileError          a database file is a folder, a FIFO, a device, a link loop, unreadable,
    |   |                                  too large, or JSON beyond the limits (too deep, 1e400)
    |   `-- DiskFullError (OSError)        no space left while writing a file (the database is unchanged)
    |-- IndexTrainingError (ValueError)    too few vectors, or an invalid index description
    |   `-- IndexDescriptionError          an index description too long, or sizes needing too much memory
    |-- WeightsError                       model weights cannot be downloaded or loaded
    |-- ExplainError (ValueError)          a similarity explanation cannot be made (a text database, a vector query)
    |   `-- FeatureMapError                the model's spatial feature map cannot be reached
    |-- BackendError                       an inference backend is missing or cannot run the model
    |   `-- BackendUnavailableError (ImportError)  openvino / nncf not installed (the message names the pip command)
    |-- EngineError                        a distributed engine (Spark, Java) is missing or failed
    |   |-- SparkUnavailableError          pyspark or Java is missing, or Spark does not start
    |   `-- PartitionFailedError           shards of a distributed build failed for good (the others are kept)
    `-- DownloadError                      a download failed or produced a corrupt archive

The HTTP service maps these types to status codes in one table
(:data:`similar_images.service.errors.STATUS_BY_ERROR`), the command line
turns them into one-line messages, and the notebook apps pick their message
by type.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "SimilarImagesError",
    "ConfigError",
    "AutoPrecisionOnClusterError",
    "InputError",
    "SourceNotFoundError",
    "NoInputsError",
    "ImageLoadError",
    "InputFileError",
    "TextInputError",
    "QueryError",
    "UnknownIdError",
    "BadURLError",
    "FetchError",
    "DatabaseError",
    "DatabaseNotFoundError",
    "DatabaseNotReadyError",
    "InterruptedBuildError",
    "IndexNotBuiltError",
    "IndexExistsError",
    "DatabaseExistsError",
    "DatabaseCorruptError",
    "DatabaseFileError",
    "DiskFullError",
    "IndexTrainingError",
    "IndexDescriptionError",
    "WeightsError",
    "ExplainError",
    "FeatureMapError",
    "BackendError",
    "BackendUnavailableError",
    "EngineError",
    "SparkUnavailableError",
    "PartitionFailedError",
    "DownloadError",
]


class SimilarImagesError(Exception):
    """Base class of all errors raised by similar_images.

    Its message says what happened in the library's terms (its settings are keyword arguments and config fields,
    such as ``encoding=`` or ``force=True``), and the error carries that as data, so that the command line, the
    service and the apps can phrase their own advice (a flag, a JSON field, a widget) without reading the message.
    Each attribute is ``None`` where it does not apply.

    Attributes:
        path: The file or folder concerned.
        setting: The setting (a keyword argument or config field, e.g. ``"encoding"``, ``"weights"``,
            ``"train_size"``) that caused the problem or that fixes it.
        value: The value that setting had (or was asked for).
        expected: What works instead: a value, a tuple of choices, or a limit.
        problem: What happened, without the fix (``None`` where the message has no separate fix): an edge that
            phrases its own advice shows this instead of the whole message.
        hint: The fix in the library's terms (``"Pass encoding='latin-1'."``), the end of the message; ``None``
            where the message has no separate fix.
    """

    path: str | os.PathLike[str] | None = None
    setting: str | None = None
    value: object = None
    expected: object = None
    problem: str | None = None
    hint: str | None = None

    def __init__(self, *args: object, path: str | os.PathLike[str] | None = None, setting: str | None = None,
                 value: object = None, expected: object = None, hint: str | None = None) -> None:
        if hint is not None and len(args) == 1 and isinstance(args[0], str):
            self.problem, self.hint = args[0], hint
            args = (f"{args[0]}{'' if args[0].endswith(('.', ':')) else '.'} {hint}",)
        super().__init__(*args)
        if path is not None:
            self.path = path
        if setting is not None:
            self.setting = setting
        if value is not None:
            self.value = value
        if expected is not None:
            self.expected = expected


class ConfigError(SimilarImagesError, ValueError):
    """An option or setting has a bad value (e.g. ``batch_size=0``, an unknown model name)."""


class AutoPrecisionOnClusterError(ConfigError):
    """``precision="auto"`` with an engine whose executors run on other machines than this one.

    ``auto`` is chosen by measuring the CPU it runs on: this machine's, whereas the executors of a cluster may have
    other CPUs (a lower precision that is fast here can be emulated, hence slow, there). An explicit precision is
    needed: fp32 runs everywhere.

    Attributes:
        master: The engine's cluster (e.g. the Spark master URL).
    """

    def __init__(self, master: str) -> None:
        self.master = master
        super().__init__(
            f"precision 'auto' is chosen by measuring this machine's CPU, but the executors of {master} run on "
            "other machines, whose CPUs may differ; set the precision explicitly (fp32 runs everywhere; bf16 or "
            "int8 where every executor's CPU runs it natively)")


class InputError(SimilarImagesError, ValueError):
    """An input (image, folder, file list, text table) cannot be used."""


class SourceNotFoundError(InputError, FileNotFoundError):
    """A folder, file list, CSV file or weights file given as input does not exist."""


class NoInputsError(InputError):
    """A folder, file list or table holds nothing that can be used."""


class ImageLoadError(InputError):
    """An image could not be read or decoded (corrupt, truncated, not an image, too large)."""


class InputFileError(InputError):
    """A file given as an input (a file list) cannot be read as one: an image, not UTF-8 text, a folder, a FIFO,
    a device, a link loop, unreadable, or too large.

    Attributes:
        path: The file.
        reason: What is wrong with it, in a few words (``"a FIFO (named pipe)"``, ``"not UTF-8 text"``).
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class TextInputError(InputError):
    """A text input (CSV file, column, text) cannot be used; the message says how to fix it."""


class QueryError(SimilarImagesError, ValueError):
    """A search query is invalid (bad type, bad ``k``, empty text)."""


class UnknownIdError(QueryError, KeyError):
    """A database id or item is unknown, or was removed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BadURLError(QueryError):
    """A URL is malformed, uses another scheme than http(s), or names a refused address."""


class FetchError(QueryError):
    """A well-formed URL could not be fetched: unreachable, timed out, an HTTP error, not an image, too large."""


class DatabaseError(SimilarImagesError):
    """A database folder is missing, incomplete, or inconsistent with its manifest."""


class DatabaseNotFoundError(DatabaseError, FileNotFoundError):
    """There is no database at the given folder.

    Attributes:
        path: The folder.
        fmt: The format of database looked for (the manifest's ``format``: ``"similar-images-database"``,
            ``"similar-images-sift"``), or ``None``.
        partial: The folder of an interrupted build found there (building again with the same settings resumes
            it), or ``None``.
    """

    fmt: str | None = None
    partial: str | os.PathLike[str] | None = None

    def __init__(self, *args: object, fmt: str | None = None, partial: str | os.PathLike[str] | None = None,
                 **data: Any) -> None:
        super().__init__(*args, **data)
        if fmt is not None:
            self.fmt = fmt
        if partial is not None:
            self.partial = partial


class DatabaseNotReadyError(DatabaseNotFoundError):
    """A build (an extraction) has begun in the folder but has committed nothing searchable yet.

    Attributes:
        path: The database folder.
        total: How many items the build plans.
    """

    def __init__(self, path: str | os.PathLike[str], total: int) -> None:
        super().__init__(f"No items of {path} are ready yet: its build has begun ({total:,} planned) and has not "
                         "committed its first shard")
        self.path, self.total = path, total


class DatabaseExistsError(DatabaseError, FileExistsError):
    """An output already exists and ``force`` was not given.

    Attributes:
        path: The folder that already holds a database (``None`` where the message alone tells).
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None) -> None:
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:  # FileExistsError would format a one-argument error as its message anyway
        return str(self.args[0]) if self.args else ""


class IndexExistsError(DatabaseExistsError):
    """The database already has an index, and ``force`` was not given.

    Attributes:
        path: The database folder.
        factory: The index description of the existing index.
    """

    def __init__(self, path: str | os.PathLike[str], factory: str) -> None:
        super().__init__(f"{path} already has an index ({factory}); building another one needs force=True",
                         path=path)
        self.factory = factory


class InterruptedBuildError(DatabaseError):
    """The folder holds an interrupted build made with other settings; resuming it needs the same settings.

    Attributes:
        path: The database folder.
        settings: The settings of the interrupted build.
        shards: How many shards it committed.
    """

    def __init__(self, path: str | os.PathLike[str], settings: dict[str, object], shards: int) -> None:
        super().__init__(f"{path} holds an interrupted build with other settings ({settings}), {shards} shard(s) "
                         "done; the same settings resume it, force=True starts over")
        self.path, self.settings, self.shards = path, settings, shards


class IndexNotBuiltError(DatabaseError):
    """An operation needs the database's index, and it has none yet.

    Attributes:
        path: The database folder.
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "this") -> None:
        super().__init__(f"{path} has no index yet; {what} needs one")
        self.path = path


class DatabaseCorruptError(DatabaseError):
    """A file of the database cannot be read, or contradicts the manifest.

    Attributes:
        path: The damaged file (or the manifest it contradicts).
        database: The database folder, or ``None``.
        rebuild: What mends it: ``"index"`` (building the index again, ``force=True``), ``"database"`` (building
            the whole database again), or ``None`` where not known.
    """

    database: str | os.PathLike[str] | None = None
    rebuild: str | None = None

    def __init__(self, *args: object, database: str | os.PathLike[str] | None = None, rebuild: str | None = None,
                 **data: Any) -> None:
        super().__init__(*args, **data)
        if database is not None:
            self.database = database
        if rebuild is not None:
            self.rebuild = rebuild


class DatabaseFileError(DatabaseCorruptError):
    """A file of the database is not a regular file that can be read (a folder, a FIFO, a device, a link loop,
    no permission), is larger than such a file can be, or holds JSON beyond the limits (nested too deep, a number
    out of range such as ``1e400``).

    Attributes:
        path: The file.
        reason: What is wrong with it, in a few words (``"a FIFO (named pipe)"``, ``"nested 100,000 deep"``).
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, reason: str = "",
                 **data: Any) -> None:
        super().__init__(message, **data)
        self.path = path
        self.reason = reason


class DiskFullError(DatabaseError, OSError):
    """No space (or quota) was left on the device while a file was written; the file (and the database it belongs
    to) is unchanged. An :class:`OSError` too, with the ``errno`` and ``filename`` of the failed write, so that code
    that catches a failed write still does.

    Attributes:
        path: The file being written.
    """

    def __init__(self, message: str, *, path: str | os.PathLike[str] | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.errno = errno
        self.filename = None if path is None else os.fspath(path)

    def __str__(self) -> str:  # OSError would show the errno and file name again
        return str(self.args[0]) if self.args else ""


class IndexTrainingError(SimilarImagesError, ValueError):
    """Too few vectors to train the requested index, or an invalid index description."""


class IndexDescriptionError(IndexTrainingError):
    """An index description is refused before Faiss reads it: too long, a number out of range, or sizes whose
    fixed parts (centroids, codebooks, inverted lists) would need more memory than the limit.

    Attributes:
        factory: The description (shortened when it is very long).
        part: The part of it that is refused (``"PQ16x20"``), or ``""`` for the whole.
        needed_bytes: The memory the part's fixed structures would take (0 when not a size problem).
        limit_bytes: The limit it exceeds (0 when not a size problem).
    """

    def __init__(self, message: str, *, factory: str = "", part: str = "", needed_bytes: int = 0,
                 limit_bytes: int = 0) -> None:
        super().__init__(message)
        self.factory = factory
        self.part = part
        self.needed_bytes = needed_bytes
        self.limit_bytes = limit_bytes


class WeightsError(SimilarImagesError):
    """Model weights could not be downloaded or loaded."""


class ExplainError(SimilarImagesError, ValueError):
    """A similarity explanation cannot be made for these inputs (a text database, a vector query)."""


class FeatureMapError(ExplainError):
    """A model's spatial feature map cannot be reached (no feature map registered, or the layer is not spatial)."""


class BackendError(SimilarImagesError):
    """An inference backend is not installed, or cannot run the model."""


class BackendUnavailableError(BackendError, ImportError):  # type: ignore[misc]  # ImportError.path is str | None; ours may be a Path
    """The package an inference backend needs (OpenVINO, NNCF) is not installed; the message names the pip command."""


class EngineError(SimilarImagesError):
    """A distributed engine (Spark and its Java runtime) is missing, or its job failed."""


class SparkUnavailableError(EngineError):
    """pyspark or a Java runtime is missing, or Spark does not start; the message names what to install."""


class PartitionFailedError(EngineError):
    """Shards of a distributed build failed for good; the committed ones are kept, and re-running resumes.

    Attributes:
        resumable: Whether building again with the same settings can finish the build (``False`` when the
            executors' shards land where this process cannot see them: running again fails the same way).
    """

    def __init__(self, *args: object, resumable: bool = True, **data: Any) -> None:
        super().__init__(*args, **data)
        self.resumable = resumable


class DownloadError(SimilarImagesError):
    """A download failed or produced a corrupt archive.

    Attributes:
        url: The address downloaded, or ``None``.
        offline_source: For a network failure, what can be used instead without network access: ``"images"`` (a
            local folder of images) or ``"texts"`` (a local CSV file of texts); ``None`` otherwise.
    """

    url: str | None = None
    offline_source: str | None = None

    def __init__(self, *args: object, url: str | None = None, offline_source: str | None = None,
                 **data: Any) -> None:
        super().__init__(*args, **data)
        if url is not None:
            self.url = url
        if offline_source is not None:
            self.offline_source = offline_source
