"""Shared helpers of the benchmark scripts: repo on sys.path, in-memory data of the real shapes, the layer variants
(the repo's baseline and Supermask layers, plus prototype Supermask implementations), models compiled through
model_trainer, an epoch timer and interleaved (ABBA) timing.

Prototype variants (measured next to the repo's `custom_layers.MaskedLayers`; same variables, same initial values,
same forward values and gradients, checked by `verify_variants`):

    masked        the repo: K = w * (M + (m - sg(m))), M = sign(m) * 1[|m| > tau]      (sg = stop_gradient)
    masked_sg     the same expression with sg(M): the backward pass no longer differentiates sign(m) * cast(...)
                  (Mul gradient, Sign's zeros_like, AddN). A one-line patch of `custom_layers.straight_through`.
    masked_cg     custom gradient: forward K = w * M only (no STE arithmetic), backward dL/dm = dL/dK * w.
    masked_cgw    custom gradient with the forward as one select: K = where(|m| > tau, w * sign(m), 0).
    masked_cg2    custom gradient with the forward as two selects: K = where(m > tau, w, where(m < -tau, -w, 0)).
    masked_xla    the repo's expression in a tf.function(jit_compile=True): XLA fuses the mask arithmetic (and its
                  gradient) into one kernel each, also when the model itself is not jit-compiled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tf_logs  # noqa: E402

tf_logs.import_tensorflow()  # before Keras: TensorFlow's start-up noise filtered, as in the command-line tools

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

import custom_layers  # noqa: E402
import model_trainer  # noqa: E402
from architectures import build_model  # noqa: E402
from data_preprocessor import DATASETS, load_arrays, standardize_images  # noqa: E402

log = logging.getLogger("benchmarks")
tf.get_logger().setLevel("ERROR")  # one trace per compiled model triggers TF's retracing warning; it is expected

MODEL_DATASET = {"fcn": "mnist", "conv2": "cifar10", "conv4": "cifar10", "conv6": "cifar10", "conv8": "cifar10",
                 "resnet20": "cifar10", "resnet20x2": "cifar10", "resnet20x3": "cifar10", "resnet56": "cifar10",
                 "resnet110": "cifar10"}


def architecture_of(model_name: str) -> tuple[str, dict]:
    """A benchmark model name as (architecture, builder kwargs): `resnet20x2` is ResNet20 of width 2."""
    base, _, width = model_name.partition("x")
    return (base, {"width": int(width)}) if width else (model_name, {})


# --------------------------------------------------------------------------------------------------------------
# Prototype Supermask layers
# --------------------------------------------------------------------------------------------------------------
def kernel_sg(layer):
    """masked_sg: K = w * (sg(M) + (m - sg(m)))."""
    m = ops.convert_to_tensor(layer.mask)
    hard = ops.stop_gradient(layer.mask_mode.hard(m, ops.convert_to_tensor(layer.threshold)))
    kernel = ops.convert_to_tensor(layer.kernel) * (hard + (m - ops.stop_gradient(m)))
    return ops.cast(kernel, layer.compute_dtype)


def _hard_mul(layer, w, m, tau):
    return w * layer.mask_mode.hard(m, tau)


def _hard_where(layer, w, m, tau):
    return ops.where(ops.abs(m) > tau, w * ops.sign(m), 0.0)


def _hard_where2(layer, w, m, tau):
    return ops.where(m > tau, w, ops.where(m < -tau, -w, 0.0))


def kernel_cg(layer, hard_kernel=_hard_mul):
    """masked_cg: forward hard_kernel (w * M), backward dL/dm = dL/dK * w (the STE's gradient, without its
    forward arithmetic)."""
    # tf.convert_to_tensor reads each variable once into a tensor; keras' ops.convert_to_tensor returns the
    # Variable itself (every op then reads it again), which tf.custom_gradient would have to treat as a variable
    # used inside the function.
    w = tf.convert_to_tensor(layer.kernel)
    tau = tf.convert_to_tensor(layer.threshold)

    @ops.custom_gradient
    def kernel_of(m):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            return upstream * w

        return hard_kernel(layer, w, m, tau), grad

    return ops.cast(kernel_of(tf.convert_to_tensor(layer.mask)), layer.compute_dtype)


def kernel_cgw(layer):
    """masked_cgw: as masked_cg with the forward as one select, where(|m| > tau, w * sign(m), 0) (signed only)."""
    return kernel_cg(layer, _hard_where)


def kernel_cg2(layer):
    """masked_cg2: as masked_cg with the forward as two selects, where(m > tau, w, where(m < -tau, -w, 0))."""
    return kernel_cg(layer, _hard_where2)


@tf.function(jit_compile=True)
def _fused_signed_kernel(w, m, tau):
    """The repo's expression, w * (M + (m - sg(m))), compiled by XLA into one fused kernel (and its gradient into
    another), also inside a model that is not jit-compiled."""
    hard = ops.sign(m) * ops.cast(ops.abs(m) > tau, m.dtype)
    return w * (hard + (m - ops.stop_gradient(m)))


def kernel_xla(layer):
    """masked_xla: the effective kernel as a small XLA-compiled function (signed mode)."""
    kernel = _fused_signed_kernel(tf.convert_to_tensor(layer.kernel), tf.convert_to_tensor(layer.mask),
                                  tf.convert_to_tensor(layer.threshold))
    return ops.cast(kernel, layer.compute_dtype)


KERNEL_FUNCTIONS = {
    "masked": custom_layers.MaskedKernelMixin.effective_kernel,
    "masked_sg": kernel_sg,
    "masked_cg": kernel_cg,
    "masked_cgw": kernel_cgw,
    "masked_cg2": kernel_cg2,
    "masked_xla": kernel_xla,
}


def _layer_classes(tag):
    fn = KERNEL_FUNCTIONS[tag]
    body = {"effective_kernel": lambda self: fn(self)}
    dense = type(f"MaskedDense_{tag}", (custom_layers.MaskedDense,), dict(body))
    conv = type(f"MaskedConv2D_{tag}", (custom_layers.MaskedConv2D,), dict(body))
    return dense, conv


class PrototypeLayers(custom_layers.MaskedLayers):
    """MaskedLayers (same kwargs, seeds, initial values) that builds prototype layer classes."""

    classes: tuple = ()

    def dense(self, units, *, index, name):
        return self.classes[0](units, name=name, **self._kwargs(index))

    def conv2d(self, filters, kernel_size, *, strides=1, index, name):
        return self.classes[1](filters, kernel_size, strides=strides, padding="same", name=name,
                               **self._kwargs(index))


def _prototype(tag):
    return type(f"PrototypeLayers_{tag}", (PrototypeLayers,), {"classes": _layer_classes(tag)})


VARIANTS = {
    "baseline": custom_layers.BaselineLayers,
    "masked": custom_layers.MaskedLayers,
    "masked_sg": _prototype("masked_sg"),
    "masked_cg": _prototype("masked_cg"),
    "masked_cgw": _prototype("masked_cgw"),
    "masked_cg2": _prototype("masked_cg2"),
    "masked_xla": _prototype("masked_xla"),
}


def layer_factory(variant: str, seed: int = 0):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS)}")
    return VARIANTS[variant](seed=seed)


def verify_variants(variants) -> None:
    """Each prototype gives the repo's forward values (exactly) and mask gradients (to float rounding), for a
    MaskedDense and a MaskedConv2D. Raises AssertionError otherwise."""
    rng = np.random.default_rng(0)
    cases = [("dense", (16, 40), lambda f: f.dense(24, index=0, name="d")),
             ("conv", (4, 8, 8, 5), lambda f: f.conv2d(6, 3, index=1, name="c"))]
    for kind, shape, make in cases:
        x = tf.constant(rng.normal(size=shape).astype("float32"))
        ref_layer = make(custom_layers.MaskedLayers(seed=3))
        ref_out, ref_grad = _forward_backward(ref_layer, x)
        for variant in variants:
            if not variant.startswith("masked_"):
                continue
            layer = make(layer_factory(variant, seed=3))
            out, grad = _forward_backward(layer, x)
            np.testing.assert_array_equal(out, ref_out, err_msg=f"{variant} {kind} forward")
            np.testing.assert_allclose(grad, ref_grad, rtol=1e-6, atol=1e-6, err_msg=f"{variant} {kind} grad")
    log.info("prototype variants agree with custom_layers: %s", ", ".join(v for v in variants if "_" in v))


def _forward_backward(layer, x):
    layer.build(x.shape)
    with tf.GradientTape() as tape:
        out = layer(x)
        loss = tf.reduce_sum(out * out)
    return out.numpy(), tape.gradient(loss, layer.mask).numpy()


# --------------------------------------------------------------------------------------------------------------
# Data and models
# --------------------------------------------------------------------------------------------------------------
def memory_dataset(model_name: str, batch_size: int = 128, batches: int = 8, seed: int = 0) -> tf.data.Dataset:
    """`batches` distinct batches of synthetic data of the model's real input shape (standardised like the repo's
    pipeline, one-hot labels), cached in memory, repeated forever and prefetched: the step is measured, not the
    input pipeline (see pipeline_throughput.py for that)."""
    dataset = MODEL_DATASET[model_name]
    n = batch_size * batches
    x, y, _, _ = load_arrays(dataset, "synthetic", synthetic_train=n, synthetic_test=0, seed=seed)
    x = standardize_images(x)
    if model_name == "fcn":
        x = x.reshape(n, -1)
    y = np.eye(DATASETS[dataset].num_classes, dtype="float32")[y]
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size, drop_remainder=True)
    return ds.cache().repeat().prefetch(tf.data.AUTOTUNE)


def compiled_model(model_name: str, variant: str, *, steps: int, jit_compile: bool, seed: int = 0,
                   num_classes: int = 10, label_format: str = "one_hot"):
    """build_model + model_trainer.make_optimizer (SGDW, exponential schedule) + compile_model, as users run it."""
    architecture, kwargs = architecture_of(model_name)
    model = build_model(architecture, layer_factory(variant, seed), num_classes=num_classes, **kwargs)
    optimizer = model_trainer.make_optimizer(model_trainer.OptimizerSpec("sgdw", learning_rate=0.05,
                                                                         weight_decay=5e-4),
                                             model_trainer.ScheduleSpec("exponential_decay"), steps, 100)
    model_trainer.compile_model(model, optimizer, label_format=label_format, jit_compile=jit_compile)
    if bool(model.jit_compile) != bool(jit_compile):
        raise RuntimeError(f"jit_compile={jit_compile} requested but Keras uses {model.jit_compile} "
                           "(op determinism enabled?)")
    return model


class EpochTimer(keras.callbacks.Callback):
    """Wall time and process CPU time of each epoch, from on_epoch_begin to on_epoch_end (after Keras read the
    epoch's metrics, so the device work is done). CPU time counts the work of all of this process' threads and
    is much less affected than wall time by other processes competing for the cores."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self._start = self._cpu = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu)


class Timing(tuple):
    """(wall seconds, cpu seconds) of one measurement."""

    @property
    def wall(self) -> float:
        return self[0]

    @property
    def cpu(self) -> float:
        return self[1]


def fit_epoch(model, data, steps: int, callbacks=()) -> Timing:
    """One timed epoch of `steps` steps; returns its (wall, cpu) seconds."""
    timer = EpochTimer()
    model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer, *callbacks])
    return Timing((timer.seconds[-1], timer.cpu_seconds[-1]))


def interleaved(runners: dict, rounds: int) -> dict[str, list]:
    """Call every runner once per round, in ABBA order (reversed every other round); returns name -> results."""
    names = list(runners)
    out = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(runners[name]())
        log.debug("round %d/%d: %s", r + 1, rounds, ", ".join(f"{n} {out[n][-1]}" for n in names))
    return out


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator[r] / denominator[r] (pairs measured next to each other)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


@contextlib.contextmanager
def precision(name: str):
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def parse_steps_for(text: str | None) -> dict[str, int]:
    """'conv8=2,resnet20=3' -> {'conv8': 2, 'resnet20': 3} (per-model steps per timed epoch)."""
    out = {}
    for item in (text or "").split(","):
        if item.strip():
            name, _, value = item.partition("=")
            if name.strip() not in MODEL_DATASET or not value.strip().isdigit() or int(value) < 1:
                raise ValueError(f"--steps-for expects MODEL=STEPS items, got {item!r}")
            out[name.strip()] = int(value)
    return out


LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"


def add_threads_argument(parser) -> None:
    """The --threads option every benchmark takes; `start` applies it."""
    parser.add_argument("--threads", type=int, default=0,
                        help="TF intra/inter-op threads (0: TF's default, all cores)")


def start(threads: int | None, log_format: str = LOG_FORMAT) -> None:
    """A benchmark's first step: INFO logging in `log_format`, then `set_threads(threads)`."""
    logging.basicConfig(level=logging.INFO, format=log_format, datefmt="%H:%M:%S")
    set_threads(threads)


def set_threads(threads: int | None) -> None:
    """TensorFlow intra-op threads (None or 0: TF's default, all cores); inter-op follows. Must run before TF
    executes its first op."""
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))


def machine() -> str:
    cores = os.cpu_count()
    gpus = tf.config.list_physical_devices("GPU")
    return (f"{cores}-core CPU, {len(gpus)} GPU, TensorFlow {tf.__version__} "
            f"({'CUDA' if tf.test.is_built_with_cuda() else 'CPU'} build), Keras {keras.__version__}, "
            f"intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
            f"load average {os.getloadavg()[0]:.2f}")
