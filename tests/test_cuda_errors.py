"""CUDA errors (out of memory, launch failures, kernel faults) surface as exceptions naming the op.

On a machine without a GPU the CUDA paths cannot run, so most tests drive the mechanism
(``recfast._backend.cuda_errors``) with fakes: a kernel function, a compiled module or
``torch.cuda.synchronize`` replaced by one that raises what CUDA would. The launch checks of the
compiled ``_C_cuda`` are exercised for real where it is built: without a device every launch fails
at once, before any pointer is touched. The tests marked ``requires_cuda`` provoke a real
out-of-memory on a GPU.
"""

from __future__ import annotations

import sys

import pytest
import torch

import recfast
from recfast import _backend
from recfast._backend import cuda_errors
from conftest import random_csr, requires_cuda

OOM = "CUDA out of memory. Tried to allocate 512.00 GiB. GPU 0 has a total capacity of 139.80 GiB"
FAULT = "CUDA error: an illegal memory access was encountered"


def _raise(exc: BaseException):
    def f(*args, **kwargs):
        raise exc

    return f


# ---------------------------------------------------------------------------------------------
# The mechanism
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [torch.OutOfMemoryError, torch.AcceleratorError, RuntimeError])
def test_decorator_names_op_and_keeps_type(make):
    msg = OOM if make is torch.OutOfMemoryError else FAULT
    original = make(msg)
    f = cuda_errors("bpr_loss")(_raise(original))
    with pytest.raises(make) as info:
        f(torch.zeros(2))
    e = info.value
    assert type(e) is make
    assert str(e).startswith("recfast.ops.bpr_loss (CUDA): ")
    assert msg in str(e)
    assert e.__cause__ is original


def test_context_manager_and_qualified_names():
    with pytest.raises(torch.OutOfMemoryError, match=r"^recfast\.optim\.SparseAdam\.step \(CUDA\): CUDA out of memory"):
        with cuda_errors("recfast.optim.SparseAdam.step"):
            raise torch.OutOfMemoryError(OOM)


def test_async_hint_only_for_faults(monkeypatch):
    monkeypatch.delenv(_backend.SYNC_ENV, raising=False)
    with pytest.raises(torch.AcceleratorError, match="RECFAST_CUDA_SYNC=1"):
        with cuda_errors("spmm"):
            raise torch.AcceleratorError(FAULT)
    with pytest.raises(torch.OutOfMemoryError) as info:
        with cuda_errors("spmm"):
            raise torch.OutOfMemoryError(OOM)
    assert "RECFAST_CUDA_SYNC" not in str(info.value)  # an allocation failure is never asynchronous


def test_launch_check_allocation_failure_becomes_oom():
    err = RuntimeError("launch of spmm_kernel: CUDA error cudaErrorMemoryAllocation: out of memory")
    with pytest.raises(torch.OutOfMemoryError, match=r"recfast\.ops\.spmm \(CUDA\): launch of spmm_kernel"):
        with cuda_errors("spmm"):
            raise err


@pytest.mark.parametrize("exc", [ValueError("bpr_loss: users holds id 9"), TypeError("x"),
                                 RuntimeError("an error from elsewhere"), KeyError("k")])
def test_other_errors_pass_unchanged(exc):
    f = cuda_errors("bpr_loss")(_raise(exc))
    with pytest.raises(type(exc)) as info:
        f()
    assert info.value is exc


def test_nested_wrappers_name_the_innermost_op_once():
    inner = cuda_errors("spmm")(_raise(torch.OutOfMemoryError(OOM)))
    outer = cuda_errors("lightgcn_propagate")(inner)
    with pytest.raises(torch.OutOfMemoryError) as info:
        outer()
    assert str(info.value).count("(CUDA)") == 1
    assert str(info.value).startswith("recfast.ops.spmm (CUDA): ")


def test_wrapper_keeps_name_and_docstring():
    assert recfast.ops.bpr_loss.__name__ == "bpr_loss"
    assert "Example" in recfast.ops.bpr_loss.__doc__
    assert recfast.ops.spmm.__wrapped__ is not None


# ---------------------------------------------------------------------------------------------
# RECFAST_CUDA_SYNC: each op synchronizes its devices, so a fault is reported by the op that made it
# ---------------------------------------------------------------------------------------------

class _OnCuda:
    """An argument that says it lives on cuda:0 (CSR matrices are found the same way)."""

    device = torch.device("cuda", 0)


@pytest.fixture
def fake_sync(monkeypatch):
    calls: list = []

    def synchronize(device=None):
        calls.append(device)
        raise torch.AcceleratorError(FAULT)

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    return calls


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_sync_switch_reports_fault_in_the_op(monkeypatch, fake_sync, value):
    monkeypatch.setenv(_backend.SYNC_ENV, value)
    f = cuda_errors("bpr_loss")(lambda x: 42)
    with pytest.raises(torch.AcceleratorError, match=r"^recfast\.ops\.bpr_loss \(CUDA\): CUDA error: an illegal") as info:
        f(_OnCuda())
    assert fake_sync == [torch.device("cuda", 0)]
    assert "RECFAST_CUDA_SYNC=1" not in str(info.value)  # it is already set
    with pytest.raises(torch.AcceleratorError, match=r"recfast\.optim\.SparseSGD\.step"):
        with cuda_errors("recfast.optim.SparseSGD.step", torch.device("cuda", 0)):
            pass


@pytest.mark.parametrize("value", [None, "0", "", "off"])
def test_no_sync_without_switch(monkeypatch, fake_sync, value):
    if value is None:
        monkeypatch.delenv(_backend.SYNC_ENV, raising=False)
    else:
        monkeypatch.setenv(_backend.SYNC_ENV, value)
    assert cuda_errors("bpr_loss")(lambda x: 42)(_OnCuda()) == 42
    with cuda_errors("bpr_loss", torch.device("cuda", 0)):
        pass
    assert fake_sync == []


def test_sync_switch_leaves_cpu_ops_alone(monkeypatch, fake_sync):
    monkeypatch.setenv(_backend.SYNC_ENV, "1")
    u, v = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    recfast.ops.bpr_loss(u, v, torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])).backward()
    assert fake_sync == []


# ---------------------------------------------------------------------------------------------
# Each public op names itself: a kernel call replaced by one that fails as CUDA would
# ---------------------------------------------------------------------------------------------

def _bpr_inputs():
    u, v = torch.randn(4, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    return u, v, torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])


@pytest.mark.parametrize("make", [torch.OutOfMemoryError, torch.AcceleratorError])
@pytest.mark.parametrize("sparse_grad", [False, True])
def test_bpr_loss_forward_and_backward(monkeypatch, make, sparse_grad):
    import recfast.ops.bpr as bpr

    msg = OOM if make is torch.OutOfMemoryError else FAULT
    # CPU inputs stand in for CUDA ones here: route them through the path CUDA tables take
    # (the custom op and _forward/_backward), not the eager CPU shortcut.
    monkeypatch.setattr(bpr, "_plain_eager_cpu", lambda *a: False)
    monkeypatch.setattr(bpr, "_forward", _raise(make(msg)))
    with pytest.raises(make, match=r"^recfast\.ops\.bpr_loss \(CUDA\): "):
        recfast.ops.bpr_loss(*_bpr_inputs(), sparse_grad=sparse_grad)
    monkeypatch.undo()
    monkeypatch.setattr(bpr, "_plain_eager_cpu", lambda *a: False)
    monkeypatch.setattr(bpr, "_backward", _raise(make(msg)))
    monkeypatch.setattr(bpr, "_sparse_backward_cpu", _raise(make(msg)))  # the sparse path's CPU call
    loss = recfast.ops.bpr_loss(*_bpr_inputs(), sparse_grad=sparse_grad)
    with pytest.raises(make, match=r"^recfast\.ops\.bpr_loss \(CUDA\): "):  # raised by autograd, later
        loss.backward()


def test_bpr_loss_shared_table_backward(monkeypatch):
    import recfast.ops.bpr as bpr

    monkeypatch.setattr(bpr, "_plain_eager_cpu", lambda *a: False)
    e = torch.randn(10, 4, requires_grad=True)
    loss = recfast.ops.bpr_loss(e, e, torch.tensor([0, 1]), torch.tensor([5, 6]), torch.tensor([7, 8]))
    monkeypatch.setattr(bpr, "_backward", _raise(torch.OutOfMemoryError(OOM)))
    with pytest.raises(torch.OutOfMemoryError, match=r"^recfast\.ops\.bpr_loss \(CUDA\): "):
        loss.backward()


def test_spmm_and_propagation(monkeypatch):
    spmm_mod = sys.modules["recfast.ops.spmm"]  # recfast.ops.spmm is the function

    a = random_csr(6, 5, 0.5, seed=1)
    monkeypatch.setattr(spmm_mod, "_spmm_impl", _raise(torch.OutOfMemoryError(OOM)))
    with pytest.raises(torch.OutOfMemoryError, match=r"^recfast\.ops\.spmm \(CUDA\): "):
        recfast.ops.spmm(a, torch.randn(5, 3))
    monkeypatch.setattr(spmm_mod, "_lightgcn_impl", _raise(torch.AcceleratorError(FAULT)))
    adj = recfast.graph.normalized_adjacency(a)
    with pytest.raises(torch.AcceleratorError, match=r"^recfast\.ops\.lightgcn_propagate \(CUDA\): "):
        recfast.ops.lightgcn_propagate(adj, torch.randn(11, 3), 2)


def test_spmm_backward(monkeypatch):
    spmm_mod = sys.modules["recfast.ops.spmm"]  # recfast.ops.spmm is the function

    a = random_csr(6, 5, 0.5, seed=1)
    x = torch.randn(5, 3, requires_grad=True)
    out = recfast.ops.spmm(a, x)
    monkeypatch.setattr(spmm_mod, "_spmm_impl", _raise(torch.OutOfMemoryError(OOM)))
    with pytest.raises(torch.OutOfMemoryError, match=r"^recfast\.ops\.spmm \(CUDA\): "):
        out.sum().backward()


def test_topk(monkeypatch):
    topk_mod = sys.modules["recfast.ops.topk"]

    monkeypatch.setattr(topk_mod, "_topk_cpu", _raise(torch.OutOfMemoryError(OOM)))
    with pytest.raises(torch.OutOfMemoryError, match=r"^recfast\.ops\.topk \(CUDA\): "):
        recfast.ops.topk(torch.randn(3, 4), torch.randn(7, 4), 2)


def test_sample_negatives(monkeypatch):
    import recfast.ops.sampling as sampling_mod

    class FakeC:
        def __getattr__(self, name):
            return _raise(RuntimeError("launch of sample_distinct_kernel: CUDA error "
                                       "cudaErrorInvalidConfiguration: invalid configuration argument"))

    monkeypatch.setattr(sampling_mod, "_C", FakeC())
    with pytest.raises(RuntimeError, match=r"^recfast\.ops\.sample_negatives \(CUDA\): launch of sample_distinct_kernel"):
        recfast.ops.sample_negatives(random_csr(4, 20, 0.2), torch.tensor([0, 1]), 2, seed=0)


@pytest.mark.parametrize("cls", [recfast.optim.SparseSGD, recfast.optim.SparseAdam])
def test_optimizer_step(monkeypatch, cls):
    emb = torch.nn.Embedding(10, 4, sparse=True)
    opt = cls(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 3])).sum().backward()
    monkeypatch.setattr(opt, "_apply", _raise(torch.OutOfMemoryError(OOM)))
    with pytest.raises(torch.OutOfMemoryError, match=rf"^recfast\.optim\.{cls.__name__}\.step \(CUDA\): "):
        opt.step()
    monkeypatch.undo()
    opt.step()  # the failed step left a usable state behind
    assert opt.state[emb.weight]["step"] == 2


# ---------------------------------------------------------------------------------------------
# The compiled launch checks (where _C_cuda is built; no GPU needed: the launch fails first)
# ---------------------------------------------------------------------------------------------

needs_module_without_gpu = pytest.mark.skipif(
    _backend._C_cuda is None or recfast.cuda_available(), reason="needs _C_cuda built, and no GPU (launches fail)")


@needs_module_without_gpu
def test_launch_check_names_the_kernel():
    mod = _backend._C_cuda
    with pytest.raises(RuntimeError, match=r"launch of bpr_forward_kernel: CUDA error cuda\w+: ") as info:
        with cuda_errors("bpr_loss"):  # B = 1: a real launch, which fails without a device
            mod.bpr_forward(0, 0, 0, 8, 0, 0, 0, 1, 1, 0.0, 0, 0, "float16", 0)
    assert str(info.value).startswith("recfast.ops.bpr_loss (CUDA): launch of bpr_forward_kernel")
    with pytest.raises(RuntimeError, match=r"launch of bpr_backward_kernel: CUDA error"):
        mod.bpr_backward(0, 0, 8, 0, 0, 0, 1, 1, 0, 0, 0.0, 0, 0, 0, 0, 0, 0, "bfloat16", 0)
    with pytest.raises(RuntimeError, match=r"launch of spmm_vec_kernel: CUDA error"):  # d % 4 == 0: float4 loads
        mod.spmm(0, 0, False, 0, 1, 0, 4, 0, False, 0)
    with pytest.raises(RuntimeError, match=r"launch of spmm_kernel: CUDA error"):
        mod.spmm(0, 0, False, 0, 1, 0, 3, 0, False, 0)
    with pytest.raises(RuntimeError, match=r"launch of sample_with_replacement_kernel: CUDA error"):
        mod.sample_negatives(0, 0, False, 5, 0, 1, 1, 0, 0, True, 0, 0, 0, 0, 0)
    with pytest.raises(RuntimeError, match=r"launch of sparse_opt_kernel: CUDA error"):
        mod.sparse_opt_step(0, 0.1, 0.0, 0.9, 0.999, 1e-8, 1.0, 1.0, 0, 0, 0, 4, 0, 0, 1, "float16", 0)
    with pytest.raises(RuntimeError, match=r"launch of topk_mask_kernel: CUDA error"):
        mod.topk_mask(0, 1, 4, 0, 0, 0, 0, False, 0)


@pytest.mark.skipif(_backend._C_cuda is None, reason="needs _C_cuda built")
def test_bpr_binding_dtypes():
    mod = _backend._C_cuda
    for dt in ("float32", "float64", "float16", "bfloat16"):  # B = 0 returns before launching
        mod.bpr_forward(0, 0, 0, 8, 0, 0, 0, 0, 1, 0.0, 0, 0, dt, 0)
        mod.bpr_backward(0, 0, 8, 0, 0, 0, 0, 1, 0, 0, 0.0, 0, 0, 0, 0, 0, 0, dt, 0)
    with pytest.raises(ValueError, match="bpr_forward: tensors must be float32, float64, float16 or bfloat16, got int8"):
        mod.bpr_forward(0, 0, 0, 8, 0, 0, 0, 0, 1, 0.0, 0, 0, "int8", 0)


# ---------------------------------------------------------------------------------------------
# On a GPU: a real out-of-memory, named
# ---------------------------------------------------------------------------------------------

_HUGE = 2**35  # ids: 256 GiB as int64, past any GPU


@requires_cuda
def test_cuda_bpr_loss_oom_names_op():
    u, v = torch.randn(4, 8, device="cuda"), torch.randn(6, 8, device="cuda")
    ids = torch.zeros(1, dtype=torch.int32, device="cuda").expand(_HUGE)  # a view: no memory yet
    with pytest.raises(torch.OutOfMemoryError, match=r"^recfast\.ops\.bpr_loss \(CUDA\): CUDA out of memory"):
        recfast.ops.bpr_loss(u, v, ids, ids, ids)
    # the device is still usable afterwards
    loss = recfast.ops.bpr_loss(u, v, torch.tensor([0], device="cuda"), torch.tensor([1], device="cuda"),
                                torch.tensor([2], device="cuda"))
    assert torch.isfinite(loss).item()


@requires_cuda
def test_cuda_spmm_oom_names_op():
    a = random_csr(2, 1, 1.0).to("cuda")
    dense = torch.zeros(1, 1, device="cuda").expand(1, 2**38)  # contiguous() would take 1 TiB
    with pytest.raises(torch.OutOfMemoryError, match=r"^recfast\.ops\.spmm \(CUDA\): CUDA out of memory"):
        recfast.ops.spmm(a, dense)


@requires_cuda
def test_cuda_sync_switch_runs_ops(monkeypatch):
    monkeypatch.setenv(_backend.SYNC_ENV, "1")
    calls = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: (calls.append(device), real(device)))
    u = torch.randn(4, 8, device="cuda", requires_grad=True)
    v = torch.randn(6, 8, device="cuda", requires_grad=True)
    ids = torch.tensor([0, 1], device="cuda")
    recfast.ops.bpr_loss(u, v, ids, ids + 2, ids + 4).backward()
    assert len(calls) >= 2  # the forward and the backward each synchronized
