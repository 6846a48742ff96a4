"""Initialisation constants and variances, fans, seeding, and the .npz storage of weights and masks."""

import math

import numpy as np
import pytest
import keras

from architectures import build_model
from custom_layers import BaselineLayers, MaskedLayers, masked_layers
from weight_initializer import (MASK_PRESETS, WEIGHT_PRESETS, InitSpec, ScaledInitializer, WeightsFileMismatch,
                                compute_fans, layer_seed, load_weights_npz, save_weights_npz, scaled_variance)


def test_fans_for_dense_and_conv():
    assert compute_fans((784, 300)) == (784, 300)
    assert compute_fans((3, 3, 64, 128)) == (9 * 64, 9 * 128)
    assert compute_fans((1, 1, 16, 32)) == (16, 32)


@pytest.mark.parametrize(
    "scaling, factor, expected",  # expected variance for fan_in 576, fan_out 1152
    [("he", 1, 2 / 576), ("xavier", 1, 2 / (576 + 1152)), ("elu", 1, 1.5 / 576), ("elus", 1, 3 / 576),
     ("elus", 2, 6 / 576), ("he", 1.3, 2.6 / 576)],
)
def test_scaled_variance(scaling, factor, expected):
    assert scaled_variance(scaling, 576, 1152, factor) == pytest.approx(expected)


SHAPE = (3, 3, 64, 128)  # fan_in 576
N_IN, N_OUT = 576, 1152


def _draw(spec, seed=0, shape=SHAPE):
    return keras.ops.convert_to_numpy(spec.initializer(seed)(shape))


@pytest.mark.parametrize(
    "preset, constant",
    [("elus", math.sqrt(3 / N_IN)), ("elus_file", math.sqrt(6 / N_IN)), ("he", math.sqrt(2 / N_IN)),
     ("xavier", math.sqrt(2 / (N_IN + N_OUT)))],
)
def test_signed_constant_values(preset, constant):
    w = _draw(WEIGHT_PRESETS[preset])
    np.testing.assert_allclose(np.abs(w), constant, rtol=1e-6)
    assert np.mean(w > 0) == pytest.approx(0.5, abs=0.01)


def test_constant_distribution():
    np.testing.assert_allclose(_draw(InitSpec("constant", "he")), math.sqrt(2 / N_IN), rtol=1e-6)


@pytest.mark.parametrize(
    "spec, limit",
    [(MASK_PRESETS["xavier_uniform"], math.sqrt(6 / (N_IN + N_OUT))), (MASK_PRESETS["he_uniform"], math.sqrt(6 / N_IN)),
     (MASK_PRESETS["elu_uniform"], math.sqrt(4.5 / N_IN)), (MASK_PRESETS["elus_uniform"], math.sqrt(18 / N_IN)),
     (WEIGHT_PRESETS["uniform_he"], math.sqrt(6 / N_IN))],
)
def test_uniform_bounds_and_variance(spec, limit):
    w = _draw(spec)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert w.var() == pytest.approx(limit**2 / 3, rel=0.02)


def test_normal_variance():
    w = _draw(InitSpec("normal", "xavier"))
    assert w.mean() == pytest.approx(0, abs=1e-3)
    assert w.var() == pytest.approx(2 / (N_IN + N_OUT), rel=0.02)


def test_seeding_is_reproducible_and_distinct():
    spec = WEIGHT_PRESETS["elus"]
    np.testing.assert_array_equal(_draw(spec, 5), _draw(spec, 5))
    assert not np.array_equal(_draw(spec, 5), _draw(spec, 6))
    assert layer_seed(7531, 0) == layer_seed(7531, 0) != layer_seed(7531, 1)
    a = build_model("fcn", MaskedLayers(seed=11))
    b = build_model("fcn", MaskedLayers(seed=11))
    for la, lb in zip(masked_layers(a), masked_layers(b)):
        np.testing.assert_array_equal(la.kernel.numpy(), lb.kernel.numpy())
        np.testing.assert_array_equal(la.mask.numpy(), lb.mask.numpy())


def test_initializer_serialises():
    init = ScaledInitializer("uniform", "elu", 1.5, seed=3)
    clone = keras.initializers.deserialize(keras.initializers.serialize(init))
    assert isinstance(clone, ScaledInitializer) and clone.get_config() == init.get_config()
    with pytest.raises(ValueError, match="allowed: he, xavier, elu, elus"):
        InitSpec("signed_constant", "lecun")
    with pytest.raises(ValueError, match="allowed: signed_constant, constant, uniform, normal"):
        InitSpec("bernoulli", "he")


def test_npz_round_trip(tmp_path):
    src = build_model("fcn", MaskedLayers(seed=1))
    for layer in masked_layers(src):
        layer.mask.assign(layer.mask * 0.5)  # tau stays the initial one: file must carry it
    save_weights_npz(src, tmp_path / "w.npz")
    dst = build_model("fcn", MaskedLayers(seed=2))
    load_weights_npz(dst, tmp_path / "w.npz")  # auto: thresholds restored from the file
    x = np.random.default_rng(0).normal(size=(4, 784)).astype("float32")
    np.testing.assert_array_equal(src.predict(x, verbose=0), dst.predict(x, verbose=0))
    for a, b in zip(masked_layers(src), masked_layers(dst)):
        np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
        assert float(a.threshold) == float(b.threshold)
    # The init-file workflow recomputes tau = p * max|m| from the loaded mask.
    load_weights_npz(dst, tmp_path / "w.npz", threshold="recompute")
    for a, b in zip(masked_layers(src), masked_layers(dst)):
        assert float(b.threshold) == pytest.approx(0.4 * np.abs(a.mask.numpy()).max())
    with np.load(tmp_path / "w.npz", allow_pickle=False) as data:  # plain arrays, no pickles
        assert set(data.files) == {f"{l.name}/{k}" for l in masked_layers(src) for k in ("kernel", "mask", "threshold")}


def test_npz_loads_only_the_requested_parts(tmp_path):
    src = build_model("fcn", MaskedLayers(seed=1))
    save_weights_npz(src, tmp_path / "w.npz")
    dst = build_model("fcn", MaskedLayers(seed=2))
    masks_before = [l.mask.numpy().copy() for l in masked_layers(dst)]
    load_weights_npz(dst, tmp_path / "w.npz", parts=("kernel",))
    for a, b, m in zip(masked_layers(src), masked_layers(dst), masks_before):
        np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
        np.testing.assert_array_equal(b.mask.numpy(), m)


def test_npz_for_another_architecture_is_a_clear_error(tmp_path):
    save_weights_npz(build_model("fcn", MaskedLayers(seed=1)), tmp_path / "fcn.npz")
    other = build_model("fcn", MaskedLayers(seed=1), hidden=(200, 100))
    before = [l.kernel.numpy().copy() for l in masked_layers(other)]
    with pytest.raises(WeightsFileMismatch, match=r"dense_0/kernel has shape \(784, 300\) in the file"):
        load_weights_npz(other, tmp_path / "fcn.npz")
    for layer, k in zip(masked_layers(other), before):  # nothing half-loaded
        np.testing.assert_array_equal(layer.kernel.numpy(), k)
    conv = build_model("conv2", MaskedLayers(seed=1))
    with pytest.raises(WeightsFileMismatch, match="missing from the file"):
        load_weights_npz(conv, tmp_path / "fcn.npz")


def test_npz_baseline_kernels(tmp_path):
    src = build_model("fcn", BaselineLayers(seed=3))
    save_weights_npz(src, tmp_path / "b.npz")
    dst = build_model("fcn", BaselineLayers(seed=4))
    load_weights_npz(dst, tmp_path / "b.npz", parts=("kernel",))
    for a, b in zip(src.layers, dst.layers):
        for va, vb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(va.numpy(), vb.numpy())
