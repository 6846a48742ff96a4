"""Initialisation schemes of the signed Supermask paper, and `.npz` storage of frozen weights and masks.

An initialiser is a *distribution* scaled by a *variance* that depends on the kernel's fans:

    variance v = factor * base(scaling, n_in, n_out)

    base("he")     = 2 / n_in
    base("xavier") = 2 / (n_in + n_out)
    base("elu")    = 1.5 / n_in          (uniform ELU init of the baselines: U(+-sqrt(4.5/n_in)))
    base("elus")   = 3 / n_in            (ELU-scaled signed constant c = sqrt(3/n_in); factor 2 gives sqrt(6/n_in))

    signed_constant:  w = +-sqrt(v), the sign drawn 50/50
    constant:         w = +sqrt(v)
    uniform:          w ~ U(-sqrt(3 v), +sqrt(3 v))      (variance v)
    normal:           w ~ N(0, v)

Fans: a Dense kernel (n_in, n_out) has fan_in = n_in, fan_out = n_out; a Conv kernel (kh, kw, c_in, c_out) has
fan_in = kh*kw*c_in and fan_out = kh*kw*c_out (the Keras convention).

Every draw uses numpy's PCG64 generator seeded with an integer, so the same seed gives the same tensor on every
run and platform. Builders give each layer its own seed with `layer_seed(seed, index)`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
from typing import Iterable

import keras
import numpy as np

log = logging.getLogger(__name__)

DISTRIBUTIONS = ("signed_constant", "constant", "uniform", "normal")
SCALINGS = ("he", "xavier", "elu", "elus")


# --------------------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------------------
def compute_fans(shape: Iterable[int]) -> tuple[int, int]:
    """(fan_in, fan_out) of a Dense (n_in, n_out) or Conv (kh, kw, ..., c_in, c_out) kernel."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2:
        raise ValueError(f"a kernel has at least 2 dimensions, got shape {shape}")
    receptive_field = math.prod(shape[:-2])
    return shape[-2] * receptive_field, shape[-1] * receptive_field


def scaled_variance(scaling: str, fan_in: int, fan_out: int, factor: float = 1.0) -> float:
    """v = factor * base(scaling): he 2/n_in, xavier 2/(n_in+n_out), elu 1.5/n_in, elus 3/n_in."""
    bases = {
        "he": 2.0 / fan_in,
        "xavier": 2.0 / (fan_in + fan_out),
        "elu": 1.5 / fan_in,
        "elus": 3.0 / fan_in,
    }
    if scaling not in bases:
        raise ValueError(f"unknown scaling {scaling!r}; allowed: {', '.join(SCALINGS)}")
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    return factor * bases[scaling]


def sample(distribution: str, shape: tuple[int, ...], variance: float, rng: np.random.Generator) -> np.ndarray:
    """Draw a float32 array of `shape` from `distribution` with the given variance (see module docstring)."""
    std = math.sqrt(variance)
    if distribution == "signed_constant":
        signs = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        out = std * signs
    elif distribution == "constant":
        out = np.full(shape, std)
    elif distribution == "uniform":
        limit = math.sqrt(3.0) * std
        out = rng.uniform(-limit, limit, size=shape)
    elif distribution == "normal":
        out = rng.normal(0.0, std, size=shape)
    else:
        raise ValueError(f"unknown distribution {distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    return np.asarray(out, dtype=np.float32)


def layer_seed(seed: int | None, index: int) -> int | None:
    """A distinct, reproducible 31-bit seed for layer `index` of a model built with `seed`."""
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0] & 0x7FFFFFFF)


# --------------------------------------------------------------------------------------------------------------
# Specs and Keras initializers
# --------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class InitSpec:
    """A distribution and a scaling: `InitSpec("signed_constant", "elus")` is the paper's ELUS weight init."""

    distribution: str = "signed_constant"
    scaling: str = "elus"
    factor: float = 1.0

    def __post_init__(self):
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"unknown scaling {self.scaling!r}; allowed: {', '.join(SCALINGS)}")
        if self.factor <= 0:
            raise ValueError(f"factor must be > 0, got {self.factor}")

    def initializer(self, seed: int | None = None) -> "ScaledInitializer":
        return ScaledInitializer(self.distribution, self.scaling, self.factor, seed)


# Named presets used by configs and the paper.
WEIGHT_PRESETS = {
    "elus": InitSpec("signed_constant", "elus"),  # c = sqrt(3/n_in)
    "elus_file": InitSpec("signed_constant", "elus", 2.0),  # c = sqrt(6/n_in), authors' init_example.py
    "he": InitSpec("signed_constant", "he"),
    "xavier": InitSpec("signed_constant", "xavier"),
    "uniform_he": InitSpec("uniform", "he"),
    "elu_uniform": InitSpec("uniform", "elu"),  # the baselines' init
}
MASK_PRESETS = {
    "xavier_uniform": InitSpec("uniform", "xavier"),
    "he_uniform": InitSpec("uniform", "he"),
    "elu_uniform": InitSpec("uniform", "elu"),  # U(+-sqrt(4.5/n_in))
    "elus_uniform": InitSpec("uniform", "elus", 2.0),  # U(+-sqrt(18/n_in))
}


@keras.saving.register_keras_serializable(package="signed_supermask")
class ScaledInitializer(keras.initializers.Initializer):
    """`distribution` scaled by `factor * base(scaling)` of the kernel's fans; seeded with numpy PCG64.

    With an integer seed every call returns the same tensor (the builders give every layer its own seed);
    with seed None a seed is drawn from numpy's global generator (set by `keras.utils.set_random_seed`).
    """

    def __init__(self, distribution="signed_constant", scaling="elus", factor=1.0, seed=None):
        InitSpec(distribution, scaling, factor)  # validates
        self.distribution = distribution
        self.scaling = scaling
        self.factor = float(factor)
        self.seed = None if seed is None else int(seed)

    def __call__(self, shape, dtype=None):
        fan_in, fan_out = compute_fans(shape)
        variance = scaled_variance(self.scaling, fan_in, fan_out, self.factor)
        seed = self.seed if self.seed is not None else int(np.random.randint(0, 2**31 - 1))
        values = sample(self.distribution, tuple(shape), variance, np.random.default_rng(seed))
        return keras.ops.convert_to_tensor(values, dtype=dtype or "float32")

    def get_config(self):
        return {"distribution": self.distribution, "scaling": self.scaling, "factor": self.factor, "seed": self.seed}


# --------------------------------------------------------------------------------------------------------------
# .npz storage of frozen weights and masks (replaces the authors' pickles)
# --------------------------------------------------------------------------------------------------------------
def _masked_layers(model):
    from custom_layers import masked_layers  # local import: custom_layers imports this module

    return masked_layers(model)


def weights_to_arrays(model) -> dict[str, np.ndarray]:
    """{'<layer>/kernel': w, '<layer>/mask': m, '<layer>/threshold': tau} for every masked layer; stock Dense/Conv
    layers contribute '<layer>/kernel'."""
    from custom_layers import kernel_layers

    arrays = {}
    for layer in kernel_layers(model):
        arrays[f"{layer.name}/kernel"] = keras.ops.convert_to_numpy(layer.kernel)
        if hasattr(layer, "mask"):
            arrays[f"{layer.name}/mask"] = keras.ops.convert_to_numpy(layer.mask)
            arrays[f"{layer.name}/threshold"] = np.asarray(keras.ops.convert_to_numpy(layer.threshold))
    return arrays


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed to a temporary file in the same directory, then an atomic rename onto `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_weights_npz(model, path) -> None:
    """Save every frozen kernel, mask and threshold of `model` to one `.npz`, keyed '<layer>/<kind>'."""
    atomic_savez(path, weights_to_arrays(model))


class WeightsFileMismatch(ValueError):
    """The file was made for another architecture."""


def load_weights_npz(model, path, *, parts=("kernel", "mask"), threshold: str = "auto") -> None:
    """Load kernels and/or masks saved by `save_weights_npz` into `model` (read with allow_pickle=False).

    parts: which arrays to load ("kernel", "mask"). threshold: "recompute" sets tau = p*max|m| from the loaded
    mask (the init-file workflow); "file" restores the saved tau; "auto" restores it when the file has one for
    that layer, else recomputes. Any missing layer, extra layer or shape mismatch raises WeightsFileMismatch
    before anything is assigned.
    """
    from custom_layers import kernel_layers

    if threshold not in ("auto", "file", "recompute"):
        raise ValueError(f"threshold must be auto, file or recompute, got {threshold!r}")
    with np.load(os.fspath(path), allow_pickle=False) as data:
        stored = {key: data[key] for key in data.files}
    layers = kernel_layers(model)
    problems, plan = [], []
    for part in parts:
        expected = {f"{layer.name}/{part}": layer for layer in layers if part == "kernel" or hasattr(layer, part)}
        present = {key for key in stored if key.endswith(f"/{part}")}
        for key in sorted(present - expected.keys()):
            problems.append(f"{key} is in the file but the model has no such layer")
        for key, layer in expected.items():
            if key not in stored:
                problems.append(f"{key} is missing from the file")
                continue
            variable = getattr(layer, part)
            if tuple(stored[key].shape) != tuple(variable.shape):
                problems.append(f"{key} has shape {stored[key].shape} in the file, {tuple(variable.shape)} in the model")
            plan.append((layer, variable, stored[key]))
    if problems:
        raise WeightsFileMismatch(
            f"{os.fspath(path)} does not fit this model ({len(problems)} problem(s)): " + "; ".join(problems[:5])
        )
    for _, variable, value in plan:
        variable.assign(value)
    if "mask" in parts:
        for layer in _masked_layers(model):
            key = f"{layer.name}/threshold"
            if threshold == "file" and key not in stored:
                raise WeightsFileMismatch(f"{os.fspath(path)} has no {key}")
            if threshold != "recompute" and key in stored:
                layer.threshold.assign(float(stored[key]))
            else:
                layer.reset_threshold()
    log.info("loaded %s from %s into %d layers", "+".join(parts), os.fspath(path), len(layers))
