"""The documentation stands on its own: no pointer to files outside the repository, every relative link resolves,
every command line it shows is accepted by the script it runs, and the README's first lines hold the three
commands."""

import functools
import importlib
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigErrors

ROOT = Path(__file__).resolve().parents[1]


def _pages() -> list[Path]:
    return [ROOT / "README.md", ROOT / "configs" / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            ROOT / "benchmarks" / "README.md", ROOT / "ledger" / "README.md"]


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.splitlines() if line]


def test_nothing_points_outside_the_repository():
    """The team's background notes and this machine's data folder are not the users': only .ci/run may name the
    data folder (through SUPERMASK_DATA_DIR). No file names a path of the machine that wrote it."""
    pattern = re.compile(r"paper\.md|\.\./shared|/work/(shared|main)\b")
    offenders = []
    for path in _tracked():
        if path.parts[len(ROOT.parts)] == ".ci" or path.suffix in (".png", ".pdf", ".npz"):
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{path.relative_to(ROOT)}:{i + 1}" for i, line in enumerate(text.splitlines())
                      if pattern.search(line)]
    assert not offenders, offenders


def test_every_relative_link_of_the_docs_resolves():
    broken = []
    for page in _pages():
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


# --------------------------------------------------------------------------------------------------------------
# Every command line the docs show
# --------------------------------------------------------------------------------------------------------------
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`]*\bpython3? [^`]*)`")
SCRIPT = re.compile(r"(?:^|[\s/])python3?\s+(\S+\.py)(?:\s|$)(.*)")
SHELL_OPERATORS = {"&", "&&", ";", "|", ">", ">>", "2>"}


def _commands(text: str) -> list[tuple[str, list[str]]]:
    """(script, argv) for each command line of a markdown page that runs a script of the repository: the lines of
    its code blocks (with their continuation lines) and its inline code. A usage synopsis (`[--epoch N | ...]`) is
    not a command; a shell comment, redirection or `&&` ends one."""
    snippets = []
    for block in FENCE.findall(text):
        snippets += block.replace("\\\n", " ").splitlines()
    snippets += [" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text))]
    commands = []
    for snippet in snippets:
        match = SCRIPT.search(snippet)
        if match is None or "[--" in snippet:
            continue
        argv = []
        for token in shlex.split(match.group(2), comments=True):
            if token in SHELL_OPERATORS:
                break
            argv.append(token)
        commands.append((match.group(1), argv))
    return commands


@functools.cache
def _script(name: str):
    """The module of a script of the repository (a top-level one by its import name), or None."""
    path = ROOT / name
    if not path.is_file():
        return None
    if path.parent == ROOT:
        return importlib.import_module(path.stem)
    spec = importlib.util.spec_from_file_location("documented_" + re.sub(r"\W", "_", name), path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _problem(script: str, argv: list[str]) -> str | None:
    """Why the command `python script argv...` would fail before it starts its work, or None: the script must exist
    and take the arguments; the config of a script that resolves one (the looper, init_example; a file under
    configs/, written out) must validate with them; the command that `ledger.py add` records must itself pass."""
    module = _script(script)
    if module is None:
        return f"{script} does not exist"
    if not hasattr(module, "parse_args"):
        return f"{script} is not a command-line script (no parse_args)"
    try:
        args = module.parse_args(argv)
    except SystemExit:
        return "the script refuses its arguments"
    config = getattr(args, "config", None)
    if hasattr(module, "resolve") and config and config.startswith("configs/") and not re.search(r"[$<]", config):
        try:
            module.resolve(args)
        except ConfigErrors as exc:
            return f"config: {exc}"
    if script == "ledger.py" and args.verb == "add" and args.command != "...":
        match = SCRIPT.search(args.command)
        if match is None:
            return f"the recorded command runs no script: {args.command}"
        return _problem(match.group(1), shlex.split(match.group(2)))
    return None


@pytest.fixture
def docs_machine(home_with_archives, monkeypatch):
    """The docs' `~/datasets` holds the archives, and relative paths start at the repository root, as for a user
    there."""
    monkeypatch.chdir(ROOT)


def test_every_documented_command_is_accepted_by_its_script(docs_machine):
    found, failures = [], []
    for page in _pages():
        for script, argv in _commands(page.read_text()):
            found.append(script)
            problem = _problem(script, argv)
            if problem:
                failures.append(f"{page.relative_to(ROOT)}: python {script} {shlex.join(argv)}: {problem}")
    assert not failures, "\n".join(failures)
    # the extraction finds the commands (a broken pattern would find none and pass)
    assert len(found) > 50
    assert {"experiment_looper.py", "export.py", "ledger.py", "analysis.py", "config.py",
            "benchmarks/train_throughput.py"} <= set(found)


def test_the_command_check_finds_what_would_fail(docs_machine):
    page = """Run

```bash
python experiment_looper.py configs/fcn.yaml --set training.optimiser.weight_decay=0.1 --data-dir ~/datasets \\
    --data-source local   # a typo in a key
python ledger.py compare ledger/a ledger/b --epoch E && echo done
python ledger.py compare A B [--epoch N | --epochs FIRST-LAST]
```

and `python ledger.py add results/x --command "python experiment_looper.py configs/nope.yaml"`, then
`python analysis.py
results/ --out figures/`, `python shrink.py --help-me`, `python nothing.py` and
`python init_example.py configs/fcn.yaml --out inits/fcn --set model.widht=2`.
"""
    commands = _commands(page)
    assert commands == [
        ("experiment_looper.py", ["configs/fcn.yaml", "--set", "training.optimiser.weight_decay=0.1", "--data-dir",
                                  "~/datasets", "--data-source", "local"]),
        ("ledger.py", ["compare", "ledger/a", "ledger/b", "--epoch", "E"]),
        ("ledger.py", ["add", "results/x", "--command", "python experiment_looper.py configs/nope.yaml"]),
        ("analysis.py", ["results/", "--out", "figures/"]),
        ("shrink.py", ["--help-me"]),
        ("nothing.py", []),
        ("init_example.py", ["configs/fcn.yaml", "--out", "inits/fcn", "--set", "model.widht=2"]),
    ]
    problems = [_problem(script, argv) for script, argv in commands]
    assert "training.optimiser" in problems[0]
    assert problems[1] == "the script refuses its arguments"
    assert "configs/nope.yaml" in problems[2]
    assert problems[3] is None
    assert problems[4] == "shrink.py is not a command-line script (no parse_args)"
    assert problems[5] == "nothing.py does not exist"
    assert "model.widht: unknown key (did you mean 'width'?)" in problems[6]
