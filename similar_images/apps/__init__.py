"""The notebook apps (ipywidgets; JupyterLab, Notebook 7 and Voilà).

* :func:`open_app`: the image-search app (:class:`SimilarImagesApp`);
* :func:`text_search_app`: the text-search app (:class:`TextSearchApp`);
* :class:`DuplicateBrowser`: near-duplicates with a threshold slider;
* :mod:`.tuning_app`: exact neighbours next to an index's, for the tuning notebook;
* :mod:`.gallery`: the front end of the image and text apps (one custom widget: grid, lightbox, keys, uploads);
* :mod:`.voila_kernels`: the kernel manager the repository's ``voila.json`` gives Voilà.

Each notebook is a parameter cell and a call of one of these. To add an app,
put it in a module here and reuse :mod:`.common` (the "no database" message,
plain-words errors, thumbnails).
"""

from __future__ import annotations

from .common import DatabaseMessage, find_database
from .duplicates_app import DuplicateBrowser, default_thresholds, similarity_histogram
from .gallery import ActionResult, ActionTarget, GalleryWidget
from .image_app import AppConfig, SimilarImagesApp, open_app
from .text_app import TextSearchApp, text_search_app

__all__ = [
    "ActionResult",
    "ActionTarget",
    "AppConfig",
    "DatabaseMessage",
    "DuplicateBrowser",
    "GalleryWidget",
    "SimilarImagesApp",
    "TextSearchApp",
    "default_thresholds",
    "find_database",
    "open_app",
    "similarity_histogram",
    "text_search_app",
]
