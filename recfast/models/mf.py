"""BPR matrix factorisation (Rendle et al. 2009) on the fused BPR kernels."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ..csr import CSR
from ..registry import register_model
from .base import Recommender

__all__ = ["BPRMF"]


@register_model("BPRMF")
class BPRMF(Recommender):
    """Matrix factorisation trained with the BPR pairwise loss.

    Two ways to train:

    * ``recfast.Trainer(model, train, ...)``: ``loss`` is ``ops.bpr_loss`` with row-sparse
      gradients, and the trainer gives the tables a row-sparse optimizer;
    * ``model.fit_sgd(train, epochs=..., lr=...)``: the fused fast path, ``ops.bpr_sgd_epoch``
      kernel calls that shuffle, sample, score and update in place (Hogwild on CPU, as implicit
      does; bit-reproducible with ``num_threads=1``).

    Parameters
    ----------
    dim : embedding size.
    item_bias : learn a per-item bias.
    l2 : L2 penalty on the gathered rows (LightGCN's form, see ``ops.bpr_loss``).
    init_std : standard deviation of the normal initialisation.
    num_negatives : negatives per positive.

    Example
    -------
    >>> import recfast, torch
    >>> train = recfast.data.synthetic(100, 50, 2000, seed=0).to_csr()
    >>> model = recfast.models.BPRMF(100, 50, dim=16)
    >>> _ = model.fit_sgd(train, epochs=2, lr=0.05, seed=0)
    >>> model.recommend(torch.tensor([0]), k=3)[0].shape
    torch.Size([1, 3])
    """

    batch_kind = "pairwise"

    def __init__(self, n_users: int, n_items: int, *, dim: int = 64, item_bias: bool = False, l2: float = 0.0,
                 init_std: float = 0.1, num_negatives: int = 1, seed: int = 0) -> None:
        super().__init__(n_users, n_items, dim=dim, item_bias=item_bias, l2=l2, init_std=init_std,
                         num_negatives=num_negatives, seed=seed)
        if dim <= 0:
            raise ValueError(f"BPRMF: dim must be positive, got {dim}")
        if num_negatives <= 0:
            raise ValueError(f"BPRMF: num_negatives must be positive, got {num_negatives}")
        g = torch.Generator().manual_seed(int(seed))
        self.dim = int(dim)
        self.l2 = float(l2)
        self.num_negatives = int(num_negatives)
        self.user_emb = nn.Parameter(torch.randn(n_users, dim, generator=g) * init_std)
        self.item_emb = nn.Parameter(torch.randn(n_items, dim, generator=g) * init_std)
        self.item_bias = nn.Parameter(torch.zeros(n_items)) if item_bias else None

    def loss(self, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        from .. import ops

        users, pos, neg = batch[:3]
        return ops.bpr_loss(self.user_emb, self.item_emb, users, pos, neg, item_bias=self.item_bias, l2=self.l2,
                            sparse_grad=True)

    def sparse_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.user_emb, self.item_emb, self.item_bias) if p is not None]

    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        b = self.item_bias.detach() if self.item_bias is not None else None
        return self.user_emb.detach(), self.item_emb.detach(), b

    @torch.no_grad()
    def fit_sgd(self, train: CSR, *, epochs: int = 10, lr: float = 0.05, batch_size: int = 1 << 20, seed: int = 0,
                num_threads: int | None = None, shuffle: bool = True, verbose: bool = False) -> list[dict[str, Any]]:
        """The fused fast path: each epoch is a few ``ops.bpr_sgd_epoch`` calls (sample, score, update).

        Every epoch visits each stored entry of ``train`` once, in a new seeded order (a Feistel
        permutation computed inside the kernel), with exact negatives; ``batch_size`` positions go to
        each kernel call (chunking does not change the result). Updates are Hogwild across threads
        (as implicit's): bit-reproducible for a seed with ``num_threads=1``, not bitwise with more.

        Returns one record per epoch: mean loss, samples/s and seconds.
        """
        from .. import ops
        from ..data.loaders import _epoch_seed

        self.prepare(train)
        if self.user_emb.device.type != "cpu":
            raise ValueError("BPRMF.fit_sgd: the fused step runs on CPU tables; on CUDA train with recfast.Trainer")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"BPRMF.fit_sgd: batch_size must be a positive int, got {batch_size!r}")
        train = train.to("cpu")
        bias = None if self.item_bias is None else self.item_bias.data
        history = []
        for epoch in range(int(epochs)):
            epoch_seed = _epoch_seed(seed, epoch, 1)
            t0 = time.perf_counter()
            total, n = 0.0, 0
            for start in range(0, train.nnz, batch_size):
                t, c = ops.bpr_sgd_epoch(self.user_emb.data, self.item_emb.data, train, lr=lr, seed=epoch_seed,
                                         l2=self.l2, num_negatives=self.num_negatives, item_bias=bias, start=start,
                                         stop=min(start + batch_size, train.nnz), shuffle=shuffle,
                                         num_threads=num_threads)
                total += t
                n += c
            dt = time.perf_counter() - t0
            rec = {"epoch": epoch, "loss": total / max(n, 1), "samples_per_s": n / dt if dt > 0 else 0.0, "seconds": dt}
            history.append(rec)
            if verbose:
                print(f"epoch {epoch}: loss {rec['loss']:.4f}  {rec['samples_per_s'] / 1e6:.2f} M samples/s")
        return history
