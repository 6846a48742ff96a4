"""How far JAX's default float32 matmul and convolution precision lands from exact, on the device JAX sees.

    KERAS_BACKEND=jax python benchmarks/jax_matmul_precision.py --size 512

On NVIDIA GPUs since Ampere JAX's default precision runs float32 matmuls and convolutions in TF32 (about 1e-4
relative error) unless JAX_DEFAULT_MATMUL_PRECISION=highest; on a CPU both come out at float32's ~1e-7. Prints the
largest relative error of a size x size matmul against float64, at the default precision and at 'highest', and of
a 3x3 convolution at the default precision against 'highest' (docs/reproducing.md, "Runs on a GPU").
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="side of the square matrices")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((args.size, args.size)).astype(np.float32) for _ in range(2))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    print(f"device: {jax.devices()[0].device_kind}")
    for precision in ("default", "highest"):
        with jax.default_matmul_precision(precision):
            out = np.asarray(jnp.dot(jnp.asarray(a), jnp.asarray(b)))
        print(f"matmul {precision}: max relative error {np.max(np.abs(out - exact)) / np.max(np.abs(exact)):.2e}")
    x = rng.standard_normal((8, 32, 32, 64)).astype(np.float32)
    k = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)

    def conv(precision):
        return np.asarray(jax.lax.conv_general_dilated(jnp.asarray(x), jnp.asarray(k), (1, 1), "SAME",
                                                       dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                       precision=precision))

    highest = conv(jax.lax.Precision.HIGHEST)
    print(f"conv default vs highest: max relative difference "
          f"{np.max(np.abs(conv(None) - highest)) / np.max(np.abs(highest)):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
