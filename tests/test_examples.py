"""The user-facing scripts run as documented: the minimal example and init_example."""

import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_minimal_working_example_runs_offline(tmp_path):
    rng = np.random.default_rng(0)
    y_train, y_test = np.arange(600) % 10, np.arange(200) % 10
    templates = rng.integers(0, 256, size=(10, 28, 28))
    make = lambda y: np.clip(templates[y] + rng.normal(0, 40, (len(y), 28, 28)), 0, 255).astype("uint8")  # noqa
    np.savez_compressed(tmp_path / "mnist.npz", x_train=make(y_train), y_train=y_train.astype("uint8"),
                        x_test=make(y_test), y_test=y_test.astype("uint8"))
    proc = subprocess.run([sys.executable, str(ROOT / "minimal_working_example.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracy = float(re.search(r"test accuracy: ([\d.]+) %", proc.stdout).group(1))
    remaining = float(re.search(r"remaining weights: ([\d.]+) % \((\d+) of 266200\)", proc.stdout).group(1))
    assert accuracy > 50 and 0 < remaining < 60


def test_the_readme_library_snippet_runs(tmp_path, monkeypatch):
    """The README's "Library use" block, run as written on random data."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Library use", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    namespace = {"x": rng.normal(size=(256, 784)).astype("float32"),
                 "y": np.eye(10, dtype="float32")[rng.integers(0, 10, 256)]}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    for name in ("stripped.keras", "compact.npz"):
        assert (tmp_path / name).stat().st_size > 0
    assert namespace["small"].architecture.startswith("784-300-10 → ")


@pytest.mark.parametrize("argv", [[], ["{tmp}"]], ids=["tfds offline", "folder without mnist.npz"])
def test_the_minimal_example_says_how_to_run_it_offline(argv, tmp_path, monkeypatch, capsys):
    """Without data it exits with one message in its own terms (its folder argument), not a traceback naming the
    looper's flags."""
    if not argv:
        tfds = pytest.importorskip("tensorflow_datasets")

        def offline(*args, **kwargs):
            raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

        monkeypatch.setattr(tfds, "load", offline)
    monkeypatch.setattr(sys, "argv", ["minimal_working_example.py"] + [a.format(tmp=tmp_path) for a in argv])
    with pytest.raises(SystemExit) as excinfo:
        runpy.run_path(str(ROOT / "minimal_working_example.py"), run_name="__main__")
    message = str(excinfo.value.code)
    assert message.startswith("error: ") and message.count("\n") == 1
    assert message.endswith("Offline: python minimal_working_example.py DIR, where DIR holds mnist.npz.")
    assert "--data" not in message and "data.data_dir" not in message
    assert ("storage.googleapis.com" if not argv else "holds no mnist.npz") in message
    # the offline way is said before a download starts (offline, tensorflow-datasets retries for minutes)
    assert ("Downloading MNIST with tensorflow-datasets; offline: " in capsys.readouterr().err) == (not argv)
