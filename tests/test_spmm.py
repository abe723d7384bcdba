"""spmm / lightgcn_propagate / edge_dropout / normalized_adjacency against references."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

# torch.sparse_csr_tensor (the reference) warns that CSR support is beta; that is not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

import recfast
from recfast.graph import normalized_adjacency
from recfast.ops import edge_dropout, lightgcn_propagate, spmm
from conftest import random_csr, requires_cuda

_PKG_PARENT = str(Path(recfast.__file__).resolve().parents[1])
_WIDTHS = [3, 16, 32, 64, 100, 128, 256]  # the fixed-width kernels, and two widths that take the generic one


def _dense_ref(csr: recfast.CSR, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(csr.to_scipy().astype(np.float64) @ x.detach().cpu().double().numpy())


@pytest.mark.parametrize("d", [1, 3, 16, 32, 64, 100, 128, 256])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("valued", [True, False])
def test_spmm_matches_reference(device, d, index_dtype, valued) -> None:
    a = random_csr(37, 29, 0.2, seed=d, index_dtype=index_dtype, values=valued).to(device)
    x = torch.randn(29, d, generator=torch.Generator().manual_seed(d)).to(device)
    got = spmm(a, x)
    assert got.shape == (37, d) and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu().double(), _dense_ref(a, x), rtol=1e-5, atol=1e-5)


def test_spmm_float64_and_gradcheck(device) -> None:
    a = random_csr(8, 6, 0.4, seed=1, values=True).to(device)
    x = torch.randn(6, 5, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: spmm(a, t), (x,))
    b = random_csr(7, 7, 0.4, seed=2, values=True).to(device)  # not symmetric: backward uses the transpose
    y = torch.randn(7, 3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: lightgcn_propagate(b, t, 3, layer_weights=[0.1, 0.2, 0.3, 0.4]), (y,))


def test_opcheck() -> None:
    a = random_csr(9, 9, 0.3, seed=3, values=True)
    t = a.transpose()
    x = torch.randn(9, 4, requires_grad=True)
    torch.library.opcheck(torch.ops.recfast.spmm.default,
                          (a.indptr, a.indices, a.values, t.indptr, t.indices, t.values, x, 9))
    torch.library.opcheck(torch.ops.recfast.lightgcn_propagate.default,
                          (a.indptr, a.indices, a.values, t.indptr, t.indices, t.values, x, [0.5, 0.3, 0.2]))


@pytest.mark.parametrize("layers", [0, 1, 2, 4])
def test_lightgcn_equals_explicit_layer_sum(device, layers) -> None:
    r = random_csr(20, 15, 0.2, seed=layers)
    adj = normalized_adjacency(r).to(device)
    e = torch.randn(35, 8, dtype=torch.float64, device=device, requires_grad=True)
    got = lightgcn_propagate(adj, e, layers)
    dense = torch.from_numpy(adj.to_scipy().toarray()).to(device, torch.float64)
    cur, want = e, e / (layers + 1)
    for _ in range(layers):
        cur = dense @ cur
        want = want + cur / (layers + 1)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    (ga,) = torch.autograd.grad(got, e, g)
    (gb,) = torch.autograd.grad(want, e, g)
    torch.testing.assert_close(ga, gb)


def test_ngcf_style_layer_gradients_match_torch_sparse() -> None:
    r = random_csr(12, 10, 0.3, seed=4)
    lap = normalized_adjacency(r, self_loops=True)
    e = torch.randn(22, 6, dtype=torch.float64, requires_grad=True)
    w1, w2 = torch.randn(6, 6, dtype=torch.float64), torch.randn(6, 6, dtype=torch.float64)
    side = spmm(lap, e)
    out = torch.nn.functional.leaky_relu(side @ w1 + (side * e) @ w2, 0.2)
    a = torch.sparse_csr_tensor(lap.indptr, lap.indices.long(), lap.values.double(), lap.shape)
    side2 = torch.sparse.mm(a, e)
    out2 = torch.nn.functional.leaky_relu(side2 @ w1 + (side2 * e) @ w2, 0.2)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), e)[0], torch.autograd.grad(out2.sum(), e)[0])


def test_torch_compile_sees_the_ops() -> None:
    adj = normalized_adjacency(random_csr(10, 8, 0.3, seed=5))
    e = torch.randn(18, 4)

    def f(x):
        return lightgcn_propagate(adj, x, 2).sum() + spmm(adj, x).pow(2).sum()

    try:
        compiled = torch.compile(f, backend="eager", fullgraph=False)
    except Exception as exc:  # pragma: no cover
        pytest.skip(f"torch.compile unavailable: {exc}")
    torch.testing.assert_close(compiled(e), f(e))


@pytest.mark.parametrize("threads", [1, 2])
def test_bitwise_identical_for_any_thread_count(threads) -> None:
    from recfast import _C

    a = random_csr(300, 300, 0.05, seed=6, values=True)
    x = torch.randn(300, 64)
    outs = []
    for t in (1, threads):
        out = torch.empty(300, 64)
        _C.spmm(a.indptr.numpy(), a.indices.numpy(), a.values.numpy(), x.numpy(), out.numpy(), t)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])


def _skewed_csr(n: int, *, seed: int, values: bool = True) -> recfast.CSR:
    """A square matrix with a few heavy rows and columns and some empty rows, so the nnz-balanced
    chunks differ with the thread count and prefetches cross row ends."""
    rng = np.random.default_rng(seed)
    deg = np.minimum(rng.zipf(1.6, n) - 1, n // 2)
    deg[rng.random(n) < 0.1] = 0
    rows = np.repeat(np.arange(n), deg)
    cols = np.concatenate([rng.choice(n, k, replace=False) for k in deg]) if deg.sum() else np.zeros(0, int)
    vals = torch.from_numpy(rng.standard_normal(rows.size).astype(np.float32)) if values else None
    return recfast.CSR.from_coo(torch.from_numpy(rows), torch.from_numpy(cols), vals, shape=(n, n))


def _kernel_outputs(a: recfast.CSR, xs: dict, threads: int) -> dict:
    """spmm and a 3-layer lightgcn_propagate straight through _C, for each width in xs."""
    from recfast import _C

    ip, ix = a.indptr.numpy(), a.indices.numpy()
    vals = None if a.values is None else a.values.numpy()
    res = {}
    for d, x in xs.items():
        out = np.empty_like(x)
        _C.spmm(ip, ix, vals, x, out, threads)
        res[f"spmm{d}"] = out
        bufs = [np.empty_like(x) for _ in range(3)]
        _C.lightgcn_propagate(ip, ix, vals, x, [0.4, 0.3, 0.2, 0.1], *bufs, threads)
        res[f"lgcn{d}"] = bufs[0]
    return res


@pytest.mark.parametrize("valued", [True, False])
def test_bitwise_identical_for_any_thread_count_and_width(valued) -> None:
    a = _skewed_csr(700, seed=10, values=valued)
    g = np.random.default_rng(0)
    xs = {d: g.standard_normal((700, d)).astype(np.float32) for d in _WIDTHS}
    one = _kernel_outputs(a, xs, 1)
    for threads in (2, 3):
        many = _kernel_outputs(a, xs, threads)
        for key in one:
            assert np.array_equal(one[key], many[key]), (key, threads)


_ISA_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import recfast
    sys.path.insert(0, {tests!r})
    import test_spmm as t
    inp = np.load({inp!r})
    a = recfast.CSR(torch.from_numpy(inp["indptr"]), torch.from_numpy(inp["indices"]), (700, 700),
                    torch.from_numpy(inp["values"]))
    xs = {{int(k[1:]): inp[k] for k in inp.files if k.startswith("x")}}
    np.savez({out!r}, **t._kernel_outputs(a, xs, 2))
""")


@pytest.mark.parametrize("cap", ["base", "avx2"])
def test_isa_cap_gives_bitwise_identical_results(tmp_path, cap) -> None:
    # RECFAST_SPMM_ISA is read when _C loads, so the capped copy runs in a subprocess.
    a = _skewed_csr(700, seed=11)
    g = np.random.default_rng(1)
    xs = {d: g.standard_normal((700, d)).astype(np.float32) for d in _WIDTHS}
    inp, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inp, indptr=a.indptr.numpy(), indices=a.indices.numpy(), values=a.values.numpy(),
             **{f"x{d}": x for d, x in xs.items()})
    script = tmp_path / "run.py"
    script.write_text(_ISA_SCRIPT.format(tests=str(Path(__file__).resolve().parent), inp=str(inp), out=str(out)))
    env = {**os.environ, "RECFAST_SPMM_ISA": cap,
           "PYTHONPATH": _PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    want = _kernel_outputs(a, xs, 2)
    got = np.load(out)
    for key in want:
        assert np.array_equal(got[key], want[key]), key


@pytest.mark.parametrize("d", _WIDTHS)
@pytest.mark.parametrize("valued", [True, False])
def test_lightgcn_matches_reference_for_each_width(d, valued) -> None:
    a = _skewed_csr(300, seed=d, values=valued)
    x = torch.randn(300, d, generator=torch.Generator().manual_seed(d))
    w = [0.4, 0.3, 0.2, 0.1]
    got = lightgcn_propagate(a, x, 3, layer_weights=w)
    dense = a.to_scipy().astype(np.float64)
    cur = x.double().numpy()
    want = w[0] * cur
    for wl in w[1:]:
        cur = dense @ cur
        want = want + wl * cur
    torch.testing.assert_close(got.double(), torch.from_numpy(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("d", [3, 64, 100])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.9])
def test_lightgcn_is_bitwise_the_sum_of_spmm_layers(d, zero_fraction) -> None:
    # lightgcn_propagate fuses layer 1 with the w0 term and never stores the last layer: neither may
    # change a bit. Mostly-zero inputs (a batch's loss gradient, the backward's input) and -0 rows too.
    from recfast import _C

    a = _skewed_csr(500, seed=13)
    rng = np.random.default_rng(d)
    x = rng.standard_normal((500, d)).astype(np.float32)
    x[rng.random(500) < zero_fraction] = 0.0
    x[rng.random(500) < 0.05] = -0.0
    w = np.float32([0.4, 0.3, 0.2, 0.1])
    ip, ix, vals = a.indptr.numpy(), a.indices.numpy(), a.values.numpy()
    got = [np.empty_like(x) for _ in range(3)]
    _C.lightgcn_propagate(ip, ix, vals, x, [float(v) for v in w], *got, 2)
    cur, want = x, None
    for wl in w[1:]:
        nxt = np.empty_like(x)
        _C.spmm(ip, ix, vals, cur, nxt, 2)
        want = w[0] * x + wl * nxt if want is None else want + wl * nxt
        cur = nxt
    assert np.array_equal(got[0], want)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_lightgcn_writes_only_the_buffers_it_needs(layers) -> None:
    # Layer 1 is fused with the w0 term and the last layer is added into out, never stored.
    from recfast import _C

    a = _skewed_csr(200, seed=12)
    x = np.random.default_rng(2).standard_normal((200, 16)).astype(np.float32)
    out, buf_a, buf_b = (np.full_like(x, np.nan) for _ in range(3))
    _C.lightgcn_propagate(a.indptr.numpy(), a.indices.numpy(), a.values.numpy(), x, [0.25] * (layers + 1), out,
                          buf_a, buf_b, 0)
    assert np.isfinite(out).all()
    assert np.isnan(buf_a).all() == (layers < 2)
    assert np.isnan(buf_b).all() == (layers < 3)


def test_huge_page_hint_on_large_outputs_keeps_results() -> None:
    # Outputs and layer buffers of 32 MiB or more are advised for huge pages before the first
    # write (an unaligned head and tail stay on small pages): the values must not care.
    n, d = 140_000, 64  # 35.8 MB per (n, d) float32 buffer
    rng = np.random.default_rng(5)
    rows = np.repeat(np.arange(n), 2)
    cols = rng.integers(0, n, 2 * n)
    a = recfast.CSR.from_coo(torch.from_numpy(rows), torch.from_numpy(cols), torch.ones(2 * n), shape=(n, n))
    x = torch.from_numpy(rng.standard_normal((n, d)).astype(np.float32))
    want = torch.from_numpy((a.to_scipy() @ x.numpy()).astype(np.float32))
    torch.testing.assert_close(spmm(a, x), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lightgcn_propagate(a, x, 3, layer_weights=[0.0, 0.0, 0.0, 1.0]),
                               torch.from_numpy(a.to_scipy() @ (a.to_scipy() @ want.numpy())), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["empty_matrix", "empty_rows", "single_row", "zero_width"])
def test_adversarial(case) -> None:
    if case == "empty_matrix":
        a = recfast.CSR(torch.zeros(1, dtype=torch.int64), torch.empty(0, dtype=torch.int32), (0, 4))
        assert spmm(a, torch.randn(4, 3)).shape == (0, 3)
    elif case == "empty_rows":
        a = recfast.CSR(torch.tensor([0, 0, 1, 1]), torch.tensor([2], dtype=torch.int32), (3, 3))
        out = spmm(a, torch.ones(3, 64))
        assert out[0].abs().sum() == 0 and out[2].abs().sum() == 0 and (out[1] == 1).all()
    elif case == "single_row":
        a = recfast.CSR(torch.tensor([0, 2]), torch.tensor([0, 1], dtype=torch.int32), (1, 2))
        assert spmm(a, torch.tensor([[1.0], [2.0]])).tolist() == [[3.0]]
    else:
        a = random_csr(4, 4, 0.5)
        assert spmm(a, torch.randn(4, 0)).shape == (4, 0)


def test_errors() -> None:
    a = random_csr(4, 5, 0.4)
    with pytest.raises(ValueError, match="dense has 4 rows, expected the matrix's column count 5"):
        spmm(a, torch.randn(4, 3))
    with pytest.raises(TypeError, match="dense must be a float32 or float64 tensor, got int64"):
        spmm(a, torch.ones(5, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="must be a recfast.CSR"):
        spmm(a.to_scipy(), torch.randn(5, 3))
    with pytest.raises(ValueError, match="adj must be square"):
        lightgcn_propagate(a, torch.randn(5, 3), 2)
    sq = random_csr(5, 5, 0.4)
    with pytest.raises(ValueError, match="num_layers must be a non-negative int"):
        lightgcn_propagate(sq, torch.randn(5, 3), -1)
    with pytest.raises(ValueError, match="layer_weights has 2 entries, expected num_layers \\+ 1 = 3"):
        lightgcn_propagate(sq, torch.randn(5, 3), 2, layer_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="p must be in \\[0, 1\\)"):
        edge_dropout(a, 1.0, seed=0)


def test_edge_dropout_is_seeded_rescaled_and_binomial() -> None:
    a = random_csr(200, 150, 0.2, seed=7, values=True)
    b = edge_dropout(a, 0.3, seed=1)
    c = edge_dropout(a, 0.3, seed=1)
    assert torch.equal(b.indices, c.indices) and torch.equal(b.values, c.values)
    assert not torch.equal(b.indices, edge_dropout(a, 0.3, seed=2).indices)
    n, keep = a.nnz, b.nnz
    assert abs(keep - 0.7 * n) < 5 * np.sqrt(n * 0.21)
    dense_a, dense_b = a.to_scipy().toarray(), b.to_scipy().toarray()
    kept = dense_b != 0
    np.testing.assert_allclose(dense_b[kept], dense_a[kept] / 0.7, rtol=1e-6)
    b.check()
    assert edge_dropout(a, 0.0, seed=0) is a


@pytest.mark.parametrize("normalization", ["sym", "left", "none"])
@pytest.mark.parametrize("self_loops", [False, True])
def test_normalized_adjacency_matches_scipy(normalization, self_loops) -> None:
    r = random_csr(30, 20, 0.15, seed=8)
    # a user and an item with no interactions: empty rows, no NaN
    dense = r.to_scipy().toarray()
    dense[3, :] = 0
    dense[:, 5] = 0
    r = recfast.CSR.from_scipy(sp.csr_matrix(dense), binary=True)
    got = normalized_adjacency(r, normalization=normalization, self_loops=self_loops)
    a = sp.bmat([[None, sp.csr_matrix(dense)], [sp.csr_matrix(dense).T, None]]).toarray()
    if self_loops:
        a = a + np.eye(50)
    deg = a.sum(1)
    with np.errstate(divide="ignore"):
        inv = np.where(deg > 0, 1.0 / deg, 0.0)
    if normalization == "sym":
        want = np.sqrt(inv)[:, None] * a * np.sqrt(inv)[None, :]
    elif normalization == "left":
        want = inv[:, None] * a
    else:
        want = a
    np.testing.assert_allclose(got.to_scipy().toarray(), want, rtol=1e-6)
    assert np.isfinite(got.values.numpy()).all()
    got.check()
    assert got.symmetric == (normalization != "left")
    if not self_loops:
        assert got.row_lengths()[3] == 0 and got.row_lengths()[30 + 5] == 0


@requires_cuda
def test_cuda_matches_cpu_on_a_side_stream() -> None:
    adj = normalized_adjacency(random_csr(300, 200, 0.05, seed=9))
    e = torch.randn(500, 64)
    want = lightgcn_propagate(adj, e, 3)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        got = lightgcn_propagate(adj.to("cuda"), e.cuda(), 3)
        half = spmm(adj.to("cuda"), e.cuda().half())
    s.synchronize()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(half.float().cpu(), spmm(adj, e.half().float()), rtol=1e-2, atol=1e-2)


@requires_cuda
@pytest.mark.parametrize("d", [1, 2, 4, 8, 12, 64, 100, 256])
@pytest.mark.parametrize("valued", [True, False])
def test_cuda_spmm_rows_of_every_length(d, valued) -> None:
    # Row lengths 0..600 cross the kernels' boundaries: one 32-entry chunk of indices, several,
    # and the block-per-row kernel past 256 entries; d picks the vector kernels' lane groups, and
    # d = 1 or 2 (not a multiple of 4) or the misaligned view below takes the scalar kernel.
    rng = np.random.default_rng(d)
    lengths = np.concatenate([np.arange(0, 70), [255, 256, 257, 300, 600]])
    n_cols = 700
    rows = np.repeat(np.arange(lengths.size), lengths)
    cols = np.concatenate([np.sort(rng.choice(n_cols, n, replace=False)) for n in lengths])
    vals = torch.from_numpy(rng.random(rows.size).astype(np.float32)) if valued else None
    a = recfast.CSR.from_coo(torch.from_numpy(rows), torch.from_numpy(cols), vals, shape=(lengths.size, n_cols))
    x = torch.randn(n_cols, d + 1, generator=torch.Generator().manual_seed(d))
    ac = a.to("cuda")
    flat = x.cuda().flatten()
    # an aligned table, and one starting 4 bytes into its storage (no 16-byte vector loads)
    for dense in (flat[: n_cols * d].view(n_cols, d), flat[1 : 1 + n_cols * d].view(n_cols, d)):
        got = spmm(ac, dense)
        torch.testing.assert_close(got.cpu().double(), _dense_ref(a, dense), rtol=1e-5, atol=1e-5)
        assert torch.equal(got, spmm(ac, dense))  # a fixed summation order: the same bits every run
    x64 = x[:, :d].double()
    torch.testing.assert_close(spmm(ac, x64.cuda()).cpu(), _dense_ref(a, x64), rtol=1e-12, atol=1e-12)
