"""Optimizers, parameter groups and learning-rate schedulers for ``recfast.Trainer``.

A model's parameters are split twice:

1. by **parameter group**: ``param_groups=[{"params": "bias", "optimizer": "sgd", "lr": 0.01}]``
   gives every parameter whose name (``model.named_parameters()``) matches the group's pattern its
   own optimizer, learning rate and options (Collie's slower optimizer for biases). ``params`` is a
   regular expression or a list of them, matched with ``re.search``, so a plain word matches as a
   substring of the name (``"bias"`` matches ``item_bias`` and ``mlp.0.bias``). Groups are tried in
   order and the first match wins; the parameters no group matches use the trainer's
   ``optimizer``/``lr``/``weight_decay``. A group matching no parameter is an error (a typo).
   Every other key of a group (``momentum``, ``betas``, ``eps``, ...) goes to the optimizer.
2. by **gradient layout**: the parameters listed by ``model.sparse_parameters()`` (embedding tables
   with row-sparse gradients) get the row-sparse version of their group's optimizer
   (``recfast.optim.SparseAdam``/``SparseSGD``/``SparseAdagrad``), the others the dense torch one.

So one model may train with several optimizers; the trainer steps them all and keeps their states
in its checkpoints. Each has its own scheduler (built from the same spec).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "SCHEDULERS", "build_optimizers", "build_schedulers", "check_optimizer", "check_param_groups",
           "parse_scheduler", "SchedulerSpec", "clip_grad_norm"]

#: optimizer name -> (dense torch class, name of the row-sparse class in recfast.optim or None)
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], str | None]] = {
    "adam": (torch.optim.Adam, "SparseAdam"),
    "sparse_adam": (torch.optim.Adam, "SparseAdam"),
    "adamw": (torch.optim.AdamW, "SparseAdam"),
    "sgd": (torch.optim.SGD, "SparseSGD"),
    "sparse_sgd": (torch.optim.SGD, "SparseSGD"),
    "adagrad": (torch.optim.Adagrad, "SparseAdagrad"),
    "sparse_adagrad": (torch.optim.Adagrad, "SparseAdagrad"),
    "rmsprop": (torch.optim.RMSprop, None),
}

#: short scheduler names -> torch.optim.lr_scheduler class names (any class name works as well)
SCHEDULERS: dict[str, str] = {
    "step": "StepLR",
    "multistep": "MultiStepLR",
    "exponential": "ExponentialLR",
    "cosine": "CosineAnnealingLR",
    "cosine_warm_restarts": "CosineAnnealingWarmRestarts",
    "linear": "LinearLR",
    "constant": "ConstantLR",
    "onecycle": "OneCycleLR",
    "plateau": "ReduceLROnPlateau",
}

def _sparse_class(name: str) -> Callable[..., torch.optim.Optimizer]:
    """The row-sparse optimizer class ``recfast.optim.<name>``.

    Where this build of recfast has no such class, torch's own sparse-capable optimizers stand in
    (torch.optim.SparseAdam for Adam, torch.optim.SGD and torch.optim.Adagrad, which accept sparse
    gradients): they are slower (several kernels per step) and take no ``weight_decay`` with
    sparse gradients, so a non-zero ``weight_decay`` is dropped with a warning.
    """
    from .. import optim as rf_optim

    cls = getattr(rf_optim, name, None)
    if cls is not None:
        return cls
    fallback = {"SparseAdam": torch.optim.SparseAdam, "SparseSGD": torch.optim.SGD,
                "SparseAdagrad": torch.optim.Adagrad}[name]

    def build(params: Sequence[nn.Parameter], lr: float, weight_decay: float = 0.0, **kw: Any) -> torch.optim.Optimizer:
        if weight_decay:
            warnings.warn(f"recfast.optim.{name} is not available; torch.optim.{fallback.__name__} stands in "
                          f"and ignores weight_decay={weight_decay} for row-sparse parameters", stacklevel=3)
        return fallback(list(params), lr=lr, **kw)

    return build


@dataclass
class _Group:
    name: str
    optimizer: Any
    lr: float
    weight_decay: float
    options: dict[str, Any]
    patterns: list[str] = field(default_factory=list)
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)


def check_optimizer(spec: Any, where: str) -> None:
    if callable(spec):
        return
    if not isinstance(spec, str) or spec.lower() not in OPTIMIZERS:
        raise ValueError(f"Trainer: {where} must be one of {sorted(OPTIMIZERS)} or a callable, got {spec!r}")


def check_param_groups(param_groups: Any) -> list[dict[str, Any]]:
    """Validate the ``param_groups`` spec (without a model); returns a list of dict copies."""
    if param_groups is None:
        return []
    if not isinstance(param_groups, (list, tuple)):
        raise ValueError(f"Trainer: param_groups must be a list of dicts, got {type(param_groups).__name__}")
    out = []
    for i, g in enumerate(param_groups):
        if not isinstance(g, dict):
            raise ValueError(f"Trainer: param_groups[{i}] must be a dict, got {type(g).__name__}")
        pats = g.get("params")
        if isinstance(pats, str):
            pats = [pats]
        if not pats or not isinstance(pats, (list, tuple)) or not all(isinstance(p, str) and p for p in pats):
            raise ValueError(f"Trainer: param_groups[{i}]['params'] must be a regular expression or a list of them "
                             f"(matched against parameter names), got {g.get('params')!r}")
        for p in pats:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"Trainer: param_groups[{i}]['params']: bad regular expression {p!r}: {e}") from None
        if "optimizer" in g:
            check_optimizer(g["optimizer"], f"param_groups[{i}]['optimizer']")
        for key in ("lr", "weight_decay"):
            if key in g and (isinstance(g[key], bool) or not isinstance(g[key], (int, float))
                             or g[key] < 0 or (key == "lr" and g[key] == 0)):
                raise ValueError(f"Trainer: param_groups[{i}]['{key}'] must be a {'positive' if key == 'lr' else 'non-negative'} "
                                 f"number, got {g[key]!r}")
        out.append({**g, "params": list(pats)})
    return out


def _instantiate(spec: Any, params: list[nn.Parameter], sparse: bool, lr: float, weight_decay: float,
                 options: dict[str, Any], label: str) -> torch.optim.Optimizer:
    if callable(spec) and not isinstance(spec, str):
        factory = spec
    else:
        dense_cls, sparse_name = OPTIMIZERS[spec.lower()]
        if sparse:
            if sparse_name is None:
                raise ValueError(f"Trainer: optimizer {spec!r} has no row-sparse version for the model's sparse "
                                 f"parameters ({label}); choose one of adam, sgd, adagrad")
            factory = _sparse_class(sparse_name)
        else:
            factory = dense_cls
    try:
        return factory(params, lr=lr, weight_decay=weight_decay, **options)
    except TypeError as e:
        raise ValueError(f"Trainer: cannot build optimizer {getattr(spec, '__name__', spec)!r} for {label}: {e}") from None


def build_optimizers(model: nn.Module, sparse_params: Sequence[nn.Parameter], *, optimizer: Any, lr: float,
                     weight_decay: float, optimizer_kwargs: dict[str, Any] | None = None,
                     param_groups: list[dict[str, Any]] | None = None) -> list[torch.optim.Optimizer]:
    """One optimizer per (parameter group, dense/row-sparse) pair that holds parameters.

    The order is deterministic (groups in the given order, then the default group; dense before
    sparse), so checkpoints map their states back one to one.
    """
    check_optimizer(optimizer, "optimizer")
    groups = [_Group(name=f"param_groups[{i}]", optimizer=g.get("optimizer", optimizer), lr=float(g.get("lr", lr)),
                     weight_decay=float(g.get("weight_decay", weight_decay)),
                     options={k: v for k, v in g.items() if k not in ("params", "optimizer", "lr", "weight_decay")},
                     patterns=list(g["params"]))
              for i, g in enumerate(check_param_groups(param_groups))]
    default = _Group(name="default", optimizer=optimizer, lr=float(lr), weight_decay=float(weight_decay),
                     options=dict(optimizer_kwargs or {}))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for n, p in named:
        for g in groups:
            if any(re.search(pat, n) for pat in g.patterns):
                g.params.append((n, p))
                break
        else:
            default.params.append((n, p))
    for g in groups:
        if not g.params:
            raise ValueError(f"Trainer: {g.name} {g.patterns} matches no parameter; the model's parameters are "
                             f"{[n for n, _ in named]}")
    sparse_ids = {id(p) for p in sparse_params}
    opts: list[torch.optim.Optimizer] = []
    for g in [*groups, default]:
        for sparse in (False, True):
            ps = [(n, p) for n, p in g.params if (id(p) in sparse_ids) == sparse]
            if ps:
                label = f"{'row-sparse' if sparse else 'dense'} parameters {[n for n, _ in ps]} ({g.name})"
                opts.append(_instantiate(g.optimizer, [p for _, p in ps], sparse, g.lr, g.weight_decay, g.options,
                                         label))
    return opts


# -- schedulers -----------------------------------------------------------------------------------
@dataclass
class SchedulerSpec:
    """A parsed ``scheduler`` argument: how to build one scheduler per optimizer and when to step it.

    ``interval`` is ``"epoch"`` (default: after each epoch) or ``"step"`` (after each batch);
    ``ReduceLROnPlateau`` steps after each evaluation with ``metric`` (default: the early-stopping
    metric).
    """

    factory: Callable[[torch.optim.Optimizer], Any]
    interval: str = "epoch"
    metric: str | None = None
    plateau: bool = False


def parse_scheduler(spec: Any) -> SchedulerSpec | None:
    """``None``; a name (``"cosine"``, ``"StepLR"``); a dict ``{"name": ..., "interval": ..., **kwargs}``;
    or a callable ``f(optimizer) -> scheduler``."""
    if spec is None:
        return None
    if callable(spec) and not isinstance(spec, (str, dict)):
        return SchedulerSpec(factory=spec)
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError(f"Trainer: scheduler must be a name, a dict with a 'name', or a callable, got {spec!r}")
    kwargs = dict(spec)
    name = kwargs.pop("name")
    interval = kwargs.pop("interval", "epoch")
    metric = kwargs.pop("metric", None)
    if interval not in ("epoch", "step"):
        raise ValueError(f"Trainer: scheduler interval must be 'epoch' or 'step', got {interval!r}")
    cls_name = SCHEDULERS.get(name.lower(), name)
    cls = getattr(torch.optim.lr_scheduler, cls_name, None)
    if not (isinstance(cls, type) and cls_name[0].isupper()):
        raise ValueError(f"Trainer: unknown scheduler {name!r}; use one of {sorted(SCHEDULERS)} or a "
                         f"torch.optim.lr_scheduler class name")
    plateau = cls is torch.optim.lr_scheduler.ReduceLROnPlateau

    def factory(opt: torch.optim.Optimizer) -> Any:
        try:
            return cls(opt, **kwargs)
        except TypeError as e:
            raise ValueError(f"Trainer: cannot build scheduler {name!r} with {kwargs}: {e}") from None

    return SchedulerSpec(factory=factory, interval="epoch" if plateau else interval, metric=metric, plateau=plateau)


def build_schedulers(spec: SchedulerSpec | None, optimizers: Sequence[torch.optim.Optimizer]) -> list[Any]:
    return [] if spec is None else [spec.factory(o) for o in optimizers]


# -- gradient clipping ------------------------------------------------------------------------------
@torch.no_grad()
def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Scale all gradients (dense or sparse COO) so that their joint L2 norm is at most ``max_norm``;
    returns the norm before clipping as a 0-d tensor (no host synchronisation). Sparse gradients
    are coalesced first (repeated rows summed), so the norm is that of the gradient they represent."""
    sq = []
    grads = []
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            if not g.is_coalesced():
                g = p.grad = g.coalesce()
            sq.append(g._values().float().pow(2).sum())
        else:
            sq.append(g.float().pow(2).sum())
        grads.append(g)
    if not sq:
        return torch.zeros(())
    total = torch.stack([s.to(sq[0].device) for s in sq]).sum().sqrt()
    coef = (float(max_norm) / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.device, g.dtype))
    return total
