"""The HTTP search service: routes (:mod:`.app`), logic without HTTP (:mod:`.logic`), one error-to-status table
(:mod:`.errors`), batching of model calls (:mod:`.batching`), settings (:mod:`.config`) and offline API docs
(:mod:`.api_docs`).

``uvicorn --factory similar_images.service:create_app`` (with ``SIMILAR_IMAGES_SERVE_DB`` set), or
``similar-images serve DB``.
"""

from __future__ import annotations

from .app import create_app
from .config import APP_FACTORY, ENV_PREFIX, ServeConfig
from .logic import ServiceState

__all__ = ["create_app", "ServeConfig", "ServiceState", "APP_FACTORY", "ENV_PREFIX"]
