"""export.py: strip to stock Keras, the compact ternary artifact (seed route and explicit-kernel fallback), the
mask summary, the size report and the run-directory CLI."""

import json
import math
import re

import keras
import numpy as np
import pytest
import yaml

import compact
import config as config_lib
import export
import run_folder
import shrink
from architectures import build_model
from custom_layers import MaskedDense, MaskedKernelMixin, MaskedLayers, TopKMask, leaf_layers, masked_layers
from resnet_networks import build_resnet
from run_folder import build_run_model, save_weights_npz
from weight_initializer import ScaledInitializer


def trained_looking(model, seed=0, active=0.2):
    """Masks with about `active` of |m| above tau (signs 50/50), the rest below; BN stats non-trivial."""
    rng = np.random.default_rng(seed)
    for layer in masked_layers(model):
        shape = tuple(layer.mask.shape)
        if isinstance(layer.mask_mode, TopKMask):
            layer.mask.assign(rng.normal(size=shape).astype("float32"))
            continue
        tau = float(keras.ops.convert_to_numpy(layer.threshold))
        m = rng.uniform(-0.95 * tau, 0.95 * tau, size=shape)
        on = rng.random(shape) < active
        m[on] = np.where(rng.random(on.sum()) < 0.5, -1, 1) * tau * rng.uniform(1.05, 3.0, on.sum())
        layer.mask.assign(m.astype("float32"))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.5, 2.0, n)])
    return model


def fcn(**kw):
    return build_model("fcn", MaskedLayers(seed=0, **kw), hidden=(16, 8))


def conv():
    return build_model("conv2", MaskedLayers(seed=0), input_shape=(8, 8, 3), width=0.125, hidden=(128, 64))


def resnet():
    return build_resnet(8, MaskedLayers(seed=0, threshold_fraction=0.75), batch_norm="learned",
                        input_shape=(8, 8, 3))


def sequential():
    return keras.Sequential([
        keras.Input((12,)),
        MaskedDense(6, kernel_initializer=ScaledInitializer(seed=1), mask_initializer=ScaledInitializer(
            "uniform", "xavier", seed=2), name="a"),
        keras.layers.Activation("elu"),
        keras.layers.Dropout(0.3),
        MaskedDense(3, kernel_initializer=ScaledInitializer(seed=3), mask_initializer=ScaledInitializer(
            "uniform", "xavier", seed=4), name="b"),
    ])


BUILDERS = {"fcn": fcn, "conv": conv, "resnet": resnet, "sequential": sequential}


def inputs_for(model, n=16, seed=1):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype("float32")


def assert_same_predictions(a, b, x):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a(x, training=False)),
                                  keras.ops.convert_to_numpy(b(x, training=False)))


def assert_same_masks(a, b):
    la, lb = masked_layers(a), masked_layers(b)
    assert [layer.name for layer in la] == [layer.name for layer in lb]
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x.effective_mask()),
                                      keras.ops.convert_to_numpy(y.effective_mask()))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(x.kernel), keras.ops.convert_to_numpy(y.kernel))


# ------------------------------------------------------------------------------------------------ strip
@pytest.mark.parametrize("name", list(BUILDERS))
def test_strip_predicts_identically_with_stock_layers_only(name):
    model = trained_looking(BUILDERS[name]())
    stripped = shrink.strip(model)
    assert not any(isinstance(layer, MaskedKernelMixin) for _, layer in leaf_layers(stripped))
    assert [p for p, _ in leaf_layers(stripped)] == [p for p, _ in leaf_layers(model)]
    assert_same_predictions(model, stripped, inputs_for(model))
    twins = dict(leaf_layers(stripped))
    for layer in masked_layers(model):
        twin = twins[layer.name]
        assert type(twin) is (keras.layers.Dense if isinstance(layer, MaskedDense) else keras.layers.Conv2D)
        assert not twin.use_bias
        w, m, tau = (keras.ops.convert_to_numpy(v) for v in (layer.kernel, layer.mask, layer.threshold))
        assert layer.mask_mode.name == "signed"
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(twin.kernel), w * np.sign(m) * (np.abs(m) > tau))


def test_stripped_resnet_keeps_bn_weights_and_reloads_without_custom_code(tmp_path):
    model = trained_looking(resnet())
    stripped = shrink.strip(model)
    twins = dict(leaf_layers(stripped))
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(type(twins[b.name]) is keras.layers.BatchNormalization for b in bns)
    for bn in bns:
        for w, v in zip(bn.get_weights(), twins[bn.name].get_weights()):
            np.testing.assert_array_equal(w, v)
    assert any(isinstance(layer, keras.layers.Add) for layer in stripped.layers)
    stripped.save(tmp_path / "s.keras")
    reloaded = keras.models.load_model(tmp_path / "s.keras", safe_mode=True)
    assert_same_predictions(model, reloaded, inputs_for(model))


# ------------------------------------------------------------------------------------------------ codes
@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.5, 1.0])
def test_mask_codes_round_trip_within_two_bits_per_weight(density):
    rng = np.random.default_rng(3)
    mask = (np.where(rng.random((37, 29)) < 0.5, -1.0, 1.0) * (rng.random((37, 29)) < density)).astype("float32")
    n, nnz = mask.size, int(np.count_nonzero(mask))
    planes = compact.encode_bitplanes(mask)
    assert planes.size == math.ceil(n / 8) + math.ceil(nnz / 8) <= math.ceil(2 * n / 8) + 1
    np.testing.assert_array_equal(compact.decode_bitplanes(planes, n, nnz).reshape(mask.shape), mask)
    sparse, dtype = compact.encode_sparse(mask)
    np.testing.assert_array_equal(compact.decode_sparse(sparse, n, nnz, dtype).reshape(mask.shape), mask)
    code, info = compact.encode_mask(mask)
    assert code.dtype == np.uint8 and info["bytes"] == code.size <= math.ceil(2 * n / 8) + 1
    np.testing.assert_array_equal(compact.decode_mask(code, info, mask.shape), mask)


def test_very_sparse_mask_takes_the_sparse_code_and_non_ternary_is_refused():
    mask = np.zeros((300, 300), "float32")
    mask[3, 7], mask[200, 1], mask[299, 299] = 1, -1, 1
    code, info = compact.encode_mask(mask)
    assert info["code"] == "sparse" and info["nnz"] == 3 and code.size == 3 * 2 + 1  # uint16 gaps + sign byte
    with pytest.raises(ValueError, match="-1, 0"):
        compact.encode_mask(np.array([0.5, 1.0]))


def test_kernel_codes():
    signs = np.where(np.random.default_rng(0).random((9, 5)) < 0.5, -0.25, 0.25).astype("float32")
    array, info = compact.encode_kernel(signs)
    assert info == {"code": "signs", "constant": 0.25} and array.size == math.ceil(45 / 8)
    np.testing.assert_array_equal(compact.decode_kernel(array, info, signs.shape), signs)
    other = np.random.default_rng(0).normal(size=(9, 5)).astype("float32")
    array, info = compact.encode_kernel(other)
    assert info == {"code": "float32"}
    np.testing.assert_array_equal(compact.decode_kernel(array, info, other.shape), other)


# ------------------------------------------------------------------------------------------------ compact
@pytest.mark.parametrize("name", ["fcn", "resnet", "sequential"])
def test_compact_round_trip_by_seed(name, tmp_path):
    model = trained_looking(BUILDERS[name]())
    meta = run_folder.save_compact(model, tmp_path / "c.npz")
    assert {e["kernel"]["code"] for e in meta["masked"].values()} == {"seed"}
    with np.load(tmp_path / "c.npz", allow_pickle=False) as data:
        assert not any(k.startswith("kernel/") for k in data.files)
        for path, entry in meta["masked"].items():  # about 2 bits per weight at most
            n = int(np.prod(entry["shape"]))
            assert data[f"mask/{path}"].nbytes == entry["mask"]["bytes"] <= math.ceil(2 * n / 8) + 1
    loaded = run_folder.load_compact(tmp_path / "c.npz")
    assert_same_masks(model, loaded)
    assert_same_predictions(model, loaded, inputs_for(model))
    decoded = compact.effective_masks(run_folder.read_npz(tmp_path / "c.npz"))  # no model built
    assert list(decoded) == [path for path, layer in leaf_layers(model) if isinstance(layer, MaskedKernelMixin)]
    for path, layer in leaf_layers(model):
        if isinstance(layer, MaskedKernelMixin):
            np.testing.assert_array_equal(decoded[path], keras.ops.convert_to_numpy(layer.effective_mask()))


def test_compact_falls_back_to_explicit_kernels(tmp_path):
    model = trained_looking(fcn())
    rng = np.random.default_rng(9)
    layers = {layer.name: layer for layer in masked_layers(model)}
    layers["dense_0"].kernel.assign(np.where(rng.random((784, 16)) < 0.5, -0.1, 0.1).astype("float32"))
    layers["dense_1"].kernel.assign(rng.normal(size=(16, 8)).astype("float32"))
    meta = run_folder.save_compact(model, tmp_path / "c.npz")
    codes = {p: e["kernel"]["code"] for p, e in meta["masked"].items()}
    assert codes == {"dense_0": "signs", "dense_1": "float32", "output": "seed"}
    with np.load(tmp_path / "c.npz", allow_pickle=False) as data:
        assert data["kernel/dense_0"].nbytes == math.ceil(784 * 16 / 8)
    loaded = run_folder.load_compact(tmp_path / "c.npz")
    assert_same_masks(model, loaded)
    assert_same_predictions(model, loaded, inputs_for(model))


@pytest.mark.parametrize("mode", ["binary", TopKMask(0.3)])
def test_compact_round_trip_other_mask_modes(mode, tmp_path):
    model = trained_looking(fcn(mask_mode=mode))
    run_folder.save_compact(model, tmp_path / "c.npz")
    loaded = run_folder.load_compact(tmp_path / "c.npz")
    assert_same_masks(model, loaded)
    assert_same_predictions(model, loaded, inputs_for(model))


def test_load_compact_detects_a_changed_kernel(tmp_path):
    model = trained_looking(fcn())
    run_folder.save_compact(model, tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["masked"]["dense_1"]["sha256"] = "0" * 64
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="dense_1"):
        run_folder.load_compact(tmp_path / "bad.npz")


def test_write_artifacts_and_the_size_report(tmp_path):
    model = trained_looking(fcn(), active=0.03)
    report = export.write_artifacts(model, tmp_path)
    sizes = report["bytes"]
    assert sizes["compact"] < sizes["shrunk_keras"] < sizes["stripped_keras"] < sizes["keras"]
    assert report["kernel_weights"] == 784 * 16 + 16 * 8 + 8 * 10
    assert report["parameters"]["stripped"] == 784 * 16 + 16 * 8 + 8 * 10 > report["parameters"]["shrunk"]
    assert report["architecture"].startswith("784-16-8-10 → ")
    for name in ("stripped.keras", "shrunk.keras", "shrunk.survivors.json", "compact.npz"):
        assert (tmp_path / name).stat().st_size > 0
    assert "compact" in export.format_size_report(report)


# ------------------------------------------------------------------------------------------------ summary
def test_mask_summary_counts_a_hand_set_model(capsys):
    model = build_model("fcn", MaskedLayers(seed=0), input_shape=(6,), hidden=(4,), num_classes=3)
    d0, out = masked_layers(model)
    m0 = np.zeros((6, 4), "float32")
    m0[0, :3] = 0.9  # 3 kept
    m0[1, 0] = -0.7  # 1 inverted
    m0[2, 1] = 0.5  # == tau: hidden
    m1 = np.array([[0.6, -0.6, 0.0], [0.0, 0.0, -2.0], [1.0, 0.1, 0.2], [0.0, 0.0, 0.0]], "float32")
    for layer, m in ((d0, m0), (out, m1)):
        layer.mask.assign(m)
        layer.threshold.assign(0.5)
    rows = export.mask_summary(model)
    assert [r["name"] for r in rows] == ["dense_0", "output", "total"]
    assert {k: rows[0][k] for k in ("parameters", "kept", "inverted", "hidden", "bits")} == \
        {"parameters": 24, "kept": 3, "inverted": 1, "hidden": 20, "bits": 48}
    assert {k: rows[1][k] for k in ("parameters", "kept", "inverted", "hidden", "bits")} == \
        {"parameters": 12, "kept": 2, "inverted": 2, "hidden": 8, "bits": 24}
    assert rows[0]["shape"] == (6, 4) and rows[0]["remaining_percent"] == pytest.approx(100 * 4 / 24)
    assert {k: rows[2][k] for k in ("parameters", "kept", "inverted", "hidden", "bits")} == \
        {"parameters": 36, "kept": 5, "inverted": 3, "hidden": 28, "bits": 72}
    assert rows[2]["remaining_percent"] == pytest.approx(100 * 8 / 36)
    stripped_rows = export.mask_summary(shrink.strip(model))
    assert stripped_rows[0]["type"] == "Dense" and stripped_rows[0]["bits"] == 32 * 24
    export.print_mask_summary(model)
    text = capsys.readouterr().out
    assert "dense_0" in text and "total" in text


def test_mask_summary_lists_batch_norm_as_float_parameters():
    model = resnet()
    rows = export.mask_summary(model)
    bn = [r for r in rows if r["type"] == "BatchNormalization"]
    assert bn and all(r["kept"] is None and r["bits"] == 32 * r["parameters"] for r in bn)
    kernels = sum(int(np.prod(layer.kernel.shape)) for layer in masked_layers(model))
    norms = sum(int(np.prod(w.shape)) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
                for w in layer.weights)
    assert rows[-1]["parameters"] == kernels + norms  # counted from the model's variables


def test_accuracy_disagreements_counts_test_images():
    forms = {"trained": 0.7000, "compact": 0.7000, "shrunk": 0.6997}  # of 10,000: 7,000, 7,000 and 6,997 correct
    assert export.accuracy_disagreements(forms, 10_000, recorded=0.7002) == ["shrunk: 6997 correct images, the "
                                                                              "trained model 7000 (tolerance 2)"]
    assert export.accuracy_disagreements(forms, 10_000, recorded=0.7002, tolerance=3) == []
    assert export.accuracy_disagreements(forms, 10_000, recorded=0.6996, tolerance=3) == [
        "trained: 7000 correct images of 10000, recorded 6996 (tolerance 3)"]
    assert export.accuracy_disagreements({"trained": 0.5}, 64, recorded=None, masks_identical=False) == [
        "the effective masks changed in the compact reload"]
    assert export.accuracy_disagreements({"trained": 0.5}, 64, recorded=None) == []


# ------------------------------------------------------------------------------------------------ CLI
def test_export_cli_on_a_run_directory(tmp_path, capsys):
    raw = {"name": "t", "data": {"dataset": "mnist", "source": "synthetic", "synthetic_train": 32,
                                 "synthetic_test": 64}, "model": {"architecture": "fcn"}}
    cfg = config_lib.parse_config(raw)
    run_dir = tmp_path / "t-00000000" / "run_000"
    run_dir.mkdir(parents=True)
    model = trained_looking(build_run_model(cfg, 11, 0), active=0.05)
    save_weights_npz(model, run_dir / "masks.npz")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config_lib.to_dict(cfg), "seed": 11, "run": 0}))
    # the recorded accuracy is the trained model's on the 64 synthetic test images: the first call reads it off
    (run_dir / "metrics.json").write_text(json.dumps({"status": "ok", "test_accuracy": 0.0}))
    export.main([str(run_dir), "--check-accuracy", "--no-summary", "--batch-size", "32", "--tolerance", "64"])
    correct = round(64 * float(re.search(r"trained \(run dir\)\s+([\d.]+) %", capsys.readouterr().out).group(1)) / 100)
    for recorded, expected in ((correct, 0), (correct + 2, 0), (correct + 3, 1)):  # the default tolerance: 2 images
        (run_dir / "metrics.json").write_text(json.dumps({"status": "ok", "test_accuracy": recorded / 64}))
        assert export.main([str(run_dir), "--check-accuracy", "--no-summary", "--batch-size", "32"]) == expected
    assert f"{correct} correct images of 64, recorded {correct + 3} (tolerance 2)" in capsys.readouterr().err
    (run_dir / "metrics.json").write_text(json.dumps({"status": "ok", "test_accuracy": correct / 64}))
    assert export.main([str(run_dir), "--check-accuracy", "--no-summary", "--batch-size", "32"]) == 0
    text = capsys.readouterr().out
    assert "compact reloaded" in text and "effective masks identical after the compact reload: True" in text
    assert "effective architecture: 784-300-100-10 → " in text
    shrunk_line = [line for line in text.splitlines() if "shrunk .keras reloaded" in line][0]
    stripped_line = [line for line in text.splitlines() if "stripped .keras reloaded" in line][0]
    assert shrunk_line.split("%")[0].split()[-1] == stripped_line.split("%")[0].split()[-1]  # same accuracy
    assert float(text.split("max |shrunk - stripped| over the test set = ")[1].split()[0]) < 1e-5
    assert export.main([str(run_dir), "--no-summary"]) == 0  # no data: random inputs
    text = capsys.readouterr().out
    assert float(text.split("max |shrunk - stripped| on 256 random inputs: ")[1].split()[0]) < 1e-5
    assert text.count("effective architecture: ") == 1
    assert export.main([str(run_dir)]) == 0
    assert capsys.readouterr().out.count("effective architecture: ") == 1  # the mask summary's line, only
    for name in ("stripped.keras", "shrunk.keras", "compact.npz", "sizes.json"):
        assert (run_dir / "export" / name).stat().st_size > 0
    meta = compact.read_meta(run_folder.read_npz(run_dir / "export" / "compact.npz"))
    assert {e["kernel"]["code"] for e in meta["masked"].values()} == {"seed"}
    rebuilt = run_folder.load_run_model(run_dir)
    assert_same_masks(model, rebuilt)
    assert export.main([str(tmp_path)]) == 2


def test_run_directory_of_a_resnet_takes_bn_weights_from_compact_npz(tmp_path):
    raw = {"name": "r", "data": {"dataset": "cifar10", "source": "synthetic"},
           "model": {"architecture": "resnet20", "threshold_fraction": 0.75}}
    cfg = config_lib.parse_config(raw)
    run_dir = tmp_path / "run_000"
    run_dir.mkdir()
    model = trained_looking(build_run_model(cfg, 3, 0))
    save_weights_npz(model, run_dir / "masks.npz")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**config_lib.to_dict(cfg), "seed": 3, "run": 0}))
    x = inputs_for(model, n=4)
    with pytest.raises(ValueError, match="compact.npz"):  # masks.npz alone lacks the BN weights
        run_folder.load_run_model(run_dir)
    run_folder.save_compact(model, run_dir / "compact.npz")
    assert_same_predictions(model, run_folder.load_run_model(run_dir), x)


def test_a_compact_artifact_of_a_trained_model_loads_uncompiled(tmp_path):
    """A model saved after training carries its compile config; the artifact leaves it out, and artifacts that
    still carry one load uncompiled, so the stripped .keras holds one float per weight and no optimizer slots."""
    model = trained_looking(fcn())
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "categorical_crossentropy")
    x = inputs_for(model)
    model.fit(x, np.eye(10, dtype="float32")[np.arange(len(x)) % 10], epochs=1, verbose=0)
    run_folder.save_compact(model, tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    assert "compile_config" not in json.loads(arrays["model_json"].tobytes())
    # an artifact written before the compile config was left out
    old = json.loads(arrays["model_json"].tobytes())
    old["compile_config"] = json.loads(model.to_json())["compile_config"]
    assert old["compile_config"] is not None
    arrays["model_json"] = np.frombuffer(json.dumps(old).encode(), np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    for name in ("c.npz", "old.npz"):
        loaded = run_folder.load_compact(tmp_path / name)
        assert not loaded.compiled
        assert_same_predictions(model, loaded, x)
        stripped = shrink.strip(loaded)
        stripped.save(tmp_path / "s.keras")
        weights = keras.models.load_model(tmp_path / "s.keras").weights
        assert sum(int(np.prod(w.shape)) for w in weights) == sum(
            int(np.prod(layer.kernel.shape)) for layer in masked_layers(model))
        assert (tmp_path / "s.keras").stat().st_size < 4 * sum(int(np.prod(w.shape)) for w in weights) + 100_000
