"""The experiment config: a typed schema, validated once, up front, before any data is loaded or model is built.

A config is YAML with four sections (experiment keys at the top, then `data`, `model`, `training`) and an optional
`sweep`. Types and defaults come from the dataclasses below; allowed values, ranges and the help text of every
key come from one table, `RULES`, which also generates the reference in configs/README.md
(`python config.py --reference`).

Every problem is a `ConfigError` whose one-line message names the key and the fix; `load_config` collects all
of them (so a user sees every mistake at once). The CLI turns them into exit code 2 without a traceback.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import itertools
import json
import os
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

import architectures
import custom_layers
import data_preprocessor
import weight_initializer
from model_trainer import OPTIMIZERS, SCHEDULES, OptimizerSpec, ScheduleSpec
from resnet_networks import BATCH_NORM_MODES

# Allowed names come from the modules that define them, so the schema cannot drift from the code.
ARCHITECTURES = tuple(architectures.ARCHITECTURES)
ARCHITECTURE_DATASETS = {name: arch.datasets for name, arch in architectures.ARCHITECTURES.items()}
DATASETS = {name: info.num_classes for name, info in data_preprocessor.DATASETS.items()}
SOURCES = data_preprocessor.SOURCES
MASK_MODES = tuple(custom_layers.MASK_MODES) + ("none",)  # none = the dense baseline
WEIGHT_PRESETS = tuple(weight_initializer.WEIGHT_PRESETS)
MASK_PRESETS = tuple(weight_initializer.MASK_PRESETS)
DISTRIBUTIONS = weight_initializer.DISTRIBUTIONS
SCALINGS = weight_initializer.SCALINGS
PRECISIONS = ("mixed_float16", "mixed_bfloat16")
STRATEGIES = ("mirrored", "multi_worker")


class ConfigError(ValueError):
    """A config problem: `key` is the dotted path, the message says what is wrong and how to fix it."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class ConfigErrors(ValueError):
    """All the problems found in one config."""

    def __init__(self, errors: list[ConfigError], source: str = "config"):
        self.errors = errors
        self.source = source
        super().__init__("\n".join(f"{source}: {e}" for e in errors))


# --------------------------------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InitConfig:
    distribution: str = "signed_constant"
    scaling: str = "elus"
    factor: float = 1.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"
    source: str = "tfds"
    data_dir: Optional[str] = None
    batch_size: int = 128
    augment: Optional[bool] = None
    shuffle: bool = True
    synthetic_train: int = 2048
    synthetic_test: int = 512


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str = "fcn"
    mask_mode: str = "signed"
    threshold_fraction: float = 0.4
    topk_fraction: float = 0.5
    weight_init: Union[str, InitConfig, None] = None
    mask_init: Union[str, InitConfig] = "xavier_uniform"
    width: float = 1.0
    num_classes: Optional[int] = None
    batch_norm: str = "learned"
    stem_batch_norm: Optional[str] = None
    dropout: float = 0.0
    weights_file: Optional[str] = None
    masks_file: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 100
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    jit_compile: bool = False
    mixed_precision: Optional[str] = None
    distribute: Optional[str] = None
    deterministic: bool = True
    tensorboard: bool = False
    verbose: int = 1


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    grid: dict[str, list] = dataclasses.field(default_factory=dict)
    zip: dict[str, list] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    paper: Optional[str] = None
    runs: int = 1
    base_seed: int = 7531
    output_dir: str = "results"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    sweep: Optional[SweepConfig] = None

    @property
    def num_classes(self) -> int:
        return self.model.num_classes or DATASETS[self.data.dataset]

    def seeds(self) -> list[int]:
        return [self.base_seed + i for i in range(self.runs)]


# Rule fields: help, choices, lo / hi (inclusive bounds), gt / lt (exclusive bounds).
RULES: dict[str, dict[str, Any]] = {
    "name": {"help": "Experiment name; the results directory is named from it and a hash of the config."},
    "paper": {"help": "Row of the paper's results table to compare with (fcn, conv2, ..., resnet110, or *_baseline).",
              "choices": None},  # filled below from paper_results
    "runs": {"help": "Number of runs; run i uses seed base_seed + i (seeds are replicates).", "lo": 1},
    "base_seed": {"help": "Seed of run 0 (the authors used 7531).", "lo": 0},
    "output_dir": {"help": "Root of the results directories."},
    "data.dataset": {"help": "Dataset.", "choices": tuple(DATASETS)},
    "data.source": {"help": "tfds (download), local (archives in data_dir, no network) or synthetic (tiny random "
                            "data of the real shapes, for tests and smoke runs).", "choices": SOURCES},
    "data.data_dir": {"help": "Directory of mnist.npz / cifar-10-python.tar.gz / cifar-100-python.tar.gz for the "
                              "local source (tfds: its data_dir)."},
    "data.batch_size": {"help": "Global batch size (over all devices).", "lo": 1},
    "data.augment": {"help": "Pad-4 random crop + flip on the training set; null = on for CIFAR-100 only."},
    "data.shuffle": {"help": "Reshuffle the training set every epoch; false keeps the file order (the authors' "
                             "MNIST pipeline)."},
    "data.synthetic_train": {"help": "Training examples of the synthetic source.", "lo": 1},
    "data.synthetic_test": {"help": "Test examples of the synthetic source.", "lo": 1},
    "model.architecture": {"help": "Network.", "choices": ARCHITECTURES},
    "model.mask_mode": {"help": "signed (keep/hide/invert, the paper), binary (keep/hide, Zhou et al.), topk "
                                "(edge-popup, Ramanujan et al.) or none (the dense, trainable baseline).",
                        "choices": MASK_MODES},
    "model.threshold_fraction": {"help": "p in tau = p * max|m_init| (per layer, fixed).", "gt": 0.0, "lt": 1.0},
    "model.topk_fraction": {"help": "k of the topk mode: fraction of weights kept per layer.", "gt": 0.0, "lo": 0.0,
                            "hi": 1.0},
    "model.weight_init": {"help": "Frozen weights (Supermask) or initial weights (baseline): a preset or "
                                  "{distribution, scaling, factor}; null = elus for a Supermask, elu_uniform "
                                  "for a baseline.", "choices": WEIGHT_PRESETS},
    "model.weight_init.distribution": {"help": "Distribution.", "choices": DISTRIBUTIONS},
    "model.weight_init.scaling": {"help": "Variance: he 2/n_in, xavier 2/(n_in+n_out), elu 1.5/n_in, elus 3/n_in.",
                                  "choices": SCALINGS},
    "model.weight_init.factor": {"help": "Multiplies the variance.", "gt": 0.0},
    "model.mask_init": {"help": "Initial real-valued masks: a preset or {distribution, scaling, factor}.",
                        "choices": MASK_PRESETS},
    "model.mask_init.distribution": {"help": "Distribution.", "choices": DISTRIBUTIONS},
    "model.mask_init.scaling": {"help": "Variance scaling.", "choices": SCALINGS},
    "model.mask_init.factor": {"help": "Multiplies the variance.", "gt": 0.0},
    "model.width": {"help": "Width multiplier (Conv: every layer; ResNet: an integer, 16w/32w/64w filters).",
                    "gt": 0.0},
    "model.num_classes": {"help": "Output classes; null = the dataset's.", "lo": 1},
    "model.batch_norm": {"help": "ResNet BN: learned, none, or frozen (the authors' inference-mode BN).",
                         "choices": BATCH_NORM_MODES},
    "model.stem_batch_norm": {"help": "ResNet stem BN mode; null = batch_norm.", "choices": BATCH_NORM_MODES},
    "model.dropout": {"help": "Dropout rate after hidden FC layers (the paper: 0).", "lo": 0.0, "lt": 1.0},
    "model.weights_file": {"help": "npz from init_example.py with the frozen kernels; '{run}' is replaced by the "
                                   "run index (e.g. inits/fcn/run_{run}.npz)."},
    "model.masks_file": {"help": "npz from init_example.py with the initial masks ('{run}' as above); tau is "
                                 "recomputed from the loaded masks."},
    "training.epochs": {"help": "Epochs.", "lo": 1},
    "training.optimizer.name": {"help": "sgdw = SGD + Nesterov momentum + decoupled weight decay (the authors'); "
                                        "sgd, adam, adamw, rmsprop.", "choices": OPTIMIZERS},
    "training.optimizer.learning_rate": {"help": "Initial learning rate lr0.", "gt": 0.0},
    "training.optimizer.momentum": {"help": "Momentum (sgd, sgdw, rmsprop).", "lo": 0.0, "lt": 1.0},
    "training.optimizer.nesterov": {"help": "Nesterov momentum (sgd, sgdw)."},
    "training.optimizer.weight_decay": {"help": "Decoupled decay per step at lr0 (var -= wd_t * var, wd_t follows "
                                                "the lr schedule); sgdw and adamw.", "lo": 0.0},
    "training.schedule.name": {"help": "exponential_decay, cosine_decay, plateau (paper's ResNet schedule on the "
                                       "training loss) or constant.", "choices": SCHEDULES},
    "training.schedule.decay_epochs": {"help": "exponential: lr0 * rate^(epoch / decay_epochs).", "gt": 0.0},
    "training.schedule.decay_rate": {"help": "exponential: decay factor per decay_epochs.", "gt": 0.0, "hi": 1.0},
    "training.schedule.staircase": {"help": "exponential: decay in steps instead of continuously."},
    "training.schedule.alpha": {"help": "cosine: final lr as a fraction of lr0.", "lo": 0.0, "hi": 1.0},
    "training.schedule.patience": {"help": "plateau: non-improving epochs before reductions start.", "lo": 3},
    "training.schedule.factor": {"help": "plateau: lr (and wd) multiplier per reduction.", "gt": 0.0, "lt": 1.0},
    "training.schedule.cooldown": {"help": "plateau: epochs without reduction after one.", "lo": 0},
    "training.schedule.start_epoch": {"help": "plateau: complete epochs before the first check (the authors: 10).",
                                      "lo": 0},
    "training.schedule.max_reductions": {"help": "plateau: training stops after this many reductions.", "lo": 1},
    "training.schedule.min_delta": {"help": "plateau: improvement below this does not count.", "lo": 0.0},
    "training.jit_compile": {"help": "Compile the train step with XLA."},
    "training.mixed_precision": {"help": "null, mixed_float16 or mixed_bfloat16 (variables stay float32).",
                                 "choices": PRECISIONS},
    "training.distribute": {"help": "null, mirrored (all local devices) or multi_worker (TF_CONFIG).",
                            "choices": STRATEGIES},
    "training.deterministic": {"help": "TF op determinism (for the whole process): same config + seed gives identical "
                                       "results. Keras disables XLA under it, so jit_compile needs false here."},
    "training.tensorboard": {"help": "Write TensorBoard scalars and mask images into the run directory."},
    "training.verbose": {"help": "0 silent, 1 one line per epoch.", "lo": 0, "hi": 2},
    "sweep": {"help": "Optional: run every combination of `grid` (key -> list, cartesian product) and `zip` (keys "
                      "-> lists of equal length, paired) into its own results directory."},
    "sweep.grid": {"help": "Dotted key -> list of values; all combinations."},
    "sweep.zip": {"help": "Dotted key -> list of values; the i-th values go together."},
}


def _fill_paper_choices():
    from paper_results import PAPER_RESULTS

    RULES["paper"]["choices"] = tuple(PAPER_RESULTS)


_fill_paper_choices()


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


# Common abbreviations that difflib cannot match by spelling.
_ALIASES = {"lr": "learning_rate", "wd": "weight_decay", "seed": "base_seed", "bs": "batch_size",
            "arch": "architecture", "p": "threshold_fraction", "tau": "threshold_fraction", "n_runs": "runs"}


def _did_you_mean(key: str, options) -> str:
    options = list(options)
    close = [_ALIASES[key]] if _ALIASES.get(key) in options else difflib.get_close_matches(key, options, n=1,
                                                                                           cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_rules(path: str, value, errors: list[ConfigError]) -> None:
    rule = RULES.get(path, {})
    choices = rule.get("choices")
    if choices is not None and isinstance(value, str) and value not in choices:
        errors.append(ConfigError(path, f"unknown value {value!r}{_did_you_mean(value, choices)}; allowed: "
                                        f"{', '.join(choices)}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        bounds = [("lo", lambda v, b: v >= b, ">="), ("hi", lambda v, b: v <= b, "<="),
                  ("gt", lambda v, b: v > b, ">"), ("lt", lambda v, b: v < b, "<")]
        for name, ok, symbol in bounds:
            if name in rule and not ok(value, rule[name]):
                errors.append(ConfigError(path, f"{value} is out of range: must be {symbol} {rule[name]}"))


def _convert(path: str, tp, value, errors: list[ConfigError]):
    """Check `value` against type `tp`; return the typed value (dataclasses built) or None after an error."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in typing.get_args(tp):
                return None
        for arg in args:  # first the arms whose shape fits
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _build(path, arg, value, errors)
            if arg in (str,) and isinstance(value, str):
                _check_rules(path, value, errors)
                return value
            if arg in (int, float, bool) and _scalar_fits(arg, value):
                return _convert(path, arg, value, errors)
        errors.append(ConfigError(path, f"expected {_type_name(tp)}, got {value!r}"))
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(ConfigError(path, f"expected a mapping of keys, got {value!r}"))
            return None
        return _build(path, tp, value, errors)
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(ConfigError(path, f"expected a mapping, got {value!r}"))
            return None
        return {str(k): v for k, v in value.items()}
    if tp in (int, float, bool, str):
        if not _scalar_fits(tp, value):
            errors.append(ConfigError(path, f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"))
            return None
        value = float(value) if tp is float else value
        _check_rules(path, value, errors)
        return value
    raise TypeError(f"schema type {tp} of {path} is not supported")


def _scalar_fits(tp, value) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def _build(prefix: str, cls, raw: dict, errors: list[ConfigError]):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            errors.append(ConfigError(path, f"unknown key{_did_you_mean(str(key), names)}; allowed keys here: "
                                            f"{', '.join(names)}"))
            continue
        kwargs[key] = _convert(path, hints[key], value, errors)
    if any(v is None and not _optional(hints[k]) for k, v in kwargs.items()):
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a spec's own __post_init__ check
        errors.append(ConfigError(prefix, str(exc)))
        return None


def _optional(tp) -> bool:
    return typing.get_origin(tp) is Union and type(None) in typing.get_args(tp)


def _cross_checks(cfg: ExperimentConfig, base_dir: Path, errors: list[ConfigError]) -> None:
    """Checks between keys: architecture vs dataset, classes, files, sweeps."""
    arch, dataset = cfg.model.architecture, cfg.data.dataset
    if dataset not in ARCHITECTURE_DATASETS[arch]:
        errors.append(ConfigError("model.architecture", f"{arch} does not fit dataset {dataset}; {arch} is for "
                                                        f"{', '.join(ARCHITECTURE_DATASETS[arch])}"))
    if cfg.model.num_classes is not None and cfg.model.num_classes != DATASETS[dataset]:
        errors.append(ConfigError("model.num_classes", f"{cfg.model.num_classes} classes do not fit {dataset}, "
                                                       f"which has {DATASETS[dataset]}; set it to "
                                                       f"{DATASETS[dataset]} or null"))
    if arch.startswith("resnet") and float(cfg.model.width) != int(cfg.model.width):
        errors.append(ConfigError("model.width", f"ResNet widths are integers, got {cfg.model.width}"))
    if cfg.data.augment and dataset == "mnist":
        errors.append(ConfigError("data.augment", "augmentation (crop and flip) is for CIFAR; use false or null"))
    if cfg.data.source == "local" and not cfg.data.data_dir:
        errors.append(ConfigError("data.data_dir", "the local source needs data_dir (e.g. ../shared/data)"))
    elif cfg.data.source == "local" and not Path(cfg.data.data_dir).is_dir():
        errors.append(ConfigError("data.data_dir", f"directory {cfg.data.data_dir} does not exist"))
    if cfg.model.mask_mode == "none" and cfg.model.masks_file:
        errors.append(ConfigError("model.masks_file", "a baseline (mask_mode: none) has no masks; remove the key"))
    for key in ("weights_file", "masks_file"):
        pattern = getattr(cfg.model, key)
        if pattern is None:
            continue
        for run in range(cfg.runs):
            path = resolve_run_file(pattern, run, base_dir)
            if not path.is_file():
                errors.append(ConfigError(f"model.{key}", f"file {path} (run {run}) does not exist; create it "
                                                          f"with init_example.py"))
                break
    if cfg.training.jit_compile and cfg.training.deterministic:
        errors.append(ConfigError("training.jit_compile", "Keras turns XLA off while TF op determinism is on; set "
                                                          "training.deterministic: false to compile with XLA"))
    if cfg.training.distribute and cfg.data.batch_size < 2:
        errors.append(ConfigError("data.batch_size", "distributed training needs a batch of at least 2"))


def resolve_run_file(pattern: str, run: int, base_dir: Path | None = None) -> Path:
    path = Path(pattern.replace("{run}", f"{run:03d}"))
    return path if path.is_absolute() or base_dir is None else (base_dir / path)


def parse_config(raw: dict, *, base_dir: Path | str = ".", source: str = "config") -> ExperimentConfig:
    """Validate a raw mapping into an ExperimentConfig (sweep values are validated per combination)."""
    errors: list[ConfigError] = []
    if not isinstance(raw, dict):
        raise ConfigErrors([ConfigError("", f"the top level must be a mapping of keys, got {type(raw).__name__}")],
                           source)
    cfg = _build("", ExperimentConfig, raw, errors)
    if cfg is not None and not errors:
        _cross_checks(cfg, Path(base_dir), errors)
    if cfg is not None and cfg.sweep is not None and not errors:
        for combo in expand_sweep(cfg.sweep, errors):
            child = apply_overrides(strip_sweep(raw), combo, errors)
            sub_errors: list[ConfigError] = []
            sub = _build("", ExperimentConfig, child, sub_errors)
            if sub is not None and not sub_errors:
                _cross_checks(sub, Path(base_dir), sub_errors)
            label = ", ".join(f"{k}={v}" for k, v in combo.items())
            errors.extend(ConfigError(e.key, f"{e} (in sweep combination {label})".split(": ", 1)[-1])
                          for e in sub_errors)
    if errors:
        raise ConfigErrors(errors, source)
    return cfg


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigErrors([ConfigError("", f"config file {path} does not exist")], str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigErrors([ConfigError("", f"unreadable YAML at {where}{problem}")], str(path)) from None
    return raw if raw is not None else {}


def load_config(path: str | os.PathLike, overrides: list[str] = (), **cli) -> tuple[ExperimentConfig, dict]:
    """Read, override (`key.sub=value` strings and CLI shortcuts) and validate; returns (config, raw mapping)."""
    raw = read_yaml(path)
    errors: list[ConfigError] = []
    parsed = dict(parse_override(o, errors) for o in overrides) if overrides else {}
    shortcuts = {"runs": cli.get("runs"), "output_dir": cli.get("out"), "data.source": cli.get("data_source"),
                 "data.data_dir": cli.get("data_dir"), "training.epochs": cli.get("epochs")}
    parsed.update({k: v for k, v in shortcuts.items() if v is not None})
    raw = apply_overrides(raw, parsed, errors)
    if errors:
        raise ConfigErrors(errors, str(path))
    # Relative file paths in a config are relative to the working directory (where the user runs the looper).
    return parse_config(raw, base_dir=Path("."), source=str(path)), raw


# --------------------------------------------------------------------------------------------------------------
# Overrides and sweeps
# --------------------------------------------------------------------------------------------------------------
def parse_override(text: str, errors: list[ConfigError]) -> tuple[str, Any]:
    """'training.optimizer.learning_rate=0.01' -> ('training.optimizer.learning_rate', 0.01) (value read as YAML)."""
    if "=" not in text:
        errors.append(ConfigError("--set", f"expected key.sub=value, got {text!r}"))
        return ("", None)
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


def apply_overrides(raw: dict, overrides: dict[str, Any], errors: list[ConfigError]) -> dict:
    """A copy of `raw` with dotted keys set (intermediate mappings created; a preset string replaced by a mapping
    when a sub-key of it is set)."""
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        if not key:
            continue
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw


def strip_sweep(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if k != "sweep"}


def expand_sweep(sweep: SweepConfig, errors: list[ConfigError] | None = None) -> list[dict[str, Any]]:
    """Combinations of a sweep: the cartesian product of `grid`, each combined with every paired row of `zip`."""
    errors = errors if errors is not None else []
    for section, table in (("grid", sweep.grid), ("zip", sweep.zip)):
        for key, values in table.items():
            if not isinstance(values, list) or not values:
                errors.append(ConfigError(f"sweep.{section}.{key}", "expected a non-empty list of values"))
    lengths = {len(v) for v in sweep.zip.values() if isinstance(v, list)}
    if len(lengths) > 1:
        errors.append(ConfigError("sweep.zip", f"zip lists must have equal lengths, got {sorted(lengths)}"))
    if errors:
        raise ConfigErrors(errors, "sweep")
    grid_keys = list(sweep.grid)
    grid = [dict(zip(grid_keys, values)) for values in itertools.product(*sweep.grid.values())] or [{}]
    n_zip = lengths.pop() if lengths else 0
    zipped = [{k: v[i] for k, v in sweep.zip.items()} for i in range(n_zip)] or [{}]
    return [{**g, **z} for g in grid for z in zipped]


def combinations(cfg: ExperimentConfig, raw: dict) -> list[tuple[dict[str, Any], ExperimentConfig, dict]]:
    """[(overrides, config, raw)] for every combination of the sweep, or [({}, cfg, raw)] without one."""
    if cfg.sweep is None:
        return [({}, cfg, raw)]
    out = []
    for combo in expand_sweep(cfg.sweep):
        child_raw = apply_overrides(strip_sweep(raw), combo, [])
        out.append((combo, parse_config(child_raw), child_raw))
    return out


# --------------------------------------------------------------------------------------------------------------
# Naming
# --------------------------------------------------------------------------------------------------------------
# Keys that change where or how results are reported, not the results themselves.
_NOT_HASHED = ("runs", "output_dir", "paper", "sweep", "name")
_NOT_HASHED_TRAINING = ("verbose", "tensorboard")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg: ExperimentConfig) -> str:
    """8 hex digits over every key that affects a run's result (runs, paths of outputs and reporting excluded)."""
    d = to_dict(cfg)
    for key in _NOT_HASHED:
        d.pop(key, None)
    for key in _NOT_HASHED_TRAINING:
        d["training"].pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


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
    filesystem-safe)."""
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
# Reference
# --------------------------------------------------------------------------------------------------------------
def _defaults(cls, prefix="") -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            out.update(_defaults(type(default), f"{path}."))
        else:
            out[path] = default
    return out


def reference_markdown() -> str:
    """The config reference: every key with its default, allowed values and meaning."""
    defaults = _defaults(ExperimentConfig)
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key, rule in RULES.items():
        allowed = ", ".join(rule["choices"]) if rule.get("choices") else ""
        bounds = [f"{s} {rule[n]}" for n, s in (("lo", ">="), ("gt", ">"), ("hi", "<="), ("lt", "<")) if n in rule]
        allowed = allowed or " and ".join(bounds)
        default = defaults.get(key, "")
        if dataclasses.is_dataclass(default):
            default = ""
        lines.append(f"| `{key}` | `{default}` | {allowed} | {rule['help']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--reference"]:
        print("# Config reference\n\nGenerated by `python config.py --reference > configs/README.md`: every key a "
              "config may hold, its default, allowed values and meaning. Unknown keys, wrong types, out-of-range "
              "values and unknown names are refused before anything runs (exit code 2).\n\n"
              "Sections: top-level experiment keys, `data`, `model`, `training`, and an optional `sweep`. Sweep "
              "keys are dotted paths (`model.threshold_fraction`); each combination is validated like a config of "
              "its own.\n")
        print(reference_markdown())
    else:
        print("usage: python config.py --reference > configs/README.md")
