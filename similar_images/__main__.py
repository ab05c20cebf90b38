"""``python -m similar_images``: the ``similar-images`` command."""

from .cli import main

main(prog_name="similar-images")
