"""Figures from results directories.

    python analysis.py RESULTS_DIR [RESULTS_DIR ...] --out FIGDIR [--sample-npz FILE] [--sample-index I]
                       [--sample-label 8] [--data-dir ~/datasets] [--run 0] [--formats png,pdf]

A RESULTS_DIR is one config's directory `<name>-<hash>/` (holding run_000/, run_001/, ... as written by
experiment_looper), a sweep root `<output_dir>/<name>/`, a whole `results/` tree, or a single run_xxx/ directory:
every directory below the given paths that holds run_*/metrics.json is one "config". Unfinished runs
(`run_000.partial/`) and failed runs (metrics status != ok) are ignored.

Figures (each written as FIGDIR/<stem>.png and FIGDIR/<stem>.pdf):

    training_curves   test accuracy and remaining weights per epoch: mean over runs, min-max band, one line per
                      config (baselines, mask_mode none, dashed at 100 %)
    tradeoff          final test accuracy against remaining weights % (log x), mean +- std over runs; baselines
                      drawn as squares
    layer_fractions   per-layer fractions of kept / inverted / hidden weights (stacked bars, mean over runs), one
                      panel per config
    figure1_<config>  the paper's Figure 1 for every FCN Supermask config: the first layer's effective mask
                      (784 x 300) along the 784 input pixels under a flattened sample digit, and a 28 x 28 map of
                      how many weights each input pixel keeps

The numbers that are plotted come from pure functions (`aggregate_histories`, `final_statistics`,
`layer_fractions`, `mean_layer_fractions`, `effective_mask_np`, `pixel_keep_counts`), separate from the
plotting, so they can be tested.

Runs are found and read with run_folder (which owns the layout of a results folder); TensorBoard images during
training are model_trainer.MaskImageCallback's.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

import hparams
import tf_logs

tf_logs.import_tensorflow()  # a command-line tool: TensorFlow's start-up noise filtered (SUPERMASK_TF_LOGS=1)

import keras  # noqa: E402

import compact  # noqa: E402
from custom_layers import mask_mode_from_name  # noqa: E402
from model_trainer import HIDDEN_RGB, INVERTED_RGB, KEPT_RGB  # noqa: E402  (one colour per mask state)
from paper_results import BASELINE_SUFFIX, PAPER_RESULTS, baseline_of, compares_with_paper, paper_figure  # noqa: E402
from run_folder import (  # noqa: E402
    COMPACT,
    CONFIG,
    HISTORY,
    LAYERS,
    MASKS,
    METRICS,
    RunFileError,
    combo_label,
    find_results_dirs,
    read_config_mapping,
    read_json,
    read_npz,
    run_config,
    run_dirs,
    summary_statistics,
)
from run_folder import identity as settings_identity  # noqa: E402

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf")



# --------------------------------------------------------------------------------------------------------------
# Finding and reading results
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ConfigResults:
    """One config's results: its directory, a label (the config's name, or a sweep combination's varying keys),
    the sweep it belongs to (None for a plain config), its config mapping and its (ok) run directories."""

    path: Path
    label: str
    config: dict
    runs: list[Path]
    group: str | None = None

    @property
    def title(self) -> str:
        """'sweep: key=value' for a sweep combination, else the label."""
        return f"{self.group}: {self.label}" if self.group else self.label

    @property
    def model(self) -> dict:
        return self.config.get("model") or {}

    @property
    def mask_mode(self) -> str:
        return str(self.model.get("mask_mode", "signed"))

    @property
    def is_baseline(self) -> bool:
        return self.mask_mode == "none"

    @property
    def architecture(self) -> str:
        return str(self.model.get("architecture", ""))


def _label(path: Path) -> str:
    """'<name>-<hash>' without the 8-hex-digit hash."""
    return re.sub(r"-[0-9a-f]{8}$", "", path.name) or path.name


def _sweep_of(path: Path, config: dict) -> str | None:
    """The sweep a results folder belongs to: <output_dir>/<sweep name>/<key=value,...>-<hash>."""
    name = config.get("name")
    return name if name and path.parent.name == name and "=" in path.name else None


def label_by_settings(results: list[ConfigResults]) -> None:
    """Results of one title whose configs differ add those settings to their labels, in place: two folders of
    `conv4_found` at two weight decays become 'conv4_found (weight_decay=0.000275)' and '... 0.000265)'. The
    settings compared are those of run_folder.identity (what makes results differ); a config that does not parse
    leaves its group as it was."""
    groups: dict[str, list[ConfigResults]] = {}
    for r in results:
        groups.setdefault(r.title, []).append(r)
    for same in (g for g in groups.values() if len(g) > 1):
        try:
            configs = [run_config(r.config, source=str(r.path / CONFIG), data_source="synthetic")[0]
                       for r in same]  # the mapping load_results read: the folder's config, else its first run's
        except (ValueError, RunFileError) as exc:  # ConfigErrors is a ValueError
            log.info("%s: settings not compared (%s)", same[0].title, exc)
            continue
        settings = [settings_identity(cfg) for cfg in configs]  # a key left out has its default value
        keys = sorted({key for one in settings for key in one})
        differing = [key for key in keys if len({repr(one.get(key, "default")) for one in settings}) > 1]
        if differing:
            for r, one in zip(same, settings):
                r.label = f"{r.label} ({combo_label({key: one.get(key, 'default') for key in differing})})"


def load_results(paths: Iterable[str | os.PathLike]) -> list[ConfigResults]:
    """ConfigResults for every results directory found below `paths` that has at least one ok run. A plain
    config is labelled by its name, a sweep combination by its keys (and grouped under its sweep); duplicates get
    the settings in which they differ added (label_by_settings), else their parent's name (and then the hash)."""
    results = []
    for directory in find_results_dirs(paths):
        runs = run_dirs(directory)
        if not runs:
            log.warning("%s: no finished ok run, skipped", directory)
            continue
        config = read_config_mapping(directory / CONFIG) or read_config_mapping(runs[0] / CONFIG)
        group = _sweep_of(directory, config)
        label = _label(directory) if group else str(config.get("name") or _label(directory))
        results.append(ConfigResults(directory, label, config, runs, group))
    label_by_settings(results)
    renames = (lambda r: f"{r.path.parent.name}/{r.label}", lambda r: f"{r.path.parent.name}/{r.path.name}")
    for attempt in renames:
        counts: dict[str, int] = {}
        for r in results:
            counts[r.title] = counts.get(r.title, 0) + 1
        for r in results:
            if counts[r.title] > 1:
                r.label = attempt(r)
    return results


# --------------------------------------------------------------------------------------------------------------
# Pure computations
# --------------------------------------------------------------------------------------------------------------
def _history(run) -> list[dict]:
    if isinstance(run, (str, os.PathLike)):
        path = Path(run)
        return read_json(path / HISTORY if path.is_dir() else path)
    return list(run)


def aggregate_histories(runs: Sequence, keys: Sequence[str] = ("test_accuracy", "remaining_percent")) -> dict:
    """Per-epoch statistics over runs.

    runs: run directories (their history.json is read) or already loaded histories (lists of epoch dicts).
    Returns {"epoch": int array (1..E), key: {"mean", "std", "min", "max", "n"} arrays of length E} for every key;
    E is the longest history. An epoch that only some runs reached (early stop) is averaged over those runs;
    missing or None values are ignored (nan where no run has a value). std is the population std (ddof 0).
    """
    histories = [_history(r) for r in runs]
    epochs = max((int(rec.get("epoch", i + 1)) for h in histories for i, rec in enumerate(h)), default=0)
    out: dict = {"epoch": np.arange(1, epochs + 1)}
    for key in keys:
        table = np.full((len(histories), epochs), np.nan)
        for row, history in enumerate(histories):
            for i, record in enumerate(history):
                value = record.get(key)
                if value is not None:
                    table[row, int(record.get("epoch", i + 1)) - 1] = float(value)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan epochs
            out[key] = {
                "mean": np.nanmean(table, axis=0) if epochs else np.zeros(0),
                "std": np.nanstd(table, axis=0) if epochs else np.zeros(0),
                "min": np.nanmin(table, axis=0) if epochs else np.zeros(0),
                "max": np.nanmax(table, axis=0) if epochs else np.zeros(0),
                "n": np.sum(np.isfinite(table), axis=0),
            }
    return out


def final_statistics(runs: Sequence) -> dict:
    """run_folder.summary_statistics over runs of the final test accuracy (in %) and remaining weights %.

    runs: run directories (metrics.json is read) or metrics dicts.
    """
    metrics = [read_json(Path(r) / METRICS) if isinstance(r, (str, os.PathLike)) else r for r in runs]
    return {"test_accuracy_percent": summary_statistics(100.0 * float(m["test_accuracy"]) for m in metrics
                                                        if m.get("test_accuracy") is not None),
            "remaining_percent": summary_statistics(m.get("remaining_percent") for m in metrics)}


def layer_fractions(layers_json) -> dict[str, dict[str, float]]:
    """{layer: {"kept", "inverted", "hidden"} as fractions of the layer's weights} from a layers.json mapping
    (or its path), in the file's layer order."""
    if isinstance(layers_json, (str, os.PathLike)):
        layers_json = read_json(layers_json)
    out = {}
    for name, counts in layers_json.items():
        total = float(counts.get("total") or (counts["kept"] + counts["inverted"] + counts["hidden"]))
        out[name] = {k: (float(counts[k]) / total if total else 0.0) for k in ("kept", "inverted", "hidden")}
    return out


def mean_layer_fractions(runs: Sequence) -> dict[str, dict[str, float]]:
    """layer_fractions averaged over runs (run directories with layers.json, or layers.json mappings); a layer
    missing from some run is averaged over the runs that have it."""
    per_run = [layer_fractions(Path(r) / LAYERS if isinstance(r, (str, os.PathLike)) else r) for r in runs]
    names: list[str] = []
    for fractions in per_run:
        names += [n for n in fractions if n not in names]
    out = {}
    for name in names:
        present = [f[name] for f in per_run if name in f]
        out[name] = {k: float(np.mean([p[k] for p in present])) for k in ("kept", "inverted", "hidden")}
    return out


def surviving_units(runs: Sequence) -> dict[str, dict[str, float]]:
    """{layer: {"units", "mean", "min", "max"}}: how many of a layer's output units keep both an incoming and an
    outgoing weight (layers.json "surviving_units", written by the looper from shrink.analyze), over runs (run
    directories or layers.json mappings). Layers without the record (runs made before it existed) are left out."""
    per_run = [read_json(Path(r) / LAYERS) if isinstance(r, (str, os.PathLike)) else r for r in runs]
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(name for layers in per_run for name in layers):
        values = [layers[name]["surviving_units"] for layers in per_run
                  if name in layers and layers[name].get("surviving_units") is not None]
        if values:
            units = next(layers[name]["units"] for layers in per_run if layers.get(name, {}).get("units"))
            out[name] = {"units": float(units), "mean": float(np.mean(values)), "min": float(min(values)),
                         "max": float(max(values))}
    return out


def effective_mask_np(m: np.ndarray, tau: float, mode: str = "signed", topk_fraction: float = 0.5) -> np.ndarray:
    """The effective mask (float32 numpy, values in {-1, 0, +1}) of a saved mask, computed by the mask mode of
    custom_layers, so the formula has one definition:

        signed  sign(m) * 1[|m| > tau]
        binary  1[m > tau]
        topk    1[|m| >= k-th largest |m|], k = max(1, round(topk_fraction * size))
    """
    mask_mode = mask_mode_from_name(mode, topk_fraction)
    hard = mask_mode.hard(keras.ops.convert_to_tensor(np.asarray(m, dtype=np.float32)), np.float32(tau))
    return np.asarray(keras.ops.convert_to_numpy(hard), dtype=np.float32)


def pixel_keep_counts(mask: np.ndarray, image_shape: tuple[int, int] = (28, 28)) -> np.ndarray:
    """How many weights each input pixel keeps: the count of non-zero entries in every input row of a first-layer
    mask (n_in x n_out, n_in = 784), reshaped to the image (28 x 28). Integer array."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] != int(np.prod(image_shape)):
        raise ValueError(f"expected a ({int(np.prod(image_shape))}, n) first-layer mask, got shape {mask.shape}")
    return np.count_nonzero(mask, axis=1).reshape(image_shape)


def run_masks(run_dir: str | os.PathLike, config: dict | None = None) -> dict[str, np.ndarray]:
    """{layer: effective mask} of a run, recomputed from masks.npz ('<layer>/mask', '<layer>/threshold') with the
    mask mode of the run's config.yaml, in file (= build) order; a run without masks.npz (a ledger entry) gives
    the masks stored in its compact.npz."""
    run_dir = Path(run_dir)
    config = config if config is not None else read_config_mapping(run_dir / CONFIG)
    model = config.get("model") or {}
    mode = str(model.get("mask_mode", "signed"))
    if mode == "none":
        return {}
    if not (run_dir / MASKS).exists() and (run_dir / COMPACT).exists():
        return compact.effective_masks(read_npz(run_dir / COMPACT))
    out = {}
    k = float(model.get("topk_fraction", hparams.MASK_DEFAULTS.topk_fraction))
    with np.load(run_dir / MASKS, allow_pickle=False) as data:
        for key in data.files:
            if not key.endswith("/mask"):
                continue
            layer = key[: -len("/mask")]
            tau = float(data[f"{layer}/threshold"]) if f"{layer}/threshold" in data.files else 0.0
            out[layer] = effective_mask_np(data[key], tau, mode, k)
    return out


def first_layer_mask(run_dir: str | os.PathLike, n_inputs: int = 784) -> tuple[str, np.ndarray]:
    """(name, effective mask) of the first masked layer with `n_inputs` input rows (the FCN's dense_0)."""
    for name, mask in run_masks(run_dir).items():
        if mask.ndim == 2 and mask.shape[0] == n_inputs:
            return name, mask
    raise ValueError(f"{run_dir}: no masked layer with {n_inputs} inputs in masks.npz")


def synthetic_digit() -> np.ndarray:
    """A drawn digit-like "8" (two stacked rings) as a 28 x 28 float image in [0, 1]."""
    yy, xx = np.mgrid[0:28, 0:28].astype(np.float32)
    image = np.zeros((28, 28), np.float32)
    for cy, r in ((9.0, 5.0), (19.0, 6.0)):
        d = np.hypot(yy - cy, (xx - 14.0) * 1.1)
        image = np.maximum(image, np.clip(1.0 - np.abs(d - r) / 1.6, 0.0, 1.0))
    return image


def _pick(x: np.ndarray, y: np.ndarray | None, index: int, label: int | None) -> tuple[np.ndarray, int]:
    if label is None:
        return x[index], index
    if y is None:
        raise ValueError("a sample label was asked for but the data has no y_test")
    matches = np.flatnonzero(np.asarray(y).reshape(len(y), -1).argmax(axis=1) == label if np.ndim(y) > 1
                             else np.asarray(y) == label)
    if matches.size <= index:
        raise ValueError(f"fewer than {index + 1} test images of label {label}")
    return x[matches[index]], int(matches[index])


def sample_digit(sample_npz: str | os.PathLike | None = None, index: int = 0,
                 data_dir: str | os.PathLike | None = None, label: int | None = None) -> tuple[np.ndarray, str]:
    """(28 x 28 image in [0, 1], where it came from): x_test[index] of `sample_npz`; else the test image `index` of
    MNIST from data_preprocessor's local source in data_dir; else (neither given) `synthetic_digit()`. With
    `label` (e.g. 8, the paper's sample), `index` counts only the test images of that label (needs y_test).
    ValueError when the options cannot be honoured (sample_problem)."""
    if problem := sample_problem(data_dir, sample_npz, label):
        raise ValueError(problem)
    if sample_npz is not None:
        with np.load(sample_npz, allow_pickle=False) as data:
            y = data["y_test"] if "y_test" in data.files else None
            image, i = _pick(data["x_test"], y, index, label)
        image = np.asarray(image, np.float32)
        source = f"{Path(sample_npz).name} x_test[{i}]"
    else:
        if data_dir is not None:
            from data_preprocessor import load_arrays

            _, _, x_test, y_test = load_arrays("mnist", "local", str(Path(data_dir).expanduser()))
            image, i = _pick(x_test, y_test, index, label)
            image = np.asarray(image, np.float32)
            source = f"MNIST test image {i}"
        else:
            return synthetic_digit(), "synthetic digit"
    image = image.reshape(28, 28)
    lo, hi = float(image.min()), float(image.max())
    return ((image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)), source


# --------------------------------------------------------------------------------------------------------------
# Plotting
# --------------------------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, stem: str, formats: Sequence[str] = FORMATS) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=150, bbox_inches="tight")
        paths.append(path)
    _pyplot().close(fig)
    return paths


def _colors(n: int):
    cmap = _pyplot().get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _plain_log_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: f"{value:g}")


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9=,._-]+", "_", text)[:100]


def paper_references(results: Sequence[ConfigResults]) -> list[dict]:
    """The paper's final values that the per-epoch curves of `results` compare with: for every paper row of the
    configs (paper_rows_of), one {row, metric, value, interval, baseline} per figure it has, metric being
    "test_accuracy" (%) or "remaining_percent" (a baseline row has only its accuracy)."""
    references = []
    for row in paper_rows_of(results):
        paper = PAPER_RESULTS[row]
        baseline = paper.remaining_percent is None
        references.append({"row": row, "metric": "test_accuracy", "value": paper.accuracy,
                           "interval": paper.accuracy_interval, "baseline": baseline})
        if not baseline:
            references.append({"row": row, "metric": "remaining_percent", "value": paper.remaining_percent,
                               "interval": paper.remaining_interval, "baseline": baseline})
    return references


def plot_training_curves(results: Sequence[ConfigResults], out_dir: Path, formats=FORMATS) -> list[Path]:
    """Test accuracy (%) and remaining weights (%, log scale) per epoch: mean line and min-max band per config,
    and the paper's final values (paper_references) as dotted black lines (baselines: grey) with their interval
    shaded."""
    plt = _pyplot()
    fig, (ax_acc, ax_rem) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r, color in zip(results, _colors(len(results))):
        agg = aggregate_histories(r.runs)
        epochs = agg["epoch"]
        if epochs.size == 0:
            continue
        style = "--" if r.is_baseline else "-"
        label = f"{r.title} (n={len(r.runs)})"
        for ax, key, scale in ((ax_acc, "test_accuracy", 100.0), (ax_rem, "remaining_percent", 1.0)):
            stats = agg[key]
            ax.plot(epochs, scale * stats["mean"], style, color=color, label=label, lw=1.5)
            ax.fill_between(epochs, scale * stats["min"], scale * stats["max"], color=color, alpha=0.2, lw=0)
    axes = {"test_accuracy": ax_acc, "remaining_percent": ax_rem}
    paper_remaining = []
    for ref in paper_references(results):
        color = "0.5" if ref["baseline"] else "k"
        what = "baseline" if ref["baseline"] else "Supermask"
        model = PAPER_RESULTS[ref["row"]].model.removesuffix(" baseline")
        label = f"paper {model} {what}: {paper_figure(ref['value'], ref['interval'])}"
        if ref["interval"]:
            axes[ref["metric"]].axhspan(*ref["interval"], color=color, alpha=0.12, lw=0)
        line = axes[ref["metric"]].axhline(ref["value"], color=color, ls=":", lw=1.2, label=label)
        if ref["metric"] == "remaining_percent":
            paper_remaining.append(line)
    ax_acc.set(xlabel="epoch", ylabel="test accuracy (%)", title="Test accuracy (mean, min-max over runs)")
    ax_rem.set(xlabel="epoch", ylabel="remaining weights (%)", yscale="log",
               title="Remaining weights (mean, min-max over runs)")
    ax_rem.yaxis.set_major_formatter(_plain_log_formatter())
    for ax in (ax_acc, ax_rem):
        ax.grid(True, which="both", alpha=0.3)
    ax_acc.legend(fontsize=8, loc="lower right")
    if paper_remaining:  # the configs are named in the accuracy panel's legend already
        ax_rem.legend(handles=paper_remaining, fontsize=8, loc="upper right")
    return _save(fig, out_dir, "training_curves", formats)


def paper_rows_of(results: Sequence[ConfigResults]) -> list[str]:
    """The paper rows (paper_results keys) that the configs compare with: their `paper:` key, else their
    architecture's row (a sweep of the FCN compares with the FCN row), Supermask rows first. A run on synthetic
    data compares with none."""
    rows = []
    for r in results:
        if not compares_with_paper((r.config.get("data") or {}).get("source")):
            continue
        row = r.config.get("paper") or (baseline_of(r.architecture) if r.is_baseline else r.architecture)
        if row in PAPER_RESULTS and row not in rows:
            rows.append(row)
    return sorted(rows, key=lambda row: row.endswith(BASELINE_SUFFIX))


def tradeoff_points(results: Sequence[ConfigResults]) -> list[dict]:
    """One point per config: {title, label, group, baseline, accuracy (stats), remaining (stats)}, from the final
    metrics of its runs (run_folder.summary_statistics)."""
    points = []
    for r in results:
        stats = final_statistics(r.runs)
        if stats["test_accuracy_percent"]["mean"] is None:
            continue
        points.append({"title": r.title, "label": r.label, "group": r.group, "baseline": r.is_baseline,
                       "accuracy": stats["test_accuracy_percent"], "remaining": stats["remaining_percent"]})
    return points


def plot_tradeoff(results: Sequence[ConfigResults], out_dir: Path, formats=FORMATS) -> list[Path]:
    """Final test accuracy against remaining weights (log x): each config a point (mean ± std over its runs)
    labelled by what it is, the points of one sweep joined in order of remaining weights, dense baselines as
    horizontal lines with a ± std band, and the paper's points with their intervals as dashed boxes (its
    baselines as dotted lines)."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 6))
    points = tradeoff_points(results)
    masked = [p for p in points if not p["baseline"]]
    colors = dict(zip(dict.fromkeys(p["group"] or p["title"] for p in masked), _colors(len(masked) or 1)))
    for group in {p["group"] for p in masked if p["group"]}:
        members = sorted((p for p in masked if p["group"] == group), key=lambda p: p["remaining"]["mean"])
        ax.plot([p["remaining"]["mean"] for p in members], [p["accuracy"]["mean"] for p in members], "-",
                color=colors[group], lw=1, alpha=0.6)
    for p in masked:
        color = colors[p["group"] or p["title"]]
        ax.errorbar(p["remaining"]["mean"], p["accuracy"]["mean"], xerr=p["remaining"]["std"],
                    yerr=p["accuracy"]["std"], fmt="o", color=color, markersize=6, capsize=3,
                    label=f"{p['title']} (n={p['accuracy']['n']})")
        ax.annotate(p["label"], (p["remaining"]["mean"], p["accuracy"]["mean"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=7, color=color)
    for p in (p for p in points if p["baseline"]):
        mean, std = p["accuracy"]["mean"], p["accuracy"]["std"]
        line = ax.axhline(mean, color="0.35", lw=1.2, label=f"baseline {p['title']} (n={p['accuracy']['n']})")
        ax.axhspan(mean - std, mean + std, color=line.get_color(), alpha=0.12, lw=0)
    for row in paper_rows_of(results):
        paper = PAPER_RESULTS[row]
        if paper.remaining_percent is None:  # a baseline row
            ax.axhline(paper.accuracy, color="k", ls=":", lw=1.2,
                       label=f"paper {paper.model} {paper_figure(paper.accuracy, paper.accuracy_interval)}")
            continue
        point = f"{paper_figure(paper.accuracy)} % at {paper_figure(paper.remaining_percent)} %"
        ax.plot(paper.remaining_percent, paper.accuracy, "k*", markersize=12, label=f"paper {paper.model} {point}")
        if paper.accuracy_interval and paper.remaining_interval:
            (a0, a1), (r0, r1) = paper.accuracy_interval, paper.remaining_interval
            ax.add_patch(Rectangle((r0, a0), r1 - r0, a1 - a0, fill=False, ls="--", lw=1.2, ec="k"))
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(_plain_log_formatter())
    ax.xaxis.set_minor_formatter(_plain_log_formatter())
    ax.set(xlabel="remaining weights (%, log scale)", ylabel="final test accuracy (%)",
           title="Accuracy vs remaining weights (mean ± std over runs; dashed box: the paper's interval)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out_dir, "tradeoff", formats)


def plot_layer_fractions(results: Sequence[ConfigResults], out_dir: Path, formats=FORMATS) -> list[Path]:
    """Stacked bars of the kept / inverted / hidden fraction of every layer (mean over runs), a panel per config,
    and beside each bar the layer's surviving units (% of its units; mean with the min-max range over runs, black
    diamonds): what shrink would keep of it."""
    plt = _pyplot()
    panels = []
    for r in results:
        runs = [run for run in r.runs if (run / LAYERS).is_file()]
        if runs:
            panels.append((r, mean_layer_fractions(runs)))
    if not panels:
        return []
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.8 * nrows), squeeze=False)
    colors = {"kept": np.array(KEPT_RGB) / 255, "inverted": np.array(INVERTED_RGB) / 255, "hidden": "0.85"}
    for ax, (r, fractions) in zip(axes.flat, panels):
        names = list(fractions)
        units = surviving_units([run for run in r.runs if (run / LAYERS).is_file()])
        x = np.arange(len(names))
        bottom = np.zeros(len(names))
        for state in ("kept", "inverted", "hidden"):
            values = np.array([fractions[n][state] for n in names])
            ax.bar(x, 100 * values, bottom=100 * bottom, color=colors[state], label=state, edgecolor="none")
            bottom += values
            if state == "inverted":  # the remaining % of every layer, readable even when the bar is tiny
                for xi, top in zip(x, bottom):
                    ax.text(xi, min(100 * top + 1.5, 92), f"{100 * top:.3g}%", ha="center", va="bottom",
                            fontsize=6 if len(names) > 12 else 8, rotation=90 if len(names) > 12 else 0)
        alive = [n for n in names if n in units]
        if alive:
            xs = np.array([names.index(n) for n in alive]) + 0.3
            mean = np.array([100 * units[n]["mean"] / units[n]["units"] for n in alive])
            low = mean - np.array([100 * units[n]["min"] / units[n]["units"] for n in alive])
            high = np.array([100 * units[n]["max"] / units[n]["units"] for n in alive]) - mean
            ax.errorbar(xs, mean, yerr=[low, high], fmt="D", color="k", markersize=4, capsize=2, lw=1,
                        label="surviving units %")
        ax.set_xticks(x, names, rotation=90 if len(names) > 6 else 0, fontsize=7 if len(names) > 12 else 9)
        ax.set(ylabel="% of the layer's weights (units: ◆)", ylim=(0, 100), title=f"{r.title} (n={len(r.runs)})")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=9, frameon=False)
    return _save(fig, out_dir, "layer_fractions", formats)


def plot_figure1(mask: np.ndarray, sample: np.ndarray, out_dir: Path, stem: str = "figure1", *,
                 title: str = "", sample_source: str = "", formats=FORMATS) -> list[Path]:
    """The paper's Figure 1: a flattened sample digit (one line per pixel) above the first-layer effective mask
    (784 x n, drawn along the input pixels), next to the 28 x 28 digit and the 28 x 28 map of kept weights per
    input pixel (pixel_keep_counts)."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    counts = pixel_keep_counts(mask)
    flat = np.asarray(sample, np.float32).reshape(-1)
    fig = plt.figure(figsize=(15, 6.5))
    grid = fig.add_gridspec(2, 3, width_ratios=[4.2, 1, 1], height_ratios=[1, 4], wspace=0.25, hspace=0.08)
    ax_digit = fig.add_subplot(grid[0, 0])
    ax_mask = fig.add_subplot(grid[1, 0], sharex=ax_digit)
    ax_image = fig.add_subplot(grid[0:2, 1])
    ax_counts = fig.add_subplot(grid[0:2, 2])

    # Upper panel: every pixel one vertical line; background (0) yellow, ink dark (viridis reversed).
    ax_digit.imshow(flat[None, :], aspect="auto", cmap="viridis_r", vmin=0, vmax=1, interpolation="nearest",
                    extent=(-0.5, flat.size - 0.5, 0, 1))
    ax_digit.set_yticks([])
    ax_digit.set_title(title or "first-layer effective mask under a flattened sample", fontsize=10)
    ax_digit.tick_params(labelbottom=False)
    # Lower panel: the mask transposed, so the 784 input pixels run along x.
    cmap = ListedColormap([np.array(INVERTED_RGB) / 255, np.array(HIDDEN_RGB) / 255, np.array(KEPT_RGB) / 255])
    ax_mask.imshow(np.asarray(mask).T, aspect="auto", cmap=cmap, vmin=-1.5, vmax=1.5, interpolation="nearest")
    ax_mask.set(xlabel="input pixel (row-major, 0..783)", ylabel="unit of layer 1")
    remaining = 100.0 * np.count_nonzero(mask) / mask.size
    ax_mask.text(0.01, 0.98, f"blue keep, red invert, white hide; {remaining:.2f} % non-zero",
                 transform=ax_mask.transAxes, va="top", fontsize=8, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0})

    ax_image.imshow(np.asarray(sample).reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
    ax_image.set_title(sample_source or "sample", fontsize=9)
    ax_image.axis("off")
    im = ax_counts.imshow(counts, cmap="magma")
    ax_counts.set_title(f"weights kept per input pixel (of {mask.shape[1]})", fontsize=9)
    ax_counts.axis("off")
    fig.colorbar(im, ax=ax_counts, fraction=0.046, pad=0.04)
    return _save(fig, out_dir, stem, formats)


def fcn_figure1(r: ConfigResults, out_dir: Path, sample: np.ndarray, sample_source: str, *, run_index: int = 0,
                formats=FORMATS) -> list[Path]:
    """Figure 1 for one FCN config from run `run_index` (position in its ok runs)."""
    run = r.runs[min(run_index, len(r.runs) - 1)]
    name, mask = first_layer_mask(run)
    title = f"{r.title} / {run.name}: effective mask of {name} ({mask.shape[0]}x{mask.shape[1]}, mode {r.mask_mode})"
    return plot_figure1(mask, sample, out_dir, f"figure1_{_safe_name(r.title)}", title=title,
                        sample_source=sample_source, formats=formats)


def make_figures(paths: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *, sample_npz=None,
                 sample_index: int = 0, sample_label: int | None = None, data_dir=None, run_index: int = 0,
                 formats=FORMATS) -> list[Path]:
    """Every figure of the module docstring for the results below `paths`; returns the written files."""
    out_dir = Path(out_dir)
    results = load_results(paths)
    if not results:
        raise ValueError(f"no results directory with a finished run below {', '.join(map(str, paths))}")
    log.info("%d config(s): %s", len(results), ", ".join(r.title for r in results))
    written = plot_training_curves(results, out_dir, formats)
    written += plot_tradeoff(results, out_dir, formats)
    written += plot_layer_fractions(results, out_dir, formats)
    fcn = [r for r in results if r.architecture == "fcn" and not r.is_baseline]
    if fcn:
        sample, source = sample_digit(sample_npz, sample_index, data_dir, sample_label)
        for r in fcn:
            try:
                written += fcn_figure1(r, out_dir, sample, source, run_index=run_index, formats=formats)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("%s: no Figure 1 (%s)", r.title, exc)
    return written


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Figures (PNG and PDF) from signed-Supermask results directories.")
    p.add_argument("results", nargs="+", help="results directories (<name>-<hash>/, a sweep root, or results/)")
    p.add_argument("--out", default="figures", help="output directory of the figures (default: figures)")
    p.add_argument("--sample-npz", help="npz with x_test: the Figure 1 sample (default: MNIST from --data-dir, "
                                        "else a drawn digit)")
    p.add_argument("--sample-index", type=int, default=0, help="index of the sample in x_test (default 0)")
    p.add_argument("--sample-label", type=int, help="take the sample among the test images of this digit (the "
                                                    "paper shows an 8); --sample-index counts within them")
    p.add_argument("--data-dir", help="directory of mnist.npz: the Figure 1 sample is a real digit (default: a "
                                      "drawn one)")
    p.add_argument("--run", type=int, default=0, help="which ok run (0 = first) Figure 1 shows")
    p.add_argument("--formats", default="png,pdf", help="comma-separated figure formats (default png,pdf)")
    return p.parse_args(argv)


def sample_problem(data_dir, sample_npz, label) -> str | None:
    """Why Figure 1's sample options cannot be honoured (checked before any figure is drawn), or None: a --data-dir
    must hold mnist.npz, and --sample-label needs real test images (--data-dir or --sample-npz), not the drawn
    digit."""
    if data_dir is not None and sample_npz is None:
        from data_preprocessor import local_archive_problem

        if problem := local_archive_problem("mnist", data_dir):
            return f"--data-dir: {problem}"
    if label is not None and data_dir is None and sample_npz is None:
        return "--sample-label picks among real test images: give --data-dir (a folder with mnist.npz) or --sample-npz"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    problem = sample_problem(args.data_dir, args.sample_npz, args.sample_label)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        written = make_figures(args.results, args.out, sample_npz=args.sample_npz, sample_index=args.sample_index,
                               sample_label=args.sample_label, data_dir=args.data_dir, run_index=args.run,
                               formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
