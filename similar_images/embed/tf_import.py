"""TensorFlow and Keras, imported quietly.

TensorFlow's C++ runtime writes start-up lines to stderr as it loads (absl's
"All log messages before absl::InitializeLog() is called ...", the
``cpu_feature_guard`` list of CPU instructions, oneDNN's notice), and absl's
Python logger repeats warnings of its own. None of them is about the user's
images. Every TensorFlow or Keras import of the library goes through this
module, which keeps those lines to errors first, unless the user chose
otherwise: an explicit ``TF_CPP_MIN_LOG_LEVEL`` or a level set on the
``absl`` logger wins.
"""

from __future__ import annotations

import logging
import os
from typing import Any

__all__ = ["quiet_tensorflow", "import_keras", "import_tensorflow"]


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ log and absl's Python log to errors, where the user has not set them.

    Must run before TensorFlow's first import to reach its C++ start-up lines; afterwards it changes nothing
    for them (the runtime reads ``TF_CPP_MIN_LOG_LEVEL`` once).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # 2: errors only (0 info, 1 warnings)
    absl = logging.getLogger("absl")
    if absl.level == logging.NOTSET:
        absl.setLevel(logging.ERROR)


def import_keras() -> Any:
    """The ``keras`` module, imported after :func:`quiet_tensorflow`."""
    quiet_tensorflow()
    import keras  # noqa: PLC0415  (heavy: TensorFlow)

    return keras


def import_tensorflow() -> Any:
    """The ``tensorflow`` module, imported after :func:`quiet_tensorflow`."""
    quiet_tensorflow()
    import tensorflow as tf  # noqa: PLC0415  (heavy: TensorFlow)

    return tf
