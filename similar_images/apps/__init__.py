"""The notebook apps (ipywidgets; JupyterLab, Notebook 7 and Voilà).

* :func:`open_app`: the image-search app (:class:`SimilarImagesApp`);
* :func:`text_search_app`: the text-search app (:class:`TextSearchApp`);
* :class:`DuplicateBrowser`: near-duplicates with a threshold slider;
* :class:`MapView`: the collection map (photos placed in 2D by similarity; click one to search);
* :mod:`.walkthrough`: the figures and sliders of the teaching walkthrough ``notebooks/how_it_works.ipynb``;
* :mod:`.tuning_app`: the tuning sweep and exact neighbours against an index's, quietly, for the tuning notebook
  (shown by :mod:`similar_images.presentation.tuning`);
* :mod:`.gallery`: the front end of the image and text apps (one custom widget: grid, lightbox, keys, uploads);
* :mod:`.voila_kernels`: the kernel manager the repository's ``voila.json`` gives Voilà.

Each notebook is a parameter cell and a call of one of these. To add an app,
put it in a module here and reuse :mod:`.common` (the "no database" message,
plain-words errors, the quiet output area) and :mod:`similar_images.presentation` (thumbnails, figures).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: Where each name lives; modules are imported on first use, so that ``similar_images.apps.voila_kernels`` (which
#: the Voilà server imports) does not load the apps, nor a notebook the apps it does not use.
_LAZY: dict[str, str] = {
    "ActionResult": "gallery",
    "ActionTarget": "gallery",
    "GalleryWidget": "gallery",
    "AppConfig": "image_app",
    "SimilarImagesApp": "image_app",
    "open_app": "image_app",
    "DatabaseMessage": "common",
    "find_database": "common",
    "MapView": "map_view",
    "DuplicateBrowser": "duplicates_app",
    "default_thresholds": "duplicates_app",
    "similarity_histogram": "duplicates_app",
    "TextSearchApp": "text_app",
    "text_search_app": "text_app",
}

__all__ = [
    "ActionResult",
    "ActionTarget",
    "AppConfig",
    "DatabaseMessage",
    "DuplicateBrowser",
    "GalleryWidget",
    "MapView",
    "SimilarImagesApp",
    "TextSearchApp",
    "default_thresholds",
    "find_database",
    "open_app",
    "similarity_histogram",
    "text_search_app",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from .common import DatabaseMessage, find_database
    from .duplicates_app import DuplicateBrowser, default_thresholds, similarity_histogram
    from .gallery import ActionResult, ActionTarget, GalleryWidget
    from .image_app import AppConfig, SimilarImagesApp, open_app
    from .map_view import MapView
    from .text_app import TextSearchApp, text_search_app
