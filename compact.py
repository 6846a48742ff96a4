"""The compact artifact of a trained signed Supermask: the ternary masks at <= 2 bits per weight, the seeds that
regenerate the frozen weights, and the few float weights of the other layers (BN), as named numpy arrays.

This module is the codec only (arrays <-> model); run_folder writes and reads the artifact as one `.npz`
(`save_compact`, `load_compact`), atomically and with allow_pickle=False.

What the arrays hold:

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
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib

import keras
import numpy as np

import weight_initializer  # noqa: F401  (registers ScaledInitializer for model_from_json)
from custom_layers import MaskedKernelMixin, leaf_layers

log = logging.getLogger(__name__)

FORMAT = "signed-supermask-compact"
FORMAT_VERSION = 1
REBUILD_THRESHOLD = 0.5
MAX_MASK_BITS = 2  # bits per weight of the fixed-width ternary code, the bound of every mask code here


def _numpy(value) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


# --------------------------------------------------------------------------------------------------------------
# Ternary mask and kernel codes (pure numpy)
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
    if 8 * sparse.size <= MAX_MASK_BITS * size:
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
# Model <-> arrays
# --------------------------------------------------------------------------------------------------------------
def _architecture_json(model_json: str) -> str:
    """A model's JSON without its compile config: the artifact is the network, not a training set-up (a compiled
    rebuild would build an optimizer whose slots every later `.keras` save of the model or its clones keeps)."""
    config = json.loads(model_json)
    config.pop("compile_config", None)
    return json.dumps(config)


def _rebuild(model_json: str) -> keras.Model:
    """The model of `model_json`, not compiled (artifacts written before the compile config was left out carry
    one)."""
    model = keras.models.model_from_json(_architecture_json(model_json))
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
    model_json = _architecture_json(model.to_json())
    rebuilt = dict(leaf_layers(_rebuild(model_json)))
    arrays: dict[str, np.ndarray] = {}
    meta: dict = {"format": FORMAT, "version": FORMAT_VERSION, "threshold": REBUILD_THRESHOLD, "masked": {},
                  "weights": {}}
    for path, layer in leaf_layers(model):
        if isinstance(layer, MaskedKernelMixin):
            mask = _numpy(layer.effective_mask()).astype(np.float32)
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


def read_meta(arrays: dict[str, np.ndarray]) -> dict:
    """The JSON meta data of the artifact's arrays."""
    return json.loads(arrays["meta"].tobytes().decode("utf-8"))


def effective_masks(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{layer path: effective mask M (float32, in {-1, 0, +1})} decoded from an artifact's arrays, in build order,
    without building the model."""
    meta = read_meta(arrays)
    return {path: decode_mask(arrays[f"mask/{path}"], entry["mask"], entry["shape"])
            for path, entry in meta["masked"].items()}


def layer_weights(arrays: dict[str, np.ndarray], meta: dict, path: str) -> list[np.ndarray]:
    """The stored weights of a non-masked layer (BN gamma, beta, moving mean, moving variance, ...)."""
    return [arrays[f"weights/{path}/{i}"] for i in range(int(meta["weights"][path]))]


def model_from_arrays(arrays: dict[str, np.ndarray], *, verify: bool = True) -> keras.Model:
    """Rebuild the model of `compact_arrays`. verify: check the sha256 of every kernel (regenerated or decoded)
    against the stored one and raise ValueError on a mismatch."""
    try:
        meta = read_meta(arrays)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"not a {FORMAT} artifact (no readable meta data: {exc})") from None
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"not a {FORMAT} artifact of version <= {FORMAT_VERSION}")
    model = _rebuild(arrays["model_json"].tobytes().decode("utf-8"))
    layers = dict(leaf_layers(model))
    missing = [p for p in list(meta["masked"]) + list(meta["weights"]) if p not in layers]
    if missing:
        raise ValueError(f"layers {missing[:5]} are not in the rebuilt model")
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
    for path_ in meta["weights"]:
        layers[path_].set_weights(layer_weights(arrays, meta, path_))
    return model

