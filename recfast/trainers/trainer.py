"""``recfast.Trainer``: the training loop around a model's loss, its loader and the evaluator."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..csr import CSR
from ..models.base import Recommender, atomic_torch_save

__all__ = ["Trainer"]

_OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
}


def _sparse_optimizer(name: str):
    from .. import optim

    return {"sgd": optim.SparseSGD, "adagrad": optim.SparseAdagrad}.get(name, optim.SparseAdam)


def _as_csr(x: Any, name: str) -> CSR | None:
    if x is None or isinstance(x, CSR):
        return x
    if hasattr(x, "to_csr"):
        return x.to_csr()
    raise TypeError(f"Trainer: {name} must be a recfast.CSR or Interactions, got {type(x).__name__}")


class Trainer:
    """Trains a recfast model: epochs over the model's loader, an optimizer (row-sparse for the
    model's embedding tables), validation metrics, early stopping with the best weights restored,
    atomic checkpoints and resume, a JSON-lines log and a progress bar.

    Every epoch is a function of (seed, epoch): the loader's order and negatives and torch's RNG are
    derived from them, so resuming from the checkpoint of the last finished epoch reproduces an
    uninterrupted run's weights.

    Example
    -------
    >>> import recfast
    >>> x = recfast.data.synthetic(200, 100, 3000, seed=0)
    >>> train, valid = recfast.data.random_split(x, (0.8, 0.2), seed=0)
    >>> model = recfast.models.BPRMF(200, 100, dim=16)
    >>> history = recfast.Trainer(model, train, valid, epochs=2, batch_size=512, lr=0.01, progress=False).fit()
    >>> len(history)
    2
    """

    def __init__(
        self,
        model: Recommender,
        train: Any,
        valid: Any = None,
        *,
        epochs: int = 10,
        batch_size: int = 2048,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        early_stopping: dict[str, Any] | None = None,
        eval_every: int = 1,
        evaluator: Any = None,
        ks: tuple[int, ...] = (10, 20),
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        log_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        seed: int = 0,
        device: str = "auto",
    ) -> None:
        if not isinstance(model, Recommender):
            raise TypeError(f"Trainer: model must be a recfast Recommender, got {type(model).__name__}")
        if epochs < 0 or batch_size <= 0 or lr <= 0:
            raise ValueError(f"Trainer: need epochs >= 0, batch_size > 0, lr > 0; got {epochs}, {batch_size}, {lr}")
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"Trainer: optimizer must be one of {sorted(_OPTIMIZERS)}, got {optimizer!r}")
        self.model = model
        self.train = _as_csr(train, "train")
        self.valid = _as_csr(valid, "valid")
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.optimizer_name, self.weight_decay = optimizer, float(weight_decay)
        self.early_stopping = dict(early_stopping or {})
        if self.early_stopping and "metric" not in self.early_stopping:
            raise ValueError("Trainer: early_stopping needs a 'metric' (e.g. 'ndcg@20')")
        self.eval_every = max(1, int(eval_every))
        self.ks = tuple(ks)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.resume = bool(resume)
        self.log_dir = Path(log_dir) if log_dir else None
        self.progress = bool(progress) and sys.stderr.isatty()
        self.seed = int(seed)
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.evaluator = evaluator
        if self.evaluator is None and self.valid is not None:
            from ..eval import Evaluator

            self.evaluator = Evaluator(self.train, self.valid, ks=self.ks)
        self.history: list[dict[str, Any]] = []

    # -- optimisation ---------------------------------------------------------------------------------
    def _optimizers(self) -> list[torch.optim.Optimizer]:
        sparse = {id(p) for p in self.model.sparse_parameters()}
        dense = [p for p in self.model.parameters() if p.requires_grad and id(p) not in sparse]
        opts: list[torch.optim.Optimizer] = []
        if sparse:
            opts.append(_sparse_optimizer(self.optimizer_name)(self.model.sparse_parameters(), lr=self.lr,
                                                              weight_decay=self.weight_decay))
        if dense:
            opts.append(_OPTIMIZERS[self.optimizer_name](dense, lr=self.lr, weight_decay=self.weight_decay))
        return opts

    def fit(self) -> list[dict[str, Any]]:
        """Train (or, for classical models, fit) and return one record per epoch."""
        model = self.model.to(self.device)
        if not model.iterative:
            t0 = time.perf_counter()
            model.fit(self.train)
            rec = {"epoch": 0, "seconds": time.perf_counter() - t0, **self._evaluate()}
            self._log(rec)
            return [rec]
        model.prepare(self.train)
        opts = self._optimizers()
        loader = model.make_loader(self.train, self.batch_size, seed=self.seed, device=self.device)
        start, best, best_state, bad_epochs = 0, None, None, 0
        ckpt = self.checkpoint_dir / "last.pt" if self.checkpoint_dir else None
        if self.resume and ckpt is not None and ckpt.exists():
            state = torch.load(ckpt, map_location=self.device, weights_only=False)
            model.load_state_dict(state["model"])
            for o, s in zip(opts, state["optimizers"]):
                o.load_state_dict(s)
            start, best, bad_epochs = state["epoch"] + 1, state["best"], state["bad_epochs"]
            best_state, self.history = state["best_state"], state["history"]
        for epoch in range(start, self.epochs):
            torch.manual_seed(self.seed * 1_000_003 + epoch)
            loader.set_epoch(epoch)
            model.train()
            t0, total, n = time.perf_counter(), 0.0, 0
            batches = loader
            if self.progress:
                try:
                    from tqdm import tqdm

                    batches = tqdm(loader, desc=f"epoch {epoch}", leave=False)
                except ImportError:  # pragma: no cover
                    pass
            for batch in batches:
                for o in opts:
                    o.zero_grad(set_to_none=True)
                loss = model.loss(batch)
                loss.backward()
                for o in opts:
                    o.step()
                b = batch[0].numel()
                total += loss.detach().item() * b
                n += b
            model.on_epoch_end()
            dt = time.perf_counter() - t0
            rec: dict[str, Any] = {"epoch": epoch, "loss": total / max(n, 1), "samples_per_s": n / dt if dt else 0.0,
                                   "seconds": dt}
            if self.evaluator is not None and (epoch + 1) % self.eval_every == 0:
                rec.update(self._evaluate())
            self.history.append(rec)
            self._log(rec)
            stop = False
            if self.early_stopping and self.early_stopping["metric"] in rec:
                value = rec[self.early_stopping["metric"]]
                better = best is None or (value < best if self.early_stopping.get("mode", "max") == "min" else value > best)
                if better:
                    best, bad_epochs = value, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    bad_epochs += 1
                    stop = bad_epochs >= int(self.early_stopping.get("patience", 3))
            if ckpt is not None:
                atomic_torch_save({"model": model.state_dict(), "optimizers": [o.state_dict() for o in opts],
                                   "epoch": epoch, "best": best, "bad_epochs": bad_epochs, "best_state": best_state,
                                   "history": self.history}, ckpt)
            if stop:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        return self.history

    # -- evaluation and logs ------------------------------------------------------------------------
    def _evaluate(self) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        self.model.eval()
        with torch.no_grad():
            return self.evaluator.evaluate(self.model)

    def evaluate(self, test: Any, *, exclude: tuple[CSR, ...] = ()) -> dict[str, float]:
        """Metrics on a held-out split (training items excluded, and ``exclude``, e.g. validation)."""
        from ..eval import Evaluator

        ex = tuple(exclude) or ((self.valid,) if self.valid is not None else ())
        self.model.eval()
        with torch.no_grad():
            return Evaluator(self.train, _as_csr(test, "test"), ks=self.ks, exclude=ex).evaluate(self.model)

    def _log(self, rec: dict[str, Any]) -> None:
        if self.log_dir is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
