"""Inference speed and file size of a shrunk Supermask (shrink.py) next to its stripped model and the dense baseline.

    python benchmarks/shrink_inference.py --model fcn --synthetic-masks 0.04 --threads 1
    python benchmarks/shrink_inference.py --run-dir results/fcn-<hash>/run_000 --threads 1 --json OUT.json

Models, side by side in one process:
    baseline  the dense network of the same architecture (custom_layers.BaselineLayers), stock Dense / Conv2D
    stripped  shrink.strip(supermask): stock layers with kernel w * M, the same shapes as the baseline
    shrunk    shrink.shrink(supermask).model: the stripped model without its dead units (fed x[..., survivors])

Supermask source: `--run-dir` rebuilds a trained looper run (or a ledger run, from its compact artifact) with
run_folder.load_run_model; otherwise
`--model NAME --synthetic-masks F` builds the Supermask with random effective masks: every weight is kept with
probability F (signs 50/50, per layer), and, with `--bn random` (default), BN layers get random non-trivial
statistics (beta, mean != 0, as after training; `--bn default` keeps the initial identity BN, which maps 0 to 0
and so lets more channels be removed). Random masks are NOT a trained network: which units die depends on the
structure a real training leaves (a trained FCN keeps 468-115-99-10; random 4 % masks kill mostly units of the
last hidden layer, whose 10 outgoing weights are all zero with probability 0.96^10 = 66 %). The output says which.

Timing (CPU unless a GPU is visible). Each model is called through `tf.function(lambda x: model(x, training=False))`
with a fixed input signature (traced once, no XLA), so the numbers are the TF graph's execution cost, not Keras'
eager per-layer Python overhead, which dominates batch-1 eager calls and is the same for all three models.
    latency     batch 1: each round times `--calls` single calls (perf_counter around call + .numpy()), and
                takes their median; reported: the median over rounds, in ms
    throughput  batch `--batch` (1000): each round times `--batch-calls` calls; reported: the median over rounds
                of batch / seconds per call, in images/s
Rounds are interleaved (A B C, C B A, ...: common.interleaved); ratios are medians over rounds of the per-round
ratio (common.paired_ratio), for shrunk/stripped and shrunk/baseline. File sizes: the Supermask's model.save
(.keras: float32 w, m, tau), the stripped .keras, the shrunk .keras (+ its survivors sidecar) and the compact
artifact (run_folder.save_compact).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402  (first: the repository on sys.path, TensorFlow imported quietly)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import run_folder  # noqa: E402
import shrink  # noqa: E402
from architectures import build_model  # noqa: E402
from custom_layers import BaselineLayers, MaskedLayers, masked_layers  # noqa: E402

log = logging.getLogger("shrink_inference")

SYNTHETIC_MODELS = ("fcn", "conv2", "conv4", "resnet20")


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------
def random_masks(model, fraction: float, seed: int, bn: str) -> None:
    """Effective masks with each weight kept with probability `fraction` (signs 50/50); m = M * (tau + 1)."""
    rng = np.random.default_rng(seed)
    for layer in masked_layers(model):
        shape = tuple(layer.kernel.shape)
        mask = np.where(rng.random(shape) < 0.5, -1.0, 1.0) * (rng.random(shape) < fraction)
        tau = float(keras.ops.convert_to_numpy(layer.threshold))
        layer.mask.assign((mask * (tau + 1.0)).astype("float32"))
    if bn == "random":
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                n = layer.gamma.shape[0]
                layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.5, n), rng.normal(0, 0.5, n),
                                   rng.uniform(0.5, 2.0, n)])


def synthetic_models(name: str, fraction: float, seed: int, bn: str):
    """(supermask, baseline, description)."""
    supermask = build_model(name, MaskedLayers(seed=seed))
    random_masks(supermask, fraction, seed, bn)
    baseline = build_model(name, BaselineLayers(seed=seed))
    bn_text = (f", BN statistics {bn}" if any(isinstance(layer, keras.layers.BatchNormalization)
                                              for layer in supermask.layers) else "")
    text = (f"SYNTHETIC masks (not a trained run): {name}, each weight kept with probability {fraction:g} "
            f"(signs 50/50), seed {seed}{bn_text}")
    return supermask, baseline, text


def run_dir_models(run_dir: Path):
    """(supermask, baseline, description) of a looper or ledger run directory (run_folder.load_run_model)."""
    cfg, seed, run = run_folder.read_run_config(run_dir, data_source="synthetic")
    supermask = run_folder.load_run_model(run_dir, cfg, seed, run)
    baseline_cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, mask_mode="none", weight_init=None))
    baseline = run_folder.build_run_model(baseline_cfg, seed, run)
    text = (f"looper run directory {run_dir} (its saved masks): {cfg.model.architecture}, "
            f"mask_mode {cfg.model.mask_mode}, seed {seed}")
    return supermask, baseline, text


# --------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------
def compiled(model, feature_shape):
    """tf.function of model(x, training=False) for float32 inputs of any batch size (traced per batch size)."""
    fn = tf.function(lambda x: model(x, training=False),
                     input_signature=[tf.TensorSpec((None,) + tuple(feature_shape), tf.float32)])
    return fn


def latency_round(fn, x, calls: int) -> float:
    """Median seconds of `calls` single calls."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(x).numpy()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def throughput_round(fn, x, calls: int) -> float:
    """Images per second over `calls` calls on batch x."""
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(x)
    out.numpy()
    return calls * x.shape[0] / (time.perf_counter() - start)


def file_sizes(supermask, stripped, result, directory: Path) -> dict[str, int]:
    paths = {"supermask_keras": directory / "supermask.keras", "stripped_keras": directory / "stripped.keras",
             "shrunk_keras": directory / "shrunk.keras", "compact_npz": directory / "compact.npz"}
    supermask.save(paths["supermask_keras"])
    stripped.save(paths["stripped_keras"])
    saved = shrink.save_shrunk(result, paths["shrunk_keras"])
    run_folder.save_compact(supermask, paths["compact_npz"])
    sizes = {key: int(path.stat().st_size) for key, path in paths.items()}
    sizes["shrunk_sidecar_json"] = int(saved["sidecar"].stat().st_size)
    return sizes


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", type=Path, help="a looper run directory (config.yaml, masks.npz)")
    source.add_argument("--model", choices=SYNTHETIC_MODELS, help="build this model with synthetic masks")
    p.add_argument("--synthetic-masks", type=float, metavar="FRACTION",
                   help="with --model: remaining fraction of the random masks (e.g. 0.04)")
    p.add_argument("--bn", choices=("random", "default"), default="random",
                   help="with --model: BN statistics of the synthetic Supermask (default random)")
    p.add_argument("--seed", type=int, default=0, help="with --model: seed of the weights and the random masks")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--calls", type=int, default=200, help="batch-1 calls per round (default 200)")
    p.add_argument("--batch", type=int, default=1000, help="throughput batch size (default 1000)")
    p.add_argument("--batch-calls", type=int, default=5, help="throughput calls per round (default 5)")
    common.add_threads_argument(p)
    p.add_argument("--keep-files", type=Path, help="write the model files here instead of a temporary directory")
    p.add_argument("--json", type=Path, help="write the raw numbers here")
    args = p.parse_args(argv)
    if args.model and args.synthetic_masks is None:
        p.error("--model needs --synthetic-masks FRACTION")
    if args.synthetic_masks is not None and not 0.0 < args.synthetic_masks <= 1.0:
        p.error("--synthetic-masks must be in (0, 1]")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    common.start(args.threads)
    if args.run_dir:
        supermask, baseline, source = run_dir_models(args.run_dir)
    else:
        supermask, baseline, source = synthetic_models(args.model, args.synthetic_masks, args.seed, args.bn)
    stripped = shrink.strip(supermask)
    start = time.perf_counter()
    result = shrink.shrink(supermask)
    shrink_seconds = time.perf_counter() - start
    shrunk = result.model

    feature_shape = tuple(stripped.inputs[0].shape[1:])
    rng = np.random.default_rng(args.seed + 1)
    x1 = rng.normal(size=(1,) + feature_shape).astype("float32")
    xb = rng.normal(size=(args.batch,) + feature_shape).astype("float32")
    check = rng.normal(size=(64,) + feature_shape).astype("float32")
    max_diff = shrink.max_abs_difference(result, stripped, check)
    models = {"baseline": baseline, "stripped": stripped, "shrunk": shrunk}
    inputs = {name: (x1, xb) for name in models}
    inputs["shrunk"] = (shrink.reduce_inputs(result, x1), shrink.reduce_inputs(result, xb))
    fns = {name: compiled(m, tuple(inputs[name][0].shape[1:])) for name, m in models.items()}
    for name, fn in fns.items():  # trace both batch sizes and warm up
        for x in inputs[name]:
            for _ in range(3):
                fn(tf.constant(x)).numpy()
    tensors = {name: (tf.constant(a), tf.constant(b)) for name, (a, b) in inputs.items()}

    log.info("timing: %d rounds x (%d batch-1 calls + %d batch-%d calls) per model", args.rounds, args.calls,
             args.batch_calls, args.batch)
    runners = {name: (lambda fn=fn, name=name: (latency_round(fn, tensors[name][0], args.calls),
                                                throughput_round(fn, tensors[name][1], args.batch_calls)))
               for name, fn in fns.items()}
    raw = common.interleaved(runners, args.rounds)
    latency = {name: [r[0] for r in rounds] for name, rounds in raw.items()}
    throughput = {name: [r[1] for r in rounds] for name, rounds in raw.items()}
    median_ms = {name: 1e3 * statistics.median(v) for name, v in latency.items()}
    median_ips = {name: statistics.median(v) for name, v in throughput.items()}
    ratios = {
        "latency_shrunk_over_stripped": common.paired_ratio(latency["shrunk"], latency["stripped"]),
        "latency_shrunk_over_baseline": common.paired_ratio(latency["shrunk"], latency["baseline"]),
        "latency_stripped_over_baseline": common.paired_ratio(latency["stripped"], latency["baseline"]),
        "throughput_shrunk_over_stripped": common.paired_ratio(throughput["shrunk"], throughput["stripped"]),
        "throughput_shrunk_over_baseline": common.paired_ratio(throughput["shrunk"], throughput["baseline"]),
        "throughput_stripped_over_baseline": common.paired_ratio(throughput["stripped"], throughput["baseline"]),
    }
    params = {name: int(m.count_params()) for name, m in models.items()}

    if args.keep_files:
        args.keep_files.mkdir(parents=True, exist_ok=True)
        sizes = file_sizes(supermask, stripped, result, args.keep_files)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            sizes = file_sizes(supermask, stripped, result, Path(tmp))

    lines = [f"machine: {common.machine()}", f"source: {source}",
             f"architecture: {result.architecture}  (shrink took {shrink_seconds:.2f} s, {result.rounds} rounds)",
             f"max |shrunk - stripped| on 64 inputs: {max_diff:.3g}", "",
             f"| model | parameters | batch-1 latency ms | x baseline | batch-{args.batch} img/s | x baseline |",
             "|---|---|---|---|---|---|"]
    for name in models:
        lat_ratio = common.paired_ratio(latency[name], latency["baseline"])
        ips_ratio = common.paired_ratio(throughput[name], throughput["baseline"])
        lines.append(f"| {name} | {params[name]:,} | {median_ms[name]:.3f} | {lat_ratio:.3f} | "
                     f"{median_ips[name]:,.0f} | {ips_ratio:.3f} |")
    lines.append("")
    for other in ("stripped", "baseline"):
        lines.append(f"shrunk / {other}: latency x{ratios[f'latency_shrunk_over_{other}']:.3f}, "
                     f"throughput x{ratios[f'throughput_shrunk_over_{other}']:.3f}")
    lines += ["", "| file | bytes |", "|---|---|"]
    labels = {"supermask_keras": "Supermask .keras (w, m, tau)", "stripped_keras": "stripped .keras (w*M)",
              "shrunk_keras": "shrunk .keras", "shrunk_sidecar_json": "shrunk survivors sidecar .json",
              "compact_npz": "compact .npz (save_compact)"}
    lines += [f"| {labels[k]} | {sizes[k]:,} |" for k in labels]
    print("\n".join(lines))

    if args.json:
        out = {"source": source, "synthetic": not bool(args.run_dir), "args": {k: str(v) if isinstance(v, Path)
                                                                               else v for k, v in vars(args).items()},
               "machine": common.machine(), "architecture": result.architecture, "after": result.after,
               "before": result.before, "rounds_of_removal": result.rounds, "shrink_seconds": shrink_seconds,
               "max_abs_diff_shrunk_vs_stripped": max_diff, "parameters": params,
               "latency_seconds_per_round": latency, "throughput_images_per_second_per_round": throughput,
               "latency_ms_median": median_ms, "throughput_images_per_second_median": median_ips,
               "ratios": ratios, "file_bytes": sizes}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
