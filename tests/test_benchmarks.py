"""benchmarks/_common's shared start-up: one --threads option and one `start`, which every benchmark uses."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _calls(path: Path) -> set[str]:
    """'module.function' of every attribute call in a script, e.g. 'common.start'."""
    return {f"{node.func.value.id}.{node.func.attr}" for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)}


def test_every_benchmark_on_common_takes_threads_and_starts_through_it():
    """A benchmark that imports _common declares --threads and sets up logging and threads through it, not by
    a copy of its own (the copies had drifted: four help texts, two log formats)."""
    checked = 0
    for script in sorted(BENCHMARKS.glob("*.py")):
        if script.name == "_common.py" or "import _common as common" not in script.read_text():
            continue
        calls = _calls(script)
        assert {"common.add_threads_argument", "common.start"} <= calls, script.name
        assert "logging.basicConfig" not in calls and "common.set_threads" not in calls, script.name
        assert '"--threads"' not in script.read_text(), script.name
        checked += 1
    assert checked >= 6


def test_start_sets_the_threads_and_the_option_parses_them():
    """`--threads 3` parses to 3, and start(3) leaves TensorFlow with 3 intra- and inter-op threads (a fresh process:
    TensorFlow refuses the setting once it has run an op); start(0) keeps TensorFlow's default."""
    code = """
import argparse, sys
sys.path.insert(0, sys.argv[1])
import _common as common
import tensorflow as tf
p = argparse.ArgumentParser()
common.add_threads_argument(p)
threads = p.parse_args(sys.argv[2:]).threads
common.start(threads)
print(threads, tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads())
"""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    for argv, expected in ((["--threads", "3"], "3 3 3"), ([], "0 0 0")):
        proc = subprocess.run([sys.executable, "-c", code, str(BENCHMARKS), *argv], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split("\n")[-2] == expected
