"""shrink.py: dead-unit removal is exact on FCN, Conv and ResNet (learned / frozen / no BN), the survivors and unit
counts match hand computation, the shrunk model is stock Keras, and the .keras + sidecar round trip."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import shrink
from architectures import build_model
from custom_layers import BaselineLayers, MaskedDense, MaskedKernelMixin, MaskedLayers, masked_layers
from resnet_networks import build_resnet
from weight_initializer import ScaledInitializer

TOL = 1e-6  # float32 softmax outputs; removing exact zeros only changes the order of the sums


# ------------------------------------------------------------------------------------------------ helpers
def alternating(shape):
    """+1 / -1 in a checkerboard over all axes: every weight non-zero, so nothing dies unless a test says so."""
    return np.where(np.indices(shape).sum(axis=0) % 2 == 0, 1.0, -1.0)


def set_masks(model, masks):
    """Make the effective mask of each named layer exactly the given ternary array (m = M * (tau + 1))."""
    for layer in masked_layers(model):
        if layer.name in masks:
            tau = float(keras.ops.convert_to_numpy(layer.threshold))
            layer.mask.assign((np.asarray(masks[layer.name]) * (tau + 1.0)).astype("float32"))
    for layer in masked_layers(model):
        if layer.name in masks:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.effective_mask()), masks[layer.name])
    return model


def all_alternating(model):
    return {layer.name: alternating(tuple(layer.kernel.shape)) for layer in masked_layers(model)}


def random_bn(model, seed=0):
    """Non-trivial BN statistics: beta != 0 and mean != 0, so BN(0) != 0 on every channel."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.5, n) + 0.1, rng.normal(0, 0.5, n),
                               rng.uniform(0.5, 2.0, n)])
    return model


def inputs_for(model, n=8, seed=1):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype("float32")


def predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_exact(result, reference, x):
    """The shrunk model on x[..., input survivors] predicts what the reference predicts on x."""
    got, want = predict(result.model, shrink.reduce_inputs(result, x)), predict(reference, x)
    diff = float(np.max(np.abs(got - want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL, err_msg=f"max|diff| = {diff:.3g}")
    return diff


def all_but(n, *removed):
    return [i for i in range(n) if i not in removed]


def kernel_shapes(model):
    return {layer.name: tuple(layer.kernel.shape) for layer in model.layers
            if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))}


def is_stock(model):
    return all(type(layer).__module__.startswith("keras.") and not isinstance(layer, MaskedKernelMixin)
               for layer in model.layers)


# ------------------------------------------------------------------------------------------------ pure maths
def test_no_incoming_no_outgoing_by_hand():
    dense = np.array([[1, 0, 0], [0, 0, 0], [-1, 0, 1]], "float32")  # rows: inputs, columns: units
    np.testing.assert_array_equal(shrink.no_incoming(dense), [False, True, False])
    np.testing.assert_array_equal(shrink.no_outgoing(dense), [False, True, False])
    conv = np.zeros((3, 3, 2, 4), "float32")
    conv[2, 0, 0, 1] = 1  # one tap of input channel 0 feeds filter 1
    conv[1, 1, 0, 3] = -1
    np.testing.assert_array_equal(shrink.no_incoming(conv), [True, False, True, False])
    np.testing.assert_array_equal(shrink.no_outgoing(conv), [False, True])
    np.testing.assert_array_equal(shrink.connections(conv), [[False, True, False, True], [False] * 4])


def test_flatten_channels_and_bn_zero_rule_by_hand():
    # Flatten((2, 2, 3)): feature p = (h*W + w)*C + f comes from channel f = p mod 3.
    np.testing.assert_array_equal(shrink.flatten_channels((2, 2), 3), [0, 1, 2] * 4)
    # BN(0) = beta - gamma * mean / sqrt(var + eps) is exactly 0 when beta == 0 and (mean == 0 or gamma == 0).
    np.testing.assert_array_equal(
        shrink.bn_maps_zero_to_zero(gamma=[1, 0, 1, 2], beta=[0, 0, 0.5, 0], moving_mean=[0, 3, 0, 1]),
        [True, True, False, False])
    np.testing.assert_array_equal(shrink.bn_maps_zero_to_zero(gamma=None, beta=None, moving_mean=[0, 1]),
                                  [True, False])


def test_chain_survivors_by_hand():
    k1 = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0], [0, 1, 0]])  # input 2: no weight; unit 2: no incoming
    k2 = np.array([[1, 1], [0, 0], [1, 0]])  # unit 1 of layer 1: no outgoing -> then input 3 is dead (cascade)
    k3 = np.array([[1, 0, 1], [0, 0, 1]])  # class 1 has no weight: the output keeps it
    assert shrink.chain_survivors([k1, k2, k3]) == [[0, 1], [0], [0, 1], [0, 1, 2]]
    assert shrink.chain_survivors([k1, k2, k3], trim_inputs=False) == [[0, 1, 2, 3], [0], [0, 1], [0, 1, 2]]
    analysis = shrink.analyze_graph(shrink.chain_graph([k1, k2, k3]))
    assert analysis.rounds == 2  # input 3 dies only after unit 1 is gone
    # Forward cascade: layer-2 unit 0 is fed only by a unit with no incoming weight.
    k1 = np.array([[1, 0], [1, 0]])
    k2 = np.array([[0, 1], [1, 1]])
    k3 = np.array([[1], [1]])
    assert shrink.chain_survivors([k1, k2, k3]) == [[0, 1], [0], [1], [0]]


def test_analyze_graph_bn_offset_and_mixed_reason_by_hand():
    """x(2) -> K0 -> t1(3) -> BN -> t2 -> KA -> a ;  t1 -> KB -> b   (a and b are model outputs).
    t1 channels 1 and 2 have no incoming weight; the BN maps 0 to 0 on channels 0 and 2 only.
      channel 1: zero where KB reads it, the constant BN(0) != 0 where KA reads it, but KA ignores it
                 -> removed, reason "mixed"
      channel 2: zero at both readers (the BN keeps it 0) -> removed, "no_incoming"
      input 1:   no weight -> removed"""
    k0 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # input 1 feeds nothing; t1 channels 1, 2 get nothing
    ka = np.array([[1.0], [0.0], [1.0]])  # KA ignores channel 1, reads 0 and 2
    kb = np.array([[1.0], [1.0], [1.0]])
    nodes = [shrink.Node("kernel", "K0", (0,), (1,), kernel=k0, zero_ok=np.ones(3, bool)),
             shrink.Node("bn", "BN", (1,), (2,), zero_ok=np.array([True, False, True]), params=4),
             shrink.Node("kernel", "KA", (2,), (3,), kernel=ka, zero_ok=np.ones(1, bool)),
             shrink.Node("kernel", "KB", (1,), (4,), kernel=kb, zero_ok=np.ones(1, bool))]
    graph = shrink.Graph([2, 3, 3, 1, 1], [()] * 5, nodes, [0], ["x"], [3, 4])
    result = shrink.analyze_graph(graph)
    np.testing.assert_array_equal(result.tensor_alive(1), [True, False, False])
    np.testing.assert_array_equal(result.tensor_alive(2), [True, False, False])  # BN sliced with its space
    assert list(result.reason[result.root[1]]) == ["", "mixed", "no_incoming"]
    np.testing.assert_array_equal(result.tensor_alive(0), [True, False])
    # With KA reading channel 1, the BN offset makes it a live constant: kept, noted.
    ka[1, 0] = 1.0
    result = shrink.analyze_graph(graph)
    np.testing.assert_array_equal(result.tensor_alive(1), [True, True, False])
    assert result.kept[result.root[1]] == {1: "nonzero_offset"}
    analysis = shrink.summarize(graph, result)
    assert analysis.architecture == "2-3-1-1 → 1-2-1-1"
    # parameters: K0 2*3 + BN 4*3 + KA 3 + KB 3 = 24 -> K0 1*2 + BN 4*2 + KA 2 + KB 2 = 14
    assert (analysis.parameters_before, analysis.parameters_after) == (24, 14)


def test_format_architecture():
    layout = [("input", "input:x"), ("kernel", "c1"), ("kernel", "c2"), ("flatten", "f"), ("kernel", "d1"),
              ("kernel", "out")]
    counts = {"input:x": 3, "c1": 64, "c2": 64, "f": 16384, "d1": 256, "out": 10}
    assert shrink.format_architecture(layout, counts) == "3-64-64 | 16384-256-10"


# ------------------------------------------------------------------------------------------------ FCN
def fcn_case():
    """784-16-8-10 with hand-made dead units (everything else +-1):
        inputs 0, 5, 783: no weights; input 9: its only weight goes to unit 7 of dense_0 (cascade)
        dense_0 unit 3: no incoming; unit 7: no outgoing; unit 11: only outgoing to dense_1 unit 2 (cascade)
        dense_1 unit 2: no outgoing; unit 5: no incoming
        output class 9: no weights (kept)
    -> 780-13-6-10, removed in 2 rounds."""
    model = build_model("fcn", MaskedLayers(seed=0), hidden=(16, 8))
    m0, m1, m2 = alternating((784, 16)), alternating((16, 8)), alternating((8, 10))
    m0[[0, 5, 783], :] = 0
    m0[:, 3] = 0
    m0[9, :] = 0
    m0[9, 7] = 1
    m1[7, :] = 0
    m1[11, :] = 0
    m1[11, 2] = -1
    m1[:, 5] = 0
    m2[2, :] = 0
    m2[:, 9] = 0
    return set_masks(model, {"dense_0": m0, "dense_1": m1, "output": m2})


def test_fcn_survivors_counts_parameters_and_predictions_by_hand():
    model = fcn_case()
    stripped = shrink.strip(model)
    result = shrink.shrink(model)
    assert result.survivors == {"input:image": all_but(784, 0, 5, 9, 783), "dense_0": all_but(16, 3, 7, 11),
                                "dense_1": all_but(8, 2, 5), "output": list(range(10))}
    assert result.before == {"input:image": 784, "dense_0": 16, "dense_1": 8, "output": 10}
    assert result.after == {"input:image": 780, "dense_0": 13, "dense_1": 6, "output": 10}
    assert result.architecture == "784-16-8-10 → 780-13-6-10"
    assert result.removed == {"input:image": {"no_outgoing": [0, 5, 9, 783]},
                              "dense_0": {"no_incoming": [3], "no_outgoing": [7, 11]},
                              "dense_1": {"no_incoming": [5], "no_outgoing": [2]}}
    assert result.kept == {"output": {"pinned": [9]}}  # class 9 has no weights but keeps its logit
    assert result.rounds == 2
    # Parameters: 784*16 + 16*8 + 8*10 = 12752 -> 780*13 + 13*6 + 6*10 = 10278.
    assert stripped.count_params() == result.parameters_before == 12752
    assert result.model.count_params() == result.parameters_after == 10278
    assert kernel_shapes(result.model) == {"dense_0": (780, 13), "dense_1": (13, 6), "output": (6, 10)}
    assert is_stock(result.model) and result.model.output.shape == (None, 10)
    x = inputs_for(model)
    assert_exact(result, stripped, x)
    assert_exact(result, model, x)
    # The stripped stock model gives the same result; the analysis alone (no rebuild) gives the same counts.
    again = shrink.shrink(stripped)
    assert again.survivors == result.survivors and again.after == result.after
    assert shrink.effective_architecture(model) == "784-16-8-10 → 780-13-6-10"
    assert shrink.surviving_units(model) == result.after
    assert shrink.analyze(stripped).to_json() == shrink.analyze(model).to_json() == {
        k: v for k, v in result.to_json().items()}


def test_fcn_hidden_layer_down_to_one_unit_and_all_dead():
    model = build_model("fcn", MaskedLayers(seed=0), hidden=(16, 8))
    masks = all_alternating(model)
    masks["dense_1"][:, [0, 1, 2, 3, 5, 6, 7]] = 0  # only unit 4 of dense_1 receives anything
    set_masks(model, masks)
    result = shrink.shrink(model)
    assert result.survivors["dense_1"] == [4] and result.architecture == "784-16-8-10 → 784-16-1-10"
    assert kernel_shapes(result.model)["output"] == (1, 10)
    assert_exact(result, model, inputs_for(model))

    # Nothing reaches the output: every layer keeps one (dead) unit, the logits are 0, the softmax uniform.
    masks["dense_1"][:] = 0
    set_masks(model, masks)
    result = shrink.shrink(model)
    assert result.architecture == "784-16-8-10 → 1-1-1-10"
    assert result.kept["dense_1"] == {"last_unit": [0]}
    x = inputs_for(model)
    assert_exact(result, model, x)
    np.testing.assert_allclose(predict(result.model, shrink.reduce_inputs(result, x)), 0.1, atol=1e-7)


def test_trim_inputs_false_keeps_the_input_shape():
    model = fcn_case()
    result = shrink.shrink(model, trim_inputs=False)
    assert result.survivors["input:image"] == list(range(784))
    assert tuple(result.model.inputs[0].shape) == (None, 784)
    assert result.after["dense_0"] == 13
    x = inputs_for(model)
    np.testing.assert_allclose(predict(result.model, x), predict(model, x), rtol=0, atol=TOL)


# ------------------------------------------------------------------------------------------------ Conv
def conv_case():
    """Conv2 8x8x3, width 1/8: 3-8-8 | 128-4-2-10, everything +-1 except:
        input channel 0: no weights
        conv_0_0 filter 1: no incoming; filter 6: no outgoing; filter 3: only outgoing into conv_0_1 filter 2
        conv_0_1 filter 2: all 16 flattened rows of dense_0 zero; filter 4: no incoming; filter 5: one zero
                 flattened row (kept: single flattened features cannot be dropped)
        dense_0 unit 1: no incoming
    -> 2-5-6 | 96-3-2-10 in 2 rounds."""
    model = build_model("conv2", MaskedLayers(seed=0), input_shape=(8, 8, 3), width=0.125, hidden=(32, 16))
    masks = all_alternating(model)
    c0, c1, d0 = masks["conv_0_0"], masks["conv_0_1"], masks["dense_0"]
    assert c0.shape == (3, 3, 3, 8) and c1.shape == (3, 3, 8, 8) and d0.shape == (128, 4)
    c0[:, :, 0, :] = 0
    c0[..., 1] = 0
    c1[:, :, 6, :] = 0
    c1[:, :, 3, [0, 1, 3, 4, 5, 6, 7]] = 0
    c1[..., 4] = 0
    features = np.arange(128)
    d0[features % 8 == 2, :] = 0  # Flatten((4, 4, 8)): feature p belongs to filter p mod 8
    d0[5, :] = 0  # position (0, 0) of filter 5 only
    d0[:, 1] = 0
    return set_masks(model, masks)


def test_conv_survivors_flatten_rule_and_predictions_by_hand():
    model = conv_case()
    result = shrink.shrink(model)
    assert result.survivors == {"input:image": [1, 2], "conv_0_0": [0, 2, 4, 5, 7], "conv_0_1": [0, 1, 3, 5, 6, 7],
                                "dense_0": [0, 2, 3], "dense_1": [0, 1], "output": list(range(10))}
    assert result.architecture == "3-8-8 | 128-4-2-10 → 2-5-6 | 96-3-2-10"
    assert result.after["flatten"] == 96
    assert result.removed == {"input:image": {"no_outgoing": [0]},
                              "conv_0_0": {"no_incoming": [1], "no_outgoing": [3, 6]},
                              "conv_0_1": {"no_incoming": [4], "no_outgoing": [2]},
                              "dense_0": {"no_incoming": [1]}}
    assert result.kept == {"conv_0_1": {"flatten_partial": [5]}}
    assert result.rounds == 2
    assert kernel_shapes(result.model) == {"conv_0_0": (3, 3, 2, 5), "conv_0_1": (3, 3, 5, 6), "dense_0": (96, 3),
                                           "dense_1": (3, 2), "output": (2, 10)}
    # 27*8 + 72*8 + 128*4 + 4*2 + 2*10 = 1332 -> 9*2*5 + 9*5*6 + 96*3 + 3*2 + 2*10 = 674
    assert shrink.strip(model).count_params() == result.parameters_before == 1332
    assert result.model.count_params() == result.parameters_after == 674
    assert is_stock(result.model)
    assert_exact(result, shrink.strip(model), inputs_for(model))


# ------------------------------------------------------------------------------------------------ ResNet
def resnet_case(batch_norm):
    """ResNet8 on 8x8x3, everything +-1 except:
        stem filter 2, s0 conv_a filter 7: no incoming (removable only if the BN after them maps 0 to 0)
        s0 conv_a filter 5: no outgoing (conv_b ignores it)
        s0 residual channel 9: ignored by both readers (s1 conv_a and s1 shortcut)
        s1 residual channel 4: conv_b and shortcut columns both zero (zero sum only without BN offset)
        s1 residual channel 6: only conv_b's column zero (the shortcut still feeds it: kept)
        s2 conv_a filter 3: no outgoing; s2 residual channel 0: the output layer ignores it
    """
    model = build_resnet(8, MaskedLayers(seed=0, threshold_fraction=0.75), batch_norm=batch_norm,
                         input_shape=(8, 8, 3))
    masks = all_alternating(model)
    masks["stem_conv"][..., 2] = 0
    masks["s0_b0_conv_a"][..., 7] = 0
    masks["s0_b0_conv_b"][:, :, 5, :] = 0
    masks["s1_b0_conv_a"][:, :, 9, :] = 0
    masks["s1_b0_shortcut"][:, :, 9, :] = 0
    masks["s1_b0_conv_b"][..., [4, 6]] = 0
    masks["s1_b0_shortcut"][..., 4] = 0
    masks["s2_b0_conv_b"][:, :, 3, :] = 0
    masks["output"][0, :] = 0
    set_masks(model, masks)
    return random_bn(model) if batch_norm == "learned" else model


@pytest.mark.parametrize("batch_norm", ["learned", "frozen", "none"])
def test_resnet_survivors_and_predictions_by_hand(batch_norm):
    model = resnet_case(batch_norm)
    result = shrink.shrink(model)
    exact_zero = batch_norm != "learned"  # frozen BN (mean 0, beta 0) and no BN map 0 to 0
    expected = {
        "input:image": [0, 1, 2],
        "stem_conv": all_but(16, 2) if exact_zero else list(range(16)),
        "s0_b0_conv_a": all_but(16, 5, 7) if exact_zero else all_but(16, 5),
        "s0_b0_conv_b": all_but(16, 9), "s0_b0_shortcut": all_but(16, 9),
        "s1_b0_conv_a": list(range(32)),
        "s1_b0_conv_b": all_but(32, 4) if exact_zero else list(range(32)),
        "s1_b0_shortcut": all_but(32, 4) if exact_zero else list(range(32)),
        "s2_b0_conv_a": all_but(64, 3),
        "s2_b0_conv_b": all_but(64, 0), "s2_b0_shortcut": all_but(64, 0),
        "output": list(range(10)),
    }
    assert result.survivors == expected
    if exact_zero:
        assert result.architecture == ("3-16-16-16-16-32-32-32-64-64-64-10 → "
                                       "3-15-14-15-15-32-31-31-63-63-63-10")
        assert result.removed["s1_b0_conv_b"] == {"no_incoming": [4]}
    else:
        assert result.kept["stem_conv"] == {"nonzero_offset": [2]}  # BN(0) != 0 feeds the next convs
        assert result.kept["s0_b0_conv_a"] == {"nonzero_offset": [7]}
        assert result.kept["s1_b0_conv_b"] == {"nonzero_offset": [4]}
    assert result.removed["s0_b0_conv_b"] == result.removed["s0_b0_shortcut"] == {"no_outgoing": [9]}
    shapes = kernel_shapes(result.model)
    assert shapes["s0_b0_conv_b"] == ((3, 3, 14, 15) if exact_zero else (3, 3, 15, 15))
    assert shapes["s1_b0_shortcut"] == ((1, 1, 15, 31) if exact_zero else (1, 1, 15, 32))
    assert shapes["output"] == (63, 10)
    for layer in result.model.layers:  # every BN sliced like the conv it follows
        if isinstance(layer, keras.layers.BatchNormalization):
            conv = (layer.name.replace("stem_bn", "stem_conv").replace("bn_shortcut", "shortcut")
                    .replace("bn_", "conv_"))
            assert all(w.shape == (shapes[conv][-1],) for w in layer.get_weights())
    if batch_norm == "none":
        # kernels only: 27*15 + 15*14 + 9*14*15 + 15*15 + 15*32 + 9*32*31 + 15*31 + 31*63 + 9*63*63 + 31*63 + 63*10
        assert result.model.count_params() == result.parameters_after == 52860
    assert result.model.count_params() == result.parameters_after
    assert shrink.strip(model).count_params() == result.parameters_before
    assert is_stock(result.model)
    assert any(isinstance(layer, keras.layers.Add) for layer in result.model.layers)
    assert_exact(result, shrink.strip(model), inputs_for(model))


# ------------------------------------------------------------------------------------------------ random masks
def trained_looking(model, active, seed=0):
    rng = np.random.default_rng(seed)
    masks = {}
    for layer in masked_layers(model):
        shape = tuple(layer.kernel.shape)
        masks[layer.name] = np.where(rng.random(shape) < 0.5, -1.0, 1.0) * (rng.random(shape) < active)
    set_masks(model, masks)
    return random_bn(model, seed)


@pytest.mark.parametrize("name,active", [("fcn", 0.03), ("conv", 0.05), ("learned", 0.08), ("frozen", 0.08),
                                         ("none", 0.08)])
def test_sparse_random_masks_shrink_exactly(name, active):
    if name == "fcn":
        model = build_model("fcn", MaskedLayers(seed=0), hidden=(64, 32))
    elif name == "conv":
        model = build_model("conv2", MaskedLayers(seed=0), input_shape=(8, 8, 3), width=0.25, hidden=(64, 32))
    else:
        model = build_resnet(8, MaskedLayers(seed=0, threshold_fraction=0.75), batch_norm=name,
                             input_shape=(8, 8, 3))
    trained_looking(model, active)
    result = shrink.shrink(model)
    assert result.parameters_after < result.parameters_before
    assert sum(result.after.values()) < sum(result.before.values())
    assert result.model.count_params() == result.parameters_after
    assert_exact(result, model, inputs_for(model, n=16))


def test_sequential_and_baseline_models():
    seq = keras.Sequential([
        keras.Input((12,)),
        MaskedDense(6, kernel_initializer=ScaledInitializer(seed=1),
                    mask_initializer=ScaledInitializer("uniform", "xavier", seed=2), name="a"),
        keras.layers.Activation("elu"),
        keras.layers.Dropout(0.3),
        MaskedDense(3, kernel_initializer=ScaledInitializer(seed=3),
                    mask_initializer=ScaledInitializer("uniform", "xavier", seed=4), name="b"),
    ])
    ma, mb = alternating((12, 6)), alternating((6, 3))
    ma[4, :] = 0
    mb[1, :] = 0
    set_masks(seq, {"a": ma, "b": mb})
    result = shrink.shrink(seq)
    assert result.survivors["a"] == [0, 2, 3, 4, 5] and result.input_survivors == all_but(12, 4)
    assert result.architecture == "12-6-3 → 11-5-3"
    assert_exact(result, seq, inputs_for(seq))
    # A dense baseline has no dead unit: nothing changes.
    base = build_model("fcn", BaselineLayers(seed=0), hidden=(16, 8))
    result = shrink.shrink(base)
    assert result.architecture == "784-16-8-10 → 784-16-8-10" and result.removed == {}
    assert_exact(result, base, inputs_for(base))


# ------------------------------------------------------------------------------------------------ files
def test_save_shrunk_and_sidecar_round_trip(tmp_path):
    model = fcn_case()
    result = shrink.shrink(model)
    paths = shrink.save_shrunk(result, tmp_path / "fcn.keras")
    assert paths == {"model": tmp_path / "fcn.keras", "sidecar": tmp_path / "fcn.survivors.json"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fcn.keras", "fcn.survivors.json"]  # no temp files left
    meta = shrink.load_survivors(tmp_path / "fcn.keras")
    assert meta == shrink.load_survivors(paths["sidecar"])
    assert meta["survivors"] == result.survivors and meta["before"] == result.before
    assert meta["after"] == result.after and meta["architecture"] == "784-16-8-10 → 780-13-6-10"
    assert meta["architecture_after"] == "780-13-6-10" and meta["model_file"] == "fcn.keras"
    assert json.loads(paths["sidecar"].read_text(encoding="utf-8"))["removed"] == result.removed
    loaded, meta2 = shrink.load_shrunk(paths["model"])
    assert meta2 == meta
    x = inputs_for(model)
    np.testing.assert_allclose(predict(loaded, x[:, meta["survivors"]["input:image"]]), predict(model, x),
                               rtol=0, atol=TOL)
    with pytest.raises(ValueError, match=".keras"):
        shrink.save_shrunk(result, tmp_path / "fcn.h5")


def test_shrunk_keras_loads_without_the_repository(tmp_path):
    """A fresh Python (isolated mode: no PYTHONPATH, cwd a temp dir) loads the shrunk .keras files with plain
    keras.models.load_model, no custom_objects, and predicts what the Supermask predicts."""
    cases = {"fcn": fcn_case(), "resnet": resnet_case("learned")}
    expected = {}
    for name, model in cases.items():
        result = shrink.shrink(model)
        shrink.save_shrunk(result, tmp_path / f"{name}.keras")
        x = inputs_for(model)
        expected[name] = predict(model, x)
        np.save(tmp_path / f"{name}_x.npy", shrink.reduce_inputs(result, x))
        np.save(tmp_path / f"{name}_y.npy", expected[name])
    code = textwrap.dedent("""
        import importlib.util, json, sys
        import numpy as np
        assert importlib.util.find_spec("custom_layers") is None and importlib.util.find_spec("shrink") is None
        import keras
        out = {}
        for name in ("fcn", "resnet"):
            model = keras.models.load_model(name + ".keras")
            y = keras.ops.convert_to_numpy(model(np.load(name + "_x.npy"), training=False))
            out[name] = float(np.max(np.abs(y - np.load(name + "_y.npy"))))
        print("RESULT " + json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-I", "-c", code], check=False, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    diffs = json.loads(line[len("RESULT "):])
    assert diffs["fcn"] <= TOL and diffs["resnet"] <= TOL, diffs
