"""Autoencoders over user rows: ``MultVAE`` (Liang et al., WWW 2018) and ``DAE`` (a Recoder-style
denoising autoencoder, Abdullah et al. 2018).

Both are trained on batches of user ids (``batch_kind = "rows"``, ``UserRowLoader``): the model
reads those users' rows of the training matrix (``self.train_csr``, binarized) as a dense
(B, n_items) tensor with torch gathers, and reconstructs them. ``score_users(users)`` is the
reconstruction (logits) from the users' training rows, so the models score users seen in
training, and new users through ``score_rows``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..csr import CSR
from ..registry import register_model
from ._loaders import IndexBatchLoader, csr_on, dense_rows, rows_coo
from .base import Recommender

__all__ = ["MultVAE", "DAE", "UserRowLoader"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "elu": F.elu,
    "selu": F.selu,
    "leaky_relu": F.leaky_relu,
    "identity": lambda x: x,
}


class UserRowLoader(IndexBatchLoader):
    """Batches ``(users int64,)`` of user ids in a seeded order per epoch (see ``IndexBatchLoader``).

    Parameters
    ----------
    users : the user ids to walk (e.g. the users with at least one training item).
    batch_size, seed, shuffle, device, rank, world_size : as ``IndexBatchLoader``.

    Examples
    --------
    >>> import torch
    >>> loader = UserRowLoader(torch.arange(5), 2, seed=0)
    >>> len(loader), sorted(torch.cat([b[0] for b in loader]).tolist())
    (3, [0, 1, 2, 3, 4])
    """

    def __init__(self, users: torch.Tensor, batch_size: int, *, seed: int, shuffle: bool = True,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1) -> None:
        users = torch.as_tensor(users)
        if users.dim() != 1 or users.dtype.is_floating_point:
            raise ValueError(f"UserRowLoader: users must be a 1-D integer tensor, got {users.dtype} {tuple(users.shape)}")
        super().__init__(users.numel(), batch_size, seed=seed, shuffle=shuffle, device=device, rank=rank,
                         world_size=world_size)
        self.users = users.to(self.device, torch.int64)

    def _make_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.users[idx],)


def _batch_users(name: str, batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        if len(batch) != 1:
            raise ValueError(f"{name}.loss: expected a rows batch (users,), got a tuple of length {len(batch)}")
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.dim() != 1 or batch.dtype.is_floating_point:
        raise ValueError(f"{name}.loss: expected a 1-D integer tensor of user ids, got {type(batch).__name__}")
    return batch.long()


def _activation(name: str, activation: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{name}: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    return _ACTIVATIONS[activation]


def _check_dims(name: str, arg: str, dims: Sequence[int]) -> list[int]:
    dims = [int(x) for x in dims]
    if not dims or any(x <= 0 for x in dims):
        raise ValueError(f"{name}: {arg} must be a non-empty list of positive widths, got {dims}")
    return dims


class _RowModel(Recommender):
    """Shared plumbing of models trained on user rows."""

    batch_kind = "rows"

    def make_loader(self, train: CSR, batch_size: int, *, seed: int, device: str | torch.device = "cpu",
                    rank: int = 0, world_size: int = 1) -> UserRowLoader:
        """``UserRowLoader`` over the users with at least one training item."""
        if self.train_csr is None:
            self.prepare(train)
        users = torch.nonzero(train.to("cpu").row_lengths() > 0).flatten()
        return UserRowLoader(users, batch_size, seed=seed, device=device, rank=rank, world_size=world_size)

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _train_on_device(self) -> CSR:
        if self.train_csr is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare(train) first (the model reads users' training rows)")
        return csr_on(self, self.train_csr, self._device())

    def user_rows(self, users: torch.Tensor) -> torch.Tensor:
        """The users' binarized training rows as a dense (len(users), n_items) float32 tensor."""
        return dense_rows(self._train_on_device(), users.to(self._device(), torch.int64))

    def score_rows(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def score_users(self, users: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits (len(users), n_items) from the users' training rows (eval mode)."""
        users = torch.as_tensor(users, dtype=torch.int64)
        was = self.training
        self.eval()
        try:
            return self.score_rows(self.user_rows(users))
        finally:
            self.train(was)


@register_model("MultVAE")
class MultVAE(_RowModel):
    """Variational autoencoder with a multinomial likelihood (Mult-VAE^PR).

    Parameters
    ----------
    hidden_dims : encoder hidden widths (the decoder mirrors them); the paper's ``[600]``.
    latent_dim : size of z (the paper's 200).
    dropout : dropout on the L2-normalized input rows while training (0.5).
    anneal_cap : the largest KL weight beta (0.2).
    total_anneal_steps : beta grows linearly from 0 to ``anneal_cap`` over this many training
        steps (``loss`` calls in training mode); 0 uses ``anneal_cap`` from the start.
    activation : between hidden layers ("tanh").

    The step counter is the buffer ``anneal_step`` (saved with the weights).
    """

    def __init__(self, n_users: int, n_items: int, *, hidden_dims: Sequence[int] = (600,), latent_dim: int = 200,
                 dropout: float = 0.5, anneal_cap: float = 0.2, total_anneal_steps: int = 200_000,
                 activation: str = "tanh") -> None:
        hidden = _check_dims("MultVAE", "hidden_dims", hidden_dims) if len(hidden_dims) else []
        if int(latent_dim) <= 0:
            raise ValueError(f"MultVAE: latent_dim must be positive, got {latent_dim}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"MultVAE: dropout must be in [0, 1), got {dropout}")
        if float(anneal_cap) < 0 or int(total_anneal_steps) < 0:
            raise ValueError(f"MultVAE: anneal_cap and total_anneal_steps must be >= 0, got {anneal_cap}, {total_anneal_steps}")
        act = _activation("MultVAE", activation)
        super().__init__(n_users, n_items, hidden_dims=hidden, latent_dim=int(latent_dim), dropout=float(dropout),
                         anneal_cap=float(anneal_cap), total_anneal_steps=int(total_anneal_steps), activation=activation)
        self._act = act
        enc = [self.n_items, *hidden]
        dec = [int(latent_dim), *reversed(hidden), self.n_items]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(enc[:-1], enc[1:]))
        self.to_latent = nn.Linear(enc[-1], 2 * int(latent_dim))
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dec[:-1], dec[1:]))
        for lin in [*self.encoder, self.to_latent, *self.decoder]:  # the paper's initialisation
            nn.init.xavier_uniform_(lin.weight)
            nn.init.normal_(lin.bias, std=0.001)
        self.register_buffer("anneal_step", torch.zeros((), dtype=torch.int64))
        self.last_kl: torch.Tensor | None = None  # the KL term of the last loss call (detached)
        self.last_beta = 0.0

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) of q(z | rows); input dropout applies in training mode."""
        h = F.normalize(rows, dim=1)
        h = F.dropout(h, self.params["dropout"], self.training)
        for lin in self.encoder:
            h = self._act(lin(h))
        mu, logvar = self.to_latent(h).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for j, lin in enumerate(self.decoder):
            h = lin(h)
            if j < len(self.decoder) - 1:
                h = self._act(h)
        return h

    def score_rows(self, rows: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(rows)
        return self.decode(mu)

    def beta(self) -> float:
        """The KL weight of the next training step."""
        total, cap = self.params["total_anneal_steps"], self.params["anneal_cap"]
        return cap if total == 0 else min(cap, int(self.anneal_step) / total)

    def loss(self, batch: Any) -> torch.Tensor:
        """Multinomial negative log-likelihood plus beta * KL, averaged over the batch's users."""
        users = _batch_users("MultVAE", batch)
        x = self.user_rows(users)
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        logits = self.decode(z)
        nll = -(F.log_softmax(logits, dim=1) * x).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
        beta = self.beta()
        if self.training:
            self.anneal_step += 1
        self.last_kl, self.last_beta = kl.detach(), beta
        return nll + beta * kl


@register_model("DAE")
class DAE(_RowModel):
    """A Recoder-style denoising autoencoder over user rows.

    ``rows -> dropout(noise_prob) -> act(W_in) -> hidden layers -> mirrored layers -> W_out``.

    Parameters
    ----------
    hidden_dims : encoder widths ``[h0, h1, ...]``; the decoder mirrors them back to ``h0``.
    activation : after every hidden layer ("tanh", "relu", "sigmoid", "elu", "selu",
        "leaky_relu", "identity").
    noise_prob : input dropout (the denoising corruption).
    dropout : dropout on the code (the innermost layer) while training.
    loss : "multinomial" (log-softmax likelihood), "bce" (logistic, on every column) or "mse"
        (squared error of the raw outputs); each is summed over the columns and averaged over users.
    sampled_items : Recoder's mini-batch sampling: the input and output layers are restricted
        to the union of the batch's items (plus ``num_sampled_negatives`` uniform items), and
        the loss is computed on those columns only.
    num_sampled_negatives : extra uniformly drawn items per batch when ``sampled_items``.
    sparse : with ``sampled_items``, the item tables (``in_weight``, ``out_weight``,
        ``out_bias``) give row-sparse gradients (listed by ``sparse_parameters()``).
    """

    def __init__(self, n_users: int, n_items: int, *, hidden_dims: Sequence[int] = (200,), activation: str = "tanh",
                 noise_prob: float = 0.5, dropout: float = 0.0, loss: str = "multinomial", sampled_items: bool = False,
                 num_sampled_negatives: int = 0, sparse: bool = True) -> None:
        hidden = _check_dims("DAE", "hidden_dims", hidden_dims)
        act = _activation("DAE", activation)
        for arg, p in (("noise_prob", noise_prob), ("dropout", dropout)):
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"DAE: {arg} must be in [0, 1), got {p}")
        if loss not in ("multinomial", "bce", "mse"):
            raise ValueError(f"DAE: loss must be 'multinomial', 'bce' or 'mse', got {loss!r}")
        if int(num_sampled_negatives) < 0:
            raise ValueError(f"DAE: num_sampled_negatives must be >= 0, got {num_sampled_negatives}")
        super().__init__(n_users, n_items, hidden_dims=hidden, activation=activation, noise_prob=float(noise_prob),
                         dropout=float(dropout), loss=loss, sampled_items=bool(sampled_items),
                         num_sampled_negatives=int(num_sampled_negatives), sparse=bool(sparse))
        self._act = act
        h0 = hidden[0]
        bound = 1.0 / (self.n_items ** 0.5)
        self.in_weight = nn.Parameter(torch.empty(self.n_items, h0).uniform_(-bound, bound))
        self.in_bias = nn.Parameter(torch.zeros(h0))
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(hidden[:-1], hidden[1:]))
        rev = list(reversed(hidden))
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(rev[:-1], rev[1:]))
        self.out_weight = nn.Parameter(torch.empty(self.n_items, h0))
        nn.init.xavier_uniform_(self.out_weight)
        self.out_bias = nn.Parameter(torch.zeros(self.n_items, 1))

    def _hidden(self, h: torch.Tensor) -> torch.Tensor:
        h = self._act(h)
        for lin in self.encoder:
            h = self._act(lin(h))
        if self.params["dropout"] > 0:
            h = F.dropout(h, self.params["dropout"], self.training)
        for lin in self.decoder:
            h = self._act(lin(h))
        return h

    def score_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Outputs for every item from dense rows (len(rows), n_items): logits, or raw values for "mse"."""
        x = F.dropout(rows, self.params["noise_prob"], self.training)
        h = self._hidden(x @ self.in_weight + self.in_bias)
        return h @ self.out_weight.T + self.out_bias.squeeze(-1)

    def _column_loss(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        kind = self.params["loss"]
        if kind == "multinomial":
            per_user = -(F.log_softmax(out, dim=1) * x).sum(1)
        elif kind == "bce":
            per_user = F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(1)
        else:
            per_user = (out - x).pow(2).sum(1)
        return per_user.mean()

    def loss(self, batch: Any) -> torch.Tensor:
        """The reconstruction loss of the batch's rows (on the sampled columns with ``sampled_items``)."""
        users = _batch_users("DAE", batch)
        if not self.params["sampled_items"]:
            x = self.user_rows(users)
            return self._column_loss(self.score_rows(x), x)
        dev = self._device()
        row, cols, _ = rows_coo(self._train_on_device(), users.to(dev))
        k = self.params["num_sampled_negatives"]
        cand = torch.cat([cols, torch.randint(self.n_items, (k,), device=dev)]) if k else cols
        items = torch.unique(cand)  # sorted
        if items.numel() == 0:  # no item anywhere in the batch: nothing to reconstruct
            return self.in_weight.sum() * 0.0
        x = torch.zeros(users.numel(), items.numel(), device=dev)
        x[row, torch.searchsorted(items, cols)] = 1.0
        sp = self.params["sparse"]
        w_in = F.embedding(items, self.in_weight, sparse=sp)
        w_out = F.embedding(items, self.out_weight, sparse=sp)
        b_out = F.embedding(items, self.out_bias, sparse=sp).squeeze(-1)
        xin = F.dropout(x, self.params["noise_prob"], self.training)
        h = self._hidden(xin @ w_in + self.in_bias)
        return self._column_loss(h @ w_out.T + b_out, x)

    def sparse_parameters(self) -> list[nn.Parameter]:
        if self.params["sampled_items"] and self.params["sparse"]:
            return [self.in_weight, self.out_weight, self.out_bias]
        return []
