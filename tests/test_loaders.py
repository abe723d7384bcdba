"""PairwiseLoader / PointwiseLoader: epoch coverage, order, seeding, sharding, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import recfast
from recfast.data import PairwiseLoader, PointwiseLoader
from conftest import requires_cuda


@pytest.fixture(scope="module")
def csr() -> recfast.CSR:
    return recfast.data.synthetic(200, 120, 3000, seed=3).to_csr()


def _pairs(users: torch.Tensor, items: torch.Tensor) -> list[tuple[int, int]]:
    return list(zip(users.tolist(), items.tolist()))


def _epoch(loader) -> tuple[torch.Tensor, ...]:
    parts = list(loader)
    return tuple(torch.cat([p[i] for p in parts]) for i in range(3))


def test_epoch_covers_every_interaction_once_with_valid_negatives(csr) -> None:
    loader = PairwiseLoader(csr, 256, seed=0)
    users, pos, neg = _epoch(loader)
    truth = sorted(zip(*[a.tolist() for a in np.nonzero(csr.to_scipy().toarray())]))
    assert sorted(_pairs(users, pos)) == truth
    assert len(loader) == -(-csr.nnz // 256)
    dense = csr.to_scipy().toarray() > 0
    assert not dense[users.numpy(), neg.numpy()].any()


def test_new_order_each_epoch_and_seeded(csr) -> None:
    a = PairwiseLoader(csr, 500, seed=1)
    e0, e1 = _epoch(a), _epoch(a)
    assert not torch.equal(e0[0], e1[0])
    b = PairwiseLoader(csr, 500, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(_epoch(b), e0))
    assert not torch.equal(_epoch(PairwiseLoader(csr, 500, seed=2))[0], e0[0])


def test_resume_mid_training_reproduces_the_epoch(csr) -> None:
    a = PairwiseLoader(csr, 333, seed=7)
    _epoch(a)
    state = a.state_dict()
    want = _epoch(a)
    b = PairwiseLoader(csr, 333, seed=7)
    b.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(_epoch(b), want))
    c = PairwiseLoader(csr, 333, seed=7)
    c.set_epoch(1)
    assert all(torch.equal(x, y) for x, y in zip(_epoch(c), want))


def test_batch_size_does_not_change_the_epoch(csr) -> None:
    """Negatives are keyed by global position: the same epoch whatever the batch size."""
    a = _epoch(PairwiseLoader(csr, 100, seed=4))
    b = _epoch(PairwiseLoader(csr, 1000, seed=4))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_ranks_take_disjoint_equal_shares_of_the_same_epoch(csr) -> None:
    whole = _epoch(PairwiseLoader(csr, 64, seed=5))
    shares = [_epoch(PairwiseLoader(csr, 64, seed=5, rank=r, world_size=3)) for r in range(3)]
    n = csr.nnz // 3
    assert all(s[0].numel() == n for s in shares)
    joined = [torch.cat([s[i] for s in shares]) for i in range(3)]
    assert all(torch.equal(j, w[: 3 * n]) for j, w in zip(joined, whole))
    assert len(PairwiseLoader(csr, 64, seed=5, rank=0, world_size=3)) == -(-n // 64)


def test_multiple_negatives_and_drop_last(csr) -> None:
    loader = PairwiseLoader(csr, 128, 3, seed=0, drop_last=True)
    batches = list(loader)
    assert len(batches) == len(loader) == csr.nnz // 128
    assert all(b[2].shape == (128, 3) for b in batches)


def test_no_shuffle_is_row_major(csr) -> None:
    users, pos, _ = _epoch(PairwiseLoader(csr, 77, seed=0, shuffle=False))
    assert torch.equal(pos, csr.indices.long())
    assert torch.equal(users, torch.repeat_interleave(torch.arange(csr.n_rows), csr.row_lengths()))


def test_pointwise_labels_and_fresh_negatives(csr) -> None:
    loader = PointwiseLoader(csr, 200, 4, seed=0)
    u0, i0, l0 = _epoch(loader)
    assert u0.numel() == 5 * csr.nnz and float(l0.sum()) == csr.nnz
    dense = csr.to_scipy().toarray() > 0
    assert np.array_equal(dense[u0.numpy(), i0.numpy()], l0.numpy() == 1)
    _, i1, l1 = _epoch(loader)
    assert not torch.equal(i0[l0 == 0].sort().values, i1[l1 == 0].sort().values)


def test_weighted_negatives(csr) -> None:
    w = torch.zeros(csr.n_cols)
    w[:60] = 1.0
    _, _, neg = _epoch(PairwiseLoader(csr, 512, seed=0, weights=w))
    assert int(neg.max()) < 60


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_fused_cpu_batches_equal_gather_then_sample(csr, k, weighted) -> None:
    """The CPU loaders' one-call batches are users[idx], items[idx] and sample_negatives' draws."""
    w = torch.rand(csr.n_cols, generator=torch.Generator().manual_seed(0)) + 0.1 if weighted else None
    for world_size, rank in ((1, 0), (3, 2)):
        loader = PairwiseLoader(csr, 97, k, seed=11, weights=w, rank=rank, world_size=world_size)
        loader.set_epoch(2)
        expected = []
        for position, idx in loader._batches():
            users = loader._users[idx]
            neg = recfast.ops.sample_negatives(csr, users, k, seed=loader.negative_seed(), weights=w,
                                               row_offset=position)
            expected.append((users, loader._items[idx], neg.squeeze(1) if k == 1 else neg))
        got = list(loader)
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            assert all(torch.equal(a, b) for a, b in zip(g, e))
    # Pointwise: the positives then the batch's negatives, before its shuffle.
    loader = PointwiseLoader(csr, 64, k, seed=3, shuffle=False, weights=w)
    for position, (users, items, labels) in zip(range(0, csr.nnz, 64), loader):
        n = min(64, csr.nnz - position)
        u = loader._users[position:position + n]
        neg = recfast.ops.sample_negatives(csr, u, k, seed=_epoch_seed_of(loader, 0), weights=w, row_offset=position)
        assert torch.equal(users, torch.cat([u, u.repeat_interleave(k)]))
        assert torch.equal(items, torch.cat([loader._items[position:position + n], neg.reshape(-1)]))


def _epoch_seed_of(loader, epoch: int) -> int:
    saved = loader.epoch
    loader.epoch = epoch
    try:
        return loader.negative_seed()
    finally:
        loader.epoch = saved


def test_errors(csr) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        PairwiseLoader(csr, 0, seed=0)
    with pytest.raises(ValueError, match="num_negatives must be >= 1"):
        PairwiseLoader(csr, 10, 0, seed=0)
    with pytest.raises(ValueError, match="rank < world_size"):
        PairwiseLoader(csr, 10, seed=0, rank=2, world_size=2)
    with pytest.raises(TypeError, match="csr must be a recfast.CSR"):
        PointwiseLoader(csr.to_scipy(), 10, seed=0)


def test_drops_into_a_hand_written_torch_loop(csr) -> None:
    """The loader is a plain iterable: a tiny MF trained by hand lowers its BPR loss."""
    torch.manual_seed(0)
    u = torch.nn.Embedding(csr.n_rows, 16)
    v = torch.nn.Embedding(csr.n_cols, 16)
    opt = torch.optim.Adam([*u.parameters(), *v.parameters()], lr=0.05)
    loader = PairwiseLoader(csr, 256, seed=0)
    losses = []
    for _ in range(8):
        for users, pos, neg in loader:
            x = (u(users) * (v(pos) - v(neg))).sum(-1)
            loss = torch.nn.functional.softplus(-x).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


@requires_cuda
def test_cuda_loader_gives_the_cpu_epoch() -> None:
    csr = recfast.data.synthetic(200, 120, 3000, seed=3).to_csr()
    cpu = _epoch(PairwiseLoader(csr, 256, 2, seed=9))
    gpu = _epoch(PairwiseLoader(csr, 256, 2, seed=9, device="cuda"))
    assert all(g.device.type == "cuda" and torch.equal(g.cpu(), c) for g, c in zip(gpu, cpu))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("weighted", [False, True])
def test_epoch_kernel_equals_the_order_array_path(index_dtype, weighted) -> None:
    """_C.sample_epoch_triples computes the epoch's Feistel order on the fly: its batches equal the
    order-array kernel fed with _C.bpr_epoch_order (or arange), for any thread count and split."""
    from recfast import _C
    from recfast.ops.sampling import _sample_epoch_triples, _sample_triples

    csr = recfast.data.synthetic(300, 150, 5000, seed=8).to_csr()
    csr = recfast.CSR(csr.indptr, csr.indices.to(index_dtype), csr.shape)
    row_of = torch.repeat_interleave(torch.arange(csr.n_rows), csr.row_lengths())
    w = torch.rand(csr.n_cols, generator=torch.Generator().manual_seed(1)) ** 3 if weighted else None
    for shuffle in (True, False):
        for start, length, k in ((0, csr.nnz, 1), (37, 2100, 3), (4999 - 70, 70, 2), (11, 0, 1)):
            order = (torch.from_numpy(_C.bpr_epoch_order(csr.nnz, 12345, start, start + length)) if shuffle
                     else torch.arange(start, start + length))
            want = _sample_triples(csr, row_of, order, k, seed=6, weights=w, row_offset=start)
            for threads in (1, 2, 3):
                got = _sample_epoch_triples(csr, row_of, shuffle, 12345, start, length, k, seed=6, weights=w,
                                            num_threads=threads)
                assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="start"):
        _sample_epoch_triples(csr, row_of, True, 0, csr.nnz - 5, 10, 1, seed=0)


def test_epoch_order_is_a_permutation_that_changes_with_the_epoch(csr) -> None:
    loader = PairwiseLoader(csr, 1000, seed=3)
    users0, pos0, _ = _epoch(loader)
    users1, pos1, _ = _epoch(loader)
    key0, key1 = users0 * csr.n_cols + pos0, users1 * csr.n_cols + pos1
    assert torch.equal(key0.sort().values, key1.sort().values)
    assert (key0 != key1).float().mean() > 0.9


@pytest.mark.parametrize("nnz", [1, 2, 3, 5, 17, 64, 1000, 4097])
def test_epoch_kernel_order_on_every_path(nnz) -> None:
    """The kernel's on-the-fly order (AVX-512 lanes and scalar) is bpr_epoch_order's, also for tiny
    and power-of-two-adjacent sizes."""
    from recfast import _C
    from recfast.ops.sampling import _sample_epoch_triples

    rows = torch.arange(nnz) % 7
    cols = torch.arange(nnz) // 7
    csr = recfast.CSR.from_coo(rows, cols, shape=(7, nnz // 7 + 2))
    row_of = torch.repeat_interleave(torch.arange(csr.n_rows), csr.row_lengths())
    want = torch.from_numpy(_C.bpr_epoch_order(nnz, 99, 0, nnz))
    previous = _C.sampling_isa()
    try:
        for isa in _C.sampling_isas():
            _C.set_sampling_isa(isa)
            users, items, _ = _sample_epoch_triples(csr, row_of, True, 99, 0, nnz, 1, seed=0)
            assert torch.equal(users, row_of[want]) and torch.equal(items, csr.indices.long()[want])
    finally:
        _C.set_sampling_isa(previous)
