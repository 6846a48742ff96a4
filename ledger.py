"""The results ledger: every number the README reports, committed with what produced it.

    python ledger.py add RESULTS_DIR --reports conv2 --command "python experiment_looper.py configs/conv2.yaml ..."
    python ledger.py table            print the reproduction status table (README) and the entry list (docs)
    python ledger.py table --write    write them into README.md and docs/reproducing.md between their markers
    python ledger.py table --check    exit 1 when README.md or docs/reproducing.md differ from the ledger
    python ledger.py history A [--epochs 5,11,20-30]
                                      A's runs epoch by epoch (a column per seed): test accuracy and remaining
                                      weights, and each run's fewest remaining weights (and at which epoch)
    python ledger.py compare A B [--epoch N | --epochs FIRST-LAST]
                                      A's runs against B's runs of the same seeds at one epoch (default: the
                                      last epoch both reached): test accuracy and remaining weights, A − B.
                                      With --epochs, their means over the window and each side's fewest
                                      remaining weights in it (and at which epoch). A and B are ledger
                                      entries or results folders (a precision check, a shortened screen
                                      against the full run's record at the same epochs)

An entry is one results folder (one config, its N runs), copied by `add` into ledger/<entry>/:

    entry.json           what produced it: the command, the code commit, the data source, the precision, the
                         resolved identity, when it was added, which paper row it stands for (`reports`), and per
                         run the seed, final and best test accuracy, remaining weights, seconds, effective
                         architecture, device (Keras backend and its device); the summary (mean, std, min, max
                         over the runs)
    config.yaml          the resolved config
    run_000/ ...         each run's config.yaml, metrics.json, history.json (every epoch), layers.json (per layer
                         kept / inverted / hidden, units and surviving units: filled in from the artifact for runs
                         made before the looper recorded them) and compact.npz (the trained Supermask in ~2
                         bits per weight: `python export.py ledger/<entry>/run_000 --check-accuracy ...`
                         recomputes the recorded test accuracy without training). Baselines keep no artifact
                         (their float32 kernels are MBs), and no run keeps masks.npz (the real-valued masks, MBs;
                         the artifact reproduces the model).

The entry's name is its results folder's name under today's identity rule (run_folder.results_dir), so a run made
before a rename of the identity lands where the same command would put it now. `reports` ties an entry to a row of
the paper's table (paper_results.PAPER_RESULTS): the README's status table is built from those entries only;
other entries (recipe screens, precision checks) are listed in docs/reproducing.md. Several Supermask entries may
report one row (a released recipe and a found one: a line each), a baseline row only one.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import config as config_lib
import run_folder
from paper_results import BASELINE_SUFFIX, PAPER_RESULTS, SUPERMASK_ROWS, baseline_of, compares_with_paper, paper_figure

ROOT = Path(__file__).resolve().parent
LEDGER = ROOT / "ledger"
ENTRY = "entry.json"
KEPT_RUN_FILES = (run_folder.CONFIG, run_folder.METRICS, run_folder.HISTORY, run_folder.LAYERS)
README = ROOT / "README.md"
REPRODUCING = ROOT / "docs" / "reproducing.md"
TABLE_MARKERS = ("<!-- ledger:status:begin -->", "<!-- ledger:status:end -->")
ENTRIES_MARKERS = ("<!-- ledger:entries:begin -->", "<!-- ledger:entries:end -->")
# Why a row has no measurement in the ledger (its CPU runs were made on a 2-core machine without CIFAR-100; its
# GPU runs, on a lent H100, are listed in docs/reproducing.md).
NOT_RUN = {  # hours: training steps alone at the speed measured in docs/speed.md ("What a full run costs")
    "resnet20x2": "not run: ≥ 11 h per run on a 2-core CPU; GPU: `configs/resnet20x2.yaml` and its baseline",
    "resnet20x3": "not run: ≥ 20 h per run on a 2-core CPU; GPU: `configs/resnet20x3.yaml` and its baseline",
    "resnet56": "not run: CIFAR-100 was not on the machine that made this ledger; `configs/resnet56.yaml` with tfds "
                 "or the archive",
    "resnet110": "not run: CIFAR-100 was not on the machine that made this ledger; `configs/resnet110.yaml` with tfds "
                  "or the archive",
}


# --------------------------------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------------------------------
def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check_results_folder(results: Path) -> None:
    """Raise ValueError unless `results` looks like a looper's results folder (<out>/<name>-<hash>, with its
    config.yaml), naming the folder to give instead when it is one of its runs."""
    results = Path(results)
    if run_folder.RUN_PATTERN.fullmatch(results.name) and (results.parent / run_folder.CONFIG).is_file():
        raise ValueError(f"{results} is one run of a results folder; give the folder: {results.parent}")
    if not (results / run_folder.CONFIG).is_file():
        raise ValueError(f"{results} is not a results folder (expected <out>/<name>-<hash> with its "
                         f"{run_folder.CONFIG}, as the looper writes it)")


def entry_name(results: Path) -> tuple[str, config_lib.ExperimentConfig]:
    """(ledger name, config) of a results folder: its name under today's identity, a sweep's combination
    flattened into one folder name with '__'."""
    raw = run_folder.read_config_mapping(Path(results) / run_folder.CONFIG)
    raw = run_folder.migrate_raw_config(raw)
    raw.setdefault("data", {})["source"] = "synthetic" if raw["data"].get("source") == "synthetic" else "tfds"
    raw["data"]["data_dir"] = None
    cfg = config_lib.parse_config(raw, source=str(Path(results) / run_folder.CONFIG))
    name = Path(results).name
    combo = name.rsplit("-", 1)[0] if Path(results).parent.name == cfg.name and "=" in name else None
    return ledger_name(cfg, combo), cfg


def ledger_name(cfg: config_lib.ExperimentConfig, combo_label: str | None = None) -> str:
    """<name>-<identity>, or <sweep name>__<combination>-<identity> for one combination of a sweep."""
    identity = run_folder.config_hash(cfg)
    return f"{cfg.name}__{combo_label}-{identity}" if combo_label else f"{cfg.name}-{identity}"


def reports_problem(reports: str | None, paper: str | None, source: str) -> str | None:
    """Why a run whose config stands for paper row `paper`, trained on data `source`, cannot report row `reports`
    (None when it can, or when it reports none): a run reports only the row its config names, and only on real
    data."""
    if reports is None:
        return None
    if reports not in PAPER_RESULTS:
        return f"not a row of the paper; allowed: {', '.join(PAPER_RESULTS)}"
    if not compares_with_paper(source):
        return "the run trained on synthetic data, which reports no paper row; omit --reports to keep it as a study"
    if paper != reports:
        return (f"the run's config stands for {'no paper row' if paper is None else 'row ' + paper} (its `paper` "
                f"key); a run reports only that row, or none (omit --reports)")
    return None


def copy_config(source: Path, target: Path) -> None:
    """A results folder's config.yaml as the ledger keeps it: without the paths of the machine that trained it
    (data.data_dir null, output_dir the default); neither is part of a run's identity, and the entry's command
    says where the data goes."""
    raw = run_folder.read_config_mapping(source)
    if isinstance(raw.get("data"), dict) and "data_dir" in raw["data"]:
        raw["data"]["data_dir"] = None
    if "output_dir" in raw:
        raw["output_dir"] = config_lib.ExperimentConfig.output_dir
    run_folder.atomic_write_text(target, yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))


def add(results: Path, *, reports: str | None, command: str, commit: str | None = None, note: str = "",
        ledger: Path = LEDGER) -> Path:
    """Copy the finished runs of `results` into the ledger, replacing an older copy of the same entry.

    Runs of the older copy that `results` no longer holds are kept, files and record as they were: a results
    folder lost after its first runs were entered (a fresh checkout) can still add its later runs to the entry.
    """
    results = Path(results)
    check_results_folder(results)
    import tf_logs

    tf_logs.import_tensorflow()
    import shrink  # imports TensorFlow: only `add` needs it

    name, cfg = entry_name(results)
    source = run_folder.read_config_mapping(results / run_folder.CONFIG).get("data", {}).get("source", "tfds")
    problem = reports_problem(reports, cfg.paper, source)
    if problem:
        raise ValueError(f"--reports {reports}: {problem}")
    baseline_entries([e for e in entries(ledger) if e["name"] != name] + [{"name": name, "reports": reports}])
    runs = run_folder.run_dirs(results)
    if not runs:
        raise ValueError(f"{results} holds no finished run")
    target = ledger / name
    staging = ledger / f".{name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    copy_config(results / run_folder.CONFIG, staging / run_folder.CONFIG)
    records = []
    for run in runs:
        run_folder.check_run(run)
        (staging / run.name).mkdir()
        for file in KEPT_RUN_FILES:
            (copy_config if file == run_folder.CONFIG else shutil.copyfile)(run / file, staging / run.name / file)
        metrics = run_folder.read_json(run / run_folder.METRICS)
        architecture = metrics.get("architecture")
        if cfg.model.masked:
            shutil.copyfile(run / run_folder.COMPACT, staging / run.name / run_folder.COMPACT)
            if architecture is None:  # a run made before the looper recorded its surviving units: fill them in
                units = shrink.analyze(run_folder.load_compact(run / run_folder.COMPACT))
                architecture = units.architecture
                run_folder.atomic_write_json(staging / run.name / run_folder.LAYERS,
                                             units.with_units(run_folder.read_json(run / run_folder.LAYERS)))
        records.append({
            "run": metrics["run"], "seed": metrics["seed"], "epochs_run": metrics["epochs_run"],
            "test_accuracy_percent": 100.0 * metrics["test_accuracy"],
            "best_test_accuracy_percent": 100.0 * metrics["best_test_accuracy"],
            "remaining_percent": metrics["remaining_percent"], "remaining_weights": metrics["remaining_weights"],
            "total_weights": metrics["total_weights"], "seconds": metrics["seconds"],
            "seconds_per_epoch": metrics["seconds_per_epoch"], "architecture": architecture,
            "device": metrics.get("device"),
        })
    records += _kept_runs(target, {run.name for run in runs}, staging)
    records.sort(key=lambda r: r["run"])
    stats = run_folder.summary_statistics
    entry = {
        "name": name, "reports": reports, "paper_row": cfg.paper, "command": command,
        "code_commit": commit or git_commit(), "results_folder": results.name,
        "data": {"dataset": cfg.data.dataset, "source": source},
        "architecture": cfg.model.architecture, "mask_mode": cfg.model.mask_mode,
        "precision": cfg.training.mixed_precision or "float32", "epochs": cfg.training.epochs,
        "identity": run_folder.identity(cfg), "note": note,
        "added": datetime.date.today().isoformat(),
        "summary": {"runs": len(records),
                    "test_accuracy_percent": stats(r["test_accuracy_percent"] for r in records),
                    "remaining_percent": stats(r["remaining_percent"] for r in records),
                    "remaining_weights": stats(r["remaining_weights"] for r in records),
                    "seconds_per_epoch": stats(r["seconds_per_epoch"] for r in records)},
        "runs": records,
    }
    run_folder.atomic_write_json(staging / ENTRY, entry)
    old = ledger / f".{name}.replaced"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)  # kept until the new entry is in place
    try:
        os.replace(staging, target)
    except OSError:
        if old.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def _kept_runs(target: Path, added: set[str], staging: Path) -> list[dict]:
    """Copy into `staging` the files an entry keeps of each run of the entry at `target` whose name is not in
    `added` (an export folder beside them stays behind); their records from the entry's entry.json."""
    if not (target / ENTRY).exists():
        return []
    by_run = {r["run"]: r for r in run_folder.read_json(target / ENTRY)["runs"]}
    kept = []
    for run in sorted(p for p in target.glob("run_*") if p.is_dir() and p.name not in added):
        (staging / run.name).mkdir()
        for file in (*KEPT_RUN_FILES, run_folder.COMPACT):
            if (run / file).exists():  # a baseline keeps no artifact
                shutil.copyfile(run / file, staging / run.name / file)
        kept.append(by_run[int(run_folder.RUN_PATTERN.fullmatch(run.name)[1])])
    return kept


def entries(ledger: Path = LEDGER) -> list[dict]:
    """Every entry.json of the ledger, sorted by name."""
    return [json.loads(p.read_text()) for p in sorted(Path(ledger).glob(f"*/{ENTRY}"))]


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------
def _mean_std(stats: dict, digits: int = 2) -> str:
    """'mean ± std', or the value alone for one run (whose spread is unknown, not 0)."""
    if stats.get("n", 2) < 2:
        return f"{stats['mean']:.{digits}f}"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def verdict(value: float, interval) -> str | None:
    """'in' / 'outside' of the paper's interval, None when the paper gives none."""
    if interval is None:
        return None
    return "in" if interval[0] <= value <= interval[1] else "outside"


def judged_digits(value: float, interval, digits: int = 2, most: int = 4) -> int:
    """The decimals to print `value` with, from `digits` up to `most`, so that the printed number gets the same
    verdict against the paper's interval as the value itself: 0.5762 against [0.58, 0.62] prints as 0.576
    (outside), not as 0.58, which would read as inside."""
    while digits < most and verdict(round(value, digits), interval) != verdict(value, interval):
        digits += 1
    return digits


def epochs_label(entry: dict) -> str:
    """The epochs an entry's runs trained: "100" when each ran its configured epochs, else the range run and the
    configured count, "98–108 of 110" (a schedule that stops early, such as the plateau rule)."""
    run = sorted({r["epochs_run"] for r in entry["runs"]})
    if run == [entry["epochs"]]:
        return str(entry["epochs"])
    return f"{run[0]}{'' if len(run) == 1 else f'–{run[-1]}'} of {entry['epochs']}"


def _measured(entry: dict | None, key: str, interval=None) -> str:
    if entry is None:
        return "–"
    s = entry["summary"]
    return f"{_mean_std(s[key], judged_digits(s[key]['mean'], interval))} ({s['runs']}×{epochs_label(entry)} ep.)"


def row_status(row: str, supermask: dict | None, baseline: dict | None) -> str:
    """The status word of a paper row: in interval / outside (what) / measured (no interval) / not run (why)."""
    if supermask is None and baseline is None:
        return NOT_RUN.get(row, "not run yet")
    paper, paper_base = PAPER_RESULTS[row], PAPER_RESULTS[baseline_of(row)]
    checks = []
    if supermask is not None:
        s = supermask["summary"]
        checks += [("accuracy", verdict(s["test_accuracy_percent"]["mean"], paper.accuracy_interval)),
                   ("remaining", verdict(s["remaining_percent"]["mean"], paper.remaining_interval))]
    if baseline is not None:
        checks.append(("baseline", verdict(baseline["summary"]["test_accuracy_percent"]["mean"],
                                           paper_base.accuracy_interval)))
    outside = [what for what, v in checks if v == "outside"]
    judged = [v for _, v in checks if v is not None]
    missing = (["Supermask"] if supermask is None else []) + (["baseline"] if baseline is None else [])
    if outside:
        status = "outside: " + ", ".join(outside)
    elif judged:
        status = "in interval"
    else:
        deltas = []
        if supermask is not None:
            deltas.append(f"Δ acc {supermask['summary']['test_accuracy_percent']['mean'] - paper.accuracy:+.2f}")
        if baseline is not None:
            deltas.append(f"Δ base {baseline['summary']['test_accuracy_percent']['mean'] - paper_base.accuracy:+.2f}")
        status = "measured (no interval in the paper; " + ", ".join(deltas) + ")"
    if missing:
        status += f"; {' and '.join(missing)} not run yet"
    return status


def config_name(entry: dict) -> str:
    """An entry's name without its identity hash: the config's `name` (conv2, conv2_found, ...); for a sweep's
    combination the name and the combination (fcn_recipe_search__weight_init=elus_x2,...)."""
    return entry["name"].rsplit("-", 1)[0]


def baseline_entries(all_entries: list[dict]) -> dict[str, dict]:
    """{baseline row: its entry}; ValueError when two entries report the same baseline row."""
    baselines = {}
    for e in all_entries:
        if (e.get("reports") or "").endswith(BASELINE_SUFFIX):
            if e["reports"] in baselines:
                raise ValueError(f"{baselines[e['reports']]['name']} and {e['name']} both report {e['reports']}; "
                                 "a baseline row has one entry (add the other without --reports)")
            baselines[e["reports"]] = e
    return baselines


def status_table(all_entries: list[dict]) -> str:
    """The README's reproduction status table: every paper row, the paper's numbers and ours. A row that several
    Supermask entries report (the released recipe and a found one) gets a line per entry, named by its config,
    the config named like the row first; a baseline row has at most one entry."""
    baselines = baseline_entries(all_entries)
    lines = ["| row | paper Supermask % | ours | paper remaining % | ours | paper baseline % | ours | status |",
             "|---|---|---|---|---|---|---|---|"]
    for row in SUPERMASK_ROWS:
        paper, base = PAPER_RESULTS[row], PAPER_RESULTS[baseline_of(row)]
        baseline = baselines.get(baseline_of(row))
        supermasks = sorted((e for e in all_entries if e.get("reports") == row),
                            key=lambda e: (config_name(e) != row, config_name(e)))
        names = [config_name(e) for e in supermasks]
        if len(set(names)) < len(names):  # one config under two identities: the full entry names tell them apart
            names = [e["name"] for e in supermasks]
        for supermask, name in zip(supermasks or [None], names or [None]):
            label = f"{paper.model} ({paper.dataset})"
            if len(supermasks) > 1:
                label += f", `{name}`"
            lines.append(f"| {label} | {paper_figure(paper.accuracy, paper.accuracy_interval)} | "
                         f"{_measured(supermask, 'test_accuracy_percent', paper.accuracy_interval)} | "
                         f"{paper_figure(paper.remaining_percent, paper.remaining_interval)} | "
                         f"{_measured(supermask, 'remaining_percent', paper.remaining_interval)} | "
                         f"{paper_figure(base.accuracy, base.accuracy_interval)} | "
                         f"{_measured(baseline, 'test_accuracy_percent', base.accuracy_interval)} | "
                         f"{row_status(row, supermask, baseline)} |")
    return "\n".join(lines) + "\n"


# Runs made before the looper recorded its device (metrics.json without "device") all trained on the TensorFlow
# backend, the only one the code supported then.
DEVICE_NOT_RECORDED = "tensorflow, device not recorded"


def run_devices(entry: dict) -> str:
    """Where an entry's runs trained, each device with its run count in the order of the runs, e.g.
    "tensorflow CPU ×1, jax NVIDIA H100 80GB HBM3 ×1"."""
    counts = collections.Counter(r.get("device") or DEVICE_NOT_RECORDED for r in entry.get("runs", []))
    return ", ".join(f"{device} ×{n}" for device, n in counts.items()) or "–"


def entries_table(all_entries: list[dict]) -> str:
    """Every ledger entry: what it stands for, its numbers per run count, precision and device, and the
    command."""
    lines = ["| entry | stands for | runs × epochs | precision, device | test accuracy % | remaining % | command |",
             "|---|---|---|---|---|---|---|"]
    for e in all_entries:
        s = e["summary"]
        remaining = _mean_std(s["remaining_percent"]) if e["mask_mode"] != config_lib.BASELINE_MODE else "100"
        lines.append(f"| `{e['name']}` | {e['reports'] or e['note'] or '–'} | {s['runs']} × {epochs_label(e)} | "
                     f"{e['precision']}, {run_devices(e)} | {_mean_std(s['test_accuracy_percent'])} | "
                     f"{remaining} | `{e['command']}` |")
    return "\n".join(lines) + "\n"


def replace_block(text: str, markers: tuple[str, str], block: str) -> str:
    begin, end = markers
    if begin not in text or end not in text:
        raise ValueError(f"markers {begin} ... {end} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}{end}{tail}"


def expected_documents(all_entries: list[dict]) -> dict[Path, str]:
    """README.md and docs/reproducing.md as they must read for this ledger."""
    return {README: replace_block(README.read_text(), TABLE_MARKERS, status_table(all_entries)),
            REPRODUCING: replace_block(REPRODUCING.read_text(), ENTRIES_MARKERS, entries_table(all_entries))}


# --------------------------------------------------------------------------------------------------------------
# Paired comparisons
# --------------------------------------------------------------------------------------------------------------
def runs_by_seed(folder: Path) -> dict[int, list[dict]]:
    """{seed: the run's complete epochs' history records} of an entry or results folder; ValueError when it
    holds no finished run, two runs of one seed, or a run without a complete epoch."""
    runs = {}
    for directory in run_folder.run_dirs(folder):
        record = run_folder.read_run(directory)
        seed = record.metrics["seed"]
        if seed in runs:
            raise ValueError(f"{folder}: two runs of seed {seed}")
        runs[seed] = [r for r in record.history if not r.get("partial")]
        if not runs[seed]:
            raise ValueError(f"{directory}: no complete epoch")
    if not runs:
        raise ValueError(f"{folder} holds no finished run")
    return runs


def epoch_record(history: list[dict], epoch: int) -> dict:
    """The history record of `epoch` (1-based); ValueError when the run did not reach it or has no finite test
    accuracy and remaining weights there (a run without test data)."""
    for record in history:
        if record["epoch"] == epoch and not record.get("partial"):
            values = (record.get("test_accuracy"), record.get("remaining_percent"))
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise ValueError(f"epoch {epoch}: no finite test accuracy and remaining weights {values}")
            return record
    complete = sum(not r.get("partial") for r in history)
    raise ValueError(f"no record of epoch {epoch} (the run has {complete} complete epochs)")


def parse_epochs(text: str) -> tuple[int, int]:
    """"N" or "FIRST-LAST" (1-based, inclusive) -> (first, last); ValueError on anything else."""
    parts = text.split("-")
    try:
        first, last = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, 0)
    except ValueError:
        first, last = 0, 0
    if not 1 <= first <= last:
        raise ValueError(f"epochs {text!r}: expected N or FIRST-LAST with 1 <= FIRST <= LAST")
    return first, last


def parse_epoch_list(text: str) -> list[int]:
    """"5,11,20-30" -> [5, 11, 20, 21, ..., 30]: comma-separated epochs and FIRST-LAST ranges (parse_epochs)."""
    epochs = []
    for item in text.split(","):
        first, last = parse_epochs(item.strip())
        epochs.extend(range(first, last + 1))
    return epochs


def history_table(folder: Path, epochs: list[int] | None = None) -> str:
    """An entry's (or results folder's) runs epoch by epoch, a column per seed: "test % / remaining %" at
    `epochs` (default: every epoch the runs reached), and each run's fewest remaining weights with their epoch."""
    runs = runs_by_seed(folder)
    seeds = sorted(runs)
    if epochs is None:
        epochs = sorted({r["epoch"] for h in runs.values() for r in h})
    lines = [f"{folder}: test % / remaining %", "", "| epoch | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for epoch in epochs:
        cells = []
        for seed in seeds:
            try:
                r = epoch_record(runs[seed], epoch)
                cells.append(f"{100 * r['test_accuracy']:.2f} / {r['remaining_percent']:.3f}")
            except ValueError:
                cells.append("–")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    # over every complete epoch, each checked like a shown one (a run without test data is refused)
    fewest = [fewest_remaining([epoch_record(runs[s], r["epoch"]) for r in runs[s]]) for s in seeds]
    lines.append("| fewest remaining (epoch) | " + " | ".join(
        f"{r['remaining_percent']:.3f} ({r['epoch']})" for r in fewest) + " |")
    return "\n".join(lines) + "\n"


def fewest_remaining(records: list[dict]) -> dict:
    """The record with the fewest remaining weights (the earliest of equals)."""
    return min(records, key=lambda r: r["remaining_percent"])


def window_summary(history: list[dict], first: int, last: int) -> dict:
    """One run over epochs first..last: the mean test accuracy (%) and remaining weights (%),

        mean_test = 100 / (last - first + 1) * sum_e test_accuracy_e,   mean_remaining likewise,

    and the fewest remaining weights with the epoch where they were fewest (the first such epoch)."""
    records = [epoch_record(history, e) for e in range(first, last + 1)]
    lowest = fewest_remaining(records)
    return {"test_accuracy": 100.0 * run_folder.summary_statistics(r["test_accuracy"] for r in records)["mean"],
            "remaining_percent": run_folder.summary_statistics(r["remaining_percent"] for r in records)["mean"],
            "min_remaining_percent": lowest["remaining_percent"], "min_remaining_epoch": lowest["epoch"]}


def paired_runs(a: Path, b: Path, epochs: int | tuple[int, int] | None = None) -> tuple[tuple[int, int], list[dict]]:
    """((first, last), rows): per seed that both folders ran, A's and B's window_summary over epochs
    first..last (an int N is N..N; default: the last epoch every paired run reached) and the differences
    A − B of the mean test accuracy and remaining weights."""
    runs_a, runs_b = runs_by_seed(a), runs_by_seed(b)
    seeds = sorted(set(runs_a) & set(runs_b))
    if not seeds:
        raise ValueError(f"{a} and {b} share no seed (seeds {sorted(runs_a)} and {sorted(runs_b)})")
    if epochs is None:
        epochs = min(h[-1]["epoch"] for runs in (runs_a, runs_b) for seed, h in runs.items() if seed in seeds)
    first, last = (epochs, epochs) if isinstance(epochs, int) else epochs
    rows = []
    for seed in seeds:
        row = {"seed": seed}
        for side, runs in (("a", runs_a), ("b", runs_b)):
            row.update({f"{key}_{side}": value for key, value in window_summary(runs[seed], first, last).items()})
        for key in ("test_accuracy", "remaining_percent"):
            row[f"{key}_diff"] = row[f"{key}_a"] - row[f"{key}_b"]
        rows.append(row)
    return (first, last), rows


def comparison_table(a: str, b: str, epochs: tuple[int, int], rows: list[dict]) -> str:
    """The paired comparison as a Markdown table, with the mean difference over the seeds. Over a window of
    several epochs the values are the window's means, and two columns give each side's fewest remaining
    weights (% at epoch)."""
    first, last = epochs
    window = first != last
    head = f"mean of epochs {first}-{last}" if window else f"epoch {first}"
    columns = "| seed | A test % / remaining % | B test % / remaining % | A − B |"
    rule = "|---|---|---|---|"
    if window:
        columns += " A fewest remaining % (epoch) | B fewest remaining % (epoch) |"
        rule += "---|---|"
    lines = [f"{head}; A = {a}, B = {b}", "", columns, rule]
    for r in rows:
        line = (f"| {r['seed']} | {r['test_accuracy_a']:.2f} / {r['remaining_percent_a']:.3f} | "
                f"{r['test_accuracy_b']:.2f} / {r['remaining_percent_b']:.3f} | "
                f"{r['test_accuracy_diff']:+.2f} / {r['remaining_percent_diff']:+.3f} |")
        if window:
            line += "".join(f" {r[f'min_remaining_percent_{s}']:.3f} ({r[f'min_remaining_epoch_{s}']}) |"
                            for s in ("a", "b"))
        lines.append(line)
    if len(rows) > 1:
        mean = {k: run_folder.summary_statistics(r[k] for r in rows)["mean"]
                for k in ("test_accuracy_diff", "remaining_percent_diff")}
        lines.append(f"| mean of {len(rows)} | | | {mean['test_accuracy_diff']:+.2f} / "
                     f"{mean['remaining_percent_diff']:+.3f} |" + (" | |" if window else ""))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description="The results ledger (see the module docstring).")
    sub = p.add_subparsers(dest="verb", required=True)
    a = sub.add_parser("add", help="copy a results folder's finished runs into the ledger")
    a.add_argument("results", help="a results folder <output_dir>/<name>-<hash>")
    a.add_argument("--reports", help="the paper row it stands for (fcn, conv2_baseline, ...); omit for a study")
    a.add_argument("--command", required=True, help="the command that produced it")
    a.add_argument("--commit", help="the code commit that produced it (default: the checkout's HEAD)")
    a.add_argument("--note", default="", help="what the entry is, for entries that stand for no paper row")
    t = sub.add_parser("table", help="the README's status table and the docs' entry list")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write them into README.md and docs/reproducing.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when the documents differ from the ledger")
    c = sub.add_parser("compare", help="A's runs against B's runs of the same seeds at one epoch or a window")
    c.add_argument("a", help="a ledger entry or results folder")
    c.add_argument("b", help="a ledger entry or results folder")
    when = c.add_mutually_exclusive_group()
    when.add_argument("--epoch", type=int, help="the epoch to compare (default: the last epoch both reached)")
    when.add_argument("--epochs", metavar="FIRST-LAST",
                      help="compare the means over these epochs, and each side's fewest remaining weights")
    h = sub.add_parser("history", help="an entry's runs epoch by epoch: test accuracy and remaining weights")
    h.add_argument("entry", help="a ledger entry or results folder")
    h.add_argument("--epochs", metavar="LIST", help="epochs to show, e.g. 5,11,20-30 (default: every epoch)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.verb == "history":
        try:
            epochs = parse_epoch_list(args.epochs) if args.epochs is not None else None
            print(history_table(Path(args.entry), epochs), end="")
        except (ValueError, run_folder.RunFileError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.verb == "compare":
        try:
            epochs = parse_epochs(args.epochs) if args.epochs is not None else args.epoch
            epochs, rows = paired_runs(Path(args.a), Path(args.b), epochs)
        except (ValueError, run_folder.RunFileError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(comparison_table(args.a, args.b, epochs, rows), end="")
        return 0
    if args.verb == "add":
        try:
            target = add(Path(args.results), reports=args.reports, command=args.command, commit=args.commit,
                         note=args.note)
        except (ValueError, config_lib.ConfigErrors) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"added {target.relative_to(ROOT)}")
        return 0
    all_entries = entries()
    try:
        expected = expected_documents(all_entries)
    except ValueError as exc:  # the ledger itself is inconsistent (two entries for one baseline row)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check or args.write:
        stale = [path for path, text in expected.items() if path.read_text() != text]
        if args.write:
            for path in stale:
                run_folder.atomic_write_text(path, expected[path])
            print("written: " + (", ".join(str(p.relative_to(ROOT)) for p in stale) or "nothing changed"))
            return 0
        if stale:
            print("stale: " + ", ".join(str(p.relative_to(ROOT)) for p in stale) + " (python ledger.py table --write)",
                  file=sys.stderr)
            return 1
        return 0
    print(status_table(all_entries))
    print(entries_table(all_entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
