"""The looper end to end on synthetic data: results files, summary, resume, SIGKILL, NaN runs, determinism."""

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import config as config_lib
import experiment_looper as looper

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "name": "tiny", "runs": 3, "base_seed": 11,
    "data": {"dataset": "mnist", "source": "synthetic", "synthetic_train": 256, "synthetic_test": 128,
             "batch_size": 64},
    "model": {"architecture": "fcn", "mask_mode": "signed", "threshold_fraction": 0.4},
    "training": {"epochs": 2, "verbose": 0,
                 "optimizer": {"name": "sgdw", "learning_rate": 0.05, "weight_decay": 5e-4}},
}


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
        for name in looper.RUN_FILES:
            assert (run_dir / name).is_file(), name
        m = json.loads((run_dir / "metrics.json").read_text())
        history = json.loads((run_dir / "history.json").read_text())
        assert m["status"] == "ok" and len(history) == 2
        assert m["test_accuracy"] == history[-1]["test_accuracy"]
        assert m["remaining_percent"] == history[-1]["remaining_percent"]
        layers = json.loads((run_dir / "layers.json").read_text())
        assert sum(v["kept"] + v["inverted"] for v in layers.values()) == m["remaining_weights"]
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
    cfg = config_lib.parse_config({**TINY, "paper": "fcn"})
    summary = looper.summarize(cfg, {0: {"status": "ok", "run": 0, "seed": 1, "test_accuracy": 0.9,
                                         "remaining_percent": 4.0, "remaining_weights": 10, "total_weights": 100,
                                         "seconds_per_epoch": 1.0}})
    text = looper.summary_markdown(summary)
    assert "97.48 [97.3, 97.7]" in text and "3.77 [3.7, 3.8]" in text and "90.00 ± 0.00" in text


class Interrupt(Exception):
    pass


def test_resume_redoes_the_interrupted_run_only(tmp_path):
    cfg = config_lib.parse_config({**TINY, "output_dir": str(tmp_path / "out")})
    directory = config_lib.results_dir(cfg)
    calls = []

    def flaky(cfg, run, seed, run_dir):
        calls.append(run)
        if run == 1 and calls.count(1) == 1:
            (run_dir / "history.json").write_text("[half")  # killed mid-run
            raise Interrupt
        return looper.train_run(cfg, run, seed, run_dir)

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
    from_files = looper.build_run_model(cfg, 999, 1)
    direct = looper.build_run_model(config_lib.parse_config({**TINY, "runs": 2}), 12, 1)  # run 1 = seed 12
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

    def train(cfg_, run, seed, run_dir):
        calls.append(run)
        return looper.train_run(cfg_, run, seed, run_dir)

    summary = looper.run_experiment(cfg, config_lib.results_dir(cfg), train=train)
    assert calls == [0, 1]
    assert summary["runs_failed"] == 2 and summary["runs_finished"] == 0
    metrics = json.loads((config_lib.results_dir(cfg) / "run_000" / "metrics.json").read_text())
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


def test_sigkill_mid_sweep_resumes_to_the_same_summary(tmp_path):
    raw = {**TINY, "runs": 3, "training": {**TINY["training"], "epochs": 3}}
    path = _write(tmp_path, raw)
    cmd = [sys.executable, str(ROOT / "experiment_looper.py"), str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Reference: uninterrupted.
    subprocess.run(cmd + ["--out", str(tmp_path / "ref")], check=True, env=env, timeout=300,
                   capture_output=True)
    # Killed with SIGKILL while run 1 is in progress, then resumed.
    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "out").glob("*/run_001.partial/config.yaml")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    directory = _run_dir(tmp_path)
    assert (directory / "run_000" / "metrics.json").is_file()
    assert not (directory / "run_002").exists()
    subprocess.run(cmd + ["--out", str(tmp_path / "out")], check=True, env=env, timeout=300, capture_output=True)
    (ref_dir,) = list((tmp_path / "ref").iterdir())
    assert ref_dir.name == directory.name
    assert _summary_without_timing(directory / "summary.json") == _summary_without_timing(ref_dir / "summary.json")
    assert not list(directory.glob("*.partial")) and not list(directory.rglob("*.tmp"))


def test_ctrl_c_stops_cleanly_after_saving_finished_runs(tmp_path):
    raw = {**TINY, "runs": 3, "training": {**TINY["training"], "epochs": 3}}
    path = _write(tmp_path, raw)
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiment_looper.py"), str(path), "--out",
                             str(tmp_path / "out")], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "out").glob("*/run_001.partial/config.yaml")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "interrupted: finished runs are saved" in err and "Traceback" not in err
    directory = _run_dir(tmp_path)
    assert json.loads((directory / "summary.json").read_text())["runs_finished"] == 1


def test_tfds_failure_names_the_offline_source(tmp_path, monkeypatch, capsys):
    import tensorflow_datasets as tfds

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
    directory = config_lib.results_dir(cfg)
    assert looper.run_experiment(cfg, directory)["runs_finished"] == 3
    fewer = config_lib.parse_config({**TINY, "runs": 2, "output_dir": str(tmp_path / "out")})
    assert config_lib.results_dir(fewer) == directory  # runs is not part of the hash: same directory
    summary = looper.run_experiment(fewer, directory, train=lambda *a: pytest.fail("nothing to train"))
    assert summary["runs_finished"] == 2 and summary["test_accuracy_percent"]["n"] == 2


def test_init_file_for_another_architecture_exits_2(tmp_path, capsys):
    np.savez(tmp_path / "other.npz", **{"conv_0_0/kernel": np.zeros((3, 3, 3, 64), "float32")})
    raw = {**TINY, "runs": 1, "model": {**TINY["model"], "weights_file": str(tmp_path / "other.npz")}}
    path = _write(tmp_path, raw)
    assert looper.main([str(path), "--dry-run"]) == 2
    assert looper.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "model.weights_file" in err and "dense_0/kernel is missing from the file" in err
    assert "Traceback" not in err
