"""The results ledger: the README and docs tables are generated from it, `add` copies a results folder, the
status words, and (with the real MNIST) the FCN entry's artifact reproduces its recorded accuracy."""

import json
import re
import shlex
import shutil

import pytest
import yaml
from conftest import real_data

import experiment_looper as looper
import ledger
import run_folder

TINY = {
    "name": "tiny", "runs": 2, "base_seed": 11, "paper": "fcn",
    "data": {"dataset": "mnist", "source": "synthetic", "synthetic_train": 128, "synthetic_test": 64, "batch_size": 64},
    "model": {"architecture": "fcn"},
    "training": {"epochs": 1, "verbose": 0},
}


def test_readme_and_docs_agree_with_the_ledger():
    """Every number of the README's status table and of docs/reproducing.md's entry list is the ledger's."""
    for path, text in ledger.expected_documents(ledger.entries()).items():
        assert path.read_text() == text, f"{path.name} is stale: python ledger.py table --write"
    assert ledger.main(["table", "--check"]) == 0


def _markdown_tables(text):
    """Every Markdown table of `text` as (header cells, [row cells])."""
    tables, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---") and \
                (i == 0 or not lines[i - 1].startswith("|")):
            cells = []
            for row in lines[i:]:
                if not row.startswith("|"):
                    break
                cells.append([c.strip() for c in row.strip().strip("|").split("|")])
            tables.append((cells[0], cells[2:]))
    return tables


def test_the_screen_tables_of_the_docs_agree_with_the_ledger():
    """docs/reproducing.md's tables of recipe points (an `entry` column, then "epoch N" columns of
    "test % / remaining %" and "mean test %, epochs A–B" columns) hold the ledger's numbers, as
    `ledger.py compare` prints them."""
    checked = {"epoch": 0, "mean": 0}
    for header, rows in _markdown_tables((ledger.ROOT / "docs" / "reproducing.md").read_text()):
        if "entry" not in header or not any(re.fullmatch(r"epoch \d+", column) for column in header):
            continue
        seeds = set()
        for row in rows:
            name = row[header.index("entry")].strip("`")
            # a screen has one run; a full entry's first run has the base seed the screens were run with
            run = sorted((ledger.LEDGER / name).glob("run_[0-9][0-9][0-9]"))[0]
            seeds.add(json.loads((run / "metrics.json").read_text())["seed"])
            history = run_folder.read_run(run).history
            for column, cell in zip(header, row):
                if match := re.fullmatch(r"epoch (\d+)", column):
                    record = ledger.epoch_record(history, int(match[1]))
                    assert cell == f"{100 * record['test_accuracy']:.2f} / {record['remaining_percent']:.3f}", \
                        (name, column)
                    checked["epoch"] += 1
                elif match := re.fullmatch(r"mean test %, epochs (\d+)–(\d+)", column):
                    window = ledger.window_summary(history, int(match[1]), int(match[2]))
                    assert cell == f"{window['test_accuracy']:.2f}", (name, column)
                    checked["mean"] += 1
                else:
                    assert column in ("point", "entry"), f"a column the check does not know: {column!r}"
        assert len(seeds) == 1, f"a table of recipe points compares one seed, got {sorted(seeds)}"
    assert checked["epoch"] >= 3 * 4 and checked["mean"] >= 4  # the released run and its screens


def test_every_entry_is_whole():
    for entry in ledger.entries():
        folder = ledger.LEDGER / entry["name"]
        assert (folder / "entry.json").is_file(), f"{entry['name']}: the entry's name is not its folder's"
        runs = sorted(folder.glob("run_[0-9][0-9][0-9]"))
        assert len(runs) == entry["summary"]["runs"] == len(entry["runs"]), entry["name"]
        for run in runs:
            for name in ledger.KEPT_RUN_FILES:
                assert (run / name).is_file(), run / name
            assert (run / run_folder.COMPACT).is_file() == (entry["mask_mode"] != "none")
            assert not (run / run_folder.MASKS).exists()  # MBs of real-valued masks stay out of the repository
        accuracies = [100 * json.loads((run / run_folder.METRICS).read_text())["test_accuracy"] for run in runs]
        assert run_folder.summary_statistics(accuracies) == entry["summary"]["test_accuracy_percent"]
        assert entry["reports"] is None or entry["reports"] in ledger.PAPER_RESULTS


def test_only_a_runs_last_epoch_may_be_partial_in_the_ledger():
    """fit never begins an epoch after one it cut short, and a resumed run's history comes from a checkpoint,
    which holds complete epochs only: an epoch followed by another ran all its batches."""
    for history_file in ledger.LEDGER.glob(f"*/run_*/{run_folder.HISTORY}"):
        history = json.loads(history_file.read_text())
        previous = 0
        for record in history[:-1]:
            assert not record["partial"] and record["batches"] == record["steps"] - previous, \
                (history_file, record["epoch"])
            previous = record["steps"]


def test_every_entry_command_gives_the_entry_under_todays_code(home_with_archives, monkeypatch):
    """The command an entry records, run today, would train the entry's configuration: it is accepted, its config
    validates, and one of the configurations it resolves to has the entry's identity (a changed shipped config or
    default would make the recorded command train something else)."""
    monkeypatch.chdir(ledger.ROOT)  # the commands' configs/...; their ~/datasets is home_with_archives
    checked = 0
    for entry in ledger.entries():
        program, script, *argv = shlex.split(entry["command"])
        assert (program, script) == ("python", "experiment_looper.py"), entry["command"]
        cfg, combos = looper.resolve(looper.parse_args(argv))
        names = [ledger.ledger_name(child, run_folder.combo_label(combo) if combo else None)
                 for combo, child, _ in combos]
        assert entry["name"] in names, (entry["command"], names)
        checked += 1
    assert checked == len(list(ledger.LEDGER.glob("*/entry.json"))) > 0


def _as_if_on_local_data(directory, data_dir):
    """Rewrite a synthetic results folder's configs as if its runs had read the local archives in `data_dir` (the
    tests train on synthetic data only; the ledger takes a paper row only from real data)."""
    for path in [directory / run_folder.CONFIG, *directory.glob(f"run_*/{run_folder.CONFIG}")]:
        raw = yaml.safe_load(path.read_text())
        raw["data"].update(source="local", data_dir=str(data_dir))
        path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_add_copies_a_results_folder(tmp_path, monkeypatch):
    cfg = looper.config_lib.parse_config({**TINY, "output_dir": str(tmp_path / "results")})
    directory = run_folder.results_dir(cfg)
    looper.run_experiment(cfg, directory)
    with pytest.raises(ValueError, match="trained on synthetic data, which reports no paper row"):
        ledger.add(directory, reports="fcn", command="c", commit="abc", ledger=tmp_path / "ledger")
    _as_if_on_local_data(directory, tmp_path / "datasets")
    with pytest.raises(ValueError, match="stands for row fcn"):
        ledger.add(directory, reports="conv2", command="c", commit="abc", ledger=tmp_path / "ledger")
    assert not (tmp_path / "ledger").exists()
    target = ledger.add(directory, reports="fcn", command="python experiment_looper.py tiny.yaml", commit="abc",
                        ledger=tmp_path / "ledger")
    # the identity rule names the entry: the real data's identity, wherever the archives were read from
    real = looper.config_lib.parse_config({**TINY, "data": {**TINY["data"], "source": "tfds"}})
    assert target.name == run_folder.results_dir(real).name != directory.name
    entry = json.loads((target / "entry.json").read_text())
    assert entry["reports"] == "fcn" and entry["code_commit"] == "abc" and entry["summary"]["runs"] == 2
    assert entry["data"] == {"dataset": "mnist", "source": "local"} and entry["precision"] == "float32"
    # the copied configs keep no path of the machine that trained them, and everything else
    for copied in [target / run_folder.CONFIG, *target.glob(f"run_*/{run_folder.CONFIG}")]:
        original = yaml.safe_load((directory / copied.relative_to(target)).read_text())
        kept = yaml.safe_load(copied.read_text())
        assert str(tmp_path) not in copied.read_text()
        assert kept["data"]["data_dir"] is None and kept["output_dir"] == "results"
        original["data"]["data_dir"], original["output_dir"] = None, "results"
        assert kept == original
    for run, record in zip(("run_000", "run_001"), entry["runs"]):
        metrics = json.loads((directory / run / "metrics.json").read_text())
        assert record["test_accuracy_percent"] == pytest.approx(100 * metrics["test_accuracy"])
        assert record["architecture"] == metrics["architecture"]
        assert record["device"] == metrics["device"] == "tensorflow CPU"
        assert (target / run / "compact.npz").read_bytes() == (directory / run / "compact.npz").read_bytes()
        assert not (target / run / "masks.npz").exists()
    assert not list((tmp_path / "ledger").glob(".*staging"))
    # a table row built from it: measured, with its run count and epochs
    row = [line for line in ledger.status_table([entry]).splitlines() if line.startswith("| FCN")][0]
    mean = entry["summary"]["test_accuracy_percent"]["mean"]
    assert f"{mean:.2f} ± " in row and "(2×1 ep.)" in row and "baseline not run yet" in row
    # adding it again replaces the entry; a failure while moving the new copy in leaves the old one where it was
    before = (target / "entry.json").read_bytes()
    real_replace = ledger.os.replace

    def failing(src, dst):
        if str(src).endswith(".staging"):
            raise OSError("disk full")
        real_replace(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(ledger.os, "replace", failing)
        with pytest.raises(OSError, match="disk full"):
            ledger.add(directory, reports="fcn", command="again", commit="def", ledger=tmp_path / "ledger")
    assert (target / "entry.json").read_bytes() == before and not list((tmp_path / "ledger").glob(".*replaced"))
    ledger.add(directory, reports="fcn", command="again", commit="def", ledger=tmp_path / "ledger")
    assert json.loads((target / "entry.json").read_text())["code_commit"] == "def"
    assert sorted(p.name for p in (tmp_path / "ledger").iterdir() if not p.name.startswith(".")) == [target.name]
    # a results folder that lost its first run (a fresh checkout) adds its later runs without dropping the first
    entered = json.loads((target / "entry.json").read_text())
    first = {f.name: f.read_bytes() for f in (target / "run_000").iterdir()}
    shutil.rmtree(directory / "run_000")
    ledger.add(directory, reports="fcn", command="later", commit="ghi", ledger=tmp_path / "ledger")
    entry = json.loads((target / "entry.json").read_text())
    assert entry["runs"] == entered["runs"] and entry["summary"] == entered["summary"]
    assert {f.name: f.read_bytes() for f in (target / "run_000").iterdir()} == first
    assert sorted(p.name for p in target.glob("run_*")) == ["run_000", "run_001"]


def test_add_names_the_folder_to_give_when_it_is_no_results_folder(tmp_path, capsys):
    results = tmp_path / "tiny-0123abcd"
    (results / "run_000").mkdir(parents=True)
    for folder in (results, results / "run_000"):
        (folder / run_folder.CONFIG).write_text(yaml.safe_dump(TINY))
    for given, message in ((tmp_path / "missing", f"{tmp_path / 'missing'} is not a results folder (expected "),
                           (tmp_path, f"{tmp_path} is not a results folder"),
                           (results / "run_000", f"is one run of a results folder; give the folder: {results}")):
        assert ledger.main(["add", str(given), "--command", "c"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def _entry(mean_acc, mean_rem, runs=3, epochs=100, mode="signed"):
    stats = lambda m: {"mean": m, "std": 0.1, "min": m, "max": m, "n": runs}  # noqa: E731
    return {"name": "e", "reports": None, "note": "", "mask_mode": mode, "epochs": epochs, "precision": "float32",
            "command": "c", "runs": [{"epochs_run": epochs}] * runs,
            "summary": {"runs": runs, "test_accuracy_percent": stats(mean_acc), "remaining_percent": stats(mean_rem)}}


def test_the_entry_list_names_each_runs_device_with_its_count():
    entry = _entry(75.0, 1.2, runs=3)
    entry["runs"] = [{**run, "device": device} for run, device in
                     zip(entry["runs"], [None, "jax NVIDIA H100 80GB HBM3", "jax NVIDIA H100 80GB HBM3"])]
    assert ledger.run_devices(entry) == "tensorflow, device not recorded ×1, jax NVIDIA H100 80GB HBM3 ×2"
    row = ledger.entries_table([entry]).splitlines()[2]
    assert "| float32, tensorflow, device not recorded ×1, jax NVIDIA H100 80GB HBM3 ×2 |" in row


def test_a_run_reports_only_its_configs_row_and_only_on_real_data():
    assert ledger.reports_problem(None, None, "synthetic") is None  # a study reports nothing
    assert ledger.reports_problem("conv2", "conv2", "local") is None
    assert ledger.reports_problem("conv2", "conv2", "tfds") is None
    assert "not a row of the paper; allowed: fcn, conv2" in ledger.reports_problem("vgg", "conv2", "local")
    assert "synthetic data" in ledger.reports_problem("conv2", "conv2", "synthetic")
    assert "stands for row conv2 " in ledger.reports_problem("resnet20", "conv2", "local")
    assert "stands for no paper row" in ledger.reports_problem("fcn", None, "local")


def test_the_ledger_holds_no_path_of_the_machine_that_trained_it():
    for path in ledger.LEDGER.glob(f"*/**/{run_folder.CONFIG}"):
        raw = yaml.safe_load(path.read_text())
        assert raw["data"]["data_dir"] is None and raw["output_dir"] == "results", path


def test_status_words_against_the_papers_intervals():
    assert ledger.verdict(97.5, (97.3, 97.7)) == "in" and ledger.verdict(96.0, (97.3, 97.7)) == "outside"
    assert ledger.verdict(1.0, None) is None
    assert ledger.row_status("fcn", _entry(97.5, 3.75), _entry(97.45, 100, mode="none")) == "in interval"
    assert ledger.row_status("conv2", _entry(68.7, 0.73), None) == \
        "outside: remaining; baseline not run yet"
    assert ledger.row_status("resnet20", _entry(80.68, 20.0), _entry(84.91, 100, mode="none")).startswith(
        "measured (no interval in the paper; Δ acc -1.00, Δ base +0.00")
    assert ledger.row_status("resnet56", None, None).startswith("not run: CIFAR-100 was not on the machine")


def test_a_value_is_printed_with_the_digits_its_verdict_needs():
    # 0.5762 rounds to 0.58, the interval's lower bound: printed so, an outside value would read as inside
    assert ledger.judged_digits(0.5762, (0.58, 0.62)) == 3 and ledger.judged_digits(0.5796, (0.58, 0.62)) == 4
    assert ledger.judged_digits(0.576, None) == 2 and ledger.judged_digits(0.7589, (0.58, 0.62)) == 2
    assert ledger.judged_digits(97.696, (97.3, 97.7)) == 2  # 97.70 is inside, like 97.696
    assert ledger.judged_digits(97.7049, (97.3, 97.7)) == 3  # 97.70 would read as inside; it is 97.705
    assert ledger.judged_digits(0.57999999, (0.58, 0.62)) == 4  # at most 4 decimals, even if they still round in
    table = ledger.status_table([{**_entry(68.0, 0.5762, runs=1), "name": "conv2_found-0a1b2c3d",
                                  "reports": "conv2"}])
    (line,) = [line for line in table.splitlines() if line.startswith("| Conv2 ")]
    assert "| 0.576 (1×100 ep.) |" in line and line.endswith("| outside: remaining; baseline not run yet |")


def test_the_status_table_has_every_row_of_the_paper():
    table = ledger.status_table([])
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == 10 and all(re.search(r"\| (not run|not run yet)", row) for row in rows)


def test_a_row_with_a_released_and_a_found_recipe_gets_a_line_for_each():
    def reporting(name, row, acc, rem, mode="signed"):
        return {**_entry(acc, rem, mode=mode), "name": name, "reports": row}

    found = reporting("conv2_found-0a1b2c3d", "conv2", 68.0, 0.60)
    released = reporting("conv2-f00", "conv2", 68.4, 0.76)
    baseline = reporting("conv2_baseline-b00", "conv2_baseline", 68.8, 100, mode="none")
    lines = [line for line in ledger.status_table([found, released, baseline]).splitlines() if "Conv2" in line]
    assert len(lines) == 2
    assert lines[0].startswith("| Conv2 (CIFAR-10), `conv2` |") and "68.40 ± 0.10 (3×100 ep.)" in lines[0]
    assert lines[1].startswith("| Conv2 (CIFAR-10), `conv2_found` |") and "0.60 ± 0.10 (3×100 ep.)" in lines[1]
    assert lines[0].endswith("| outside: remaining |") and lines[1].endswith("| in interval |")
    assert all("68.80 ± 0.10 (3×100 ep.)" in line for line in lines)  # the one baseline beside each
    assert ledger.status_table([released]).count("Conv2 (CIFAR-10) |") == 1  # one entry: no config in the label
    with pytest.raises(ValueError, match="both report conv2_baseline"):
        ledger.status_table([baseline, reporting("conv2_baseline-c00", "conv2_baseline", 69.0, 100, mode="none")])


def test_one_config_under_two_identities_is_told_apart_by_entry_name(monkeypatch, capsys):
    old = {**_entry(68.0, 0.70), "name": "conv2-0ld0ld00", "reports": "conv2"}
    new = {**_entry(68.4, 0.76), "name": "conv2-f3384725", "reports": "conv2"}
    lines = [line for line in ledger.status_table([old, new]).splitlines() if "Conv2" in line]
    assert [line.split(" | ")[0] for line in lines] == ["| Conv2 (CIFAR-10), `conv2-0ld0ld00`",
                                                        "| Conv2 (CIFAR-10), `conv2-f3384725`"]
    base = {**_entry(68.8, 100, mode="none"), "reports": "conv2_baseline"}
    monkeypatch.setattr(ledger, "entries", lambda: [{**base, "name": "b1"}, {**base, "name": "b2"}])
    assert ledger.main(["table", "--check"]) == 2
    assert "b1 and b2 both report conv2_baseline" in capsys.readouterr().err


def test_add_refuses_a_second_entry_for_a_baseline_row(tmp_path):
    folders = []
    for name in ("tiny_baseline", "tiny_baseline_again"):
        cfg = looper.config_lib.parse_config({**TINY, "name": name, "runs": 1, "output_dir": str(tmp_path / "results"),
                                              "paper": "fcn_baseline",
                                              "model": {"architecture": "fcn", "mask_mode": "none"}})
        folders.append(run_folder.results_dir(cfg))
        looper.run_experiment(cfg, folders[-1])
        _as_if_on_local_data(folders[-1], tmp_path)
    first, second = folders
    ledger.add(first, reports="fcn_baseline", command="c", commit="abc", ledger=tmp_path / "ledger")
    with pytest.raises(ValueError, match="both report fcn_baseline"):
        ledger.add(second, reports="fcn_baseline", command="c", commit="abc", ledger=tmp_path / "ledger")
    ledger.add(first, reports="fcn_baseline", command="c2", commit="abc", ledger=tmp_path / "ledger")  # a re-add
    assert ledger.add(second, reports=None, command="c", commit="abc", ledger=tmp_path / "ledger").is_dir()


@pytest.mark.skipif(real_data("mnist.npz") is None, reason="real MNIST not in SUPERMASK_DATA_DIR")
def test_the_fcn_entry_artifact_gives_the_recorded_accuracy(tmp_path, capsys):
    """Anyone can check the FCN row without training: export.py on a ledger run recomputes its test accuracy."""
    import export

    fcn_entries = [e for e in ledger.entries() if e["reports"] == "fcn"]  # the found recipe, and the released one
    assert fcn_entries
    for entry in fcn_entries:
        run = ledger.LEDGER / entry["name"] / "run_000"
        assert export.main([str(run), "--check-accuracy", "--no-summary", "--out", str(tmp_path / entry["name"]),
                            "--data-source", "local", "--data-dir", str(real_data("mnist.npz").parent)]) == 0
        out = capsys.readouterr().out
        recorded = float(re.search(r"recorded in metrics.json\s+([\d.]+) %", out).group(1))
        measured = float(re.search(r"compact reloaded\s+([\d.]+) %", out).group(1))
        shrunk = float(re.search(r"shrunk .keras reloaded\s+([\d.]+) %", out).group(1))
        assert recorded == measured == shrunk == pytest.approx(entry["runs"][0]["test_accuracy_percent"], abs=0.005)
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["seed"] == entry["runs"][0]["seed"]


def test_one_run_is_shown_without_a_spread():
    one, three = _entry(68.38, 0.76, runs=1), _entry(68.5, 0.7, runs=3)
    assert ledger._measured(one, "test_accuracy_percent") == "68.38 (1×100 ep.)"
    assert ledger._measured(three, "test_accuracy_percent") == "68.50 ± 0.10 (3×100 ep.)"


def test_the_epochs_shown_are_those_the_runs_trained():
    def entry(*epochs_run, configured=110):
        return {**_entry(81.8, 21.1, runs=len(epochs_run), epochs=configured),
                "runs": [{"epochs_run": n} for n in epochs_run]}

    assert ledger.epochs_label(entry(110, 110)) == "110"
    assert ledger.epochs_label(entry(105, 108, 98)) == "98–108 of 110"
    assert ledger.epochs_label(entry(98)) == "98 of 110"
    assert ledger.epochs_label(entry(30, 30, configured=30)) == "30"
    assert ledger._measured(entry(105, 108, 98), "test_accuracy_percent") == "81.80 ± 0.10 (3×98–108 of 110 ep.)"
    assert "| 3 × 98–108 of 110 |" in ledger.entries_table([entry(105, 108, 98)])


def test_add_fills_in_the_surviving_units_of_a_run_made_before_they_were_recorded(tmp_path):
    cfg = looper.config_lib.parse_config({**TINY, "runs": 1, "output_dir": str(tmp_path / "results")})
    directory = run_folder.results_dir(cfg)
    looper.run_experiment(cfg, directory)
    run = directory / "run_000"
    recorded_layers = json.loads((run / "layers.json").read_text())
    recorded_architecture = json.loads((run / "metrics.json").read_text())["architecture"]
    # as an older looper wrote them: no architecture, no units
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["architecture"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "layers.json").write_text(json.dumps({name: {k: v for k, v in counts.items()
                                                       if k not in ("units", "surviving_units")}
                                                for name, counts in recorded_layers.items()}))
    target = ledger.add(directory, reports=None, command="c", commit="abc", ledger=tmp_path / "ledger")
    assert json.loads((target / "run_000" / "layers.json").read_text()) == recorded_layers
    assert json.loads((target / "entry.json").read_text())["runs"][0]["architecture"] == recorded_architecture


def _fake_results(folder, runs):
    """A results folder of finished runs {seed: [(test accuracy, remaining %) per epoch]}, files only."""
    for index, (seed, epochs) in enumerate(runs.items()):
        run = folder / run_folder.run_name(index)
        run.mkdir(parents=True)
        history = [{"epoch": e, "test_accuracy": acc, "remaining_percent": rem, "partial": False}
                   for e, (acc, rem) in enumerate(epochs, start=1)]
        (run / run_folder.METRICS).write_text(json.dumps({"status": "ok", "seed": seed}))
        (run / run_folder.HISTORY).write_text(json.dumps(history))
        (run / run_folder.LAYERS).write_text("{}")
    return folder


def test_compare_pairs_runs_by_seed_at_the_last_common_epoch(tmp_path, capsys):
    a = _fake_results(tmp_path / "a", {7: [(0.50, 9.0), (0.60, 4.0)], 8: [(0.40, 8.0), (0.70, 3.0)],
                                       9: [(0.1, 1.0), (0.2, 1.0)]})
    b = _fake_results(tmp_path / "b", {8: [(0.45, 8.5), (0.65, 3.5), (0.9, 0.5)], 7: [(0.55, 9.5), (0.50, 4.5)]})
    epochs, rows = ledger.paired_runs(a, b)
    assert epochs == (2, 2) and [r["seed"] for r in rows] == [7, 8]  # seed 9 has no partner
    assert rows[0]["test_accuracy_diff"] == pytest.approx(10.0) and rows[0]["remaining_percent_diff"] == -0.5
    assert rows[1]["test_accuracy_a"] == pytest.approx(70.0) and rows[1]["test_accuracy_b"] == pytest.approx(65.0)
    assert ledger.main(["compare", str(a), str(b), "--epoch", "1"]) == 0
    out = capsys.readouterr().out
    assert "epoch 1;" in out and "| 7 | 50.00 / 9.000 | 55.00 / 9.500 | -5.00 / -0.500 |" in out
    assert "| mean of 2 | | | -5.00 / -0.500 |" in out
    assert ledger.main(["compare", str(a), str(b), "--epoch", "3"]) == 2  # a has no epoch 3
    assert "no record of epoch 3" in capsys.readouterr().err
    assert ledger.main(["compare", str(a), str(_fake_results(tmp_path / "c", {1: [(0.5, 1.0)]}))]) == 2
    assert "share no seed" in capsys.readouterr().err


def test_history_shows_each_seed_epoch_by_epoch_and_its_fewest_remaining(tmp_path, capsys):
    a = _fake_results(tmp_path / "a", {8: [(0.40, 8.0), (0.70, 3.0), (0.75, 3.5)], 7: [(0.50, 9.0), (0.60, 4.0)]})
    assert ledger.parse_epoch_list("1, 3-4,7") == [1, 3, 4, 7]
    assert ledger.main(["history", str(a), "--epochs", "1,3"]) == 0
    out = capsys.readouterr().out
    assert "| epoch | seed 7 | seed 8 |" in out  # seeds in order, whatever the run order
    assert "| 1 | 50.00 / 9.000 | 40.00 / 8.000 |" in out
    assert "| 3 | – | 75.00 / 3.500 |" in out  # seed 7 stopped at epoch 2
    assert "| fewest remaining (epoch) | 4.000 (2) | 3.000 (2) |" in out
    assert ledger.main(["history", str(a)]) == 0  # every epoch
    assert "| 2 | 60.00 / 4.000 | 70.00 / 3.000 |" in capsys.readouterr().out
    assert ledger.main(["history", str(a), "--epochs", "2,x"]) == 2
    assert ledger.main(["history", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.count("error:") == 2


def test_history_and_compare_refuse_runs_they_cannot_read_in_one_line(tmp_path, capsys):
    good = _fake_results(tmp_path / "good", {7: [(0.5, 9.0), (0.6, 4.0)]})
    no_test = _fake_results(tmp_path / "no_test", {7: [(0.5, 9.0), (0.6, 4.0)]})
    history = json.loads((no_test / "run_000" / run_folder.HISTORY).read_text())
    history[1]["test_accuracy"] = None  # a run without test data
    (no_test / "run_000" / run_folder.HISTORY).write_text(json.dumps(history))
    only_partial = _fake_results(tmp_path / "only_partial", {7: [(0.5, 9.0)]})
    history = json.loads((only_partial / "run_000" / run_folder.HISTORY).read_text())
    history[0]["partial"] = True
    (only_partial / "run_000" / run_folder.HISTORY).write_text(json.dumps(history))
    twice = _fake_results(tmp_path / "twice", {7: [(0.5, 9.0)]})
    _fake_results(tmp_path / "other", {7: [(0.6, 8.0)]}).joinpath("run_000").rename(twice / "run_001")
    cases = [(["history", str(no_test), "--epochs", "2"], "no finite test accuracy"),
             (["compare", str(no_test), str(good), "--epochs", "1-2"], "no finite test accuracy"),
             (["history", str(only_partial)], "no complete epoch"),
             (["compare", str(good), str(only_partial)], "no complete epoch"),
             (["history", str(twice)], "two runs of seed 7"),
             (["history", str(good), "--epochs", ""], "expected N or FIRST-LAST")]
    for argv, message in cases:
        assert ledger.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert ledger.main(["compare", str(no_test), str(good), "--epoch", "1"]) == 0  # the epochs it has are fine


def test_compare_over_an_epoch_window_gives_means_and_the_fewest_remaining(tmp_path, capsys):
    a = _fake_results(tmp_path / "a", {7: [(0.50, 9.0), (0.60, 4.0)], 8: [(0.40, 8.0), (0.70, 3.0)]})
    b = _fake_results(tmp_path / "b", {8: [(0.45, 8.5), (0.65, 3.5), (0.9, 0.5)], 7: [(0.55, 9.5), (0.50, 4.5)]})
    window, rows = ledger.paired_runs(a, b, (1, 2))
    assert window == (1, 2)
    # seed 7: A (50 + 60) / 2 = 55.00 and (9 + 4) / 2 = 6.5; B (55 + 50) / 2 = 52.50 and (9.5 + 4.5) / 2 = 7.0
    assert rows[0]["test_accuracy_a"] == pytest.approx(55.0) and rows[0]["remaining_percent_b"] == pytest.approx(7.0)
    assert rows[0]["test_accuracy_diff"] == pytest.approx(2.5) and rows[0]["remaining_percent_diff"] == -0.5
    assert ledger.main(["compare", str(a), str(b), "--epochs", "1-2"]) == 0
    out = capsys.readouterr().out
    assert "mean of epochs 1-2;" in out
    assert "| 7 | 55.00 / 6.500 | 52.50 / 7.000 | +2.50 / -0.500 | 4.000 (2) | 4.500 (2) |" in out
    assert "| 8 | 55.00 / 5.500 | 55.00 / 6.000 | +0.00 / -0.500 | 3.000 (2) | 3.500 (2) |" in out
    assert "| mean of 2 | | | +1.25 / -0.500 | | |" in out
    # the fewest remaining weights inside the window, at the first epoch that reached them
    c = _fake_results(tmp_path / "c", {7: [(0.5, 2.0), (0.6, 1.0), (0.7, 1.5), (0.8, 1.0)]})
    d = _fake_results(tmp_path / "d", {7: [(0.4, 3.0)] * 4})
    assert ledger.main(["compare", str(c), str(d), "--epochs", "2-4"]) == 0
    assert "| 7 | 70.00 / 1.167 | 40.00 / 3.000 | +30.00 / -1.833 | 1.000 (2) | 3.000 (2) |" in capsys.readouterr().out
    assert ledger.main(["compare", str(c), str(d), "--epochs", "3"]) == 0  # one epoch: no window columns
    out = capsys.readouterr().out
    assert "epoch 3;" in out and "| 7 | 70.00 / 1.500 | 40.00 / 3.000 | +30.00 / -1.500 |\n" in out
    for bad in ("3-2", "0-4", "a-b", "1-2-3", "2-5"):  # the last: c has no epoch 5
        assert ledger.main(["compare", str(c), str(d), "--epochs", bad]) == 2
        assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ledger.main(["compare", str(c), str(d), "--epoch", "2", "--epochs", "2-3"])
