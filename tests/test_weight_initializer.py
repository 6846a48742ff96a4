"""Initialisation constants and variances, fans, seeding."""

import math

import keras
import numpy as np
import pytest

from architectures import build_model
from custom_layers import MaskedLayers, masked_layers
from hparams import DISTRIBUTIONS, MASK_PRESETS, SCALINGS, WEIGHT_PRESETS, InitSpec
from weight_initializer import ScaledInitializer, compute_fans, layer_seed, sample, scaled_variance


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
    return keras.ops.convert_to_numpy(ScaledInitializer.from_spec(spec, seed)(shape))


@pytest.mark.parametrize(
    "preset, constant",
    [("elus", math.sqrt(3 / N_IN)), ("elus_x2", math.sqrt(6 / N_IN)), ("he", math.sqrt(2 / N_IN)),
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


def test_every_name_hparams_offers_has_a_formula():
    """hparams owns the names a config may use; weight_initializer must implement each of them."""
    for scaling in SCALINGS:
        assert scaled_variance(scaling, 10, 20) > 0
    for distribution in DISTRIBUTIONS:
        assert sample(distribution, (4, 3), 0.5, np.random.default_rng(0)).shape == (4, 3)
