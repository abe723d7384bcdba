"""sample_negatives: exactness, distribution, determinism, reference parity, errors, CUDA parity."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recfast
from recfast.ops import sample_negatives
from recfast.ops.sampling import _sample_negatives_reference as _sample_negatives_ref
from recfast.ops.sampling import _weighted_tables
from conftest import random_csr, requires_cuda


def _assert_never_positive(csr: recfast.CSR, users: torch.Tensor, neg: torch.Tensor) -> None:
    dense = csr.to("cpu").to_scipy().toarray() > 0
    u = users.cpu().numpy()
    n = neg.cpu().numpy()
    assert np.all((n >= 0) & (n < csr.n_cols))
    assert not dense[u[:, None], n].any(), "a negative is one of the user's positives"


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("replace", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2**63 + 5])
def test_matches_reference_exactly(device, index_dtype, replace, weighted, seed) -> None:
    csr = random_csr(60, 40, 0.3, seed=seed % 97, index_dtype=index_dtype).to(device)
    users = torch.randint(0, 60, (123,), generator=torch.Generator().manual_seed(seed % 13)).to(device)
    w = (torch.rand(40, generator=torch.Generator().manual_seed(3)) ** 2).to(device) if weighted else None
    got = sample_negatives(csr, users, 5, seed=seed, replace=replace, weights=w)
    want = _sample_negatives_ref(csr, users, 5, seed=seed, replace=replace, weights=w)
    assert got.dtype == torch.int64 and got.shape == (123, 5) and got.device.type == device
    assert torch.equal(got.cpu(), want)
    _assert_never_positive(csr, users, got)


def test_dense_user_costs_nothing_special_and_is_exact() -> None:
    """A user with 99% of the catalogue still gets exact negatives (no retry loop to hang in)."""
    n_items = 1000
    rows = np.zeros(990, dtype=np.int64)
    cols = np.random.default_rng(0).choice(n_items, 990, replace=False)
    csr = recfast.CSR.from_coo(torch.from_numpy(rows), torch.from_numpy(cols), shape=(1, n_items))
    users = torch.zeros(20_000, dtype=torch.int64)
    neg = sample_negatives(csr, users, 1, seed=0)
    allowed = set(range(n_items)) - set(cols.tolist())
    assert set(neg.view(-1).tolist()) == allowed  # every one of the 10 candidates, nothing else


def test_uniform_chi_square_over_complement() -> None:
    csr = random_csr(3, 50, 0.4, seed=4)
    users = torch.full((50_000,), 1, dtype=torch.int64)
    neg = sample_negatives(csr, users, 1, seed=11).view(-1).numpy()
    complement = np.setdiff1d(np.arange(50), csr.row(1).numpy())
    counts = np.array([(neg == i).sum() for i in complement])
    assert counts.sum() == neg.size
    assert scipy.stats.chisquare(counts).pvalue > 1e-4


def test_weighted_chi_square_over_complement() -> None:
    csr = random_csr(3, 40, 0.3, seed=5)
    w = torch.rand(40, generator=torch.Generator().manual_seed(1)) + 0.05
    w[7] = 0.0  # zero weight: never drawn
    users = torch.full((60_000,), 2, dtype=torch.int64)
    neg = sample_negatives(csr, users, 1, seed=3, weights=w).view(-1).numpy()
    complement = np.setdiff1d(np.arange(40), csr.row(2).numpy())
    assert 7 not in set(neg.tolist())
    complement = complement[complement != 7]
    expected = w.numpy()[complement].astype(np.float64)
    expected = expected / expected.sum() * neg.size
    counts = np.array([(neg == i).sum() for i in complement])
    assert counts.sum() == neg.size
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-4


def test_without_replacement_rows_are_distinct_and_fill_the_complement() -> None:
    csr = random_csr(40, 30, 0.5, seed=6)
    users = torch.arange(40)
    deg = csr.row_lengths()
    k = int(30 - deg.max())
    neg = sample_negatives(csr, users, k, seed=2, replace=False)
    for row in neg.tolist():
        assert len(set(row)) == k
    _assert_never_positive(csr, users, neg)
    # Asking for the whole complement returns exactly the complement.
    u = int(torch.argmax(deg))
    full = sample_negatives(csr, torch.tensor([u]), 30 - int(deg[u]), seed=2, replace=False)
    assert sorted(full[0].tolist()) == sorted(set(range(30)) - set(csr.row(u).tolist()))


def test_weighted_without_replacement_is_distinct() -> None:
    csr = random_csr(20, 25, 0.3, seed=8)
    w = torch.rand(25) + 0.01
    neg = sample_negatives(csr, torch.arange(20), 8, seed=1, replace=False, weights=w)
    for row in neg.tolist():
        assert len(set(row)) == 8
    _assert_never_positive(csr, torch.arange(20), neg)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_same_output_for_any_thread_count_and_batch_split(threads, weighted) -> None:
    # Small batches are split into fewer rows per thread than large ones; the split never shows.
    csr = random_csr(500, 300, 0.05, seed=9)
    w = torch.rand(300, generator=torch.Generator().manual_seed(3)) ** 2 if weighted else None
    users = torch.randint(0, 500, (5003,), generator=torch.Generator().manual_seed(0))
    whole = sample_negatives(csr, users, 3, seed=42, num_threads=1, weights=w)
    assert torch.equal(sample_negatives(csr, users, 3, seed=42, num_threads=threads, weights=w), whole)
    parts = [sample_negatives(csr, users[a:b], 3, seed=42, row_offset=a, num_threads=threads, weights=w)
             for a, b in ((0, 1000), (1000, 1001), (1001, 1200), (1200, 5003))]
    assert torch.equal(torch.cat(parts), whole)


def test_different_seeds_differ_and_repeat_runs_agree() -> None:
    csr = random_csr(50, 200, 0.05, seed=10)
    users = torch.arange(50).repeat(20)
    a = sample_negatives(csr, users, 2, seed=1)
    assert torch.equal(a, sample_negatives(csr, users, 2, seed=1))
    assert not torch.equal(a, sample_negatives(csr, users, 2, seed=2))


@pytest.mark.parametrize("case", ["empty_batch", "zero_negatives", "empty_rows", "empty_rows_weighted", "one_item"])
def test_edge_cases(case) -> None:
    if case == "empty_batch":
        out = sample_negatives(random_csr(5, 5, 0.2), torch.empty(0, dtype=torch.int64), 3, seed=0)
        assert out.shape == (0, 3)
    elif case == "zero_negatives":
        out = sample_negatives(random_csr(5, 5, 0.2), torch.arange(5), 0, seed=0)
        assert out.shape == (5, 0)
    elif case == "empty_rows":
        csr = recfast.CSR(torch.zeros(4, dtype=torch.int64), torch.empty(0, dtype=torch.int32), (3, 6))
        out = sample_negatives(csr, torch.tensor([0, 2]), 6, seed=0, replace=False)
        assert sorted(out[0].tolist()) == list(range(6))
    elif case == "empty_rows_weighted":
        # Empty rows between full ones: each row's keys end with its mass (an empty row has only
        # that key), in the lanes with a guide table (a batch of 200) and in the per-row code.
        csr = recfast.CSR(torch.tensor([0, 0, 3, 3, 5]), torch.tensor([1, 4, 5, 0, 2], dtype=torch.int32), (4, 6))
        w = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 0.25], dtype=torch.float64)
        users = torch.arange(200) % 4
        for n in (200, 3):
            for replace in (True, False):
                out = sample_negatives(csr, users[:n], 2, seed=3, weights=w, replace=replace)
                assert torch.equal(out, _sample_negatives_ref(csr, users[:n], 2, seed=3, weights=w, replace=replace))
                _assert_never_positive(csr, users[:n], out)
                assert bool((w[out] > 0).all())
    else:
        csr = recfast.CSR(torch.tensor([0, 0, 1]), torch.tensor([0], dtype=torch.int32), (2, 1))
        assert sample_negatives(csr, torch.tensor([0, 0]), 2, seed=0).tolist() == [[0, 0], [0, 0]]
        with pytest.raises(ValueError, match="user 1 has no negative"):
            sample_negatives(csr, torch.tensor([0, 1]), 1, seed=0)


def test_user_with_every_item_is_named() -> None:
    csr = recfast.CSR(torch.tensor([0, 2, 3]), torch.tensor([0, 1, 1], dtype=torch.int32), (2, 2))
    with pytest.raises(ValueError, match="user 0 has no negative item left"):
        sample_negatives(csr, torch.tensor([1, 0]), 1, seed=0)
    with pytest.raises(ValueError, match="user 1 has 1 unseen items, fewer than num_negatives=2"):
        sample_negatives(csr, torch.tensor([1]), 2, seed=0, replace=False)
    with pytest.raises(ValueError, match="user 0 has no weighted mass"):
        sample_negatives(csr, torch.tensor([0]), 1, seed=0, weights=torch.ones(2))
    with pytest.raises(ValueError, match="user 1 has no weighted mass"):
        sample_negatives(csr, torch.tensor([1]), 1, seed=0, weights=torch.tensor([0.0, 1.0]))


def test_errors_name_the_argument() -> None:
    csr = random_csr(5, 8, 0.3)
    u = torch.arange(5)
    with pytest.raises(TypeError, match="csr must be a recfast.CSR"):
        sample_negatives(csr.to_scipy(), u, seed=0)
    with pytest.raises(TypeError, match="users must be a int32 or int64 tensor, got float32"):
        sample_negatives(csr, u.float(), seed=0)
    with pytest.raises(ValueError, match="users must have 1 dimensions"):
        sample_negatives(csr, u.view(5, 1), seed=0)
    with pytest.raises(ValueError, match="users holds id 5, expected 0 <= id < 5"):
        sample_negatives(csr, torch.tensor([5]), seed=0)
    with pytest.raises(ValueError, match="users holds id -1"):
        sample_negatives(csr, torch.tensor([-1]), seed=0)
    with pytest.raises(ValueError, match="num_negatives must be a non-negative int"):
        sample_negatives(csr, u, -1, seed=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        sample_negatives(csr, u, seed=1.5)
    with pytest.raises(ValueError, match="weights has 3 entries, expected n_items = 8"):
        sample_negatives(csr, u, weights=torch.ones(3), seed=0)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        sample_negatives(csr, u, weights=-torch.ones(8), seed=0)
    with pytest.raises(ValueError, match="weights must be finite"):
        sample_negatives(csr, u, weights=torch.full((8,), float("nan")), seed=0)
    with pytest.raises(TypeError, match="weights must be a float32 or float64"):
        sample_negatives(csr, u, weights=torch.ones(8, dtype=torch.int64), seed=0)
    with pytest.raises(ValueError, match="row_offset must be a non-negative int"):
        sample_negatives(csr, u, row_offset=-2, seed=0)


def test_weighted_cache_follows_in_place_changes() -> None:
    csr = random_csr(4, 10, 0.2, seed=1)
    w = torch.ones(10)
    sample_negatives(csr, torch.arange(4), 1, seed=0, weights=w)
    w.zero_()
    w[9] = 1.0
    users = torch.tensor([u for u in range(4) if 9 not in csr.row(u).tolist()])
    out = sample_negatives(csr, users, 5, seed=0, weights=w)
    assert (out == 9).all()


def test_weighted_cache_does_not_outlive_the_weights_tensor() -> None:
    """A new weights tensor at a freed one's address (same data_ptr, same _version) is not a hit."""
    csr = random_csr(4, 10, 0.2, seed=1)
    users = torch.tensor([u for u in range(4) if not {3, 8} & set(csr.row(u).tolist())])
    assert users.numel() > 0
    buf = np.zeros(10, dtype=np.float32)
    for target in (3, 8, 3):
        # from_numpy over one buffer: the same address and version 0 every time, different contents.
        buf[:] = 0.0
        buf[target] = 1.0
        w = torch.from_numpy(buf)
        assert (sample_negatives(csr, users, 4, seed=0, weights=w) == target).all()
        del w
    # Freed and reallocated by torch (the allocator usually hands the same block back).
    for target in (3, 8, 3, 8):
        w = torch.zeros(10)
        w[target] = 1.0
        assert (sample_negatives(csr, users, 4, seed=0, weights=w) == target).all()
        del w


@pytest.mark.parametrize("case", ["skewed", "zeros_and_tiny", "one_heavy"])
def test_weighted_batched_path_equals_per_row_path(case) -> None:
    """Large weighted batches go through lockstep lanes and a guide table over the CDF, single rows
    through the per-row search: with matching row offsets both give the same draws, also where
    rounding at bucket and row boundaries is likeliest."""
    n_items = 300
    csr = random_csr(80, n_items, 0.15, seed=21)
    g = torch.Generator().manual_seed(4)
    w = torch.rand(n_items, generator=g, dtype=torch.float64)
    if case == "skewed":
        w = w ** 8 * 1e6
    elif case == "zeros_and_tiny":
        w[::3] = 0.0
        w[1::3] = 1e-200
    else:
        w[:] = 1e-9
        w[150] = 1e9
    users = torch.randint(0, 80, (600,), generator=g)
    whole = sample_negatives(csr, users, 3, seed=8, weights=w)
    for b in range(0, users.numel(), 37):
        one = sample_negatives(csr, users[b:b + 1], 3, seed=8, weights=w, row_offset=b)
        assert torch.equal(one, whole[b:b + 1])
    _assert_never_positive(csr, users, whole)
    assert torch.equal(whole[:50], _sample_negatives_ref(csr, users[:50], 3, seed=8, weights=w))
    assert bool((w[whole] > 0).all())


@pytest.fixture
def restore_sampling_isa():
    previous = recfast._C.sampling_isa()
    yield
    recfast._C.set_sampling_isa(previous)


@pytest.mark.skipif("avx512" not in recfast._C.sampling_isas(), reason="this CPU has no avx512f + avx512dq")
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("k", [1, 3])
def test_avx512_and_scalar_paths_are_bit_identical(restore_sampling_isa, index_dtype, k) -> None:
    """The uniform kernel's AVX-512 path draws exactly what the scalar path draws."""
    csr = random_csr(700, 3000, 0.02, seed=14, index_dtype=index_dtype)
    # Skewed degrees (so vector lanes finish their searches at different steps), empty rows and a
    # nearly full row.
    rows = [csr.row(u) for u in range(700)]
    rows[5] = torch.arange(0, 3000, 2, dtype=index_dtype)
    rows[6] = torch.empty(0, dtype=index_dtype)
    rows[7] = torch.cat([torch.arange(0, 1234), torch.arange(1235, 3000)]).to(index_dtype)
    indptr = torch.tensor([0] + [len(r) for r in rows]).cumsum(0)
    csr = recfast.CSR(indptr, torch.cat(rows), (700, 3000))
    g = torch.Generator().manual_seed(k)
    for batch in (0, 1, 31, 32, 33, 100, 4099):
        users = torch.randint(0, 700, (batch,), generator=g)
        users[: batch // 3] = torch.tensor([5, 6, 7]).repeat(batch)[: batch // 3]
        users = users[torch.randperm(batch, generator=g)]
        got = {}
        for isa in ("scalar", "avx512"):
            recfast._C.set_sampling_isa(isa)
            got[isa] = [sample_negatives(csr, users, k, seed=seed, row_offset=off, num_threads=t)
                        for seed, off, t in ((0, 0, 1), (2**64 - 1, 12345, 2), (99, 2**40, 3))]
        for a, b in zip(got["scalar"], got["avx512"]):
            assert torch.equal(a, b)
        _assert_never_positive(csr, users, got["avx512"][0])
        if batch == 100:
            assert torch.equal(got["avx512"][0], _sample_negatives_ref(csr, users, k, seed=0))
    # A user without negatives is reported the same way by both paths (first bad position).
    full = recfast.CSR(torch.tensor([0, 4, 5]), torch.tensor([0, 1, 2, 3, 2], dtype=index_dtype), (2, 4))
    users = torch.tensor([1] * 40 + [0] + [1] * 30 + [0])
    for isa in ("scalar", "avx512"):
        recfast._C.set_sampling_isa(isa)
        with pytest.raises(ValueError, match="user 0 has no negative item left"):
            sample_negatives(full, users, k, seed=0)


@pytest.mark.skipif("avx512" not in recfast._C.sampling_isas(), reason="this CPU has no avx512f + avx512dq")
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_weighted_avx512_and_scalar_paths_are_bit_identical(restore_sampling_isa, index_dtype) -> None:
    csr = random_csr(300, 500, 0.05, seed=15, index_dtype=index_dtype)
    rows = [csr.row(u) for u in range(300)]
    rows[3] = torch.arange(0, 500, dtype=index_dtype)[torch.arange(500) % 7 != 0]  # dense row
    rows[4] = torch.empty(0, dtype=index_dtype)
    csr = recfast.CSR(torch.tensor([0] + [len(r) for r in rows]).cumsum(0), torch.cat(rows), (300, 500))
    g = torch.Generator().manual_seed(2)
    w = torch.rand(500, generator=g, dtype=torch.float64) ** 6
    w[::11] = 0.0
    for k in (1, 4):
        users = torch.randint(0, 300, (2000 + k,), generator=g)
        users[::5] = 3
        users[1::7] = 4
        got = {}
        for isa in ("scalar", "avx512"):
            recfast._C.set_sampling_isa(isa)
            got[isa] = sample_negatives(csr, users, k, seed=k, weights=w, row_offset=77)
        assert torch.equal(got["scalar"], got["avx512"])
        assert torch.equal(got["scalar"][:40], _sample_negatives_ref(csr, users[:40], k, seed=k, weights=w,
                                                                     row_offset=77))
        _assert_never_positive(csr, users, got["avx512"])
    # A user with every item (no mass left) inside a large batch: both paths name it.
    rows[7] = torch.arange(500, dtype=index_dtype)
    full = recfast.CSR(torch.tensor([0] + [len(r) for r in rows]).cumsum(0), torch.cat(rows), (300, 500))
    users = torch.randint(0, 300, (3000,), generator=g)
    users[users == 7] = 8
    users[1234] = 7
    for isa in ("scalar", "avx512"):
        recfast._C.set_sampling_isa(isa)
        with pytest.raises(ValueError, match="user 7 has no weighted mass"):
            sample_negatives(full, users, 2, seed=0, weights=torch.ones(500))


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_weighted_extreme_weights_stay_exact(restore_sampling_isa, index_dtype) -> None:
    """Weights spanning 60 orders of magnitude, with zeros: a draw's gap target (t minus one key
    plus one cum entry) then rounds across gap edges and onto zero-weight items, which the
    kernels' repair moves to an item outside the row with positive weight. The draws equal the
    reference's on every path, are never positives and never zero-weight items."""
    csr = random_csr(200, 400, 0.08, seed=16, index_dtype=index_dtype)
    g = torch.Generator().manual_seed(3)
    w = torch.rand(400, generator=g, dtype=torch.float64) * 1e37
    w[::3] = torch.rand(134, generator=g, dtype=torch.float64)[: w[::3].numel()] * 1e-23
    w[::9] = 0.0
    users = torch.randint(0, 200, (1500,), generator=g)
    got = {}
    for isa in recfast._C.sampling_isas():
        recfast._C.set_sampling_isa(isa)
        got[isa] = sample_negatives(csr, users, 2, seed=4, weights=w, num_threads=2)
    assert torch.equal(got["scalar"], got.get("avx512", got["scalar"]))
    assert torch.equal(got["scalar"][:60], _sample_negatives_ref(csr, users[:60], 2, seed=4, weights=w))
    _assert_never_positive(csr, users, got["scalar"])
    assert bool((w[got["scalar"]] > 0).all())


def test_sampling_isa_switch(restore_sampling_isa) -> None:
    assert recfast._C.sampling_isa() in ("auto", "scalar", "avx512")
    assert "scalar" in recfast._C.sampling_isas()
    recfast._C.set_sampling_isa("scalar")
    assert recfast._C.set_sampling_isa("auto") == "scalar"
    with pytest.raises(ValueError, match="set_sampling_isa: isa must be one of"):
        recfast._C.set_sampling_isa("sse9")
    assert recfast._C.sampling_isa() == "auto"


@settings(max_examples=40, deadline=None)
@given(n_users=st.integers(1, 30), n_items=st.integers(1, 40), density=st.floats(0.0, 0.95),
       k=st.integers(0, 6), seed=st.integers(0, 2**64 - 1), replace=st.booleans(), weighted=st.booleans(),
       data_seed=st.integers(0, 1000))
def test_property_exact_or_clear_error(n_users, n_items, density, k, seed, replace, weighted, data_seed) -> None:
    csr = random_csr(n_users, n_items, density, seed=data_seed)
    users = torch.randint(0, n_users, (17,), generator=torch.Generator().manual_seed(data_seed))
    w = torch.rand(n_items, generator=torch.Generator().manual_seed(data_seed)) if weighted else None
    try:
        want = _sample_negatives_ref(csr, users, k, seed=seed, replace=replace, weights=w)
    except ValueError as e:
        with pytest.raises(ValueError, match=str(e).split(" has ")[0]):
            sample_negatives(csr, users, k, seed=seed, replace=replace, weights=w)
        return
    got = sample_negatives(csr, users, k, seed=seed, replace=replace, weights=w)
    assert torch.equal(got, want)
    if k:
        _assert_never_positive(csr, users, got)
    if not replace:
        assert all(len(set(r)) == k for r in got.tolist())


@requires_cuda
def test_cuda_equals_cpu_on_a_side_stream() -> None:
    csr = random_csr(300, 500, 0.1, seed=12)
    users = torch.randint(0, 300, (4096,))
    w = torch.rand(500)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for replace, weights in ((True, None), (False, None), (True, w), (False, w)):
            dev_w = None if weights is None else weights.cuda()
            got = sample_negatives(csr.to("cuda"), users.cuda(), 7, seed=5, replace=replace, weights=dev_w)
            want = sample_negatives(csr, users, 7, seed=5, replace=replace, weights=weights)
            assert torch.equal(got.cpu(), want)
    s.synchronize()


@requires_cuda
def test_cuda_user_without_negatives_raises() -> None:
    csr = recfast.CSR(torch.tensor([0, 2, 3]), torch.tensor([0, 1, 1], dtype=torch.int32), (2, 2)).to("cuda")
    with pytest.raises(ValueError, match="user 0 has no negative"):
        sample_negatives(csr, torch.tensor([1, 0], device="cuda"), 1, seed=0)


def test_cached_guide_table_gives_the_same_draws() -> None:
    """The guide table, built with the first weighted call and cached with the weights, changes
    nothing: small batches with it (lockstep lanes) equal the per-row path without it."""
    from recfast import _C
    from recfast._backend import np_view
    from recfast.ops.sampling import _WEIGHT_CACHE, _cdf_guide, _weighted_prefix

    csr = random_csr(120, 400, 0.1, seed=5)
    w = torch.rand(400, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 4
    w[::5] = 0.0
    cum, keys = _weighted_prefix(csr, w)
    guide = _cdf_guide(csr, w)
    assert guide is not None and _cdf_guide(csr, w) is guide
    # a one-row call caches it too, so every later small batch takes the lockstep lanes
    csr2 = random_csr(120, 400, 0.1, seed=5)
    sample_negatives(csr2, torch.tensor([3]), 1, seed=0, weights=w)
    assert torch.equal(_WEIGHT_CACHE[csr2][4], guide)
    users = torch.randint(0, 120, (300,), generator=torch.Generator().manual_seed(1))
    for batch in (1, 7, 40, 300):
        for k in (1, 3):
            outs = []
            for gd in (None, guide):
                out = torch.empty(batch, k, dtype=torch.int64)
                assert _C.sample_negatives(np_view(csr.indptr), np_view(csr.indices), 400, np_view(users[:batch]), k,
                                           5, 0, True, np_view(cum), np_view(keys), np_view(out).reshape(-1),
                                           2, None if gd is None else np_view(gd)) == -1
                outs.append(out)
            assert torch.equal(outs[0], outs[1])
            assert torch.equal(outs[0], _sample_negatives_ref(csr, users[:batch], k, seed=5, weights=w))
    with pytest.raises(ValueError, match="guide"):
        _C.sample_negatives(np_view(csr.indptr), np_view(csr.indices), 400, np_view(users), 1, 5, 0, True, np_view(cum),
                            np_view(keys), np_view(torch.empty(300, dtype=torch.int64)), 1,
                            np_view(guide[:-1].clone()))
    with pytest.raises(ValueError, match="total weight"):
        _C.sampling_cdf_guide(np_view(torch.zeros(401, dtype=torch.float64)))


@pytest.mark.parametrize("isa", recfast._C.sampling_isas())
@pytest.mark.parametrize("n_users", [1, 100])  # one row (the per-row path), and enough for the lanes
def test_weighted_row_with_every_weighted_item_raises(restore_sampling_isa, isa, n_users) -> None:
    # A user holding every item: the complement's mass is cum[n] minus the row's prefix, two sums of
    # the same weights in different orders, which here round apart (8.9e-16, not 0). The draw must
    # not land on a row item: it raises, naming the user, as for an exactly empty complement.
    recfast._C.set_sampling_isa(isa)
    rows, cols = np.nonzero(np.ones((2, 7), dtype=bool))
    csr = recfast.CSR.from_coo(torch.from_numpy(rows), torch.from_numpy(cols), shape=(2, 7))
    w = torch.from_numpy(np.random.default_rng(0).random(7))
    w[:2] = 0.0
    _, keys = _weighted_tables(csr.indptr, csr.indices, w)
    assert float(keys[-1]) != 0.0  # the case this test is about: user 1's mass (its last key) is not 0
    for replace in (True, False):
        with pytest.raises(ValueError, match="user 1 has no weighted mass left"):
            sample_negatives(csr, torch.ones(n_users, dtype=torch.int64), 1, seed=0, weights=w, replace=replace)
        with pytest.raises(ValueError, match="user 1 has no weighted mass left"):
            _sample_negatives_ref(csr, torch.ones(1, dtype=torch.int64), 1, seed=0, weights=w, replace=replace)
