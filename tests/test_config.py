"""YAML configs: schema validation with dotted-key errors, overrides, path resolution, custom modules,
and building data, model and trainer from a config."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import yaml

import recfast
from recfast import config as C
from recfast.config import ConfigError, load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import ToyEvaluator, ToyMF, install_stand_ins, toy_data  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_defaults_are_the_builtin_synthetic_lightgcn_job() -> None:
    cfg = load_config()
    assert cfg.model.name == "LightGCN" and cfg.data.source == "synthetic"
    assert dataclasses.astuple(cfg.data.synthetic) == (2000, 1000, 40000)
    assert cfg.split.method == "stratified" and cfg.split.ratios == [0.8, 0.1, 0.1]
    assert cfg.trainer.epochs == 8 and cfg.trainer.device == "auto" and cfg.evaluator.ks == [10, 20]
    assert C.config_to_dict(cfg)["trainer"]["lr"] == 0.01


def test_yaml_file_and_overrides(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"model": {"name": "BPRMF", "params": {"dim": 16}}, "trainer": {"epochs": 3},
                                 "data": {"source": "csv", "path": "inter.csv", "options": {"sep": ";"}}}))
    cfg = load_config(f, overrides=["trainer.lr=0.05", "model.params.dim=32", "trainer.early_stopping={metric: ndcg@10}",
                                    "evaluator.ks=[5, 10]", "trainer.scheduler=cosine", "trainer.grad_clip=null"])
    assert cfg.trainer.lr == 0.05 and isinstance(cfg.trainer.lr, float)
    assert cfg.model.params == {"dim": 32} and cfg.trainer.epochs == 3
    assert cfg.trainer.early_stopping == C.EarlyStoppingConfig(metric="ndcg@10", patience=3, mode="max", min_delta=0.0)
    assert cfg.evaluator.ks == [5, 10] and cfg.trainer.scheduler == "cosine"
    # relative paths are relative to the config file
    assert cfg.data.path == str(tmp_path / "inter.csv") and cfg.data.options == {"sep": ";"}
    # ints are accepted as floats; a dict scheduler is kept
    cfg = load_config({"trainer": {"lr": 1, "scheduler": {"name": "step", "step_size": 2}}})
    assert cfg.trainer.lr == 1.0 and cfg.trainer.scheduler == {"name": "step", "step_size": 2}


@pytest.mark.parametrize("raw,overrides,message", [
    ({"trainer": {"epochs": "five"}}, [], r"^trainer\.epochs: expected an int >= 0, got 'five' \(str\)$"),
    ({"trainer": {"epochs": True}}, [], r"^trainer\.epochs: expected an int"),
    ({"trainer": {"epoch": 3}}, [], r"^trainer\.epoch: unknown key; allowed keys in trainer: amp, batch_size, "),
    ({"modle": {}}, [], r"^modle: unknown key; allowed keys: custom_modules, data, evaluator, model, output, seed"),
    ({}, ["trainer.lr=-1"], r"^trainer\.lr: expected a number > 0, got -1$"),
    ({}, ["trainer.batch_size=0"], r"^trainer\.batch_size: expected an int >= 1, got 0$"),
    ({}, ["trainer.amp=maybe"], r"^trainer\.amp: expected a boolean \(true/false\), got 'maybe'"),
    ({}, ["trainer.optimizer=lion"], r"^trainer\.optimizer: expected one of adagrad, adam, .*got 'lion'"),
    ({}, ["trainer.early_stopping={patience: 2}"], r"^trainer\.early_stopping\.metric: required$"),
    ({}, ["trainer.early_stopping={metric: x, mode: up}"], r"^trainer\.early_stopping\.mode: expected one of max, min"),
    ({}, ["trainer.early_stopping={metric: x, patiense: 2}"], r"^trainer\.early_stopping\.patiense: unknown key"),
    ({}, ["trainer.scheduler=3"], r"^trainer\.scheduler: expected a string or a mapping or null, got 3"),
    ({}, ["trainer.scheduler={step_size: 3}"], r"^trainer\.scheduler\.name: required"),
    ({}, ["trainer.param_groups=[{params: bias, optimizer: lion}]"],
     r"^trainer\.param_groups\[0\]\.optimizer: expected one of"),
    ({}, ["trainer.param_groups=[{lr: 0.1}]"], r"^trainer\.param_groups\[0\]\.params: expected a regular expression"),
    ({}, ["trainer.param_groups=[bias]"], r"^trainer\.param_groups\[0\]: expected a mapping"),
    ({}, ["trainer.grad_clip=0"], r"^trainer\.grad_clip: expected a number > 0, got 0$"),
    ({}, ["evaluator.ks=[10, 0]"], r"^evaluator\.ks\[1\]: expected an int >= 1, got 0$"),
    ({}, ["evaluator.ks=[]"], r"^evaluator\.ks: expected a non-empty list"),
    ({}, ["evaluator.metrics=recall"], r"^evaluator\.metrics: expected a list of strings or null, got 'recall'"),
    ({}, ["evaluator.protocol=sampeld"], r"^evaluator\.protocol: expected one of full, sampled"),
    ({}, ["split.ratios=[0.5, 0.2]"], r"^split\.ratios: expected 2 or 3 non-negative numbers summing to 1"),
    ({}, ["split.method=kfold"], r"^split\.method: expected one of stratified, random, leave_one_out, temporal"),
    ({}, ["data.source=parquet"], r"^data\.source: expected one of synthetic, auto, csv"),
    ({}, ["data.source=csv"], r"^data\.path: required for data\.source 'csv'"),
    ({}, ["data.synthetic.n_interactions=10000000"], r"^data\.synthetic\.n_interactions: expected at most"),
    ({}, ["data.synthetic.n_users=0"], r"^data\.synthetic\.n_users: expected an int >= 1"),
    ({}, ["model.params=[1]"], r"^model\.params: expected a mapping, got list"),
    ({}, ["custom_modules=x.py"], r"^custom_modules: expected a list of strings, got 'x.py'"),
    ({}, ["seed=-1"], r"^seed: expected an int >= 0"),
    ({}, ["trainer=3"], r"^trainer: expected a mapping, got 3"),
    ({}, ["trainer.lr=0.1", "trainer.lr.x=1"], r"trainer\.lr is not a mapping"),
    ({}, ["trainer.lr"], r"expected KEY=VALUE"),
    ({}, ["trainer..lr=1"], r"bad key"),
    ({}, ["trainer.lr=[1"], r"cannot parse the value"),
])
def test_every_error_names_the_key(raw, overrides, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(raw, overrides=overrides)


def test_file_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(bad)
    top = tmp_path / "top.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping at the top level, got list"):
        load_config(top)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == load_config()
    assert issubclass(ConfigError, ValueError)


def test_example_configs_are_valid() -> None:
    for f in sorted(EXAMPLES.glob("*.yaml")):
        cfg = load_config(f)
        assert cfg.model.name
    cfg = load_config(EXAMPLES / "config_lightgcn.yaml")
    assert cfg.model.params["num_layers"] == 3 and cfg.trainer.early_stopping.metric == "ndcg@20"
    cfg = load_config(EXAMPLES / "config_bprmf_params.yaml")
    assert cfg.trainer.param_groups == [{"params": "bias", "optimizer": "sgd", "lr": 0.001}]


def test_custom_module_from_config_registers_and_trains(monkeypatch) -> None:
    install_stand_ins(monkeypatch)
    cfg = load_config(EXAMPLES / "config_custom_model.yaml",
                      overrides=["data.synthetic={n_users: 120, n_items: 60, n_interactions: 2000}"])
    assert cfg.custom_modules == [str(EXAMPLES / "my_model.py")]
    C.load_custom_modules(cfg)
    assert recfast.get_model("MyEASE").__name__ == "MyEASE"
    train, valid, test = C.build_data(cfg)
    assert train.n_users == 120 and len(train) + len(valid) + len(test) == 2000
    model = C.build_model(cfg, train.n_users, train.n_items)
    assert type(model).__name__ == "MyEASE" and model.l2 == 100.0
    ev = ToyEvaluator(train.to_csr(), valid.to_csr(), ks=(20,))
    tr = C.build_trainer(cfg, model, train, valid, evaluator=ev)
    history = tr.fit()
    pop = ev.evaluate(type(model)(120, 60, l2=1e12).fit(train.to_csr()))  # l2 -> inf: popularity-like
    assert history[0]["metrics"]["recall@20"] > 0 and history[0]["metrics"]["ndcg@20"] >= 0.5 * pop["ndcg@20"]


def test_custom_module_forms(tmp_path, monkeypatch) -> None:
    pkg = tmp_path / "mypkg_cfgtest"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import recfast\nfrom recfast.models import Recommender\n"
        "@recfast.register_model('_CfgPkgModel')\nclass M(Recommender):\n    iterative = False\n")
    (tmp_path / "mod_cfgtest.py").write_text(
        "import recfast\nfrom recfast.models import Recommender\n"
        "@recfast.register_model('_CfgFileModel')\nclass F(Recommender):\n    iterative = False\n")
    f = tmp_path / "c.yaml"
    f.write_text("custom_modules: [mypkg_cfgtest, mod_cfgtest.py]\n")
    cfg = load_config(f)
    assert cfg.custom_modules == [str(pkg), str(tmp_path / "mod_cfgtest.py")]
    C.load_custom_modules(cfg)
    assert recfast.get_model("_CfgPkgModel") and recfast.get_model("_CfgFileModel")
    # an importable package name stays a name
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_config({"custom_modules": ["json"]}).custom_modules == ["json"]
    with pytest.raises(ConfigError, match=r"custom_modules\[0\]: cannot load .*missing\.py"):
        C.load_custom_modules(load_config({"custom_modules": ["missing.py"]}, base_dir=tmp_path))
    with pytest.raises(ConfigError, match=r"custom_modules\[0\]: cannot load 'no_such_package_xyz'"):
        C.load_custom_modules(load_config({"custom_modules": ["no_such_package_xyz"]}))


def test_model_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^model\.name: no model named 'Nope'; registered: "):
        C.build_model(load_config({"model": {"name": "Nope"}}), 10, 10)
    cfg = load_config({"model": {"name": "_TestToyMF", "params": {"dimm": 4}}})
    with pytest.raises(ConfigError, match=r"^model\.params: .*unknown parameter\(s\) \['dimm'\]"):
        C.build_model(cfg, 10, 10)
    m = C.build_model(load_config({"model": {"name": "_TestToyMF", "params": {"dim": 4}}}), 10, 12)
    assert isinstance(m, ToyMF) and m.user.weight.shape == (10, 4)


def test_build_data_splits_and_sources(tmp_path, monkeypatch) -> None:
    install_stand_ins(monkeypatch)
    cfg = load_config({"data": {"synthetic": {"n_users": 50, "n_items": 30, "n_interactions": 600}},
                       "split": {"ratios": [0.7, 0.3]}, "seed": 3})
    train, valid, test = C.build_data(cfg)
    assert valid is None and len(train) + len(test) == 600 and train.n_items == 30
    again = C.build_data(cfg)[0]
    assert (again.users == train.users).all() and (again.items == train.items).all()  # seeded
    with pytest.raises(ConfigError, match="data.path: no such file or folder"):
        C.build_data(load_config({"data": {"source": "csv", "path": str(tmp_path / "x.csv")}}))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(ConfigError, match="data.source: cannot tell the format of x.parquet"):
        C.build_data(load_config({"data": {"source": "auto", "path": str(tmp_path / "x.parquet")}}))
    with pytest.raises(ConfigError, match="data.options: "):
        C.build_data(load_config({"data": {"options": {"bogus": 1}, "synthetic": {"n_users": 5, "n_items": 5,
                                                                                   "n_interactions": 10}}}))


def test_build_data_from_files(tmp_path) -> None:
    """Real loaders and splits (skips until recfast.data has them)."""
    for name in ("load_csv", "load_split_dataset", "stratified_split", "leave_one_out"):
        if not hasattr(recfast.data, name):
            pytest.skip(f"recfast.data.{name} is not merged yet")
    csv = tmp_path / "inter.csv"
    csv.write_text("user_id,item_id,timestamp\n" + "".join(f"u{u},i{(u * 7 + j) % 13},{j}\n"
                                                          for u in range(20) for j in range(5)))
    cfg = load_config({"data": {"source": "auto", "path": str(csv), "options": {"timestamp_col": "timestamp"}},
                       "split": {"method": "leave_one_out", "options": {"validation": True}}})
    train, valid, test = C.build_data(cfg)
    assert len(test) == 20 and len(valid) == 20 and len(train) == 60
    assert train.user_ids is not None and str(train.user_ids[0]).startswith("u")
    folder = tmp_path / "split"
    folder.mkdir()
    for name, text in [("train.txt", "0 1 2\n1 0\n"), ("valid.txt", "0 3\n"), ("test.txt", "1 4\n")]:
        (folder / name).write_text(text)
    train, valid, test = C.build_data(load_config({"data": {"source": "auto", "path": str(folder)}}))
    assert train.n_items == valid.n_items == test.n_items == 5 and len(test) == 1


def test_build_trainer_maps_every_setting(tmp_path) -> None:
    splits = toy_data()
    cfg = load_config({"seed": 5, "trainer": {
        "epochs": 2, "batch_size": 32, "optimizer": "sgd", "lr": 0.1, "weight_decay": 0.001,
        "optimizer_kwargs": {"momentum": 0.5}, "param_groups": [{"params": "bias", "lr": 0.01}],
        "scheduler": {"name": "step", "step_size": 1}, "grad_clip": 5.0, "early_stopping": {"metric": "ndcg@10"},
        "eval_every": 1, "checkpoint_every": 2, "progress": False, "device": "cpu"}})
    tr = C.build_trainer(cfg, ToyMF(60, 40), splits[0], splits[1], out_dir=tmp_path,
                         evaluator=ToyEvaluator(splits[0], splits[1]))
    assert (tr.epochs, tr.batch_size, tr.lr, tr.weight_decay, tr.seed, tr.grad_clip) == (2, 32, 0.1, 0.001, 5, 5.0)
    assert tr.optimizer_kwargs == {"momentum": 0.5} and tr.early_stopping["metric"] == "ndcg@10"
    assert tr.checkpoint_dir == tmp_path / "checkpoints" and tr.log_dir == tmp_path and tr.checkpoint_every == 2
    tr.fit()
    assert (tmp_path / "checkpoints" / "last.pt").exists() and (tmp_path / "log.jsonl").exists()
    assert tr.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.1 ** 2)
    assert C.evaluator_kwargs(load_config({"evaluator": {"metrics": ["recall"], "protocol": "sampled"}})) == {
        "ks": (10, 20), "batch_size": 4096, "protocol": "sampled", "metrics": ("recall",), "num_negatives": 99,
        "seed": 0}
