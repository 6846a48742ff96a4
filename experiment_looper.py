"""Run a config's experiments: `python experiment_looper.py configs/conv6.yaml`.

For every sweep combination (or the config itself) and every run i (seed base_seed + i) it builds the model, trains
it and writes a run folder (the layout is run_folder's docstring). What survives what:

    Ctrl-C, SIGTERM   the current step ends, the runs finished so far and the last epoch checkpoint are kept,
                      exit code 130 (SIGINT) or 143 (SIGTERM); a second Ctrl-C stops at once
    SIGKILL, a lost node, preemption
                      finished runs are whole (they appear by a rename); the interrupted run resumes from its last
                      epoch checkpoint (training.checkpoint_every) when the same command runs again
    several workers   the same command started N times on one --out (a Slurm array, one process per GPU, xargs -P)
                      shares the runs: each is claimed atomically and trained once; a dead worker's run is taken
                      over after --claim-timeout seconds without a heartbeat (at once on the same host) and
                      resumes from its checkpoint; the summaries are rewritten under a lock by every worker that
                      finishes a run, from what is on disk, so the last one to finish writes the complete summary

Config errors are reported before any data is loaded or model built (and before TensorFlow is imported), with exit
code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import backends
import config as config_lib
import data_preprocessor
import hparams
import run_folder
import tf_logs
from config import ConfigErrors, ExperimentConfig
from paper_results import PAPER_RESULTS, compares_with_paper, paper_figure
from run_folder import RunClaim, RunFileError

log = logging.getLogger("experiment_looper")


# --------------------------------------------------------------------------------------------------------------
# Stop requests (SIGINT, SIGTERM)
# --------------------------------------------------------------------------------------------------------------
class StopRequest:
    """Installs SIGINT and SIGTERM handlers that only set `event` (and remember the signal): the training loop,
    the looper and the checkpoint writer look at it at well-defined points, so an interrupt can be neither lost in
    a library's exception handling or a finaliser nor raised half-way through a write. Installed explicitly: a
    process started in the background by a shell inherits SIGINT *ignored*, and Python then installs no
    KeyboardInterrupt handler. A second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self):
        self.event = threading.Event()
        self.signum: int | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if self.event.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()
        # os.write, not print: a handler may run while the main thread is inside print().
        os.write(2, f"\n{signal.Signals(signum).name}: stopping after the current step (Ctrl-C again to stop "
                    f"now)\n".encode())

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


class _AnyEvent:
    """is_set() of several events (a stop request or a lost claim both end a run's training)."""

    def __init__(self, *events):
        self.events = [e for e in events if e is not None]

    def is_set(self) -> bool:
        return any(e.is_set() for e in self.events)


# --------------------------------------------------------------------------------------------------------------
# Training one run
# --------------------------------------------------------------------------------------------------------------
_STRATEGIES: dict[str, Any] = {}


def distribution_strategy(cfg: ExperimentConfig):
    """The tf.distribute strategy of `training.distribute`, created once per process: a second
    MirroredStrategy in one process breaks TensorFlow's collectives (sweeps and resumed runs reuse the first)."""
    name = cfg.training.distribute
    if name is None:
        return None
    import tensorflow as tf

    if name not in _STRATEGIES:
        factories = {"mirrored": tf.distribute.MirroredStrategy,
                     "multi_worker": tf.distribute.MultiWorkerMirroredStrategy}
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
    """Seed Python, numpy and the backend; `deterministic` turns TensorFlow's op determinism on. On JAX, GPU
    determinism is XLA's flag, which must be set before JAX starts: XLA_FLAGS=--xla_gpu_deterministic_ops=true."""
    import keras

    keras.utils.set_random_seed(seed)
    if not deterministic:
        return
    if backends.on_tensorflow():
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    elif "--xla_gpu_deterministic_ops=true" not in os.environ.get("XLA_FLAGS", ""):
        log.warning("training.deterministic: on %s, start the process with "
                    "XLA_FLAGS=--xla_gpu_deterministic_ops=true for repeatable runs on a GPU", keras.backend.backend())


def compute_device() -> str:
    """What trains, for the run's metrics: the Keras backend and its first device, e.g. 'tensorflow CPU' or
    'jax NVIDIA H100 80GB HBM3, matmul precision default'."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        if device.platform != "gpu":
            return f"jax {device.platform.upper()}"
        # float32 matmuls and convolutions run in TF32 on NVIDIA GPUs at JAX's default precision
        # (JAX_DEFAULT_MATMUL_PRECISION=highest for float32 throughout)
        return f"jax {device.device_kind}, matmul precision {jax.config.jax_default_matmul_precision or 'default'}"
    if backend == backends.TENSORFLOW:
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return f"tensorflow {'GPU' if gpus else 'CPU'}"
    return backend


def train_run(cfg: ExperimentConfig, run: int, seed: int, run_dir: Path, *, stop_event=None,
              extra_callbacks=()) -> dict:
    """Train one run in `run_dir` (resuming from its checkpoint when there is one) and write its files (metrics
    last); returns the metrics. KeyboardInterrupt when `stop_event` ends training early."""
    import keras

    import model_trainer
    import shrink
    from custom_layers import count_parameters
    from data_preprocessor import load_dataset

    seed_everything(seed, cfg.training.deterministic)
    d = cfg.data
    data = load_dataset(d.dataset, d.source, d.data_dir, batch_size=d.batch_size, augment=d.augment, seed=seed,
                        shuffle=d.shuffle, synthetic_train=d.synthetic_train, synthetic_test=d.synthetic_test)
    t = cfg.training
    checkpoint = run_dir / run_folder.CHECKPOINT
    with precision_policy(t.mixed_precision):
        strategy = distribution_strategy(cfg)
        scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
        with scope:
            model = run_folder.build_run_model(cfg, seed, run)
            optimizer = model_trainer.make_optimizer(t.optimizer, t.schedule, data.steps_per_epoch, t.epochs)
            model_trainer.compile_model(model, optimizer, label_format=data.label_format, jit_compile=t.jit_compile)
        callbacks = list(extra_callbacks)
        if t.tensorboard:
            callbacks += [keras.callbacks.TensorBoard(log_dir=str(run_dir / run_folder.TENSORBOARD)),
                          model_trainer.MaskImageCallback(run_dir / run_folder.TENSORBOARD)]
        kwargs = dict(optimizer=t.optimizer, schedule=t.schedule, epochs=t.epochs, callbacks=callbacks,
                      verbose=t.verbose, compile=False, checkpoint=checkpoint, checkpoint_every=t.checkpoint_every,
                      stop_event=stop_event)
        try:
            result = model_trainer.train(model, data, **kwargs)
        except model_trainer.CheckpointError as exc:
            aside = checkpoint.with_name(f"{checkpoint.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(checkpoint, aside)
            log.warning("%s; kept as %s, the run starts again from epoch 1", exc, aside.name)
            result = model_trainer.train(model, data, **kwargs)
    if result.resumed_from:
        log.info("%s: resumed after epoch %d of %d", run_dir.name, result.resumed_from, t.epochs)
    final = result.final
    units = shrink.analyze(model)  # which units survive: the effective architecture
    layers = units.with_units(final.get("layers", {}))  # a copy: the history stays as the trainer recorded it
    accuracies = [h["test_accuracy"] for h in result.history if hparams.is_finite_number(h.get("test_accuracy"))]
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
        "best_test_accuracy": max(accuracies, default=None),
        "seconds": result.seconds,
        "seconds_per_epoch": result.seconds / max(1, len(result.history)),
        "precision": t.mixed_precision or "float32",
        "device": compute_device(),
        "architecture": units.architecture,
        "surviving_inputs": len(units.input_survivors),
    }
    run_folder.atomic_write_json(run_dir / run_folder.HISTORY, result.history)
    run_folder.atomic_write_json(run_dir / run_folder.LAYERS, layers)
    run_folder.save_weights_npz(model, run_dir / run_folder.MASKS)
    run_folder.save_compact(model, run_dir / run_folder.COMPACT)  # ternary masks + BN: the exact trained model
    run_folder.atomic_write_json(run_dir / run_folder.METRICS, metrics)
    checkpoint.unlink(missing_ok=True)  # the run's results are saved: its checkpoint has done its job
    keras.utils.clear_session(free_memory=True)
    return metrics


# --------------------------------------------------------------------------------------------------------------
# All runs of a config, shared between workers
# --------------------------------------------------------------------------------------------------------------
def _prepare_partial(partial: Path) -> bool:
    """Make run_xxx.partial/ ready to train in: keep its checkpoint (True when there is one), drop every other
    leftover of an interrupted attempt."""
    partial.mkdir(parents=True, exist_ok=True)
    for path in partial.iterdir():
        if path.name == run_folder.CHECKPOINT:
            continue
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return (partial / run_folder.CHECKPOINT).is_file()


def _whole_run(directory: Path) -> dict | None:
    """The metrics of the run in `directory` (run_xxx/, or a run_xxx.partial/ whose worker was stopped between
    writing its last file and renaming the folder) when all its files are written and whole, else None."""
    try:
        return run_folder.check_run(directory)
    except RunFileError:
        return None


def _set_aside(directory: Path, reason: str) -> Path:
    aside = directory.with_name(f"{directory.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(directory, aside)
    log.warning("%s; the run was moved to %s and is trained again", reason, aside.name)
    return aside


def _run_once(cfg: ExperimentConfig, directory: Path, run: int, seed: int, train, stop_event, claim_timeout) -> None:
    """Train run `run` unless it is finished or another worker holds it (see run_experiment)."""
    if stop_event is not None and stop_event.is_set():
        raise KeyboardInterrupt
    final = run_folder.run_dir(directory, run)
    if (metrics := _whole_run(final)) is not None:
        log.info("%s: finished before (%s), skipped", final, metrics["status"])
        return
    claim = RunClaim.acquire(directory, run, claim_timeout)
    if claim is None:
        info = RunClaim.describe(run_folder.claim_path(directory, run)) or {}
        log.info("%s: trained by another worker (%s:%s), skipped", final, info.get("host"), info.get("pid"))
        return
    try:
        if final.exists():  # finished by another worker meanwhile, or broken
            try:
                run_folder.check_run(final)
                return
            except RunFileError as exc:
                _set_aside(final, str(exc))
        partial = run_folder.partial_dir(directory, run)
        metrics = _whole_run(partial)
        if metrics is not None:  # killed after its last file was written, before the rename below
            log.info("%s: finished before it could be renamed; kept as it is", partial.name)
        else:
            resuming = _prepare_partial(partial)
            run_folder.atomic_write_text(partial / run_folder.CONFIG, run_folder.config_yaml(cfg, seed=seed, run=run))
            log.info("%s: run %d/%d, seed %d%s", directory.name, run + 1, cfg.runs, seed,
                     " (resuming from its checkpoint)" if resuming else "")
            try:
                metrics = train(cfg, run, seed, partial, stop_event=_AnyEvent(stop_event, claim.lost))
            except KeyboardInterrupt:
                if claim.lost.is_set() and not (stop_event is not None and stop_event.is_set()):
                    log.warning("%s: another worker took this run over; left to it", final)
                    return
                raise
            if claim.lost.is_set() or not claim.owned():
                log.warning("%s: another worker took this run over; its result is left to that worker", final)
                return
        os.replace(partial, final)  # the run appears whole or not at all
    finally:
        claim.release()
    if metrics["status"] != "ok":
        log.error("run %d failed: %s", run, metrics.get("message"))
    else:
        log.info("run %d: test accuracy %.2f %%, remaining %.2f %%", run, 100 * metrics["test_accuracy"],
                 metrics["remaining_percent"])
    refresh_summary(cfg, directory)


def run_experiment(cfg: ExperimentConfig, directory: Path, *, train=None, stop_event=None,
                   claim_timeout: float = run_folder.DEFAULT_CLAIM_TIMEOUT, only_runs=None) -> dict:
    """Every run of one (combination of a) config into `directory` that no other worker holds, resuming
    finished and interrupted runs; returns the summary of what is on disk afterwards. `train` (default
    train_run) trains one run: train(cfg, run, seed, run_dir, stop_event=...) -> metrics. `only_runs`: the run
    indices to train (None: all of them; see check_only_runs); the summary still counts every run on disk."""
    train = train or train_run
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    run_folder.atomic_write_text(directory / run_folder.CONFIG, run_folder.config_yaml(cfg))
    try:
        for run, seed in enumerate(cfg.seeds()):
            if only_runs is None or run in only_runs:
                _run_once(cfg, directory, run, seed, train, stop_event, claim_timeout)
    except KeyboardInterrupt:
        refresh_summary(cfg, directory)  # what was finished before the interrupt
        raise
    return refresh_summary(cfg, directory)


# --------------------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------------------
def summarize(cfg: ExperimentConfig, runs: dict[int, dict], in_progress: int = 0) -> dict:
    """Mean, std, min, max over the finished, successful runs; failed runs are counted apart."""
    ok = [runs[i] for i in sorted(runs) if runs[i]["status"] == "ok"]
    failed = [runs[i] for i in sorted(runs) if runs[i]["status"] != "ok"]
    paper = PAPER_RESULTS.get(cfg.paper) if cfg.paper and compares_with_paper(cfg.data.source) else None
    stats = run_folder.summary_statistics
    return {
        "name": cfg.name,
        "config_hash": run_folder.config_hash(cfg),
        "identity": run_folder.identity(cfg),
        "runs_planned": cfg.runs,
        "runs_finished": len(ok),
        "runs_failed": len(failed),
        "runs_in_progress": in_progress,
        "complete": len(ok) + len(failed) == cfg.runs,
        "failed": [{"run": r["run"], "seed": r["seed"], "message": r.get("message", "")} for r in failed],
        "test_accuracy_percent": stats([100.0 * r["test_accuracy"] for r in ok]),
        "remaining_percent": stats([r["remaining_percent"] for r in ok]),
        "remaining_weights": stats([r["remaining_weights"] for r in ok]),
        "total_weights": ok[0]["total_weights"] if ok else None,
        "seconds_per_epoch": stats([r["seconds_per_epoch"] for r in ok]),
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
    progress = f", in progress in other workers: {summary['runs_in_progress']}" if summary["runs_in_progress"] else ""
    settings = ", ".join(f"{key}={value}" for key, value in summary["identity"].items())
    lines = [
        f"# {summary['name']} ({summary['config_hash']})", "",
        *([f"settings that differ from the defaults: {settings}", ""] if settings else []),
        f"runs finished: {summary['runs_finished']} of {summary['runs_planned']}, failed: {summary['runs_failed']}"
        f"{progress}", "", "| metric | measured mean ± std [min, max] | paper |", "|---|---|---|",
    ]
    paper = summary.get("paper") or {}
    lines.append(f"| test accuracy % | {_fmt(acc)} | "
                 f"{paper_figure(paper.get('test_accuracy_percent'), paper.get('accuracy_interval'))} |")
    lines.append(f"| remaining weights % | {_fmt(rem)} | "
                 f"{paper_figure(paper.get('remaining_percent'), paper.get('remaining_interval'))} |")
    total = summary["total_weights"]
    lines.append(f"| remaining weights (count) | {_fmt(count, 0)}{'' if total is None else f' of {total}'} | – |")
    lines.append(f"| seconds per epoch | {_fmt(summary['seconds_per_epoch'])} | – |")
    for failure in summary["failed"]:
        lines.append(f"\nrun {failure['run']} (seed {failure['seed']}) failed: {failure['message']}")
    return "\n".join(lines) + "\n"


def refresh_summary(cfg: ExperimentConfig, directory: Path) -> dict:
    """Recompute the summary from the runs on disk and write summary.json / .md, under the folder lock: workers
    never interleave, and whichever writes last saw every run finished before it."""
    directory = Path(directory)
    with run_folder.folder_lock(directory):
        done = {run: m for run, m in run_folder.finished_runs(directory).items() if run < cfg.runs}
        claimed = sum(run_folder.claim_path(directory, run).exists() for run in range(cfg.runs) if run not in done)
        summary = summarize(cfg, done, claimed)
        run_folder.atomic_write_json(directory / run_folder.SUMMARY_JSON, summary)
        run_folder.atomic_write_text(directory / run_folder.SUMMARY_MD, summary_markdown(summary))
    return summary


def comparison_rows(results: list[tuple[dict, dict, Path]]) -> list[dict]:
    """One row per sweep combination: its keys, then mean ± std accuracy and remaining weights."""
    rows = []
    for combo, summary, directory in results:
        acc, rem = summary["test_accuracy_percent"], summary["remaining_percent"]
        rows.append({**{run_folder.short_keys(combo)[k]: v for k, v in combo.items()},
                     "runs": summary["runs_finished"], "failed": summary["runs_failed"],
                     "accuracy_mean": acc["mean"], "accuracy_std": acc["std"],
                     "remaining_mean": rem["mean"], "remaining_std": rem["std"], "directory": str(directory)})
    return rows


def comparison_table(results: list[tuple[dict, dict, Path]]) -> tuple[str, str]:
    """(CSV, markdown) of a sweep: one row per combination with its keys, runs, failures, and mean ± std of the
    test accuracy and remaining weights."""
    rows = comparison_rows(results)
    if not rows:
        return "", ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    keys = [k for k in rows[0] if k not in ("runs", "failed", "accuracy_mean", "accuracy_std", "remaining_mean",
                                            "remaining_std", "directory")]
    lines = ["| " + " | ".join(keys) + " | runs | failed | test accuracy % | remaining weights % |",
             "|" + "---|" * (len(keys) + 4)]
    for row in rows:
        acc = "–" if row["accuracy_mean"] is None else f"{row['accuracy_mean']:.2f} ± {row['accuracy_std']:.2f}"
        rem = "–" if row["remaining_mean"] is None else f"{row['remaining_mean']:.2f} ± {row['remaining_std']:.2f}"
        lines.append("| " + " | ".join(str(row[k]) for k in keys) + f" | {row['runs']} | {row['failed']} | "
                     f"{acc} | {rem} |")
    return buffer.getvalue(), "\n".join(lines) + "\n"


def write_comparison(cfg: ExperimentConfig, combos) -> str:
    """The sweep's comparison table (<output_dir>/<name>-sweep.md and .csv), recomputed from the runs on disk under
    the lock of the sweep's folder; returns the markdown."""
    stem = run_folder.sweep_table_stem(cfg)
    with run_folder.folder_lock(Path(cfg.output_dir) / cfg.name):
        results = []
        for combo, child, _ in combos:
            directory = run_folder.results_dir(child, combo)
            done = {run: m for run, m in run_folder.finished_runs(directory).items() if run < child.runs}
            results.append((combo, summarize(child, done), directory))
        table_csv, table_md = comparison_table(results)
        if table_md:
            run_folder.atomic_write_text(stem.with_suffix(".csv"), table_csv)
            run_folder.atomic_write_text(stem.with_suffix(".md"), table_md)
    return table_md


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Run the experiments of a signed-Supermask config. Start the same "
                                            "command several times on one --out to share the runs between workers.")
    p.add_argument("config", help="YAML config, e.g. configs/fcn.yaml")
    p.add_argument("--runs", type=int, help="number of runs (seeds base_seed + i)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.optimizer.learning_rate=0.01 (repeatable)")
    p.add_argument("--out", help="results root (config key output_dir)")
    p.add_argument("--data-source", choices=data_preprocessor.SOURCES, help="data.source")
    p.add_argument("--data-dir", help="data.data_dir, e.g. ~/datasets for --data-source local")
    p.add_argument("--epochs", type=int, help="training.epochs (e.g. 1 for a smoke run)")
    p.add_argument("--claim-timeout", type=float, default=run_folder.DEFAULT_CLAIM_TIMEOUT, metavar="SECONDS",
                   help="take over a run whose worker sent no heartbeat for this long (default "
                        f"{run_folder.DEFAULT_CLAIM_TIMEOUT:.0f}, at least {run_folder.MIN_CLAIM_TIMEOUT:.0f}; "
                        "a dead worker on this host at once)")
    p.add_argument("--only-run", dest="only_runs", type=int, action="append", metavar="RUN",
                   help="train only run RUN of the config (0-based: seed base_seed + RUN; repeatable), e.g. one "
                        "cluster array task per run with --only-run $SLURM_ARRAY_TASK_ID; the other runs are "
                        "left to other workers")
    p.add_argument("--dry-run", action="store_true",
                   help="validate, build the model(s), print the per-layer summary and the parameter count; "
                        "no data, no training")
    return p.parse_args(argv)


def setup_logging(log_file: Path | None = None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s", "%H:%M:%S")
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
        model = run_folder.build_run_model(cfg, cfg.base_seed, 0)
        label = run_folder.combo_label(combo) if combo else cfg.name
        print(f"== {label}: {cfg.model.architecture} on {cfg.data.dataset}, mask_mode {cfg.model.mask_mode}, "
              f"-> {run_folder.results_dir(cfg, combo)}")
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


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def check_only_runs(only_runs, combos) -> None:
    """ValueError naming --only-run unless every index is a run of every combination (0 <= RUN < runs)."""
    if only_runs is None:
        return
    runs = min(child.runs for _, child, _ in combos)
    bad = sorted({run for run in only_runs if not 0 <= run < runs})
    if bad:
        raise ValueError(f"--only-run: this config has no run {', '.join(map(str, bad))}; allowed: 0 to {runs - 1} "
                         f"(it has {runs} runs; --runs sets more)")


def resolve(args) -> tuple[ExperimentConfig, list]:
    """The validated config of parsed arguments and its sweep's combinations; raises ConfigErrors."""
    cfg, raw = config_lib.load_config(args.config, args.overrides, runs=args.runs, out=args.out,
                                      data_source=args.data_source, data_dir=args.data_dir, epochs=args.epochs)
    return cfg, config_lib.combinations(cfg, raw)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run_folder.check_claim_timeout(args.claim_timeout)
    except ValueError as exc:
        return _error(str(exc), 2)
    try:
        cfg, combos = resolve(args)
    except ConfigErrors as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    try:
        check_only_runs(args.only_runs, combos)
    except ValueError as exc:
        return _error(str(exc), 2)
    tf_logs.import_tensorflow()  # the config is valid: TensorFlow from here on, its start-up noise filtered
    try:
        for _, child, _ in combos:  # init files that do not fit the model: before any data or run folder
            run_folder.check_init_files(child, args.only_runs or range(child.runs))
        if args.dry_run:
            return dry_run(combos)
    except run_folder.WeightsFileMismatch as exc:
        return _error(f"model.weights_file / model.masks_file: {exc}", 2)

    stop = StopRequest()
    stop.install()
    summaries = []
    try:
        for combo, child, _ in combos:
            if stop.event.is_set():
                break
            directory = run_folder.results_dir(child, combo)
            setup_logging(directory / run_folder.LOG)
            summary = run_experiment(child, directory, stop_event=stop.event, claim_timeout=args.claim_timeout,
                                     only_runs=args.only_runs)
            summaries.append(summary)
            print(summary_markdown(summary))
    except data_preprocessor.DataUnavailableError as exc:
        return _error(str(exc), 2)
    except KeyboardInterrupt:
        stop.event.set()
    except OSError as exc:  # a full disk, a read-only folder, ...: everything finished before is intact
        where = f" ({exc.filename})" if exc.filename else ""
        return _error(f"could not write the results{where}: {exc.strerror or exc}; finished runs are intact, run "
                      f"the same command again to resume", 1)
    if stop.event.is_set():
        print("interrupted: finished runs are saved; run the same command again to resume", file=sys.stderr)
        return stop.exit_code
    if cfg.sweep is not None:
        print(write_comparison(cfg, combos))
    elsewhere = sum(s["runs_in_progress"] for s in summaries)
    if elsewhere:
        print(f"{elsewhere} run(s) are being trained by other workers; the last to finish writes the complete "
              f"summary")
    return 0


if __name__ == "__main__":
    sys.exit(main())
