"""Multi-device training: MirroredStrategy on 2 virtual CPU devices gives the result of one device.

TensorFlow's logical device configuration must be set before TF initialises its devices, which other tests in this
pytest process have already done; the 2-device part therefore runs once, in a subprocess (`_HELPER`, which splits
the CPU into two logical devices and then calls `subprocess_main` of this module), and writes its results to files
that the tests compare with single-device runs made here, in the pytest process.

Tolerances: the replicas' gradients are summed by an all-reduce, so float sums differ in the last bits from the
single-device step; losses and masks agree to ~1e-6, and an effective-mask entry may flip only where |m| is within
rounding of tau.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_LOOPER

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

GLOBAL_BATCH = 64
STEPS = 6
SEED = 0

# The tiny looper config of conftest, one run of three epochs.
# Four batches per epoch, so the order of the examples matters: under a strategy, Keras 3's fit
# (`_maybe_symbolic_build`) draws one batch from an extra iterator of the training set before the first epoch.
# With a reshuffle-each-iteration seed that used up epoch 1's order (a mirrored run trained on the orders of
# epochs 2, 3, ...); an epoch's order is now a pure function of (seed, epoch), and the two runs must agree to
# rounding. Shifting every epoch's order by one moves these epochs' losses by 1.5-18 % (checked by hand).
LOOPER_CFG = {**TINY_LOOPER, "name": "dist", "runs": 1, "base_seed": 5,
              "training": {**TINY_LOOPER["training"], "epochs": 3}}

_HELPER = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import test_distribute
test_distribute.subprocess_main(sys.argv[3:])
"""


# --------------------------------------------------------------------------------------------------------------
# Shared by the pytest process and the 2-device subprocess
# --------------------------------------------------------------------------------------------------------------
def fixed_data(n=GLOBAL_BATCH * STEPS, seed=SEED):
    """Learnable MNIST-shaped data: 784 features, one-hot labels of 10 classes (class means + noise)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(10, 784)).astype("float32")
    y = np.arange(n) % 10
    x = centers[y] + rng.normal(scale=1.0, size=(n, 784)).astype("float32")
    return x.astype("float32"), np.eye(10, dtype="float32")[y]


def train_fcn(devices=None) -> dict:
    """A masked FCN 784-32-16-10 trained for STEPS steps of GLOBAL_BATCH with SGDW (exponential schedule) through
    model_trainer's compile path, under MirroredStrategy(devices) or without a strategy (devices None).

    Returns replicas, the running-mean loss Keras logs after every step, and per layer the final mask, effective
    mask and threshold."""
    import keras
    import tensorflow as tf

    import model_trainer
    from architectures import build_model
    from custom_layers import MaskedLayers, masked_layers

    keras.utils.set_random_seed(SEED)
    x, y = fixed_data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    strategy = tf.distribute.MirroredStrategy(devices) if devices else None
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = build_model("fcn", MaskedLayers(seed=SEED), hidden=(32, 16))
        model_trainer.prepare_model(
            model, optimizer=model_trainer.OptimizerSpec("sgdw", learning_rate=0.1, weight_decay=5e-4),
            schedule=model_trainer.ScheduleSpec("exponential_decay", decay_epochs=1, decay_rate=0.5),
            steps_per_epoch=STEPS, epochs=1)
    losses: list[float] = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: losses.append(float(logs["loss"])))
    model.fit(ds, epochs=1, verbose=0, callbacks=[record], shuffle=False)
    out = {"replicas": int(strategy.num_replicas_in_sync) if strategy is not None else 1, "losses": losses,
           "steps": int(keras.ops.convert_to_numpy(model.optimizer.iterations))}
    arrays = {}
    for layer in masked_layers(model):
        arrays[f"{layer.name}/mask"] = keras.ops.convert_to_numpy(layer.mask)
        arrays[f"{layer.name}/effective"] = keras.ops.convert_to_numpy(layer.effective_mask())
        arrays[f"{layer.name}/threshold"] = np.asarray(keras.ops.convert_to_numpy(layer.threshold))
    keras.utils.clear_session()
    return {**out, "arrays": arrays}


def run_looper(config_path: Path, out_dir: Path, extra=()) -> dict:
    """experiment_looper.main on `config_path`; returns the exit code and run_000's metrics and history."""
    import experiment_looper

    code = experiment_looper.main([str(config_path), "--out", str(out_dir), *extra])
    result = {"code": code}
    runs = list(Path(out_dir).glob("*/run_000"))
    if len(runs) == 1:
        result["metrics"] = json.loads((runs[0] / "metrics.json").read_text())
        result["history"] = json.loads((runs[0] / "history.json").read_text())
    return result


def subprocess_main(argv) -> None:
    """Runs in a 2-device subprocess. argv = task out_dir [configs...]:

    fit     out_dir                     train_fcn on MirroredStrategy(["/cpu:0", "/cpu:1"]) -> fit.json, fit.npz
    looper  out_dir config [config2]    experiment_looper.main on config (training.distribute: mirrored), then on
                                        config2 in the same process (a second strategy, another model) -> looper.json
    """
    import tensorflow as tf

    task, out_dir = argv[0], Path(argv[1])
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if task == "fit":
        fit = train_fcn(["/cpu:0", "/cpu:1"])
        np.savez(out_dir / "fit.npz", **fit.pop("arrays"))
        (out_dir / "fit.json").write_text(json.dumps({"devices": devices, "fit": fit}))
        return
    # The looper's strategy is `tf.distribute.MirroredStrategy()` with no device list; how many devices it takes is
    # read after the looper's first run, from experiment_looper.distribution_strategy itself. (Every call makes a
    # new strategy; a second strategy in one process breaks all-reduces of other shapes, see
    # test_looper_second_mirrored_run_in_one_process. Making one here that runs no collective is harmless.)
    result = {"devices": devices, "default_strategy_replicas": None, "first": run_looper(Path(argv[2]),
                                                                                            out_dir / "first")}
    import experiment_looper

    result["default_strategy_replicas"] = int(experiment_looper.distribution_strategy(
        _parse(Path(argv[2]))).num_replicas_in_sync)
    if len(argv) > 3:
        try:
            result["second"] = run_looper(Path(argv[3]), out_dir / "second")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            result["second"] = {"code": None, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
    (out_dir / "looper.json").write_text(json.dumps(result))


def _parse(path: Path):
    import config as config_lib

    return config_lib.load_config(path)[0]


# --------------------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------------------
def _write_config(directory: Path, raw: dict, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(raw))
    return path


# A second, differently shaped model for a second looper call in the same process (masked Conv2 at width 1/8).
SECOND_CFG = {
    "name": "dist2", "runs": 1, "base_seed": 5,
    "data": {"dataset": "cifar10", "source": "synthetic", "synthetic_train": 128, "synthetic_test": 64,
             "batch_size": 64},
    "model": {"architecture": "conv2", "mask_mode": "signed", "width": 0.125},
    "training": {"epochs": 1, "verbose": 0, "distribute": "mirrored",
                 "optimizer": {"name": "sgdw", "learning_rate": 0.05, "weight_decay": 5e-4}},
}


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory):
    """Run the two 2-device subprocesses (fit, looper) concurrently, once; their results."""
    tmp = tmp_path_factory.mktemp("mirrored")
    first = _write_config(tmp, {**LOOPER_CFG, "training": {**LOOPER_CFG["training"], "distribute": "mirrored"}},
                          "mirrored.yaml")
    second = _write_config(tmp, SECOND_CFG, "second.yaml")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    procs = {}
    for task, args in (("fit", []), ("looper", [str(first), str(second)])):
        (tmp / task).mkdir()
        procs[task] = subprocess.Popen(
            [sys.executable, "-c", _HELPER, str(ROOT), str(TESTS), task, str(tmp / task), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for task, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        assert proc.returncode == 0, f"2-device subprocess {task} failed:\n{out[-3000:]}\n{err[-5000:]}"
    result = json.loads((tmp / "fit" / "fit.json").read_text())
    with np.load(tmp / "fit" / "fit.npz") as data:
        result["arrays"] = {k: data[k] for k in data.files}
    result["looper"] = json.loads((tmp / "looper" / "looper.json").read_text())
    return result


def test_subprocess_sees_two_replicas(mirrored):
    assert len(mirrored["devices"]) == 2 and len(mirrored["looper"]["devices"]) == 2
    assert mirrored["fit"]["replicas"] == 2
    # The looper's `MirroredStrategy()` (no device list) also takes both logical CPU devices.
    assert mirrored["looper"]["default_strategy_replicas"] == 2


def test_mirrored_fit_matches_one_device(mirrored):
    single = train_fcn(None)
    multi = mirrored["fit"]
    assert single["replicas"] == 1 and multi["replicas"] == 2
    assert single["steps"] == multi["steps"] == STEPS
    assert len(multi["losses"]) == len(single["losses"]) == STEPS
    np.testing.assert_allclose(multi["losses"], single["losses"], rtol=1e-4, atol=1e-5)
    assert single["losses"][-1] < single["losses"][0]  # it trained
    a, b = single["arrays"], mirrored["arrays"]
    assert sorted(a) == sorted(b)
    changed = 0
    for key in a:
        if key.endswith("/threshold"):  # fixed at build time from the seeded initial mask: identical
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=0)
        elif key.endswith("/mask"):
            np.testing.assert_allclose(b[key], a[key], rtol=0, atol=1e-5, err_msg=key)
        else:
            assert a[key].shape == b[key].shape
            assert np.mean(a[key] == b[key]) >= 0.999, key
    # The masks moved: the comparison is not between two untouched initialisations.
    init = train_fcn_initial_masks()
    for key, m0 in init.items():
        changed += int(np.count_nonzero(np.abs(a[key] - m0) > 1e-4))
    assert changed > 0


def train_fcn_initial_masks() -> dict:
    import keras

    from architectures import build_model
    from custom_layers import MaskedLayers, masked_layers

    model = build_model("fcn", MaskedLayers(seed=SEED), hidden=(32, 16))
    out = {f"{layer.name}/mask": keras.ops.convert_to_numpy(layer.mask) for layer in masked_layers(model)}
    keras.utils.clear_session()
    return out


@pytest.fixture
def restore_op_determinism():
    """The looper enables TF op determinism process-wide (training.deterministic: true) and never disables it,
    which also turns jit_compile off for every later model of the process; restore the previous state."""
    from tensorflow.python.framework import config as tf_config  # private: TF has no public switch back

    was = tf_config.is_op_determinism_enabled()
    yield
    if not was:
        tf_config.disable_op_determinism()


def test_looper_mirrored_config_matches_single_device(mirrored, tmp_path, restore_op_determinism):
    multi = mirrored["looper"]["first"]
    assert multi["code"] == 0 and multi["metrics"]["status"] == "ok", multi
    config = _write_config(tmp_path, LOOPER_CFG, "single.yaml")
    single = run_looper(config, tmp_path / "out")
    assert single["code"] == 0 and single["metrics"]["status"] == "ok"
    m1, m2 = single["metrics"], multi["metrics"]
    assert m1["total_weights"] == m2["total_weights"]
    assert m2["epochs_run"] == m1["epochs_run"] == LOOPER_CFG["training"]["epochs"]
    # Effective masks may flip only for entries within rounding of tau: a handful of 266,200 weights.
    assert abs(m2["remaining_weights"] - m1["remaining_weights"]) <= 1e-5 * m1["total_weights"], (m1, m2)
    for h1, h2 in zip(single["history"], multi["history"]):
        assert h2["loss"] == pytest.approx(h1["loss"], rel=1e-4, abs=1e-5)
        assert h2["test_loss"] == pytest.approx(h1["test_loss"], rel=1e-4, abs=1e-5)
        assert abs(h2["remaining_weights"] - h1["remaining_weights"]) <= 1e-5 * h1["total_weights"]
    assert single["history"][-1]["remaining_weights"] != single["history"][0]["remaining_weights"] or \
        single["history"][-1]["loss"] < single["history"][0]["loss"]  # it trained


@pytest.fixture
def op_determinism_off():
    """XLA needs op determinism off: Keras' `model_supports_jit` returns False while it is enabled, and then
    `compile(jit_compile=True)` only warns and runs without XLA. The looper enables determinism process-wide for
    `training.deterministic: true` (the default) and never disables it, so switch it off here, and restore."""
    from tensorflow.python.framework import config as tf_config  # private: TF has no public switch back

    was = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    yield
    if was:
        tf_config.enable_op_determinism()


@pytest.mark.parametrize("precision", ["mixed_float16"])
def test_looper_mixed_precision_with_xla_runs_one_epoch(tmp_path, precision, op_determinism_off):
    import warnings

    import keras

    raw = {**LOOPER_CFG, "training": {**LOOPER_CFG["training"], "epochs": 1, "jit_compile": True,
                                      "deterministic": False, "mixed_precision": precision}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_looper(_write_config(tmp_path, raw, f"{precision}.yaml"), tmp_path / "out")
    assert not [w for w in caught if "jit_compile" in str(w.message)], "XLA was not used"
    assert result["code"] == 0 and result["metrics"]["status"] == "ok", result
    (epoch,) = result["history"]
    assert math.isfinite(epoch["loss"]) and math.isfinite(epoch["test_loss"])
    assert 0 < result["metrics"]["remaining_weights"] <= result["metrics"]["total_weights"]
    assert keras.mixed_precision.global_policy().name == "float32"  # the looper restored the policy


def test_looper_second_mirrored_run_in_one_process(mirrored):
    """A sweep (or a second config) with distribute: mirrored and a different model, in the same process."""
    second = mirrored["looper"]["second"]
    assert second.get("code") == 0 and second["metrics"]["status"] == "ok", second
