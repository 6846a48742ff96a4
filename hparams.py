"""Typed, validated hyper-parameter specs of the library, importable without TensorFlow.

Every field is declared once, with its default, help text, allowed values and bounds, by `rule(...)`. The specs
check themselves in `__post_init__` (`check`), and the experiment schema (`config.py`) reuses the same fields, the
same checks and the same help text, one problem per key, before anything heavy is imported. The closed name sets
that configs choose from (mask modes, batch-norm modes, optimisers, schedules, initialisation schemes) live here
too, so that `import config` needs no TensorFlow; the modules that implement them import the names from here.

    InitSpec        a distribution scaled by a variance rule (see weight_initializer for the formulas)
    MaskSpec        the threshold fraction p and the topk fraction k (see custom_layers)
    OptimizerSpec   an optimiser and the authors' decoupled weight decay (see model_trainer)
    ScheduleSpec    a learning-rate schedule, the paper's plateau included (see model_trainer)
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

# --------------------------------------------------------------------------------------------------------------
# Closed name sets
# --------------------------------------------------------------------------------------------------------------
MASK_MODES = ("signed", "binary", "topk")  # custom_layers.MaskMode subclasses, one per name
BATCH_NORM_MODES = ("learned", "none", "frozen")  # resnet_networks
DISTRIBUTIONS = ("signed_constant", "constant", "uniform", "normal")  # weight_initializer.sample
SCALINGS = ("he", "xavier", "elu", "elus")  # weight_initializer.scaled_variance
OPTIMIZERS = ("sgdw", "sgd", "adam", "adamw", "rmsprop")  # model_trainer.make_optimizer
SCHEDULES = ("exponential_decay", "cosine_decay", "plateau", "constant")  # model_trainer.make_learning_rate

BOUNDS = (("lo", ">=", lambda v, b: v >= b), ("hi", "<=", lambda v, b: v <= b), ("gt", ">", lambda v, b: v > b),
          ("lt", "<", lambda v, b: v < b))


class SpecError(ValueError):
    """A field of a spec has a wrong value; `field` names it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


# --------------------------------------------------------------------------------------------------------------
# Declaring and checking fields
# --------------------------------------------------------------------------------------------------------------
def rule(default: Any = dataclasses.MISSING, *, help: str, choices: tuple | None = None, lo=None, hi=None, gt=None,
         lt=None, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with its help text, allowed values (`choices`, for string values) and bounds
    (`lo` <= v, v <= `hi`, `gt` < v, v < `lt`)."""
    metadata = {"help": help, "choices": choices, "lo": lo, "hi": hi, "gt": gt, "lt": lt}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_finite_number(value) -> bool:
    """True for an int or float (not a bool) that is neither NaN nor infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def value_problems(field: dataclasses.Field, value) -> list[str]:
    """What is wrong with `value` for `field` by its choices and bounds (types are checked by the caller)."""
    meta = field.metadata
    problems = []
    choices = meta.get("choices")
    if choices is not None and isinstance(value, str) and value not in choices:
        allowed = [*choices, "null"] if field.default is None else choices  # an optional key may be left unset
        problems.append(f"unknown value {value!r}; allowed: {', '.join(allowed)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            return [f"{value} is not a finite number"]
        for name, symbol, ok in BOUNDS:
            bound = meta.get(name)
            if bound is not None and not ok(value, bound):
                problems.append(f"{value} is out of range: must be {symbol} {bound}")
    return problems


def scalar_fits(tp, value) -> bool:
    """Whether `value` has the scalar type `tp` (bool is not an int; an int is a float)."""
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def describe_type(tp) -> str:
    """'an integer', 'a number', 'true or false', 'a string', 'a mapping' or a union of them."""
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(describe_type(a) for a in typing.get_args(tp) if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def check(spec) -> None:
    """Check every scalar field of a spec dataclass (type, choices, bounds); raise SpecError on the first problem.
    Called by the specs' __post_init__."""
    hints = typing.get_type_hints(type(spec))
    for field in dataclasses.fields(spec):
        value = getattr(spec, field.name)
        tp = hints[field.name]
        if tp in (int, float, bool, str):
            if not scalar_fits(tp, value):
                raise SpecError(field.name, f"expected {describe_type(tp)}, got {value!r}")
            problems = value_problems(field, value)
            if problems:
                raise SpecError(field.name, problems[0])


# --------------------------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InitSpec:
    """A distribution scaled by a variance rule: `InitSpec("signed_constant", "elus")` is the paper's ELUS
    signed constant +-sqrt(3/n_in) (formulas: weight_initializer)."""

    distribution: str = rule("signed_constant", help="Distribution.", choices=DISTRIBUTIONS)
    scaling: str = rule("elus", help="Variance: he 2/n_in, xavier 2/(n_in+n_out), elu 1.5/n_in, elus 3/n_in.",
                        choices=SCALINGS)
    factor: float = rule(1.0, help="Multiplies the variance.", gt=0.0)

    def __post_init__(self):
        object.__setattr__(self, "factor", float(self.factor) if is_finite_number(self.factor) else self.factor)
        check(self)


@dataclasses.dataclass(frozen=True)
class MaskSpec:
    """The masking hyper-parameters, shared by the layers (custom_layers) and the config schema (config.py)."""

    threshold_fraction: float = rule(0.4, help="p in tau = p * max|m_init| (per layer, fixed).", gt=0.0, lt=1.0)
    topk_fraction: float = rule(0.5, help="k of the topk mode: fraction of weights kept per layer.", gt=0.0, hi=1.0)

    def __post_init__(self):
        check(self)


MASK_DEFAULTS = MaskSpec()


def same_rule(spec, name: str) -> dataclasses.Field:
    """A new field with the default, help, choices and bounds of field `name` of the dataclass `spec`: for a schema
    that holds a spec's field as a key of its own (one declaration, checked the same way in both)."""
    field = {f.name: f for f in dataclasses.fields(spec)}[name]
    return dataclasses.field(default=field.default, metadata=field.metadata)


# Named presets used by configs (docs/paper_notes.md says where each comes from).
WEIGHT_PRESETS = {
    "elus": InitSpec("signed_constant", "elus"),  # c = sqrt(3/n_in), the final code's on-the-fly constant
    "elus_x2": InitSpec("signed_constant", "elus", 2.0),  # c = sqrt(6/n_in), the constant of the weight files
    "he": InitSpec("signed_constant", "he"),
    "xavier": InitSpec("signed_constant", "xavier"),
    "uniform_he": InitSpec("uniform", "he"),
    "elu_uniform": InitSpec("uniform", "elu"),  # U(+-sqrt(4.5/n_in)), the baselines' init
}
MASK_PRESETS = {
    "xavier_uniform": InitSpec("uniform", "xavier"),
    "he_uniform": InitSpec("uniform", "he"),
    "elu_uniform": InitSpec("uniform", "elu"),
    "elus_uniform": InitSpec("uniform", "elus", 2.0),  # U(+-sqrt(18/n_in))
}
RENAMED_PRESETS = {"elus_file": "elus_x2"}  # old name -> new name, for a helpful error
DEFAULT_WEIGHT_INIT = {True: "elus", False: "elu_uniform"}  # masked -> frozen weights; baseline -> initial


def init_spec(value, presets: dict[str, InitSpec]) -> InitSpec:
    """An InitSpec from an instance, a preset name or a mapping of its fields."""
    if isinstance(value, InitSpec):
        return value
    if isinstance(value, str):
        if value not in presets:
            renamed = f" (renamed to {RENAMED_PRESETS[value]!r})" if value in RENAMED_PRESETS else ""
            raise ValueError(f"unknown init preset {value!r}{renamed}; allowed: {', '.join(presets)}")
        return presets[value]
    if isinstance(value, dict):
        if not {"distribution", "scaling"} <= set(value):  # else InitSpec's defaults would fill in silently
            raise ValueError(f"an init mapping names its distribution and scaling (factor may be left out), got "
                             f"{value!r}; or name a preset: {', '.join(presets)}")
        return InitSpec(**value)
    raise TypeError(f"cannot make an InitSpec from {value!r}")


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimiser. `weight_decay` is the authors' per-step decoupled decay at the *initial* learning rate
    (SGDW's `var -= wd * var`); used by `sgdw` and `adamw` only, it follows the learning-rate schedule."""

    name: str = rule("sgdw", help="sgdw = SGD + Nesterov momentum + decoupled weight decay (the authors'); sgd, "
                                  "adam, adamw, rmsprop.", choices=OPTIMIZERS)
    learning_rate: float = rule(0.05, help="Initial learning rate lr0.", gt=0.0)
    momentum: float = rule(0.9, help="Momentum (sgd, sgdw, rmsprop).", lo=0.0, lt=1.0)
    nesterov: bool = rule(True, help="Nesterov momentum (sgd, sgdw).")
    weight_decay: float = rule(5e-4, help="Decoupled decay per step at lr0 (var -= wd_t * var, wd_t follows the lr "
                                          "schedule); sgdw and adamw.", lo=0.0)

    def __post_init__(self):
        check(self)

    @property
    def decoupled(self) -> bool:
        """Whether this optimiser applies the decoupled weight decay."""
        return self.name in ("sgdw", "adamw")


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
    """A learning-rate schedule; the fields of the other schedules are ignored.

    exponential_decay: lr0 * decay_rate ** (step / (decay_epochs * steps_per_epoch)), continuous unless staircase.
    cosine_decay:      keras CosineDecay over all training steps (epochs * steps_per_epoch), final fraction alpha.
    constant:          lr0.
    plateau:           lr0, reduced by model_trainer.PaperPlateau (patience, factor, cooldown, start_epoch,
                       max_reductions, min_delta).
    """

    name: str = rule("exponential_decay", help="exponential_decay, cosine_decay, plateau (the paper's ResNet "
                                               "schedule on the training loss) or constant.", choices=SCHEDULES)
    decay_epochs: float = rule(10.0, help="exponential: lr0 * rate^(epoch / decay_epochs).", gt=0.0)
    decay_rate: float = rule(0.9, help="exponential: decay factor per decay_epochs.", gt=0.0, hi=1.0)
    staircase: bool = rule(False, help="exponential: decay in steps instead of continuously.")
    alpha: float = rule(0.0, help="cosine: final lr as a fraction of lr0.", lo=0.0, hi=1.0)
    patience: int = rule(15, help="plateau: non-improving epochs before reductions start.", lo=3)
    factor: float = rule(0.2, help="plateau: lr (and wd) multiplier per reduction.", gt=0.0, lt=1.0)
    cooldown: int = rule(10, help="plateau: epochs without reduction after one.", lo=0)
    start_epoch: int = rule(10, help="plateau: complete epochs before the first check (the authors: 10).", lo=0)
    max_reductions: int = rule(5, help="plateau: training stops after this many reductions.", lo=1)
    min_delta: float = rule(1e-4, help="plateau: improvement below this does not count.", lo=0.0)

    def __post_init__(self):
        check(self)

