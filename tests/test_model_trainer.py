"""Tests of model_trainer: SGDW equivalence, schedules, the authors' plateau, mask accounting, short training runs
and the NaN guard. Synthetic data only (class templates + noise), tiny models; the file runs in well under a minute
on 2 CPU cores."""

import json
import math
import threading
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

import model_trainer as mt
from architectures import build_model
from custom_layers import BaselineLayers, MaskedDense, MaskedLayers, mask_statistics, masked_layers

NUM_CLASSES = 10
DIM = 784


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
def _arrays(n, seed, noise=2.0):
    """Learnable data: a fixed random template per class plus Gaussian noise, standardised per example."""
    templates = np.random.default_rng(1234).normal(size=(NUM_CLASSES, DIM)).astype("float32")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n)
    x = templates[y] + noise * rng.normal(size=(n, DIM)).astype("float32")
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return x.astype("float32"), y.astype("int32")


def _bundle(label_format="one_hot", n_train=512, n_test=256, batch_size=64):
    """A DataBundle look-alike (duck-typed: train_from(epoch), test, steps_per_epoch, label_format)."""
    xtr, ytr = _arrays(n_train, 1)
    xte, yte = _arrays(n_test, 2)
    if label_format == "one_hot":
        ytr, yte = np.eye(NUM_CLASSES, dtype="float32")[ytr], np.eye(NUM_CLASSES, dtype="float32")[yte]
    train = tf.data.Dataset.from_tensor_slices((xtr, ytr)).shuffle(n_train, seed=0).batch(batch_size)
    test = tf.data.Dataset.from_tensor_slices((xte, yte)).batch(batch_size)
    return SimpleNamespace(train=train, train_from=lambda epoch: train.repeat(), test=test,
                           steps_per_epoch=math.ceil(n_train / batch_size), label_format=label_format,
                           n_train=n_train, n_test=n_test)


def _kernels(model):
    return {layer.name: np.array(layer.kernel) for layer in masked_layers(model)}


def _masks(model):
    return {layer.name: np.array(layer.mask) for layer in masked_layers(model)}


# --------------------------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    ({"name": "sgdx"}, "name"), ({"learning_rate": 0.0}, "learning_rate"), ({"learning_rate": float("nan")},
                                                                           "learning_rate"),
    ({"momentum": 1.0}, "momentum"), ({"momentum": -0.1}, "momentum"), ({"weight_decay": -1e-4}, "weight_decay"),
])
def test_optimizer_spec_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        mt.OptimizerSpec(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "step"}, "name"), ({"decay_epochs": 0}, "decay_epochs"), ({"decay_rate": 0.0}, "decay_rate"),
    ({"alpha": 1.5}, "alpha"), ({"patience": 2}, "patience"), ({"factor": 1.0}, "factor"),
    ({"cooldown": -1}, "cooldown"), ({"start_epoch": 1.5}, "start_epoch"), ({"max_reductions": 0}, "max_reductions"),
    ({"min_delta": -1.0}, "min_delta"),
])
def test_schedule_spec_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        mt.ScheduleSpec(**kwargs)


# --------------------------------------------------------------------------------------------------------------
# Optimisers: Keras 3 SGD(weight_decay=wd/lr0) == the authors' tfa SGDW
# --------------------------------------------------------------------------------------------------------------
def _sgdw_reference(v0, a, steps, lr0, rate, decay_steps, wd0, mu, decay_first=True, wd_follows_lr=True):
    """The authors' SGDW on L = 0.5 * sum(a * v^2), by hand in float64:

        g_t   = a * v_t                         (gradient at the pre-step value)
        lr_t  = lr0 * rate ** (t / decay_steps),  wd_t = wd0 * lr_t / lr0
        v     <- v - wd_t * v                   (decoupled decay, applied first)
        buf   <- mu * buf - lr_t * g_t
        v     <- v + mu * buf - lr_t * g_t      (Nesterov)

    decay_first / wd_follows_lr switch to plausible wrong variants, to show the test can tell them apart.
    """
    v = np.array(v0, dtype=np.float64)
    buf = np.zeros_like(v)
    for t in range(steps):
        lr = lr0 * rate ** (t / decay_steps)
        wd = wd0 * lr / lr0 if wd_follows_lr else wd0
        g = a * v
        if decay_first:
            v = v - wd * v
        buf = mu * buf - lr * g
        v = v + mu * buf - lr * g
        if not decay_first:
            v = v - wd * v
    return v


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_sgdw_matches_hand_computation(steps):
    lr0, rate, wd0, mu = 0.1, 0.5, 0.05, 0.9
    spec = mt.OptimizerSpec("sgdw", learning_rate=lr0, momentum=mu, nesterov=True, weight_decay=wd0)
    # steps_per_epoch=1, decay_epochs=1: lr halves every step, so lr_t != lr0 from step 2 on.
    schedule = mt.ScheduleSpec("exponential_decay", decay_epochs=1.0, decay_rate=rate)
    opt = mt.make_optimizer(spec, schedule, steps_per_epoch=1, epochs=10)
    assert isinstance(opt, keras.optimizers.SGD) and opt.nesterov and opt.momentum == pytest.approx(mu)
    assert opt.weight_decay == pytest.approx(wd0 / lr0)

    v0, a = np.array([1.0, -2.0, 0.5, 3.0]), np.array([1.0, 2.0, 3.0, 0.5])
    var = keras.Variable(v0.astype("float32"))
    a_t = tf.constant(a, dtype="float32")
    for _ in range(steps):
        with tf.GradientTape() as tape:
            loss = 0.5 * tf.reduce_sum(a_t * var.value ** 2)
        opt.apply([tape.gradient(loss, var.value)], [var])
    got = np.array(var, dtype=np.float64)

    expected = _sgdw_reference(v0, a, steps, lr0, rate, 1.0, wd0, mu)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # The wrong variants really differ (so the assertion above can fail).
    if steps >= 2:
        constant_wd = _sgdw_reference(v0, a, steps, lr0, rate, 1.0, wd0, mu, wd_follows_lr=False)
        assert np.max(np.abs(constant_wd - expected)) > 1e-3
    decay_last = _sgdw_reference(v0, a, steps, lr0, rate, 1.0, wd0, mu, decay_first=False)
    assert np.max(np.abs(decay_last - expected)) > 1e-4


def test_zero_gradient_decay_shrinks_mask_by_one_minus_wd_t():
    lr0, wd0, rate = 0.05, 5e-3, 0.5
    layer = MaskedDense(6, mask_initializer=keras.initializers.RandomUniform(-1, 1, seed=3))
    layer.build((None, 5))
    kernel0 = np.array(layer.kernel)
    opt = mt.make_optimizer(mt.OptimizerSpec("sgdw", learning_rate=lr0, weight_decay=wd0),
                            mt.ScheduleSpec("exponential_decay", decay_epochs=2.0, decay_rate=rate),
                            steps_per_epoch=1, epochs=10)
    mask = np.array(layer.mask, dtype=np.float64)
    for t in range(4):
        before = np.array(layer.mask, dtype=np.float64)
        opt.apply([tf.zeros_like(layer.mask.value)], [layer.mask])
        wd_t = wd0 * rate ** (t / 2.0)  # wd0 * lr_t / lr0
        np.testing.assert_allclose(np.array(layer.mask), before * (1.0 - wd_t), rtol=1e-6)
        mask = mask * (1.0 - wd_t)
    np.testing.assert_allclose(np.array(layer.mask), mask, rtol=1e-5)
    np.testing.assert_array_equal(np.array(layer.kernel), kernel0)


@pytest.mark.parametrize("name, cls, decay", [
    ("sgd", keras.optimizers.SGD, None), ("adam", keras.optimizers.Adam, None),
    ("adamw", keras.optimizers.AdamW, 1e-3 / 0.01), ("rmsprop", keras.optimizers.RMSprop, None),
])
def test_other_optimizers(name, cls, decay, caplog):
    with caplog.at_level("WARNING", logger=mt.log.name):
        opt = mt.make_optimizer(mt.OptimizerSpec(name, learning_rate=0.01, weight_decay=1e-3, momentum=0.5),
                                mt.ScheduleSpec("constant"), steps_per_epoch=10, epochs=3)
    assert type(opt) is cls
    # an ignored weight decay is said out loud: it is what prunes a Supermask
    warned = f"optimizer {name} applies no weight decay: weight_decay=0.001 is ignored" in caplog.text
    assert warned == (decay is None)
    if decay is None:
        assert not opt.weight_decay
        assert mt.effective_weight_decay(opt) == 0.0
    else:
        assert opt.weight_decay == pytest.approx(decay)
        assert mt.effective_weight_decay(opt) == pytest.approx(1e-3)
    if name in ("sgd", "rmsprop"):
        assert opt.momentum == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------------------
def _lr_at(lr, step):
    return float(keras.ops.convert_to_numpy(lr(step))) if callable(lr) else float(lr)


def test_exponential_schedule_values():
    spe, lr0 = 50, 0.05
    lr = mt.make_learning_rate(mt.ScheduleSpec("exponential_decay"), lr0, steps_per_epoch=spe, epochs=100)
    assert _lr_at(lr, 0) == pytest.approx(lr0, rel=1e-6)
    assert _lr_at(lr, 10 * spe) == pytest.approx(lr0 * 0.9, rel=1e-6)
    assert _lr_at(lr, 15 * spe) == pytest.approx(lr0 * 0.9 ** 1.5, rel=1e-6)
    assert _lr_at(lr, 100 * spe) == pytest.approx(lr0 * 0.9 ** 10, rel=1e-5)  # after 100 epochs: 0.349 * lr0
    stair = mt.make_learning_rate(mt.ScheduleSpec("exponential_decay", staircase=True), lr0, spe, 100)
    assert _lr_at(stair, 15 * spe) == pytest.approx(lr0 * 0.9, rel=1e-6)
    five = mt.make_learning_rate(mt.ScheduleSpec("exponential_decay", decay_epochs=5, decay_rate=0.5), lr0, spe, 100)
    assert _lr_at(five, 15 * spe) == pytest.approx(lr0 * 0.125, rel=1e-6)


def test_cosine_schedule_values():
    spe, epochs, lr0, alpha = 20, 10, 0.1, 0.1
    lr = mt.make_learning_rate(mt.ScheduleSpec("cosine_decay", alpha=alpha), lr0, spe, epochs)
    total = spe * epochs
    assert _lr_at(lr, 0) == pytest.approx(lr0, rel=1e-6)
    assert _lr_at(lr, total // 2) == pytest.approx(lr0 * (alpha + (1 - alpha) * 0.5), rel=1e-5)
    assert _lr_at(lr, total // 4) == pytest.approx(lr0 * (alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi / 4))),
                                                   rel=1e-5)
    assert _lr_at(lr, total) == pytest.approx(lr0 * alpha, rel=1e-5)


@pytest.mark.parametrize("name", ["constant", "plateau"])
def test_constant_schedule_is_a_settable_float(name):
    lr = mt.make_learning_rate(mt.ScheduleSpec(name), 0.3, steps_per_epoch=10, epochs=5)
    assert isinstance(lr, float) and lr == 0.3
    opt = mt.make_optimizer(mt.OptimizerSpec(learning_rate=0.3, weight_decay=3e-4), mt.ScheduleSpec(name), 10, 5)
    assert mt.current_learning_rate(opt) == pytest.approx(0.3)
    assert mt.effective_weight_decay(opt) == pytest.approx(3e-4)
    opt.learning_rate = 0.06
    assert mt.current_learning_rate(opt) == pytest.approx(0.06)
    assert mt.effective_weight_decay(opt) == pytest.approx(6e-5)  # wd follows lr


# --------------------------------------------------------------------------------------------------------------
# The authors' reduce-on-plateau
# --------------------------------------------------------------------------------------------------------------
def _plateau_model(lr0):
    model = build_model("fcn", MaskedLayers(seed=0), input_shape=(5,), hidden=(4,), num_classes=2)
    mt.prepare_model(model, optimizer=mt.OptimizerSpec("sgdw", learning_rate=lr0, weight_decay=5e-4),
                     schedule=mt.ScheduleSpec("plateau"), steps_per_epoch=1, epochs=20)
    return model


def test_paper_plateau_on_a_synthetic_loss_sequence():
    # patience 4 -> the window is the previous patience - 2 = 2 epochs' losses; checks begin once start_epoch = 2
    # epochs are complete (first check at the end of epoch 3); cooldown 2; factor 0.5; 3 reductions; lr0 0.1.
    #
    # epoch loss     window (prev 2)  min      improving?                   wait  action
    #   1   1.00     -                -        no check (before start)      0
    #   2   1.20     -                -        no check (worse, ignored)    0
    #   3   0.80     1.00 1.20        1.00     yes                          0
    #   4   0.85     1.20 0.80        0.80     no                           1
    #   5   0.70     0.80 0.85        0.80     yes                          1
    #   6   0.75     0.85 0.70        0.70     no                           2
    #   7   0.76     0.70 0.75        0.70     no                           3
    #   8   0.74995  0.75 0.76        0.75     no: 0.74995+1e-4 >= 0.75     4     (4 > 4 false)
    #   9   0.60     0.76 0.74995     0.74995  yes                          4
    #  10   0.65     0.74995 0.60     0.60     no                           5     5 > 4: lr 0.1 -> 0.05, cooldown 2
    #  11   0.90     cooldown 2 -> 1 (no check although worse)              5
    #  12   0.90     cooldown 1 -> 0                                         5
    #  13   0.70     0.90 0.90        0.90     yes (wait is not reset)      5     (a 3-epoch window would see 0.65)
    #  14   0.72     0.90 0.70        0.70     no                           6     lr 0.05 -> 0.025, cooldown 2
    #  15   0.40     cooldown                                               6
    #  16   0.30     cooldown                                               6
    #  17   0.30     0.40 0.30        0.30     no: 0.3+1e-4 >= 0.3          7     lr -> 0.0125; 3rd -> stop
    losses = [1.00, 1.20, 0.80, 0.85, 0.70, 0.75, 0.76, 0.74995, 0.60, 0.65, 0.90, 0.90, 0.70, 0.72, 0.40, 0.30,
              0.30]
    expected_wait = [0, 0, 0, 1, 1, 2, 3, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7]
    expected_lr = [0.1] * 9 + [0.05] * 4 + [0.025] * 3 + [0.0125]
    model = _plateau_model(0.1)
    cb = mt.PaperPlateau(mt.ScheduleSpec("plateau", patience=4, factor=0.5, cooldown=2, start_epoch=2,
                                         max_reductions=3, min_delta=1e-4))
    cb.set_model(model)
    cb.on_train_begin()
    model.stop_training = False
    for epoch, loss in enumerate(losses):
        cb.on_epoch_end(epoch, {"loss": loss, "accuracy": 0.5})
        assert cb.wait == expected_wait[epoch], f"epoch {epoch + 1}"
        assert mt.current_learning_rate(model.optimizer) == pytest.approx(expected_lr[epoch], rel=1e-6)
        assert model.stop_training == (epoch + 1 == 17), f"epoch {epoch + 1}"
    assert cb.reduction_epochs == [10, 14, 17]
    assert cb.reductions == 3 and cb.stopped_epoch == 17
    # Weight decay follows the learning rate: wd_t = (5e-4 / 0.1) * 0.0125.
    assert mt.effective_weight_decay(model.optimizer) == pytest.approx(5e-4 * 0.125, rel=1e-6)


def test_paper_plateau_refuses_a_schedule():
    model = build_model("fcn", MaskedLayers(seed=0), input_shape=(5,), hidden=(4,), num_classes=2)
    mt.prepare_model(model, schedule=mt.ScheduleSpec("exponential_decay"), steps_per_epoch=1, epochs=2)
    cb = mt.PaperPlateau()
    cb.set_model(model)
    with pytest.raises(ValueError, match="constant learning rate"):
        cb.on_train_begin()


def test_train_with_plateau_stops_after_max_reductions():
    # lr 1e-9: the epoch-mean training loss stays constant to far better than min_delta, so every checked epoch
    # is non-improving. patience 3 -> window of 1 epoch; start_epoch 0; cooldown 0.
    # epoch 1: window empty (no check); epochs 2, 3, 4: wait 1, 2, 3; epoch 5: wait 4 > 3 -> reduction 1;
    # epoch 6: wait 5 -> reduction 2 = max_reductions -> stop after epoch 6 of 10.
    data = _bundle(n_train=128, n_test=64)
    model = build_model("fcn", MaskedLayers(seed=0), hidden=(8,))
    schedule = mt.ScheduleSpec("plateau", patience=3, factor=0.5, cooldown=0, start_epoch=0, max_reductions=2)
    result = mt.train(model, data, optimizer=mt.OptimizerSpec("sgdw", learning_rate=1e-9, weight_decay=0.0),
                      schedule=schedule, epochs=10, verbose=0)
    assert result.status == "ok"
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    # The recorder runs before the plateau callback: an epoch records the lr it trained with.
    assert [h["learning_rate"] for h in result.history] == pytest.approx([1e-9] * 5 + [5e-10])
    assert "2 learning-rate reductions at epoch 6" in result.message


# --------------------------------------------------------------------------------------------------------------
# Remaining-weights accounting
# --------------------------------------------------------------------------------------------------------------
def test_mask_statistics_hand_count():
    model = build_model("fcn", MaskedLayers(seed=0), input_shape=(5,), hidden=(4, 3), num_classes=2)
    layers = {layer.name: layer for layer in masked_layers(model)}
    assert set(layers) == {"dense_0", "dense_1", "output"}
    # dense_0: 5x4 = 20, tau 0.5: 7 kept (0.9), 3 inverted (-0.9), 2 at |m| == tau (hidden), 8 small (hidden).
    m0 = np.array([0.9] * 7 + [-0.9] * 3 + [0.5, -0.5] + [0.1] * 8, dtype="float32").reshape(5, 4)
    # dense_1: 4x3 = 12, tau 0.2: 2 kept, 4 inverted, 6 zeros.
    m1 = np.array([0.3] * 2 + [-0.3] * 4 + [0.0] * 6, dtype="float32").reshape(4, 3)
    # output: 3x2 = 6, tau 1.0: all 6 kept.
    m2 = np.full((3, 2), 2.0, dtype="float32")
    for name, mask, tau in (("dense_0", m0, 0.5), ("dense_1", m1, 0.2), ("output", m2, 1.0)):
        layers[name].mask.assign(mask)
        layers[name].threshold.assign(tau)
    stats = mask_statistics(model)
    assert stats["layers"]["dense_0"] == {"kept": 7, "inverted": 3, "hidden": 10, "total": 20,
                                          "remaining_percent": pytest.approx(50.0)}
    assert stats["layers"]["dense_1"] == {"kept": 2, "inverted": 4, "hidden": 6, "total": 12,
                                          "remaining_percent": pytest.approx(50.0)}
    assert stats["layers"]["output"] == {"kept": 6, "inverted": 0, "hidden": 0, "total": 6,
                                         "remaining_percent": pytest.approx(100.0)}
    # Global: (7 + 3 + 2 + 4 + 6) / (20 + 12 + 6) = 22 / 38.
    assert stats["remaining_weights"] == 22 and stats["total_weights"] == 38
    assert stats["remaining_percent"] == pytest.approx(100.0 * 22 / 38)
    assert isinstance(stats["remaining_percent"], float) and isinstance(stats["remaining_weights"], int)
    json.dumps(stats)


def test_mask_statistics_of_a_baseline_counts_every_weight_kept():
    model = build_model("fcn", BaselineLayers(seed=0), input_shape=(5,), hidden=(4, 3), num_classes=2)
    stats = mask_statistics(model)
    assert stats["remaining_percent"] == 100.0
    assert stats["remaining_weights"] == stats["total_weights"] == 20 + 12 + 6
    assert stats["layers"]["dense_1"] == {"kept": 12, "inverted": 0, "hidden": 0, "total": 12,
                                          "remaining_percent": 100.0}


# --------------------------------------------------------------------------------------------------------------
# Short training runs
# --------------------------------------------------------------------------------------------------------------
def _check_history(result, epochs, lr0, wd0, steps_per_epoch):
    assert result.status == "ok", result.message
    assert len(result.history) == epochs
    json.dumps(result.history)
    for i, record in enumerate(result.history):
        assert set(mt.HISTORY_KEYS) <= set(record), set(mt.HISTORY_KEYS) - set(record)
        assert record["epoch"] == i + 1 and not record["partial"]
        assert record["steps"] == (i + 1) * steps_per_epoch and record["batches"] == steps_per_epoch
        # Exponential decay at the optimiser's step count; decoupled wd follows it.
        lr = lr0 * 0.9 ** (record["steps"] / (10 * steps_per_epoch))
        assert record["learning_rate"] == pytest.approx(lr, rel=1e-5)
        assert record["weight_decay_effective"] == pytest.approx(wd0 * lr / lr0, rel=1e-5)
        assert record["seconds"] > 0
        for key in ("loss", "accuracy", "test_loss", "test_accuracy", "remaining_percent"):
            assert isinstance(record[key], float) and math.isfinite(record[key]), key
    first, last = result.history[0], result.final
    assert last["test_accuracy"] > 0.5  # chance is 0.1
    assert last["loss"] < 0.5 * first["loss"]


def test_train_masked_fcn_learns_and_only_masks_change(capsys):
    data = _bundle()
    model = build_model("fcn", MaskedLayers(seed=0), hidden=(32, 16))
    kernels, masks = _kernels(model), _masks(model)
    seen = []
    collector = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(dict(logs)))
    result = mt.train(model, data, optimizer=mt.OptimizerSpec("sgdw", learning_rate=0.05, weight_decay=5e-4),
                      schedule=mt.ScheduleSpec("exponential_decay"), epochs=5, verbose=1, callbacks=[collector])
    # User callbacks run after the recorder and see its scalar entries in the logs.
    assert len(seen) == 5 and all(set(mt.LOG_KEYS) <= set(logs) for logs in seen)
    assert seen[-1]["remaining_percent"] == result.final["remaining_percent"]
    _check_history(result, 5, 0.05, 5e-4, data.steps_per_epoch)
    for name, kernel in _kernels(model).items():
        np.testing.assert_array_equal(kernel, kernels[name])  # frozen
    for name, mask in _masks(model).items():
        assert np.max(np.abs(mask - masks[name])) > 1e-3, name  # trained
    final = result.final
    assert final["total_weights"] == 784 * 32 + 32 * 16 + 16 * 10
    assert 0.0 < final["remaining_percent"] < 100.0
    assert final["remaining_weights"] == sum(c["kept"] + c["inverted"] for c in final["layers"].values())
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 5 and lines[-1].startswith("epoch 5/5  loss ") and "remaining" in lines[-1]


def test_train_baseline_sparse_labels():
    data = _bundle(label_format="sparse")
    model = build_model("fcn", BaselineLayers(seed=0), hidden=(32, 16))
    before = [np.array(w) for w in model.trainable_weights]
    result = mt.train(model, data, optimizer=mt.OptimizerSpec("sgdw", learning_rate=0.01, weight_decay=5e-4),
                      epochs=4, verbose=0)
    _check_history(result, 4, 0.01, 5e-4, data.steps_per_epoch)
    assert result.final["remaining_percent"] == 100.0
    assert result.final["total_weights"] == 784 * 32 + 32 * 16 + 16 * 10
    assert all(np.max(np.abs(np.array(w) - b)) > 1e-4 for w, b in zip(model.trainable_weights, before))


def test_epoch_recorder_evaluates_test_data_itself():
    data = _bundle(n_train=128, n_test=64)
    model = build_model("fcn", BaselineLayers(seed=0), hidden=(8,))
    mt.prepare_model(model, optimizer=mt.OptimizerSpec("sgd", learning_rate=0.01),
                     schedule=mt.ScheduleSpec("constant"), steps_per_epoch=data.steps_per_epoch, epochs=2)
    recorder = mt.EpochRecorder(test_data=data.test)
    model.fit(data.train, epochs=2, steps_per_epoch=data.steps_per_epoch, callbacks=[recorder], verbose=0,
              shuffle=False)  # no validation_data
    assert [h["epoch"] for h in recorder.history] == [1, 2]
    loss, accuracy = model.evaluate(data.test, verbose=0)
    assert recorder.history[-1]["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert recorder.history[-1]["test_accuracy"] == pytest.approx(accuracy)
    assert recorder.history[-1]["weight_decay_effective"] == 0.0


def test_train_without_compiling_keeps_the_callers_optimizer():
    data = _bundle(n_train=128, n_test=64)
    model = build_model("fcn", MaskedLayers(seed=0), hidden=(8,))
    opt = mt.prepare_model(model, optimizer=mt.OptimizerSpec("adam", learning_rate=1e-3),
                           schedule=mt.ScheduleSpec("constant"), steps_per_epoch=data.steps_per_epoch, epochs=2)
    result = mt.train(model, data, optimizer=mt.OptimizerSpec("sgdw", learning_rate=0.5), epochs=2, verbose=0,
                      compile=False)
    assert model.optimizer is opt
    assert result.status == "ok" and len(result.history) == 2
    assert result.final["learning_rate"] == pytest.approx(1e-3) and result.final["weight_decay_effective"] == 0.0
    with pytest.raises(ValueError, match="compiled"):
        mt.train(build_model("fcn", MaskedLayers(seed=0), hidden=(8,)), data, compile=False, verbose=0)


# --------------------------------------------------------------------------------------------------------------
# Non-finite loss
# --------------------------------------------------------------------------------------------------------------
def test_nan_loss_stops_training_with_history():
    """The training data turn NaN in the 3rd batch of the 2nd pass: epoch 1 completes, epoch 2 fails at batch 3."""
    x, y = _arrays(128, 1)
    y = np.eye(NUM_CLASSES, dtype="float32")[y]
    passes = []

    def batches():
        passes.append(1)
        for i in range(4):
            xb = x[32 * i:32 * (i + 1)].copy()
            if len(passes) == 2 and i == 2:
                xb[0, 0] = np.nan
            yield xb, y[32 * i:32 * (i + 1)]

    spec = (tf.TensorSpec((None, DIM), tf.float32), tf.TensorSpec((None, NUM_CLASSES), tf.float32))
    train_ds = tf.data.Dataset.from_generator(batches, output_signature=spec).apply(
        tf.data.experimental.assert_cardinality(4))
    xte, yte = _arrays(64, 2)
    test_ds = tf.data.Dataset.from_tensor_slices((xte, np.eye(NUM_CLASSES, dtype="float32")[yte])).batch(32)
    data = SimpleNamespace(train_from=lambda epoch: train_ds.repeat(), test=test_ds, steps_per_epoch=4,
                           label_format="one_hot")
    model = build_model("fcn", MaskedLayers(seed=0), hidden=(8,))
    result = mt.train(model, data, epochs=5, verbose=0)
    assert result.status == "failed"
    assert "epoch 2" in result.message and "batch 3" in result.message and "nan" in result.message
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert not result.history[0]["partial"] and math.isfinite(result.history[0]["loss"])
    assert result.history[1]["partial"] and result.history[1]["batches"] == 3
    assert math.isnan(result.history[1]["loss"])
    assert result.final is result.history[-1]


def test_stop_on_non_finite_batch_logs():
    model = build_model("fcn", MaskedLayers(seed=0), input_shape=(5,), hidden=(4,), num_classes=2)
    mt.prepare_model(model, steps_per_epoch=1, epochs=1)
    cb = mt.StopOnNonFinite()
    cb.set_model(model)
    model.stop_training = False
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    cb.on_train_batch_end(0, {"loss": 1.0})
    assert not cb.triggered and not model.stop_training and cb.message == ""
    cb.on_epoch_begin(3)
    cb.on_train_batch_end(6, {"loss": float("inf")})
    assert cb.triggered and model.stop_training
    assert (cb.epoch, cb.batch) == (4, 7) and "inf at epoch 4, batch 7" in cb.message


def test_train_result_final_empty():
    assert mt.TrainResult(history=[], status="failed").final == {}


# --------------------------------------------------------------------------------------------------------------
# Checkpoints and stop requests
# --------------------------------------------------------------------------------------------------------------
def _real_bundle():
    """A real DataBundle (epoch order a function of seed and epoch), small."""
    import data_preprocessor as dp

    return dp.load_dataset("mnist", "synthetic", batch_size=64, synthetic_train=256, synthetic_test=128, seed=3)


class StopAfter(keras.callbacks.Callback):
    """Sets `event` at the end of epoch `epoch` (1-based), as a signal handler would."""

    def __init__(self, event, epoch):
        super().__init__()
        self.event, self.epoch = event, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch:
            self.event.set()


def _fresh(plateau=False, dropout=0.3):
    keras.utils.set_random_seed(5)
    dropout = 0.0 if plateau else dropout
    model = build_model("fcn", MaskedLayers(seed=5), hidden=(16,), dropout=dropout)
    schedule = (mt.ScheduleSpec("plateau", patience=3, factor=0.5, cooldown=0, start_epoch=0, max_reductions=4)
                if plateau else mt.ScheduleSpec("exponential_decay", decay_epochs=1.0, decay_rate=0.5))
    return model, schedule


def _without_seconds(history):
    return [{k: v for k, v in e.items() if k != "seconds"} for e in history]


@pytest.mark.parametrize("plateau", [False, True], ids=["exponential", "plateau"])
def test_a_stopped_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, plateau):
    data = _real_bundle()
    # plateau: lr 1e-9 and no decay or dropout keep the loss constant, so epochs 5, 6, 7, 8 reduce (see
    # test_train_with_plateau_stops_after_max_reductions); the stop after epoch 6 falls between two reductions.
    spec = (mt.OptimizerSpec("sgdw", learning_rate=1e-9, weight_decay=0.0) if plateau
            else mt.OptimizerSpec("sgdw", learning_rate=0.1, weight_decay=5e-3))
    model, schedule = _fresh(plateau)
    reference = mt.train(model, data, optimizer=spec, schedule=schedule, epochs=8, verbose=0)
    reference_masks = [layer.mask.numpy() for layer in masked_layers(model)]

    event, path = threading.Event(), tmp_path / "checkpoint.npz"
    model, schedule = _fresh(plateau)
    with pytest.raises(KeyboardInterrupt):
        mt.train(model, data, optimizer=spec, schedule=schedule, epochs=8, verbose=0, checkpoint=path,
                 stop_event=event, callbacks=[StopAfter(event, 6)])
    state, _ = mt.read_checkpoint(path)
    assert state["epochs_done"] == 6 and len(state["history"]) == 6
    model, schedule = _fresh(plateau)  # a new process: everything rebuilt from the seed, then the checkpoint
    resumed = mt.train(model, data, optimizer=spec, schedule=schedule, epochs=8, verbose=0, checkpoint=path)
    assert resumed.resumed_from == 6
    assert _without_seconds(resumed.history) == _without_seconds(reference.history)
    for a, b in zip(reference_masks, [layer.mask.numpy() for layer in masked_layers(model)]):
        np.testing.assert_array_equal(a, b)
    if plateau:  # the recorder runs before the plateau callback: an epoch records the lr it trained with
        rates = [h["learning_rate"] for h in resumed.history]
        assert rates == pytest.approx([1e-9] * 5 + [5e-10, 2.5e-10, 1.25e-10], rel=1e-6)
        assert "4 learning-rate reductions at epoch 8" in resumed.message


def test_checkpoints_follow_checkpoint_every_and_never_hold_a_partial_epoch(tmp_path):
    data = _real_bundle()
    model, schedule = _fresh()
    written = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if (tmp_path / "c.npz").exists():
                written.append((epoch + 1, mt.read_checkpoint(tmp_path / "c.npz")[0]["epochs_done"]))

    mt.train(model, data, schedule=schedule, epochs=5, verbose=0, checkpoint=tmp_path / "c.npz", checkpoint_every=2,
             callbacks=[Spy()])
    assert written == [(2, 2), (3, 2), (4, 4), (5, 5)]  # every 2nd epoch and the last
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary files left


def test_a_stop_request_mid_epoch_leaves_the_last_complete_epoch(tmp_path):
    data = _real_bundle()
    model, schedule = _fresh()
    event = threading.Event()

    class StopInEpoch3(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 3 and batch == 1:
                event.set()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

    with pytest.raises(KeyboardInterrupt, match="after epoch 2"):
        mt.train(model, data, schedule=schedule, epochs=5, verbose=0, checkpoint=tmp_path / "c.npz",
                 stop_event=event, callbacks=[StopInEpoch3()])
    assert mt.read_checkpoint(tmp_path / "c.npz")[0]["epochs_done"] == 2


def test_an_unreadable_or_foreign_checkpoint_is_refused_before_anything_is_assigned(tmp_path):
    data = _real_bundle()
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(mt.CheckpointError, match="bad.npz is not a readable checkpoint"):
        mt.read_checkpoint(tmp_path / "bad.npz")
    model, schedule = _fresh()
    mt.train(model, data, schedule=schedule, epochs=1, verbose=0, checkpoint=tmp_path / "c.npz")
    other = build_model("fcn", MaskedLayers(seed=5), hidden=(12,))
    mt.prepare_model(other, steps_per_epoch=data.steps_per_epoch, epochs=2)
    before = [v.numpy().copy() for v in other.variables]
    state, arrays = mt.read_checkpoint(tmp_path / "c.npz")
    with pytest.raises(mt.CheckpointError, match="does not fit"):
        mt.restore_checkpoint(other, state, arrays)
    for value, variable in zip(before, other.variables):
        np.testing.assert_array_equal(value, variable.numpy())


def test_a_checkpoint_holds_no_frozen_kernel(tmp_path):
    data = _real_bundle()
    model, schedule = _fresh(dropout=0.0)
    mt.train(model, data, schedule=schedule, epochs=1, verbose=0, checkpoint=tmp_path / "c.npz")
    state, arrays = mt.read_checkpoint(tmp_path / "c.npz")
    sizes = sorted(int(a.size) for k, a in arrays.items() if k.startswith("model/"))
    kernels = [784 * 16, 16 * 10]
    assert sizes.count(784 * 16) == 1 and sizes.count(16 * 10) == 1  # the masks, not the frozen kernels
    assert sum(sizes) == sum(kernels) + 2  # masks + 2 thresholds
    assert len(state["history"]) == 1 and state["plateau"] is None
