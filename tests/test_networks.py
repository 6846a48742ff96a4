"""Architectures: the paper's parameter counts, one builder for baseline and Supermask, ResNet batch-norm modes."""

import keras
import numpy as np
import pytest

from architectures import ARCHITECTURES, build_model
from custom_layers import BaselineLayers, MaskedConv2D, MaskedDense, MaskedLayers, count_parameters, masked_layers
from paper_results import PAPER_RESULTS
from resnet_networks import build_resnet

# (architecture, builder arguments, the paper's row): the counts are the paper's (paper_results owns them).
PAPER_ROWS = [
    ("fcn", {}, "fcn"), ("conv2", {}, "conv2"), ("conv4", {}, "conv4"), ("conv6", {}, "conv6"), ("conv8", {}, "conv8"),
    ("resnet20", {}, "resnet20"), ("resnet20", {"width": 2}, "resnet20x2"), ("resnet20", {"width": 3}, "resnet20x3"),
    ("resnet56", {"num_classes": 100}, "resnet56"), ("resnet110", {"num_classes": 100}, "resnet110"),
]


@pytest.mark.parametrize("name, kwargs, row", PAPER_ROWS, ids=[r[2] for r in PAPER_ROWS])
def test_parameter_counts_match_the_paper(name, kwargs, row):
    expected = PAPER_RESULTS[row].parameters
    assert expected is not None and PAPER_RESULTS[f"{row}_baseline"].parameters == expected
    masked = build_model(name, MaskedLayers(), **kwargs)
    baseline = build_model(name, BaselineLayers(), **kwargs)
    assert count_parameters(masked) == expected
    assert count_parameters(baseline) == expected
    # Every kernel layer is masked: first, last and shortcut convs included.
    assert sum(int(np.prod(layer.mask.shape)) for layer in masked_layers(masked)) == expected
    assert not any(isinstance(layer, keras.layers.Dense) and layer.use_bias for layer in baseline.layers)
    assert sum(int(np.prod(w.shape)) for w in masked.trainable_weights
               if w.name == "mask") == expected


def test_builders_share_one_code_path():
    masked = build_model("conv4", MaskedLayers())
    baseline = build_model("conv4", BaselineLayers())
    assert [layer.name for layer in masked.layers] == [layer.name for layer in baseline.layers]
    assert [layer.output.shape for layer in masked.layers] == [layer.output.shape for layer in baseline.layers]
    kinds = {type(layer) for layer in masked_layers(masked)}
    assert kinds == {MaskedConv2D, MaskedDense}
    assert masked.output_shape == (None, 10)


def test_conv_width_and_dropout():
    model = build_model("conv2", MaskedLayers(), width=0.5, dropout=0.3)
    assert model.get_layer("conv_0_0").filters == 32 and model.get_layer("dense_0").units == 128
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)


def test_fcn_layout():
    model = build_model("fcn", MaskedLayers())
    assert [layer.units for layer in masked_layers(model)] == [300, 100, 10]
    activations = [type(layer).__name__ for layer in model.layers if isinstance(layer, keras.layers.Activation)]
    assert activations == ["Activation"] * 3


@pytest.mark.parametrize("mode, n_bn, trainable_bn", [("learned", 22, 44), ("frozen", 22, 0), ("none", 0, 0)])
def test_resnet_batch_norm_modes(mode, n_bn, trainable_bn):
    model = build_model("resnet20", MaskedLayers(threshold_fraction=0.75), batch_norm=mode)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == n_bn  # stem + 3 stages x (C block 3 + 2 I blocks x 2) = 1 + 3 x 7
    assert sum(int(np.prod(w.shape)) > 0 for layer in bns for w in layer.trainable_weights) == trainable_bn
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
    with pytest.raises(ValueError, match="whole number >= 1, got 1.5"):
        build_resnet(20, width=1.5)


@pytest.mark.parametrize("model, check", [
    ({"architecture": "conv2", "width": 0.5, "dropout": 0.3},
     lambda m: m.get_layer("conv_0_0").filters == 32 and any(isinstance(x, keras.layers.Dropout) for x in m.layers)),
    ({"architecture": "resnet20", "width": 2.0, "batch_norm": "none"},  # a config's width is a float
     lambda m: m.get_layer("stem_conv").filters == 32 and not any(
         isinstance(x, keras.layers.BatchNormalization) for x in m.layers)),
], ids=["conv2", "resnet20"])
def test_a_config_builds_with_its_architectures_options(model, check):
    """run_folder.build_run_model passes each architecture the model keys it takes (Architecture.options)."""
    import config as config_lib
    import run_folder

    cfg = config_lib.parse_config({"name": "t", "data": {"dataset": "cifar10", "source": "synthetic"},
                                   "model": model})
    assert check(run_folder.build_run_model(cfg, seed=0, run=0))


def test_unknown_architecture():
    with pytest.raises(ValueError, match="allowed: fcn, conv2"):
        build_model("vgg16", MaskedLayers())
    assert set(ARCHITECTURES) == {"fcn", "conv2", "conv4", "conv6", "conv8", "resnet20", "resnet56", "resnet110"}


def test_benchmark_model_names_build_the_paper_networks():
    """benchmarks/_common.architecture_of: `resnet20x2` is ResNet20 of width 2, with the paper's count."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_common.py"
    spec = importlib.util.spec_from_file_location("benchmarks_common", path)
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)
    assert common.architecture_of("resnet20x3") == ("resnet20", {"width": 3})
    assert common.architecture_of("conv6") == ("conv6", {})
    for name in ("conv2", "resnet20", "resnet20x2"):
        architecture, kwargs = common.architecture_of(name)
        model = build_model(architecture, MaskedLayers(seed=0), **kwargs)
        assert count_parameters(model) == PAPER_RESULTS[name].parameters
