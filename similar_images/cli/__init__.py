"""The ``similar-images`` command: a thin layer over the library.

Each command module registers its commands on :data:`main`. Command modules
import TensorFlow, torch and Faiss only inside the command functions, so
``similar-images --help`` stays fast.
"""

from __future__ import annotations

import importlib
import os

import click

from .._version import __version__
from ..embed.tf_import import quiet_tensorflow


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="similar-images")
def main() -> None:
    """Find similar images (and short texts) with Keras features and Faiss indexes.

    Typical use:

    \b
      similar-images extract IMAGES DB
      similar-images build-index DB
      similar-images search DB QUERY

    Custom models: set SIMILAR_IMAGES_PLUGINS to a comma-separated list of
    modules that call similar_images.embed.register_model on import.
    """
    quiet_tensorflow()  # before the plugins: one may import Keras at the top
    load_plugins()


def load_plugins() -> list[str]:
    """Import the modules named in ``SIMILAR_IMAGES_PLUGINS`` (they register models)."""
    names = [n.strip() for n in os.environ.get("SIMILAR_IMAGES_PLUGINS", "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise click.ClickException(f"Cannot import plugin {name!r} from SIMILAR_IMAGES_PLUGINS: {exc}") from exc
    return names


# One module per concern; each defines ``register(group)``.
_COMMAND_MODULES = ("download", "images", "text", "evaluate", "serve", "duplicates", "sift", "explain", "quickstart")

for _name in _COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(main)
