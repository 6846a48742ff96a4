"""Masked layers: the mask function, the STE, equality with stock Keras twins, serialisation, fit, XLA, AMP."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from custom_layers import (
    BinaryMask,
    MaskedConv2D,
    MaskedDense,
    SignedMask,
    TopKMask,
    binary_mask,
    count_mask,
    get_mask_mode,
    mask_mode_from_name,
    mask_statistics,
    masked_layers,
    signed_mask,
    topk_mask,
)
from weight_initializer import ScaledInitializer


def test_signed_mask_against_hand_computation():
    m = np.array([-0.5, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.7], dtype="float32")
    # tau = 0.2: |m| == tau exactly is hidden, strictly above is kept (+) or inverted (-).
    expected = np.array([-1, -1, 0, 0, 0, 0, 0, 1, 1], dtype="float32")
    np.testing.assert_array_equal(ops.convert_to_numpy(signed_mask(ops.convert_to_tensor(m), 0.2)), expected)
    np.testing.assert_array_equal(ops.convert_to_numpy(binary_mask(ops.convert_to_tensor(m), 0.2)),
                                  [0, 0, 0, 0, 0, 0, 0, 1, 1])


def test_topk_mask_keeps_exactly_k_fraction():
    rng = np.random.default_rng(1)
    m = ops.convert_to_tensor(rng.normal(size=(40, 25)).astype("float32"))
    for k in (0.1, 0.3, 0.5):
        hard = ops.convert_to_numpy(topk_mask(m, k))
        assert hard.sum() == round(k * 1000)
        kept_scores = np.abs(ops.convert_to_numpy(m))[hard == 1]
        assert kept_scores.min() >= np.abs(ops.convert_to_numpy(m))[hard == 0].max()


def test_kth_largest_is_exact():
    rng = np.random.default_rng(2)
    from custom_layers import kth_largest

    values = np.abs(rng.normal(size=5000)).astype("float32")
    values[:10] = 0.0  # zeros and ties
    values[10:20] = values[20]
    for k in (1, 7, 2500, 4990, 5000):
        assert float(kth_largest(ops.convert_to_tensor(values), k)) == np.sort(values)[::-1][k - 1]


def test_topk_breaks_ties_by_position_and_keeps_exactly_k():
    m = ops.convert_to_tensor(np.array([0.5, -0.2, 0.2, 0.2, -0.2, 0.1], "float32"))
    # k = round(0.5 * 6) = 3: 0.5 and the first two of the four tied |m| = 0.2 (positions 1 and 2).
    np.testing.assert_array_equal(ops.convert_to_numpy(topk_mask(m, 0.5)), [1, 1, 1, 0, 0, 0])
    zeros = ops.zeros((3, 4))
    np.testing.assert_array_equal(ops.convert_to_numpy(topk_mask(zeros, 0.25)).reshape(-1),
                                  [1, 1, 1] + [0] * 9)  # an all-zero mask keeps its first k


def test_an_all_zero_topk_mask_learns():
    layer = MaskedDense(3, mask_mode=TopKMask(0.5), kernel_initializer=ScaledInitializer("normal", "he", seed=1),
                        mask_initializer="zeros")
    layer.build((None, 4))
    x = tf.constant(np.ones((2, 4), "float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x))
    grad = tape.gradient(loss, layer.mask).numpy()
    np.testing.assert_array_equal(grad, 2.0 * layer.kernel.numpy())  # s(0) = +1: the gradient reaches m = 0


def test_an_all_zero_signed_mask_warns(caplog):
    layer = MaskedDense(3, kernel_initializer=ScaledInitializer(seed=1), mask_initializer="zeros")
    with caplog.at_level("WARNING"):
        layer.build((None, 4))
    assert float(layer.threshold) == 0.0 and "the mask is all zero, so tau = 0" in caplog.text


@pytest.mark.parametrize("mode", [SignedMask(), BinaryMask(), TopKMask(0.3)])
def test_ste_gradient_equals_dl_dweff_times_w(mode):
    rng = np.random.default_rng(3)
    layer = MaskedDense(7, mask_mode=mode, kernel_initializer=ScaledInitializer("normal", "he", seed=1),
                        mask_initializer=ScaledInitializer("uniform", "xavier", seed=2))
    x = tf.constant(rng.normal(size=(5, 11)).astype("float32"))
    layer.build(x.shape)
    target = tf.constant(rng.normal(size=(5, 7)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((layer(x) - target) ** 2)
    grad_m = tape.gradient(loss, layer.mask)
    w_eff = (layer.kernel * layer.effective_mask()).numpy()
    dl_dweff = x.numpy().T @ (2 * (x.numpy() @ w_eff - target.numpy()))
    expected = dl_dweff * layer.kernel.numpy()
    if isinstance(mode, TopKMask):  # ranks |m|: straight through |m|, so the chain rule adds sign(m)
        expected = expected * np.sign(layer.mask.numpy())
    np.testing.assert_allclose(grad_m.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert [v.name for v in layer.trainable_weights] == ["mask"]
    assert sorted(v.name for v in layer.non_trainable_weights) == ["kernel", "threshold"]


def _all_plus_one(layer):
    layer.mask.assign(np.ones(layer.mask.shape, "float32"))
    layer.threshold.assign(0.5)


@pytest.mark.parametrize(
    "masked, stock, shape",
    [
        (lambda: MaskedDense(6), lambda: keras.layers.Dense(6, use_bias=False), (4, 9)),
        (lambda: MaskedConv2D(5, 3, padding="same"),
         lambda: keras.layers.Conv2D(5, 3, padding="same", use_bias=False), (2, 8, 8, 3)),
        (lambda: MaskedConv2D(4, (3, 1), strides=2, padding="valid"),
         lambda: keras.layers.Conv2D(4, (3, 1), strides=2, padding="valid", use_bias=False), (2, 9, 7, 3)),
        (lambda: MaskedConv2D(4, 1, strides=2, padding="same"),
         lambda: keras.layers.Conv2D(4, 1, strides=2, padding="same", use_bias=False), (2, 8, 8, 6)),
    ],
)
def test_all_plus_one_mask_equals_stock_twin(masked, stock, shape):
    rng = np.random.default_rng(4)
    x = rng.normal(size=shape).astype("float32")
    layer, twin = masked(), stock()
    layer.build(shape)
    twin.build(shape)
    _all_plus_one(layer)
    twin.kernel.assign(layer.kernel)
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), ops.convert_to_numpy(twin(x)), rtol=1e-5, atol=1e-5)
    assert layer.compute_output_shape(shape) == twin.compute_output_shape(shape)
    # Inverting every weight negates the output.
    layer.mask.assign(-np.ones(layer.mask.shape, "float32"))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), -ops.convert_to_numpy(twin(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fraction", [0.2, 0.4, 0.75])
def test_initial_active_fraction_is_one_minus_p(fraction):
    layer = MaskedDense(300, threshold_fraction=fraction,
                        mask_initializer=ScaledInitializer("uniform", "xavier", seed=3))
    layer.build((None, 784))
    counts = layer.mask_counts()
    active = (counts["kept"] + counts["inverted"]) / counts["total"]
    assert active == pytest.approx(1 - fraction, abs=0.01)
    assert counts["kept"] == pytest.approx(counts["inverted"], rel=0.03)  # symmetric mask
    assert float(layer.threshold) == pytest.approx(fraction * np.abs(layer.mask.numpy()).max())


def test_threshold_fixed_in_training_and_recomputed_on_reinit():
    rng = np.random.default_rng(5)
    model = keras.Sequential([keras.Input((20,)), MaskedDense(10, threshold_fraction=0.4)])
    layer = model.layers[0]
    tau0 = float(layer.threshold)
    mask0 = layer.mask.numpy().copy()
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0, weight_decay=0.5), loss="mse")
    x = rng.normal(size=(64, 20)).astype("float32")
    model.fit(x, rng.normal(size=(64, 10)).astype("float32"), epochs=3, verbose=0)
    assert np.abs(layer.mask.numpy()).max() < 0.9 * np.abs(mask0).max()  # the mask moved and shrank ...
    assert float(layer.threshold) == tau0  # ... tau did not follow
    tau1 = layer.reinitialize_mask(ScaledInitializer("uniform", "he", seed=9))
    assert tau1 == pytest.approx(0.4 * np.abs(layer.mask.numpy()).max())
    assert float(layer.threshold) == pytest.approx(tau1) and tau1 != pytest.approx(tau0)


def test_mask_counts_and_statistics_by_hand():
    inputs = keras.Input((3,))
    a = MaskedDense(2, name="a")
    b = MaskedDense(2, name="b")
    model = keras.Model(inputs, b(a(inputs)))
    a.mask.assign([[0.9, -0.9], [0.1, -0.1], [0.5, 0.0]])  # tau 0.3 -> +1 -1 / 0 0 / +1 0
    a.threshold.assign(0.3)
    b.mask.assign([[-1.0, -1.0], [0.2, 1.0]])  # tau 0.5 -> -1 -1 / 0 +1
    b.threshold.assign(0.5)
    assert a.mask_counts() == {"kept": 2, "inverted": 1, "hidden": 3, "total": 6}
    assert b.mask_counts() == {"kept": 1, "inverted": 2, "hidden": 1, "total": 4}
    stats = mask_statistics(model)
    assert stats["remaining_weights"] == 6 and stats["total_weights"] == 10
    assert stats["remaining_percent"] == pytest.approx(60.0)
    assert stats["layers"]["a"]["remaining_percent"] == pytest.approx(50.0)
    assert count_mask(np.array([1, 0, -1, -1])) == {"kept": 1, "inverted": 2, "hidden": 1, "total": 4}


def _tiny_model(mode="signed"):
    inputs = keras.Input((4, 4, 2))
    x = MaskedConv2D(3, 3, padding="same", mask_mode=mode, name="c",
                     kernel_initializer=ScaledInitializer("signed_constant", "elus", seed=1),
                     mask_initializer=ScaledInitializer("uniform", "xavier", seed=2))(inputs)
    x = keras.layers.Flatten()(x)
    outputs = MaskedDense(3, mask_mode=mode, name="d",
                          kernel_initializer=ScaledInitializer("signed_constant", "elus", seed=3),
                          mask_initializer=ScaledInitializer("uniform", "xavier", seed=4))(x)
    return keras.Model(inputs, keras.layers.Activation("softmax")(outputs))


@pytest.mark.parametrize("mode", ["signed", "binary", TopKMask(0.25)])
def test_keras_file_round_trip(tmp_path, mode):
    rng = np.random.default_rng(6)
    model = _tiny_model(mode)
    for layer in masked_layers(model):  # a trained-looking state: masks moved away from their initial values
        layer.mask.assign(layer.mask * rng.uniform(0.1, 2.0, size=layer.mask.shape).astype("float32"))
    x = rng.normal(size=(6, 4, 4, 2)).astype("float32")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    for a, b in zip(masked_layers(model), masked_layers(loaded)):
        assert type(a) is type(b) and a.mask_mode == b.mask_mode
        np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
        np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
        assert float(a.threshold) == float(b.threshold)
        np.testing.assert_array_equal(a.effective_mask(), b.effective_mask())


def test_get_config_round_trip():
    layer = MaskedConv2D(8, (3, 5), strides=2, padding="same", threshold_fraction=0.6, mask_mode=TopKMask(0.1))
    clone = MaskedConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.mask_mode == TopKMask(0.1)
    with pytest.raises(ValueError, match="allowed: signed, binary, topk"):
        get_mask_mode("ternary")
    with pytest.raises(ValueError, match="threshold_fraction"):
        MaskedDense(3, threshold_fraction=1.0)


@pytest.mark.parametrize("key, value, make", [
    ("threshold_fraction", 1.0, lambda v: MaskedDense(3, threshold_fraction=v)),
    ("threshold_fraction", 0.0, lambda v: MaskedConv2D(3, 3, threshold_fraction=v)),
    ("topk_fraction", 1.5, TopKMask),
    ("topk_fraction", 0.0, TopKMask),
])
def test_the_layers_and_the_config_refuse_a_fraction_by_the_same_bound(key, value, make):
    """p and k are declared once (hparams.MaskSpec): a layer refuses what the config schema refuses, in its words;
    the bounds' edges that are allowed (k = 1) build."""
    import config as config_lib

    with pytest.raises(config_lib.ConfigErrors) as schema:
        config_lib.parse_config({"model": {key: value}})
    with pytest.raises(ValueError) as layer:
        make(value)
    assert str(layer.value) == str(schema.value.errors[0]).removeprefix("model.")
    assert TopKMask(1.0).k == 1.0 and MaskedDense(3).threshold_fraction == config_lib.ModelConfig().threshold_fraction


def _data(n=96, seed=7):
    x = np.random.default_rng(seed).normal(size=(n, 4, 4, 2)).astype("float32")
    y = keras.utils.to_categorical((x[:, 0, 0, 0] > 0).astype(int) + (x[:, 1, 1, 1] > 0), 3)
    return x, y


@pytest.mark.parametrize("jit", [False, True])
def test_fit_lowers_loss_changes_masks_not_weights(jit):
    model = _tiny_model()
    kernels = [layer.kernel.numpy().copy() for layer in masked_layers(model)]
    masks = [layer.mask.numpy().copy() for layer in masked_layers(model)]
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5, momentum=0.9), loss="categorical_crossentropy",
                  jit_compile=jit)
    x, y = _data()
    history = model.fit(x, y, epochs=8, batch_size=32, verbose=0).history["loss"]
    assert model.jit_compile == jit  # Keras drops XLA silently under op determinism
    assert history[-1] < history[0]
    for layer, k, m in zip(masked_layers(model), kernels, masks):
        np.testing.assert_array_equal(layer.kernel.numpy(), k)
        assert not np.array_equal(layer.mask.numpy(), m)


def test_custom_gradient_tape_loop_in_sequential():
    rng = np.random.default_rng(8)
    model = keras.Sequential([keras.Input((6,)), MaskedDense(8), keras.layers.Activation("elu"), MaskedDense(2)])
    x = rng.normal(size=(32, 6)).astype("float32")
    y = (x[:, :2] * 2.0).astype("float32")
    opt = keras.optimizers.SGD(learning_rate=0.05)
    losses = []
    for _ in range(30):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((model(x) - y) ** 2)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        losses.append(float(loss))
    assert all(g is not None for g in grads) and len(grads) == 2
    assert losses[-1] < losses[0]


def test_mixed_float16_computes_in_half_keeps_float32_variables():
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = _tiny_model()
    layer = model.get_layer("c")
    assert layer.compute_dtype == "float16"
    assert layer.mask.dtype == "float32" and layer.kernel.dtype == "float32"
    assert keras.backend.standardize_dtype(layer(np.zeros((1, 4, 4, 2), "float32")).dtype) == "float16"
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy",
                  jit_compile=True)
    x, y = _data()
    history = model.fit(x, y, epochs=4, batch_size=32, verbose=0).history["loss"]
    assert model.jit_compile
    assert np.isfinite(history).all() and history[-1] < history[0]


def test_mask_mode_from_name():
    assert mask_mode_from_name("signed") == SignedMask()
    assert mask_mode_from_name("binary", 0.3) == BinaryMask()
    assert mask_mode_from_name("topk", 0.05) == TopKMask(0.05)
    with pytest.raises(ValueError, match="allowed: signed, binary, topk"):
        mask_mode_from_name("none")
