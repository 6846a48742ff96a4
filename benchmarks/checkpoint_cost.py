"""What an epoch checkpoint costs, as a share of the epoch it follows, for the FCN and Conv2 side by side.

    python benchmarks/checkpoint_cost.py [--models fcn,conv2] [--steps 40] [--rounds 5] [--threads 0] [--json OUT]

For each model (the Supermask of its shipped config's size, compiled through model_trainer as the looper does):

    step          median seconds per training step over `--steps` steps of in-memory batches (interleaved rounds)
    epoch         step * the real steps per epoch (469 for MNIST, 391 for CIFAR-10): the training part of an epoch
                  (the looper's epoch also evaluates the test set and counts the masks, which makes it longer, so
                  the share below is an upper bound)
    checkpoint    median seconds to build and write one checkpoint (model_trainer.checkpoint_arrays +
                  run_folder.atomic_savez with fsync, into a temporary folder), measured between the training rounds
    share         checkpoint / epoch
    bytes         the checkpoint's size on disk

The rounds alternate models and measurements in one process, so a loaded machine slows both sides alike.
"""

from __future__ import annotations

import argparse
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
import model_trainer  # noqa: E402
import run_folder  # noqa: E402

log = logging.getLogger("checkpoint_cost")
STEPS_PER_EPOCH = {"mnist": 469, "cifar10": 391}


def checkpoint_seconds(model, history, folder: Path) -> tuple[float, int]:
    """(seconds, bytes) of writing one checkpoint of `model`."""
    path = folder / "checkpoint.npz"
    start = time.perf_counter()
    arrays = model_trainer.checkpoint_arrays(model, history, {"plateau": None, "seconds": 0.0})
    run_folder.atomic_savez(path, arrays, compress=False)  # as model_trainer.EpochCheckpoint writes it
    return time.perf_counter() - start, path.stat().st_size


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="fcn,conv2",
                   help=f"comma-separated from {', '.join(common.MODEL_DATASET)} (default fcn,conv2)")
    p.add_argument("--steps", type=int, default=40, help="training steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per setting, interleaved (median reported)")
    common.add_threads_argument(p)
    p.add_argument("--json", help="write the raw numbers here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.start(args.threads, log_format="%(message)s")
    models = args.models.split(",")
    built = {name: common.compiled_model(name, "masked", steps=args.steps, jit_compile=False) for name in models}
    data = {name: common.memory_dataset(name) for name in models}
    history = [{"epoch": e, "loss": 0.1} for e in range(100)]  # a 100-epoch history rides along
    steps = {name: [] for name in models}
    writes = {name: [] for name in models}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:  # trace / compile, build the optimizer's slots
            common.fit_epoch(built[name], data[name], 2)
        for r in range(args.rounds):
            for name in (models if r % 2 == 0 else models[::-1]):
                timing = common.fit_epoch(built[name], data[name], args.steps)
                steps[name].append(timing.wall / args.steps)
                seconds, sizes[name] = checkpoint_seconds(built[name], history, Path(tmp))
                writes[name].append(seconds)
    rows = []
    for name in models:
        dataset = common.MODEL_DATASET[name]
        step = statistics.median(steps[name])
        epoch = step * STEPS_PER_EPOCH[dataset]
        write = statistics.median(writes[name])
        rows.append({"model": name, "step_s": step, "epoch_s": epoch, "checkpoint_s": write,
                     "share_percent": 100 * write / epoch, "checkpoint_bytes": sizes[name]})
    print(f"machine: {common.machine()}")
    print(f"{'model':<8} {'step ms':>9} {'epoch s':>9} {'checkpoint s':>13} {'share %':>8} {'bytes':>12}")
    for row in rows:
        print(f"{row['model']:<8} {1e3 * row['step_s']:>9.2f} {row['epoch_s']:>9.1f} {row['checkpoint_s']:>13.3f} "
              f"{row['share_percent']:>8.2f} {row['checkpoint_bytes']:>12,d}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": common.machine(), "args": vars(args), "rows": rows,
                                               "raw": {"step_s": steps, "checkpoint_s": writes}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
