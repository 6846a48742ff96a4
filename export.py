"""Export of a trained signed Supermask: a plain Keras model, the compact artifact, size and layer reports.

    python export.py RUN_DIR [--out DIR] [--check-accuracy] [--data-source local --data-dir ~/datasets]

`strip(model)` (the same network as stock Dense / Conv2D with kernels w * M) and `shrink(model)` (the dead units
removed, exactly) are in shrink.py; this module writes them for a run and reports what they weigh.

The compact artifact (compact.py, written by run_folder.save_compact) stores the ternary masks at <= 2 bits per
weight and the seeds of the frozen weights. `write_artifacts(model, out_dir)` writes the stripped, shrunk and
compact forms of a trained model and measures them next to model.save('.keras') of the Supermask.
`mask_summary(model)` / `print_mask_summary` give a larq-style per-layer table that ends with the effective
architecture (e.g. `784-300-100-10 → 468-115-99-10`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

import tf_logs

tf_logs.import_tensorflow()  # a command-line tool: TensorFlow's start-up noise filtered (SUPERMASK_TF_LOGS=1)

import keras  # noqa: E402

import data_preprocessor  # noqa: E402
import run_folder  # noqa: E402
from compact import MAX_MASK_BITS  # noqa: E402
from custom_layers import MaskedKernelMixin, kernel_layers, layer_counts, leaf_layers  # noqa: E402
from shrink import input_indices, load_shrunk, save_shrunk, shrink, strip  # noqa: E402

log = logging.getLogger(__name__)

FLOAT_BITS = 32
# Test images by which a form's accuracy may differ from the trained model's and the trained model's from the
# recorded one: float rounding between backends flips an image now and then (a run trained on a GPU under JAX and
# re-evaluated on the CPU under TensorFlow moved by one image of 10,000 in the ledger's checks).
TOLERANCE_IMAGES = 2


# --------------------------------------------------------------------------------------------------------------
# Sizes and summaries
# --------------------------------------------------------------------------------------------------------------
def write_artifacts(model, out_dir) -> dict:
    """Write the stripped .keras, the shrunk .keras (with its survivors sidecar) and the compact artifact of
    `model` into `out_dir`, and report their sizes next to model.save('.keras') of the Supermask itself (float32
    kernel + mask + threshold, written to a temporary folder):

        bytes / bits_per_weight / ratio_to_compact   per artifact ('stripped_keras_deflated', zlib level 6 of the
                                                     stripped file, shows how far plain compression of the zeros
                                                     gets)
        kernel_weights, mask_code_bytes, kernel_codes, parameters (stripped, shrunk), architecture
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"stripped_keras": out_dir / run_folder.STRIPPED_KERAS, "shrunk_keras": out_dir / run_folder.SHRUNK_KERAS,
             "compact": out_dir / run_folder.COMPACT}
    stripped = strip(model)
    run_folder.atomic_save_model(stripped, paths["stripped_keras"])
    shrunk = shrink(stripped)
    save_shrunk(shrunk, paths["shrunk_keras"])
    meta = run_folder.save_compact(model, paths["compact"])
    sizes = {k: int(p.stat().st_size) for k, p in paths.items()}
    with tempfile.TemporaryDirectory() as tmp:
        supermask = Path(tmp) / "supermask.keras"
        model.save(supermask)
        sizes["keras"] = int(supermask.stat().st_size)
    # Reference only: how far plain deflate gets on the mostly-zero float32 stripped file.
    sizes["stripped_keras_deflated"] = len(zlib.compress(paths["stripped_keras"].read_bytes(), 6))
    weights = sum(int(np.prod(layer.kernel.shape)) for layer in kernel_layers(model))
    return {
        "bytes": sizes,
        "kernel_weights": weights,
        "bits_per_weight": {k: 8.0 * v / weights if weights else math.nan for k, v in sizes.items()},
        "ratio_to_compact": {k: v / sizes["compact"] for k, v in sizes.items()},
        "mask_code_bytes": sum(e["mask"]["bytes"] for e in meta["masked"].values()),
        "kernel_codes": sorted({e["kernel"]["code"] for e in meta["masked"].values()}),
        "parameters": {"stripped": shrunk.parameters_before, "shrunk": shrunk.parameters_after},
        "architecture": shrunk.architecture,
    }


def format_size_report(report: dict, title: str = "") -> str:
    names = {"keras": "Supermask .keras (float32 w, m, tau)", "stripped_keras": "stripped .keras (float32 w*M)",
             "stripped_keras_deflated": "  the same, deflated (reference)",
             "shrunk_keras": "shrunk .keras (dead units removed)", "compact": "compact .npz (ternary M + seed)"}
    lines = [title] if title else []
    lines += [f"{'artifact':<40} {'bytes':>12} {'bits/weight':>12} {'x compact':>10}", "-" * 77]
    for key, label in names.items():
        lines.append(f"{label:<40} {report['bytes'][key]:>12,d} {report['bits_per_weight'][key]:>12.3f} "
                     f"{report['ratio_to_compact'][key]:>10.1f}")
    lines.append(f"kernel weights: {report['kernel_weights']:,d}; mask codes: {report['mask_code_bytes']:,d} bytes "
                 f"before deflate; kernels: {', '.join(report['kernel_codes']) or '-'}; parameters stripped "
                 f"{report['parameters']['stripped']:,d} -> shrunk {report['parameters']['shrunk']:,d}")
    return "\n".join(lines)


def mask_summary(model) -> list[dict]:
    """One row per layer with weights, then a total row:

        name, type, shape (kernel shape, or of the first weight), parameters, kept, inverted, hidden,
        remaining_percent, bits

    Masked layers: counts of their effective mask; bits = 2 per weight (the fixed-width ternary code; the
    information bound is log2(3) = 1.585 bits, and a sparse mask codes in fewer, see compact.py). The frozen
    kernel costs no bits when its seed regenerates it and is not counted. Stock Dense / Conv2D: every weight counts
    as kept (custom_layers.layer_counts), 32 bits per weight. Other layers (BN): parameters and 32 bits
    each, no counts. The total row sums everything; its remaining_percent is over the kernel layers.
    """
    rows = []
    kernel_ids = {id(layer) for layer in kernel_layers(model)}
    for path, layer in leaf_layers(model):
        n = int(sum(int(np.prod(w.shape)) for w in layer.weights))
        if id(layer) in kernel_ids:
            counts = layer_counts(layer)
            masked = isinstance(layer, MaskedKernelMixin)
            total = counts["total"]
            rows.append({"name": path, "type": type(layer).__name__, "shape": tuple(layer.kernel.shape),
                         "parameters": total if masked else n, "kept": counts["kept"], "inverted": counts["inverted"],
                         "hidden": counts["hidden"], "remaining_percent": 100.0 * (total - counts["hidden"]) / total,
                         "bits": (MAX_MASK_BITS * total) if masked else FLOAT_BITS * n})
        elif layer.weights:
            rows.append({"name": path, "type": type(layer).__name__, "shape": tuple(layer.weights[0].shape),
                         "parameters": n, "kept": None, "inverted": None, "hidden": None,
                         "remaining_percent": None, "bits": FLOAT_BITS * n})
    counted = [r for r in rows if r["kept"] is not None]
    kernel_total = sum(r["kept"] + r["inverted"] + r["hidden"] for r in counted)
    active = sum(r["kept"] + r["inverted"] for r in counted)
    rows.append({"name": "total", "type": "", "shape": None, "parameters": sum(r["parameters"] for r in rows),
                 "kept": sum(r["kept"] for r in counted), "inverted": sum(r["inverted"] for r in counted),
                 "hidden": sum(r["hidden"] for r in counted),
                 "remaining_percent": 100.0 * active / kernel_total if kernel_total else None,
                 "bits": sum(r["bits"] for r in rows)})
    return rows


def format_mask_summary(rows: list[dict]) -> str:
    header = (f"{'layer':<22} {'type':<13} {'shape':<18} {'params':>10} {'kept':>9} {'inverted':>9} "
              f"{'hidden':>10} {'remain %':>9} {'KiB':>9}")
    lines = [header, "-" * len(header)]

    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    for r in rows:
        if r["name"] == "total":
            lines.append("-" * len(header))
        shape = "" if r["shape"] is None else "x".join(str(s) for s in r["shape"])
        lines.append(f"{r['name']:<22} {r['type']:<13} {shape:<18} {r['parameters']:>10,d} {cell(r['kept'], ',d'):>9} "
                     f"{cell(r['inverted'], ',d'):>9} {cell(r['hidden'], ',d'):>10} "
                     f"{cell(r['remaining_percent'], '.2f'):>9} {r['bits'] / 8192:>9.1f}")
    lines.append(f"bits: {MAX_MASK_BITS} per masked weight (ternary code; entropy-free bound log2(3) = 1.585), "
                 f"{FLOAT_BITS} per float parameter; frozen seeded kernels cost 0")
    return "\n".join(lines)


def print_mask_summary(model, print_fn=print) -> None:
    """Print mask_summary(model) as a table, and the effective architecture (shrink.effective_architecture)."""
    from shrink import effective_architecture

    print_fn(format_mask_summary(mask_summary(model)))
    print_fn(f"effective architecture: {effective_architecture(model)}")


def predict_dataset(model, dataset, columns: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, integer labels) of `model` over a batched (x, y) dataset (a tf.data.Dataset or any iterable
    of batches, such as the PyDataset of the other backends); y one-hot or sparse. With `columns`, the model sees
    only those columns of the last input axis (the inputs a shrunk network kept)."""
    preds, labels = [], []
    for x, y in dataset:
        if columns is not None:
            x = np.take(keras.ops.convert_to_numpy(x), columns, axis=-1)
        preds.append(np.asarray(keras.ops.convert_to_numpy(model(x, training=False))))
        y = np.asarray(keras.ops.convert_to_numpy(y))
        labels.append(np.argmax(y, axis=-1) if y.ndim > 1 else y.astype(np.int64))
    return np.concatenate(preds), np.concatenate(labels)


def max_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Export a trained signed-Supermask run: stripped and shrunk .keras "
                                            "(stock layers), the compact .npz, a size table and the effective "
                                            "architecture.")
    p.add_argument("run_dir", help="a looper run directory (config.yaml and masks.npz) or a ledger run (config.yaml "
                                    "and compact.npz)")
    p.add_argument("--out", help=f"output directory (default RUN_DIR/{run_folder.EXPORT})")
    p.add_argument("--check-accuracy", action="store_true",
                   help="evaluate the trained, compact, stripped and shrunk models on the test set (else the "
                        "shrunk model is compared with the stripped one on random inputs)")
    p.add_argument("--tolerance", type=int, default=TOLERANCE_IMAGES, metavar="IMAGES",
                   help="with --check-accuracy: exit 1 when a form's correct test images differ from the trained "
                        "model's, or the trained model's from the recorded accuracy, by more than this "
                        f"(default {TOLERANCE_IMAGES})")
    p.add_argument("--data-source", choices=data_preprocessor.SOURCES, help="override data.source")
    p.add_argument("--data-dir", help="override data.data_dir (e.g. ~/datasets with --data-source local)")
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size (default 1000)")
    p.add_argument("--no-summary", action="store_true", help="do not print the per-layer mask summary")
    args = p.parse_args(argv)
    if args.tolerance < 0:
        p.error(f"--tolerance: {args.tolerance} is not allowed (0 or more test images)")
    return args


def accuracy_disagreements(accuracies: dict, n: int, recorded: float | None, tolerance: int = TOLERANCE_IMAGES,
                           masks_identical: bool = True) -> list:
    """The reasons a check fails, [] when it passes. `accuracies` maps each form to its test accuracy (a fraction of
    `n` images), the first being the trained model. It fails when the compact reload changed an effective mask,
    when a form's correct images differ from the trained model's by more than `tolerance`, or the trained model's
    from round(recorded · n) by more than `tolerance`."""
    correct = {name: round(a * n) for name, a in accuracies.items()}
    (reference_name, reference), *forms = correct.items()
    problems = [] if masks_identical else ["the effective masks changed in the compact reload"]
    problems += [f"{name}: {images} correct images, the trained model {reference} (tolerance {tolerance})"
                 for name, images in forms if abs(images - reference) > tolerance]
    if recorded is not None and abs(reference - round(recorded * n)) > tolerance:
        problems.append(f"{reference_name}: {reference} correct images of {n}, recorded {round(recorded * n)} "
                        f"(tolerance {tolerance})")
    return problems


def check_accuracy(run_dir: Path, cfg, seed: int, model, out: Path, batch_size: int,
                   tolerance: int = TOLERANCE_IMAGES) -> int:
    """Print the test accuracy of the trained model, the compact artifact and the stripped and shrunk .keras
    files reloaded (and the recorded one), with the largest prediction difference to the trained model; 1 when
    `accuracy_disagreements` finds any, else 0."""
    from data_preprocessor import DataUnavailableError, load_dataset

    d = cfg.data
    try:
        data = load_dataset(d.dataset, d.source, d.data_dir, batch_size=batch_size, augment=False, seed=seed,
                            synthetic_train=d.synthetic_train, synthetic_test=d.synthetic_test)
    except DataUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    compact_model = run_folder.load_compact(out / run_folder.COMPACT)
    stripped = keras.models.load_model(out / run_folder.STRIPPED_KERAS)
    shrunk, sidecar = load_shrunk(out / run_folder.SHRUNK_KERAS)
    survivors = input_indices(sidecar)
    metrics = run_dir / run_folder.METRICS
    recorded = json.loads(metrics.read_text()).get("test_accuracy") if metrics.is_file() else None
    outputs = {name: predict_dataset(m, data.test) for name, m in
               (("trained (run dir)", model), ("compact reloaded", compact_model), ("stripped .keras reloaded",
                                                                                    stripped))}
    outputs["shrunk .keras reloaded"] = predict_dataset(shrunk, data.test, columns=survivors)
    print(f"\ntest accuracy on {d.dataset} ({d.source}, {data.n_test} images):")
    if recorded is not None:
        print(f"  {'recorded in metrics.json':<28} {100 * recorded:.2f} %")
    reference = outputs["trained (run dir)"][0]
    accuracies = {}
    for name, (preds, labels) in outputs.items():
        accuracies[name] = float(np.mean(np.argmax(preds, axis=-1) == labels))
        print(f"  {name:<28} {100 * accuracies[name]:.2f} %   max |prediction - trained| = "
              f"{max_difference(preds, reference):.3g}")
    print(f"  max |shrunk - stripped| over the test set = "
          f"{max_difference(outputs['shrunk .keras reloaded'][0], outputs['stripped .keras reloaded'][0]):.3g}")
    from custom_layers import masked_layers

    same = all(np.array_equal(keras.ops.convert_to_numpy(a.effective_mask()),
                              keras.ops.convert_to_numpy(b.effective_mask()))
               for a, b in zip(masked_layers(model), masked_layers(compact_model)))
    print(f"  effective masks identical after the compact reload: {same}")
    problems = accuracy_disagreements(accuracies, len(outputs["trained (run dir)"][1]), recorded, tolerance, same)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from config import ConfigErrors

    run_dir = Path(args.run_dir)
    if not (run_dir / run_folder.CONFIG).is_file() or not any((run_dir / name).is_file() for name in (
            run_folder.MASKS, run_folder.COMPACT)):
        print(f"error: {run_dir} is not a run directory ({run_folder.CONFIG} and {run_folder.MASKS} or "
              f"{run_folder.COMPACT} expected)", file=sys.stderr)
        return 2
    # Without an accuracy check no data is read: validate the config as synthetic so a missing data_dir is no error.
    source = args.data_source if args.check_accuracy else "synthetic"
    try:
        cfg, seed, run = run_folder.read_run_config(run_dir, data_source=source, data_dir=args.data_dir)
        model = run_folder.load_run_model(run_dir, cfg, seed, run)
    except ConfigErrors as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    except ValueError as exc:  # WeightsFileMismatch, a corrupt .npz
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else run_dir / run_folder.EXPORT
    report = write_artifacts(model, out)
    run_folder.atomic_write_json(out / run_folder.SIZES, report)
    print(f"{run_dir}: {cfg.model.architecture}, mask_mode {cfg.model.mask_mode}, seed {seed}")
    if not args.no_summary:
        print_mask_summary(model)
        print()
    print(format_size_report(report))
    if args.no_summary:  # the summary ends with it
        print(f"effective architecture: {report['architecture']}")
    written = [out / name for name in (run_folder.STRIPPED_KERAS, run_folder.SHRUNK_KERAS, run_folder.COMPACT,
                                       run_folder.SIZES)]
    print(f"written: {', '.join(str(p) for p in written)}")
    if args.check_accuracy:
        return check_accuracy(run_dir, cfg, seed, model, out, args.batch_size, args.tolerance)
    x = np.random.default_rng(0).normal(size=(256,) + tuple(model.inputs[0].shape[1:])).astype("float32")
    shrunk, sidecar = load_shrunk(out / run_folder.SHRUNK_KERAS)
    stripped = keras.models.load_model(out / run_folder.STRIPPED_KERAS)
    difference = max_difference(np.asarray(shrunk(np.take(x, input_indices(sidecar), axis=-1))),
                                np.asarray(stripped(x)))
    print(f"max |shrunk - stripped| on 256 random inputs: {difference:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
