"""Run a config's experiments: `python experiment_looper.py configs/conv6.yaml`.

For every sweep combination (or the config itself) and every run i (seed base_seed + i) it builds the model, trains
it and writes, atomically, a run directory:

    <output_dir>/<name>-<hash>/                      (a sweep: <output_dir>/<name>/<combo>-<hash>/)
        config.yaml        the resolved config
        looper.log         the log of every invocation
        summary.json/.md   mean, std, min, max over finished runs, next to the paper's numbers
        run_000/           written to run_000.partial/ and renamed when the run ends
            config.yaml    resolved config with this run's seed
            metrics.json   status (ok | failed), final accuracy, remaining weights, seconds, ...
            history.json   one entry per epoch (train/test loss and accuracy, lr, remaining weights per layer)
            layers.json    final per-layer kept / inverted / hidden counts
            masks.npz      final frozen kernels, masks and thresholds (weight_initializer.load_weights_npz)
            compact.npz    the trained network in ~2 bits per weight, BN included (export.load_compact)

Re-running the same command skips finished runs (resume). A sweep also writes <output_dir>/<name>-sweep.md/.csv.
Config errors are reported before any data is loaded or model built, with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import config as config_lib
from config import ConfigErrors, ExperimentConfig
from paper_results import PAPER_RESULTS

log = logging.getLogger("experiment_looper")

RUN_FILES = ("config.yaml", "metrics.json", "history.json", "layers.json", "masks.npz", "compact.npz")


# --------------------------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------------------------
def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same directory, fsync, then rename onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def _yaml(cfg: ExperimentConfig, **extra) -> str:
    return yaml.safe_dump({**config_lib.to_dict(cfg), **extra}, sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------------------------
# Building a run
# --------------------------------------------------------------------------------------------------------------
def layer_factory(cfg: ExperimentConfig, seed: int):
    """BaselineLayers for mask_mode none, else MaskedLayers with the config's mode and inits."""
    from custom_layers import BaselineLayers, MaskedLayers, mask_mode_from_name
    from weight_initializer import InitSpec

    def spec(value):
        return value if isinstance(value, str) else InitSpec(**config_lib.to_dict(value))

    m = cfg.model
    if m.mask_mode == "none":
        return BaselineLayers(weight_init=spec(m.weight_init or "elu_uniform"), seed=seed)
    return MaskedLayers(mask_mode=mask_mode_from_name(m.mask_mode, m.topk_fraction), weight_init=spec(m.weight_init or "elus"), mask_init=spec(m.mask_init),
                        threshold_fraction=m.threshold_fraction, seed=seed)


def build_run_model(cfg: ExperimentConfig, seed: int, run: int):
    """The config's model for one run, with weights / masks loaded from the init files when configured."""
    from architectures import build_model
    from weight_initializer import load_weights_npz

    m = cfg.model
    kwargs: dict[str, Any] = {"num_classes": cfg.num_classes}
    if m.architecture.startswith("resnet"):
        kwargs.update(width=int(m.width), batch_norm=m.batch_norm, stem_batch_norm=m.stem_batch_norm)
    elif m.architecture.startswith("conv"):
        kwargs.update(width=m.width, dropout=m.dropout)
    else:
        kwargs.update(dropout=m.dropout)
    model = build_model(m.architecture, layer_factory(cfg, seed), **kwargs)
    if m.weights_file:
        load_weights_npz(model, config_lib.resolve_run_file(m.weights_file, run), parts=("kernel",))
    if m.masks_file:
        load_weights_npz(model, config_lib.resolve_run_file(m.masks_file, run), parts=("mask",),
                         threshold="recompute")
    return model


_STRATEGIES: dict[str, Any] = {}


def distribution_strategy(cfg: ExperimentConfig):
    """The tf.distribute strategy of `training.distribute`, created once per process: a second
    MirroredStrategy in one process breaks TensorFlow's collectives (sweeps and resumed runs reuse the first)."""
    import tensorflow as tf

    name = cfg.training.distribute
    if name is None:
        return None
    if name not in _STRATEGIES:
        factories = {"mirrored": tf.distribute.MirroredStrategy, "multi_worker": tf.distribute.MultiWorkerMirroredStrategy}
        _STRATEGIES[name] = factories[name]()
    return _STRATEGIES[name]


@contextlib.contextmanager
def precision_policy(name: str | None):
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name or "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def seed_everything(seed: int, deterministic: bool) -> None:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def train_run(cfg: ExperimentConfig, run: int, seed: int, run_dir: Path, extra_callbacks=()) -> dict:
    """Train one run into `run_dir` (which exists and is empty); returns its metrics."""
    import keras

    import model_trainer
    from data_preprocessor import load_dataset
    from custom_layers import count_parameters
    from export import save_compact
    from weight_initializer import save_weights_npz

    seed_everything(seed, cfg.training.deterministic)
    d = cfg.data
    data = load_dataset(d.dataset, d.source, d.data_dir, batch_size=d.batch_size, augment=d.augment, seed=seed, shuffle=d.shuffle,
                        synthetic_train=d.synthetic_train, synthetic_test=d.synthetic_test)
    t = cfg.training
    with precision_policy(t.mixed_precision):
        strategy = distribution_strategy(cfg)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            model = build_run_model(cfg, seed, run)
            optimizer = model_trainer.make_optimizer(t.optimizer, t.schedule, data.steps_per_epoch, t.epochs)
            model_trainer.compile_model(model, optimizer, label_format=data.label_format, jit_compile=t.jit_compile)
        callbacks = list(extra_callbacks)
        if t.tensorboard:
            callbacks += _tensorboard_callbacks(run_dir)
        result = model_trainer.train(model, data, optimizer=t.optimizer, schedule=t.schedule, epochs=t.epochs,
                                     callbacks=callbacks, verbose=t.verbose, compile=False)
    final = result.final
    metrics = {
        "status": result.status,
        "message": result.message,
        "run": run,
        "seed": seed,
        "epochs_run": len(result.history),
        "test_accuracy": final.get("test_accuracy"),
        "test_loss": final.get("test_loss"),
        "train_accuracy": final.get("accuracy"),
        "remaining_percent": final.get("remaining_percent"),
        "remaining_weights": final.get("remaining_weights"),
        "total_weights": count_parameters(model),
        "best_test_accuracy": max((h["test_accuracy"] for h in result.history if _finite(h.get("test_accuracy"))),
                                  default=None),
        "seconds": result.seconds,
        "seconds_per_epoch": result.seconds / max(1, len(result.history)),
    }
    atomic_write_json(run_dir / "history.json", result.history)
    atomic_write_json(run_dir / "layers.json", final.get("layers", {}))
    save_weights_npz(model, run_dir / "masks.npz")
    save_compact(model, run_dir / "compact.npz")  # ternary masks + BN weights: rebuilds the exact trained model
    atomic_write_json(run_dir / "metrics.json", metrics)
    keras.utils.clear_session(free_memory=True)
    return metrics


def _tensorboard_callbacks(run_dir: Path):
    """Keras' TensorBoard callback (needs the tensorboard package) plus mask images and mask scalars."""
    import importlib.util

    import keras

    from analysis import MaskImageCallback

    has_tensorboard = importlib.util.find_spec("tensorboard") is not None
    callbacks = []
    if has_tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")))
    else:
        log.warning("tensorboard is not installed (pip install tensorboard): epoch metrics are written as "
                    "epoch/<key> by MaskImageCallback instead")
    callbacks.append(MaskImageCallback(run_dir / "tensorboard", log_metrics=not has_tensorboard))
    return callbacks


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --------------------------------------------------------------------------------------------------------------
# Sweeping runs with resume
# --------------------------------------------------------------------------------------------------------------
def run_name(run: int) -> str:
    return f"run_{run:03d}"


def finished_runs(directory: Path) -> dict[int, dict]:
    """Runs whose directory was completed (renamed from .partial) with readable metrics."""
    out = {}
    for path in sorted(Path(directory).glob("run_[0-9][0-9][0-9]")):
        try:
            out[int(path.name[4:])] = json.loads((path / "metrics.json").read_text())
        except (OSError, ValueError):
            log.warning("%s is incomplete; it will be redone", path)
    return out


def run_experiment(cfg: ExperimentConfig, directory: Path, *, train=train_run) -> dict:
    """All runs of one (combination of a) config into `directory`, resuming; returns the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "config.yaml", _yaml(cfg))
    # Runs beyond cfg.runs (left by an earlier, larger --runs) stay on disk but are not this summary's.
    done = {run: m for run, m in finished_runs(directory).items() if run < cfg.runs}
    for run, seed in enumerate(cfg.seeds()):
        final_dir = directory / run_name(run)
        if run in done:
            log.info("%s: finished before (%s), skipped", final_dir, done[run]["status"])
            continue
        if final_dir.exists():  # a finished-looking directory without valid metrics
            shutil.rmtree(final_dir)
        partial = directory / f"{run_name(run)}.partial"
        if partial.exists():
            log.info("%s: an interrupted run is redone", final_dir)
            shutil.rmtree(partial)
        partial.mkdir()
        atomic_write_text(partial / "config.yaml", _yaml(cfg, seed=seed, run=run))
        log.info("%s: run %d/%d, seed %d", directory.name, run + 1, cfg.runs, seed)
        metrics = train(cfg, run, seed, partial)
        os.replace(partial, final_dir)  # the run appears whole or not at all
        done[run] = metrics
        if metrics["status"] != "ok":
            log.error("run %d failed: %s", run, metrics.get("message"))
        else:
            log.info("run %d: test accuracy %.2f %%, remaining %.2f %%", run, 100 * metrics["test_accuracy"],
                     metrics["remaining_percent"])
        write_summary(directory, summarize(cfg, done))
    summary = summarize(cfg, done)
    write_summary(directory, summary)
    return summary


# --------------------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarize(cfg: ExperimentConfig, runs: dict[int, dict]) -> dict:
    """Mean, std, min, max over the finished, successful runs; failed runs are counted apart."""
    ok = [runs[i] for i in sorted(runs) if runs[i]["status"] == "ok"]
    failed = [runs[i] for i in sorted(runs) if runs[i]["status"] != "ok"]
    paper = PAPER_RESULTS.get(cfg.paper) if cfg.paper else None
    return {
        "name": cfg.name,
        "config_hash": config_lib.config_hash(cfg),
        "runs_planned": cfg.runs,
        "runs_finished": len(ok),
        "runs_failed": len(failed),
        "failed": [{"run": r["run"], "seed": r["seed"], "message": r.get("message", "")} for r in failed],
        "test_accuracy_percent": _stats([100.0 * r["test_accuracy"] for r in ok]),
        "remaining_percent": _stats([r["remaining_percent"] for r in ok]),
        "remaining_weights": _stats([float(r["remaining_weights"]) for r in ok]),
        "total_weights": ok[0]["total_weights"] if ok else None,
        "seconds_per_epoch": _stats([r["seconds_per_epoch"] for r in ok]),
        "paper": None if paper is None else {
            "row": cfg.paper, "test_accuracy_percent": paper.accuracy, "accuracy_interval": paper.accuracy_interval,
            "remaining_percent": paper.remaining_percent, "remaining_interval": paper.remaining_interval,
        },
    }


def _fmt(stats: dict, digits: int = 2) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} [{stats['min']:.{digits}f}, " \
           f"{stats['max']:.{digits}f}]"


def summary_markdown(summary: dict) -> str:
    acc, rem, count = summary["test_accuracy_percent"], summary["remaining_percent"], summary["remaining_weights"]
    lines = [
        f"# {summary['name']} ({summary['config_hash']})", "",
        f"runs finished: {summary['runs_finished']} of {summary['runs_planned']}, failed: {summary['runs_failed']}",
        "", "| metric | measured mean ± std [min, max] | paper |", "|---|---|---|",
    ]
    paper = summary.get("paper") or {}

    def paper_cell(value, interval):
        if value is None:
            return "–"
        return f"{value}" + (f" [{interval[0]}, {interval[1]}]" if interval else "")

    lines.append(f"| test accuracy % | {_fmt(acc)} | "
                 f"{paper_cell(paper.get('test_accuracy_percent'), paper.get('accuracy_interval'))} |")
    lines.append(f"| remaining weights % | {_fmt(rem)} | "
                 f"{paper_cell(paper.get('remaining_percent'), paper.get('remaining_interval'))} |")
    lines.append(f"| remaining weights (count) | {_fmt(count, 0)} of {summary['total_weights']} | – |")
    lines.append(f"| seconds per epoch | {_fmt(summary['seconds_per_epoch'])} | – |")
    for failure in summary["failed"]:
        lines.append(f"\nrun {failure['run']} (seed {failure['seed']}) failed: {failure['message']}")
    return "\n".join(lines) + "\n"


def write_summary(directory: Path, summary: dict) -> None:
    atomic_write_json(directory / "summary.json", summary)
    atomic_write_text(directory / "summary.md", summary_markdown(summary))


def comparison_rows(results: list[tuple[dict, dict]]) -> list[dict]:
    """One row per sweep combination: its keys, then mean ± std accuracy and remaining weights."""
    rows = []
    for combo, summary in results:
        acc, rem = summary["test_accuracy_percent"], summary["remaining_percent"]
        rows.append({**{config_lib.short_keys(combo)[k]: v for k, v in combo.items()},
                     "runs": summary["runs_finished"], "failed": summary["runs_failed"],
                     "accuracy_mean": acc["mean"], "accuracy_std": acc["std"],
                     "remaining_mean": rem["mean"], "remaining_std": rem["std"],
                     "directory": summary.get("directory", "")})
    return rows


def write_comparison(path_stem: Path, results: list[tuple[dict, dict]]) -> str:
    rows = comparison_rows(results)
    if not rows:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path_stem.with_suffix(".csv"), buffer.getvalue())
    keys = [k for k in rows[0] if k not in ("runs", "failed", "accuracy_mean", "accuracy_std", "remaining_mean",
                                            "remaining_std", "directory")]
    lines = ["| " + " | ".join(keys) + " | runs | failed | test accuracy % | remaining weights % |",
             "|" + "---|" * (len(keys) + 4)]
    for row in rows:
        acc = "–" if row["accuracy_mean"] is None else f"{row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f}"
        rem = "–" if row["remaining_mean"] is None else f"{row['remaining_mean']:.2f} ± {row['remaining_std']:.2f}"
        lines.append("| " + " | ".join(str(row[k]) for k in keys) + f" | {row['runs']} | {row['failed']} | {acc} | "
                     f"{rem} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(path_stem.with_suffix(".md"), text)
    return text


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Run the experiments of a signed-Supermask config.")
    p.add_argument("config", help="YAML config, e.g. configs/fcn.yaml")
    p.add_argument("--runs", type=int, help="number of runs (seeds base_seed + i)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.optimizer.learning_rate=0.01 (repeatable)")
    p.add_argument("--out", help="results root (config key output_dir)")
    p.add_argument("--data-source", choices=config_lib.SOURCES, help="data.source")
    p.add_argument("--data-dir", help="data.data_dir, e.g. ../shared/data for --data-source local")
    p.add_argument("--epochs", type=int, help="training.epochs (e.g. 1 for a smoke run)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, build the model(s), print the per-layer summary and the parameter count; "
                        "no data, no training")
    return p.parse_args(argv)


def setup_logging(log_file: Path | None = None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        root.addHandler(console)
    for h in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(h)
        h.close()
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        root.addHandler(handler)


def dry_run(combos) -> int:
    from custom_layers import count_parameters, masked_layers

    for combo, cfg, _ in combos:
        model = build_run_model(cfg, cfg.base_seed, 0)
        label = config_lib.combo_label(combo) if combo else cfg.name
        print(f"== {label}: {cfg.model.architecture} on {cfg.data.dataset}, mask_mode {cfg.model.mask_mode}, "
              f"-> {config_lib.results_dir(cfg, combo)}")
        masked = {layer.name for layer in masked_layers(model)}
        for layer in model.layers:
            kernel = getattr(layer, "kernel", None)
            if kernel is None:
                continue
            kind = "masked" if layer.name in masked else "dense"
            print(f"  {layer.name:<22} {type(layer).__name__:<14} {str(tuple(kernel.shape)):<20} "
                  f"{int(math.prod(kernel.shape)):>10,d}  {kind}")
        print(f"parameters: {count_parameters(model)}")
    if len(combos) > 1:
        print(f"combinations: {len(combos)}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg, raw = config_lib.load_config(args.config, args.overrides, runs=args.runs, out=args.out,
                                          data_source=args.data_source, data_dir=args.data_dir,
                                          epochs=args.epochs)
        combos = config_lib.combinations(cfg, raw)
    except ConfigErrors as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    from data_preprocessor import DataUnavailableError
    from weight_initializer import WeightsFileMismatch

    if args.dry_run:
        try:
            return dry_run(combos)
        except WeightsFileMismatch as exc:
            print(f"error: model.weights_file / model.masks_file: {exc}", file=sys.stderr)
            return 2

    results = []
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        for combo, child, _ in combos:
            directory = config_lib.results_dir(child, combo)
            setup_logging(directory / "looper.log")
            summary = run_experiment(child, directory)
            summary["directory"] = str(directory)
            results.append((combo, summary))
            print(summary_markdown(summary))
    except DataUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except WeightsFileMismatch as exc:
        print(f"error: model.weights_file / model.masks_file: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are saved; run the same command again to resume", file=sys.stderr)
        return 130
    if cfg.sweep is not None:
        table = write_comparison(Path(cfg.output_dir) / f"{cfg.name}-sweep", results)
        print(table)
    return 0


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
