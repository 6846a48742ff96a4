"""Which Keras backend runs, asked in one place.

    configured()     the backend Keras will use, read as Keras reads it (KERAS_BACKEND, else the "backend" of
                     $KERAS_HOME/keras.json, default ~/.keras/keras.json, else tensorflow) without importing Keras,
                     which would import the backend: the config's validation and tf_logs ask this
    on_tensorflow()  whether the imported Keras runs on TensorFlow: the data pipelines (tf.data or numpy), the
                     compile (the XLA switch) and the seeding (op determinism) ask this

Off TensorFlow (KERAS_BACKEND=jax, e.g. a GPU machine without TensorFlow) the data comes as numpy batches, the
train step is always compiled, and the TensorFlow-only switches (training.distribute, training.tensorboard) are
refused by the config.
"""

from __future__ import annotations

import json
import os

TENSORFLOW = "tensorflow"


def configured() -> str:
    """The backend Keras will use, without importing Keras."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend") or TENSORFLOW)
    except (OSError, ValueError, AttributeError):
        return TENSORFLOW


def on_tensorflow() -> bool:
    """Whether Keras (imported here) runs on TensorFlow."""
    import keras

    return keras.backend.backend() == TENSORFLOW
