"""Training throughput of the signed Supermask against its dense baseline, with and without XLA, side by side.

    python benchmarks/train_throughput.py                                  # fcn,conv2,conv4,conv6,conv8,resnet20
    python benchmarks/train_throughput.py --models fcn,conv2 --steps 20 --rounds 5 --xla both
    python benchmarks/train_throughput.py --models fcn --variants baseline,masked,masked_sg,masked_cg,masked_cgw
    python benchmarks/train_throughput.py --models all --precision mixed_bfloat16 --json results.json

For every model it builds each variant (the repo's `BaselineLayers` and `MaskedLayers`, and optionally the
prototype Supermask layers of benchmarks/_common.py) with and without XLA, compiles it through model_trainer
(make_optimizer: SGDW + exponential schedule; compile_model), trains one warm-up epoch (tracing / XLA compilation),
then `--rounds` timed epochs of `--steps` steps of batch `--batch` on in-memory synthetic data of the real shapes.
The epochs of all variants are interleaved in ABBA order, so that the load of other processes hits all of them
alike. Reported per (model, xla, variant): median images/s, and the step-time ratio variant/baseline as the median
over rounds of the ratio of the two epochs measured next to each other.

Goal (issue "Speed and scale"): masked/baseline step time <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402  (first: the repository on sys.path, TensorFlow imported quietly)

# isort: split
import keras  # noqa: E402

log = logging.getLogger("train_throughput")

DEFAULT_MODELS = ("fcn", "conv2", "conv4", "conv6", "conv8", "resnet20")
ALL_MODELS = tuple(common.MODEL_DATASET)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated, or 'all' ({', '.join(ALL_MODELS)})")
    p.add_argument("--variants", default="baseline,masked",
                   help=f"comma-separated from {', '.join(common.VARIANTS)}; 'baseline' is always included")
    p.add_argument("--xla", choices=("both", "on", "off"), default="both", help="time with XLA, without, or both")
    p.add_argument("--precision", choices=("float32", "mixed_float16", "mixed_bfloat16"), default="float32",
                   help="Keras dtype policy")
    p.add_argument("--steps", type=int, default=50, help="steps per timed epoch")
    p.add_argument("--steps-for", default="", metavar="MODEL=N,...",
                   help="per-model steps per epoch, e.g. conv8=3,resnet20=5 (the big models on a CPU)")
    p.add_argument("--rounds", type=int, default=5, help="timed epochs per variant (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed epochs per variant first")
    p.add_argument("--batch", type=int, default=128, help="batch size")
    common.add_threads_argument(p)
    p.add_argument("--json", help="write the results to this file")
    p.add_argument("--no-verify", action="store_true", help="skip the check that prototypes match the repo layers")
    args = p.parse_args(argv)
    args.models = list(ALL_MODELS) if args.models == "all" else [m.strip() for m in args.models.split(",") if m]
    for m in args.models:
        if m not in common.MODEL_DATASET:
            p.error(f"unknown model {m!r}; allowed: {', '.join(ALL_MODELS)}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in common.VARIANTS:
            p.error(f"unknown variant {v!r}; allowed: {', '.join(common.VARIANTS)}")
    args.variants = ["baseline"] + [v for v in variants if v != "baseline"]
    args.xla_modes = {"both": [False, True], "on": [True], "off": [False]}[args.xla]
    try:
        args.steps_for = common.parse_steps_for(args.steps_for)
    except ValueError as exc:
        p.error(str(exc))
    return args


def benchmark_model(name: str, args) -> list[dict]:
    data = common.memory_dataset(name, args.batch)
    steps = args.steps_for.get(name, args.steps)
    models, runners = {}, {}
    for xla in args.xla_modes:
        for variant in args.variants:
            key = (xla, variant)
            models[key] = common.compiled_model(name, variant, steps=steps, jit_compile=xla)
            runners[f"{'xla' if xla else 'noxla'}/{variant}"] = (
                lambda model=models[key]: common.fit_epoch(model, data, steps))
    for label, run in runners.items():
        for _ in range(args.warmup):
            timing = run()
        log.info("%s %s: warm-up epoch %.2f s", name, label, timing.wall)
    times = common.interleaved(runners, args.rounds)
    images = steps * args.batch
    rows = []
    for xla in args.xla_modes:
        prefix = "xla" if xla else "noxla"
        base = times[f"{prefix}/baseline"]
        for variant in args.variants:
            t = times[f"{prefix}/{variant}"]
            wall, cpu = [x.wall for x in t], [x.cpu for x in t]
            noxla = times.get(f"noxla/{variant}")
            rows.append({
                "model": name, "xla": xla, "variant": variant, "precision": args.precision, "steps": steps,
                "images_per_s": images / statistics.median(wall),
                "cpu_ms_per_step": 1e3 * statistics.median(cpu) / steps,
                "ratio_to_baseline": common.paired_ratio(wall, [x.wall for x in base]),
                "cpu_ratio_to_baseline": common.paired_ratio(cpu, [x.cpu for x in base]),
                "ratio_to_noxla": (common.paired_ratio(wall, [x.wall for x in noxla])
                                   if xla and noxla is not None else None),
                "cpu_ratio_to_noxla": (common.paired_ratio(cpu, [x.cpu for x in noxla])
                                       if xla and noxla is not None else None),
                "wall_seconds": wall, "cpu_seconds": cpu,
            })
    keras.utils.clear_session(free_memory=True)
    return rows


def markdown(rows: list[dict], variants: list[str]) -> str:
    """One line per (model, xla): baseline img/s, then for every other variant its img/s and its step-time ratio
    to the baseline by wall time and by CPU time."""
    others = [v for v in variants if v != "baseline"]
    head = ["model", "xla", "baseline img/s"]
    for v in others:
        head += [f"{v} img/s", f"{v}/baseline wall", f"{v}/baseline cpu"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_key = {(r["model"], r["xla"], r["variant"]): r for r in rows}
    for model, xla in dict.fromkeys((r["model"], r["xla"]) for r in rows):
        cells = [model, "on" if xla else "off", f"{by_key[(model, xla, 'baseline')]['images_per_s']:.0f}"]
        for v in others:
            r = by_key[(model, xla, v)]
            cells += [f"{r['images_per_s']:.0f}", f"{r['ratio_to_baseline']:.3f}", f"{r['cpu_ratio_to_baseline']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def xla_markdown(rows: list[dict]) -> str:
    lines = ["| model | variant | XLA/no-XLA step time, wall | XLA/no-XLA step time, cpu |", "|---|---|---|---|"]
    for r in rows:
        if r["ratio_to_noxla"] is not None:
            lines.append(f"| {r['model']} | {r['variant']} | {r['ratio_to_noxla']:.3f} | "
                         f"{r['cpu_ratio_to_noxla']:.3f} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv=None) -> int:
    args = parse_args(argv)
    common.start(args.threads)
    if not args.no_verify:
        common.verify_variants(args.variants)
    log.info("machine: %s", common.machine())
    rows = []
    with common.precision(args.precision):
        for name in args.models:
            log.info("== %s (%s, %d steps x batch %d, %d rounds)", name, args.precision,
                     args.steps_for.get(name, args.steps), args.batch, args.rounds)
            rows += benchmark_model(name, args)
    steps = ", ".join(f"{m} {args.steps_for.get(m, args.steps)}" for m in args.models)
    print(f"\nTraining throughput, {args.precision}, batch {args.batch}, steps/epoch: {steps}; median of "
          f"{args.rounds} interleaved epochs; ratios = median over rounds of variant/baseline epoch time (wall) and "
          f"epoch CPU time of the process (cpu)\n"
          f"machine: {common.machine()}\n")
    print(markdown(rows, args.variants))
    table = xla_markdown(rows)
    if table:
        print("\n" + table)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": common.machine(), "args": {
            k: v for k, v in vars(args).items() if k != "xla_modes"}, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
