"""Keras backends other than TensorFlow (e3a27b9): the numpy train/test pipelines, DataBundle over them, the stop
callbacks (a stop request ends fit right after the step during which it came; no batch hook reads
`Callback.model`), tf_logs and the looper without TensorFlow, and the same two train steps on both backends.

The numpy pipelines and the callbacks are tested here, on the TensorFlow backend. The JAX tests run the code in a
subprocess (KERAS_BACKEND=jax, JAX on the CPU) in which TensorFlow cannot be imported, as on a GPU machine that
has only JAX; they are skipped when this interpreter has no jax.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import keras
import numpy as np
import pytest

import backends
import data_preprocessor as dp
import experiment_looper
import model_trainer
import run_folder

ROOT = Path(__file__).resolve().parents[1]

needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
on_tensorflow = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="needs Keras on TensorFlow")


def _batches(stream, first_epoch, count):
    iterator = stream(first_epoch)
    return [next(iterator) for _ in range(count)]


# --------------------------------------------------------------------------------------------------------------
# The numpy pipelines (plain numpy: tested directly)
# --------------------------------------------------------------------------------------------------------------
def test_each_numpy_epoch_is_a_permutation_in_batches_with_the_last_smaller_batch_kept():
    n, batch_size, seed = 103, 16, 5
    x = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float32)
    y = np.arange(n)
    stream = dp._numpy_train_stream(x, y, batch_size, seed, False, None)
    steps = math.ceil(n / batch_size)
    batches = _batches(stream, 0, 3 * steps + 1)  # endless: epoch 3 goes on
    orders = []
    for epoch in range(3):
        epoch_batches = batches[epoch * steps : (epoch + 1) * steps]
        assert [len(b[1]) for b in epoch_batches] == [16] * 6 + [7]
        labels = np.concatenate([b[1] for b in epoch_batches])
        images = np.concatenate([b[0] for b in epoch_batches])
        assert all(isinstance(b[0], np.ndarray) and b[0].dtype == np.float32 for b in epoch_batches)
        assert sorted(labels) == list(range(n))  # every example once
        np.testing.assert_array_equal(images, x[labels])  # images stay with their labels
        np.testing.assert_array_equal(labels, dp.numpy_epoch_order(n, seed, epoch))
        orders.append(labels)
    assert not np.array_equal(orders[0], np.arange(n))  # shuffled
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    np.testing.assert_array_equal(batches[-1][1], dp.numpy_epoch_order(n, seed, 3)[:16])


@pytest.mark.parametrize("augment", [False, True])
def test_a_numpy_stream_started_at_epoch_e_is_the_tail_of_one_started_at_0(augment):
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, size=(21, 8, 8, 3)).astype(np.float32)
    y = np.arange(21)
    steps = math.ceil(21 / 5)
    stream = dp._numpy_train_stream(x, y, 5, 9, augment, (192,) if augment else None)
    full = _batches(stream, 0, 4 * steps)
    resumed = _batches(stream, 2, 2 * steps)
    again = _batches(dp._numpy_train_stream(x, y, 5, 9, augment, (192,) if augment else None), 0, 4 * steps)
    other_seed = _batches(dp._numpy_train_stream(x, y, 5, 10, augment, (192,) if augment else None), 0, steps)
    for a, b in zip(full[2 * steps :], resumed, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    for a, b in zip(full, again, strict=True):  # same seed, same batches
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(np.concatenate([b[1] for b in other_seed]),
                              np.concatenate([b[1] for b in full[:steps]]))


def test_shuffle_false_keeps_the_file_order_every_epoch():
    rng = np.random.default_rng(1)
    x = rng.uniform(1, 2, size=(10, 4, 4, 1)).astype(np.float32)
    y = np.arange(10)
    plain = _batches(dp._numpy_train_stream(x.reshape(10, 16), y, 4, 3, False, None, shuffle=False), 0, 6)
    assert [list(b[1]) for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2
    np.testing.assert_array_equal(np.concatenate([b[0] for b in plain[:3]]), x.reshape(10, 16))
    augmented = _batches(dp._numpy_train_stream(x, y, 4, 3, True, None, shuffle=False), 0, 6)
    assert [list(b[1]) for b in augmented] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] * 2
    epoch0, epoch1 = (np.concatenate([b[0] for b in augmented[k : k + 3]]) for k in (0, 3))
    assert not np.array_equal(epoch0, epoch1)  # augmented anew each epoch, in the same order


def _augmented_by_hand(image, row, col, flip):
    """Zero-pad 4 on each side, crop H x W at (row, col), mirror left-right: one pixel at a time."""
    height, width = image.shape[:2]
    out = np.zeros_like(image)
    for i in range(height):
        for j in range(width):
            source_j = (width - 1 - j) if flip else j
            r, c = i + row - 4, source_j + col - 4
            if 0 <= r < height and 0 <= c < width:
                out[i, j] = image[r, c]
    return out


def test_numpy_augment_pads_crops_and_flips():
    image = np.array([[1, 2], [3, 4]], np.float32)[:, :, None]
    cases = {((4, 4), False): [[1, 2], [3, 4]], ((4, 4), True): [[2, 1], [4, 3]],
             ((3, 4), False): [[0, 0], [1, 2]], ((4, 5), False): [[2, 0], [4, 0]],
             ((5, 5), True): [[0, 4], [0, 0]], ((0, 0), False): [[0, 0], [0, 0]],
             ((8, 8), True): [[0, 0], [0, 0]]}
    images = np.repeat(image[None], len(cases), axis=0)
    out = dp.numpy_augment(images, np.array([k[0] for k in cases]), np.array([k[1] for k in cases]))
    np.testing.assert_array_equal(out[..., 0], np.array(list(cases.values()), np.float32))
    assert out.dtype == np.float32

    rng = np.random.default_rng(2)
    images = rng.uniform(1, 2, size=(12, 6, 7, 3)).astype(np.float32)
    before = images.copy()
    offsets = rng.integers(0, 9, size=(12, 2))
    flips = rng.integers(0, 2, size=12).astype(bool)
    out = dp.numpy_augment(images, offsets, flips)
    np.testing.assert_array_equal(images, before)  # the input is left alone
    for k in range(12):
        np.testing.assert_array_equal(out[k], _augmented_by_hand(images[k], *offsets[k], flips[k]))


def test_the_augmented_flattened_stream_holds_crops_and_flips_of_its_examples():
    rng = np.random.default_rng(3)
    x = rng.uniform(1, 2, size=(20, 8, 8, 3)).astype(np.float32)  # no zero pixel: each crop is unambiguous
    y = np.arange(20)
    stream = dp._numpy_train_stream(x, y, 6, 4, True, (192,))
    batches = _batches(stream, 0, 8)  # two epochs of 4 batches
    assert [b[0].shape for b in batches[:4]] == [(6, 192)] * 3 + [(2, 192)]
    assert all(b[0].dtype == np.float32 for b in batches)
    chosen = []
    for images, labels in batches:
        for flat, label in zip(images, labels, strict=True):
            matches = [(r, c, f) for r in range(9) for c in range(9) for f in (False, True)
                       if np.array_equal(flat.reshape(8, 8, 3), _augmented_by_hand(x[label], r, c, f))]
            assert len(matches) == 1, (label, matches)
            chosen.append(matches[0])
    assert {f for _, _, f in chosen} == {False, True}
    assert len({(r, c) for r, c, _ in chosen}) > 10  # offsets vary over [0, 8]
    unflattened = _batches(dp._numpy_train_stream(x, y, 6, 4, True, None), 0, 4)
    for a, b in zip(batches[:4], unflattened, strict=True):
        assert b[0].shape[1:] == (8, 8, 3)
        np.testing.assert_array_equal(a[0], b[0].reshape(len(b[0]), 192))


def test_the_numpy_test_pipeline_is_the_test_set_in_file_order_and_reiterable():
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    y = np.arange(10)
    test = dp._numpy_test_pipeline(x, y, 4)
    assert isinstance(test, keras.utils.PyDataset)
    assert len(test) == 3 and test.x is x
    assert [list(test[i][1]) for i in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(np.concatenate([test[i][0] for i in range(3)]), x)
    for _ in range(2):  # Keras iterates it again every epoch
        assert [list(b[1]) for b in test] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for index in (3, 4, -1):
        with pytest.raises(IndexError):
            test[index]


# --------------------------------------------------------------------------------------------------------------
# DataBundle over the numpy pipelines
# --------------------------------------------------------------------------------------------------------------
def _rows_sorted(a):
    a = a.reshape(len(a), -1)
    return a[np.lexsort(a.T[::-1])]


@on_tensorflow
def test_a_numpy_bundle_has_the_shape_steps_and_data_of_the_tf_data_bundle(monkeypatch):
    assert backends.on_tensorflow()
    kwargs = dict(batch_size=32, synthetic_train=100, synthetic_test=40, seed=3)
    tf_bundle = dp.load_dataset("mnist", "synthetic", **kwargs)
    monkeypatch.setattr(backends, "on_tensorflow", lambda: False)
    bundle = dp.load_dataset("mnist", "synthetic", **kwargs)
    assert bundle.input_shape == tf_bundle.input_shape == (784,)
    assert bundle.steps_per_epoch == tf_bundle.steps_per_epoch == 4 and bundle.n_train == 100
    assert isinstance(bundle.test, keras.utils.PyDataset) and bundle.test.x.shape == (40, 784)
    tf_test = list(tf_bundle.test.as_numpy_iterator())
    assert len(bundle.test) == len(tf_test) == 2
    for (x, y), (tx, ty) in zip(bundle.test, tf_test, strict=True):
        np.testing.assert_array_equal(x, tx)
        np.testing.assert_array_equal(y, ty)

    epoch = bundle.epoch(1)
    assert isinstance(epoch, list) and len(epoch) == 4
    assert all(isinstance(x, np.ndarray) and isinstance(y, np.ndarray) for x, y in epoch)
    assert [x.shape for x, _ in epoch] == [(32, 784)] * 3 + [(4, 784)]
    assert [y.shape for _, y in epoch] == [(32, 10)] * 3 + [(4, 10)] and epoch[0][1].dtype == np.float32
    from_zero = _batches(bundle.stream, 0, 8)
    for (x, y), (fx, fy) in zip(epoch, from_zero[4:], strict=True):
        np.testing.assert_array_equal(x, fx)
        np.testing.assert_array_equal(y, fy)
    x1, x0 = (np.concatenate([x for x, _ in batches]) for batches in (epoch, from_zero[:4]))
    tf_x = np.concatenate([x for x, _ in tf_bundle.epoch(1).as_numpy_iterator()])
    np.testing.assert_array_equal(_rows_sorted(x1), _rows_sorted(tf_x))  # the same examples as on tf.data
    np.testing.assert_array_equal(_rows_sorted(x1), _rows_sorted(x0))
    assert not np.array_equal(x1, x0)  # in another order

    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(loss="categorical_crossentropy", metrics=["accuracy"])
    assert model.evaluate(bundle.test, verbose=0) == pytest.approx(model.evaluate(tf_bundle.test, verbose=0))


def test_an_augmented_numpy_bundle_keeps_the_image_shape(monkeypatch):
    monkeypatch.setattr(backends, "on_tensorflow", lambda: False)
    bundle = dp.load_dataset("cifar10", "synthetic", batch_size=16, augment=True, synthetic_train=40,
                             synthetic_test=8, seed=1)
    assert bundle.input_shape == (32, 32, 3) and bundle.steps_per_epoch == 3
    epoch = bundle.epoch(0)
    assert [x.shape for x, _ in epoch] == [(16, 32, 32, 3)] * 2 + [(8, 32, 32, 3)]
    assert all(x.dtype == np.float32 for x, _ in epoch)
    assert not np.array_equal(epoch[0][0], bundle.epoch(1)[0][0])


# --------------------------------------------------------------------------------------------------------------
# Stop callbacks
# --------------------------------------------------------------------------------------------------------------
class _SetEventAt(keras.callbacks.Callback):
    """Sets `event` when batch `batch` (0-based) of the first epoch begins, i.e. during that step; records the
    batches begun."""

    def __init__(self, event, batch):
        super().__init__()
        self.event, self.batch, self.begun = event, batch, []

    def on_train_batch_begin(self, batch, logs=None):
        self.begun.append(batch)
        if batch == self.batch:
            self.event.set()


class _ModelUnread:
    """Mixin: reading `Callback.model` fails (it syncs the JAX state, which races the step in flight when a batch
    hook runs on Keras' callback thread)."""

    @property
    def model(self):
        raise AssertionError("a batch hook read Callback.model")


class _GuardedStopOnRequest(_ModelUnread, model_trainer.StopOnRequest):
    pass


class _GuardedStopOnNonFinite(_ModelUnread, model_trainer.StopOnNonFinite):
    pass


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    return model


def _stop_request_fit(model):
    """fit 2 epochs of 10 batches; the stop request comes during step 3 (batch 2). Returns (history, setter)."""
    event = threading.Event()
    setter = _SetEventAt(event, 2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.standard_normal((40, 2)).astype(np.float32)
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                        callbacks=[setter, _GuardedStopOnRequest(event), _GuardedStopOnNonFinite()])
    return history, setter


@on_tensorflow
def test_a_stop_request_ends_fit_right_after_the_step_during_which_it_came():
    model = _tiny_model()
    history, setter = _stop_request_fit(model)
    assert setter.begun == [0, 1, 2]
    assert int(model.optimizer.iterations) == 3 and len(history.history["loss"]) == 1


class _SetEventAtEnd(_SetEventAt):
    """Sets `event` when batch `batch` ends: on TensorFlow, before the stopper's batch-end hook of that step."""

    def on_train_batch_begin(self, batch, logs=None):
        self.begun.append(batch)

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch:
            self.event.set()


@on_tensorflow
def test_on_tensorflow_a_request_that_comes_at_the_end_of_a_step_ends_fit_there():
    model, event = _tiny_model(), threading.Event()
    setter = _SetEventAtEnd(event, 2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.standard_normal((40, 2)).astype(np.float32)
    model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
              callbacks=[setter, _GuardedStopOnRequest(event)])
    assert setter.begun == [0, 1, 2] and int(model.optimizer.iterations) == 3


def test_the_epoch_recorder_counts_batches_as_they_begin():
    """Batch-end hooks may run out of order on Keras' callback threads (off TensorFlow); the count comes from the
    batch-begin hooks, which run in order on the main thread."""
    recorder = model_trainer.EpochRecorder([])
    recorder.on_epoch_begin(0)
    for batch in range(10):
        recorder.on_train_batch_begin(batch)
    for batch in (9, 3):  # late hooks of earlier batches change nothing
        recorder.on_train_batch_end(batch)
    assert recorder._batches == 10


def _nan_stopper_in_epoch(epoch, *, steps):
    """A StopOnNonFinite on a model-like object (reading Callback.model fails), inside epoch `epoch` (0-based) of
    `steps` batches."""
    fit_model = types.SimpleNamespace(stop_training=False)
    nan_stopper = _GuardedStopOnNonFinite()
    nan_stopper.set_model(fit_model)
    nan_stopper.set_params({"steps": steps})
    nan_stopper.on_train_begin()
    nan_stopper.on_epoch_begin(epoch)
    return fit_model, nan_stopper


def test_the_stoppers_set_stop_training_without_reading_callback_model():
    fit_model = types.SimpleNamespace(stop_training=False)
    event = threading.Event()
    stopper = _GuardedStopOnRequest(event)
    stopper.set_model(fit_model)
    stopper.on_train_batch_begin(0)
    stopper.on_epoch_begin(0)
    stopper.on_epoch_end(0, {})
    assert fit_model.stop_training is False  # no request, no stop
    event.set()
    stopper.on_train_batch_begin(1)  # a batch-begin hook (main thread) looks at the event
    assert fit_model.stop_training is True
    for hook in ("on_epoch_begin", "on_epoch_end"):
        fit_model.stop_training = False
        getattr(stopper, hook)(1, {})
        assert fit_model.stop_training is True, hook

    fit_model, nan_stopper = _nan_stopper_in_epoch(1, steps=5)
    nan_stopper.on_batch_end(1, {"loss": 0.5})
    assert fit_model.stop_training is False and not nan_stopper.triggered
    nan_stopper.on_batch_end(2, {"loss": float("nan")})
    assert fit_model.stop_training is True and nan_stopper.triggered
    assert (nan_stopper.epoch, nan_stopper.batch, nan_stopper.step) == (2, 3, 8)


def test_the_earliest_non_finite_batch_is_recorded_when_hooks_run_out_of_order(caplog):
    """Off TensorFlow Keras runs batch-end hooks on a pool of threads: a later batch's hook may run first."""
    fit_model, nan_stopper = _nan_stopper_in_epoch(0, steps=10)
    with caplog.at_level("WARNING", logger="model_trainer"):
        nan_stopper.on_batch_end(6, {"loss": float("inf")})
        nan_stopper.on_batch_end(3, {"loss": float("nan")})
        nan_stopper.on_batch_end(8, {"loss": float("nan")})
    assert fit_model.stop_training is True
    assert (nan_stopper.epoch, nan_stopper.batch, nan_stopper.step) == (1, 4, 4)
    assert math.isnan(nan_stopper.value)
    assert len([r for r in caplog.records if "loss became" in r.getMessage()]) == 1  # warned once


# --------------------------------------------------------------------------------------------------------------
# Device, tf_logs
# --------------------------------------------------------------------------------------------------------------
@on_tensorflow
def test_compute_device_names_the_backend_and_its_device(monkeypatch):
    assert experiment_looper.compute_device() == "tensorflow CPU"  # conftest hides the GPUs
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    assert experiment_looper.compute_device() == "torch"


def _python(code, *args, env=(), timeout=300):
    """Run `code` with this interpreter in a subprocess at the repository root; asserts it succeeded."""
    paths = [str(ROOT), str(ROOT / "tests"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    environment = {**os.environ, **dict(env), "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_tf_logs_imports_nothing_on_another_backend(tmp_path):
    code = "import sys, tf_logs; assert tf_logs.import_tensorflow() is None; assert 'tensorflow' not in sys.modules"
    _python(code, env={"KERAS_BACKEND": "jax"})
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    _python(code, env={"KERAS_BACKEND": "", "KERAS_HOME": str(tmp_path)})  # keras.json names the backend


# --------------------------------------------------------------------------------------------------------------
# JAX, in a subprocess without TensorFlow
# --------------------------------------------------------------------------------------------------------------
# Prepended to the JAX subprocesses: importing TensorFlow fails there, as on a machine that has only JAX.
NO_TENSORFLOW = """
import importlib.abc, sys
class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in ('tensorflow', 'tensorflow_datasets'):
            raise ModuleNotFoundError(f'No module named {name!r} (hidden by tests/test_backends.py)', name=name)
        return None
sys.meta_path.insert(0, _NoTensorFlow())
"""

JAX_ENV = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}


def _jax_python(code, *args, timeout=300):
    return _python(NO_TENSORFLOW + code, *args, env=JAX_ENV, timeout=timeout)


@needs_jax
def test_tensorflow_is_hidden_in_the_jax_subprocesses():
    _jax_python("import keras\nassert keras.backend.backend() == 'jax'\n"
                "try:\n    import tensorflow\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('imported')")


@needs_jax
def test_the_looper_trains_on_jax_without_tensorflow_and_records_the_device(tmp_path):
    code = ("import runpy\nsys.argv = ['experiment_looper.py', *sys.argv[1:]]\n"
            "runpy.run_path('experiment_looper.py', run_name='__main__')")
    _jax_python(code, "configs/fcn.yaml", "--data-source", "synthetic", "--set", "training.epochs=2", "--runs", "1",
                "--out", tmp_path)
    (path,) = tmp_path.glob("*/run_000/metrics.json")
    metrics = json.loads(path.read_text())
    assert metrics["status"] == "ok" and metrics["epochs_run"] == 2
    assert metrics["device"] == "jax CPU"
    history = json.loads((path.parent / "history.json").read_text())
    assert len(history) == 2 and all(math.isfinite(h["loss"]) for h in history)
    assert [(h["batches"], h["partial"]) for h in history] == [(history[0]["steps"], False)] * 2
    assert metrics["test_accuracy"] > 0.5  # synthetic data is learnable (1.0 after 2 epochs)
    # The export and its accuracy check run on the JAX test pipeline (a PyDataset, not a tf.data.Dataset).
    code = "import export\nraise SystemExit(export.main(sys.argv[1:]))"
    proc = _jax_python(code, path.parent, "--check-accuracy", "--no-summary", "--out", tmp_path / "export")
    assert "shrunk .keras reloaded" in proc.stdout and (tmp_path / "export" / run_folder.SHRUNK_KERAS).is_file()


def _jax_stop_checks():
    """Run in the JAX subprocess: with Keras' async callback dispatch on, a stop request ends fit right after the
    step during which it came, and a NaN loss stops fit within its epoch; the model's state is intact after."""
    assert keras.backend.backend() == "jax"

    class SlowBatchEnds(keras.callbacks.Callback):
        """Records the threads that run the batch-end hooks and makes those hooks lag the steps (a batch-end hook
        that looked at the stop request would then see it only after more steps had begun)."""

        async_safe = True

        def __init__(self):
            super().__init__()
            self.threads = set()

        def on_train_batch_end(self, batch, logs=None):
            self.threads.add(threading.current_thread())
            time.sleep(0.05)

    model = _tiny_model()
    slow = SlowBatchEnds()
    event = threading.Event()
    setter = _SetEventAt(event, 2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 3)).astype(np.float32), rng.standard_normal((40, 2)).astype(np.float32)
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                        callbacks=[setter, slow, _GuardedStopOnRequest(event), _GuardedStopOnNonFinite()])
    assert slow.threads and threading.main_thread() not in slow.threads, "no async dispatch"
    assert setter.begun == [0, 1, 2], setter.begun
    assert int(model.optimizer.iterations) == 3 and len(history.history["loss"]) == 1
    assert all(np.isfinite(w).all() for w in model.get_weights())
    model.evaluate(x, y, verbose=0)  # the state after the stop is usable

    model = _tiny_model()
    stopper = _GuardedStopOnNonFinite()
    x_nan = x.copy()
    x_nan[12:16] = np.nan  # batch 4 of each epoch
    history = model.fit(x_nan, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[stopper])
    assert stopper.triggered and stopper.epoch == 1 and stopper.batch >= 4
    assert len(history.history["loss"]) == 1 and 4 <= int(model.optimizer.iterations) <= 10
    print("stop checks passed")


@needs_jax
def test_stop_requests_and_nan_stops_on_jax():
    proc = _jax_python("import test_backends\ntest_backends._jax_stop_checks()")
    assert "stop checks passed" in proc.stdout


def _two_train_steps(name, inputs, output):
    """Build the model of configs/<name>.yaml, load the weights saved in `inputs`, compile it as the looper does
    and train two steps on the batch in `inputs`; save the step outputs and the weights to `output`."""
    import config as config_lib
    import run_folder

    cfg, _ = config_lib.load_config(ROOT / "configs" / f"{name}.yaml", ["data.source=synthetic"])
    model = run_folder.build_run_model(cfg, cfg.base_seed, 0)
    data = np.load(inputs)
    model.set_weights([data[f"w{i}"] for i in range(len(model.get_weights()))])
    t = cfg.training
    model_trainer.compile_model(model, model_trainer.make_optimizer(t.optimizer, t.schedule, 10, t.epochs),
                                label_format="one_hot")
    outputs = [np.asarray(model.train_on_batch(data["x"], data["y"]), np.float64) for _ in range(2)]
    weights = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    trainable = np.array([any(w is v for v in model.trainable_variables) for w in model.weights])
    np.savez(output, outputs=np.stack(outputs), jit_compile=np.asarray(model.jit_compile), trainable=trainable,
             backend=np.asarray(keras.backend.backend()), **weights)


@needs_jax
@on_tensorflow
@pytest.mark.parametrize("name", ["conv2", "resnet20"])  # masked convolutions; and batch normalisation
def test_two_train_steps_agree_on_tensorflow_and_jax(name, tmp_path):
    import config as config_lib
    import run_folder

    cfg, _ = config_lib.load_config(ROOT / "configs" / f"{name}.yaml", ["data.source=synthetic"])
    initial = run_folder.build_run_model(cfg, cfg.base_seed, 0).get_weights()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 32, 32, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 32)]
    np.savez(tmp_path / "inputs.npz", x=x, y=y, **{f"w{i}": w for i, w in enumerate(initial)})

    _two_train_steps(name, tmp_path / "inputs.npz", tmp_path / "tensorflow.npz")
    code = "import test_backends\ntest_backends._two_train_steps(sys.argv[1], sys.argv[2], sys.argv[3])"
    _jax_python(code, name, tmp_path / "inputs.npz", tmp_path / "jax.npz")
    tf_run, jax_run = np.load(tmp_path / "tensorflow.npz"), np.load(tmp_path / "jax.npz")

    assert (str(tf_run["backend"]), str(jax_run["backend"])) == ("tensorflow", "jax")
    assert not tf_run["jit_compile"] and jax_run["jit_compile"]  # JAX always compiles the train step
    assert tf_run["outputs"].shape == (2, 2)  # loss and accuracy of each step
    np.testing.assert_allclose(jax_run["outputs"], tf_run["outputs"], rtol=0, atol=1e-5)
    moved = 0.0
    for i, before in enumerate(initial):
        np.testing.assert_allclose(jax_run[f"w{i}"], tf_run[f"w{i}"], rtol=0, atol=1e-5, err_msg=f"weight {i}")
        moved = max(moved, float(np.abs(tf_run[f"w{i}"] - before).max()))
        if tf_run["trainable"][i]:
            assert not np.array_equal(tf_run[f"w{i}"], before), f"trainable weight {i} did not move"
    assert moved > 100 * 1e-5  # the steps moved the weights far more than the tolerance
