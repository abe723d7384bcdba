"""Trainer and CLI: seeded runs, resume, early stopping, logs, the `recfast train` command."""

from __future__ import annotations

import json

import pytest
import torch

import recfast
from recfast.cli import main


@pytest.fixture(scope="module")
def splits():
    x = recfast.data.synthetic(300, 200, 6000, seed=0, min_user_interactions=3)
    return recfast.data.stratified_split(x, (0.8, 0.1, 0.1), seed=0)


def _trainer(splits, model, **kw):
    train, valid, _ = splits
    defaults = dict(epochs=4, batch_size=512, lr=0.01, progress=False, seed=3, device="cpu")
    defaults.update(kw)
    return recfast.Trainer(model, train, valid, **defaults)


def test_same_seed_same_metrics(splits) -> None:
    runs = []
    for _ in range(2):
        model = recfast.models.LightGCN(300, 200, dim=16, num_layers=2)
        runs.append((_trainer(splits, model).fit(), model.embedding.detach().clone()))
    assert [r["ndcg@20"] for r in runs[0][0]] == [r["ndcg@20"] for r in runs[1][0]]
    assert torch.equal(runs[0][1], runs[1][1])


def test_resume_reproduces_an_uninterrupted_run(splits, tmp_path) -> None:
    full = recfast.models.BPRMF(300, 200, dim=8, item_bias=True)
    _trainer(splits, full, epochs=5).fit()
    part = recfast.models.BPRMF(300, 200, dim=8, item_bias=True)
    _trainer(splits, part, epochs=2, checkpoint_dir=tmp_path).fit()
    resumed = recfast.models.BPRMF(300, 200, dim=8, item_bias=True)
    history = _trainer(splits, resumed, epochs=5, checkpoint_dir=tmp_path, resume=True).fit()
    assert [h["epoch"] for h in history] == [0, 1, 2, 3, 4]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_early_stopping_restores_the_best_weights(splits, tmp_path) -> None:
    model = recfast.models.BPRMF(300, 200, dim=8)
    tr = _trainer(splits, model, epochs=30, lr=0.5, early_stopping={"metric": "ndcg@20", "patience": 2},
                  log_dir=tmp_path)
    history = tr.fit()
    assert len(history) < 30
    best = max(h["ndcg@20"] for h in history)
    assert tr._evaluate()["ndcg@20"] == pytest.approx(best)
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == len(history) and "samples_per_s" in json.loads(lines[0])


def test_classical_models_fit_once(splits) -> None:
    history = _trainer(splits, recfast.models.EASE(300, 200, l2=50.0)).fit()
    assert len(history) == 1 and history[0]["recall@20"] > 0


def test_trainer_errors(splits) -> None:
    with pytest.raises(ValueError, match="optimizer must be one of"):
        _trainer(splits, recfast.models.BPRMF(300, 200), optimizer="lion")
    with pytest.raises(ValueError, match="early_stopping needs a 'metric'"):
        _trainer(splits, recfast.models.BPRMF(300, 200), early_stopping={"patience": 2})
    with pytest.raises(TypeError, match="model must be a recfast Recommender"):
        recfast.Trainer(torch.nn.Linear(2, 2), splits[0])


def test_cli_train_default_job_runs(capsys, tmp_path) -> None:
    code = main(["train", "--synthetic", "400x300x8000", "--epochs", "3", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "test metrics" in out and "recall@20" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 < metrics["recall@20"] <= 1
    loaded = recfast.models.Recommender.load(tmp_path / "model.pt")
    assert isinstance(loaded, recfast.models.LightGCN)


def test_cli_errors_exit_2(capsys) -> None:
    assert main(["train", "--model", "Nope", "--epochs", "1"]) == 2
    assert "no model named 'Nope'" in capsys.readouterr().err
    assert main(["train", "--params", "{bad json", "--epochs", "1"]) == 2
