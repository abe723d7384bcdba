"""Multi-process training on ``torch.distributed``: process-group setup, gradient synchronisation for
row-sparse embedding tables, and metric reduction.

Launch any script that calls ``recfast.Trainer(...).fit()`` (or ``recfast train``) with
``torchrun --nproc_per_node=N``. The trainer then

* joins the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``/``MASTER_PORT``), initialising it with ``gloo`` on CPU or ``nccl`` on CUDA when
  ``WORLD_SIZE > 1`` and nobody has yet; an already initialised group is used as it is;
* on CUDA, puts rank ``r`` on ``cuda:LOCAL_RANK``;
* shards each epoch: ``model.make_loader(..., rank=r, world_size=N)``;
* synchronises gradients: ``DistributedDataParallel`` all-reduces the dense parameters during
  backward; the row-sparse tables (``model.sparse_parameters()``, ignored by DDP) are synchronised
  after backward by ``all_reduce_sparse_grads``: each rank's coalesced rows and values are
  all-gathered (padded to the largest count, the padding dropped on receipt) and summed, so the
  cost is proportional to the rows the batches touched, not to the table size;
* evaluates a share of the users on each rank and adds the metric sums and counts across ranks
  (``reduce_metric_sums``), so the metrics equal a single-process evaluation exactly;
* writes checkpoints and logs from rank 0 only.

Gradients are averaged over ranks (as DDP does): with a loss that is a mean over its batch, N
ranks with batch B step like one process with batch N * B made of the ranks' batches.
"""

from __future__ import annotations

import atexit
import os
from typing import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["env_world", "init_distributed", "is_distributed", "all_reduce_sparse_grads", "reduce_metric_sums",
           "all_reduce_floats", "broadcast_module"]

_CREATED_HERE = False


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from an initialised group, else from torchrun's variables."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        return rank, world, int(os.environ.get("LOCAL_RANK", rank))
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """Join (or create) the process group when ``WORLD_SIZE > 1``; returns (rank, world, local_rank).

    The backend is ``nccl`` for CUDA training and ``gloo`` for CPU. A group this function creates is
    destroyed at interpreter exit.
    """
    global _CREATED_HERE
    rank, world, local = env_world()
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise RuntimeError("Trainer: WORLD_SIZE > 1 but this torch build has no torch.distributed")
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "RANK") if v not in os.environ]
        if missing:
            raise RuntimeError(f"Trainer: WORLD_SIZE={world} but {missing} are not set; launch with torchrun "
                               f"or initialise torch.distributed yourself")
        if device_type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        _CREATED_HERE = True
        atexit.register(_destroy)
    return rank, world, local


def _destroy() -> None:
    global _CREATED_HERE
    if _CREATED_HERE and dist.is_initialized():
        # Every rank is past its last collective before any tears the group down: gloo aborts the
        # process ("terminate called without an active exception") when a peer's group goes away
        # under a pending operation.
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()
    _CREATED_HERE = False


def destroy_if_created() -> None:
    """Tear down a process group that ``init_distributed`` created (no-op otherwise)."""
    _destroy()


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of rank ``src`` to the other ranks."""
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src)


def _rows_values(p: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
    g = p.grad
    if g is None:
        return (torch.empty(0, dtype=torch.int64, device=p.device),
                torch.empty((0, *p.shape[1:]), dtype=p.dtype, device=p.device))
    if g.is_sparse:
        g = g.coalesce()
        if g.sparse_dim() == 1:
            return g.indices()[0], g.values()
        g = g.to_dense()
    # A dense gradient of a table: every row takes part (correct, at the cost of a dense gather).
    return torch.arange(p.shape[0], device=p.device), g


@torch.no_grad()
def all_reduce_sparse_grads(params: Sequence[nn.Parameter], world_size: int) -> None:
    """Average the gradients of row-sparse tables over the ranks, in place.

    Every rank must call this with the same parameters in the same order. Each gradient (sparse
    COO with one sparse dimension, dense, or None) becomes its rows and values; the ranks exchange
    their row counts, then all-gather rows and values padded to the largest count, drop the padding
    and sum duplicate rows (coalesce). The result is a coalesced sparse gradient holding exactly
    the rows some rank touched (divided by ``world_size``); where the local gradient was dense it is
    stored dense again. Rows no rank touched stay absent, so lazy optimizers (SparseAdam) leave
    their moments alone exactly as in a single-process run.
    """
    if world_size <= 1 or not params:
        return
    parts = [_rows_values(p) for p in params]
    device = params[0].device
    counts = torch.tensor([r.numel() for r, _ in parts], dtype=torch.int64, device=device)
    gathered = [torch.empty_like(counts) for _ in range(world_size)]
    dist.all_gather(gathered, counts)
    all_counts = torch.stack(gathered).cpu()  # (world, n_params)
    for j, (p, (rows, vals)) in enumerate(zip(params, parts)):
        n = all_counts[:, j].tolist()
        m = max(n)
        was_dense = p.grad is not None and not p.grad.is_sparse
        if m == 0:
            p.grad = None
            continue
        pad = m - rows.numel()
        rows_p = torch.cat([rows.to(torch.int64), rows.new_zeros(pad, dtype=torch.int64)]) if pad else rows.to(torch.int64)
        vals_p = torch.cat([vals, vals.new_zeros((pad, *vals.shape[1:]))]) if pad else vals
        rows_all = [torch.empty_like(rows_p) for _ in range(world_size)]
        vals_all = [torch.empty_like(vals_p.contiguous()) for _ in range(world_size)]
        dist.all_gather(rows_all, rows_p.contiguous())
        dist.all_gather(vals_all, vals_p.contiguous())
        r = torch.cat([rows_all[k][: n[k]] for k in range(world_size)])
        v = torch.cat([vals_all[k][: n[k]] for k in range(world_size)])
        g = torch.sparse_coo_tensor(r.unsqueeze(0), v / world_size, p.shape, check_invariants=False).coalesce()
        p.grad = g.to_dense() if was_dense else g


def all_reduce_floats(values: Iterable[float], device: torch.device) -> list[float]:
    """Sums of the given numbers over the ranks (float64)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t)
    return t.tolist()


def reduce_metric_sums(sums: dict[str, float], counts: dict[str, int],
                       device: torch.device) -> tuple[dict[str, float], dict[str, int]]:
    """Add per-rank metric sums and counts over the ranks (every rank must hold the same keys)."""
    keys = sorted(sums)
    if sorted(counts) != keys:
        raise ValueError(f"Trainer: evaluator returned sums for {keys} but counts for {sorted(counts)}")
    total = all_reduce_floats([float(sums[k]) for k in keys] + [float(counts[k]) for k in keys], device)
    return ({k: total[i] for i, k in enumerate(keys)},
            {k: int(round(total[len(keys) + i])) for i, k in enumerate(keys)})
