"""Shared helpers of the command-line interface: logging setup and turning
library errors into :class:`click.ClickException` at the edge."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..errors import SimilarImagesError

F = TypeVar("F", bound=Callable[..., Any])


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Configure the root logger for CLI use (the library itself never does)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    # TensorFlow is chatty on import; keep its C++ logs to errors.
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def handle_errors(func: F) -> F:
    """Turn library errors (and the usual bad-input errors) into ClickException."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (SimilarImagesError, ValueError, FileNotFoundError, FileExistsError, PermissionError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]
