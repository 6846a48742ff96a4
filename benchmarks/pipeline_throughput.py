"""Input pipeline alone against the train step it feeds: can data_preprocessor's pipelines starve the model?

    python benchmarks/pipeline_throughput.py                                     # MNIST, CIFAR-10, CIFAR-100
    python benchmarks/pipeline_throughput.py --data-dir ~/datasets --batches 300 --steps 10

For each dataset, `data_preprocessor.load_dataset(...).train` (per-epoch reshuffle, gather, CIFAR-100 augmentation,
batch 128, prefetch; source "local" when the archive is in --data-dir, else "synthetic") is iterated alone for
`--batches` batches after a warm-up (images/s, median of --repeats passes). Then the masked model that trains on
it (FCN for MNIST, Conv2 and ResNet20 for CIFAR) trains (model_trainer's compile path, SGDW) on in-memory batches
(the step alone) and on the real pipeline (`train.repeat()`), interleaved. Printed per (dataset, model):

    pipeline img/s, the latency of a new iterator's first batch (paid by every epoch), step img/s,
    pipeline/step (>> 1: the pipeline can keep up), and fit img/s on the pipeline over fit img/s on memory (about 1
    when the pipeline never starves the step; it also includes the pipeline's CPU use competing with the step's
    on the same cores, and one iterator start per timed epoch: the FCN is timed over whole epochs for that reason,
    the conv models over --steps steps).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common  # noqa: E402  (first: the repository on sys.path, TensorFlow imported quietly)

# isort: split
import tensorflow as tf  # noqa: E402

from data_preprocessor import DATASETS, epoch_permutation, load_dataset  # noqa: E402

log = logging.getLogger("pipeline_throughput")

PAIRS = {"mnist": ("fcn",), "cifar10": ("conv2", "resnet20"), "cifar100": ("conv2", "resnet20")}


def bundle_for(dataset: str, args):
    """(DataBundle, source) for `dataset`: local archive if present in --data-dir, else synthetic."""
    info = DATASETS[dataset]
    local = args.data_dir is not None and (Path(args.data_dir).expanduser() / info.local_file).is_file()
    if dataset == "cifar100" and not args.local_cifar100:
        local = False
    source = "local" if local else "synthetic"
    start = time.perf_counter()
    data = load_dataset(dataset, source, args.data_dir if source == "local" else None, batch_size=args.batch,
                        seed=0, synthetic_train=args.synthetic_train, synthetic_test=256)
    log.info("%s: %s source, %d train examples, augment=%s, loaded in %.1f s", dataset, source, data.n_train,
             dataset == "cifar100", time.perf_counter() - start)
    return data, source


def pipeline_rate(ds: tf.data.Dataset, batches: int, repeats: int) -> tuple[float, float]:
    """(images/s of iterating `ds` (repeated) for `batches` batches after 5 warm-up batches, median of `repeats`
    passes; median milliseconds from creating an iterator to its first batch (shuffle buffer fill, map, prefetch
    ramp-up: paid again by every new iterator, i.e. by every epoch of fit))."""
    rates, firsts = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        iterator = iter(ds.repeat())
        next(iterator)
        firsts.append(1e3 * (time.perf_counter() - start))
        for _ in range(4):
            next(iterator)
        images = 0
        start = time.perf_counter()
        for _ in range(batches):
            x, _ = next(iterator)
            images += int(x.shape[0])
        rates.append(images / (time.perf_counter() - start))
    return statistics.median(rates), statistics.median(firsts)


def permutation_indices(n: int, batch_size: int, seed: int) -> tf.data.Dataset:
    """Each epoch's order as ONE stateless_shuffle op on a fresh per-iteration seed. Batches of int64 indices,
    reshuffled every iteration, deterministic."""
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2).take(1)
    return seeds.flat_map(lambda s: tf.data.Dataset.from_tensor_slices(
        tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=s))).batch(batch_size)


def index_pipelines(data, batch_size: int):
    """Three ways to order an epoch, each gathering the same arrays as load_dataset does: the repo's
    (data_preprocessor.epoch_permutation: index_shuffle of each batch's positions, a pure function of seed and
    epoch), the repo's earlier Dataset.range(n).shuffle(n) (fills an n-element buffer before the first batch),
    and one stateless_shuffle op per epoch."""
    n = data.n_train
    x = next(iter(data.epoch(0).unbatch().batch(n)))  # the standardised training arrays, in some order
    x_t, y_t = tf.constant(x[0]), tf.constant(x[1])

    def gather(idx):
        return tf.gather(x_t, idx), tf.gather(y_t, idx)

    def index_shuffle(positions):
        return gather(epoch_permutation(positions, n, 0, 0))

    buffer = tf.data.Dataset.range(n).shuffle(n, seed=0, reshuffle_each_iteration=True).batch(batch_size)
    pipelines = {"index_shuffle (the repo)": tf.data.Dataset.range(n).batch(batch_size).map(
                     index_shuffle, num_parallel_calls=tf.data.AUTOTUNE),
                 "Dataset.shuffle(n) (earlier)": buffer.map(gather, num_parallel_calls=tf.data.AUTOTUNE),
                 "one stateless_shuffle op": permutation_indices(n, batch_size, 0).map(
                     gather, num_parallel_calls=tf.data.AUTOTUNE)}
    return {name: ds.prefetch(tf.data.AUTOTUNE) for name, ds in pipelines.items()}


def step_rates(model_name: str, data, args) -> tuple[float, float]:
    """(img/s on in-memory batches, img/s on the repo pipeline) of the masked model, interleaved."""
    steps = (args.fcn_steps or data.steps_per_epoch) if model_name == "fcn" else args.steps
    model = common.compiled_model(model_name, "masked", steps=steps, jit_compile=False,
                                  num_classes=data.info.num_classes, label_format=data.label_format)
    memory = _memory_like(data.train, args.batch)
    real = data.train  # an endless stream of epochs
    runners = {"memory": lambda: common.fit_epoch(model, memory, steps),
               "pipeline": lambda: common.fit_epoch(model, real, steps)}
    for run in runners.values():
        run()  # trace
    times = common.interleaved(runners, args.rounds)
    images = steps * args.batch
    return (images / statistics.median(t.wall for t in times["memory"]),
            images / statistics.median(t.wall for t in times["pipeline"]), steps)


def _memory_like(ds: tf.data.Dataset, batch: int, batches: int = 8) -> tf.data.Dataset:
    """`batches` full batches of `ds`, cached in memory, repeated, prefetched."""
    return ds.unbatch().take(batch * batches).batch(batch, drop_remainder=True).cache().repeat().prefetch(
        tf.data.AUTOTUNE)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="mnist,cifar10,cifar100", help="comma-separated datasets to time")
    p.add_argument("--data-dir", help="directory of the real archives (default: synthetic data of their shapes)")
    p.add_argument("--local-cifar100", action="store_true",
                   help="use cifar-100-python.tar.gz from --data-dir if present (default: synthetic CIFAR-100)")
    p.add_argument("--synthetic-train", type=int, default=10000, help="examples of a synthetic training set")
    p.add_argument("--batch", type=int, default=128, help="batch size of the pipelines and the steps")
    p.add_argument("--batches", type=int, default=200, help="batches per timed pipeline pass")
    p.add_argument("--repeats", type=int, default=3, help="timed pipeline passes (median)")
    p.add_argument("--steps", type=int, default=5, help="train steps per timed epoch (conv / resnet)")
    p.add_argument("--fcn-steps", type=int, default=0,
                   help="train steps per timed epoch of the FCN (0: a whole epoch, data.steps_per_epoch)")
    p.add_argument("--rounds", type=int, default=3, help="timed epochs per data source (median)")
    p.add_argument("--models", default=None, help="restrict the models, e.g. fcn,conv2")
    common.add_threads_argument(p)
    p.add_argument("--shuffle-prototype", action="store_true",
                   help="also compare the repo's index_shuffle order with Dataset.shuffle(n) and one "
                        "stateless_shuffle op per epoch (images/s, first batch latency)")
    p.add_argument("--json", help="write the results to this file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.start(args.threads)
    models = set(args.models.split(",")) if args.models else None
    rows, shuffle_rows = [], []
    for dataset in args.datasets.split(","):
        data, source = bundle_for(dataset, args)
        if args.shuffle_prototype and dataset != "cifar100":
            pipelines = index_pipelines(data, args.batch)
            measured = common.interleaved({k: (lambda ds=ds: pipeline_rate(ds, args.batches // 4, 1))
                                           for k, ds in pipelines.items()}, 5)
            for k, values in measured.items():
                shuffle_rows.append({"dataset": dataset, "pipeline": k, "n_train": data.n_train,
                                     "images_per_s": statistics.median(v[0] for v in values),
                                     "first_batch_ms": statistics.median(v[1] for v in values)})
        rate, first_ms = pipeline_rate(data.train, args.batches, args.repeats)
        log.info("%s pipeline: %.0f img/s, first batch after %.0f ms", dataset, rate, first_ms)
        for model_name in PAIRS[dataset]:
            if models is not None and model_name not in models:
                continue
            memory, real, steps = step_rates(model_name, data, args)
            rows.append({"dataset": dataset, "source": source, "augment": dataset == "cifar100",
                         "model": model_name, "pipeline_images_per_s": rate, "first_batch_ms": first_ms,
                         "steps": steps, "step_images_per_s": memory,
                         "fit_on_pipeline_images_per_s": real, "pipeline_over_step": rate / memory,
                         "fit_pipeline_over_memory": real / memory})
            log.info("%s / %s: step %.0f img/s, on the pipeline %.0f img/s", dataset, model_name, memory, real)
    print(f"\nInput pipeline vs train step (masked models, no XLA, batch {args.batch}); machine: {common.machine()}\n")
    print("| dataset (source) | model | pipeline img/s | first batch ms | step img/s | pipeline/step | "
          "steps/epoch timed | fit on pipeline img/s | fit pipeline/memory |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        aug = ", augmented" if r["augment"] else ""
        print(f"| {r['dataset']} ({r['source']}{aug}) | {r['model']} | {r['pipeline_images_per_s']:.0f} | "
              f"{r['first_batch_ms']:.0f} | {r['step_images_per_s']:.0f} | {r['pipeline_over_step']:.1f} | "
              f"{r['steps']} | {r['fit_on_pipeline_images_per_s']:.0f} | {r['fit_pipeline_over_memory']:.3f} |")
    if shuffle_rows:
        print("\nEpoch order of the training pipeline (no augmentation): the repo's index_shuffle, "
              "Dataset.range(n).shuffle(n) and one stateless_shuffle op per epoch\n")
        print("| dataset | n_train | pipeline | img/s | first batch ms |\n|---|---|---|---|---|")
        for r in shuffle_rows:
            print(f"| {r['dataset']} | {r['n_train']} | {r['pipeline']} | {r['images_per_s']:.0f} | "
                  f"{r['first_batch_ms']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": common.machine(), "args": vars(args), "rows": rows,
                                               "shuffle": shuffle_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
