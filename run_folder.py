"""One home for a run's files: the layout of a results folder, its identity, atomic writes, claims, and reading
and writing what a run leaves behind.

    <output_dir>/<name>-<hash>/                (a sweep: <output_dir>/<name>/<combination>-<hash>/)
        config.yaml        the resolved config
        looper.log         the log of every invocation
        summary.json/.md   mean, std, min, max over finished runs, next to the paper's numbers, and the identity
        .lock              lock file of the folder (claims and summaries are changed under it)
        run_000/           a finished run (it appears whole: it is trained in run_000.partial/ and renamed)
            config.yaml    resolved config with this run's seed and index
            metrics.json   status (ok | failed), final accuracy, remaining weights, seconds, ...
            history.json   one entry per epoch (train/test loss and accuracy, lr, remaining weights per layer)
            layers.json    final per-layer kept / inverted / hidden counts, units and surviving units
            masks.npz      final frozen kernels, masks and thresholds (load_weights_npz)
            compact.npz    the trained network in ~2 bits per weight, BN included (load_compact)
            tensorboard/   with training.tensorboard: true
            export/        written by export.py: stripped.keras, shrunk.keras (+ shrunk.survivors.json),
                           compact.npz, sizes.json
        run_001.partial/   a run in progress (or interrupted): config.yaml and checkpoint.npz
        run_001.claim      the worker that trains run 1 (host, pid, token); its mtime is the heartbeat
    <output_dir>/<name>-sweep.md/.csv              a sweep's comparison table

The results-folder identity (`config_hash`) is a hash of the settings that differ from the schema defaults,
leaving out where the same data is read from (tfds or local, data_dir), output and logging options: adding a
key with a default renames no folder, and `--data-source local` resumes a tfds run.

Every write is atomic (a temporary file in the same directory, fsync, rename) and respects the user's umask.
This module imports no TensorFlow at import time (the looper validates configs without it); the functions that
build or read models import the model code when called.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import socket
import statistics
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import config as config_lib
import hparams
from config import ExperimentConfig

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# File names
# --------------------------------------------------------------------------------------------------------------
CONFIG = "config.yaml"
LOG = "looper.log"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
LOCK = ".lock"
METRICS = "metrics.json"
HISTORY = "history.json"
LAYERS = "layers.json"
MASKS = "masks.npz"
COMPACT = "compact.npz"
CHECKPOINT = "checkpoint.npz"
TENSORBOARD = "tensorboard"
EXPORT = "export"  # export.py's default output folder inside a run, holding:
STRIPPED_KERAS = "stripped.keras"  # the stock network, kernels w * M (shrink.strip)
SHRUNK_KERAS = "shrunk.keras"  # the stock network without its dead units (shrink.shrink), + its survivors sidecar
SIZES = "sizes.json"  # export.py's size report
RUN_FILES = (CONFIG, METRICS, HISTORY, LAYERS, MASKS, COMPACT)
RUN_PATTERN = re.compile(r"run_(\d{3})")
PARTIAL_SUFFIX = ".partial"
CLAIM_SUFFIX = ".claim"
SWEEP_SUFFIX = "-sweep"


def run_name(run: int) -> str:
    return f"run_{config_lib.run_index(run)}"


def run_dir(results: Path, run: int) -> Path:
    return Path(results) / run_name(run)


def partial_dir(results: Path, run: int) -> Path:
    return Path(results) / f"{run_name(run)}{PARTIAL_SUFFIX}"


def claim_path(results: Path, run: int) -> Path:
    return Path(results) / f"{run_name(run)}{CLAIM_SUFFIX}"


def sweep_table_stem(cfg: ExperimentConfig) -> Path:
    """<output_dir>/<name>-sweep (the .md and .csv comparison tables of a sweep)."""
    return Path(cfg.output_dir) / f"{cfg.name}{SWEEP_SUFFIX}"


# --------------------------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------------------------
def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()  # what open() would give a new file (mkstemp gives 0600)


@contextlib.contextmanager
def _replaced_on_success(path: Path, suffix: str = ".tmp"):
    """Yield a temporary path in `path`'s directory; rename it onto `path` (with the umask's mode) if the block
    succeeds, remove it if the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _atomic_file(path: Path, mode: str):
    with _replaced_on_success(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path, text: str) -> None:
    """Write `text` to a temporary file in the same directory, fsync, then rename onto `path`."""
    with _atomic_file(path, "w") as fh:
        fh.write(text)


def json_default(value):
    """JSON for numpy scalars and tuples."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=json_default) + "\n")


def atomic_save_model(model, path) -> None:
    """model.save(path) (a .keras file) through a temporary file in the same directory, renamed onto `path`."""
    with _replaced_on_success(path, suffix=Path(path).suffix) as tmp:
        model.save(tmp)


def atomic_savez(path, arrays: dict[str, np.ndarray], *, compress: bool = True) -> None:
    """np.savez_compressed (np.savez with compress=False) into a temporary file in the same directory, fsync, then
    rename onto `path`."""
    with _atomic_file(path, "wb") as fh:
        (np.savez_compressed if compress else np.savez)(fh, **arrays)


def config_yaml(cfg: ExperimentConfig, **extra) -> str:
    """The resolved config as YAML (plus `extra` top-level keys, e.g. a run's seed and index)."""
    return yaml.safe_dump({**config_lib.to_dict(cfg), **extra}, sort_keys=False, default_flow_style=None)


@contextlib.contextmanager
def folder_lock(directory: Path):
    """An exclusive POSIX lock (fcntl.lockf, which NFS supports) on <directory>/.lock. Claims and summaries are
    changed under it, so concurrent workers on one results folder never interleave. The lock dies with its
    process."""
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------------------------------------------
# Identity of a results folder
# --------------------------------------------------------------------------------------------------------------
# Keys that do not change what a run computes: names, counts, where the (same) data and the outputs are, logging.
NOT_IDENTITY = ("name", "paper", "runs", "output_dir", "sweep", "data.source", "data.data_dir", "training.verbose",
                "training.tensorboard", "training.checkpoint_every")
SYNTHETIC_ONLY = ("data.synthetic_train", "data.synthetic_test")


def _canonical_init(value, presets: dict) -> Any:
    """A preset name for an InitSpec (or mapping) equal to a preset, else the mapping."""
    spec = hparams.init_spec(value, presets)
    for name, preset in presets.items():
        if preset == spec:
            return name
    return dataclasses.asdict(spec)


def identity(cfg: ExperimentConfig) -> dict[str, Any]:
    """{dotted key: value} of the settings that make this config's results differ from the defaults' results.

    Left out: NOT_IDENTITY (names, run count, outputs, logging, the data source when it reads the real data:
    tfds and local give the same examples); the synthetic-data sizes unless the source is synthetic. Kept:
    data.source when it is synthetic (other data). Initialisations count by value: the default of the mask mode
    (elus for a Supermask) and a mapping equal to a preset are the same thing.
    """
    items = config_lib.flat_items(cfg)
    defaults = config_lib.flat_items(ExperimentConfig())
    synthetic = cfg.data.source == "synthetic"
    items["model.weight_init"] = _canonical_init(cfg.model.resolved_weight_init, hparams.WEIGHT_PRESETS)
    defaults["model.weight_init"] = hparams.DEFAULT_WEIGHT_INIT[cfg.model.masked]
    items["model.mask_init"] = _canonical_init(cfg.model.mask_init, hparams.MASK_PRESETS)
    out = {}
    for key, value in items.items():
        if key in NOT_IDENTITY or (key in SYNTHETIC_ONLY and not synthetic):
            continue
        if value != defaults[key]:
            out[key] = value
    if synthetic:
        out["data.source"] = "synthetic"
    return dict(sorted(out.items()))


def config_hash(cfg: ExperimentConfig) -> str:
    """8 hex digits of sha256 over `identity(cfg)`."""
    text = json.dumps(identity(cfg), sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def short_keys(combo: dict[str, Any]) -> dict[str, str]:
    """Each dotted key's shortest suffix that is unique in `combo`: 'model.weight_init.factor' ->
    'weight_init.factor' when 'model.mask_init.factor' is swept too, else 'factor'."""
    out = {}
    for key in combo:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if sum(other == suffix or other.endswith("." + suffix) for other in combo) == 1:
                out[key] = suffix
                break
    return out


def combo_label(combo: dict[str, Any]) -> str:
    """'threshold_fraction=0.5,weight_init=he' from a sweep combination (shortest unique key suffix,
    filesystem-safe, at most 80 characters)."""
    parts = []
    names = short_keys(combo)
    for key, value in combo.items():
        text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
        parts.append(f"{names[key]}={text}")
    safe = "".join(c if c.isalnum() or c in "=,._-" else "_" for c in ",".join(parts))
    return safe[:80]


def results_dir(cfg: ExperimentConfig, combo: dict[str, Any] | None = None) -> Path:
    """<output_dir>/<name>-<hash>, or <output_dir>/<name>/<combo label>-<hash> for a sweep combination."""
    if combo:
        return Path(cfg.output_dir) / cfg.name / f"{combo_label(combo)}-{config_hash(cfg)}"
    return Path(cfg.output_dir) / f"{cfg.name}-{config_hash(cfg)}"


# --------------------------------------------------------------------------------------------------------------
# Building a run's model
# --------------------------------------------------------------------------------------------------------------
def layer_factory(cfg: ExperimentConfig, seed: int):
    """BaselineLayers for mask_mode none, else MaskedLayers with the config's mode and inits."""
    from custom_layers import BaselineLayers, MaskedLayers, mask_mode_from_name

    m = cfg.model
    if not m.masked:
        return BaselineLayers(weight_init=m.resolved_weight_init, seed=seed)
    return MaskedLayers(mask_mode=mask_mode_from_name(m.mask_mode, m.topk_fraction),
                        weight_init=m.resolved_weight_init, mask_init=m.mask_init,
                        threshold_fraction=m.threshold_fraction, seed=seed)


def build_run_model(cfg: ExperimentConfig, seed: int, run: int):
    """The config's model for one run, with weights / masks loaded from the init files when configured."""
    from architectures import ARCHITECTURES, build_model

    m = cfg.model
    kwargs: dict[str, Any] = {key: getattr(m, key) for key in ARCHITECTURES[m.architecture].options}
    model = build_model(m.architecture, layer_factory(cfg, seed), num_classes=cfg.num_classes, **kwargs)
    if m.weights_file:
        load_weights_npz(model, config_lib.resolve_run_file(m.weights_file, run), parts=("kernel",))
    if m.masks_file:
        load_weights_npz(model, config_lib.resolve_run_file(m.masks_file, run), parts=("mask",),
                         threshold="recompute")
    return model


def check_init_files(cfg: ExperimentConfig, runs) -> None:
    """WeightsFileMismatch unless each of `runs`' weights / masks files fits the config's model (its layer names
    and shapes): the check the looper makes before it loads any data or claims a run. Runs that share their files
    (a pattern without {run}) are checked once."""
    m = cfg.model
    if m.weights_file or m.masks_file:
        first_run = {}  # (weights path, masks path) -> the first run that reads them
        for run in runs:
            files = tuple(pattern and config_lib.resolve_run_file(pattern, run) for pattern in (m.weights_file,
                                                                                                m.masks_file))
            first_run.setdefault(files, run)
        for run in first_run.values():
            build_run_model(cfg, cfg.base_seed, run)


# --------------------------------------------------------------------------------------------------------------
# Masks and the compact artifact
# --------------------------------------------------------------------------------------------------------------
class WeightsFileMismatch(ValueError):
    """The file was made for another architecture (or lacks what was asked for)."""


def weights_to_arrays(model) -> dict[str, np.ndarray]:
    """{'<layer>/kernel': w, '<layer>/mask': m, '<layer>/threshold': tau} for every masked layer; stock Dense/Conv
    layers contribute '<layer>/kernel'."""
    import keras

    from custom_layers import MaskedKernelMixin, kernel_layers

    arrays = {}
    for layer in kernel_layers(model):
        arrays[f"{layer.name}/kernel"] = keras.ops.convert_to_numpy(layer.kernel)
        if isinstance(layer, MaskedKernelMixin):
            arrays[f"{layer.name}/mask"] = keras.ops.convert_to_numpy(layer.mask)
            arrays[f"{layer.name}/threshold"] = np.asarray(keras.ops.convert_to_numpy(layer.threshold))
    return arrays


def save_weights_npz(model, path) -> None:
    """Save every frozen kernel, mask and threshold of `model` to one `.npz`, keyed '<layer>/<kind>'."""
    atomic_savez(path, weights_to_arrays(model))


def read_npz(path) -> dict[str, np.ndarray]:
    """Every array of an .npz (allow_pickle=False); a truncated or corrupt file is a ValueError naming it."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{os.fspath(path)} is not a readable .npz ({type(exc).__name__}: {exc})") from exc


def load_weights_npz(model, path, *, parts=("kernel", "mask"), threshold: str = "auto") -> None:
    """Load kernels and/or masks saved by `save_weights_npz` into `model`.

    parts: which arrays to load ("kernel", "mask"). threshold: "recompute" sets tau = p*max|m| from the loaded
    mask (the init-file workflow); "file" restores the saved tau (it must be there); "auto" restores it when the
    file has one for that layer, else recomputes. Every problem (a missing or extra layer, a shape mismatch, a
    missing threshold) raises WeightsFileMismatch before anything is assigned.
    """
    from custom_layers import MaskedKernelMixin, kernel_layers

    if threshold not in ("auto", "file", "recompute"):
        raise ValueError(f"threshold must be auto, file or recompute, got {threshold!r}")
    try:
        stored = read_npz(path)
    except ValueError as exc:
        raise WeightsFileMismatch(str(exc)) from None
    layers = kernel_layers(model)
    masked = [layer for layer in layers if isinstance(layer, MaskedKernelMixin)]
    problems, plan = [], []
    for part in parts:
        owners = layers if part == "kernel" else masked
        expected = {f"{layer.name}/{part}": layer for layer in owners}
        present = {key for key in stored if key.endswith(f"/{part}")}
        problems += [f"{key} is in the file but the model has no such layer"
                     for key in sorted(present - expected.keys())]
        for key, layer in expected.items():
            if key not in stored:
                problems.append(f"{key} is missing from the file")
                continue
            variable = getattr(layer, part)
            if tuple(stored[key].shape) != tuple(variable.shape):
                problems.append(f"{key} has shape {stored[key].shape} in the file, {tuple(variable.shape)} in the "
                                "model")
            plan.append((variable, stored[key]))
    thresholds = []
    if "mask" in parts:
        for layer in masked:
            key = f"{layer.name}/threshold"
            if threshold == "file" and key not in stored:
                problems.append(f"{key} is missing from the file")
            thresholds.append((layer, stored.get(key) if threshold != "recompute" else None))
    if problems:
        raise WeightsFileMismatch(
            f"{os.fspath(path)} does not fit this model ({len(problems)} problem(s)): " + "; ".join(problems[:5]))
    for variable, value in plan:
        variable.assign(value)
    for layer, tau in thresholds:
        if tau is None:
            layer.reset_threshold()
        else:
            layer.threshold.assign(float(tau))
    log.info("loaded %s from %s into %d layers", "+".join(parts), os.fspath(path), len(layers))


def save_compact(model, path) -> dict:
    """Write the compact artifact of `model` (compact.py) to `path`, atomically; returns its meta data."""
    import compact

    arrays = compact.compact_arrays(model)
    atomic_savez(path, arrays)
    return compact.read_meta(arrays)


def load_compact(path, *, verify: bool = True):
    """The model saved by `save_compact` (compact.model_from_arrays; verify: the sha256 of every kernel)."""
    import compact

    try:
        arrays = read_npz(path)
        return compact.model_from_arrays(arrays, verify=verify)
    except ValueError as exc:
        raise ValueError(f"{os.fspath(path)}: {exc}") from None


# --------------------------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------------------------
class RunFileError(ValueError):
    """A file of a finished run is missing, truncated or corrupt; the message names it."""


def read_json(path) -> Any:
    """A JSON file; a missing, truncated or corrupt one is a RunFileError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise RunFileError(f"{path}: {'missing' if isinstance(exc, FileNotFoundError) else 'unreadable'} "
                           f"({type(exc).__name__}: {exc})") from None


def read_config_mapping(path) -> dict:
    """A config.yaml as a plain mapping ({} when it is missing)."""
    path = Path(path)
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def check_run(directory: Path) -> dict:
    """The metrics of a finished run after checking that its files are whole: every JSON parses, every .npz
    passes its zip checksums. RunFileError (naming the file) otherwise."""
    directory = Path(directory)
    metrics = read_json(directory / METRICS)
    if not isinstance(metrics, dict) or "status" not in metrics:
        raise RunFileError(f"{directory / METRICS}: not a run's metrics")
    if metrics["status"] == "ok":
        for name in (HISTORY, LAYERS):
            read_json(directory / name)
        for name in (MASKS, COMPACT):
            path = directory / name
            try:
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
            except (OSError, zipfile.BadZipFile) as exc:
                raise RunFileError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
            if bad is not None:
                raise RunFileError(f"{path}: member {bad} is corrupt")
    return metrics


def finished_runs(directory: Path, *, check: bool = False) -> dict[int, dict]:
    """{run index: metrics} of the finished runs (run_xxx/ directories, renamed from .partial). check=True also
    verifies their files (check_run) and leaves out the broken ones, with a warning."""
    out = {}
    for path in sorted(Path(directory).glob("run_[0-9][0-9][0-9]")):
        try:
            out[int(path.name[4:])] = check_run(path) if check else read_json(path / METRICS)
        except RunFileError as exc:
            log.warning("%s", exc)
    return out


def run_dirs(results: str | os.PathLike, *, ok_only: bool = True) -> list[Path]:
    """The finished run directories of one results folder (run_000, run_001, ...; .partial ones excluded),
    optionally only those whose metrics say status ok."""
    out = []
    for path in sorted(Path(results).glob("run_[0-9][0-9][0-9]")):
        try:
            metrics = read_json(path / METRICS)
        except RunFileError as exc:
            log.warning("%s; run ignored", exc)
            continue
        if ok_only and metrics.get("status") != "ok":
            log.info("%s: not ok, ignored", path)
            continue
        out.append(path)
    return out


def find_results_dirs(paths) -> list[Path]:
    """Every directory at or below `paths` that holds run_xxx/metrics.json (a run directory given directly
    stands for its results folder), sorted and without duplicates."""
    found: set[Path] = set()
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if RUN_PATTERN.fullmatch(path.name) and (path / METRICS).is_file():
            found.add(path.parent.resolve())
            continue
        for metrics in path.rglob(METRICS):
            if RUN_PATTERN.fullmatch(metrics.parent.name):
                found.add(metrics.parent.parent.resolve())
    return sorted(found)


@dataclasses.dataclass
class RunRecord:
    """What a finished run left: its folder, metrics, per-epoch history, per-layer statistics and config."""

    path: Path
    metrics: dict
    history: list[dict]
    layers: dict
    config: dict


def read_run(directory) -> RunRecord:
    """The record of a finished run (RunFileError naming a missing or corrupt file)."""
    directory = Path(directory)
    return RunRecord(directory, read_json(directory / METRICS), read_json(directory / HISTORY),
                     read_json(directory / LAYERS), read_config_mapping(directory / CONFIG))


def migrate_raw_config(raw: dict) -> dict:
    """A config mapping written by an earlier version, in today's schema: renamed initialisation presets get
    their new names (hparams.RENAMED_PRESETS), so old results folders stay readable."""
    model = raw.get("model") or {}
    for key in ("weight_init", "mask_init"):
        if isinstance(model.get(key), str) and model[key] in hparams.RENAMED_PRESETS:
            model[key] = hparams.RENAMED_PRESETS[model[key]]
    return raw


def read_run_config(directory, *, data_source: str | None = None, data_dir: str | None = None):
    """(ExperimentConfig, seed, run) of a run directory, from its config.yaml (see run_config)."""
    directory = Path(directory)
    return run_config(read_config_mapping(directory / CONFIG), source=str(directory / CONFIG),
                      data_source=data_source, data_dir=data_dir)


def run_config(mapping: dict, *, source: str, data_source: str | None = None, data_dir: str | None = None):
    """(ExperimentConfig, seed, run) of a recorded config mapping (left unchanged; `source` names it in errors).
    The looper's extra 'seed' / 'run' keys are dropped before validation; weights_file / masks_file are dropped
    too (masks.npz holds the final kernels), and so is the paper row (a folder written before the config checked
    it against the model stays readable). data_source / data_dir replace the recorded ones (e.g. 'synthetic' when
    no data is read)."""
    raw = migrate_raw_config(copy.deepcopy(mapping))  # the caller's mapping stays as read
    run = int(raw.pop("run", 0))
    seed = raw.pop("seed", None)
    raw["paper"] = None
    raw.setdefault("model", {})
    raw["model"]["weights_file"] = None
    raw["model"]["masks_file"] = None
    raw.setdefault("data", {})
    if data_source is not None:
        raw["data"]["source"] = data_source
    if data_dir is not None:
        raw["data"]["data_dir"] = data_dir
    cfg = config_lib.parse_config(raw, source=source)
    seed = int(seed) if seed is not None else cfg.base_seed + run
    return cfg, seed, run


def load_run_model(directory, cfg=None, seed: int | None = None, run: int | None = None):
    """The trained model of a run directory: build_run_model(cfg, seed, run), then masks.npz (kernels, masks and
    the saved thresholds), then the other trained weights (BN) from compact.npz. A folder with compact.npz but
    no masks.npz (a ledger entry) gives the model of the compact artifact (the same predictions; its masks hold
    M itself, not the real-valued masks)."""
    import compact
    from custom_layers import STOCK_KERNEL_LAYERS, MaskedKernelMixin, leaf_layers

    directory = Path(directory)
    if not (directory / MASKS).exists() and (directory / COMPACT).exists():
        return load_compact(directory / COMPACT)
    if cfg is None:
        cfg, seed, run = read_run_config(directory, data_source="synthetic")
    model = build_run_model(cfg, seed, run)
    load_weights_npz(model, directory / MASKS, parts=("kernel", "mask"), threshold="file")
    layers = dict(leaf_layers(model))
    others = [path for path, layer in layers.items()
              if not isinstance(layer, (MaskedKernelMixin,) + STOCK_KERNEL_LAYERS) and layer.weights]
    if others:
        arrays = read_npz(directory / COMPACT)
        meta = compact.read_meta(arrays)
        for path in others:
            layers[path].set_weights(compact.layer_weights(arrays, meta, path))
    return model


# --------------------------------------------------------------------------------------------------------------
# Statistics over runs
# --------------------------------------------------------------------------------------------------------------
def summary_statistics(values) -> dict:
    """{"mean", "std" (sample, ddof 1; 0 for one value), "min", "max", "n"} of the finite values (None when
    there are none)."""
    values = [float(v) for v in values if hparams.is_finite_number(v)]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


# --------------------------------------------------------------------------------------------------------------
# Claims: several workers on one results folder
# --------------------------------------------------------------------------------------------------------------
DEFAULT_CLAIM_TIMEOUT = 600.0  # seconds without a heartbeat after which another worker takes a run over
MIN_CLAIM_TIMEOUT = 10.0  # the shortest allowed: the heartbeat (every timeout / 10) must not spin, nor live
                          # workers' claims look stale between two of their heartbeats


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_claim_timeout(timeout: float) -> None:
    """Raise ValueError unless timeout is a finite number of seconds, at least MIN_CLAIM_TIMEOUT."""
    if not (math.isfinite(timeout) and timeout >= MIN_CLAIM_TIMEOUT):
        raise ValueError(f"--claim-timeout: {timeout:g} is not allowed (a finite number of seconds, at least "
                         f"{MIN_CLAIM_TIMEOUT:g})")


class RunClaim:
    """The claim of one run by one worker: the file run_xxx.claim, created atomically (O_CREAT | O_EXCL) under the
    folder lock, holding {host, pid, token}; its mtime is the heartbeat (touched every timeout / 10 seconds by a
    daemon thread). A claim is stale when its process is gone (same host) or its heartbeat is older than the
    timeout; a stale claim is taken over (the new owner resumes from the run's checkpoint). `lost` is set when
    another worker took this claim over (this worker was presumed dead): it must stop training that run."""

    def __init__(self, path: Path, token: str, timeout: float):
        self.path = Path(path)
        self.token = token
        self.timeout = float(timeout)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def describe(path: Path) -> dict | None:
        """The claim's content and age in seconds ({...,'age': s}), None when there is no (readable) claim."""
        try:
            info = json.loads(Path(path).read_text())
            info["age"] = time.time() - Path(path).stat().st_mtime
            return info
        except (OSError, ValueError):
            return None

    @classmethod
    def is_stale(cls, info: dict | None, timeout: float) -> bool:
        if info is None:
            return True
        if info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", -1))):
            return True
        return info["age"] > timeout

    @classmethod
    def acquire(cls, results: Path, run: int, timeout: float = DEFAULT_CLAIM_TIMEOUT) -> RunClaim | None:
        """The claim of `run`, or None when a live worker holds it."""
        check_claim_timeout(timeout)
        path = claim_path(results, run)
        token = uuid.uuid4().hex
        with folder_lock(results):
            if path.exists():
                info = cls.describe(path)
                if not cls.is_stale(info, timeout):
                    return None
                log.warning("%s: taking over the run of %s (no heartbeat for %.0f s)", path.name,
                            f"{info.get('host')}:{info.get('pid')}" if info else "an unreadable claim",
                            info["age"] if info else float("nan"))
                path.unlink(missing_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _FILE_MODE)
            except FileExistsError:
                return None
            with os.fdopen(fd, "w") as fh:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "token": token,
                           "since": time.strftime("%Y-%m-%dT%H:%M:%S")}, fh)
                fh.flush()
                os.fsync(fh.fileno())
        claim = cls(path, token, timeout)
        claim._start_heartbeat()
        return claim

    def owned(self) -> bool:
        info = self.describe(self.path)
        return info is not None and info.get("token") == self.token

    def _start_heartbeat(self):
        def beat():
            while not self._stop.wait(self.timeout / 10):
                if not self.owned():
                    self.lost.set()
                    return
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._thread = threading.Thread(target=beat, name=f"heartbeat-{self.path.name}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the claim file if it is still this worker's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with folder_lock(self.path.parent):
            if self.owned():
                self.path.unlink(missing_ok=True)

