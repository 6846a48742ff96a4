"""run_folder: results-folder identity and the pinned names of the shipped configs, atomic writes, the .npz of
weights and masks, checking finished runs, statistics, claims, and the module graph of the repository."""

import ast
import json
import os
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

import config as config_lib
import run_folder
from architectures import build_model
from custom_layers import BaselineLayers, MaskedLayers, masked_layers
from run_folder import RunClaim, WeightsFileMismatch, load_weights_npz, save_weights_npz

ROOT = Path(__file__).resolve().parents[1]
GOOD = {"name": "t", "data": {"dataset": "mnist", "source": "synthetic"}, "model": {"architecture": "fcn"},
        "training": {"epochs": 1}}


def _cfg(**sections):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return config_lib.parse_config(raw)


# ------------------------------------------------------------------------------------------------ identity
# A change of any of these names is a decision (it orphans users' results folders), not an accident.
PINNED = {
    "conv2.yaml": "conv2-f3384725", "conv2_baseline.yaml": "conv2_baseline-2ae0f4f1",
    "conv2_found.yaml": "conv2_found-0b85cf39", "conv4_found.yaml": "conv4_found-8dc64114",
    "conv4.yaml": "conv4-baf15bc3", "conv4_baseline.yaml": "conv4_baseline-7b437d32",
    "conv6.yaml": "conv6-e653ddc2", "conv6_baseline.yaml": "conv6_baseline-479587a2",
    "conv8.yaml": "conv8-1168d932", "conv8_baseline.yaml": "conv8_baseline-c2333535",
    "fcn.yaml": "fcn-965ff8d5", "fcn_baseline.yaml": "fcn_baseline-4968bcef",
    "fcn_from_files.yaml": "fcn_from_files-965ff8d5", "fcn_released.yaml": "fcn_released-c88d2b54",
    "resnet20.yaml": "resnet20-3ce8f7f0", "resnet20_baseline.yaml": "resnet20_baseline-8de577c4",
    "resnet20x2.yaml": "resnet20x2-b3649153", "resnet20x2_baseline.yaml": "resnet20x2_baseline-5ebcc8cf",
    "resnet20x3.yaml": "resnet20x3-3efbb05c", "resnet20x3_baseline.yaml": "resnet20x3_baseline-f1c63570",
    "resnet56.yaml": "resnet56-d0187462", "resnet56_baseline.yaml": "resnet56_baseline-774e1969",
    "resnet110.yaml": "resnet110-9fa9fb6f", "resnet110_baseline.yaml": "resnet110_baseline-d064666b",
    "smoke.yaml": "smoke-fcd3323c",
    "ablations/batch_norm_resnet20.yaml": (3, "batch_norm_resnet20/batch_norm=learned-91f218bf"),
    "ablations/batch_norm_resnet56.yaml": (3, "batch_norm_resnet56/batch_norm=learned-30d3ebf9"),
    "ablations/batch_norm_resnet110.yaml": (3, "batch_norm_resnet110/batch_norm=learned-4523b1c6"),
    "ablations/extreme_pruning_conv6.yaml": (6, "extreme_pruning_conv6/threshold_fraction=0.4-e653ddc2"),
    "ablations/extreme_pruning_conv6_wd.yaml":
        (18, "extreme_pruning_conv6_wd/threshold_fraction=0.4,weight_decay=0.0001-cb97b11d"),
    "ablations/extreme_pruning_fcn.yaml": (6, "extreme_pruning_fcn/threshold_fraction=0.4-44136fa3"),
    "ablations/extreme_pruning_fcn_wd.yaml":
        (18, "extreme_pruning_fcn_wd/threshold_fraction=0.4,weight_decay=0.0001-7b5122ee"),
    "ablations/fcn_recipe_search.yaml": (3, "fcn_recipe_search/weight_init=elus_x2,weight_decay=0.0001-06250dda"),
    "ablations/init_conv2.yaml": (12, "init_conv2/weight_init=he,mask_init=xavier_uniform-010fec5a"),
    "ablations/init_conv4.yaml": (12, "init_conv4/weight_init=he,mask_init=xavier_uniform-d0358b6b"),
    "ablations/init_conv6.yaml": (12, "init_conv6/weight_init=he,mask_init=xavier_uniform-ddf34a93"),
    "ablations/init_conv8.yaml": (12, "init_conv8/weight_init=he,mask_init=xavier_uniform-1fb7512e"),
    "ablations/init_fcn.yaml": (12, "init_fcn/weight_init=he,mask_init=xavier_uniform-e91e29bc"),
    "ablations/mask_modes_conv6.yaml": (4, "mask_modes_conv6/mask_mode=signed,topk_fraction=0.5-e653ddc2"),
    "ablations/mask_modes_fcn.yaml": (4, "mask_modes_fcn/mask_mode=signed,topk_fraction=0.5-44136fa3"),
}


def test_every_shipped_config_has_its_pinned_folder_name():
    shipped = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}
    assert shipped == set(PINNED), "a config was added or removed: pin its folder name here"
    for name, pinned in PINNED.items():
        raw = config_lib.read_yaml(ROOT / "configs" / name)
        raw.get("model", {}).pop("weights_file", None)  # init files are made on the user's machine
        raw.get("model", {}).pop("masks_file", None)
        cfg = config_lib.parse_config(raw)
        dirs = [run_folder.results_dir(c, combo).relative_to(c.output_dir).as_posix()
                for combo, c, _ in config_lib.combinations(cfg, raw)]
        assert (dirs[0] if isinstance(pinned, str) else (len(dirs), dirs[0])) == pinned, name
        assert len(set(dirs)) == len(dirs), name  # every combination has its own folder


def test_where_the_same_data_comes_from_is_not_part_of_the_identity(tmp_path):
    tfds = _cfg(data={"source": "tfds"})
    (tmp_path / "mnist.npz").touch()  # the local source's archive (an empty stand-in: nothing is loaded)
    local = _cfg(data={"source": "local", "data_dir": str(tmp_path)})
    assert run_folder.results_dir(tfds) == run_folder.results_dir(local)
    synthetic = _cfg(data={"source": "synthetic"})
    assert run_folder.results_dir(synthetic) != run_folder.results_dir(tfds)  # other data, other results
    assert run_folder.identity(synthetic) == {"data.source": "synthetic", "training.epochs": 1}
    assert run_folder.identity(tfds) == {"training.epochs": 1}  # synthetic sizes do not count for real data


def test_only_settings_that_differ_from_the_defaults_count():
    base = _cfg()
    same = [_cfg(runs=7), _cfg(output_dir="elsewhere"), _cfg(paper="fcn"),
            _cfg(training={"verbose": 0, "tensorboard": True, "checkpoint_every": 5}),
            _cfg(model={"threshold_fraction": 0.4, "weight_init": "elus"}),  # the defaults, written out
            _cfg(model={"mask_init": {"distribution": "uniform", "scaling": "xavier", "factor": 1.0}}),
            _cfg(training={"optimizer": {"name": "sgdw"}})]
    for cfg in same:
        assert run_folder.config_hash(cfg) == run_folder.config_hash(base), cfg
    different = [_cfg(model={"threshold_fraction": 0.5}), _cfg(model={"weight_init": "elus_x2"}),
                 _cfg(training={"optimizer": {"learning_rate": 0.02}}), _cfg(data={"shuffle": False}),
                 _cfg(training={"mixed_precision": "mixed_bfloat16"}), _cfg(base_seed=1)]
    hashes = {run_folder.config_hash(cfg) for cfg in different}
    assert len(hashes) == len(different) and run_folder.config_hash(base) not in hashes
    baseline = _cfg(model={"mask_mode": "none", "weight_init": "elu_uniform"})
    assert "model.weight_init" not in run_folder.identity(baseline)  # the baseline's default init


def test_sweep_folders_are_named_by_their_combination():
    raw = {**GOOD, "sweep": {"grid": {"model.threshold_fraction": [0.5, 0.6]}}}
    cfg = config_lib.parse_config(raw)
    dirs = [run_folder.results_dir(c, combo) for combo, c, _ in config_lib.combinations(cfg, raw)]
    assert [d.parent.name for d in dirs] == ["t", "t"]
    assert dirs[0].name.startswith("threshold_fraction=0.5-") and dirs[1].name.startswith("threshold_fraction=0.6-")
    assert run_folder.results_dir(_cfg()).name.startswith("t-")


def test_sweep_labels_use_the_shortest_unique_key_suffix():
    combo = {"model.weight_init.factor": 1.5, "model.mask_init.factor": 2.0, "model.threshold_fraction": 0.5}
    assert run_folder.short_keys(combo) == {"model.weight_init.factor": "weight_init.factor",
                                            "model.mask_init.factor": "mask_init.factor",
                                            "model.threshold_fraction": "threshold_fraction"}
    assert run_folder.combo_label(combo) == "weight_init.factor=1.5,mask_init.factor=2.0,threshold_fraction=0.5"


# ------------------------------------------------------------------------------------------------ files
def test_atomic_writes_respect_the_umask(tmp_path):
    code = ("import os, sys; os.umask(0o002); import run_folder, numpy as np; d = sys.argv[1]; "
            "run_folder.atomic_write_text(d + '/a.txt', 'x'); run_folder.atomic_savez(d + '/b.npz', {'a': np.ones(2)});"
            "os.umask(0o077); import importlib; importlib.reload(run_folder); run_folder.atomic_write_json(d + "
            "'/c.json', {})")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, cwd=ROOT, timeout=120)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.txt": 0o664, "b.npz": 0o664, "c.json": 0o600}


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "metrics.json"
    run_folder.atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        run_folder.atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def _finished_run(directory: Path, status="ok"):
    directory.mkdir(parents=True)
    run_folder.atomic_write_json(directory / run_folder.METRICS, {"status": status, "run": 0})
    run_folder.atomic_write_json(directory / run_folder.HISTORY, [{"epoch": 1}])
    run_folder.atomic_write_json(directory / run_folder.LAYERS, {})
    for name in (run_folder.MASKS, run_folder.COMPACT):
        run_folder.atomic_savez(directory / name, {"a": np.arange(1000.0)})
    return directory


@pytest.mark.parametrize("broken, damage", [
    ("metrics.json", lambda p: p.write_text('{"status": "o')),
    ("history.json", lambda p: p.write_text("[")),
    ("masks.npz", lambda p: p.write_bytes(p.read_bytes()[:200])),
    ("compact.npz", lambda p: p.write_bytes(p.read_bytes().replace(b"\x00\x00\x00", b"\x01\x02\x03", 20))),
    ("layers.json", lambda p: p.unlink()),
])
def test_a_broken_file_of_a_finished_run_is_named(tmp_path, broken, damage):
    run = _finished_run(tmp_path / "run_000")
    assert run_folder.check_run(run)["status"] == "ok"
    damage(run / broken)
    with pytest.raises(run_folder.RunFileError, match=broken):
        run_folder.check_run(run)
    assert run_folder.finished_runs(tmp_path, check=True) == {}


def test_summary_statistics_by_hand():
    stats = run_folder.summary_statistics([97.0, 98.0, 99.0, None, float("nan")])
    assert stats == {"mean": 98.0, "std": 1.0, "min": 97.0, "max": 99.0, "n": 3}
    assert run_folder.summary_statistics([5.0])["std"] == 0.0
    assert run_folder.summary_statistics([])["mean"] is None


# ------------------------------------------------------------------------------------------------ .npz of weights
def test_npz_round_trip(tmp_path):
    src = build_model("fcn", MaskedLayers(seed=1))
    for layer in masked_layers(src):
        layer.mask.assign(layer.mask * 0.5)  # tau stays the initial one: file must carry it
    save_weights_npz(src, tmp_path / "w.npz")
    dst = build_model("fcn", MaskedLayers(seed=2))
    load_weights_npz(dst, tmp_path / "w.npz")  # auto: thresholds restored from the file
    x = np.random.default_rng(0).normal(size=(4, 784)).astype("float32")
    np.testing.assert_array_equal(src.predict(x, verbose=0), dst.predict(x, verbose=0))
    for a, b in zip(masked_layers(src), masked_layers(dst)):
        np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
        assert float(a.threshold) == float(b.threshold)
    # The init-file workflow recomputes tau = p * max|m| from the loaded mask.
    load_weights_npz(dst, tmp_path / "w.npz", threshold="recompute")
    for a, b in zip(masked_layers(src), masked_layers(dst)):
        assert float(b.threshold) == pytest.approx(0.4 * np.abs(a.mask.numpy()).max())
    with np.load(tmp_path / "w.npz", allow_pickle=False) as data:  # plain arrays, no pickles
        assert set(data.files) == {f"{la.name}/{k}" for la in masked_layers(src) for k in ("kernel", "mask",
                                                                                          "threshold")}


def test_npz_loads_only_the_requested_parts(tmp_path):
    src = build_model("fcn", MaskedLayers(seed=1))
    save_weights_npz(src, tmp_path / "w.npz")
    dst = build_model("fcn", MaskedLayers(seed=2))
    masks_before = [la.mask.numpy().copy() for la in masked_layers(dst)]
    load_weights_npz(dst, tmp_path / "w.npz", parts=("kernel",))
    for a, b, m in zip(masked_layers(src), masked_layers(dst), masks_before):
        np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
        np.testing.assert_array_equal(b.mask.numpy(), m)


def _values(model):
    return [v.numpy().copy() for v in model.weights]


def test_npz_for_another_architecture_is_a_clear_error_before_anything_is_assigned(tmp_path):
    save_weights_npz(build_model("fcn", MaskedLayers(seed=1)), tmp_path / "fcn.npz")
    other = build_model("fcn", MaskedLayers(seed=1), hidden=(200, 100))
    before = _values(other)
    with pytest.raises(WeightsFileMismatch, match=r"dense_0/kernel has shape \(784, 300\) in the file"):
        load_weights_npz(other, tmp_path / "fcn.npz")
    for value, now in zip(before, _values(other)):  # nothing half-loaded
        np.testing.assert_array_equal(value, now)
    conv = build_model("conv2", MaskedLayers(seed=1))
    with pytest.raises(WeightsFileMismatch, match="missing from the file"):
        load_weights_npz(conv, tmp_path / "fcn.npz")


def test_a_missing_threshold_is_refused_before_kernels_and_masks_are_assigned(tmp_path):
    src = build_model("fcn", MaskedLayers(seed=1))
    arrays = {k: v for k, v in run_folder.weights_to_arrays(src).items() if k != "output/threshold"}
    np.savez(tmp_path / "w.npz", **arrays)
    dst = build_model("fcn", MaskedLayers(seed=2))
    before = _values(dst)
    with pytest.raises(WeightsFileMismatch, match="output/threshold is missing"):
        load_weights_npz(dst, tmp_path / "w.npz", threshold="file")
    for value, now in zip(before, _values(dst)):
        np.testing.assert_array_equal(value, now)


def test_a_truncated_npz_is_a_clear_error(tmp_path):
    save_weights_npz(build_model("fcn", MaskedLayers(seed=1)), tmp_path / "w.npz")
    (tmp_path / "w.npz").write_bytes((tmp_path / "w.npz").read_bytes()[:500])
    with pytest.raises(WeightsFileMismatch, match="w.npz is not a readable .npz"):
        load_weights_npz(build_model("fcn", MaskedLayers(seed=1)), tmp_path / "w.npz")


def test_npz_baseline_kernels(tmp_path):
    src = build_model("fcn", BaselineLayers(seed=3))
    save_weights_npz(src, tmp_path / "b.npz")
    dst = build_model("fcn", BaselineLayers(seed=4))
    load_weights_npz(dst, tmp_path / "b.npz", parts=("kernel",))
    for a, b in zip(src.layers, dst.layers):
        for va, vb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(va.numpy(), vb.numpy())


# ------------------------------------------------------------------------------------------------ claims
def test_a_run_is_claimed_once(tmp_path):
    first = RunClaim.acquire(tmp_path, 0, timeout=600)
    assert first is not None and first.owned()
    assert RunClaim.acquire(tmp_path, 0, timeout=600) is None  # held by a live worker (this process)
    other = RunClaim.acquire(tmp_path, 1, timeout=600)
    assert other is not None  # another run is free
    first.release()
    other.release()
    assert not list(tmp_path.glob("*.claim"))
    again = RunClaim.acquire(tmp_path, 0, timeout=600)
    assert again is not None
    again.release()


def test_a_silent_claim_is_taken_over_and_its_owner_learns_it(tmp_path):
    first = RunClaim.acquire(tmp_path, 0, timeout=600)
    path = run_folder.claim_path(tmp_path, 0)
    old = time.time() - 601
    os.utime(path, (old, old))  # no heartbeat for longer than the timeout
    second = RunClaim.acquire(tmp_path, 0, timeout=600)
    assert second is not None and second.owned() and not first.owned()
    first.release()  # the old owner must not remove the new owner's claim
    assert path.exists() and second.owned()
    second.release()


def test_the_claim_of_a_dead_process_on_this_host_is_stale_at_once(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = run_folder.claim_path(tmp_path, 0)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "x"}))
    claim = RunClaim.acquire(tmp_path, 0, timeout=1e9)
    assert claim is not None and claim.owned()
    claim.release()
    path.write_text(json.dumps({"host": "another-node", "pid": dead.pid, "token": "x"}))
    assert RunClaim.acquire(tmp_path, 0, timeout=1e9) is None  # another node's worker: wait for the timeout


# ------------------------------------------------------------------------------------------------ module graph
def _imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules imported anywhere in `path` (module level and inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & modules


def test_no_import_cycles_among_the_top_level_modules():
    modules = {p.stem for p in ROOT.glob("*.py")}
    graph = {m: _imports(ROOT / f"{m}.py", modules) - {m} for m in modules}
    assert "experiment_looper" not in graph["run_folder"] and "export" not in graph["run_folder"]
    state: dict[str, int] = {}

    def visit(module, stack):
        state[module] = 1
        for dependency in sorted(graph[module]):
            if state.get(dependency) == 1:
                pytest.fail(f"import cycle: {' -> '.join(stack + [module, dependency])}")
            if dependency not in state:
                visit(dependency, stack + [module])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [])


def test_every_results_file_name_is_written_in_one_place():
    """The looper, export, analysis, init_example and config take file names from run_folder."""
    names = ["metrics.json", "history.json", "layers.json", "masks.npz", "compact.npz", "summary.json",
             "checkpoint.npz", "looper.log"]
    for module in ("experiment_looper", "export", "analysis", "init_example", "config", "model_trainer", "shrink"):
        tree = ast.parse((ROOT / f"{module}.py").read_text())
        literals = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not [n for n in names + ["stripped.keras", "shrunk.keras", "sizes.json"] if n in literals], module


def test_zip_checksums_catch_a_flipped_byte(tmp_path):
    """check_run relies on the zip CRCs of an .npz: a flipped byte inside a member is found."""
    path = tmp_path / "a.npz"
    run_folder.atomic_savez(path, {"a": np.arange(10000.0)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is not None


def test_a_recorded_config_with_a_paper_row_that_does_not_fit_stays_readable(tmp_path):
    """Folders written before the config checked the paper row against the model (a dense run of fcn.yaml kept
    `paper: fcn`) still export: the row is dropped on reading, the rest is as recorded."""
    cfg = _cfg(model={"mask_mode": "none"})
    raw = {**yaml.safe_load(run_folder.config_yaml(cfg, seed=5, run=2)), "paper": "fcn"}
    (tmp_path / run_folder.CONFIG).write_text(yaml.safe_dump(raw))
    with pytest.raises(config_lib.ConfigErrors, match="row fcn needs a masked mode"):
        config_lib.parse_config({k: v for k, v in raw.items() if k not in ("seed", "run")})
    read, seed, run = run_folder.read_run_config(tmp_path, data_source="synthetic")
    assert (read.paper, read.model.mask_mode, seed, run) == (None, "none", 5, 2)
