"""The documentation stands on its own: no pointer to files outside the repository, every relative link resolves,
and the README's first lines hold the three commands."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line]


def test_nothing_points_outside_the_repository():
    """The team's background notes and this machine's data folder are not the users': only .ci/run may name the
    data folder (through SUPERMASK_DATA_DIR)."""
    pattern = re.compile(r"paper\.md|\.\./shared")
    offenders = []
    for path in _tracked():
        if path.parts[len(ROOT.parts)] == ".ci" or path.suffix in (".png", ".pdf", ".npz"):
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{path.relative_to(ROOT)}:{i + 1}" for i, line in enumerate(text.splitlines())
                      if pattern.search(line)]
    assert not offenders, offenders


def test_every_relative_link_of_the_docs_resolves():
    pages = [ROOT / "README.md", ROOT / "configs" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             ROOT / "benchmarks" / "README.md", ROOT / "ledger" / "README.md"]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_the_readme_opens_with_set_up_main_job_and_tests():
    first = (ROOT / "README.md").read_text().split("```", 2)[1].splitlines()[1:4]
    assert first[0].startswith("python3 -m venv .venv && .venv/bin/python -m pip install -r requirements.txt")
    assert first[1].startswith(".venv/bin/python experiment_looper.py configs/smoke.yaml")
    assert first[2].startswith(".venv/bin/ruff check . && .venv/bin/python -m pytest -q tests")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 -m venv .venv && .venv/bin/python -m pip install" in ci and "-r requirements.txt" in ci
    assert ".venv/bin/ruff check ." in ci and ".venv/bin/python -m pytest -q tests" in ci
