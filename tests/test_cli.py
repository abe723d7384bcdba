"""The recfast command: train (default job, configs, flags, --set, resume), evaluate, recommend
(original ids, CSV/JSON), bench (fake benchmark folder), and exit status 2 with one line on errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import tempfile
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import recfast
from recfast.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_trainer import install_stand_ins  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Subprocesses import recfast from where this process did (site-packages in CI, the checkout
# in an in-place build), never from the source folder by accident.
_PKG_PARENT = str(Path(recfast.__file__).resolve().parents[1])
EXAMPLES = ROOT / "examples"
TOY_ARGS = ["--model", "_TestToyMF", "--params", "{dim: 8}", "--synthetic", "80x50x1200", "--batch-size", "64",
            "--lr", "0.05", "--no-progress", "--set", "evaluator.ks=[5, 10]"]


@pytest.fixture
def stand_ins(monkeypatch):
    return install_stand_ins(monkeypatch)


@pytest.fixture
def toy_run(tmp_path, stand_ins, capsys):
    out = tmp_path / "run"
    assert main(["train", *TOY_ARGS, "--epochs", "3", "--out", str(out)]) == 0
    return out, capsys.readouterr().out


def test_default_job_trains_lightgcn(tmp_path, monkeypatch, capsys) -> None:
    """`recfast train` with the defaults (fewer epochs to stay quick); the lead runs it after merging."""
    try:
        recfast.get_model("LightGCN")
    except KeyError:
        pytest.skip("LightGCN is not registered yet")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "LightGCN on synthetic 2000x1000x40000" in out and "epoch   2/2" in out
    assert "metric" in out and "valid" in out and "test" in out and "recall@20" in out
    run = tmp_path / "runs" / "LightGCN"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["test"]["recall@20"] <= 1 and metrics["model"] == "LightGCN"
    assert isinstance(recfast.models.Recommender.load(run / "model.pt"), recfast.get_model("LightGCN"))
    assert (run / "checkpoints" / "last.pt").exists() and (run / "config.yaml").exists()


def test_train_writes_a_complete_run(toy_run) -> None:
    out, text = toy_run
    assert "_TestToyMF on synthetic 80x50x1200" in text and "device cpu" in text
    assert [line.split()[1] for line in text.splitlines() if line.startswith("epoch")] == ["1/3", "2/3", "3/3"]
    assert "valid recall@10" in text
    lines = text.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith("metric"))):]
    assert table[0].split() == ["metric", "valid", "test"]
    assert any(line.split()[0] == "ndcg@5" and len(line.split()) == 3 for line in table[1:])
    assert {p.name for p in out.iterdir()} >= {"model.pt", "config.yaml", "metrics.json", "log.jsonl", "checkpoints"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"recall@5", "recall@10", "ndcg@5", "ndcg@10"} and metrics["epochs_run"] == 3
    assert metrics["best_epoch"] == 2 and metrics["valid"]["recall@10"] > 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["model"] == {"name": "_TestToyMF", "params": {"dim": 8}} and cfg["trainer"]["epochs"] == 3
    assert cfg["output"]["dir"] == str(out) and cfg["evaluator"]["ks"] == [5, 10]
    assert len((out / "log.jsonl").read_text().splitlines()) == 3
    model = recfast.models.Recommender.load(out / "model.pt")
    assert type(model).__name__ == "ToyMF" and model.params["dim"] == 8


def test_train_resume_continues_the_run(toy_run, capsys) -> None:
    out, _ = toy_run
    assert main(["train", str(out / "config.yaml"), "--epochs", "5", "--resume"]) == 0
    text = capsys.readouterr().out
    assert [line.split()[1] for line in text.splitlines() if line.startswith("epoch")] == ["4/5", "5/5"]
    assert [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_evaluate_a_saved_run(toy_run, capsys, tmp_path) -> None:
    out, _ = toy_run
    assert main(["evaluate", str(out), "--out", str(tmp_path / "m.json")]) == 0
    text = capsys.readouterr().out
    assert "on the test split" in text and "recall@10" in text
    got = json.loads((tmp_path / "m.json").read_text())
    want = json.loads((out / "metrics.json").read_text())["test"]
    assert got == pytest.approx(want, abs=1e-9)
    assert main(["evaluate", str(out / "model.pt"), "--split", "valid", "--set", "evaluator.ks=[3]"]) == 0
    text = capsys.readouterr().out
    assert "valid split" in text and "recall@3" in text and "recall@10" not in text


def test_recommend_csv_and_json(toy_run, tmp_path, capsys) -> None:
    out, _ = toy_run
    f = tmp_path / "recs.csv"
    assert main(["recommend", str(out), "--users", "0", "3,7", "--k", "4", "--output", str(f)]) == 0
    rows = list(csv.DictReader(f.open()))
    assert [r["user"] for r in rows] == ["0"] * 4 + ["3"] * 4 + ["7"] * 4
    assert [r["rank"] for r in rows[:4]] == ["1", "2", "3", "4"]
    model = recfast.models.Recommender.load(out / "model.pt")
    seen = set(model.train_csr.row(3).tolist())
    assert not seen & {int(r["item"]) for r in rows if r["user"] == "3"}
    scores = [float(r["score"]) for r in rows[:4]]
    assert scores == sorted(scores, reverse=True)

    assert main(["recommend", str(out), "--users", "3", "--k", "50", "--format", "json", "--include-seen"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert recs[0]["user"] == 3 and len(recs[0]["items"]) == 50  # every item, the seen ones included
    assert main(["recommend", str(out), "--users", "3", "--k", "50", "--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs[0]["items"]) == 50 - len(seen)  # padding dropped

    users = tmp_path / "users.txt"
    users.write_text("1\n2\n")
    assert main(["recommend", str(out), "--users-file", str(users), "--k", "2", "--format", "json"]) == 0
    assert [r["user"] for r in json.loads(capsys.readouterr().out)] == [1, 2]
    assert main(["recommend", str(out), "--all-users", "--k", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 81


def test_recommend_uses_original_ids(toy_run, capsys) -> None:
    out, _ = toy_run
    (out / "ids.json").write_text(json.dumps({"users": [f"u{i}" for i in range(80)],
                                              "items": [1000 + i for i in range(50)]}))
    assert main(["recommend", str(out), "--users", "u5", "u9", "--k", "3", "--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["user"] for r in recs] == ["u5", "u9"] and all(1000 <= i < 1050 for r in recs for i in r["items"])
    assert main(["recommend", str(out), "--users", "5"]) == 2
    assert "unknown user id(s) ['5']" in capsys.readouterr().err


def test_train_from_csv_keeps_original_ids(tmp_path, capsys, stand_ins) -> None:
    if not hasattr(recfast.data, "load_csv"):
        pytest.skip("recfast.data.load_csv is not merged yet")
    f = tmp_path / "inter.csv"
    f.write_text("user_id,item_id\n" + "".join(f"user{u},item{(u * 3 + j) % 20}\n" for u in range(30) for j in range(8)))
    out = tmp_path / "run"
    assert main(["train", "--model", "_TestToyMF", "--data", str(f), "--epochs", "1", "--out", str(out),
                 "--no-progress", "--set", "evaluator.ks=[5]"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(out), "--users", "user3", "--k", "2", "--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert recs[0]["user"] == "user3" and all(i.startswith("item") for i in recs[0]["items"])


def test_config_with_a_custom_model(tmp_path, capsys, stand_ins) -> None:
    out = tmp_path / "ease"
    assert main(["train", str(EXAMPLES / "config_custom_model.yaml"), "--synthetic", "120x60x2000",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "MyEASE on synthetic 120x60x2000" in text and "fitted in" in text and "recall@20" in text
    assert json.loads((out / "metrics.json").read_text())["test"]["recall@20"] > 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["custom_modules"] == [str(EXAMPLES / "my_model.py")]
    assert main(["recommend", str(out), "--users", "1", "--k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 4


@pytest.mark.parametrize("argv,message", [
    (["train", "--model", "Nope"], "model.name: no model named 'Nope'; registered:"),
    (["train", "--params", "{bad"], "--params: cannot parse"),
    (["train", "--params", "[1]"], "--params: expected a mapping"),
    (["train", "--synthetic", "10x10"], "--synthetic: expected USERSxITEMSxINTERACTIONS"),
    (["train", "--synthetic", "10x10x1000"], "data.synthetic.n_interactions: expected at most n_users * n_items"),
    (["train", "--set", "trainer.epochs=-1"], "trainer.epochs: expected an int >= 0, got -1"),
    (["train", "--set", "trainer.epoch=1"], "trainer.epoch: unknown key; allowed keys in trainer:"),
    (["train", "--set", "trainer"], "--set trainer: expected KEY=VALUE"),
    (["train", "no_such_config.yaml"], "config file not found: no_such_config.yaml"),
    (["train", "a.yaml", "--config", "b.yaml"], "give the config file once"),
    (["train", "--optimizer", "lion"], "trainer.optimizer: expected one of"),
    (["train", "--data", "/no/such/file.csv", "--model", "_TestToyMF"], "data.path: no such file or folder"),
    (["train", "--early-stopping", "ndcg@99", *TOY_ARGS[:-2], "--epochs", "1"],
     "early_stopping metric 'ndcg@99' is not among the evaluator's metrics"),
    (["evaluate", "/no/such/run"], "no such run folder or model file: /no/such/run"),
    (["recommend", "/no/such/run", "--users", "1"], "no such run folder or model file"),
    (["bench", "--bench-dir", "/no/such/dir"], "--bench-dir: no such folder /no/such/dir"),
])
def test_errors_exit_2_with_one_line(argv, message, capsys, stand_ins, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a run that gets as far as its output folder writes it here
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("recfast ") and ": error: " in err, err
    assert message in err and "Traceback" not in err


def test_argparse_errors_and_help(capsys) -> None:
    assert main(["train", "--epochs", "x"]) == 2
    assert "invalid int value: 'x'" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2
    assert main([]) == 2
    assert "train" in capsys.readouterr().out
    assert main(["train", "--help"]) == 0
    assert "--set KEY=VALUE" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert recfast.__version__ in capsys.readouterr().out


def test_recommend_run_errors(toy_run, capsys, tmp_path) -> None:
    out, _ = toy_run
    for argv, message in [(["--users", "999"], "out of range [0, 80)"), (["--users", "x"], "must be integers"),
                          ([], "give --users, --users-file or --all-users"), (["--users", "1", "--k", "0"], "--k must be positive")]:
        assert main(["recommend", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty")]) == 2
    assert "has no model.pt" in capsys.readouterr().err
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.pt").write_bytes((out / "model.pt").read_bytes())
    assert main(["evaluate", str(lone)]) == 2
    assert "no config.yaml beside" in capsys.readouterr().err
    assert main(["evaluate", str(lone), "--config", str(out / "config.yaml"), "--split", "valid"]) == 0


def test_python_dash_m_recfast() -> None:
    env = {**os.environ, "PYTHONPATH": _PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    neutral = tempfile.gettempdir()  # `python -m` puts the working directory on sys.path
    p = subprocess.run([sys.executable, "-m", "recfast", "--help"], capture_output=True, text=True, env=env, timeout=120,
                       cwd=neutral)
    assert p.returncode == 0 and "{train,evaluate,recommend,bench}" in p.stdout
    p = subprocess.run([sys.executable, "-m", "recfast", "train", "--set", "trainer.epochs=many"], capture_output=True,
                       text=True, env=env, timeout=120, cwd=neutral)
    assert p.returncode == 2 and p.stderr.strip() == \
        "recfast train: error: trainer.epochs: expected an int >= 0, got 'many' (str)"


# -- bench --------------------------------------------------------------------------------------------
_GOOD = textwrap.dedent("""
    import argparse, json, sys
    p = argparse.ArgumentParser(); p.add_argument("--out"); p.add_argument("--device"); p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    recs = [{"op": "topk", "baseline": "torch_topk", "device": a.device, "params": {"n": 10, "quick": a.quick},
             "recfast_ms": 1.0, "baseline_ms": 2.0, "speedup": 2.0},
            {"op": "topk", "baseline": "numpy", "device": a.device, "params": {"n": 20}, "recfast_ms": 1.0,
             "baseline_ms": 8.0, "speedup": 8.0}]
    open(a.out, "w").write(json.dumps(recs))
    print("good ran")
""")


def test_bench_runs_scripts_and_combines(tmp_path, capsys) -> None:
    d = tmp_path / "benchmarks"
    d.mkdir()
    (d / "bench_good.py").write_text(_GOOD)
    (d / "bench_bad.py").write_text("import sys\nsys.exit(3)\n")
    (d / "_common.py").write_text("")
    out = tmp_path / "res" / "all.json"
    assert main(["bench", "--bench-dir", str(d), "--out", str(out)]) == 1  # bench_bad failed
    captured = capsys.readouterr()
    assert "bench_bad.py (exit status 3) failed" in captured.err
    assert "2.00x" in captured.out and "8.00x" in captured.out and "torch_topk" in captured.out
    combined = json.loads(out.read_text())
    assert combined["quick"] is True and len(combined["results"]) == 2 and combined["failed"] == ["bench_bad.py (exit status 3)"]
    assert combined["results"][0]["params"]["quick"] is True and combined["results"][0]["script"] == "bench_good.py"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not out.with_suffix(".png").exists()
    else:
        assert out.with_suffix(".png").stat().st_size > 0
    assert main(["bench", "--bench-dir", str(d), "--only", "good", "--out", str(out), "--full"]) == 0
    combined = json.loads(out.read_text())
    assert combined["quick"] is False and combined["results"][0]["params"]["quick"] is False
    assert main(["bench", "--bench-dir", str(d), "--only", "nope"]) == 2
    assert "--only nope: no such benchmark" in capsys.readouterr().err


def test_bench_without_scripts_says_so(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["bench", "--bench-dir", str(tmp_path / "empty")]) == 1
    assert "no benchmarks/ folder with bench_*.py scripts was found" in capsys.readouterr().err
