"""Training of Supermask and baseline models with Keras 3 `fit`: optimisers, learning-rate schedules, the
authors' reduce-on-plateau, per-epoch records (test metrics, learning rate, remaining weights) and a NaN guard.

Optimisers (paper.md section 4.1). The authors train with tfa's SGDW, which applies *decoupled* weight decay as

    var <- var - wd_t * var,      wd_t = wd0 * lr_t / lr0       (wd follows the learning-rate schedule)

before the Nesterov-momentum step, on every trainable variable (the masks, and learned BN gamma/beta). Keras 3's
SGD(weight_decay=lambda) applies, in `BaseOptimizer._backend_apply_gradients`, first
`var <- var - lambda * lr_t * var` (`_apply_weight_decay`, with lr_t evaluated at the current `iterations`) and then
the momentum step with the same lr_t and the gradient computed before the update. So lambda = wd0 / lr0 reproduces
SGDW exactly, for every schedule and also when the plateau callback scales the learning rate (wd follows).

Schedules: `exponential_decay` (lr0 * rate ** (step / (decay_epochs * steps_per_epoch)), paper.md 4.2),
`cosine_decay` (over all training steps), `constant`, and `plateau` (constant lr changed by `PaperPlateau`, the
authors' ResNet schedule of paper.md 4.3, monitoring the *training* loss).

`train(model, data, ...)` compiles (unless told not to), fits with `verbose=0`, evaluates the test set at every
epoch end and returns a `TrainResult` whose `history` has one JSON-serialisable dict per epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any

import keras
import numpy as np

from custom_layers import count_parameters, kernel_layers, mask_statistics, masked_layers

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgdw", "sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("exponential_decay", "cosine_decay", "plateau", "constant")
LABEL_FORMATS = ("one_hot", "sparse")
HISTORY_KEYS = (
    "epoch", "loss", "accuracy", "test_loss", "test_accuracy", "learning_rate", "weight_decay_effective",
    "seconds", "remaining_percent", "remaining_weights", "total_weights", "layers",
)
# History entries that EpochRecorder also writes into the epoch's logs, for callbacks placed after it.
LOG_KEYS = ("test_loss", "test_accuracy", "learning_rate", "weight_decay_effective", "remaining_percent",
            "remaining_weights")


# --------------------------------------------------------------------------------------------------------------
# Specifications
# --------------------------------------------------------------------------------------------------------------
def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimiser. `weight_decay` is the authors' per-step decoupled decay at the *initial* learning rate
    (SGDW's `var -= wd * var`); it is used by `sgdw` and `adamw` only, and follows the learning-rate schedule."""

    name: str = "sgdw"
    learning_rate: float = 0.05
    momentum: float = 0.9  # sgd / sgdw / rmsprop
    nesterov: bool = True  # sgd / sgdw
    weight_decay: float = 5e-4  # 0 disables

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"OptimizerSpec.name must be one of {', '.join(OPTIMIZERS)}; got {self.name!r}")
        if not _finite(self.learning_rate) or float(self.learning_rate) <= 0:
            raise ValueError(f"OptimizerSpec.learning_rate must be a finite number > 0; got {self.learning_rate!r}")
        if not _finite(self.momentum) or not 0.0 <= float(self.momentum) < 1.0:
            raise ValueError(f"OptimizerSpec.momentum must be in [0, 1); got {self.momentum!r}")
        if not isinstance(self.nesterov, (bool, np.bool_)):
            raise ValueError(f"OptimizerSpec.nesterov must be True or False; got {self.nesterov!r}")
        if not _finite(self.weight_decay) or float(self.weight_decay) < 0:
            raise ValueError(f"OptimizerSpec.weight_decay must be a finite number >= 0; got {self.weight_decay!r}")

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
    plateau:           lr0, reduced by `PaperPlateau` (patience, factor, cooldown, start_epoch, max_reductions,
                       min_delta; see that class).
    """

    name: str = "exponential_decay"
    decay_epochs: float = 10.0
    decay_rate: float = 0.9
    staircase: bool = False
    alpha: float = 0.0
    patience: int = 15
    factor: float = 0.2
    cooldown: int = 10
    start_epoch: int = 10
    max_reductions: int = 5
    min_delta: float = 1e-4

    def __post_init__(self):
        def fail(field, allowed):
            raise ValueError(f"ScheduleSpec.{field} must be {allowed}; got {getattr(self, field)!r}")

        if self.name not in SCHEDULES:
            fail("name", "one of " + ", ".join(SCHEDULES))
        if not _finite(self.decay_epochs) or float(self.decay_epochs) <= 0:
            fail("decay_epochs", "a finite number > 0")
        if not _finite(self.decay_rate) or not 0.0 < float(self.decay_rate) <= 1.0:
            fail("decay_rate", "in (0, 1]")
        if not isinstance(self.staircase, (bool, np.bool_)):
            fail("staircase", "True or False")
        if not _finite(self.alpha) or not 0.0 <= float(self.alpha) <= 1.0:
            fail("alpha", "in [0, 1]")
        for field, low in (("patience", 3), ("cooldown", 0), ("start_epoch", 0), ("max_reductions", 1)):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                fail(field, f"an integer >= {low}")
        if not _finite(self.factor) or not 0.0 < float(self.factor) < 1.0:
            fail("factor", "in (0, 1)")
        if not _finite(self.min_delta) or float(self.min_delta) < 0:
            fail("min_delta", "a finite number >= 0")


@dataclasses.dataclass
class TrainResult:
    """What `train` returns. `history` has one dict per (possibly partial) epoch; see `EpochRecorder`."""

    history: list[dict]
    status: str  # "ok" or "failed"
    message: str = ""  # why it failed, or why training stopped early
    seconds: float = 0.0

    @property
    def final(self) -> dict:
        """The last history entry ({} if there is none)."""
        return self.history[-1] if self.history else {}

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --------------------------------------------------------------------------------------------------------------
# Optimiser, schedule, compile
# --------------------------------------------------------------------------------------------------------------
def make_learning_rate(schedule: ScheduleSpec, learning_rate: float, steps_per_epoch: int, epochs: int):
    """The optimiser's `learning_rate` argument: a keras LearningRateSchedule, or a float (constant / plateau; Keras
    stores it in a variable that `PaperPlateau` can change)."""
    steps_per_epoch, epochs = int(steps_per_epoch), int(epochs)
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1; got {steps_per_epoch}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    lr0 = float(learning_rate)
    if schedule.name == "exponential_decay":
        return keras.optimizers.schedules.ExponentialDecay(
            initial_learning_rate=lr0, decay_steps=float(schedule.decay_epochs) * steps_per_epoch,
            decay_rate=float(schedule.decay_rate), staircase=bool(schedule.staircase),
        )
    if schedule.name == "cosine_decay":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr0, decay_steps=epochs * steps_per_epoch, alpha=float(schedule.alpha),
        )
    if schedule.name in ("constant", "plateau"):
        return lr0
    raise ValueError(f"unknown schedule {schedule.name!r}; allowed: {', '.join(SCHEDULES)}")


def make_optimizer(spec: OptimizerSpec, schedule: ScheduleSpec, steps_per_epoch: int,
                   epochs: int) -> keras.optimizers.Optimizer:
    """A Keras 3 optimiser for `spec` with the learning rate of `schedule`.

    sgdw / adamw get `weight_decay = spec.weight_decay / spec.learning_rate`: Keras applies `var -= wd * lr_t * var`
    each step, which is the authors' `var -= wd_t * var` with wd_t following the learning rate.
    """
    lr = make_learning_rate(schedule, spec.learning_rate, steps_per_epoch, epochs)
    decay = float(spec.weight_decay) / float(spec.learning_rate) if spec.weight_decay > 0 else None
    if not spec.decoupled and spec.weight_decay > 0:
        log.debug("optimizer %r applies no weight decay; weight_decay=%g ignored", spec.name, spec.weight_decay)
    if spec.name in ("sgdw", "sgd"):
        return keras.optimizers.SGD(
            learning_rate=lr, momentum=float(spec.momentum), nesterov=bool(spec.nesterov),
            weight_decay=decay if spec.name == "sgdw" else None,
        )
    if spec.name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    if spec.name == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=decay if decay is not None else 0.0)
    if spec.name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr, momentum=float(spec.momentum))
    raise ValueError(f"unknown optimizer {spec.name!r}; allowed: {', '.join(OPTIMIZERS)}")


def compile_model(model, optimizer, *, label_format: str = "one_hot", jit_compile: bool = False) -> None:
    """Compile with (sparse) categorical cross-entropy and accuracy (logged as `loss` and `accuracy`)."""
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {', '.join(LABEL_FORMATS)}; got {label_format!r}")
    loss = "categorical_crossentropy" if label_format == "one_hot" else "sparse_categorical_crossentropy"
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=bool(jit_compile))


def prepare_model(model, *, optimizer: OptimizerSpec = OptimizerSpec(), schedule: ScheduleSpec = ScheduleSpec(),
                  steps_per_epoch: int, epochs: int, label_format: str = "one_hot",
                  jit_compile: bool = False) -> keras.optimizers.Optimizer:
    """make_optimizer + compile_model in one call, for callers that must build both inside a distribution
    strategy scope (then call `train(..., compile=False)`). Returns the optimiser."""
    opt = make_optimizer(optimizer, schedule, steps_per_epoch, epochs)
    compile_model(model, opt, label_format=label_format, jit_compile=jit_compile)
    return opt


def _base_optimizer(optimizer):
    """The optimiser that owns learning rate and weight decay (unwraps a LossScaleOptimizer)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def current_learning_rate(optimizer) -> float:
    """The learning rate the optimiser uses at its current `iterations` (schedule value or variable value)."""
    return float(keras.ops.convert_to_numpy(_base_optimizer(optimizer).learning_rate))


def effective_weight_decay(optimizer, learning_rate: float | None = None) -> float:
    """The per-step decoupled decay wd_t = weight_decay_param * lr_t (0 for an optimiser without weight decay)."""
    base = _base_optimizer(optimizer)
    decay = getattr(base, "weight_decay", None)
    if not decay:
        return 0.0
    lr = current_learning_rate(optimizer) if learning_rate is None else float(learning_rate)
    return float(decay) * lr


# --------------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------------
def epoch_statistics(model) -> dict:
    """remaining_percent, remaining_weights, total_weights and per-layer {kept, inverted, hidden, total,
    remaining_percent} as plain Python numbers.

    A model with masked layers: `custom_layers.mask_statistics` (masked layers only, first and last included). A
    model without: every Dense / Conv2D kernel counts as kept, 100 %.
    """
    if masked_layers(model):
        stats = mask_statistics(model)
    else:
        layers = {}
        for layer in kernel_layers(model):
            size = int(np.prod(layer.kernel.shape))
            layers[layer.name] = {"kept": size, "inverted": 0, "hidden": 0, "total": size}
        total = count_parameters(model)
        stats = {"remaining_percent": 100.0, "remaining_weights": total, "total_weights": total, "layers": layers}
        for counts in layers.values():
            counts["remaining_percent"] = 100.0
    return {
        "remaining_percent": float(stats["remaining_percent"]),
        "remaining_weights": int(stats["remaining_weights"]),
        "total_weights": int(stats["total_weights"]),
        "layers": {
            str(name): {k: (float(v) if k == "remaining_percent" else int(v)) for k, v in counts.items()}
            for name, counts in stats["layers"].items()
        },
    }


def _number(value):
    """A plain Python float from a log value (None stays None)."""
    if value is None:
        return None
    return float(np.asarray(value))


# --------------------------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------------------------
class StopOnNonFinite(keras.callbacks.Callback):
    """Stops training as soon as a batch's logged loss is NaN or inf, and records where.

    Keras logs the running mean of the epoch's loss, so a non-finite batch loss shows at the batch where it
    happens. `epoch` and `batch` are 1-based; `step` counts the steps of this fit up to that batch.
    """

    # Batch hooks run on Keras' callback thread (async dispatch): the check never blocks the training loop.
    async_safe = True

    def __init__(self, monitor: str = "loss"):
        super().__init__()
        self.monitor = monitor
        self.triggered = False
        self.epoch: int | None = None
        self.batch: int | None = None
        self.step: int | None = None
        self.value: float | None = None
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self.triggered = False
        self.epoch = self.batch = self.step = self.value = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch) + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.triggered or not logs or self.monitor not in logs:
            return
        value = _number(logs[self.monitor])
        if math.isfinite(value):
            return
        self.triggered = True
        self.epoch, self.batch, self.value = self._epoch, int(batch) + 1, value
        # The hook may run on Keras' callback thread, after later steps began: count the step, don't read it.
        self.step = (self.epoch - 1) * int((self.params or {}).get("steps") or 0) + self.batch
        log.warning("%s", self.message)
        self.model.stop_training = True

    @property
    def message(self) -> str:
        if not self.triggered:
            return ""
        return (f"{self.monitor} became {self.value} at epoch {self.epoch}, batch {self.batch} "
                f"(step {self.step})")


class EpochRecorder(keras.callbacks.Callback):
    """Appends one dict per epoch to `history` (a list it is given, or its own):

        epoch (1-based), loss, accuracy (train, Keras' epoch means), test_loss, test_accuracy, learning_rate (the
        value at the optimiser's current `iterations`, i.e. the one in use at the end of the epoch),
        weight_decay_effective (weight_decay_param * learning_rate; 0 without decoupled decay), seconds (wall time
        of the epoch, test evaluation included), steps (global optimiser steps so far), batches (batches in this
        epoch), partial (True when the epoch was cut short by `stopper`), and epoch_statistics(model).

    Test metrics come from fit's validation logs (`val_loss`, `val_accuracy`); without them and with `test_data`
    given, the recorder evaluates `test_data` itself. The `LOG_KEYS` entries are also written into the epoch's
    `logs`, so callbacks placed after this one can monitor e.g. `test_accuracy` or `remaining_percent`. The mask statistics are computed here, once per epoch, outside the train step.
    """

    async_safe = True  # its batch hook only counts batches: keep Keras' async dispatch

    def __init__(self, history: list | None = None, *, test_data=None, stopper: StopOnNonFinite | None = None):
        super().__init__()
        self.history = history if history is not None else []
        self.test_data = test_data
        self.stopper = stopper
        self._start = time.perf_counter()
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches = int(batch) + 1

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        test_loss, test_accuracy = logs.get("val_loss"), logs.get("val_accuracy")
        if test_loss is None and self.test_data is not None:
            results = self.model.evaluate(self.test_data, verbose=0, return_dict=True)
            test_loss, test_accuracy = results.get("loss"), results.get("accuracy")
        optimizer = self.model.optimizer
        lr = current_learning_rate(optimizer)
        record: dict[str, Any] = {
            "epoch": int(epoch) + 1,
            "loss": _number(logs.get("loss")),
            "accuracy": _number(logs.get("accuracy")),
            "test_loss": _number(test_loss),
            "test_accuracy": _number(test_accuracy),
            "learning_rate": lr,
            "weight_decay_effective": effective_weight_decay(optimizer, lr),
            "steps": int(keras.ops.convert_to_numpy(optimizer.iterations)),
            "batches": int(self._batches),
            "partial": bool(self.stopper is not None and self.stopper.triggered
                            and self.stopper.epoch == int(epoch) + 1),
        }
        record.update(epoch_statistics(self.model))
        record["seconds"] = float(time.perf_counter() - self._start)
        self.history.append(record)
        for key in LOG_KEYS:
            if key not in logs and record[key] is not None:
                logs[key] = record[key]


class EpochProgress(keras.callbacks.Callback):
    """One progress line per epoch from the newest `history` entry, e.g.

        epoch 3/100  loss 0.2311  acc 93.12%  test_acc 94.01%  remaining 12.34%  lr 0.04841  2.1s
    """

    def __init__(self, history: list, epochs: int, printer=print):
        super().__init__()
        self.history = history
        self.epochs = int(epochs)
        self.printer = printer

    @staticmethod
    def format(record: dict, epochs: int) -> str:
        def pct(value):
            return "n/a" if value is None else f"{100.0 * value:.2f}%"

        def num(value, fmt):
            return "n/a" if value is None else format(value, fmt)

        line = (f"epoch {record['epoch']}/{epochs}  loss {num(record.get('loss'), '.4f')}  "
                f"acc {pct(record.get('accuracy'))}  test_acc {pct(record.get('test_accuracy'))}  "
                f"remaining {record['remaining_percent']:.2f}%  lr {record['learning_rate']:.4g}  "
                f"{record['seconds']:.1f}s")
        if record.get("partial"):
            line += "  (partial epoch)"
        return line

    def on_epoch_end(self, epoch, logs=None):
        if self.history:
            self.printer(self.format(self.history[-1], self.epochs), flush=True)


class PaperPlateau(keras.callbacks.Callback):
    """The authors' reduce-on-plateau of the ResNet runs (paper.md 4.3), on the training loss.

    At the end of every epoch the monitored loss is appended to a list. Checks begin once `start_epoch` epochs
    are complete (the authors test `epoch >= 10` on a 0-based epoch counter, so with start_epoch=10 the first check
    is at the end of the 11th epoch as logged). At a check:

    * during a cooldown the cooldown counter is decremented and nothing else happens;
    * otherwise, if loss + min_delta is not below the minimum loss of the previous (patience - 2) epochs, the
      epoch is non-improving and `wait += 1` (wait is never reset: it counts non-improving epochs cumulatively);
    * on a non-improving epoch with wait > patience: lr <- lr * factor (Keras multiplies the decoupled weight
      decay by lr, so wd follows), then `cooldown` epochs without checks;
    * once `max_reductions` reductions have been made (at the epoch of the last one, as in the authors' code),
      training stops (`model.stop_training = True`).

    `reduction_epochs` lists the (1-based) epochs of the reductions; the optimiser's learning rate must be a
    float / variable (schedule 'plateau' or 'constant'), not a LearningRateSchedule.
    """

    def __init__(self, patience: int = 15, factor: float = 0.2, cooldown: int = 10, start_epoch: int = 10,
                 max_reductions: int = 5, min_delta: float = 1e-4, monitor: str = "loss"):
        super().__init__()
        # Validate through ScheduleSpec so that the limits live in one place.
        ScheduleSpec(name="plateau", patience=patience, factor=factor, cooldown=cooldown, start_epoch=start_epoch,
                     max_reductions=max_reductions, min_delta=min_delta)
        self.patience, self.factor, self.cooldown = int(patience), float(factor), int(cooldown)
        self.start_epoch, self.max_reductions, self.min_delta = int(start_epoch), int(max_reductions), float(min_delta)
        self.monitor = monitor
        self.reset()

    @classmethod
    def from_spec(cls, schedule: ScheduleSpec, monitor: str = "loss") -> PaperPlateau:
        return cls(patience=schedule.patience, factor=schedule.factor, cooldown=schedule.cooldown,
                   start_epoch=schedule.start_epoch, max_reductions=schedule.max_reductions,
                   min_delta=schedule.min_delta, monitor=monitor)

    def reset(self):
        self.losses: list[float] = []
        self.wait = 0
        self.cooldown_counter = 0
        self.reductions = 0
        self.reduction_epochs: list[int] = []
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs=None):
        base = _base_optimizer(self.model.optimizer)
        if isinstance(getattr(base, "_learning_rate", None), keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError("PaperPlateau needs a constant learning rate (schedule 'plateau'), not a "
                             f"{type(base._learning_rate).__name__}")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            log.warning("PaperPlateau: %r not in the epoch logs; skipped", self.monitor)
            return
        loss = float(np.asarray(logs[self.monitor]))
        self.losses.append(loss)
        if int(epoch) < self.start_epoch:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            return
        window = self.losses[-(self.patience - 1):-1]  # the previous (patience - 2) epochs
        if not window or loss + self.min_delta < min(window):
            return
        self.wait += 1
        if self.wait <= self.patience:
            return
        optimizer = _base_optimizer(self.model.optimizer)
        old = current_learning_rate(optimizer)
        optimizer.learning_rate = old * self.factor
        new = current_learning_rate(optimizer)
        self.reductions += 1
        self.reduction_epochs.append(int(epoch) + 1)
        self.cooldown_counter = self.cooldown
        log.info("PaperPlateau: epoch %d, loss %.5g did not improve on %.5g (wait %d > patience %d): "
                 "learning rate %.5g -> %.5g (reduction %d of %d)", int(epoch) + 1, loss, min(window), self.wait,
                 self.patience, old, new, self.reductions, self.max_reductions)
        if self.reductions >= self.max_reductions:
            self.stopped_epoch = int(epoch) + 1
            log.info("PaperPlateau: %d reductions made; stopping after epoch %d", self.reductions, int(epoch) + 1)
            self.model.stop_training = True


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------
def train(model, data, *, optimizer: OptimizerSpec = OptimizerSpec(), schedule: ScheduleSpec = ScheduleSpec(),
          epochs: int = 100, jit_compile: bool = False, callbacks=(), verbose: int = 1,
          compile: bool = True) -> TrainResult:
    """Train `model` on `data` (a DataBundle or anything with .train, .test, .steps_per_epoch, .label_format).

    compile=True builds the optimiser from `optimizer` / `schedule` and compiles the model; compile=False uses
    the model as the caller compiled it (e.g. with `prepare_model` inside a strategy scope). The schedule
    'plateau' adds a `PaperPlateau` callback. verbose: 0 silent, 1 one line per epoch, 2 that line and Keras'
    per-batch progress bar. Returns status "failed" (with the history so far, the last epoch marked partial) if
    the training loss becomes NaN or inf.
    """
    start = time.perf_counter()
    epochs = int(epochs)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    if compile:
        prepare_model(model, optimizer=optimizer, schedule=schedule, steps_per_epoch=int(data.steps_per_epoch),
                      epochs=epochs, label_format=data.label_format, jit_compile=jit_compile)
    elif getattr(model, "optimizer", None) is None:
        raise ValueError("train(compile=False) needs a compiled model (see prepare_model)")

    history: list[dict] = []
    stopper = StopOnNonFinite()
    recorder = EpochRecorder(history, stopper=stopper)
    internal: list[keras.callbacks.Callback] = [stopper, recorder]
    if verbose:
        internal.append(EpochProgress(history, epochs))
    plateau = None
    if schedule.name == "plateau":
        plateau = PaperPlateau.from_spec(schedule)
        internal.append(plateau)
    test = getattr(data, "test", None)
    if test is None:
        log.warning("no test data: test_loss / test_accuracy will be None")
    # shuffle=False: a tf.data pipeline shuffles itself (Keras would only warn that it ignores the flag).
    model.fit(data.train, epochs=epochs, validation_data=test, callbacks=internal + list(callbacks),
              verbose=1 if verbose >= 2 else 0, shuffle=False)

    seconds = float(time.perf_counter() - start)
    if stopper.triggered:
        return TrainResult(history=history, status="failed", message=stopper.message, seconds=seconds)
    message = ""
    if plateau is not None and plateau.stopped_epoch is not None:
        message = f"stopped after {plateau.reductions} learning-rate reductions at epoch {plateau.stopped_epoch}"
    elif len(history) < epochs:
        message = f"stopped early after {len(history)} of {epochs} epochs"
    return TrainResult(history=history, status="ok", message=message, seconds=seconds)
