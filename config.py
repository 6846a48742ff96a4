"""The experiment config: a typed schema, validated once, up front, before any data is loaded or model is built.

A config is YAML with four sections (experiment keys at the top, then `data`, `model`, `training`) and an optional
`sweep`. Every key is a dataclass field declared with `hparams.rule` (default, help, allowed values, bounds); the
optimiser, schedule and initialisation sections *are* the library's specs (`hparams.OptimizerSpec`,
`ScheduleSpec`, `InitSpec`), so a bound is written once and the reference in configs/README.md is generated from
the same fields (`python config.py --reference`).

Every problem is a `ConfigError` whose one-line message names the key and the fix; `load_config` collects all
of them (so a user sees every mistake at once). The CLI turns them into exit code 2 without a traceback.

This module imports no TensorFlow (nor anything that does): a mistyped key is refused at the speed of Python.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import itertools
import os
import typing
from pathlib import Path
from typing import Any, Optional, Union

import yaml

import architectures
import backends
import data_preprocessor
import hparams
from hparams import InitSpec, OptimizerSpec, ScheduleSpec, rule
from paper_results import BASELINE_SUFFIX, PAPER_RESULTS, baseline_of

DATASET_CLASSES = {name: info.num_classes for name, info in data_preprocessor.DATASETS.items()}
BASELINE_MODE = "none"  # mask_mode of the dense, trainable baseline
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
class DataConfig:
    dataset: str = rule("mnist", help="Dataset.", choices=tuple(data_preprocessor.DATASETS))
    source: str = rule("tfds", help="tfds (downloads on first use), local (the standard archives in data_dir, no "
                                    "network) or synthetic (small learnable data of the real shapes, for tests and "
                                    "smoke runs).", choices=data_preprocessor.SOURCES)
    data_dir: Optional[str] = rule(None, help="Directory of mnist.npz / cifar-10-python.tar.gz / "
                                              "cifar-100-python.tar.gz for the local source (tfds: its data_dir).")
    batch_size: int = rule(128, help="Global batch size (over all devices).", lo=1)
    augment: Optional[bool] = rule(None, help="Pad-4 random crop + flip on the training set; null = on for "
                                              "CIFAR-100 only.")
    shuffle: bool = rule(True, help="Reshuffle the training set every epoch (the order is a function of seed and "
                                    "epoch); false keeps the file order (the authors' MNIST pipeline).")
    synthetic_train: int = rule(data_preprocessor.SYNTHETIC_TRAIN, help="Training examples of the synthetic source.",
                                lo=1)
    synthetic_test: int = rule(data_preprocessor.SYNTHETIC_TEST, help="Test examples of the synthetic source.", lo=1)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str = rule("fcn", help="Network.", choices=tuple(architectures.ARCHITECTURES))
    mask_mode: str = rule("signed", help="signed (keep/hide/invert, the paper), binary (keep/hide, Zhou et al.), "
                                         "topk (edge-popup, Ramanujan et al.) or none (the dense, trainable "
                                         "baseline).", choices=hparams.MASK_MODES + (BASELINE_MODE,))
    threshold_fraction: float = hparams.same_rule(hparams.MaskSpec, "threshold_fraction")
    topk_fraction: float = hparams.same_rule(hparams.MaskSpec, "topk_fraction")
    weight_init: Union[str, InitSpec, None] = rule(
        None, help="Frozen weights (Supermask) or initial weights (baseline): a preset or {distribution, scaling, "
                   "factor}; null = elus for a Supermask, elu_uniform for a baseline.",
        choices=tuple(hparams.WEIGHT_PRESETS))
    mask_init: Union[str, InitSpec] = rule("xavier_uniform", help="Initial real-valued masks: a preset or "
                                                                  "{distribution, scaling, factor}.",
                                           choices=tuple(hparams.MASK_PRESETS))
    width: float = rule(1.0, help="Width multiplier (Conv: every layer; ResNet: an integer, 16w/32w/64w filters).",
                        gt=0.0)
    num_classes: Optional[int] = rule(None, help="Output classes; null = the dataset's.", lo=1)
    batch_norm: str = rule("learned", help="ResNet BN: learned, none, or frozen (the authors' inference-mode BN).",
                           choices=hparams.BATCH_NORM_MODES)
    stem_batch_norm: Optional[str] = rule(None, help="ResNet stem BN mode; null = batch_norm.",
                                          choices=hparams.BATCH_NORM_MODES)
    dropout: float = rule(0.0, help="Dropout rate after hidden FC layers (the paper: 0).", lo=0.0, lt=1.0)
    weights_file: Optional[str] = rule(None, help="npz from init_example.py with the frozen kernels; '{run}' is "
                                                  "replaced by the run index (e.g. inits/fcn/run_{run}.npz).")
    masks_file: Optional[str] = rule(None, help="npz from init_example.py with the initial masks ('{run}' as "
                                                "above); tau is recomputed from the loaded masks.")

    @property
    def masked(self) -> bool:
        return self.mask_mode != BASELINE_MODE

    @property
    def resolved_weight_init(self) -> Union[str, InitSpec]:
        """weight_init, or the default of the mask mode (elus for a Supermask, elu_uniform for a baseline)."""
        return self.weight_init if self.weight_init is not None else hparams.DEFAULT_WEIGHT_INIT[self.masked]


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    epochs: int = rule(100, help="Epochs.", lo=1)
    optimizer: OptimizerSpec = rule(OptimizerSpec(), help="The optimiser (hparams.OptimizerSpec).")
    schedule: ScheduleSpec = rule(ScheduleSpec(), help="The learning-rate schedule (hparams.ScheduleSpec).")
    jit_compile: bool = rule(False, help="Compile the train step with XLA.")
    mixed_precision: Optional[str] = rule(None, help="null, mixed_float16 or mixed_bfloat16 (variables stay "
                                                     "float32).", choices=PRECISIONS)
    distribute: Optional[str] = rule(None, help="null, mirrored (all local devices) or multi_worker (TF_CONFIG).",
                                     choices=STRATEGIES)
    deterministic: bool = rule(True, help="TF op determinism (for the whole process): same config + seed gives "
                                          "identical results. Keras disables XLA under it, so jit_compile needs "
                                          "false here.")
    checkpoint_every: int = rule(1, help="Write the run's checkpoint (masks, optimizer, schedule, history) every N "
                                         "epochs, so that a killed run resumes there; 0 = never. Removed when the "
                                         "run ends.", lo=0)
    tensorboard: bool = rule(False, help="Write TensorBoard scalars and mask images into the run directory.")
    verbose: int = rule(1, help="0 silent, 1 one line per epoch, 2 and Keras' progress bar.", lo=0, hi=2)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    grid: dict[str, list] = rule(help="Dotted key -> list of values; all combinations.", default_factory=dict)
    zip: dict[str, list] = rule(help="Dotted key -> list of values; the i-th values go together.",
                                default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    name: str = rule("experiment", help="Experiment name; the results directory is named from it and a hash of the "
                                        "settings that differ from the defaults.")
    paper: Optional[str] = rule(None, help="Row of the paper's results table to compare with (fcn, conv2, ..., "
                                           "resnet110, or *_baseline).", choices=tuple(PAPER_RESULTS))
    runs: int = rule(1, help="Number of runs; run i uses seed base_seed + i (seeds are replicates).", lo=1)
    base_seed: int = rule(7531, help="Seed of run 0 (the authors used 7531).", lo=0)
    output_dir: str = rule("results", help="Root of the results directories.")
    data: DataConfig = rule(DataConfig(), help="Data section.")
    model: ModelConfig = rule(ModelConfig(), help="Model section.")
    training: TrainingConfig = rule(TrainingConfig(), help="Training section.")
    sweep: Optional[SweepConfig] = rule(None, help="Optional: run every combination of `grid` (key -> list, "
                                                   "cartesian product) and `zip` (keys -> lists of equal length, "
                                                   "paired) into its own results directory.")

    @property
    def num_classes(self) -> int:
        return self.model.num_classes or DATASET_CLASSES[self.data.dataset]

    def seeds(self) -> list[int]:
        return [self.base_seed + i for i in range(self.runs)]


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------
# Common abbreviations that difflib cannot match by spelling.
_ALIASES = {"lr": "learning_rate", "wd": "weight_decay", "seed": "base_seed", "bs": "batch_size",
            "arch": "architecture", "p": "threshold_fraction", "tau": "threshold_fraction", "n_runs": "runs",
            **hparams.RENAMED_PRESETS}


def _did_you_mean(key: str, options) -> str:
    options = list(options)
    close = [_ALIASES[key]] if _ALIASES.get(key) in options else difflib.get_close_matches(key, options, n=1,
                                                                                           cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_value(path: str, field: dataclasses.Field, value, errors: list[ConfigError]) -> None:
    for problem in hparams.value_problems(field, value):
        if problem.startswith("unknown value"):
            problem = problem.replace("; allowed", f"{_did_you_mean(value, field.metadata['choices'])}; allowed", 1)
        errors.append(ConfigError(path, problem))


def _convert(path: str, field: dataclasses.Field, tp, value, errors: list[ConfigError]):
    """Check `value` against type `tp` (and the field's rule); return the typed value (dataclasses built) or None
    after an error."""
    origin = typing.get_origin(tp)
    if origin is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in args:  # the first arm whose shape fits
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return _build(path, arg, value, errors)
            if arg in (int, float, bool, str) and hparams.scalar_fits(arg, value):
                return _convert(path, field, arg, value, errors)
        errors.append(ConfigError(path, f"expected {hparams.describe_type(tp)}, got {value!r}"))
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
        if not hparams.scalar_fits(tp, value):
            errors.append(ConfigError(path, f"expected {hparams.describe_type(tp)}, got {value!r} "
                                            f"({type(value).__name__})"))
            return None
        value = float(value) if tp is float else value
        _check_value(path, field, value, errors)
        return value
    raise TypeError(f"schema type {tp} of {path} is not supported")


def _build(prefix: str, cls, raw: dict, errors: list[ConfigError]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    before = len(errors)
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            errors.append(ConfigError(path, f"unknown key{_did_you_mean(str(key), fields)}; allowed keys here: "
                                            f"{', '.join(fields)}"))
            continue
        kwargs[key] = _convert(path, fields[key], hints[key], value, errors)
    if len(errors) > before:
        return None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a spec's own check (kept as a safety net: the rules ran above)
        key = f"{prefix}.{exc.field}" if isinstance(exc, hparams.SpecError) and prefix else prefix
        errors.append(ConfigError(key, str(exc).split(": ", 1)[-1]))
        return None


def _cross_checks(cfg: ExperimentConfig, base_dir: Path, errors: list[ConfigError]) -> None:
    """Checks between keys: architecture vs dataset, classes, files, sweeps."""
    arch, dataset = cfg.model.architecture, cfg.data.dataset
    datasets = architectures.ARCHITECTURES[arch].datasets
    if dataset not in datasets:
        errors.append(ConfigError("model.architecture", f"{arch} does not fit dataset {dataset}; {arch} is for "
                                                        f"{', '.join(datasets)}"))
    classes = DATASET_CLASSES[dataset]
    if cfg.model.num_classes is not None and cfg.model.num_classes != classes:
        errors.append(ConfigError("model.num_classes", f"{cfg.model.num_classes} classes do not fit {dataset}, "
                                                       f"which has {classes}; set it to {classes} or null"))
    takes, defaults = architectures.ARCHITECTURES[arch].options, ModelConfig()
    for key in architectures.OPTIONS:
        default = getattr(defaults, key)
        if key not in takes and getattr(cfg.model, key) != default:
            users = [a.name for a in architectures.ARCHITECTURES.values() if key in a.options]
            errors.append(ConfigError(f"model.{key}", f"{arch} does not use it (only {', '.join(users)} do); remove "
                                                      f"the key or set it to {'null' if default is None else default}"))
    if arch.startswith("resnet") and float(cfg.model.width) != int(cfg.model.width):
        errors.append(ConfigError("model.width", f"ResNet widths are integers, got {cfg.model.width}"))
    if cfg.paper is not None:
        row = PAPER_RESULTS[cfg.paper]
        if row.dataset_key != dataset:
            errors.append(ConfigError("paper", f"row {cfg.paper} is on {row.dataset}, this config on {dataset}; "
                                               f"set paper to a row of {dataset} or null"))
        baseline_row = cfg.paper.endswith(BASELINE_SUFFIX)
        if baseline_row == cfg.model.masked:
            wanted = "mask_mode none (a dense baseline)" if baseline_row else "a masked mode (a Supermask row)"
            other = cfg.paper.removesuffix(BASELINE_SUFFIX) if baseline_row else baseline_of(cfg.paper)
            errors.append(ConfigError("paper", f"row {cfg.paper} needs {wanted}; this config has mask_mode "
                                               f"{cfg.model.mask_mode}: set paper: {other} or null"))
    if cfg.data.augment and dataset == "mnist":
        errors.append(ConfigError("data.augment", "augmentation (crop and flip) is for CIFAR; use false or null"))
    if cfg.data.source == "local" and (problem := data_preprocessor.local_archive_problem(dataset, cfg.data.data_dir)):
        errors.append(ConfigError("data.data_dir", problem))
    if not cfg.model.masked and cfg.model.masks_file:
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
    backend = backends.configured()
    if cfg.training.jit_compile and cfg.training.deterministic and backend == backends.TENSORFLOW:
        errors.append(ConfigError("training.jit_compile", "Keras turns XLA off while TF op determinism is on; set "
                                                          "training.deterministic: false to compile with XLA"))
    if backend != backends.TENSORFLOW:
        for key, what in (("distribute", "tf.distribute strategies"), ("tensorboard", "the TensorBoard summaries")):
            if getattr(cfg.training, key):
                errors.append(ConfigError(f"training.{key}", f"{what} need the TensorFlow backend, and Keras runs "
                                                             f"on {backend} here; set it to "
                                                             f"{'null' if key == 'distribute' else 'false'}"))
    if cfg.training.distribute and cfg.data.batch_size < 2:
        errors.append(ConfigError("data.batch_size", "distributed training needs a batch of at least 2"))


def _require_mapping(raw, source: str) -> None:
    """Refuse a config whose top level is not a mapping (a YAML list or scalar), in one line."""
    if not isinstance(raw, dict):
        raise ConfigErrors([ConfigError("", f"the top level must be a mapping of keys, got {type(raw).__name__}")],
                           source)


def run_index(run: int) -> str:
    """The 3-digit index of run `run` ('007'), in run folder names (run_folder.run_name) and init-file patterns."""
    return f"{run:03d}"


def resolve_run_file(pattern: str, run: int, base_dir: Path | None = None) -> Path:
    """The init file of run `run`: '{run}' in `pattern` becomes the run's index (run_index)."""
    path = Path(pattern.replace("{run}", run_index(run))).expanduser()
    return path if path.is_absolute() or base_dir is None else (base_dir / path)


def _build_config(raw: dict, errors: list[ConfigError]) -> ExperimentConfig | None:
    """The ExperimentConfig of a raw mapping, its partial init mappings completed first (None after an error)."""
    return _build("", ExperimentConfig, complete_preset_mappings(raw, errors), errors)


def parse_config(raw: dict, *, base_dir: Path | str = ".", source: str = "config") -> ExperimentConfig:
    """Validate a raw mapping into an ExperimentConfig (sweep values are validated per combination)."""
    errors: list[ConfigError] = []
    _require_mapping(raw, source)
    cfg = _build_config(raw, errors)
    if cfg is not None and not errors:
        _cross_checks(cfg, Path(base_dir), errors)
    if cfg is not None and cfg.sweep is not None and not errors:
        where: dict[tuple[str, str], list[str]] = {}  # one error per problem, however many combinations share it
        for combo in expand_sweep(cfg.sweep, errors):
            sub_errors: list[ConfigError] = []
            child = apply_overrides(strip_sweep(raw), combo, sub_errors)
            sub = None if sub_errors else _build_config(child, sub_errors)
            if sub is not None and not sub_errors:
                _cross_checks(sub, Path(base_dir), sub_errors)
            label = ", ".join(f"{k}={v}" for k, v in combo.items())
            for e in sub_errors:
                where.setdefault((e.key, str(e).split(": ", 1)[-1]), []).append(label)
        for (key, message), labels in where.items():
            more = f" and {len(labels) - 1} more" if len(labels) > 1 else ""
            errors.append(ConfigError(key, f"{message} (in sweep combination {labels[0]}{more})"))
    if errors:
        raise ConfigErrors(errors, source)
    return cfg


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the later one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            if first != key_node.start_mark.line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {first + 1} and {key_node.start_mark.line + 1}"
                                f"); keep one", key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | os.PathLike) -> dict:
    """A config file as a mapping; an absent, empty, non-UTF-8 or unreadable file, or a key given twice, is a
    ConfigErrors naming the file (and line)."""
    path = Path(path)

    def fail(message):
        raise ConfigErrors([ConfigError("", message)], str(path))

    if path.is_dir():
        yamls = sorted(path.glob("*.yaml"))
        fail(f"{path} is a folder; name a config file in it" + (f", e.g. {yamls[0]}" if yamls else ""))
    if not path.is_file():
        fail(f"config file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"the file is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it "
             f"as UTF-8")
    except OSError as exc:
        fail(f"cannot read the file: {exc.strerror or exc}")
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        fail(f"unreadable YAML at {where}{problem}")
    if raw is None:
        fail("the config file is empty; start from one of configs/*.yaml")
    return raw


def load_config(path: str | os.PathLike, overrides: list[str] = (), **cli) -> tuple[ExperimentConfig, dict]:
    """Read, override (`key.sub=value` strings and CLI shortcuts) and validate; returns (config, raw mapping)."""
    raw = read_yaml(path)
    _require_mapping(raw, str(path))
    errors: list[ConfigError] = []
    parsed = dict(parse_override(o, errors) for o in overrides) if overrides else {}
    shortcuts = {"runs": cli.get("runs"), "output_dir": cli.get("out"), "data.source": cli.get("data_source"),
                 "data.data_dir": cli.get("data_dir"), "training.epochs": cli.get("epochs")}
    parsed.update({k: v for k, v in shortcuts.items() if v is not None})
    swept = _swept_keys(raw.get("sweep"))
    for key in parsed:
        for other, section in swept.items():
            if key == other or key.startswith(other + "."):  # (one above it, e.g. a preset, the sweep refines)
                errors.append(ConfigError(key, f"the sweep sets {other} ({section}), which would replace this "
                                               f"override in every combination; change the sweep's values instead"))
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
    if not key.strip():
        errors.append(ConfigError("--set", f"expected key.sub=value, got {text!r} (no key before '=')"))
        return ("", None)
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        return key.strip(), value


# The keys whose value may be a preset name standing for a mapping of InitSpec fields.
_PRESET_KEYS = {"model.weight_init": hparams.WEIGHT_PRESETS, "model.mask_init": hparams.MASK_PRESETS}


def _preset_fields(raw: dict, key: str, value, errors: list[ConfigError]) -> dict | None:
    """The mapping a preset-valued key stands for, so that one of its fields can be set: the named preset's fields
    (`he_uniform` -> {distribution: uniform, scaling: he, factor: 1.0}); for an absent key, its default's (for
    weight_init, the default of the config's mask mode)."""
    if value is None:
        if key == "model.weight_init":
            mode = (raw.get("model") or {}).get("mask_mode", ModelConfig.mask_mode)
            value = hparams.DEFAULT_WEIGHT_INIT[mode != BASELINE_MODE]
        else:
            value = ModelConfig.mask_init
    try:
        return dataclasses.asdict(hparams.init_spec(value, _PRESET_KEYS[key]))
    except (TypeError, ValueError) as exc:
        errors.append(ConfigError(key, str(exc)))
        return None


def complete_preset_mappings(raw: dict, errors: list[ConfigError]) -> dict:
    """`raw` with each preset key given as a partial mapping (`model.mask_init: {scaling: he}`) completed from the
    key's default, as `--set model.mask_init.scaling=he` completes it: the fields not named keep the default
    preset's (xavier_uniform's uniform distribution for the masks), never InitSpec's own defaults."""
    model = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(model, dict):
        return raw
    done = None
    for key in _PRESET_KEYS:
        name = key.split(".", 1)[1]
        given = model.get(name)
        if not isinstance(given, dict) or not set(given) < {f.name for f in dataclasses.fields(InitSpec)}:
            continue  # a preset name, a full mapping, or unknown keys that the schema will name
        default = _preset_fields(raw, key, None, errors)
        if default is not None:
            done = done or {**raw, "model": dict(model)}
            done["model"][name] = {**default, **given}
    return done or raw


def apply_overrides(raw: dict, overrides: dict[str, Any], errors: list[ConfigError] | None = None) -> dict:
    """A copy of `raw` with dotted keys set. Absent intermediate mappings are created; a preset name
    (`model.mask_init: he_uniform`) becomes the mapping of its fields when one of them is set, so that
    `model.mask_init.factor=2` changes the factor of *that* preset; setting a key below any other scalar or list
    is an error (appended to `errors`; raised as ConfigErrors when `errors` is None)."""
    raw = copy.deepcopy(raw)
    problems: list[ConfigError] = []
    inside_preset = tuple(f"{k}." for k in _PRESET_KEYS)
    # Keys inside a preset last, so that a preset named alongside (model.mask_init=he_uniform) is the one they change.
    for key, value in sorted(overrides.items(), key=lambda kv: kv[0].startswith(inside_preset)):
        if not key:  # a --set that parse_override already refused
            continue
        node, parts = raw, key.split(".")
        for depth, part in enumerate(parts[:-1]):
            path = ".".join(parts[:depth + 1])
            current = node.get(part)
            if path in _PRESET_KEYS and isinstance(current, str):
                current = _preset_fields(raw, path, current, problems)
                if current is None:
                    break
            elif current is None:  # an absent preset key too: completed from its default when parsed, per
                current = {}       # sweep combination (a swept mask_mode decides weight_init's default)
            elif not isinstance(current, dict):
                problems.append(ConfigError(path, f"is {current!r}, not a mapping, so {key} cannot be set; give "
                                                  f"{path} as a mapping of keys"))
                break
            node[part] = current
            node = current
        else:
            node[parts[-1]] = copy.deepcopy(value)  # a sweep's mapping value stays the sweep's
    if problems and errors is None:
        raise ConfigErrors(problems)
    if errors is not None:
        errors.extend(problems)
    return raw


def _swept_keys(sweep) -> dict[str, str]:
    """{dotted key: 'sweep.grid' or 'sweep.zip'} of a raw sweep mapping ({} without one)."""
    if not isinstance(sweep, dict):
        return {}
    return {str(key): f"sweep.{section}" for section in ("grid", "zip")
            if isinstance(sweep.get(section), dict) for key in sweep[section]}


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
        child_raw = apply_overrides(strip_sweep(raw), combo)
        out.append((combo, parse_config(child_raw), child_raw))
    return out


def to_dict(cfg) -> dict:
    """The config as plain nested mappings (specs included)."""
    return dataclasses.asdict(cfg)


def flat_items(cfg) -> dict[str, Any]:
    """{'data.dataset': 'mnist', 'training.optimizer.learning_rate': 0.05, ...}: every leaf key of a config (or of
    a dataclass default) by its dotted path. An InitSpec value is one leaf (a mapping)."""
    out: dict[str, Any] = {}

    def walk(node, prefix):
        for field in dataclasses.fields(node):
            value = getattr(node, field.name)
            path = f"{prefix}{field.name}"
            if dataclasses.is_dataclass(value) and not isinstance(value, InitSpec):
                walk(value, path + ".")
            else:
                out[path] = dataclasses.asdict(value) if isinstance(value, InitSpec) else value

    walk(cfg, "")
    return out


# --------------------------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------------------------
def schema_fields(cls=ExperimentConfig, prefix: str = "", defaults=None) -> list[tuple[str, dataclasses.Field, Any]]:
    """[(dotted key, field, default)] of every key a config may hold, sections and sub-keys of InitSpec mappings
    included, in declaration order. A preset key's sub-keys show the fields of its default preset (what a partial
    mapping is completed from; for weight_init, a Supermask's)."""
    out = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        path = f"{prefix}{field.name}"
        if defaults is not None:
            default = getattr(defaults, field.name)
        else:
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        tp = hints[field.name]
        arms = typing.get_args(tp) if typing.get_origin(tp) is Union else (tp,)
        nested = [a for a in arms if dataclasses.is_dataclass(a)]
        out.append((path, field, default))
        for arm in nested:
            preset = None
            if path in _PRESET_KEYS:
                preset = hparams.init_spec(default if default is not None else hparams.DEFAULT_WEIGHT_INIT[True],
                                           _PRESET_KEYS[path])
            out += schema_fields(arm, path + ".", preset)
    return out


def reference_markdown() -> str:
    """The config reference: every key with its default, allowed values and meaning."""
    lines = ["| key | default | allowed | meaning |", "|---|---|---|---|"]
    for key, field, default in schema_fields():
        meta = field.metadata
        allowed = ", ".join(meta["choices"]) if meta.get("choices") else ""
        bounds = [f"{s} {meta[n]}" for n, s, _ in hparams.BOUNDS if meta.get(n) is not None]
        allowed = allowed or " and ".join(bounds)
        shown = "" if dataclasses.is_dataclass(default) else f"`{default}`"
        lines.append(f"| `{key}` | {shown} | {allowed} | {meta['help']} |")
    return "\n".join(lines)


REFERENCE_HEADER = (
    "# Config reference\n\nGenerated by `python config.py --reference > configs/README.md`: every key a config may "
    "hold, its default, allowed values and meaning. Unknown keys, wrong types, out-of-range values, unknown names, "
    "a key given twice, an empty or non-UTF-8 file are refused before anything runs (exit code 2).\n\n"
    "Sections: top-level experiment keys, `data`, `model`, `training`, and an optional `sweep`. Sweep keys are "
    "dotted paths (`model.threshold_fraction`); each combination is validated like a config of its own. Sweep keys "
    "and `--set KEY=VALUE` may name a field of an init preset: `model.mask_init.factor=0.5` on `mask_init: "
    "he_uniform` scales he_uniform (an absent weight_init stands for its mask mode's default). A partial mapping "
    "in the file (`mask_init: {scaling: he}`) is completed the same way, from the key's default preset: the "
    "sub-key defaults below (weight_init's are a Supermask's; a baseline's come from elu_uniform). A `--set` of a key "
    "the sweep sets (or of one below it) is refused: the sweep's values would replace it in every combination. "
    "`paper` must name a row of the config's dataset and kind (a `_baseline` row for mask_mode none), and the "
    "local source's archive must be in data_dir.\n")


def parse_args(argv=None):
    import argparse

    p = argparse.ArgumentParser(description="The config schema's reference (configs/README.md).")
    p.add_argument("--reference", action="store_true", required=True,
                   help="print the reference: python config.py --reference > configs/README.md")
    return p.parse_args(argv)


if __name__ == "__main__":
    parse_args()
    print(REFERENCE_HEADER)
    print(reference_markdown())
