"""The config schema: every shipped config, every kind of bad input, overrides, sweeps and naming."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import config as config_lib
import hparams
from config import ConfigErrors, SweepConfig, expand_sweep, load_config, parse_config
from hparams import InitSpec
from paper_results import BASELINE_SUFFIX

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml"))
GOOD = {"name": "t", "data": {"dataset": "mnist", "source": "synthetic"}, "model": {"architecture": "fcn"},
        "training": {"epochs": 1}}


def _with(path: str, value):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    node = raw
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return raw


# (dotted key, bad value, the key the error must name, a fragment of the message)
BAD = [
    ("modle", {}, "modle", "did you mean 'model'"),
    ("model.treshold_fraction", 0.4, "model.treshold_fraction", "did you mean 'threshold_fraction'"),
    ("training.optimizer.lr", 0.1, "training.optimizer.lr", "did you mean"),
    ("training.epochs", "ten", "training.epochs", "expected an integer"),
    ("training.epochs", 2.5, "training.epochs", "expected an integer"),
    ("training.epochs", 0, "training.epochs", "must be >= 1"),
    ("runs", True, "runs", "expected an integer"),
    ("model.threshold_fraction", 1.0, "model.threshold_fraction", "must be < 1.0"),
    ("model.threshold_fraction", 0, "model.threshold_fraction", "must be > 0.0"),
    ("training.optimizer.learning_rate", -0.1, "training.optimizer.learning_rate", "must be > 0.0"),
    ("training.optimizer.weight_decay", -1e-4, "training.optimizer.weight_decay", "must be >= 0.0"),
    ("training.optimizer.momentum", 1.0, "training.optimizer.momentum", "must be < 1.0"),
    ("data.batch_size", 0, "data.batch_size", "must be >= 1"),
    ("model.dropout", 1.5, "model.dropout", "must be < 1.0"),
    ("model.architecture", "resnet18", "model.architecture", "allowed: fcn, conv2, conv4"),
    ("data.dataset", "imagenet", "data.dataset", "allowed: mnist, cifar10, cifar100"),
    ("model.weight_init", "glorot", "model.weight_init", "allowed: elus, elus_x2, he"),
    ("model.weight_init", "elus_file", "model.weight_init", "did you mean 'elus_x2'"),
    ("training.optimizer.learning_rate", float("inf"), "training.optimizer.learning_rate", "not a finite number"),
    ("training.schedule.patience", 2, "training.schedule.patience", "must be >= 3"),
    ("training.checkpoint_every", -1, "training.checkpoint_every", "must be >= 0"),
    ("model.mask_init", {"distribution": "beta", "scaling": "he"}, "model.mask_init.distribution",
     "allowed: signed_constant"),
    ("model.mask_init", {"distribution": "uniform", "scaling": "he", "factor": -1}, "model.mask_init.factor",
     "must be > 0.0"),
    ("training.optimizer.name", "adagrad", "training.optimizer.name", "allowed: sgdw, sgd, adam"),
    ("training.schedule.name", "step", "training.schedule.name", "allowed: exponential_decay"),
    ("model.mask_mode", "ternary", "model.mask_mode", "allowed: signed, binary, topk, none"),
    ("model.batch_norm", "group", "model.batch_norm", "allowed: learned, none, frozen"),
    ("training.mixed_precision", "float8", "training.mixed_precision", "allowed: mixed_float16, mixed_bfloat16, null"),
    ("training.distribute", "tpu", "training.distribute", "allowed: mirrored, multi_worker"),
    ("data.source", "s3", "data.source", "allowed: tfds, local, synthetic"),
    ("paper", "vgg19", "paper", "allowed: fcn"),
    ("paper", "conv2", "paper", "row conv2 is on CIFAR-10, this config on mnist"),
    ("paper", "fcn_baseline", "paper", "row fcn_baseline needs mask_mode none (a dense baseline); this config has "
                                       "mask_mode signed"),
    ("model.architecture", "conv6", "model.architecture", "conv6 does not fit dataset mnist"),
    ("model.num_classes", 100, "model.num_classes", "100 classes do not fit mnist"),
    ("data.augment", True, "data.augment", "augmentation"),
    ("model.width", 2.0, "model.width", "fcn does not use it (only conv2, conv4, conv6, conv8, resnet20"),
    ("model.batch_norm", "none", "model.batch_norm", "fcn does not use it (only resnet20, resnet56, resnet110 do)"),
    ("model.stem_batch_norm", "frozen", "model.stem_batch_norm", "set it to null"),
    ("model.weights_file", "nowhere/run_{run}.npz", "model.weights_file",
     "does not exist; create it with init_example"),
    ("model.masks_file", "nowhere.npz", "model.masks_file", "does not exist"),
    ("data.source", "local", "data.data_dir", "needs data_dir"),
    ("training", [1, 2], "training", "expected a mapping"),
    ("training.jit_compile", True, "training.jit_compile", "set training.deterministic: false"),
    ("sweep", {"grid": {"model.threshold_fraction": [0.5, 1.5]}}, "model.threshold_fraction", "sweep combination"),
    ("sweep", {"zip": {"runs": [1, 2], "base_seed": [1]}}, "sweep.zip", "equal lengths"),
]


@pytest.mark.parametrize("key, value, names, fragment", BAD, ids=[f"{b[0]}={b[1]}" for b in BAD])
def test_bad_config_names_the_key(key, value, names, fragment):
    with pytest.raises(ConfigErrors) as info:
        parse_config(_with(key, value))
    keys = [e.key for e in info.value.errors]
    assert names in keys, keys
    assert fragment in str(info.value)
    assert "\n" not in str(info.value.errors[0])  # one line per problem


def test_a_model_key_the_architecture_ignores_is_refused():
    """Each architecture takes only its own options (architectures.Architecture.options): a ResNet has no dropout,
    a Conv no batch norm; their defaults pass, and every shipped value of a used key is accepted."""
    resnet = {**GOOD, "data": {"dataset": "cifar10", "source": "synthetic"},
              "model": {"architecture": "resnet20", "width": 2, "batch_norm": "frozen", "stem_batch_norm": "learned"}}
    assert parse_config(resnet).model.width == 2
    with pytest.raises(ConfigErrors, match="model.dropout: resnet20 does not use it .only fcn, conv2, conv4, conv6, "
                                           "conv8 do.; remove the key or set it to 0.0"):
        parse_config({**resnet, "model": {**resnet["model"], "dropout": 0.1}})
    conv = {**resnet, "model": {"architecture": "conv2", "width": 0.5, "dropout": 0.2, "batch_norm": "learned"}}
    assert parse_config(conv).model.dropout == 0.2
    with pytest.raises(ConfigErrors, match="model.batch_norm: conv2 does not use it"):
        parse_config({**conv, "model": {**conv["model"], "batch_norm": "none"}})


def test_a_spec_and_the_schema_refuse_with_the_same_rule():
    """The bound lives on the field (hparams.rule): the spec's own check and the config's per-key check agree."""
    from hparams import OptimizerSpec, SpecError

    with pytest.raises(SpecError, match="learning_rate: -0.1 is out of range: must be > 0.0"):
        OptimizerSpec(learning_rate=-0.1)
    with pytest.raises(ConfigErrors, match="training.optimizer.learning_rate: -0.1 is out of range: must be > 0.0"):
        parse_config(_with("training.optimizer.learning_rate", -0.1))


def test_all_errors_reported_at_once():
    raw = _with("training.epochs", 0)
    raw["model"]["threshold_fraction"] = 2.0
    raw["bogus"] = 1
    with pytest.raises(ConfigErrors) as info:
        parse_config(raw)
    assert {e.key for e in info.value.errors} == {"training.epochs", "model.threshold_fraction", "bogus"}


@pytest.mark.parametrize("content, fragment", [
    (b"", "the config file is empty"),
    (b"# only a comment\n", "the config file is empty"),
    (b"name: x\nruns: 50\nmodel:\n  architecture: fcn\nruns: 3\n", "key 'runs' is given twice (lines 2 and 5)"),
    (b"name: x\nmodel:\n  width: 1\n  width: 2\n", "key 'width' is given twice (lines 3 and 4)"),
    ("name: caf\u00e9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 9)"),
], ids=["empty", "comment-only", "duplicate-top-level-key", "duplicate-nested-key", "latin-1"])
def test_files_that_are_no_config_are_refused(tmp_path, content, fragment):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert fragment in str(info.value) and len(info.value.errors) == 1


def test_unreadable_yaml_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmodel:\n  architecture: fcn\n  width: [1, 2\n")
    with pytest.raises(ConfigErrors, match=r"unreadable YAML at line \d+"):
        load_config(path)
    with pytest.raises(ConfigErrors, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT / "configs")) for p in CONFIGS])
def test_every_shipped_config_is_valid(path):
    raw = config_lib.read_yaml(path)
    raw.get("model", {}).pop("weights_file", None)  # made by init_example.py on the user's machine
    raw.get("model", {}).pop("masks_file", None)
    cfg = parse_config(raw)
    if cfg.paper:  # the row a config reports is the model it builds: "resnet20x2" is ResNet20 of width 2
        row = cfg.paper.removesuffix(BASELINE_SUFFIX)
        width = f"x{int(cfg.model.width)}" if cfg.model.architecture.startswith("resnet") and cfg.model.width != 1 \
            else ""
        assert (cfg.model.architecture + width, cfg.paper.endswith(BASELINE_SUFFIX)) == (row, not cfg.model.masked)


def test_overrides_and_cli_shortcuts(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    cfg, _ = load_config(path, ["training.optimizer.learning_rate=0.01", "model.mask_init.scaling=he",
                                "model.mask_init.distribution=uniform", "data.augment=false"],
                         runs=4, epochs=3, data_source="synthetic", out=str(tmp_path / "r"))
    assert cfg.training.optimizer.learning_rate == 0.01
    assert cfg.model.mask_init == InitSpec("uniform", "he", 1.0)
    assert (cfg.runs, cfg.training.epochs, cfg.output_dir) == (4, 3, str(tmp_path / "r"))
    assert cfg.seeds() == [7531, 7532, 7533, 7534]
    with pytest.raises(ConfigErrors, match="training.optimizer.learning_rate: -1.0 is out of range"):
        load_config(path, ["training.optimizer.learning_rate=-1"])
    with pytest.raises(ConfigErrors, match="expected key.sub=value"):
        load_config(path, ["epochs"])


def test_an_override_inside_a_preset_changes_that_preset(tmp_path):
    """`model.mask_init.factor=0.5` on `mask_init: he_uniform` scales he_uniform; it does not fall back to the
    InitSpec defaults (a signed constant); an absent weight_init expands to the default of the mask mode."""
    path = tmp_path / "c.yaml"
    raw = _with("model.weight_init", "he")
    raw["model"]["mask_init"] = "he_uniform"
    path.write_text(yaml.safe_dump(raw))
    cfg, _ = load_config(path, ["model.weight_init.factor=2", "model.mask_init.factor=0.5"])
    assert cfg.model.weight_init == InitSpec("signed_constant", "he", 2.0)
    assert cfg.model.mask_init == InitSpec("uniform", "he", 0.5)
    path.write_text(yaml.safe_dump(GOOD))
    baseline, _ = load_config(path, ["model.weight_init.factor=2", "model.mask_mode=none"])
    assert baseline.model.weight_init == InitSpec("uniform", "elu", 2.0)  # elu_uniform, the baselines' default
    masked, _ = load_config(path, ["model.mask_init.scaling=he"])
    assert masked.model.mask_init == InitSpec("uniform", "he", 1.0)  # from xavier_uniform, the default
    sweep = _with("sweep", {"grid": {"model.mask_init.factor": [0.5, 2.0]}})
    sweep["model"]["mask_init"] = "elu_uniform"
    cfg = parse_config(sweep)
    children = [child.model.mask_init for _, child, _ in config_lib.combinations(cfg, sweep)]
    assert children == [InitSpec("uniform", "elu", 0.5), InitSpec("uniform", "elu", 2.0)]


def test_a_partial_init_mapping_is_completed_from_its_keys_default_preset():
    """`mask_init: {scaling: he}` in a YAML file means what `--set model.mask_init.scaling=he` means: xavier_uniform
    with he scaling, not InitSpec's own defaults (a signed constant, whose equal |m| would keep every weight at
    tau); the same for a sweep's value, and for a baseline's weight_init (from elu_uniform)."""
    assert parse_config(_with("model.mask_init", {"scaling": "he"})).model.mask_init == InitSpec("uniform", "he")
    baseline = _with("model.weight_init", {"factor": 2})
    baseline["model"]["mask_mode"] = "none"
    assert parse_config(baseline).model.weight_init == InitSpec("uniform", "elu", 2.0)
    assert parse_config(_with("model.weight_init", {"factor": 2})).model.weight_init == InitSpec(
        "signed_constant", "elus", 2.0)
    sweep = _with("sweep", {"grid": {"model.mask_init": [{"scaling": "he"}, "elu_uniform"]}})
    cfg = parse_config(sweep)
    children = [child.model.mask_init for _, child, _ in config_lib.combinations(cfg, sweep)]
    assert children == [InitSpec("uniform", "he"), "elu_uniform"]
    with pytest.raises(ConfigErrors, match="model.mask_init.scalin: unknown key"):
        parse_config(_with("model.mask_init", {"scalin": "he"}))


def test_a_set_inside_an_absent_init_key_is_completed_per_sweep_combination(tmp_path):
    """`--set model.weight_init.factor=2` under a sweep of mask_mode: each combination's weight_init comes from
    its own mode's default (the baseline's elu_uniform, the Supermask's elus), as the same partial mapping written
    in the file does; and a sweep's mapping value is not changed by a sub-key swept beside it."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_with("sweep", {"grid": {"model.mask_mode": ["signed", "none"]}})))
    cfg, raw = load_config(path, ["model.weight_init.factor=2"])
    inits = {combo["model.mask_mode"]: child.model.weight_init
             for combo, child, _ in config_lib.combinations(cfg, raw)}
    assert inits == {"signed": InitSpec("signed_constant", "elus", 2.0), "none": InitSpec("uniform", "elu", 2.0)}
    value = {"distribution": "uniform", "scaling": "he"}
    sweep = _with("sweep", {"grid": {"model.mask_init": [value], "model.mask_init.factor": [0.5, 2.0]}})
    cfg = parse_config(sweep)
    children = config_lib.combinations(cfg, sweep)
    assert [child.model.mask_init.factor for _, child, _ in children] == [0.5, 2.0]
    assert [combo["model.mask_init"] for combo, _, _ in children] == [value, value]
    assert sweep["sweep"]["grid"]["model.mask_init"] == [{"distribution": "uniform", "scaling": "he"}]


def test_the_library_refuses_an_init_mapping_without_distribution_and_scaling():
    """Outside a config no preset key says what a partial mapping would be completed from: it is refused rather
    than filled with InitSpec's signed constant."""
    assert hparams.init_spec({"distribution": "uniform", "scaling": "he"}, hparams.MASK_PRESETS) == InitSpec(
        "uniform", "he")
    with pytest.raises(ValueError, match="names its distribution and scaling"):
        hparams.init_spec({"scaling": "he"}, hparams.MASK_PRESETS)


@pytest.mark.parametrize("raw, sets, cli, fragment", [
    ([1, 2], [], {"runs": 2}, "the top level must be a mapping of keys, got list"),
    (_with("model", "conv6"), ["model.threshold_fraction=0.5"], {},
     "model: is 'conv6', not a mapping, so model.threshold_fraction cannot be set"),
    (GOOD, ["=0.5"], {}, "--set: expected key.sub=value, got '=0.5'"),
    (_with("model.weight_init", "glorot"), ["model.weight_init.factor=2"], {},
     "model.weight_init: unknown init preset 'glorot'; allowed: elus"),
], ids=["list-with-a-shortcut", "scalar-section", "empty-key", "unknown-preset"])
def test_an_override_that_cannot_apply_is_refused_in_one_line(tmp_path, capsys, raw, sets, cli, fragment):
    import experiment_looper

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigErrors) as info:
        load_config(path, sets, **cli)
    assert len(info.value.errors) == 1 and fragment in str(info.value)
    argv = [str(path), *(a for s in sets for a in ("--set", s)),
            *(a for k, v in cli.items() for a in (f"--{k}", str(v)))]
    assert experiment_looper.main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_sweep_expansion_grid_and_zip():
    sweep = SweepConfig(grid={"a": [1, 2], "b": ["x", "y", "z"]}, zip={"c": [10, 20], "d": [0.1, 0.2]})
    combos = expand_sweep(sweep)
    assert len(combos) == 2 * 3 * 2
    assert combos[0] == {"a": 1, "b": "x", "c": 10, "d": 0.1}
    assert combos[1] == {"a": 1, "b": "x", "c": 20, "d": 0.2}
    assert {(c["c"], c["d"]) for c in combos} == {(10, 0.1), (20, 0.2)}  # zip keeps pairs together
    assert expand_sweep(SweepConfig(grid={"a": [1, 2]})) == [{"a": 1}, {"a": 2}]
    assert expand_sweep(SweepConfig(zip={"a": [1, 2], "b": [3, 4]})) == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]


def test_reference_documents_every_key():
    text = config_lib.reference_markdown()
    keys = [key for key, _, _ in config_lib.schema_fields()]
    for key in ("training.optimizer.learning_rate", "model.mask_init.distribution", "data.shuffle", "sweep.grid"):
        assert key in keys
    for key, field, _ in config_lib.schema_fields():
        assert field.metadata["help"], key
    # every leaf of a resolved config is documented
    assert set(config_lib.flat_items(config_lib.ExperimentConfig())) <= set(keys)
    readme = (ROOT / "configs" / "README.md").read_text()
    assert text in readme, "configs/README.md is stale: regenerate with python config.py --reference"


def test_cli_reports_errors_with_exit_code_2_and_no_traceback(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_with("model.threshold_fraction", 1.5)))
    proc = subprocess.run([sys.executable, str(ROOT / "experiment_looper.py"), str(path), "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "model.threshold_fraction: 1.5 is out of range: must be < 1.0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_validation_imports_no_tensorflow(tmp_path):
    """A bad config is refused on the schema alone: neither config nor the looper's module level loads TF."""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_with("modle", {})))
    code = ("import sys, experiment_looper; rc = experiment_looper.main([sys.argv[1]]); "
            "assert rc == 2, rc; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    assert "modle: unknown key (did you mean 'model'?)" in proc.stderr


def test_a_supermask_row_refuses_a_dense_config():
    raw = {**GOOD, "paper": "fcn", "model": {"architecture": "fcn", "mask_mode": "none"}}
    with pytest.raises(ConfigErrors, match="row fcn needs a masked mode"):
        parse_config(raw)
    parse_config({**raw, "paper": "fcn" + BASELINE_SUFFIX})


def test_the_local_source_needs_its_archive_before_anything_runs(tmp_path, monkeypatch):
    """A data_dir without the dataset's archive is refused by the validation, not after a run has started; `~`
    is expanded as the loader does."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    raw = {**GOOD, "data": {"dataset": "cifar10", "source": "local", "data_dir": "~/datasets"},
           "model": {"architecture": "conv2"}}
    with pytest.raises(ConfigErrors) as info:
        parse_config(raw)
    assert [e.key for e in info.value.errors] == ["data.data_dir"]
    assert "~/datasets holds no cifar-10-python.tar.gz" in str(info.value)
    (tmp_path / "datasets" / "mnist.npz").touch()  # another dataset's archive does not do
    with pytest.raises(ConfigErrors, match="holds no cifar-10-python.tar.gz"):
        parse_config(raw)
    (tmp_path / "datasets" / "cifar-10-python.tar.gz").touch()
    assert parse_config(raw).data.data_dir == "~/datasets"
    with pytest.raises(ConfigErrors, match="directory ~/nowhere does not exist; it must hold cifar-10-python"):
        parse_config({**raw, "data": {**raw["data"], "data_dir": "~/nowhere"}})


def test_an_override_of_a_swept_key_is_refused(tmp_path):
    """The sweep's values would replace a --set of the same key (or of a key inside or around it) in every
    combination: refused, naming both, instead of ignored."""
    raw = {**GOOD, "sweep": {"grid": {"model.threshold_fraction": [0.4, 0.6]}, "zip": {"base_seed": [1, 2]}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigErrors) as info:
        load_config(path, ["model.threshold_fraction=0.55"])
    assert [e.key for e in info.value.errors] == ["model.threshold_fraction"]
    assert "the sweep sets model.threshold_fraction (sweep.grid)" in str(info.value)
    with pytest.raises(ConfigErrors, match="base_seed: the sweep sets base_seed \\(sweep.zip\\)"):
        load_config(path, ["base_seed=5"])
    cfg, raw_out = load_config(path, ["model.dropout=0.1"], runs=2)  # keys the sweep leaves alone
    assert [c.model.dropout for _, c, _ in config_lib.combinations(cfg, raw_out)] == [0.1] * 4
    # a key above a swept one is refined by the sweep, not replaced: a preset whose factor the sweep sets
    raw = {**GOOD, "sweep": {"grid": {"model.mask_init.factor": [0.5, 2.0]}}}
    path.write_text(yaml.safe_dump(raw))
    cfg, raw_out = load_config(path, ["model.mask_init=he_uniform"])
    inits = [c.model.mask_init for _, c, _ in config_lib.combinations(cfg, raw_out)]
    assert inits == [InitSpec("uniform", "he", factor=0.5), InitSpec("uniform", "he", factor=2.0)]


def test_a_folder_given_as_the_config_is_named_so():
    with pytest.raises(ConfigErrors, match=f"{ROOT / 'configs'} is a folder; name a config file in it, e.g. {ROOT}"):
        load_config(ROOT / "configs")


def test_a_problem_shared_by_several_sweep_combinations_is_reported_once():
    raw = {**GOOD, "sweep": {"grid": {"model.threshold_fraction": [0.5, 1.5], "model.dropout": [0.0, 0.1, 0.2]}}}
    with pytest.raises(ConfigErrors) as info:
        parse_config(raw)
    assert len(info.value.errors) == 1
    assert str(info.value.errors[0]) == ("model.threshold_fraction: 1.5 is out of range: must be < 1.0 (in sweep "
                                         "combination model.threshold_fraction=1.5, model.dropout=0.0 and 2 more)")


def test_tensorflow_only_switches_are_refused_on_another_keras_backend(tmp_path, monkeypatch):
    import backends

    raw = _with("training.tensorboard", True)
    raw["training"]["distribute"] = "mirrored"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert backends.configured() == "tensorflow"  # no keras.json: Keras' default
    parse_config(raw)
    (tmp_path / "keras.json").write_text('{"backend": "jax", "floatx": "float32"}')
    assert backends.configured() == "jax"
    monkeypatch.setenv("KERAS_BACKEND", "torch")  # the variable wins over keras.json, as in Keras
    assert backends.configured() == "torch"
    with pytest.raises(ConfigErrors) as info:
        parse_config(raw)
    assert [str(e) for e in info.value.errors] == [
        "training.distribute: tf.distribute strategies need the TensorFlow backend, and Keras runs on torch here; "
        "set it to null",
        "training.tensorboard: the TensorBoard summaries need the TensorFlow backend, and Keras runs on torch here; "
        "set it to false"]
    parse_config(GOOD)  # nothing else changes
