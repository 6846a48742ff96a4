"""The looper end to end on synthetic data: results files, summary, resume, SIGKILL, NaN runs, determinism."""

import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_LOOPER as TINY

import config as config_lib
import data_preprocessor
import experiment_looper as looper
import run_folder

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path, raw, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_dir(tmp_path):
    (directory,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    return directory


def test_end_to_end_files_and_summary(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    assert looper.main([str(path), "--out", str(tmp_path / "out")]) == 0
    directory = _run_dir(tmp_path)
    assert directory.name.startswith("tiny-")
    runs = sorted(directory.glob("run_*"))
    assert [r.name for r in runs] == ["run_000", "run_001", "run_002"]
    metrics = []
    for run_dir in runs:
        for name in run_folder.RUN_FILES:
            assert (run_dir / name).is_file(), name
        m = json.loads((run_dir / "metrics.json").read_text())
        history = json.loads((run_dir / "history.json").read_text())
        assert m["status"] == "ok" and len(history) == 2
        assert m["test_accuracy"] == history[-1]["test_accuracy"]
        assert m["remaining_percent"] == history[-1]["remaining_percent"]
        layers = json.loads((run_dir / "layers.json").read_text())
        assert sum(v["kept"] + v["inverted"] for v in layers.values()) == m["remaining_weights"]
        # the effective architecture: input features and units that keep both incoming and outgoing weights
        assert [layers[n]["units"] for n in ("dense_0", "dense_1", "output")] == [300, 100, 10]
        assert "units" not in history[-1]["layers"]["dense_0"]  # the history stays as the trainer recorded it
        assert m["architecture"] == (f"784-300-100-10 → {m['surviving_inputs']}-{layers['dense_0']['surviving_units']}"
                                     f"-{layers['dense_1']['surviving_units']}-10")
        with np.load(run_dir / "masks.npz", allow_pickle=False) as data:
            assert "dense_0/mask" in data.files and data["dense_0/mask"].shape == (784, 300)
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 11 + int(run_dir.name[4:])
        metrics.append(m)
    summary = json.loads((directory / "summary.json").read_text())
    accs = [100 * m["test_accuracy"] for m in metrics]
    rems = [m["remaining_percent"] for m in metrics]
    assert summary["runs_finished"] == 3 and summary["runs_failed"] == 0
    assert summary["test_accuracy_percent"]["mean"] == pytest.approx(statistics.fmean(accs))
    assert summary["test_accuracy_percent"]["std"] == pytest.approx(statistics.stdev(accs))
    assert summary["remaining_percent"]["mean"] == pytest.approx(statistics.fmean(rems))
    assert summary["remaining_percent"]["min"] == min(rems) and summary["remaining_percent"]["max"] == max(rems)
    assert summary["remaining_weights"]["mean"] == pytest.approx(statistics.fmean(m["remaining_weights"]
                                                                                  for m in metrics))
    assert "| test accuracy % |" in (directory / "summary.md").read_text()
    assert "run 3/3" in (directory / "looper.log").read_text()
    assert "runs finished: 3 of 3" in capsys.readouterr().out


def test_paper_numbers_next_to_measured(tmp_path):
    runs = {0: {"status": "ok", "run": 0, "seed": 1, "test_accuracy": 0.9, "remaining_percent": 4.0,
                "remaining_weights": 10, "total_weights": 100, "seconds_per_epoch": 1.0}}
    made_up = looper.summary_markdown(looper.summarize(config_lib.parse_config({**TINY, "paper": "fcn"}), runs))
    assert "97.48" not in made_up and "| test accuracy % | 90.00 ± 0.00 [90.00, 90.00] | – |" in made_up
    real = {**TINY, "data": {"dataset": "mnist", "source": "tfds"}}  # real data (none is loaded here)
    cfg = config_lib.parse_config({**real, "paper": "fcn"})
    summary = looper.summarize(cfg, runs)
    text = looper.summary_markdown(summary)
    assert "97.48 [97.3, 97.7]" in text and "3.77 [3.7, 3.8]" in text and "90.00 ± 0.00" in text
    # printed as the README's table prints them (paper_results.paper_figure): 0.60, not 0.6; 74.50, not 74.5
    cifar = {**real, "data": {**real["data"], "dataset": "cifar10"}}
    conv2 = looper.summary_markdown({**summary, "paper": looper.summarize(config_lib.parse_config(
        {**cifar, "paper": "conv2", "model": {"architecture": "conv2"}}), {})["paper"]})
    assert "| 0.60 [0.58, 0.62] |" in conv2
    baseline = looper.summary_markdown({**summary, "paper": looper.summarize(config_lib.parse_config(
        {**cifar, "paper": "conv4_baseline", "model": {"architecture": "conv4", "mask_mode": "none"}}), {})["paper"]})
    assert "| 74.50 [74.7, 75.3] |" in baseline and "| remaining weights % | 90" not in baseline
    # the settings that make this run what it is (a sweep's combination among them) under the title
    assert "settings that differ from the defaults: " in text and "model.threshold_fraction" not in text
    swept = looper.summary_markdown(looper.summarize(config_lib.parse_config(
        {**real, "model": {**real["model"], "threshold_fraction": 0.6}}), {}))
    assert "model.threshold_fraction=0.6" in swept.splitlines()[2]
    # before any run has finished: dashes, no "None"
    empty = looper.summary_markdown(looper.summarize(cfg, {}))
    assert "| remaining weights (count) | – | – |" in empty and "None" not in empty


class Interrupt(Exception):
    pass


def test_resume_redoes_the_interrupted_run_only(tmp_path):
    cfg = config_lib.parse_config({**TINY, "output_dir": str(tmp_path / "out")})
    directory = run_folder.results_dir(cfg)
    calls = []

    def flaky(cfg, run, seed, run_dir, **kwargs):
        calls.append(run)
        if run == 1 and calls.count(1) == 1:
            (run_dir / "history.json").write_text("[half")  # killed mid-run
            raise Interrupt
        return looper.train_run(cfg, run, seed, run_dir, **kwargs)

    with pytest.raises(Interrupt):
        looper.run_experiment(cfg, directory, train=flaky)
    assert (directory / "run_000").is_dir() and (directory / "run_001.partial").is_dir()
    assert not (directory / "run_001").exists()
    assert json.loads((directory / "summary.json").read_text())["runs_finished"] == 1
    first = (directory / "run_000" / "metrics.json").read_text()
    summary = looper.run_experiment(cfg, directory, train=flaky)
    assert calls == [0, 1, 1, 2]  # run 0 not redone
    assert (directory / "run_000" / "metrics.json").read_text() == first
    assert not (directory / "run_001.partial").exists()
    assert summary["runs_finished"] == 3
    assert looper.run_experiment(cfg, directory, train=flaky)["runs_finished"] == 3 and calls == [0, 1, 1, 2]


def test_a_run_stopped_after_its_last_file_and_before_its_rename_is_kept(tmp_path):
    """The checkpoint is gone once a run's files are written; a worker stopped before renaming run_xxx.partial/
    must not lose the finished run to a retraining from epoch 1."""
    cfg = config_lib.parse_config({**TINY, "runs": 2, "output_dir": str(tmp_path / "out")})
    directory = run_folder.results_dir(cfg)
    calls = []

    def stopped_before_rename(cfg, run, seed, run_dir, **kwargs):
        calls.append(run)
        metrics = looper.train_run(cfg, run, seed, run_dir, **kwargs)
        if run == 1 and calls.count(1) == 1:
            raise Interrupt  # every file written, the checkpoint deleted, the folder not yet renamed
        return metrics

    with pytest.raises(Interrupt):
        looper.run_experiment(cfg, directory, train=stopped_before_rename)
    partial = directory / "run_001.partial"
    assert not (partial / run_folder.CHECKPOINT).exists()
    written = (partial / run_folder.METRICS).read_text()
    summary = looper.run_experiment(cfg, directory, train=stopped_before_rename)
    assert calls == [0, 1] and summary["runs_finished"] == 2  # not trained again
    assert (directory / "run_001" / run_folder.METRICS).read_text() == written and not partial.exists()


def test_set_overrides_reach_the_run(tmp_path):
    path = _write(tmp_path, TINY)
    assert looper.main([str(path), "--out", str(tmp_path / "out"), "--runs", "1",
                        "--set", "model.threshold_fraction=0.7", "--set", "training.epochs=1",
                        "--set", "training.optimizer.learning_rate=0.02"]) == 0
    directory = _run_dir(tmp_path)
    resolved = yaml.safe_load((directory / "config.yaml").read_text())
    assert resolved["model"]["threshold_fraction"] == 0.7
    assert resolved["training"]["optimizer"]["learning_rate"] == 0.02
    history = json.loads((directory / "run_000" / "history.json").read_text())
    assert len(history) == 1
    assert history[0]["remaining_percent"] < 40  # ~30 % active at p = 0.7, before training prunes


DRY = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if "from_files" not in p.name]


@pytest.mark.parametrize("path", DRY, ids=[p.stem for p in DRY])
def test_dry_run_builds_every_shipped_config_with_the_paper_count(path, capsys):
    assert looper.main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    cfg, _ = config_lib.load_config(path)
    if cfg.paper:
        from paper_results import PAPER_RESULTS
        assert f"parameters: {PAPER_RESULTS[cfg.paper].parameters}" in out.splitlines()
    assert out.rstrip().splitlines()[-1].startswith("parameters: ")


def test_config_loading_weights_and_masks_from_init_files(tmp_path, monkeypatch):
    import init_example
    from custom_layers import masked_layers

    monkeypatch.chdir(tmp_path)
    base = _write(tmp_path, {**TINY, "runs": 2})
    assert init_example.main([str(base), "--out", "inits"]) == 0
    raw = {**TINY, "runs": 2, "base_seed": 999,
           "model": {**TINY["model"], "weights_file": "inits/run_{run}.npz", "masks_file": "inits/run_{run}.npz"}}
    cfg = config_lib.parse_config(raw)
    from_files = run_folder.build_run_model(cfg, 999, 1)
    direct = run_folder.build_run_model(config_lib.parse_config({**TINY, "runs": 2}), 12, 1)  # run 1 = seed 12
    for a, b in zip(masked_layers(from_files), masked_layers(direct)):
        np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
        np.testing.assert_array_equal(a.mask.numpy(), b.mask.numpy())
        assert float(a.threshold) == pytest.approx(float(b.threshold))


def test_nan_run_is_recorded_as_failed_and_the_sweep_goes_on(tmp_path):
    raw = {**TINY, "runs": 2, "output_dir": str(tmp_path / "out"),
           "model": {"architecture": "fcn", "mask_mode": "none"},
           "training": {**TINY["training"], "optimizer": {"name": "sgd", "learning_rate": 1e30, "momentum": 0.0}}}
    cfg = config_lib.parse_config(raw)
    calls = []

    def train(cfg_, run, seed, run_dir, **kwargs):
        calls.append(run)
        return looper.train_run(cfg_, run, seed, run_dir, **kwargs)

    summary = looper.run_experiment(cfg, run_folder.results_dir(cfg), train=train)
    assert calls == [0, 1]
    assert summary["runs_failed"] == 2 and summary["runs_finished"] == 0
    metrics = json.loads((run_folder.results_dir(cfg) / "run_000" / "metrics.json").read_text())
    assert metrics["status"] == "failed"
    assert "nan" in metrics["message"].lower() or "inf" in metrics["message"].lower()
    assert "failed" in looper.summary_markdown(summary)


def test_same_seed_gives_identical_masks_and_metrics(tmp_path):
    cfg = config_lib.parse_config({**TINY, "runs": 1})
    out = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        metrics = looper.train_run(cfg, 0, 11, run_dir)
        history = json.loads((run_dir / "history.json").read_text())
        with np.load(run_dir / "masks.npz") as data:
            masks = {k: data[k] for k in data.files}
        out.append((metrics, history, masks))
    (m1, h1, k1), (m2, h2, k2) = out
    for key in ("test_accuracy", "test_loss", "remaining_weights"):
        assert m1[key] == m2[key]
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(h1) == strip(h2)
    for key in k1:
        np.testing.assert_array_equal(k1[key], k2[key])


def _summary_without_timing(path):
    s = json.loads(Path(path).read_text())
    s.pop("seconds_per_epoch")
    return s


# A looper in a subprocess that sends itself a signal at an exact point: run RUN, epoch EPOCH (1-based), after
# batch BATCH. Deterministic: no test waits for a file and races the training to it.
SELF_SIGNAL = """
import os, signal, sys
import keras
import experiment_looper

sig, target = getattr(signal, sys.argv[1]), (int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
original = experiment_looper.train_run

class SignalSelf(keras.callbacks.Callback):
    def __init__(self, run):
        super().__init__()
        self.run = run
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1
    def on_train_batch_end(self, batch, logs=None):
        if (self.run, self.epoch, batch + 1) == target:
            os.kill(os.getpid(), sig)

def train_run(cfg, run, seed, run_dir, **kwargs):
    return original(cfg, run, seed, run_dir, extra_callbacks=[SignalSelf(run)], **kwargs)

experiment_looper.train_run = train_run
sys.exit(experiment_looper.main(sys.argv[5:]))
"""


def _looper_subprocess(args, *, signal_at=None, ignore_sigint=False, timeout=300):
    """Run the looper CLI in a subprocess (with SIGINT ignored from the start, as a shell's background job has it,
    when asked); signal_at = (SIGNAL NAME, run, epoch, batch) makes it signal itself there."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if signal_at is None:
        cmd = [sys.executable, str(ROOT / "experiment_looper.py"), *args]
    else:
        cmd = [sys.executable, "-c", SELF_SIGNAL, *map(str, signal_at), *args]
    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)


LONGER = {**TINY, "runs": 2, "training": {**TINY["training"], "epochs": 3, "verbose": 0}}


def test_sigkill_mid_epoch_resumes_from_the_last_epoch_to_the_uninterrupted_result(tmp_path):
    path = _write(tmp_path, LONGER)
    reference = _looper_subprocess([str(path), "--out", str(tmp_path / "ref")])
    assert reference.returncode == 0, reference.stderr[-2000:]
    # Killed in the middle of epoch 3 of run 1 (after its 2nd batch): no handler runs, nothing is cleaned up.
    killed = _looper_subprocess([str(path), "--out", str(tmp_path / "out")], signal_at=("SIGKILL", 1, 3, 2))
    assert killed.returncode == -signal.SIGKILL
    directory = _run_dir(tmp_path)
    assert (directory / "run_000" / "metrics.json").is_file() and not (directory / "run_001").exists()
    from model_trainer import read_checkpoint

    assert read_checkpoint(directory / "run_001.partial" / "checkpoint.npz")[0]["epochs_done"] == 2
    resumed = _looper_subprocess([str(path), "--out", str(tmp_path / "out")])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "run_001.partial: resumed after epoch 2 of 3" in resumed.stderr
    (ref_dir,) = list((tmp_path / "ref").iterdir())
    assert ref_dir.name == directory.name
    assert _summary_without_timing(directory / "summary.json") == _summary_without_timing(ref_dir / "summary.json")
    for run in ("run_000", "run_001"):
        ours = json.loads((directory / run / "history.json").read_text())
        theirs = json.loads((ref_dir / run / "history.json").read_text())
        assert [{k: v for k, v in e.items() if k != "seconds"} for e in ours] == \
            [{k: v for k, v in e.items() if k != "seconds"} for e in theirs]
        with np.load(directory / run / "masks.npz") as a, np.load(ref_dir / run / "masks.npz") as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])
    assert not list(directory.glob("*.partial")) and not list(directory.rglob("*.tmp"))
    assert not list(directory.rglob("checkpoint.npz")) and not list(directory.glob("*.claim"))


@pytest.mark.parametrize("ignored", [False, True], ids=["foreground", "sigint-ignored-at-start"])
def test_ctrl_c_stops_cleanly_after_saving_finished_runs(tmp_path, ignored):
    """SIGINT in the middle of run 1: exit 130, run 0 kept, run 1 left with its last epoch's checkpoint; also for a
    process that started with SIGINT ignored (a shell's background job): the looper installs its handler."""
    path = _write(tmp_path, LONGER)
    proc = _looper_subprocess([str(path), "--out", str(tmp_path / "out")], signal_at=("SIGINT", 1, 2, 1),
                              ignore_sigint=ignored)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "interrupted: finished runs are saved" in proc.stderr and "Traceback" not in proc.stderr
    directory = _run_dir(tmp_path)
    assert json.loads((directory / "summary.json").read_text())["runs_finished"] == 1
    from model_trainer import read_checkpoint

    assert read_checkpoint(directory / "run_001.partial" / "checkpoint.npz")[0]["epochs_done"] == 1
    assert not list(directory.glob("*.claim"))  # released on the way out


def test_sigterm_stops_with_143(tmp_path):
    path = _write(tmp_path, LONGER)
    proc = _looper_subprocess([str(path), "--out", str(tmp_path / "out")], signal_at=("SIGTERM", 0, 2, 1))
    assert proc.returncode == 143 and "interrupted" in proc.stderr
    assert json.loads((_run_dir(tmp_path) / "summary.json").read_text())["runs_finished"] == 0


def test_the_stop_handler_is_installed_even_when_sigint_starts_ignored():
    code = ("import os, signal, experiment_looper; assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN; "
            "s = experiment_looper.StopRequest(); s.install(); os.kill(os.getpid(), signal.SIGINT); "
            "assert s.event.is_set() and s.exit_code == 130; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.strip() == "ok", proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ workers
SIX = {**TINY, "runs": 6, "training": {**TINY["training"], "epochs": 2, "verbose": 0}}


def _trained_runs(directory: Path) -> list[int]:
    """Every 'run k/N, seed' start line in the looper log (each worker appends its own)."""
    import re

    return [int(m.group(1)) - 1 for m in re.finditer(r"run (\d+)/\d+, seed", (directory / "looper.log").read_text())]


def test_three_workers_share_a_sweep_and_train_each_run_once(tmp_path):
    path = _write(tmp_path, SIX)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "experiment_looper.py"), str(path), "--out", str(tmp_path / "out")]
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [o[1][-1500:] for o in outputs]
    directory = _run_dir(tmp_path)
    assert sorted(_trained_runs(directory)) == [0, 1, 2, 3, 4, 5]  # each run trained once, by some worker
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["runs_finished"] == 6 and summary["complete"] and summary["runs_in_progress"] == 0
    assert summary["test_accuracy_percent"]["n"] == 6
    reference = looper.summarize(config_lib.parse_config(SIX), run_folder.finished_runs(directory))
    assert {k: v for k, v in summary.items() if k != "seconds_per_epoch"} == \
        {k: v for k, v in reference.items() if k != "seconds_per_epoch"}
    assert not list(directory.glob("*.claim")) and not list(directory.glob("*.partial"))


def test_a_killed_workers_run_is_taken_over_and_resumed_by_another(tmp_path):
    path = _write(tmp_path, {**SIX, "runs": 2, "training": {**SIX["training"], "epochs": 3}})
    killed = _looper_subprocess([str(path), "--out", str(tmp_path / "out")], signal_at=("SIGKILL", 0, 3, 1))
    assert killed.returncode == -signal.SIGKILL
    directory = _run_dir(tmp_path)
    assert (directory / "run_000.claim").exists()  # the dead worker's claim is left behind
    other = _looper_subprocess([str(path), "--out", str(tmp_path / "out")])
    assert other.returncode == 0, other.stderr[-2000:]
    assert "run_000.claim: taking over" in other.stderr and "resumed after epoch 2 of 3" in other.stderr
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["runs_finished"] == 2 and summary["complete"]


def test_a_run_whose_claim_was_taken_over_is_not_finalised_by_the_old_owner(tmp_path):
    cfg = config_lib.parse_config({**TINY, "runs": 1, "output_dir": str(tmp_path / "out")})
    directory = run_folder.results_dir(cfg)

    def presumed_dead(cfg_, run, seed, run_dir, **kwargs):
        claim = run_folder.claim_path(directory, run)
        claim.write_text(json.dumps({"host": "another-node", "pid": 1, "token": "theirs"}))  # taken over
        return looper.train_run(cfg_, run, seed, run_dir, **kwargs)

    summary = looper.run_experiment(cfg, directory, train=presumed_dead)
    assert summary["runs_finished"] == 0 and not (directory / "run_000").exists()
    assert (directory / "run_000.partial").is_dir() and (directory / "run_000.claim").exists()  # left to the owner


# ------------------------------------------------------------------------------------------------ broken inputs
@pytest.mark.parametrize("content, fragment", [
    (b"", "the config file is empty"),
    (b"name: x\nruns: 50\nruns: 3\n", "key 'runs' is given twice"),
    (b"name: \xe9t\xe9\n", "not UTF-8 text"),
], ids=["empty", "duplicate-key", "not-utf8"])
def test_files_that_are_no_config_exit_2(tmp_path, capsys, content, fragment):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    assert looper.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["0", "-5", "9.5", "nan", "inf"])
def test_a_claim_timeout_under_the_minimum_or_not_finite_exits_2(tmp_path, capsys, value):
    """0 or less would make the heartbeat spin and every live worker's claim look stale at once."""
    path = _write(tmp_path, TINY)
    assert looper.main([str(path), "--out", str(tmp_path / "out"), "--claim-timeout", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --claim-timeout: ") and "at least 10" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="--claim-timeout"):
        run_folder.RunClaim.acquire(tmp_path, 0, timeout=float(value))
    assert not run_folder.claim_path(tmp_path, 0).exists()
    assert looper.main([str(path), "--out", str(tmp_path / "out"), "--claim-timeout", "10", "--runs", "1",
                        "--epochs", "1"]) == 0


@pytest.mark.parametrize("broken", ["metrics.json", "masks.npz"])
def test_a_corrupt_finished_run_is_set_aside_and_trained_again(tmp_path, broken):
    cfg = config_lib.parse_config({**TINY, "runs": 2, "output_dir": str(tmp_path / "out")})
    directory = run_folder.results_dir(cfg)
    looper.run_experiment(cfg, directory)
    good = (directory / "run_001" / "metrics.json").read_text()
    victim = directory / "run_000" / broken
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 2])
    calls = []

    def train(cfg_, run, seed, run_dir, **kwargs):
        calls.append(run)
        return looper.train_run(cfg_, run, seed, run_dir, **kwargs)

    summary = looper.run_experiment(cfg, directory, train=train)
    assert calls == [0] and summary["runs_finished"] == 2
    assert (directory / "run_001" / "metrics.json").read_text() == good
    (aside,) = directory.glob("run_000.corrupt-*")
    assert (aside / broken).is_file()  # nothing the user computed is deleted


def test_a_corrupt_checkpoint_restarts_its_run_from_epoch_1(tmp_path, caplog):
    cfg = config_lib.parse_config({**TINY, "runs": 1, "output_dir": str(tmp_path / "out")})
    directory = run_folder.results_dir(cfg)
    partial = directory / "run_000.partial"
    partial.mkdir(parents=True)
    (partial / "checkpoint.npz").write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level("WARNING"):
        summary = looper.run_experiment(cfg, directory)
    assert summary["runs_finished"] == 1 and "starts again from epoch 1" in caplog.text
    assert len(json.loads((directory / "run_000" / "history.json").read_text())) == 2


def test_a_full_disk_is_a_clear_error_and_earlier_runs_stay(tmp_path, capsys, monkeypatch):
    import errno

    path = _write(tmp_path, TINY)
    real = run_folder.atomic_savez
    written = []

    def disk_fills_up(target, arrays, **kwargs):
        written.append(Path(target).name)
        if len(written) > 2:  # run 0 wrote its masks and compact artifact; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        return real(target, arrays, **kwargs)

    monkeypatch.setattr(run_folder, "atomic_savez", disk_fills_up)
    assert looper.main([str(path), "--out", str(tmp_path / "out"), "--set", "training.checkpoint_every=0"]) == 1
    err = capsys.readouterr().err
    assert "could not write the results" in err and "No space left on device" in err and "Traceback" not in err
    directory = _run_dir(tmp_path)
    assert run_folder.check_run(directory / "run_000")["status"] == "ok" and not (directory / "run_001").exists()


def test_tfds_failure_names_the_offline_source(tmp_path, monkeypatch, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")

    def no_internet(*args, **kwargs):
        raise ConnectionError("Failed to establish a new connection")

    monkeypatch.setattr(tfds, "load", no_internet)
    raw = {**TINY, "data": {"dataset": "mnist", "source": "tfds"}}
    path = _write(tmp_path, raw)
    assert looper.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "local" in err and "mnist.npz" in err and "Traceback" not in err


def test_tensorboard_switch_writes_event_files(tmp_path):
    raw = {**TINY, "runs": 1, "training": {**TINY["training"], "epochs": 1, "tensorboard": True}}
    assert looper.main([str(_write(tmp_path, raw)), "--out", str(tmp_path / "out")]) == 0
    logdir = _run_dir(tmp_path) / "run_000" / "tensorboard"
    events = list(logdir.rglob("events.out.tfevents.*"))
    assert any("masks" in str(p) for p in events)  # mask images and remaining-weights scalars
    assert any("train" in str(p) for p in events)  # Keras' loss / accuracy / learning rate


def test_summary_counts_only_the_configs_runs(tmp_path):
    cfg = config_lib.parse_config({**TINY, "runs": 3, "output_dir": str(tmp_path / "out")})
    directory = run_folder.results_dir(cfg)
    assert looper.run_experiment(cfg, directory)["runs_finished"] == 3
    fewer = config_lib.parse_config({**TINY, "runs": 2, "output_dir": str(tmp_path / "out")})
    assert run_folder.results_dir(fewer) == directory  # runs is not part of the hash: same directory
    summary = looper.run_experiment(fewer, directory, train=lambda *a: pytest.fail("nothing to train"))
    assert summary["runs_finished"] == 2 and summary["test_accuracy_percent"]["n"] == 2


def test_init_file_for_another_architecture_exits_2_before_any_data_or_folder(tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "other.npz", **{"conv_0_0/kernel": np.zeros((3, 3, 3, 64), "float32")})
    raw = {**TINY, "runs": 1, "model": {**TINY["model"], "weights_file": str(tmp_path / "other.npz")}}
    path = _write(tmp_path, raw)
    assert looper.main([str(path), "--dry-run"]) == 2
    monkeypatch.setattr(data_preprocessor, "load_dataset", lambda *a, **k: pytest.fail("data loaded"))
    assert looper.main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()  # no run folder claimed or written
    err = capsys.readouterr().err
    assert "model.weights_file" in err and "dense_0/kernel is missing from the file" in err
    assert "Traceback" not in err


def test_only_run_trains_that_run_alone_and_the_rest_later(tmp_path):
    """--only-run (a cluster array task per run): run 2 alone with its own seed; a later plain run trains the
    others and leaves run 2 as it was."""
    cfg = config_lib.parse_config({**TINY, "output_dir": str(tmp_path / "out")})
    directory = run_folder.results_dir(cfg)
    calls = []

    def counted(cfg, run, seed, run_dir, **kwargs):
        calls.append((run, seed))
        return looper.train_run(cfg, run, seed, run_dir, **kwargs)

    summary = looper.run_experiment(cfg, directory, train=counted, only_runs=[2])
    assert calls == [(2, TINY["base_seed"] + 2)]
    assert sorted(p.name for p in directory.glob("run_*")) == ["run_002"]
    assert summary["runs_finished"] == 1
    assert json.loads((directory / "run_002" / "metrics.json").read_text())["seed"] == TINY["base_seed"] + 2
    kept = (directory / "run_002" / "metrics.json").read_text()
    assert looper.run_experiment(cfg, directory, train=counted)["runs_finished"] == 3
    assert [run for run, _ in calls] == [2, 0, 1]
    assert (directory / "run_002" / "metrics.json").read_text() == kept


@pytest.mark.parametrize("value", ["3", "-1"])
def test_only_run_outside_the_configs_runs_exits_2(tmp_path, capsys, value):
    path = _write(tmp_path, TINY)
    assert looper.main([str(path), "--out", str(tmp_path / "out"), "--only-run", "0", "--only-run", value]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: --only-run: this config has no run {value}; allowed: 0 to 2 (it has 3 runs; --runs sets "
                   f"more)\n")
    assert not (tmp_path / "out").exists()
    assert looper.main([str(path), "--out", str(tmp_path / "out"), "--only-run", "1", "--epochs", "1"]) == 0
    assert sorted(p.name for p in _run_dir(tmp_path).glob("run_*")) == ["run_001"]


def test_init_files_shared_by_runs_are_checked_once(tmp_path, monkeypatch):
    for name in ("shared.npz", "run_000.npz", "run_001.npz", "run_002.npz"):
        np.savez(tmp_path / name, unused=np.zeros(1))
    built = []
    monkeypatch.setattr(run_folder, "build_run_model", lambda cfg, seed, run: built.append(run))
    for pattern, expected in (("shared.npz", [0]), ("run_{run}.npz", [0, 1, 2])):
        cfg = config_lib.parse_config({**TINY, "runs": 3, "model": {**TINY["model"],
                                                                    "weights_file": str(tmp_path / pattern)}})
        built.clear()
        run_folder.check_init_files(cfg, range(3))
        assert built == expected
