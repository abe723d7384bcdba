"""``recfast.Trainer``: the training loop around a model's loss, its loader and an evaluator.

Protocols the trainer relies on
-------------------------------
**Model** (``recfast.models.Recommender``): ``iterative``; ``prepare(train)``; ``fit(train)`` for
classical models; for iterative ones ``loss(batch) -> scalar tensor`` (a mean over the batch),
``make_loader(train, batch_size, *, seed, device, rank, world_size)``, ``sparse_parameters()``
and ``on_epoch_end()``.

**Loader** (what ``make_loader`` returns): an iterable of batches (tuples of tensors whose first
entry has one element per sample), with

* ``set_epoch(epoch)``: the next iteration yields epoch ``epoch``'s batches, a pure function of
  (seed, epoch, rank, world_size) -- this is what makes resuming exact;
* optionally ``__len__`` (batches per epoch, equal on every rank), ``state_dict()`` and
  ``load_state_dict(state)`` (saved in checkpoints).

**Evaluator**: an object with ``evaluate(model) -> dict[str, float]`` (metric name -> value, e.g.
``"ndcg@20"``). For multi-process evaluation it should also accept
``evaluate(model, users=<int64 tensor of user ids>, return_sums=True) -> (sums, counts)``: per metric
the sum over the given users and the number of users it averages over (users without held-out
items contribute nothing), so that metrics add up across disjoint user sets and
``value = sum_over_ranks(sums) / sum_over_ranks(counts)``. An ``evaluator.users`` tensor (the users
with held-out items), when present, is what the trainer shards across ranks (else
``arange(n_users)``). Metrics that do not add up across user sets (names starting with
``coverage``) make every rank evaluate all users instead. Evaluators without ``users``/
``return_sums`` keyword arguments are called whole on every rank (correct, not sharded).
``recfast.eval.Evaluator`` implements this protocol.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..csr import CSR
from ..models.base import Recommender, atomic_torch_save
from . import distributed as rdist
from .optimizers import (build_optimizers, build_schedulers, check_optimizer, check_param_groups, clip_grad_norm,
                         parse_scheduler)

__all__ = ["Trainer", "epoch_seed"]

CHECKPOINT_FORMAT = "recfast-checkpoint-1"
_EARLY_STOPPING_KEYS = ("metric", "patience", "mode", "min_delta")


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The torch seed of an epoch: a fixed mix of (seed, epoch, rank)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(rank) * 104_729 + 0x5EED) % (2**63 - 1)


def _as_csr(x: Any, name: str, *, ratings: bool = False) -> CSR | None:
    if x is None or isinstance(x, CSR):
        return x
    if hasattr(x, "to_csr"):
        if ratings and getattr(x, "ratings", None) is not None:
            return x.to_csr(values="ratings")
        return x.to_csr()
    raise TypeError(f"Trainer: {name} must be a recfast.CSR or recfast.data.Interactions, got {type(x).__name__}")


def _resolve_device(device: str | torch.device, local_rank: int, world: int) -> torch.device:
    if isinstance(device, str) and device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    d = torch.device(device)
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Trainer: device {str(device)!r} requested but CUDA is not available")
        if d.index is None:
            d = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    return d


def _accepts(fn: Callable[..., Any], *names: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return all(n in params for n in names)


class _LossForward(nn.Module):
    """Makes ``model.loss(batch)`` the forward of a module, so DistributedDataParallel can wrap it."""

    def __init__(self, model: Recommender) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.model.loss(batch)


class Trainer:
    """Trains a recfast model and evaluates it.

    Iterative models: epochs over ``model.make_loader(...)``, an optimizer step per batch, validation
    metrics every ``eval_every`` epochs (and after the last), early stopping with the best weights
    restored, atomic checkpoints with exact resume, a JSON-lines log, TensorBoard scalars (when
    tensorboard is installed) and a tqdm progress bar (on a terminal). Classical models
    (``iterative = False``): ``model.fit(train)`` once, then the validation metrics.

    Parameters
    ----------
    model : a ``recfast.models.Recommender``.
    train, valid : users x items ``recfast.CSR`` (or ``recfast.data.Interactions``: ``.to_csr()`` is
        called, with ``values="ratings"`` for the training matrix of a ``batch_kind = "ratings"``
        model). ``valid`` may be None (no validation metrics).
    epochs, batch_size : training length and batch size (per process in multi-process runs).
    optimizer : ``"adam"``, ``"adamw"``, ``"sgd"``, ``"adagrad"``, ``"rmsprop"``, ``"sparse_adam"``,
        ``"sparse_sgd"``, ``"sparse_adagrad"``, or a callable ``f(params, lr=, weight_decay=, **kw)``
        returning a ``torch.optim.Optimizer`` (used for all parameters). By name, the parameters in
        ``model.sparse_parameters()`` get the row-sparse optimizer of that family
        (``recfast.optim.SparseAdam``/``SparseSGD``/``SparseAdagrad``) and the other parameters the
        dense torch one; the ``sparse_`` names are aliases that say so explicitly.
    lr, weight_decay : learning rate and weight decay of the default parameter group.
    optimizer_kwargs : further arguments of the default optimizer (``betas``, ``momentum``, ...).
    param_groups : parameter groups with their own optimizer, lr and options, matched by name, e.g.
        ``[{"params": "bias", "optimizer": "sgd", "lr": 0.01}]``; see
        ``recfast.trainers.optimizers`` for the matching rules.
    scheduler : a torch LR scheduler per optimizer: a name (``"cosine"``, ``"step"``,
        ``"exponential"``, ``"plateau"``, or a ``torch.optim.lr_scheduler`` class name), a dict
        ``{"name": "StepLR", "step_size": 5, "gamma": 0.5, "interval": "epoch" | "step"}``, or a
        callable ``f(optimizer) -> scheduler``. ``ReduceLROnPlateau`` steps with a validation metric
        (``"metric"`` in the dict, default the early-stopping metric).
    grad_clip : clip the joint gradient L2 norm (dense and sparse) to this value.
    amp : bf16 autocast of the loss on CUDA (no gradient scaler is needed for bf16); ignored on CPU.
    early_stopping : ``{"metric": "ndcg@20", "patience": 3, "mode": "max", "min_delta": 0.0}``: stop
        after ``patience`` evaluations without an improvement larger than ``min_delta``; the best
        weights are restored at the end of ``fit``.
    eval_every : evaluate every this many epochs (and after the last one).
    evaluator : an object following the evaluator protocol (module docstring), or a dict of
        keyword arguments for ``recfast.eval.Evaluator(train, valid, **kwargs)`` (``ks``,
        ``metrics``, ``batch_size``, ``protocol``, ...), or None for its defaults.
    checkpoint_dir : write ``last.pt`` there every ``checkpoint_every`` epochs (and at the end):
        model, optimizers, schedulers, loader, RNG states, early-stopping state and history.
    resume : continue from ``checkpoint_dir/last.pt`` when it exists (else start afresh).
    log_dir : write ``log.jsonl`` (one record per epoch) and TensorBoard scalars there.
    progress : show a tqdm bar (only when stderr is a terminal).
    seed : every epoch is a function of (seed, epoch): torch's RNG is re-seeded at each epoch start
        and the loader's ``set_epoch`` selects the epoch's order and negatives.
    device : ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    callbacks : functions ``f(trainer, record)`` called on every rank after each epoch (after its
        checkpoint and log record), e.g. to print progress; ``trainer.is_main`` tells rank 0.

    Example
    -------
    >>> import recfast
    >>> x = recfast.data.synthetic(200, 100, 3000, seed=0)
    >>> train, valid = recfast.data.random_split(x, (0.8, 0.2), seed=0)
    >>> model = recfast.models.BPRMF(200, 100, dim=16)
    >>> history = recfast.Trainer(model, train, valid, epochs=2, batch_size=512, lr=0.01,
    ...                           progress=False).fit()
    >>> [h["epoch"] for h in history], sorted(history[-1])
    ([0, 1], ['epoch', 'loss', 'lr', 'metrics', 'samples_per_s', 'seconds'])
    """

    def __init__(
        self,
        model: Recommender,
        train: Any,
        valid: Any = None,
        *,
        epochs: int = 10,
        batch_size: int = 2048,
        optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer_kwargs: dict[str, Any] | None = None,
        param_groups: Sequence[dict[str, Any]] | None = None,
        scheduler: Any = None,
        grad_clip: float | None = None,
        amp: bool = False,
        early_stopping: dict[str, Any] | None = None,
        eval_every: int = 1,
        evaluator: Any = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 1,
        resume: bool = False,
        log_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        seed: int = 0,
        device: str | torch.device = "auto",
        callbacks: Sequence[Callable[["Trainer", dict[str, Any]], Any]] | None = None,
    ) -> None:
        if not isinstance(model, Recommender):
            raise TypeError(f"Trainer: model must be a recfast Recommender, got {type(model).__name__}")
        self.model = model
        # Rating models (batch_kind "ratings") train on the ratings; the others on a binary matrix.
        self.train = _as_csr(train, "train", ratings=getattr(model, "batch_kind", "") == "ratings")
        self.valid = _as_csr(valid, "valid")
        if self.train is None:
            raise TypeError("Trainer: train must be a recfast.CSR or recfast.data.Interactions, got None")
        for name, m in (("train", self.train), ("valid", self.valid)):
            if m is not None and m.shape != (model.n_users, model.n_items):
                raise ValueError(f"Trainer: {name} has shape {m.shape}, expected the model's "
                                 f"({model.n_users}, {model.n_items})")

        def _int(name: str, v: Any, lo: int) -> int:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"Trainer: {name} must be an int >= {lo}, got {v!r}")
            return int(v)

        def _num(name: str, v: Any, positive: bool) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (positive and v == 0):
                raise ValueError(f"Trainer: {name} must be a {'positive' if positive else 'non-negative'} number, got {v!r}")
            return float(v)

        self.epochs = _int("epochs", epochs, 0)
        self.batch_size = _int("batch_size", batch_size, 1)
        self.eval_every = _int("eval_every", eval_every, 1)
        self.checkpoint_every = _int("checkpoint_every", checkpoint_every, 1)
        self.seed = _int("seed", seed, 0)
        self.lr = _num("lr", lr, True)
        self.weight_decay = _num("weight_decay", weight_decay, False)
        self.grad_clip = None if grad_clip is None else _num("grad_clip", grad_clip, True)
        if not (callable(optimizer) or isinstance(optimizer, str)):
            raise ValueError(f"Trainer: optimizer must be a name or a callable, got {optimizer!r}")
        check_optimizer(optimizer, "optimizer")
        self.optimizer_spec = optimizer
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.param_groups = check_param_groups(param_groups)
        self.scheduler_spec = parse_scheduler(scheduler)
        self.amp = bool(amp)
        self.early_stopping = self._check_early_stopping(early_stopping)
        if self.scheduler_spec is not None and self.scheduler_spec.plateau:
            self.scheduler_spec.metric = self.scheduler_spec.metric or (
                self.early_stopping["metric"] if self.early_stopping else None)
            if self.scheduler_spec.metric is None:
                raise ValueError("Trainer: scheduler ReduceLROnPlateau needs a 'metric' (or early_stopping)")
        if isinstance(evaluator, dict):
            self.evaluator_kwargs: dict[str, Any] = dict(evaluator)
            evaluator = None
        elif evaluator is not None and not callable(getattr(evaluator, "evaluate", None)):
            raise TypeError(f"Trainer: evaluator must have an evaluate(model) method or be a dict of "
                            f"recfast.eval.Evaluator arguments, got {type(evaluator).__name__}")
        else:
            self.evaluator_kwargs = {}
        self._evaluator = evaluator
        if (self.early_stopping or (self.scheduler_spec and self.scheduler_spec.plateau)) and \
                self.valid is None and evaluator is None:
            raise ValueError("Trainer: early_stopping and ReduceLROnPlateau need validation data (valid) or an evaluator")
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.resume = bool(resume)
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.progress = bool(progress)
        self._device_arg = device
        self.callbacks = list(callbacks or [])
        if not all(callable(c) for c in self.callbacks):
            raise TypeError("Trainer: callbacks must be callables f(trainer, record)")
        rank, world, local = rdist.env_world()
        self.rank, self.world_size, self.local_rank = rank, world, local
        self.device = _resolve_device(device, local, world)

        self.history: list[dict[str, Any]] = []
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.stopped_early = False
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[Any] = []
        self.loader: Any = None
        self._bad_evals = 0
        self._best_state: dict[str, torch.Tensor] | None = None
        self._ddp: nn.Module | None = None
        self._ready = False
        self._tb: Any = None

    # -- construction helpers ---------------------------------------------------------------------
    @staticmethod
    def _check_early_stopping(spec: Any) -> dict[str, Any] | None:
        if spec is None or spec is False:
            return None
        if not isinstance(spec, dict):
            raise ValueError(f"Trainer: early_stopping must be a dict like {{'metric': 'ndcg@20', 'patience': 3}}, "
                             f"got {spec!r}")
        bad = [k for k in spec if k not in _EARLY_STOPPING_KEYS]
        if bad:
            raise ValueError(f"Trainer: early_stopping has unknown key(s) {bad}; allowed: {list(_EARLY_STOPPING_KEYS)}")
        if not isinstance(spec.get("metric"), str) or not spec["metric"]:
            raise ValueError("Trainer: early_stopping needs a 'metric' (e.g. 'ndcg@20')")
        out = {"metric": spec["metric"], "patience": spec.get("patience", 3), "mode": spec.get("mode", "max"),
               "min_delta": spec.get("min_delta", 0.0)}
        if isinstance(out["patience"], bool) or not isinstance(out["patience"], int) or out["patience"] < 1:
            raise ValueError(f"Trainer: early_stopping patience must be an int >= 1, got {out['patience']!r}")
        if out["mode"] not in ("max", "min"):
            raise ValueError(f"Trainer: early_stopping mode must be 'max' or 'min', got {out['mode']!r}")
        if isinstance(out["min_delta"], bool) or not isinstance(out["min_delta"], (int, float)) or out["min_delta"] < 0:
            raise ValueError(f"Trainer: early_stopping min_delta must be a non-negative number, got {out['min_delta']!r}")
        return out

    @property
    def evaluator(self) -> Any:
        """The validation evaluator (built from ``recfast.eval.Evaluator`` on first use)."""
        if self._evaluator is None and self.valid is not None:
            self._evaluator = self._make_evaluator(self.valid, exclude=())
        return self._evaluator

    def _make_evaluator(self, test: CSR, exclude: Sequence[CSR]) -> Any:
        from .. import eval as rf_eval

        cls = getattr(rf_eval, "Evaluator", None)
        if cls is None:
            raise RuntimeError("Trainer: recfast.eval.Evaluator is not available in this build; pass evaluator=...")
        kwargs = dict(self.evaluator_kwargs)
        if exclude:
            kwargs["exclude"] = list(kwargs.get("exclude", [])) + list(exclude)
        return cls(self.train, test, **kwargs)

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the process that writes checkpoints and logs)."""
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint_dir is None else self.checkpoint_dir / "last.pt"

    def _setup(self) -> None:
        if self._ready:
            return
        rank, world, local = rdist.init_distributed(self.device.type)
        self.rank, self.world_size, self.local_rank = rank, world, local
        self.device = _resolve_device(self._device_arg, local, world)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.model.to(self.device)
        self.model.prepare(self.train)
        self._ready = True

    def _setup_iterative(self) -> None:
        model = self.model
        sparse = list(model.sparse_parameters())
        self.optimizers = build_optimizers(model, sparse, optimizer=self.optimizer_spec, lr=self.lr,
                                           weight_decay=self.weight_decay, optimizer_kwargs=self.optimizer_kwargs,
                                           param_groups=self.param_groups)
        self.schedulers = build_schedulers(self.scheduler_spec, self.optimizers)
        self.loader = model.make_loader(self.train, self.batch_size, seed=self.seed, device=self.device,
                                        rank=self.rank, world_size=self.world_size)
        if not hasattr(self.loader, "set_epoch"):
            raise TypeError(f"Trainer: {type(model).__name__}.make_loader returned {type(self.loader).__name__}, "
                            f"which has no set_epoch(epoch); exact resume and sharding need it")
        sparse_ids = {id(p) for p in sparse}
        self._sparse_params = [p for p in model.parameters() if id(p) in sparse_ids and p.requires_grad]
        self._all_params = [p for p in model.parameters() if p.requires_grad]
        self._forward: Callable[[Any], torch.Tensor] = model.loss

    def _setup_ddp(self) -> None:
        """Wrap the dense parameters in DistributedDataParallel (after a resume has loaded them)."""
        if self.world_size <= 1:
            return
        model = self.model
        if hasattr(self.loader, "__len__"):
            import torch.distributed as dist

            n = torch.tensor([len(self.loader), -len(self.loader)], dtype=torch.int64, device=self.device)
            dist.all_reduce(n, op=dist.ReduceOp.MAX)
            if int(n[0]) != -int(n[1]):
                raise RuntimeError(f"Trainer: the ranks' loaders yield between {-int(n[1])} and {int(n[0])} batches "
                                   f"per epoch; every rank must step equally (rank {self.rank}: {len(self.loader)})")
        rdist.broadcast_module(model)
        sparse_ids = {id(p) for p in self._sparse_params}
        dense = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in sparse_ids]
        if dense:
            from torch.nn.parallel import DistributedDataParallel as DDP

            wrapper = _LossForward(model)
            ignore = [f"model.{n}" for n, p in model.named_parameters() if id(p) in sparse_ids or not p.requires_grad]
            ignore += [f"model.{n}" for n, _ in model.named_buffers()]
            DDP._set_params_and_buffers_to_ignore_for_model(wrapper, ignore)
            # Buffers are ignored too (model state such as caches is per rank and derived from the
            # synchronised weights), so DDP neither broadcasts nor checks them.
            self._ddp = DDP(wrapper, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self._forward = self._ddp

    # -- fitting ----------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Train (iterative models) or fit (classical ones); returns the per-epoch records.

        Each record: ``epoch``, ``loss`` (mean over the epoch's samples, all ranks), ``samples_per_s``
        (all ranks), ``seconds``, ``lr`` (of the first optimizer), ``metrics`` (validation metrics,
        ``{}`` in epochs without evaluation). Classical models give one record without loss.
        """
        self._setup()
        if not self.model.iterative:
            return self._fit_classical()
        self._setup_iterative()
        start = self._maybe_resume()
        self._setup_ddp()
        self._open_logs(resumed=start > 0 or bool(self.history))
        try:
            if self._finished:
                return self._finish()
            for epoch in range(start, self.epochs):
                rec = self._train_epoch(epoch)
                stop = False
                if self._due_eval(epoch):
                    rec["metrics"] = self._evaluate_model(self.evaluator) if self.evaluator is not None else {}
                    stop = self._update_early_stopping(epoch, rec["metrics"])
                    self._step_plateau(rec["metrics"])
                if self.scheduler_spec is not None and self.scheduler_spec.interval == "epoch" \
                        and not self.scheduler_spec.plateau:
                    for s in self.schedulers:
                        s.step()
                self.history.append(rec)
                last = stop or epoch == self.epochs - 1
                self._finished = last
                if self.checkpoint_path is not None and ((epoch + 1) % self.checkpoint_every == 0 or last):
                    self._save_checkpoint(epoch)
                self._log(rec)
                for cb in self.callbacks:
                    cb(self, rec)
                if stop:
                    self.stopped_early = True
                    break
            return self._finish()
        finally:
            self._close_logs()

    def _fit_classical(self) -> list[dict[str, Any]]:
        self._open_logs(resumed=False)
        try:
            t0 = time.perf_counter()
            self.model.fit(self.train)
            dt = time.perf_counter() - t0
            metrics = self._evaluate_model(self.evaluator) if self.evaluator is not None else {}
            rec = {"epoch": 0, "seconds": dt, "metrics": metrics}
            self.history = [rec]
            self.best_epoch, self.best_metrics = 0, dict(metrics)
            self._log(rec)
            for cb in self.callbacks:
                cb(self, rec)
            return self.history
        finally:
            self._close_logs()

    def _due_eval(self, epoch: int) -> bool:
        return (epoch + 1) % self.eval_every == 0 or epoch == self.epochs - 1

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        model, loader = self.model, self.loader
        torch.manual_seed(epoch_seed(self.seed, epoch, self.rank))
        loader.set_epoch(epoch)
        model.train()
        step_sched = self.scheduler_spec is not None and self.scheduler_spec.interval == "step"
        use_amp = self.amp and self.device.type == "cuda"
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        n = 0
        bar = self._progress_bar(epoch)
        t0 = time.perf_counter()
        for i, batch in enumerate(loader):
            for o in self.optimizers:
                o.zero_grad(set_to_none=True)
            ctx = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
            with ctx:
                loss = self._forward(batch)
            loss.backward()
            if self.world_size > 1:
                rdist.all_reduce_sparse_grads(self._sparse_params, self.world_size)
            if self.grad_clip is not None:
                clip_grad_norm(self._all_params, self.grad_clip)
            for o in self.optimizers:
                o.step()
            if step_sched:
                for s in self.schedulers:
                    s.step()
            b = int(batch[0].shape[0]) if isinstance(batch, (tuple, list)) and isinstance(batch[0], torch.Tensor) \
                and batch[0].dim() > 0 else 1
            total += loss.detach().to(torch.float64) * b
            n += b
            if bar is not None:
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        model.on_epoch_end()
        if bar is not None:
            bar.close()
        dt = time.perf_counter() - t0
        sum_loss, count = float(total), float(n)
        if self.world_size > 1:
            sum_loss, count = rdist.all_reduce_floats([sum_loss, count], self.device)
        mean = sum_loss / count if count else float("nan")
        if count and not math.isfinite(mean):
            raise FloatingPointError(f"Trainer: the training loss is {mean} in epoch {epoch}; lower the learning rate "
                                     f"or set grad_clip")
        lr = self.optimizers[0].param_groups[0]["lr"] if self.optimizers else self.lr
        return {"epoch": epoch, "loss": mean, "samples_per_s": count / dt if dt > 0 else 0.0, "seconds": dt,
                "lr": float(lr), "metrics": {}}

    def _update_early_stopping(self, epoch: int, metrics: dict[str, float]) -> bool:
        es = self.early_stopping
        if es is None:
            return False
        name = es["metric"]
        if name not in metrics:
            raise ValueError(f"Trainer: early_stopping metric {name!r} is not among the evaluator's metrics "
                             f"{sorted(metrics)}")
        value = float(metrics[name])
        if self.best_value is None:
            better = True
        elif es["mode"] == "max":
            better = value > self.best_value + es["min_delta"]
        else:
            better = value < self.best_value - es["min_delta"]
        if better:
            self.best_value, self.best_epoch, self.best_metrics = value, epoch, dict(metrics)
            self._bad_evals = 0
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            return False
        self._bad_evals += 1
        return self._bad_evals >= es["patience"]

    def _step_plateau(self, metrics: dict[str, float]) -> None:
        if self.scheduler_spec is None or not self.scheduler_spec.plateau:
            return
        name = self.scheduler_spec.metric
        if name not in metrics:
            raise ValueError(f"Trainer: scheduler metric {name!r} is not among the evaluator's metrics {sorted(metrics)}")
        for s in self.schedulers:
            s.step(metrics[name])

    def _finish(self) -> list[dict[str, Any]]:
        if self._best_state is not None:
            self.model.load_state_dict(self._best_state)
            if hasattr(self.model, "on_epoch_end"):
                self.model.on_epoch_end()  # drop caches computed from the last weights
        elif self.history and self.history[-1].get("metrics"):
            self.best_epoch = self.history[-1]["epoch"]
            self.best_metrics = dict(self.history[-1]["metrics"])
        return self.history

    # -- checkpoints ------------------------------------------------------------------------------
    _finished = False

    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                                 "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def _save_checkpoint(self, epoch: int) -> None:
        if not self.is_main or self.checkpoint_path is None:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "finished": self._finished,
            "seed": self.seed,
            "world_size": self.world_size,
            "model_name": self.model.registered_name or type(self.model).__name__,
            "model_params": self.model.params,
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "loader": self.loader.state_dict() if hasattr(self.loader, "state_dict") else None,
            "rng": self._rng_state(),
            "early_stopping": {"best_value": self.best_value, "best_epoch": self.best_epoch,
                               "best_metrics": self.best_metrics, "bad_evals": self._bad_evals,
                               "stopped": self.stopped_early or (self._finished and epoch < self.epochs - 1)},
            "best_state": self._best_state,
            "history": self.history,
        }
        atomic_torch_save(state, self.checkpoint_path)

    def _maybe_resume(self) -> int:
        """Load ``last.pt`` when resuming; returns the first epoch to run."""
        path = self.checkpoint_path
        self._finished = False
        self.history, self.best_epoch, self.best_value, self.best_metrics = [], None, None, {}
        self._bad_evals, self._best_state, self.stopped_early = 0, None, False
        if not self.resume or path is None or not path.exists():
            return 0
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"Trainer: {path} is not a recfast trainer checkpoint")
        if state["seed"] != self.seed:
            raise ValueError(f"Trainer: the checkpoint {path} was written with seed {state['seed']}, not {self.seed}; "
                             f"resuming would not reproduce the run")
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(f"Trainer: the checkpoint {path} holds {len(state['optimizers'])} optimizer states, this "
                             f"trainer has {len(self.optimizers)} optimizers (different optimizer/param_groups?)")
        self.model.load_state_dict(state["model"])
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(self.schedulers, state["schedulers"]):
            sch.load_state_dict(s)
        if state.get("loader") is not None and hasattr(self.loader, "load_state_dict"):
            self.loader.load_state_dict(state["loader"])
        self._set_rng_state(state["rng"])
        es = state["early_stopping"]
        self.best_value, self.best_epoch = es["best_value"], es["best_epoch"]
        self.best_metrics, self._bad_evals = dict(es["best_metrics"]), es["bad_evals"]
        self.stopped_early = bool(es.get("stopped", False))
        self._best_state = state["best_state"]
        self.history = list(state["history"])
        epoch = int(state["epoch"])
        self._finished = bool(state.get("finished")) and (self.stopped_early or epoch >= self.epochs - 1)
        self.model.on_epoch_end()
        return epoch + 1

    # -- evaluation ---------------------------------------------------------------------------------
    def _evaluate_model(self, evaluator: Any) -> dict[str, float]:
        model = self.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.world_size <= 1 or not _accepts(evaluator.evaluate, "users", "return_sums") \
                        or any(str(m).startswith("coverage") for m in getattr(evaluator, "metrics", ())):
                    return {k: float(v) for k, v in evaluator.evaluate(model).items()}
                users = getattr(evaluator, "users", None)
                if users is None:
                    users = torch.arange(model.n_users)
                users = torch.as_tensor(users, dtype=torch.int64).cpu()[self.rank::self.world_size]
                sums, counts = evaluator.evaluate(model, users=users, return_sums=True)
                sums, counts = rdist.reduce_metric_sums(sums, counts, self.device)
                return {k: (sums[k] / counts[k] if counts[k] else 0.0) for k in sums}
        finally:
            model.train(was_training)

    def evaluate(self, test: Any, *, evaluator: Any = None, exclude: Sequence[Any] | None = None) -> dict[str, float]:
        """Metrics of the model on a held-out split.

        By default a ``recfast.eval.Evaluator(train, test, exclude=[valid], **evaluator_kwargs)``
        ranks every item but the training (and validation) items; pass ``evaluator`` to use
        another one, ``exclude`` to choose the excluded splits. Multi-process runs shard the users.
        """
        self._setup()
        if evaluator is None:
            test_csr = _as_csr(test, "test")
            if test_csr is None or test_csr.shape != self.train.shape:
                raise ValueError(f"Trainer.evaluate: test must be a users x items matrix of shape {self.train.shape}, "
                                 f"got {None if test_csr is None else test_csr.shape}")
            ex = [self.valid] if exclude is None and self.valid is not None else [_as_csr(e, "exclude") for e in exclude or []]
            evaluator = self._make_evaluator(test_csr, exclude=ex)
        elif not callable(getattr(evaluator, "evaluate", None)):
            raise TypeError(f"Trainer.evaluate: evaluator must have an evaluate(model) method, got {type(evaluator).__name__}")
        return self._evaluate_model(evaluator)

    # -- logs -------------------------------------------------------------------------------------------
    def _progress_bar(self, epoch: int) -> Any:
        if not (self.progress and self.is_main and sys.stderr.isatty()):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            return None
        total = len(self.loader) if hasattr(self.loader, "__len__") else None
        return tqdm(total=total, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False, dynamic_ncols=True)

    @property
    def log_path(self) -> Path | None:
        return None if self.log_dir is None else self.log_dir / "log.jsonl"

    def _open_logs(self, *, resumed: bool) -> None:
        if not self.is_main or self.log_dir is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The log mirrors the history: a fresh run starts it anew, a resumed one rewrites the
        # records of the checkpoint (dropping any written after it, by the interrupted run).
        text = "".join(json.dumps(_jsonable(r)) + "\n" for r in (self.history if resumed else []))
        tmp = self.log_path.with_suffix(".jsonl.tmp")  # type: ignore[union-attr]
        tmp.write_text(text)
        os.replace(tmp, self.log_path)  # type: ignore[arg-type]
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self._tb = None
        else:
            self._tb = SummaryWriter(str(self.log_dir / "tensorboard"))

    def _log(self, rec: dict[str, Any]) -> None:
        if not self.is_main or self.log_dir is None:
            return
        with open(self.log_path, "a") as f:  # type: ignore[arg-type]
            f.write(json.dumps(_jsonable(rec)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._tb is not None:
            step = rec["epoch"]
            for key in ("loss", "samples_per_s", "lr"):
                if key in rec:
                    self._tb.add_scalar(f"train/{key}", rec[key], step)
            for k, v in rec.get("metrics", {}).items():
                self._tb.add_scalar(f"valid/{k}", v, step)
            self._tb.flush()

    def _close_logs(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def close(self) -> None:
        """Release the process group if this trainer created it (multi-process runs)."""
        rdist.destroy_if_created()


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
