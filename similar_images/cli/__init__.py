"""The ``similar-images`` command: a thin layer over the library.

Each command module registers its commands on :data:`main`. Command modules
import TensorFlow, torch and Faiss only inside the command functions, so
``similar-images --help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

from .. import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="similar-images")
def main() -> None:
    """Find similar images (and short texts) with Keras features and Faiss indexes.

    Typical use: ``similar-images extract IMAGES DB`` then
    ``similar-images build-index DB`` then ``similar-images search DB QUERY``.
    """


# One module per concern; each defines ``register(group)``.
_COMMAND_MODULES = ("download", "images", "text", "evaluate", "serve", "duplicates")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(main)
