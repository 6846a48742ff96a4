"""analysis.py: finding results, the numbers behind the figures (against hand computations), the figure CLI on a
hand-written results tree, and the TensorBoard mask callback."""

import dataclasses
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml

import analysis
import model_trainer
import run_folder
from architectures import build_model
from custom_layers import MaskedLayers, mask_statistics

ACC = {"sig": [[0.5, 0.6, 0.7], [0.7, 0.8, 0.9]], "base": [[0.9, 0.95, 0.97], [0.91, 0.96, 0.98]]}
REM = {"sig": [[50.0, 20.0, 10.0], [40.0, 10.0, 5.0]], "base": [[100.0] * 3, [100.0] * 3]}
LAYERS = {
    "sig": [{"dense_0": {"kept": 10, "inverted": 5, "hidden": 85, "total": 100},
             "output": {"kept": 2, "inverted": 2, "hidden": 6, "total": 10}},
            {"dense_0": {"kept": 20, "inverted": 15, "hidden": 65, "total": 100},
             "output": {"kept": 4, "inverted": 0, "hidden": 6, "total": 10}}],
    "base": [{"dense_0": {"kept": 100, "inverted": 0, "hidden": 0, "total": 100}}] * 2,
}


def first_layer_m():
    """A 784 x 5 real mask with tau 0.5: pixel 0 keeps 1 (+1), pixel 10 keeps 2 (one -1, one +1), pixel 783 has
    |m| == tau (hidden), everything else below tau."""
    m = np.full((784, 5), 0.1, "float32")
    m[0, 0] = 0.9
    m[10, 1] = -0.8
    m[10, 3] = 0.51
    m[10, 2] = 0.3
    m[783, 4] = 0.5
    return m


def write_run(directory: Path, key: str, run: int, status="ok"):
    directory.mkdir(parents=True)
    mode = "none" if key == "base" else "signed"
    cfg = {"name": key, "model": {"architecture": "fcn", "mask_mode": mode, "topk_fraction": 0.5},
           "seed": 7 + run, "run": run}
    (directory / "config.yaml").write_text(yaml.safe_dump(cfg))
    history = [{"epoch": e + 1, "test_accuracy": ACC[key][run][e], "remaining_percent": REM[key][run][e]}
               for e in range(3)]
    (directory / "history.json").write_text(json.dumps(history))
    layers = {name: {**counts, "units": counts["total"] // 10, "surviving_units": counts["kept"] // 2 + run}
              for name, counts in LAYERS[key][run].items()}
    (directory / "layers.json").write_text(json.dumps(layers))
    (directory / "metrics.json").write_text(json.dumps(
        {"status": status, "test_accuracy": ACC[key][run][-1], "remaining_percent": REM[key][run][-1]}))
    arrays = {"dense_0/kernel": np.ones((784, 5), "float32")}
    if mode != "none":
        arrays.update({"dense_0/mask": first_layer_m(), "dense_0/threshold": np.float32(0.5),
                       "output/kernel": np.ones((5, 3), "float32"),
                       "output/mask": np.array([[1, -1, 0]] * 5, "float32"), "output/threshold": np.float32(0.5)})
    np.savez_compressed(directory / "masks.npz", **arrays)


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results" / "sweep"
    for key, name in (("sig", "mode=signed-0123abcd"), ("base", "mode=none-89abcdef")):
        config_dir = root / name
        for run in range(2):
            write_run(config_dir / run_folder.run_name(run), key, run)
        (config_dir / "config.yaml").write_text(yaml.safe_dump({"name": "sweep", "model": {
            "architecture": "fcn", "mask_mode": "none" if key == "base" else "signed"}}))
    write_run(root / "mode=signed-0123abcd" / "run_002", "sig", 0, status="failed")  # ignored
    (root / "mode=signed-0123abcd" / "run_003.partial").mkdir()  # ignored
    return tmp_path / "results"


# ------------------------------------------------------------------------------------------------ finding
def test_find_results_dirs_and_runs(results):
    sweep = results / "sweep"
    expected = [(sweep / "mode=none-89abcdef").resolve(), (sweep / "mode=signed-0123abcd").resolve()]
    assert analysis.find_results_dirs([results]) == expected
    assert analysis.find_results_dirs([sweep / "mode=none-89abcdef" / "run_001"]) == expected[:1]
    assert [p.name for p in analysis.run_dirs(expected[1])] == ["run_000", "run_001"]
    assert [p.name for p in analysis.run_dirs(expected[1], ok_only=False)] == ["run_000", "run_001", "run_002"]
    loaded = analysis.load_results([results])
    assert [(r.label, r.group, r.is_baseline, len(r.runs)) for r in loaded] == [
        ("mode=none", "sweep", True, 2), ("mode=signed", "sweep", False, 2)]
    assert loaded[1].title == "sweep: mode=signed"


# ------------------------------------------------------------------------------------------------ numbers
def test_aggregate_histories_equals_hand_computation(results):
    runs = analysis.run_dirs(results / "sweep" / "mode=signed-0123abcd")
    agg = analysis.aggregate_histories(runs)
    np.testing.assert_array_equal(agg["epoch"], [1, 2, 3])
    np.testing.assert_allclose(agg["test_accuracy"]["mean"], [0.6, 0.7, 0.8])
    np.testing.assert_allclose(agg["test_accuracy"]["min"], [0.5, 0.6, 0.7])
    np.testing.assert_allclose(agg["test_accuracy"]["max"], [0.7, 0.8, 0.9])
    np.testing.assert_allclose(agg["test_accuracy"]["std"], [0.1, 0.1, 0.1])
    np.testing.assert_allclose(agg["remaining_percent"]["mean"], [45.0, 15.0, 7.5])
    np.testing.assert_array_equal(agg["remaining_percent"]["n"], [2, 2, 2])
    # Histories of different lengths (early stop) and a missing value.
    short = [{"epoch": 1, "test_accuracy": 0.2}, {"epoch": 2, "test_accuracy": None}]
    long = [{"epoch": e, "test_accuracy": 0.1 * e} for e in (1, 2, 3)]
    agg = analysis.aggregate_histories([short, long], keys=("test_accuracy",))
    np.testing.assert_allclose(agg["test_accuracy"]["mean"], [0.15, 0.2, 0.3])
    np.testing.assert_array_equal(agg["test_accuracy"]["n"], [2, 1, 1])


def test_final_statistics_and_layer_fractions(results):
    runs = analysis.run_dirs(results / "sweep" / "mode=signed-0123abcd")
    stats = analysis.final_statistics(runs)
    assert stats["test_accuracy_percent"]["mean"] == pytest.approx(80.0)
    assert stats["test_accuracy_percent"]["std"] == pytest.approx(np.std([70.0, 90.0], ddof=1))
    assert stats["remaining_percent"]["mean"] == pytest.approx(7.5)
    fractions = analysis.layer_fractions(runs[0] / "layers.json")
    assert list(fractions) == ["dense_0", "output"]
    assert fractions["dense_0"] == pytest.approx({"kept": 0.10, "inverted": 0.05, "hidden": 0.85})
    assert fractions["output"] == pytest.approx({"kept": 0.2, "inverted": 0.2, "hidden": 0.6})
    mean = analysis.mean_layer_fractions(runs)
    assert mean["dense_0"] == pytest.approx({"kept": 0.15, "inverted": 0.10, "hidden": 0.75})
    assert mean["output"] == pytest.approx({"kept": 0.3, "inverted": 0.1, "hidden": 0.6})


def test_tradeoff_points_surviving_units_and_paper_rows(results):
    loaded = analysis.load_results([results])
    points = analysis.tradeoff_points(loaded)
    assert [(p["title"], p["baseline"]) for p in points] == [("sweep: mode=none", True), ("sweep: mode=signed", False)]
    assert points[1]["accuracy"]["mean"] == pytest.approx(80.0) and points[1]["remaining"]["mean"] == 7.5
    assert analysis.paper_rows_of(loaded) == ["fcn", "fcn_baseline"]  # the architecture's rows
    runs = analysis.run_dirs(results / "sweep" / "mode=signed-0123abcd")
    units = analysis.surviving_units(runs)
    # dense_0: 100 weights -> "units" 10; surviving kept // 2 + run: run 0: 10 // 2 = 5, run 1: 20 // 2 + 1 = 11
    assert units["dense_0"] == {"units": 10.0, "mean": 8.0, "min": 5.0, "max": 11.0}
    assert analysis.surviving_units([{"dense_0": {"kept": 1, "inverted": 0, "hidden": 0, "total": 1}}]) == {}


def test_tradeoff_legend_prints_the_papers_figures_as_the_table_does(results, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(analysis, "_save", lambda fig, *args, **kwargs: figures.append(fig) or [])
    analysis.plot_tradeoff(analysis.load_results([results]), tmp_path)
    texts = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert "paper FCN 97.48 % at 3.77 %" in texts and "paper FCN baseline 97.42 [97.4, 97.5]" in texts


def test_first_layer_mask_and_pixel_keep_counts(results):
    run = results / "sweep" / "mode=signed-0123abcd" / "run_000"
    name, mask = analysis.first_layer_mask(run)
    assert name == "dense_0" and mask.shape == (784, 5)
    assert mask[0, 0] == 1 and mask[10, 1] == -1 and mask[10, 3] == 1 and mask[10, 2] == 0 and mask[783, 4] == 0
    assert np.count_nonzero(mask) == 3
    counts = analysis.pixel_keep_counts(mask)
    expected = np.zeros((28, 28), int)
    expected[0, 0], expected[0, 10] = 1, 2
    np.testing.assert_array_equal(counts, expected)
    with pytest.raises(ValueError):
        analysis.pixel_keep_counts(np.zeros((100, 3)))
    masks = analysis.run_masks(run)
    np.testing.assert_array_equal(masks["output"], [[1, -1, 0]] * 5)


def test_effective_mask_np_against_the_formulas():
    """The saved-mask reader gives each mode's formula, written out here in numpy (no tie: normal entries)."""
    m = np.random.default_rng(0).normal(size=(30, 20)).astype("float32")
    np.testing.assert_array_equal(analysis.effective_mask_np(m, 0.7, "signed"), np.sign(m) * (np.abs(m) > 0.7))
    np.testing.assert_array_equal(analysis.effective_mask_np(m, 0.7, "binary"), (m > 0.7).astype("float32"))
    top = analysis.effective_mask_np(m, 0.0, "topk", 0.3)  # k = 0.3 * 600 = 180 largest |m|
    np.testing.assert_array_equal(top, np.abs(m) >= np.sort(np.abs(m), axis=None)[-180])
    assert top.sum() == 180 and set(np.unique(analysis.effective_mask_np(m, 0.7, "signed"))) == {-1.0, 0.0, 1.0}


def test_mask_image_colours_and_conv_reshape():
    mask = np.zeros((3, 3, 2, 4), "float32")
    mask[0, 0, 0, 0], mask[2, 2, 1, 3] = 1, -1
    assert model_trainer.mask_to_2d(mask).shape == (18, 4)
    image = model_trainer.mask_image(mask)
    assert image.shape == (18, 4, 3) and image.dtype == np.uint8
    assert tuple(image[0, 0]) == model_trainer.KEPT_RGB and tuple(image[17, 3]) == model_trainer.INVERTED_RGB
    assert tuple(image[5, 1]) == model_trainer.HIDDEN_RGB


def test_sample_digit_sources(tmp_path):
    x = np.zeros((3, 28, 28), np.uint8)
    x[1, 5:20, 10:14] = 255
    np.savez(tmp_path / "s.npz", x_test=x, y_test=np.array([3, 8, 8]))
    image, source = analysis.sample_digit(tmp_path / "s.npz", 1)
    assert image.shape == (28, 28) and image.max() == 1.0 and image[0, 0] == 0.0 and "x_test[1]" in source
    _, source = analysis.sample_digit(tmp_path / "s.npz", 1, label=8)
    assert "x_test[2]" in source
    image, source = analysis.sample_digit()
    assert source == "synthetic digit" and image.shape == (28, 28) and 0 < image.mean() < 0.5
    with pytest.raises(ValueError, match="nowhere does not exist; it must hold mnist.npz"):  # no silent fallback
        analysis.sample_digit(data_dir=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ figures
def test_cli_writes_every_figure_as_png_and_pdf(results, tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 255, size=(2, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "sample.npz", x_test=x)
    out = tmp_path / "figures"
    assert analysis.main([str(results), "--out", str(out), "--sample-npz", str(tmp_path / "sample.npz")]) == 0
    for stem in ("training_curves", "tradeoff", "layer_fractions", "figure1_sweep_mode=signed"):
        png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000, stem
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000, stem
    assert not list(out.glob("figure1_*mode=none*"))  # no Figure 1 for a baseline
    assert str(out / "tradeoff.png") in capsys.readouterr().out
    assert analysis.main([str(tmp_path / "empty_dir_that_is_missing"), "--out", str(out)]) == 2


def test_figure_1_options_it_cannot_honour_are_refused_before_drawing(tmp_path, capsys):
    """A --data-dir without mnist.npz, or --sample-label without real test images, fell back to the drawn digit
    in silence; now each stops at once (exit 2) with one line."""
    out = tmp_path / "figures"
    (tmp_path / "data").mkdir()
    assert analysis.main([str(tmp_path), "--out", str(out), "--data-dir", str(tmp_path / "data")]) == 2
    assert f"--data-dir: {tmp_path / 'data'} holds no mnist.npz" in capsys.readouterr().err
    assert analysis.main([str(tmp_path), "--out", str(out), "--sample-label", "8"]) == 2
    assert "--sample-label picks among real test images" in capsys.readouterr().err
    assert not out.exists()
    assert analysis.sample_problem(None, "sample.npz", 8) is None and analysis.sample_problem(None, None, None) is None


# ------------------------------------------------------------------------------------ TensorBoard (model_trainer)
def test_mask_image_callback_writes_events_during_fit(tmp_path):
    model = build_model("fcn", MaskedLayers(seed=0), hidden=(16, 8))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 784)).astype("float32")
    y = np.eye(10, dtype="float32")[rng.integers(0, 10, 32)]
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[model_trainer.MaskImageCallback(tmp_path / "tb")])
    events = list((tmp_path / "tb").rglob("events.out.tfevents*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    values = {value.tag: (value, event.step) for event in tf.compat.v1.train.summary_iterator(str(events[0]))
              for value in event.summary.value}
    assert {"remaining/global", "remaining/dense_0", "inverted/output", "masks/dense_0", "masks/output"} <= set(values)
    scalar, step = values["remaining/global"]
    assert step == 0 and scalar.metadata.plugin_data.plugin_name == "scalars"
    assert float(tf.make_ndarray(scalar.tensor)) == pytest.approx(mask_statistics(model)["remaining_percent"])
    image, _ = values["masks/dense_0"]
    assert image.metadata.plugin_data.plugin_name == "images"
    width, height, png = tf.make_ndarray(image.tensor)
    assert (int(width), int(height)) == (16, 784)
    expected = model_trainer.mask_image(keras.ops.convert_to_numpy(model.get_layer("dense_0").effective_mask()))
    np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), expected)


def test_duplicate_config_names_get_distinct_labels(tmp_path):
    for parent, name in (("a", "fcn-11111111"), ("b", "fcn-22222222"), ("b", "fcn-33333333")):
        write_run(tmp_path / parent / name / "run_000", "sig", 0)
    labels = [r.label for r in analysis.load_results([tmp_path])]
    assert labels == ["a/sig", "b/fcn-22222222", "b/fcn-33333333"]  # by config name, made unique


def test_configs_of_one_name_that_differ_are_labelled_by_their_settings(tmp_path):
    """Two entries of one config at two weight decays (a recipe search in the ledger) read as their settings; the
    settings they share, and those that make no difference (name, runs), stay out of the label."""
    for name, wd, runs in (("conv4_found-11111111", 2.75e-4, 2), ("conv4_found-22222222", 2.65e-4, 1)):
        write_run(tmp_path / name / "run_000", "sig", 0)
        (tmp_path / name / "config.yaml").write_text(yaml.safe_dump({
            "name": "conv4_found", "runs": runs, "data": {"dataset": "cifar10", "source": "local", "data_dir": None},
            "model": {"architecture": "conv4", "threshold_fraction": 0.4},
            "training": {"optimizer": {"weight_decay": wd}}}))
    labels = [r.label for r in analysis.load_results([tmp_path])]
    assert labels == ["conv4_found (weight_decay=0.000275)", "conv4_found (weight_decay=0.000265)"]


def test_training_curves_compare_with_the_papers_final_values(results, tmp_path, monkeypatch):
    loaded = analysis.load_results([results])
    synthetic = [dataclasses.replace(r, config={**r.config, "data": {"source": "synthetic"}}) for r in loaded]
    assert analysis.paper_references(synthetic) == []  # made-up data has no paper number to compare with
    references = [(r["row"], r["metric"], r["value"], r["interval"], r["baseline"])
                  for r in analysis.paper_references(loaded)]
    # the FCN rows of the paper's table: Supermask 97.48 [97.3, 97.7] at 3.77 [3.7, 3.8] %, baseline 97.42 [97.4, 97.5]
    assert references == [("fcn", "test_accuracy", 97.48, (97.3, 97.7), False),
                          ("fcn", "remaining_percent", 3.77, (3.7, 3.8), False),
                          ("fcn_baseline", "test_accuracy", 97.42, (97.4, 97.5), True)]
    baselines_only = [r for r in loaded if r.is_baseline]
    assert [r["metric"] for r in analysis.paper_references(baselines_only)] == ["test_accuracy"]
    figures = []
    monkeypatch.setattr(analysis, "_save", lambda fig, *args, **kwargs: figures.append(fig) or [])
    analysis.plot_training_curves(loaded, tmp_path)
    ax_acc, ax_rem = figures[0].axes

    def dotted(ax):  # the paper's values
        return sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":")

    def shaded(ax):  # the paper's intervals
        return sorted((round(p.get_y(), 6), round(p.get_y() + p.get_height(), 6)) for p in ax.patches)

    assert dotted(ax_acc) == [97.42, 97.48] and dotted(ax_rem) == [3.77]
    assert shaded(ax_acc) == [(97.3, 97.7), (97.4, 97.5)] and shaded(ax_rem) == [(3.7, 3.8)]
    assert [t.get_text() for t in ax_rem.get_legend().get_texts()] == ["paper FCN Supermask: 3.77 [3.7, 3.8]"]
    assert "paper FCN baseline: 97.42 [97.4, 97.5]" in [t.get_text() for t in ax_acc.get_legend().get_texts()]
