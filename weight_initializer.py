"""Initialisation schemes of the signed Supermask paper: the formulas, and a seeded Keras initializer.

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

import math
from collections.abc import Iterable

import keras
import numpy as np

from hparams import DISTRIBUTIONS, SCALINGS, InitSpec


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
# Keras initializer
# --------------------------------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="signed_supermask")
class ScaledInitializer(keras.initializers.Initializer):
    """`distribution` scaled by `factor * base(scaling)` of the kernel's fans; seeded with numpy PCG64.

    With an integer seed every call returns the same tensor (the builders give every layer its own seed);
    with seed None a seed is drawn from numpy's global generator (set by `keras.utils.set_random_seed`).
    """

    def __init__(self, distribution="signed_constant", scaling="elus", factor=1.0, seed=None):
        InitSpec(distribution, scaling, factor)  # validates (hparams owns the names and bounds)
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

    @classmethod
    def from_spec(cls, spec: InitSpec, seed: int | None = None) -> ScaledInitializer:
        return cls(spec.distribution, spec.scaling, spec.factor, seed)

    def get_config(self):
        return {"distribution": self.distribution, "scaling": self.scaling, "factor": self.factor, "seed": self.seed}
