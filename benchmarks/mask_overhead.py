"""Where the Supermask step spends its extra time: the effective-kernel computation alone, per variant.

    python benchmarks/mask_overhead.py --models fcn,conv2 --calls 50 --rounds 7

For every masked layer of a model it times, in one tf.function (with and without XLA), the part of a training step
that differs from the dense baseline: reading w, m and tau, computing the effective kernel K of every layer, and,
given an upstream gradient G = dL/dK (random, fixed), the mask gradients dL/dm. The dense reference ('dense') takes
K = the kernel variable itself and returns dL/dK. Forward-only timings ('fwd') leave the backward pass out.

    dense      K = w                                    (what the baseline does: nothing)
    masked     custom_layers.MaskedKernelMixin.effective_kernel (the repo)
    masked_sg  straight_through with stop_gradient on the hard mask
    masked_cg  custom gradient: forward w * M, backward G * w
    masked_cgw custom gradient: forward where(|m| > tau, w * sign(m), 0), backward G * w
    masked_cg2 custom gradient: forward where(m > tau, w, where(m < -tau, -w, 0)), backward G * w
    masked_xla the repo's expression inside a tf.function(jit_compile=True)

All variants run interleaved (ABBA) `--rounds` times, each timing `--calls` calls; the table shows the median
milliseconds per call and the difference from 'dense', i.e. the extra time per training step that the masking costs.
With --xla on, XLA constant-folds parts of the 'dense' reference (its gradient is the constant G), so the XLA
rows are not comparable with a real step; use train_throughput.py for XLA.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402  (first: the repository on sys.path, TensorFlow imported quietly)

# isort: split
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import custom_layers  # noqa: E402
from architectures import build_model  # noqa: E402

log = logging.getLogger("mask_overhead")

KERNELS = common.KERNEL_FUNCTIONS


def make_functions(layers, xla: bool):
    rng = np.random.default_rng(0)
    upstream = [tf.constant(rng.normal(size=layer.kernel.shape).astype("float32")) for layer in layers]
    functions = {}

    def dense_step():
        with tf.GradientTape() as tape:
            tape.watch([layer.kernel.value for layer in layers])
            ks = [tf.convert_to_tensor(layer.kernel) for layer in layers]
            loss = tf.add_n([tf.reduce_sum(k * g) for k, g in zip(ks, upstream)])
        grads = tape.gradient(loss, ks)
        return loss + tf.add_n([tf.reduce_sum(g) for g in grads])

    functions["dense"] = dense_step
    for name, kernel_fn in KERNELS.items():
        def step(kernel_fn=kernel_fn):
            with tf.GradientTape() as tape:
                ks = [tf.cast(kernel_fn(layer), tf.float32) for layer in layers]
                loss = tf.add_n([tf.reduce_sum(k * g) for k, g in zip(ks, upstream)])
            grads = tape.gradient(loss, [layer.mask.value for layer in layers])
            # Return the loss too: else graph pruning drops the forward (the STE gradient G * w needs no K).
            return loss + tf.add_n([tf.reduce_sum(g) for g in grads])

        def forward(kernel_fn=kernel_fn):
            ks = [tf.cast(kernel_fn(layer), tf.float32) for layer in layers]
            return tf.add_n([tf.reduce_sum(k * g) for k, g in zip(ks, upstream)])

        functions[name] = step
        functions[f"{name} fwd"] = forward

    def dense_forward():
        return tf.add_n([tf.reduce_sum(tf.convert_to_tensor(layer.kernel) * g) for layer, g in zip(layers, upstream)])

    functions["dense fwd"] = dense_forward
    return {name: tf.function(fn, jit_compile=xla) for name, fn in functions.items()}


def check(functions) -> None:
    """Every variant gives the repo's loss and the same gradient sum (to rounding)."""
    ref = float(functions["masked"]())
    for name, fn in functions.items():
        if name.startswith("masked") and " " not in name:
            value = float(fn())
            assert abs(value - ref) <= 1e-4 * max(1.0, abs(ref)), (name, value, ref)


def time_calls(fn, calls: int) -> float:
    fn().numpy()
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    out.numpy()
    return (time.perf_counter() - start) / calls


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="fcn,conv2,resnet20",
                   help=f"comma-separated from {', '.join(common.MODEL_DATASET)}")
    p.add_argument("--calls", type=int, default=50, help="calls of each timed function per round")
    p.add_argument("--rounds", type=int, default=7, help="rounds, the functions interleaved (median reported)")
    p.add_argument("--xla", choices=("both", "on", "off"), default="both", help="time with XLA, without, or both")
    common.add_threads_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.start(args.threads)
    xla_modes = {"both": [False, True], "on": [True], "off": [False]}[args.xla]
    print(f"machine: {common.machine()}\n")
    lines = ["| model | masked params | xla | variant | ms/step fwd+bwd | extra vs dense | ms fwd only | "
             "extra fwd vs dense |", "|---|---|---|---|---|---|---|---|"]
    for name in args.models.split(","):
        model = build_model(name, custom_layers.MaskedLayers(seed=0))
        layers = custom_layers.masked_layers(model)
        params = sum(int(np.prod(layer.kernel.shape)) for layer in layers)
        for xla in xla_modes:
            functions = make_functions(layers, xla)
            check(functions)
            runners = {n: (lambda fn=fn: time_calls(fn, args.calls)) for n, fn in functions.items()}
            times = common.interleaved(runners, args.rounds)
            med = {n: 1e3 * statistics.median(t) for n, t in times.items()}
            for variant in ["dense"] + list(KERNELS):
                extra = med[variant] - med["dense"]
                extra_fwd = med[f"{variant} fwd"] - med["dense fwd"]
                lines.append(f"| {name} | {params:,} | {'on' if xla else 'off'} | {variant} | "
                             f"{med[variant]:.3f} | {extra:+.3f} | {med[f'{variant} fwd']:.3f} | {extra_fwd:+.3f} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
