"""``python -m similar_images``: the ``similar-images`` command.

Also runs as a file, which is how ``spark-submit`` starts a Python program::

    spark-submit --master spark://HOST:7077 "$(python -c 'import similar_images, os; \
print(os.path.dirname(similar_images.__file__))')/__main__.py" extract photos/ /shared/db --engine spark
"""

if not __package__:  # run as a file: Python put this package's own folder first on sys.path, put its parent
    import os
    import sys

    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    from similar_images.cli import main
else:
    from .cli import main

main(prog_name="similar-images")
