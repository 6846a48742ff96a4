"""Create and save the initial frozen weights and masks of a config's model for N runs, one `.npz` per run.

    python init_example.py configs/fcn.yaml --runs 3 --out inits/fcn
    -> inits/fcn/run_000.npz, run_001.npz, run_002.npz   (run i drawn with seed base_seed + i)

A config then starts every method from identical initialisations with
    model.weights_file: inits/fcn/run_{run}.npz
    model.masks_file:   inits/fcn/run_{run}.npz
(see configs/fcn_from_files.yaml). Files are plain arrays keyed '<layer>/kernel', '<layer>/mask' and
'<layer>/threshold', read back with allow_pickle=False.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import config as config_lib
import run_folder
import tf_logs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="YAML config whose model (architecture, inits, mask mode) to initialise")
    parser.add_argument("--runs", type=int, help="number of runs (default: the config's runs)")
    parser.add_argument("--out", required=True, help="directory for run_000.npz, run_001.npz, ...")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def resolve(args):
    """The validated config of parsed arguments, without the weights / masks files (they are what this writes) and
    with synthetic data (none is read: the local source's archive need not be here); raises ConfigErrors."""
    cfg, _ = config_lib.load_config(args.config, args.overrides + ["model.weights_file=null", "model.masks_file=null",
                                                                  "data.source=synthetic"], runs=args.runs)
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve(args)
    except config_lib.ConfigErrors as exc:
        print("\n".join(f"error: {line}" for line in str(exc).splitlines()), file=sys.stderr)
        return 2

    tf_logs.import_tensorflow()
    out = Path(args.out)
    for run, seed in enumerate(cfg.seeds()):
        model = run_folder.build_run_model(cfg, seed, run)
        path = out / f"{run_folder.run_name(run)}.npz"
        run_folder.save_weights_npz(model, path)
        print(f"{path}: {cfg.model.architecture}, seed {seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
