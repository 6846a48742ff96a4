"""Sweeps: every combination into its own directory, resume of a partly finished sweep, the comparison table,
and the top-k mask mode inside whole models."""

import csv
import json

import numpy as np
import pytest
import yaml

import config as config_lib
import experiment_looper as looper
from architectures import build_model
from custom_layers import MaskedLayers, TopKMask, masked_layers

SWEEP = {
    "name": "sw", "runs": 1, "base_seed": 3,
    "data": {"dataset": "mnist", "source": "synthetic", "synthetic_train": 256, "synthetic_test": 128,
             "batch_size": 64},
    "model": {"architecture": "fcn"},
    "training": {"epochs": 1, "verbose": 0},
    "sweep": {"grid": {"model.threshold_fraction": [0.5, 0.8]},
              "zip": {"model.mask_mode": ["signed", "topk"], "model.topk_fraction": [0.5, 0.1]}},
}


def test_sweep_runs_every_combination_and_resumes(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    out = tmp_path / "out"
    assert looper.main([str(path), "--out", str(out), "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert "combinations: 4" in dry and dry.count("parameters: 266200") == 4

    assert looper.main([str(path), "--out", str(out)]) == 0
    dirs = sorted(p for p in (out / "sw").iterdir() if p.is_dir())
    assert len(dirs) == 4
    for d in dirs:
        resolved = yaml.safe_load((d / "config.yaml").read_text())
        label = d.name.rsplit("-", 1)[0]
        assert f"threshold_fraction={resolved['model']['threshold_fraction']}" in label
        assert f"mask_mode={resolved['model']['mask_mode']}" in label
        assert (d / "run_000" / "metrics.json").is_file()
    # top-k keeps its fraction whatever the threshold; signed starts near 1 - p.
    for d in dirs:
        resolved = yaml.safe_load((d / "config.yaml").read_text())
        remaining = json.loads((d / "run_000" / "metrics.json").read_text())["remaining_percent"]
        if resolved["model"]["mask_mode"] == "topk":
            assert remaining == pytest.approx(100 * resolved["model"]["topk_fraction"], abs=0.01)
        else:
            assert remaining < 100 * (1 - resolved["model"]["threshold_fraction"]) + 1
    table = (out / "sw-sweep.md").read_text()
    assert table.count("\n") == 2 + 4
    rows = list(csv.DictReader((out / "sw-sweep.csv").read_text().splitlines()))
    assert len(rows) == 4 and {r["mask_mode"] for r in rows} == {"signed", "topk"}

    # Resume a partly finished sweep: remove one combination's results; only that one is trained again.
    victim = dirs[2]
    kept = (dirs[0] / "run_000" / "metrics.json").read_text()
    for p in sorted(victim.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    victim.rmdir()
    assert looper.main([str(path), "--out", str(out)]) == 0
    assert (victim / "run_000" / "metrics.json").is_file()
    assert (dirs[0] / "run_000" / "metrics.json").read_text() == kept
    assert "finished before" in (dirs[0] / "looper.log").read_text()


def _summary(name, accs, rems):
    runs = {i: {"status": "ok", "run": i, "seed": i, "test_accuracy": a / 100, "remaining_percent": r,
                "remaining_weights": int(r * 10), "total_weights": 1000, "seconds_per_epoch": 1.0}
            for i, (a, r) in enumerate(zip(accs, rems))}
    return looper.summarize(config_lib.parse_config({"name": name, "runs": len(accs)}), runs)


def test_comparison_table_against_hand_made_results(tmp_path):
    results = [({"model.threshold_fraction": 0.4}, _summary("a", [97.0, 98.0], [4.0, 2.0]), tmp_path / "a"),
               ({"model.threshold_fraction": 0.9}, _summary("b", [90.0, 92.0, 94.0], [1.0, 1.0, 1.0]), tmp_path / "b")]
    table_csv, text = looper.comparison_table(results)
    lines = text.strip().splitlines()
    assert lines[0] == "| threshold_fraction | runs | failed | test accuracy % | remaining weights % |"
    # mean and sample std by hand: (97, 98) -> 97.5 ± 0.71; (4, 2) -> 3.0 ± 1.41; (90, 92, 94) -> 92 ± 2
    assert lines[2] == "| 0.4 | 2 | 0 | 97.50 ± 0.71 | 3.00 ± 1.41 |"
    assert lines[3] == "| 0.9 | 3 | 0 | 92.00 ± 2.00 | 1.00 ± 0.00 |"
    rows = list(csv.DictReader(table_csv.splitlines()))
    assert float(rows[0]["accuracy_mean"]) == pytest.approx(97.5)
    assert float(rows[1]["accuracy_std"]) == pytest.approx(2.0)


@pytest.mark.parametrize("k", [0.05, 0.3])
def test_topk_keeps_exactly_k_per_layer_and_trains(k):
    import keras

    model = build_model("fcn", MaskedLayers(mask_mode=TopKMask(k), seed=1), hidden=(40, 20))
    for layer in masked_layers(model):
        counts = layer.mask_counts()
        assert counts["inverted"] == 0
        assert counts["kept"] == round(k * counts["total"])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 784)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, 128), 10)
    masks = [layer.mask.numpy().copy() for layer in masked_layers(model)]
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss="categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    for layer, before in zip(masked_layers(model), masks):
        assert not np.array_equal(layer.mask.numpy(), before)  # the STE reaches the scores
        assert layer.mask_counts()["kept"] == round(k * int(np.prod(layer.mask.shape)))


def test_topk_supermask_learns():
    """Edge-popup on learnable data: choosing the top half of the scores must lift accuracy well above chance."""
    import keras

    from data_preprocessor import load_dataset

    data = load_dataset("mnist", "synthetic", batch_size=64, synthetic_train=1024, synthetic_test=256, seed=0)
    model = build_model("fcn", MaskedLayers(mask_mode=TopKMask(0.5), seed=0), hidden=(64, 32))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(data.train, epochs=3, steps_per_epoch=data.steps_per_epoch, verbose=0, shuffle=False)
    assert model.evaluate(data.test, verbose=0, return_dict=True)["accuracy"] > 0.5
