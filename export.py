"""Export of a trained signed Supermask: a plain Keras model, a compact ternary artifact, size and layer reports.

    python export.py RUN_DIR [--out DIR] [--check-accuracy] [--data-source local --data-dir ../shared/data]

`strip(model)` replaces every MaskedDense / MaskedConv2D by a stock keras Dense / Conv2D (no bias, same
geometry and name) whose kernel is the effective kernel w * M; every other layer (activations, pooling, BN with
its weights, Add, ...) is cloned with its weights. The stripped model predicts exactly what the Supermask predicts
and needs no custom code to load.

`save_compact(model, path)` / `load_compact(path)` store a trained network in one .npz (read with
allow_pickle=False). What it holds:

    model_json        model.to_json(): the architecture, the mask modes and, for every masked layer, the
                      ScaledInitializer with its integer seed, so keras.models.model_from_json regenerates the
                      frozen kernels bit for bit
    meta              JSON: format version, and per masked layer its mask code, nnz, kernel code, the sha256 of
                      its float32 kernel bytes (little-endian, C order)
    mask/<layer>      the effective mask M in {-1, 0, +1}, one uint8 array per layer, in the smaller of two codes
                      (chosen per layer by the deflated size; the raw size is never above 2 bits per weight):
                        bitplanes  packbits(M != 0) followed by packbits(M[M != 0] < 0): n + nnz bits
                                   (<= 2 bits per weight; ~1 bit per weight for a sparse mask)
                        sparse     gaps between successive non-zero flat indices (the first from 0) as
                                   little-endian uint8/16/32 (the smallest that fits), then the packed sign bits:
                                   nnz * (8|16|32 + 1) bits; only a candidate while that is <= 2 bits per weight
    kernel/<layer>    only for a layer whose kernel the seed does not regenerate (hash mismatch: a kernel read
                      from a file, an unseeded initializer, an assigned kernel):
                        signs      signed-constant kernel (all |w| equal): packbits(w < 0), the constant in meta
                        float32    the kernel as it is
    weights/<layer>/<i>   every weight of the other layers (BN gamma/beta/moving stats, stock Dense/Conv kernels),
                      as stored (float32)

The whole file is written with np.savez_compressed (deflate on top of the codes). The real-valued masks and the
thresholds are not stored: the rebuilt masked layers hold m = M and tau = 0.5, which reproduces M exactly for
every mode (signed: sign(M) * 1[|M| > 0.5] = M; binary: 1[M > 0.5] = M; topk: |M| >= k-th largest |M| = 1 keeps
exactly the non-zeros, since M has at least k of them). `save_compact` checks this per layer. The artifact is
for inference: training on from it would start from m = M, not from the trained real-valued mask.

`compact_size_report(model, tmpdir)` measures model.save('.keras') (float32 kernel + mask + threshold), the
stripped model's .keras (float32 w * M) and the compact artifact. `mask_summary(model)` / `print_mask_summary`
give a larq-style per-layer table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import keras  # noqa: E402

import custom_layers  # noqa: E402,F401  (registers the masked layers and mask modes for model_from_json)
import weight_initializer  # noqa: E402,F401  (registers ScaledInitializer)
from custom_layers import MaskedConv2D, MaskedDense, MaskedKernelMixin, count_mask  # noqa: E402

log = logging.getLogger(__name__)

FORMAT = "signed-supermask-compact"
FORMAT_VERSION = 1
REBUILD_THRESHOLD = 0.5
MASK_BITS_PER_WEIGHT = 2  # the fixed-width ternary code used by mask_summary's "bits" column
FLOAT_BITS = 32


# --------------------------------------------------------------------------------------------------------------
# Walking models (nested models included)
# --------------------------------------------------------------------------------------------------------------
def leaf_layers(model, prefix: str = "") -> list[tuple[str, keras.layers.Layer]]:
    """[(path, layer)] of every non-model layer, depth first; nested models add '<model name>/' to the path."""
    out = []
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            out += leaf_layers(layer, path + "/")
        else:
            out.append((path, layer))
    return out


def _numpy(value) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


def effective_mask(layer) -> np.ndarray:
    """The layer's effective mask M as float32 numpy."""
    return _numpy(layer.effective_mask()).astype(np.float32)


def effective_kernel(layer) -> np.ndarray:
    """w * M in float32, the value the masked layer multiplies its input with (before any compute-dtype cast)."""
    return (_numpy(layer.kernel).astype(np.float32) * effective_mask(layer)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# strip
# --------------------------------------------------------------------------------------------------------------
def _stock_twin(layer):
    """The stock layer that replaces a masked one (kernel filled in afterwards), or a config clone."""
    if isinstance(layer, MaskedDense):
        return keras.layers.Dense(layer.units, use_bias=False, name=layer.name, dtype=layer.dtype_policy,
                                  kernel_initializer="zeros")
    if isinstance(layer, MaskedConv2D):
        return keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides, padding=layer.padding,
                                   dilation_rate=layer.dilation_rate, data_format="channels_last", use_bias=False,
                                   name=layer.name, dtype=layer.dtype_policy, kernel_initializer="zeros")
    if isinstance(layer, MaskedKernelMixin):
        raise TypeError(f"no stock twin for masked layer {layer.name} of type {type(layer).__name__}")
    return layer.__class__.from_config(layer.get_config())


def strip(model) -> keras.Model:
    """A plain Keras model: masked layers become stock Dense / Conv2D (use_bias=False) with kernel w * M; every
    other layer is cloned with its weights. Works for Sequential and functional models (nested ones included)."""
    stripped = keras.models.clone_model(model, clone_function=_stock_twin, recursive=True)
    targets = dict(leaf_layers(stripped))
    for path, layer in leaf_layers(model):
        target = targets.get(path)
        if target is None:
            raise RuntimeError(f"strip: layer {path} has no counterpart in the clone")
        if isinstance(layer, MaskedKernelMixin):
            target.kernel.assign(effective_kernel(layer))
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return stripped


# --------------------------------------------------------------------------------------------------------------
# Ternary mask codes (pure numpy)
# --------------------------------------------------------------------------------------------------------------
def _uint_dtype(max_value: int) -> np.dtype:
    for dtype in ("<u1", "<u2", "<u4"):
        if max_value <= np.iinfo(np.dtype(dtype)).max:
            return np.dtype(dtype)
    return np.dtype("<u8")


def encode_bitplanes(mask: np.ndarray) -> np.ndarray:
    """packbits(M != 0) + packbits(M[M != 0] < 0) as one uint8 array: ceil(n/8) + ceil(nnz/8) bytes."""
    flat = np.asarray(mask).reshape(-1)
    nonzero = flat != 0
    return np.concatenate([np.packbits(nonzero), np.packbits(flat[nonzero] < 0)])


def decode_bitplanes(code: np.ndarray, size: int, nnz: int) -> np.ndarray:
    code = np.asarray(code, np.uint8)
    head = (size + 7) // 8
    nonzero = np.unpackbits(code[:head], count=size).astype(bool)
    negative = np.unpackbits(code[head:], count=nnz).astype(bool)
    if int(nonzero.sum()) != nnz:
        raise ValueError(f"corrupt bitplane mask: {int(nonzero.sum())} non-zeros, {nnz} expected")
    flat = np.zeros(size, np.float32)
    flat[nonzero] = np.where(negative, -1.0, 1.0)
    return flat


def encode_sparse(mask: np.ndarray) -> tuple[np.ndarray, str]:
    """(gaps between successive non-zero flat indices as the smallest little-endian uint + packbits of the signs,
    gap dtype name)."""
    flat = np.asarray(mask).reshape(-1)
    index = np.flatnonzero(flat)
    gaps = np.diff(index, prepend=0) if index.size else np.zeros(0, np.int64)
    dtype = _uint_dtype(int(gaps.max()) if gaps.size else 0)
    code = np.concatenate([np.frombuffer(gaps.astype(dtype).tobytes(), np.uint8), np.packbits(flat[index] < 0)])
    return code, dtype.str


def decode_sparse(code: np.ndarray, size: int, nnz: int, dtype: str) -> np.ndarray:
    code = np.asarray(code, np.uint8)
    dtype = np.dtype(dtype)
    gap_bytes = nnz * dtype.itemsize
    index = np.cumsum(np.frombuffer(code[:gap_bytes].tobytes(), dtype).astype(np.int64))
    negative = np.unpackbits(code[gap_bytes:], count=nnz).astype(bool)
    if index.size and (index[-1] >= size or index[0] < 0):
        raise ValueError("corrupt sparse mask: index out of range")
    flat = np.zeros(size, np.float32)
    flat[index] = np.where(negative, -1.0, 1.0)
    return flat


def encode_mask(mask: np.ndarray) -> tuple[np.ndarray, dict]:
    """The smaller code of M (see the module docstring): (uint8 code, {"code", "nnz", "dtype"?, "bytes"})."""
    mask = np.asarray(mask)
    values = np.unique(mask)
    if not np.isin(values, (-1, 0, 1)).all():
        raise ValueError(f"an effective mask holds -1, 0, +1 only, found {values[:5]}")
    size, nnz = int(mask.size), int(np.count_nonzero(mask))
    candidates = [(encode_bitplanes(mask), {"code": "bitplanes"})]
    sparse, dtype = encode_sparse(mask)
    if 8 * sparse.size <= MASK_BITS_PER_WEIGHT * size:
        candidates.append((sparse, {"code": "sparse", "dtype": dtype}))
    code, info = min(candidates, key=lambda c: (len(zlib.compress(c[0].tobytes(), 6)), c[0].size))
    return code, {**info, "nnz": nnz, "bytes": int(code.size)}


def decode_mask(code: np.ndarray, info: dict, shape) -> np.ndarray:
    size = int(np.prod(shape))
    if info["code"] == "bitplanes":
        flat = decode_bitplanes(code, size, int(info["nnz"]))
    elif info["code"] == "sparse":
        flat = decode_sparse(code, size, int(info["nnz"]), info["dtype"])
    else:
        raise ValueError(f"unknown mask code {info['code']!r}")
    return flat.reshape(tuple(shape))


def kernel_sha256(kernel: np.ndarray) -> str:
    """sha256 of the float32 kernel's little-endian, C-order bytes."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(kernel, "<f4")).tobytes()).hexdigest()


def encode_kernel(kernel: np.ndarray) -> tuple[np.ndarray, dict]:
    """An explicit kernel: sign bits + constant for a signed-constant kernel, else the float32 array."""
    kernel = np.asarray(kernel, np.float32)
    magnitude = np.abs(kernel)
    constant = float(magnitude.flat[0]) if kernel.size else 0.0
    if kernel.size and constant > 0 and np.all(magnitude == np.float32(constant)):
        return np.packbits(np.signbit(kernel).reshape(-1)), {"code": "signs", "constant": constant}
    return kernel, {"code": "float32"}


def decode_kernel(array: np.ndarray, info: dict, shape) -> np.ndarray:
    if info["code"] == "signs":
        size = int(np.prod(shape))
        negative = np.unpackbits(np.asarray(array, np.uint8), count=size).astype(bool)
        c = np.float32(info["constant"])
        return np.where(negative, -c, c).astype(np.float32).reshape(tuple(shape))
    if info["code"] == "float32":
        return np.asarray(array, np.float32).reshape(tuple(shape))
    raise ValueError(f"unknown kernel code {info['code']!r}")


# --------------------------------------------------------------------------------------------------------------
# Compact artifact
# --------------------------------------------------------------------------------------------------------------
def _rebuild(model_json: str) -> keras.Model:
    model = keras.models.model_from_json(model_json)
    if not model.built:
        raise ValueError("the model rebuilt from its JSON is not built (give it an Input)")
    return model


def _check_rebuilt_mask(layer, mask: np.ndarray) -> None:
    """The rebuilt layer (m = M, tau = 0.5) must give back M."""
    m = keras.ops.convert_to_tensor(mask.astype(np.float32))
    again = _numpy(layer.mask_mode.hard(m, keras.ops.convert_to_tensor(np.float32(REBUILD_THRESHOLD))))
    if not np.array_equal(again, mask):
        raise ValueError(f"{layer.name}: mode {layer.mask_mode!r} does not reproduce the effective mask from "
                         f"m = M, tau = {REBUILD_THRESHOLD}")


def compact_arrays(model) -> dict[str, np.ndarray]:
    """The arrays of the compact artifact of `model` (see the module docstring)."""
    model_json = model.to_json()
    rebuilt = dict(leaf_layers(_rebuild(model_json)))
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"format": FORMAT, "version": FORMAT_VERSION, "threshold": REBUILD_THRESHOLD, "masked": {},
                  "weights": {}}
    for path, layer in leaf_layers(model):
        if isinstance(layer, MaskedKernelMixin):
            mask = effective_mask(layer)
            _check_rebuilt_mask(layer, mask)
            code, mask_info = encode_mask(mask)
            arrays[f"mask/{path}"] = code
            kernel = _numpy(layer.kernel).astype(np.float32)
            digest = kernel_sha256(kernel)
            entry = {"shape": list(mask.shape), "mask": mask_info, "sha256": digest}
            twin = rebuilt.get(path)
            if twin is not None and kernel_sha256(_numpy(twin.kernel)) == digest:
                entry["kernel"] = {"code": "seed"}
            else:
                array, kernel_info = encode_kernel(kernel)
                arrays[f"kernel/{path}"] = array
                entry["kernel"] = kernel_info
                log.info("%s: the kernel is not regenerated by its initializer; stored as %s", path,
                         kernel_info["code"])
            meta["masked"][path] = entry
        elif layer.weights:
            values = layer.get_weights()
            for i, value in enumerate(values):
                arrays[f"weights/{path}/{i}"] = np.asarray(value)
            meta["weights"][path] = len(values)
    arrays["model_json"] = np.frombuffer(model_json.encode("utf-8"), np.uint8)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    return arrays


def save_compact(model, path) -> dict:
    """Write the compact artifact of `model` to `path` (.npz, atomically); returns its meta data."""
    arrays = compact_arrays(model)
    weight_initializer.atomic_savez(path, arrays)
    return json.loads(arrays["meta"].tobytes().decode("utf-8"))


def read_compact_meta(path) -> dict:
    with np.load(os.fspath(path), allow_pickle=False) as data:
        return json.loads(data["meta"].tobytes().decode("utf-8"))


def load_compact(path, *, verify: bool = True) -> keras.Model:
    """Rebuild the model saved by `save_compact` (read with allow_pickle=False). verify: check the sha256 of
    every kernel (regenerated or decoded) against the stored one and raise ValueError on a mismatch."""
    with np.load(os.fspath(path), allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{os.fspath(path)} is not a {FORMAT} file of version <= {FORMAT_VERSION}")
    model = _rebuild(arrays["model_json"].tobytes().decode("utf-8"))
    layers = dict(leaf_layers(model))
    missing = [p for p in list(meta["masked"]) + list(meta["weights"]) if p not in layers]
    if missing:
        raise ValueError(f"{os.fspath(path)}: layers {missing[:5]} are not in the rebuilt model")
    for path_, entry in meta["masked"].items():
        layer = layers[path_]
        shape = tuple(entry["shape"])
        if entry["kernel"]["code"] != "seed":
            layer.kernel.assign(decode_kernel(arrays[f"kernel/{path_}"], entry["kernel"], shape))
        if verify and kernel_sha256(_numpy(layer.kernel)) != entry["sha256"]:
            raise ValueError(f"{path_}: the rebuilt kernel differs from the saved one (sha256 mismatch; a "
                             f"different numpy random generator?)")
        layer.mask.assign(decode_mask(arrays[f"mask/{path_}"], entry["mask"], shape))
        layer.threshold.assign(REBUILD_THRESHOLD)
    for path_, count in meta["weights"].items():
        layers[path_].set_weights([arrays[f"weights/{path_}/{i}"] for i in range(int(count))])
    return model


# --------------------------------------------------------------------------------------------------------------
# Sizes and summaries
# --------------------------------------------------------------------------------------------------------------
def compact_size_report(model, tmpdir) -> dict:
    """Bytes of model.save('.keras') (float32 kernel + mask + threshold), of the stripped model's .keras (float32
    w * M) and of the compact artifact, written into `tmpdir`; with the kernel weight count, bits per weight and
    the ratios to the compact size. 'stripped_keras_deflated' (zlib level 6 of the stripped file) is a reference
    for how much of the gain plain compression of the zeros gives."""
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    paths = {"keras": tmpdir / "model.keras", "stripped_keras": tmpdir / "stripped.keras",
             "compact": tmpdir / "compact.npz"}
    model.save(paths["keras"])
    strip(model).save(paths["stripped_keras"])
    meta = save_compact(model, paths["compact"])
    sizes = {k: int(p.stat().st_size) for k, p in paths.items()}
    # Reference only: how far plain deflate gets on the mostly-zero float32 stripped file.
    sizes["stripped_keras_deflated"] = len(zlib.compress(paths["stripped_keras"].read_bytes(), 6))
    weights = custom_layers.count_parameters(model)
    return {
        "bytes": sizes,
        "kernel_weights": weights,
        "bits_per_weight": {k: 8.0 * v / weights if weights else math.nan for k, v in sizes.items()},
        "ratio_to_compact": {k: v / sizes["compact"] for k, v in sizes.items()},
        "mask_code_bytes": sum(e["mask"]["bytes"] for e in meta["masked"].values()),
        "kernel_codes": sorted({e["kernel"]["code"] for e in meta["masked"].values()}),
    }


def format_size_report(report: dict, title: str = "") -> str:
    names = {"keras": "model.save .keras (float32 w, m, tau)", "stripped_keras": "stripped .keras (float32 w*M)",
             "stripped_keras_deflated": "  the same, deflated (reference)",
             "compact": "compact .npz (ternary M + seed)"}
    lines = [title] if title else []
    lines += [f"{'artifact':<40} {'bytes':>12} {'bits/weight':>12} {'x compact':>10}", "-" * 77]
    for key, label in names.items():
        lines.append(f"{label:<40} {report['bytes'][key]:>12,d} {report['bits_per_weight'][key]:>12.3f} "
                     f"{report['ratio_to_compact'][key]:>10.1f}")
    lines.append(f"kernel weights: {report['kernel_weights']:,d}; mask codes: {report['mask_code_bytes']:,d} bytes "
                 f"before deflate; kernels: {', '.join(report['kernel_codes']) or '-'}")
    return "\n".join(lines)


def mask_summary(model) -> list[dict]:
    """One row per layer with weights, then a total row:

        name, type, shape (kernel shape, or of the first weight), parameters, kept, inverted, hidden,
        remaining_percent, bits

    Masked layers: counts of their effective mask; bits = 2 per weight (the fixed-width ternary code; the
    information bound is log2(3) = 1.585 bits, and a sparse mask codes in fewer, see save_compact). The frozen
    kernel costs no bits when its seed regenerates it and is not counted. Stock Dense / Conv2D: every weight counts
    as kept (as in model_trainer.epoch_statistics), 32 bits per weight. Other layers (BN): parameters and 32 bits
    each, no counts. The total row sums everything; its remaining_percent is over the kernel layers.
    """
    rows = []
    for path, layer in leaf_layers(model):
        if isinstance(layer, MaskedKernelMixin):
            counts = count_mask(effective_mask(layer))
            n = counts["total"]
            rows.append({"name": path, "type": type(layer).__name__, "shape": tuple(layer.kernel.shape),
                         "parameters": n, "kept": counts["kept"], "inverted": counts["inverted"],
                         "hidden": counts["hidden"], "remaining_percent": 100.0 * (n - counts["hidden"]) / n,
                         "bits": MASK_BITS_PER_WEIGHT * n})
        elif isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            n = int(sum(int(np.prod(w.shape)) for w in layer.weights))
            k = int(np.prod(layer.kernel.shape))
            rows.append({"name": path, "type": type(layer).__name__, "shape": tuple(layer.kernel.shape),
                         "parameters": n, "kept": k, "inverted": 0, "hidden": 0, "remaining_percent": 100.0,
                         "bits": FLOAT_BITS * n})
        elif layer.weights:
            n = int(sum(int(np.prod(w.shape)) for w in layer.weights))
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
    lines.append(f"bits: {MASK_BITS_PER_WEIGHT} per masked weight (ternary code; entropy-free bound log2(3) = 1.585), "
                 f"{FLOAT_BITS} per float parameter; frozen seeded kernels cost 0")
    return "\n".join(lines)


def print_mask_summary(model, print_fn=print) -> None:
    """Print mask_summary(model) as a table."""
    print_fn(format_mask_summary(mask_summary(model)))


# --------------------------------------------------------------------------------------------------------------
# Run directories
# --------------------------------------------------------------------------------------------------------------
def load_run_config(run_dir, *, data_source: str | None = None, data_dir: str | None = None):
    """(ExperimentConfig, seed, run) of a looper run directory. The looper's extra 'seed' / 'run' keys are
    dropped before validation; weights_file / masks_file are dropped too (masks.npz holds the final kernels)."""
    import yaml

    import config as config_lib

    raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
    run = int(raw.pop("run", 0))
    seed = raw.pop("seed", None)
    raw.setdefault("model", {})
    raw["model"]["weights_file"] = None
    raw["model"]["masks_file"] = None
    raw.setdefault("data", {})
    if data_source is not None:
        raw["data"]["source"] = data_source
    if data_dir is not None:
        raw["data"]["data_dir"] = data_dir
    cfg = config_lib.parse_config(raw, source=str(Path(run_dir) / "config.yaml"))
    seed = int(seed) if seed is not None else cfg.base_seed + run
    return cfg, seed, run


def _other_layers_with_weights(model) -> list[str]:
    return [path for path, layer in leaf_layers(model)
            if not isinstance(layer, (MaskedKernelMixin, keras.layers.Dense, keras.layers.Conv2D)) and layer.weights]


def load_run_model(run_dir, cfg=None, seed: int | None = None, run: int | None = None) -> keras.Model:
    """The trained model of a looper run directory: build_run_model(cfg, seed, run), then masks.npz (kernels,
    masks and the saved thresholds).

    masks.npz holds no BN weights. They are taken from RUN_DIR/model.weights.h5 (every weight; loaded instead of
    masks.npz) or from the weights/... arrays of RUN_DIR/compact.npz when the run directory has one of them (see
    the looper patch in the report); otherwise a model with trainable BN keeps its initial BN values and a
    warning says that it will not predict like the trained one.
    """
    from experiment_looper import build_run_model
    from weight_initializer import load_weights_npz

    run_dir = Path(run_dir)
    if cfg is None:
        cfg, seed, run = load_run_config(run_dir, data_source="synthetic")
    model = build_run_model(cfg, seed, run)
    full = run_dir / "model.weights.h5"
    if full.is_file():
        model.load_weights(full)
        return model
    load_weights_npz(model, run_dir / "masks.npz", parts=("kernel", "mask"), threshold="file")
    others = _other_layers_with_weights(model)
    compact = run_dir / "compact.npz"
    if others and compact.is_file():
        layers = dict(leaf_layers(model))
        with np.load(compact, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes().decode("utf-8"))
            for path in others:
                count = int(meta["weights"][path])
                layers[path].set_weights([data[f"weights/{path}/{i}"] for i in range(count)])
        return model
    learned = [path for path in others if dict(leaf_layers(model))[path].trainable]
    if learned:
        log.warning("%s has neither model.weights.h5 nor compact.npz: the trained weights of %s (e.g. BN) are not "
                    "in masks.npz; the rebuilt model keeps their initial values and will not predict like the "
                    "trained one", run_dir, ", ".join(learned[:5]) + (" ..." if len(learned) > 5 else ""))
    return model


def predict_dataset(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, integer labels) of `model` over a batched (x, y) dataset; y one-hot or sparse."""
    preds, labels = [], []
    for x, y in dataset:
        preds.append(_numpy(model(x, training=False)))
        y = _numpy(y)
        labels.append(np.argmax(y, axis=-1) if y.ndim > 1 else y.astype(np.int64))
    return np.concatenate(preds), np.concatenate(labels)


def evaluate_accuracy(model, dataset) -> float:
    """Top-1 accuracy of `model` on a batched (x, y) dataset."""
    preds, labels = predict_dataset(model, dataset)
    return float(np.mean(np.argmax(preds, axis=-1) == labels)) if labels.size else math.nan


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Export a trained signed-Supermask run: stripped .keras, compact .npz, "
                                            "size table.")
    p.add_argument("run_dir", help="a looper run directory (holding config.yaml and masks.npz)")
    p.add_argument("--out", help="output directory (default RUN_DIR/export)")
    p.add_argument("--check-accuracy", action="store_true",
                   help="evaluate the trained, the compact-reloaded and the stripped model on the test set")
    p.add_argument("--data-source", choices=("tfds", "local", "synthetic"), help="override data.source")
    p.add_argument("--data-dir", help="override data.data_dir (e.g. ../shared/data with --data-source local)")
    p.add_argument("--batch-size", type=int, default=1000, help="evaluation batch size (default 1000)")
    p.add_argument("--no-summary", action="store_true", help="do not print the per-layer mask summary")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from config import ConfigErrors

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "masks.npz").is_file():
        print(f"error: {run_dir} is not a run directory (config.yaml and masks.npz expected)", file=sys.stderr)
        return 2
    # Without an accuracy check no data is read: validate the config as synthetic so a missing data_dir is no error.
    source = args.data_source if args.check_accuracy else "synthetic"
    try:
        cfg, seed, run = load_run_config(run_dir, data_source=source, data_dir=args.data_dir)
    except ConfigErrors as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    model = load_run_model(run_dir, cfg, seed, run)
    out = Path(args.out) if args.out else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        report = compact_size_report(model, tmp)
        for name in ("stripped.keras", "compact.npz"):
            shutil.copyfile(Path(tmp) / name, out / name)
    from experiment_looper import atomic_write_json

    atomic_write_json(out / "sizes.json", report)
    print(f"{run_dir}: {cfg.model.architecture}, mask_mode {cfg.model.mask_mode}, seed {seed}")
    if not args.no_summary:
        print_mask_summary(model)
        print()
    print(format_size_report(report))
    print(f"written: {out / 'stripped.keras'}, {out / 'compact.npz'}, {out / 'sizes.json'}")
    if args.check_accuracy:
        from data_preprocessor import DataUnavailableError, load_dataset

        d = cfg.data
        try:
            data = load_dataset(d.dataset, d.source, d.data_dir, batch_size=args.batch_size, augment=False,
                                seed=seed, synthetic_train=d.synthetic_train, synthetic_test=d.synthetic_test)
        except DataUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        compact = load_compact(out / "compact.npz")
        reloaded = keras.models.load_model(out / "stripped.keras")
        recorded = None
        metrics = run_dir / "metrics.json"
        if metrics.is_file():
            recorded = json.loads(metrics.read_text()).get("test_accuracy")
        models = {"trained (run dir)": model, "compact reloaded": compact, "stripped .keras reloaded": reloaded}
        outputs = {name: predict_dataset(m, data.test) for name, m in models.items()}
        print(f"\ntest accuracy on {d.dataset} ({d.source}, {data.n_test} images):")
        if recorded is not None:
            print(f"  {'recorded in metrics.json':<28} {100 * recorded:.2f} %")
        reference = outputs["trained (run dir)"][0]
        for name, (preds, labels) in outputs.items():
            accuracy = float(np.mean(np.argmax(preds, axis=-1) == labels))
            diff = float(np.max(np.abs(preds - reference))) if preds.size else 0.0
            print(f"  {name:<28} {100 * accuracy:.2f} %   max |prediction - trained| = {diff:.3g}")
        masks_equal = all(np.array_equal(effective_mask(a), effective_mask(b)) for a, b in
                          zip(custom_layers.masked_layers(model), custom_layers.masked_layers(compact)))
        print(f"  effective masks identical after the compact reload: {masks_equal}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
