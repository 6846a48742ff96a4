"""Shared test set-up: the repo root on sys.path, quiet TensorFlow, CPU only, and a fresh Keras state per test."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import pytest  # noqa: E402

# Where the real archives (mnist.npz, cifar-10-python.tar.gz) are, for the few tests that read them; they are
# skipped when the variable is unset or the files are absent (README, "Tests").
DATA_DIR = Path(os.environ["SUPERMASK_DATA_DIR"]).expanduser() if os.environ.get("SUPERMASK_DATA_DIR") else None


# The tiny looper config the looper and distribution tests start from: synthetic MNIST (four batches of 64 per
# epoch), the masked FCN, SGDW. Tests derive theirs with {**TINY_LOOPER, ...}; nested dicts are copied, never
# changed in place.
TINY_LOOPER = {
    "name": "tiny", "runs": 3, "base_seed": 11,
    "data": {"dataset": "mnist", "source": "synthetic", "synthetic_train": 256, "synthetic_test": 128,
             "batch_size": 64},
    "model": {"architecture": "fcn", "mask_mode": "signed", "threshold_fraction": 0.4},
    "training": {"epochs": 2, "verbose": 0,
                 "optimizer": {"name": "sgdw", "learning_rate": 0.05, "weight_decay": 5e-4}},
}

def real_data(name: str):
    """The path of a real archive in SUPERMASK_DATA_DIR, or None."""
    path = DATA_DIR / name if DATA_DIR is not None else None
    return path if path is not None and path.is_file() else None


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.mixed_precision.set_global_policy("float32")
    keras.utils.clear_session()
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(autouse=True)
def _no_op_determinism_leak():
    """The looper enables TF op determinism for the process, and Keras then silently drops jit_compile. Undo it
    after each test so that XLA tests really compile (TF has no public switch back, hence the private import)."""
    yield
    from tensorflow.python.framework import config as tf_config  # private: TF has no public switch back

    if tf_config.is_op_determinism_enabled():
        tf_config.disable_op_determinism()


@pytest.fixture
def home_with_archives(tmp_path, monkeypatch):
    """A HOME whose ~/datasets holds every dataset's local archive as an empty stand-in: commands written for a
    user's machine (`--data-dir ~/datasets`) validate, and nothing is loaded. Returns that folder."""
    from data_preprocessor import DATASETS

    folder = tmp_path / "datasets"
    folder.mkdir()
    for info in DATASETS.values():
        (folder / info.local_file).touch()
    monkeypatch.setenv("HOME", str(tmp_path))
    return folder
