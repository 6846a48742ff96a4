"""Architectures: the paper's parameter counts, one builder for baseline and Supermask, ResNet batch-norm modes."""

import numpy as np
import pytest
import keras

from architectures import ARCHITECTURES, build_model
from resnet_networks import build_resnet
from custom_layers import BaselineLayers, MaskedConv2D, MaskedDense, MaskedLayers, count_parameters, masked_layers

PAPER_COUNTS = [
    ("fcn", {}, 266_200),
    ("conv2", {}, 4_300_992),
    ("conv4", {}, 2_425_024),
    ("conv6", {}, 2_261_184),
    ("conv8", {}, 5_275_840),
    ("resnet20", {}, 248_624),
    ("resnet20", {"width": 2}, 992_352),
    ("resnet20", {"width": 3}, 2_231_184),
    ("resnet56", {"num_classes": 100}, 834_992),
    ("resnet110", {"num_classes": 100}, 1_705_904),
]


@pytest.mark.parametrize("name, kwargs, expected", PAPER_COUNTS)
def test_parameter_counts_match_the_paper(name, kwargs, expected):
    masked = build_model(name, MaskedLayers(), **kwargs)
    baseline = build_model(name, BaselineLayers(), **kwargs)
    assert count_parameters(masked) == expected
    assert count_parameters(baseline) == expected
    # Every kernel layer is masked: first, last and shortcut convs included.
    assert sum(int(np.prod(l.mask.shape)) for l in masked_layers(masked)) == expected
    assert not any(isinstance(l, keras.layers.Dense) and l.use_bias for l in baseline.layers)
    assert sum(int(np.prod(w.shape)) for w in masked.trainable_weights
               if w.name == "mask") == expected


def test_builders_share_one_code_path():
    masked = build_model("conv4", MaskedLayers())
    baseline = build_model("conv4", BaselineLayers())
    assert [l.name for l in masked.layers] == [l.name for l in baseline.layers]
    assert [l.output.shape for l in masked.layers] == [l.output.shape for l in baseline.layers]
    kinds = {type(l) for l in masked_layers(masked)}
    assert kinds == {MaskedConv2D, MaskedDense}
    assert masked.output_shape == (None, 10)


def test_conv_width_and_dropout():
    model = build_model("conv2", MaskedLayers(), width=0.5, dropout=0.3)
    assert model.get_layer("conv_0_0").filters == 32 and model.get_layer("dense_0").units == 128
    assert any(isinstance(l, keras.layers.Dropout) for l in model.layers)


def test_fcn_layout():
    model = build_model("fcn", MaskedLayers())
    assert [l.units for l in masked_layers(model)] == [300, 100, 10]
    assert [type(l).__name__ for l in model.layers if isinstance(l, keras.layers.Activation)] == ["Activation"] * 3


@pytest.mark.parametrize("mode, n_bn, trainable_bn", [("learned", 22, 44), ("frozen", 22, 0), ("none", 0, 0)])
def test_resnet_batch_norm_modes(mode, n_bn, trainable_bn):
    model = build_model("resnet20", MaskedLayers(threshold_fraction=0.75), batch_norm=mode)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(bns) == n_bn  # stem + 3 stages x (C block 3 + 2 I blocks x 2) = 1 + 3 x 7
    assert sum(int(np.prod(w.shape)) > 0 for l in bns for w in l.trainable_weights) == trainable_bn
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    assert model(x, training=True).shape == (4, 10)


def test_frozen_batch_norm_is_near_identity_in_training():
    """The authors' trainable=False BN: inference mode with moving stats 0/1, i.e. y = x / sqrt(1 + 1e-3)."""
    model = build_model("resnet20", MaskedLayers(), batch_norm="frozen")
    bn = model.get_layer("stem_bn")
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 16)).astype("float32") * 5 + 3
    np.testing.assert_allclose(bn(x, training=True), x / np.sqrt(1.001), rtol=1e-5)


def test_resnet_layout_shapes():
    model = build_model("resnet20", MaskedLayers(), width=2)
    assert model.get_layer("s0_b0_shortcut").output.shape == (None, 32, 32, 32)
    assert model.get_layer("s1_b0_conv_a").kernel.shape == (1, 1, 32, 64)
    assert model.get_layer("s2_b2_add").output.shape == (None, 8, 8, 128)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        build_resnet(21)
    with pytest.raises(ValueError, match="allowed: learned, none, frozen"):
        build_resnet(20, batch_norm="affine")


def test_unknown_architecture():
    with pytest.raises(ValueError, match="allowed: fcn, conv2"):
        build_model("vgg16", MaskedLayers())
    assert set(ARCHITECTURES) == {"fcn", "conv2", "conv4", "conv6", "conv8", "resnet20", "resnet56", "resnet110"}
