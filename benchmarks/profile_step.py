"""Op-level profile of the training step: where the Supermask step spends time that the baseline step does not.

    python benchmarks/profile_step.py --model fcn --variants baseline,masked,masked_cg --steps 30 --threads 1

Each variant is compiled through model_trainer (as train_throughput.py does), warmed up, and one epoch of `--steps`
steps is traced with the TensorFlow profiler (`tf.profiler.experimental`). The trace's XSpace (host plane) is
read directly, without TensorBoard: every TensorFlow op kernel event is summed per op type and per op (layer scope
and op name, instance suffixes removed), in milliseconds per step. With --xla on the XLA cluster shows as one op.

Printed: per op type, the ms/step of every variant; then the ops whose time differs most between the first masked
variant and the baseline. Kernel time only: the executor's own per-op overhead is in the 'executor' row (the
wall time of the step function minus the sum of its kernels), which grows with the number of ops.
"""

from __future__ import annotations

import argparse
import collections
import glob
import logging
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402  (first: the repository on sys.path, TensorFlow imported quietly)

# isort: split
import tensorflow as tf  # noqa: E402

log = logging.getLogger("profile_step")

_SUFFIX = re.compile(r"_\d+(?=/|$)")
_OP_EVENT = re.compile(r"[\w./\-]+:\w+")


def profile(model, data, steps: int, logdir: str) -> dict:
    """{'types': {op type: ms/step}, 'ops': {op: ms/step}, 'step_ms': wall ms/step of the step function}."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(logdir)
    timing = common.fit_epoch(model, data, steps)
    tf.profiler.experimental.stop()
    (path,) = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    types, ops = collections.Counter(), collections.Counter()
    step_ps = count = 0
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names[event.metadata_id]
                if name == "multi_step_on_iterator":
                    step_ps += event.duration_ps
                    continue
                if "::" in name or not _OP_EVENT.fullmatch(name):
                    continue  # runtime events (executor, eager, tf.data), not op kernels
                op, kind = name.rsplit(":", 1)
                if op.startswith("Iterator::") or kind.startswith("Iterator"):
                    continue
                op = op.removeprefix("StatefulPartitionedCall/")
                op = _SUFFIX.sub("", op)
                kind = kind.removeprefix("_Mkl")
                types[kind] += event.duration_ps
                count += 1
                ops[f"{op} ({kind})"] += event.duration_ps
    per_step = 1e-9 / steps  # ps -> ms, per step
    kernels = sum(types.values()) * per_step
    result = {"types": {k: v * per_step for k, v in types.items()}, "ops": {k: v * per_step for k, v in ops.items()},
              "step_ms": step_ps * per_step, "kernels_ms": kernels, "epoch_ms": 1e3 * timing.wall / steps,
              "ops_per_step": count / steps}
    result["types"]["executor (step - kernels)"] = result["step_ms"] - kernels
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fcn", choices=sorted(common.MODEL_DATASET), help="the network profiled")
    p.add_argument("--variants", default="baseline,masked",
                   help=f"comma-separated from {', '.join(common.VARIANTS)}; the first besides baseline is compared "
                        "with baseline op by op")
    p.add_argument("--steps", type=int, default=30, help="training steps profiled per variant")
    p.add_argument("--xla", choices=("on", "off"), default="off", help="compile the step with XLA")
    p.add_argument("--precision", choices=("float32", "mixed_float16", "mixed_bfloat16"), default="float32",
                   help="Keras dtype policy")
    common.add_threads_argument(p)
    p.add_argument("--top", type=int, default=20, help="ops listed, largest time difference first")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.start(args.threads)
    variants = [v for v in args.variants.split(",") if v]
    data = common.memory_dataset(args.model)
    results = {}
    with common.precision(args.precision), tempfile.TemporaryDirectory() as tmp:
        models = {v: common.compiled_model(args.model, v, steps=args.steps, jit_compile=args.xla == "on")
                  for v in variants}
        for model in models.values():
            common.fit_epoch(model, data, args.steps)  # trace / compile
        for v, model in models.items():
            results[v] = profile(model, data, args.steps, f"{tmp}/{v}")
    print(f"\n{args.model}, xla {args.xla}, {args.precision}, {args.steps} steps; machine: {common.machine()}\n")
    kinds = sorted({k for r in results.values() for k in r["types"]},
                   key=lambda k: -max(r["types"].get(k, 0.0) for r in results.values()))
    print("| op type | " + " | ".join(f"{v} ms/step" for v in variants) + " |")
    print("|---|" + "---|" * len(variants))
    for row, key in [("epoch wall / steps", "epoch_ms"), ("step function (wall)", "step_ms"),
                     ("kernels (sum)", "kernels_ms"), ("op kernels run per step (count)", "ops_per_step")]:
        print(f"| {row} | " + " | ".join(f"{results[v][key]:.3f}" for v in variants) + " |")
    for k in kinds:
        print(f"| {k} | " + " | ".join(f"{results[v]['types'].get(k, 0.0):.3f}" for v in variants) + " |")
    masked = next((v for v in variants if v != "baseline"), None)
    if masked and "baseline" in variants:
        a, b = results["baseline"]["ops"], results[masked]["ops"]
        diff = {k: b.get(k, 0.0) - a.get(k, 0.0) for k in set(a) | set(b)}
        print(f"\nops with the largest {masked} - baseline difference (ms/step):\n")
        print(f"| op | baseline | {masked} | difference |\n|---|---|---|---|")
        for k in sorted(diff, key=lambda k: -abs(diff[k]))[: args.top]:
            print(f"| {k} | {a.get(k, 0.0):.3f} | {b.get(k, 0.0):.3f} | {diff[k]:+.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
