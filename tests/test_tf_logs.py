"""tf_logs: TensorFlow's two start-up lines are dropped, everything else it prints at import reaches stderr."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for TensorFlow that prints, from "C++" (file descriptor 2), the two noise lines and a real warning.
FAKE_TENSORFLOW = """
import os
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
os.write(2, b"I0000 00:00:1 1 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
os.write(2, b"W0000 00:00:1 1 some_op.cc:1] a real warning\\n")
"""


def _import_with_fake_tensorflow(tmp_path, **env):
    (tmp_path / "tensorflow.py").write_text(FAKE_TENSORFLOW)
    code = "import tf_logs; tf_logs.import_tensorflow(); print('imported')"
    environ = {k: v for k, v in os.environ.items() if k not in ("SUPERMASK_TF_LOGS", "TF_CPP_MIN_LOG_LEVEL")}
    environ.update(PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=60)


def test_the_start_up_noise_is_dropped_and_real_warnings_pass(tmp_path):
    proc = _import_with_fake_tensorflow(tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "imported", proc.stderr
    assert proc.stderr.splitlines() == ["W0000 00:00:1 1 some_op.cc:1] a real warning"]


def test_supermask_tf_logs_shows_everything(tmp_path):
    proc = _import_with_fake_tensorflow(tmp_path, SUPERMASK_TF_LOGS="1")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stderr.splitlines()) == 3 and "oneDNN custom operations are on" in proc.stderr


def _top_level_imports(path):
    """Module names imported at the top level of a script, in order."""
    import ast

    names = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names += [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module.split(".")[0])
    return names


def test_the_benchmark_scripts_import_tensorflow_through_tf_logs():
    """A benchmark that imports TensorFlow or Keras at its top imports `_common` (which goes through
    tf_logs.import_tensorflow) first; `_common` itself imports tf_logs first. Otherwise TensorFlow's start-up noise
    is back in every benchmark's output."""
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(scripts) >= 8
    checked = 0
    for script in scripts:
        names = _top_level_imports(script)
        frameworks = [i for i, name in enumerate(names) if name in ("tensorflow", "keras")]
        if not frameworks:
            continue
        quiet = "tf_logs" if script.name == "_common.py" else "_common"
        assert quiet in names and names.index(quiet) < frameworks[0], (script.name, names)
        checked += 1
    assert checked >= 6
