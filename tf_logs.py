"""TensorFlow's start-up noise, quieted without hiding real warnings.

Importing TensorFlow 2.21 prints, from C++ and before any log level applies, twice:

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 ... port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results ...

`import_tensorflow()` sets TF_CPP_MIN_LOG_LEVEL=2 (TensorFlow's own INFO and WARNING lines; errors still show)
unless the user set it, imports TensorFlow with the process's stderr (file descriptor 2) captured, and writes back
everything it printed except the lines in NOISE. The command-line tools call it before they need TensorFlow.
On another Keras backend (KERAS_BACKEND=jax or torch, or keras.json) it imports nothing and returns None.

    SUPERMASK_TF_LOGS=1   no filtering and TensorFlow's full logs (TF_CPP_MIN_LOG_LEVEL=0)
"""

from __future__ import annotations

import os
import sys
import tempfile

import backends

NOISE = ("All log messages before absl::InitializeLog() is called are written to STDERR",
         "oneDNN custom operations are on")


def import_tensorflow():
    """Import TensorFlow (once) with its start-up noise filtered out; returns the module, or None when Keras runs
    on another backend (backends.configured: KERAS_BACKEND, else keras.json)."""
    if backends.configured() != backends.TENSORFLOW:
        return None
    if os.environ.get("SUPERMASK_TF_LOGS"):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        import tensorflow

        return tensorflow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not any(noise in line for noise in NOISE)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
    return tensorflow
