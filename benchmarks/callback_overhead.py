"""Cost of the trainer's per-batch callback (the NaN guard) with and without Keras' async dispatch.

    python benchmarks/callback_overhead.py --epochs 7 --threads 1

A callback that defines `on_train_batch_end` makes Keras call it after every step; unless it is marked
`async_safe`, Keras then runs the hooks on the training thread and the NaN guard's float() waits for each step's
loss (a host sync). This trains the masked FCN through `model_trainer.train` on synthetic MNIST-shaped data and
alternates the two settings epoch by epoch (ABAB...) in one process; it prints the median epoch time of each and
their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=7, help="timed epochs per setting (after one warm-up each)")
    p.add_argument("--examples", type=int, default=12800, help="synthetic training examples (batch 128)")
    p.add_argument("--threads", type=int, default=0, help="TF intra/inter-op threads (0: TF default)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    import tf_logs

    tf_logs.import_tensorflow()  # TensorFlow's start-up noise filtered, as in the command-line tools
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras

    import model_trainer
    from architectures import build_model
    from custom_layers import MaskedLayers
    from data_preprocessor import load_dataset

    data = load_dataset("mnist", "synthetic", synthetic_train=args.examples, synthetic_test=256, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model("fcn", MaskedLayers(seed=0))
    model_trainer.prepare_model(model, steps_per_epoch=data.steps_per_epoch, epochs=100)
    times = {True: [], False: []}
    for i in range(2 * (args.epochs + 1)):
        setting = i % 2 == 0
        model_trainer.StopOnNonFinite.async_safe = setting  # the trainer's one batch-end hook
        start = time.perf_counter()
        model_trainer.train(model, data, epochs=1, verbose=0, compile=False)
        if i >= 2:  # one warm-up epoch per setting
            times[setting].append(time.perf_counter() - start)
    on, off = statistics.median(times[True]), statistics.median(times[False])
    print(f"| setting | median epoch s ({args.examples // 128} steps) |\n|---|---|")
    print(f"| async_safe callbacks (the repo) | {on:.3f} |\n| synchronous callbacks | {off:.3f} |")
    print(f"ratio synchronous / async: {off / on:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
