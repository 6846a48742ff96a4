"""Training of Supermask and baseline models with Keras 3 `fit`: optimisers, learning-rate schedules, the
authors' reduce-on-plateau, per-epoch records (test metrics, learning rate, remaining weights), a NaN guard,
TensorBoard mask images, epoch checkpoints that a killed run resumes from, and a stop request.

Optimisers (docs/paper_notes.md, "Training"). The authors train with tfa's SGDW, which applies *decoupled*
weight decay as

    var <- var - wd_t * var,      wd_t = wd0 * lr_t / lr0       (wd follows the learning-rate schedule)

before the Nesterov-momentum step, on every trainable variable (the masks, and learned BN gamma/beta). Keras 3's
SGD(weight_decay=lambda) applies first `var <- var - lambda * lr_t * var` (lr_t evaluated at the current
`iterations`) and then the momentum step with the same lr_t and the gradient computed before the update. So
lambda = wd0 / lr0 reproduces SGDW exactly, for every schedule and also when the plateau callback scales the
learning rate (wd follows).

Schedules: `exponential_decay` (lr0 * rate ** (step / (decay_epochs * steps_per_epoch))), `cosine_decay` (over
all training steps), `constant`, and `plateau` (constant lr changed by `PaperPlateau`, the authors' ResNet
schedule, monitoring the *training* loss). The specs (`OptimizerSpec`, `ScheduleSpec`) live in hparams.

`train(model, data, ...)` compiles (unless told not to), fits with `verbose=0` from `data.train_from(epoch)`,
evaluates the test set at every epoch end and returns a `TrainResult` whose `history` has one JSON-serialisable
dict per epoch. With `checkpoint=PATH` it writes the whole training state at the end of every
`checkpoint_every`-th epoch (atomically) and, when PATH exists, resumes from it: a run killed at any moment ends
with exactly the metrics, masks and history of an uninterrupted one (under op determinism: bit for bit).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import keras
import numpy as np

import backends
from custom_layers import mask_statistics, masked_layers
from data_preprocessor import LABEL_FORMATS
from hparams import OPTIMIZERS, SCHEDULES, OptimizerSpec, ScheduleSpec

log = logging.getLogger(__name__)

__all__ = ["OptimizerSpec", "ScheduleSpec", "TrainResult", "make_learning_rate", "make_optimizer",
           "compile_model", "prepare_model", "current_learning_rate", "effective_weight_decay", "StopOnNonFinite",
           "EpochRecorder", "EpochProgress", "PaperPlateau", "MaskImageCallback", "StopOnRequest",
           "EpochCheckpoint", "CheckpointError", "read_checkpoint", "train"]

HISTORY_KEYS = (
    "epoch", "loss", "accuracy", "test_loss", "test_accuracy", "learning_rate", "weight_decay_effective",
    "seconds", "remaining_percent", "remaining_weights", "total_weights", "layers",
)
# History entries that EpochRecorder also writes into the epoch's logs, for callbacks placed after it.
LOG_KEYS = ("test_loss", "test_accuracy", "learning_rate", "weight_decay_effective", "remaining_percent",
            "remaining_weights")
CHECKPOINT_FORMAT = "signed-supermask-checkpoint"
CHECKPOINT_VERSION = 1
# Colours of the three mask states in images (RGB, 0-255): kept (+1), inverted (-1), hidden (0).
KEPT_RGB = (33, 102, 172)
INVERTED_RGB = (178, 24, 43)
HIDDEN_RGB = (255, 255, 255)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns. `history` has one dict per epoch (the last one marked partial after a NaN stop)."""

    history: list[dict]
    status: str  # "ok" or "failed"
    message: str = ""  # why it failed, or why training stopped early
    seconds: float = 0.0  # training time, the sessions before a resume included
    resumed_from: int = 0  # epochs restored from the checkpoint

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
        log.warning("optimizer %s applies no weight decay: weight_decay=%g is ignored (sgdw and adamw apply it; "
                    "the decay on the masks is what prunes a Supermask)", spec.name, spec.weight_decay)
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
    """Compile with (sparse) categorical cross-entropy and accuracy (logged as `loss` and `accuracy`).

    `jit_compile` chooses XLA on the TensorFlow backend. The other backends always compile the train step with
    their own compiler (jax.jit; Keras' "auto"): run uncompiled, they are orders of magnitude slower."""
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {', '.join(LABEL_FORMATS)}; got {label_format!r}")
    loss = "categorical_crossentropy" if label_format == "one_hot" else "sparse_categorical_crossentropy"
    jit = bool(jit_compile) if backends.on_tensorflow() else "auto"
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=jit)


def prepare_model(model, *, optimizer: OptimizerSpec = OptimizerSpec(), schedule: ScheduleSpec = ScheduleSpec(),
                  steps_per_epoch: int, epochs: int, label_format: str = "one_hot",
                  jit_compile: bool = False) -> keras.optimizers.Optimizer:
    """make_optimizer + compile_model in one call, for callers that must build both inside a distribution
    strategy scope (then call `train(..., compile=False)`). Returns the optimiser."""
    opt = make_optimizer(optimizer, schedule, steps_per_epoch, epochs)
    compile_model(model, opt, label_format=label_format, jit_compile=jit_compile)
    return opt


def _base_optimizer(optimizer):
    """The optimiser that owns learning rate and weight decay (a LossScaleOptimizer wraps it as
    `inner_optimizer`, a public attribute)."""
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


def _number(value):
    """A plain Python float from a log value (None stays None)."""
    if value is None:
        return None
    return float(np.asarray(value))


# --------------------------------------------------------------------------------------------------------------
# Callbacks
# --------------------------------------------------------------------------------------------------------------
class _StopsFromBatchHooks(keras.callbacks.Callback):
    """Base of the callbacks that end `fit` from a batch hook, which may run on Keras' callback thread (async
    dispatch, on JAX and PyTorch). Reading `Callback.model` makes JAX copy the training state back into the model
    (`jax_state_sync`); from that thread the copy races the step in flight, whose input buffers JAX donates, and
    the next step or the epoch's metrics then read deleted arrays. `stop_fit` sets the model's `stop_training`
    flag through the reference `set_model` kept, without that copy."""

    def set_model(self, model):
        super().set_model(model)
        self._fit_model = model

    def stop_fit(self):
        self._fit_model.stop_training = True


class StopOnNonFinite(_StopsFromBatchHooks, keras.callbacks.TerminateOnNaN):
    """keras.callbacks.TerminateOnNaN that also records where the loss became NaN or inf.

    Keras logs the running mean of the epoch's loss, so a non-finite batch loss shows at the batch where it
    happens. `epoch` and `batch` are 1-based; `step` counts the steps from the start of training up to that
    batch (Keras numbers the epochs of a resumed fit from its `initial_epoch`, so they include the earlier ones).
    """

    # Batch hooks run on Keras' callback thread (async dispatch): the check never blocks the training loop.
    async_safe = True

    def __init__(self):
        super().__init__()
        self.triggered = False
        self.epoch: int | None = None
        self.batch: int | None = None
        self.step: int | None = None
        self.value: float | None = None
        self._epoch = 0
        self._lock = threading.Lock()

    def on_train_begin(self, logs=None):
        self.triggered = False
        self.epoch = self.batch = self.step = self.value = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = int(epoch) + 1

    def on_batch_end(self, batch, logs=None):
        if not logs or logs.get("loss") is None:
            return
        value = _number(logs["loss"])
        if math.isfinite(value):
            return
        # Off TensorFlow the hooks run on a pool of Keras' callback threads, possibly out of batch order: the
        # earliest non-finite batch is the one recorded, under a lock.
        with self._lock:
            if self.triggered and (self.epoch, self.batch) <= (self._epoch, int(batch) + 1):
                return
            first = not self.triggered
            self.triggered = True
            self.epoch, self.batch, self.value = self._epoch, int(batch) + 1, value
            # The hook may run after later steps began: count the step, don't read it.
            self.step = (self.epoch - 1) * int((self.params or {}).get("steps") or 0) + self.batch
        if first:
            log.warning("%s", self.message)
            self.stop_fit()

    @property
    def message(self) -> str:
        if not self.triggered:
            return ""
        return f"loss became {self.value} at epoch {self.epoch}, batch {self.batch} (step {self.step})"


class StopOnRequest(_StopsFromBatchHooks):
    """Ends `fit` at the end of the step during which `event` (a threading.Event) was set; the looper sets it from
    its SIGINT / SIGTERM handler, so an interrupt is never lost in whatever the main thread was doing.

    On TensorFlow the batch-end hook runs on the main thread right after each step and `fit` stops there. Off
    TensorFlow Keras runs batch-end hooks on its callback threads, behind the steps the main thread has already
    queued (up to an epoch); the batch-begin hook, on the main thread, then catches the request before the next
    step, and `fit` stops after that one: at most one step more."""

    async_safe = True  # it reads an Event and sets a flag: Keras may keep its async dispatch

    def __init__(self, event: threading.Event):
        super().__init__()
        self.event = event

    def on_train_batch_end(self, batch, logs=None):
        if self.event.is_set():
            self.stop_fit()

    on_train_batch_begin = on_epoch_begin = on_epoch_end = on_train_batch_end


class EpochRecorder(keras.callbacks.Callback):
    """Appends one dict per epoch to `history` (a list it is given, or its own):

        epoch (1-based), loss, accuracy (train, Keras' epoch means), test_loss, test_accuracy, learning_rate (the
        value at the optimiser's current `iterations`, i.e. the one in use at the end of the epoch),
        weight_decay_effective (weight_decay_param * learning_rate; 0 without decoupled decay), seconds (wall time
        of the epoch, test evaluation included), steps (global optimiser steps so far), batches (batches in this
        epoch), partial (True when the epoch was cut short by `stopper`), and custom_layers.mask_statistics.

    Test metrics come from fit's validation logs (`val_loss`, `val_accuracy`); without them and with `test_data`
    given, the recorder evaluates `test_data` itself. The `LOG_KEYS` entries are also written into the epoch's
    `logs`, so callbacks placed after this one can monitor e.g. `test_accuracy` or `remaining_percent`. The mask
    statistics are computed here, once per epoch, outside the train step.
    """

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

    def on_train_batch_begin(self, batch, logs=None):
        # Counted as the steps begin, on the main thread and in order: batch-end hooks may run on a pool of Keras'
        # callback threads off TensorFlow, out of order, and would undercount. A begun step always runs (fit looks
        # at stop_training after it).
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
            "partial": bool((self.stopper is not None and self.stopper.triggered
                             and self.stopper.epoch == int(epoch) + 1)
                            or self._batches < int((self.params or {}).get("steps") or 0)),
        }
        record.update(mask_statistics(self.model))
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
    """The authors' reduce-on-plateau of the ResNet runs (docs/paper_notes.md), on the training loss.

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
    variable (schedule 'plateau' or 'constant'), not a LearningRateSchedule. `state()` / `restore(state)` carry
    the counters through a checkpoint.
    """

    STATE = ("losses", "wait", "cooldown_counter", "reductions", "reduction_epochs", "stopped_epoch")

    def __init__(self, spec: ScheduleSpec = ScheduleSpec(name="plateau"), monitor: str = "loss"):
        super().__init__()
        self.spec = spec  # validated by hparams: the limits live in one place
        self.monitor = monitor
        self.reset()

    def reset(self):
        self.losses: list[float] = []
        self.wait = 0
        self.cooldown_counter = 0
        self.reductions = 0
        self.reduction_epochs: list[int] = []
        self.stopped_epoch: int | None = None

    def state(self) -> dict:
        return {key: getattr(self, key) for key in self.STATE}

    def restore(self, state: dict) -> None:
        for key in self.STATE:
            setattr(self, key, state[key])

    def on_train_begin(self, logs=None):
        if not isinstance(_base_optimizer(self.model.optimizer).learning_rate, keras.Variable):
            raise ValueError("PaperPlateau needs a constant learning rate (schedule 'plateau'), not a "
                             "LearningRateSchedule")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            log.warning("PaperPlateau: %r not in the epoch logs; skipped", self.monitor)
            return
        spec = self.spec
        loss = float(np.asarray(logs[self.monitor]))
        self.losses.append(loss)
        if int(epoch) < spec.start_epoch:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            return
        window = self.losses[-(spec.patience - 1):-1]  # the previous (patience - 2) epochs
        if not window or loss + spec.min_delta < min(window):
            return
        self.wait += 1
        if self.wait <= spec.patience:
            return
        optimizer = _base_optimizer(self.model.optimizer)
        old = current_learning_rate(optimizer)
        optimizer.learning_rate = old * spec.factor
        new = current_learning_rate(optimizer)
        self.reductions += 1
        self.reduction_epochs.append(int(epoch) + 1)
        self.cooldown_counter = spec.cooldown
        log.info("PaperPlateau: epoch %d, loss %.5g did not improve on %.5g (wait %d > patience %d): "
                 "learning rate %.5g -> %.5g (reduction %d of %d)", int(epoch) + 1, loss, min(window), self.wait,
                 spec.patience, old, new, self.reductions, spec.max_reductions)
        if self.reductions >= spec.max_reductions:
            self.stopped_epoch = int(epoch) + 1
            log.info("PaperPlateau: %d reductions made; stopping after epoch %d", self.reductions, int(epoch) + 1)
            self.model.stop_training = True


def mask_to_2d(mask: np.ndarray) -> np.ndarray:
    """A kernel-shaped mask as 2-D (inputs x outputs): (n_in, n_out) stays, (kh, kw, c_in, c_out) ->
    (kh*kw*c_in, c_out)."""
    mask = np.asarray(mask)
    if mask.ndim < 2:
        return mask.reshape(1, -1)
    return mask.reshape(-1, mask.shape[-1])


def mask_image(mask: np.ndarray) -> np.ndarray:
    """An RGB uint8 image (rows = inputs, columns = outputs) of an effective mask: +1 KEPT_RGB (blue), -1
    INVERTED_RGB (red), 0 HIDDEN_RGB (white)."""
    mask = mask_to_2d(mask)
    image = np.empty(mask.shape + (3,), np.uint8)
    image[...] = HIDDEN_RGB
    image[mask > 0] = KEPT_RGB
    image[mask < 0] = INVERTED_RGB
    return image


class MaskImageCallback(keras.callbacks.Callback):
    """At every epoch end, TensorBoard summaries (tf.summary.scalar / tf.summary.image) into `log_dir/<subdir>`
    (default `log_dir/masks`, next to the train/ and validation/ runs of keras.callbacks.TensorBoard), at
    step = epoch (0-based, as the stock callback):

        remaining/global          remaining weights % (custom_layers.mask_statistics)
        remaining/<layer>         the layer's remaining weights %
        inverted/<layer>          the layer's inverted weights % (of its size)
        masks/<layer>             image of the layer's effective mask (mask_image: rows inputs, columns outputs;
                                  +1 blue, -1 red, 0 white), every `image_every` epochs

    A model without masked layers writes nothing.
    """

    def __init__(self, log_dir, *, subdir: str | None = "masks", image_every: int = 1):
        super().__init__()
        self.log_dir = Path(log_dir) / subdir if subdir else Path(log_dir)
        self.image_every = max(1, int(image_every))
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        layers = masked_layers(self.model)
        if not layers:
            return
        if self._writer is None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        stats = mask_statistics(self.model)
        step = int(epoch)
        with self._writer.as_default():
            tf.summary.scalar("remaining/global", stats["remaining_percent"], step=step)
            for name, counts in stats["layers"].items():
                tf.summary.scalar(f"remaining/{name}", counts["remaining_percent"], step=step)
                tf.summary.scalar(f"inverted/{name}", 100.0 * counts["inverted"] / max(1, counts["total"]),
                                  step=step)
            if step % self.image_every == 0:
                for layer in layers:
                    image = mask_image(keras.ops.convert_to_numpy(layer.effective_mask()))
                    tf.summary.image(f"masks/{layer.name}", image[None], step=step)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model (the run is then redone from epoch 1)."""


def _saved_model_variables(model) -> list:
    """The model variables a checkpoint holds: all but the frozen kernels of masked layers, which the run's seed
    (or its weights file) regenerates exactly."""
    frozen = {id(layer.kernel) for layer in masked_layers(model)}
    return [v for v in model.variables if id(v) not in frozen]


def checkpoint_arrays(model, history: list[dict], extra_state: dict) -> dict[str, np.ndarray]:
    """Everything that shapes the rest of a run, as named arrays (see `EpochCheckpoint`)."""
    variables = _saved_model_variables(model)
    optimizer = model.optimizer
    arrays = {f"model/{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)}
    arrays.update({f"optimizer/{i:05d}": keras.ops.convert_to_numpy(v) for i, v in enumerate(optimizer.variables)})
    state = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epochs_done": len(history),
        "history": history, "model_variables": [[v.name, list(v.shape)] for v in variables],
        "optimizer_variables": [[v.name, list(v.shape)] for v in optimizer.variables], **extra_state,
    }
    arrays["state"] = np.frombuffer(json.dumps(state).encode("utf-8"), np.uint8)
    return arrays


def read_checkpoint(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(state, arrays) of a checkpoint file; CheckpointError if it is unreadable or not a checkpoint."""
    import zipfile

    try:
        with np.load(Path(path), allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        state = json.loads(arrays.pop("state").tobytes().decode("utf-8"))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if state.get("format") != CHECKPOINT_FORMAT or int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is not a {CHECKPOINT_FORMAT} of version <= {CHECKPOINT_VERSION}")
    return state, arrays


def restore_checkpoint(model, state: dict, arrays: dict[str, np.ndarray]) -> None:
    """Assign a checkpoint's variables to a compiled `model` and its optimizer; every shape is checked before
    anything is assigned (CheckpointError on a mismatch)."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    plan = []
    for prefix, variables, names in (("model", _saved_model_variables(model), state["model_variables"]),
                                     ("optimizer", optimizer.variables, state["optimizer_variables"])):
        if len(variables) != len(names):
            raise CheckpointError(f"the checkpoint does not fit the model: {len(names)} {prefix} variables in the "
                                  f"file, {len(variables)} in the model")
        for i, (variable, (name, shape)) in enumerate(zip(variables, names)):
            value = arrays.get(f"{prefix}/{i:05d}")
            if value is None or tuple(value.shape) != tuple(variable.shape) or list(shape) != list(variable.shape):
                raise CheckpointError(f"{prefix} variable {i} ({variable.name}, {tuple(variable.shape)}) does not fit "
                                      f"the checkpoint's {name} {tuple(shape)}")
            plan.append((variable, value))
    for variable, value in plan:
        variable.assign(value)


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes the whole training state to one `.npz` at the end of every `every`-th complete epoch (and of the
    last one), atomically (a temporary file renamed into place):

        model/<i>       every model variable but the frozen kernels (masks, thresholds, BN weights and moving
                        statistics, baseline kernels, RNG seed-generator states)
        optimizer/<i>   every optimizer variable (iterations, learning rate, momentum, loss scale)
        state           JSON: epochs done, the per-epoch history, the plateau schedule's counters, the seconds
                        trained, the variable names and shapes (checked on restore)

    The data order needs no state: epoch e's order is a pure function of (seed, e) (data_preprocessor).
    An epoch cut short (a NaN stop, a stop request: `history[-1]["partial"]`) is never written.

    keras.callbacks.BackupAndRestore does not fit here: it writes its weights file and its epoch counter as two
    files, one after the other (a kill between them pairs weights of one epoch with the counter of another), it
    resumes through the private `model._initial_epoch`, and it carries neither other callbacks' state (the
    plateau's counters) nor the history.
    """

    def __init__(self, path, *, every: int = 1, epochs: int, history: list[dict], extra_state=None):
        super().__init__()
        self.path = Path(path)
        self.every = int(every)
        self.epochs = int(epochs)
        self.history = history  # EpochRecorder's list: it runs before this callback
        self.extra_state = extra_state or (lambda: {})
        self.written_epochs: list[int] = []

    def on_epoch_end(self, epoch, logs=None):
        done = int(epoch) + 1
        if not self.history or self.history[-1]["partial"]:
            return
        if self.every < 1 or (done % self.every and done != self.epochs and not self.model.stop_training):
            return
        from run_folder import atomic_savez

        # Uncompressed: a checkpoint lives for one epoch, and deflating float32 masks costs more than it saves.
        atomic_savez(self.path, checkpoint_arrays(self.model, self.history, self.extra_state()), compress=False)
        self.written_epochs.append(done)


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------
def train(model, data, *, optimizer: OptimizerSpec = OptimizerSpec(), schedule: ScheduleSpec = ScheduleSpec(),
          epochs: int = 100, jit_compile: bool = False, callbacks=(), verbose: int = 1, compile: bool = True,
          checkpoint=None, checkpoint_every: int = 1, stop_event: threading.Event | None = None) -> TrainResult:
    """Train `model` on `data` (a data_preprocessor.DataBundle or anything with .train_from(epoch), .test,
    .steps_per_epoch and .label_format).

    compile=True builds the optimiser from `optimizer` / `schedule` and compiles the model; compile=False uses
    the model as the caller compiled it (e.g. with `prepare_model` inside a strategy scope). The schedule
    'plateau' adds a `PaperPlateau` callback. verbose: 0 silent, 1 one line per epoch, 2 that line and Keras'
    per-batch progress bar.

    checkpoint: a file path. When it exists, training resumes from it (`CheckpointError` if it does not fit);
    otherwise it is written every `checkpoint_every` epochs (`EpochCheckpoint`). The caller removes it when the
    run's results are saved. stop_event: once set, fit ends after the current step (off TensorFlow at most one step
    later, see StopOnRequest) and `train` raises KeyboardInterrupt (the checkpoint keeps the last complete epoch).

    Returns status "failed" (with the history so far, the last epoch marked partial) if the training loss
    becomes NaN or inf.
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
    if stop_event is not None:
        internal.insert(0, StopOnRequest(stop_event))
    if verbose:
        internal.append(EpochProgress(history, epochs))
    plateau = PaperPlateau(schedule) if schedule.name == "plateau" else None
    if plateau is not None:
        internal.append(plateau)
    earlier_seconds, initial_epoch = 0.0, 0
    if checkpoint is not None and Path(checkpoint).exists():
        state, arrays = read_checkpoint(checkpoint)
        restore_checkpoint(model, state, arrays)
        history.extend(state["history"])
        if plateau is not None:
            plateau.restore(state["plateau"])
        earlier_seconds, initial_epoch = float(state.get("seconds", 0.0)), int(state["epochs_done"])
        log.info("resumed from %s after epoch %d", checkpoint, initial_epoch)
    writer = None
    if checkpoint is not None and checkpoint_every > 0:
        def extra_state():
            return {"plateau": plateau.state() if plateau is not None else None,
                    "seconds": earlier_seconds + time.perf_counter() - start}

        writer = EpochCheckpoint(checkpoint, every=checkpoint_every, epochs=epochs, history=history,
                                 extra_state=extra_state)
        internal.append(writer)
    test = getattr(data, "test", None)
    if test is None:
        log.warning("no test data: test_loss / test_accuracy will be None")
    finished = plateau is not None and plateau.stopped_epoch is not None
    if initial_epoch < epochs and not finished:
        # shuffle=False: the pipeline orders the data itself (Keras would only warn that it ignores the flag).
        model.fit(data.train_from(initial_epoch), epochs=epochs, initial_epoch=initial_epoch,
                  steps_per_epoch=int(data.steps_per_epoch), validation_data=test,
                  callbacks=internal + list(callbacks), verbose=1 if verbose >= 2 else 0, shuffle=False)
    complete = len([h for h in history if not h["partial"]])
    plateau_stop = plateau is not None and plateau.stopped_epoch is not None
    if stop_event is not None and stop_event.is_set() and not stopper.triggered and complete < epochs \
            and not plateau_stop:
        raise KeyboardInterrupt(f"stop requested after epoch {complete}")

    seconds = earlier_seconds + float(time.perf_counter() - start)
    if stopper.triggered:
        return TrainResult(history=history, status="failed", message=stopper.message, seconds=seconds,
                           resumed_from=initial_epoch)
    message = ""
    if plateau is not None and plateau.stopped_epoch is not None:
        message = f"stopped after {plateau.reductions} learning-rate reductions at epoch {plateau.stopped_epoch}"
    elif len(history) < epochs:
        message = f"stopped early after {len(history)} of {epochs} epochs"
    return TrainResult(history=history, status="ok", message=message, seconds=seconds, resumed_from=initial_epoch)
