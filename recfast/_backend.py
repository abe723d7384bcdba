"""Loading the compiled modules and the helpers every op uses to validate and dispatch.

Ops validate on the Python side (dtype, device, shape, ranges) and then route on
``tensor.device.type``: CPU tensors go to ``recfast._C`` as numpy views (no copy), CUDA tensors to
``recfast._C_cuda`` as raw pointers plus the current stream. Without ``_C_cuda`` a CUDA input runs
the op's torch reference on the GPU after a one-time warning; never a silent fallback.

CUDA errors name the op. Every public op (and each autograd backward) runs inside ``cuda_errors``:
a ``torch.OutOfMemoryError``, ``torch.AcceleratorError`` or CUDA ``RuntimeError`` raised there
(by torch's allocator, a torch call, or a ``_C_cuda`` launch check) is raised again as the same
type, its message prefixed "recfast.ops.<op> (CUDA): ", the original chained as ``__cause__``.
Kernels run asynchronously, so a fault inside a kernel (an illegal address) is only reported by
a later synchronizing call, possibly someone else's; with ``RECFAST_CUDA_SYNC=1`` in the
environment each op synchronizes its devices before returning, so the op that faulted reports it
(a debugging switch: it costs a host-device round trip per op).
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
import weakref
from types import ModuleType, TracebackType
from typing import Any, Callable, Iterable, TypeVar

import numpy as np
import torch

from . import _C

try:  # built only where CMake found a CUDA toolkit
    from . import _C_cuda as _C_cuda_module
except ImportError:  # pragma: no cover - depends on the build
    _C_cuda_module = None

_C_cuda: ModuleType | None = _C_cuda_module
_warned_reference = False
_F = TypeVar("_F", bound=Callable[..., Any])


def build_info() -> dict[str, Any]:
    """What was compiled: version, compiler, OpenMP, CUDA and its architectures.

    Example
    -------
    >>> import recfast
    >>> recfast.build_info()["version"] == recfast.__version__
    True
    """
    info = dict(_C.build_info())
    info["openmp_max_threads"] = int(_C.max_threads())
    info["cuda"] = _C_cuda is not None
    info["cuda_architectures"] = [int(a) for a in info.pop("cuda_architectures").split(",") if a]
    info["cuda_devices"] = _C_cuda.device_count() if _C_cuda is not None else 0
    return info


def cuda_available() -> bool:
    """True when recfast's CUDA kernels can run here: built with CUDA and a GPU is visible.

    Example
    -------
    >>> import recfast
    >>> isinstance(recfast.cuda_available(), bool)
    True
    """
    return _C_cuda is not None and torch.cuda.is_available() and _C_cuda.device_count() > 0


def cuda_module(op: str) -> ModuleType | None:
    """``_C_cuda`` when it can run, else None after warning (once) that the reference is used."""
    global _warned_reference
    if _C_cuda is not None:
        return _C_cuda
    if not _warned_reference:
        warnings.warn(
            "recfast was built without CUDA kernels; using the slow reference",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned_reference = True
    return None


# ---------------------------------------------------------------------------------------------
# CUDA errors: named by the op that raised them.
# ---------------------------------------------------------------------------------------------

SYNC_ENV = "RECFAST_CUDA_SYNC"


def cuda_sync_enabled() -> bool:
    """True when ``RECFAST_CUDA_SYNC`` asks each op to synchronize its devices before returning."""
    return os.environ.get(SYNC_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def _qualified(op: str) -> str:
    return op if "." in op else f"recfast.ops.{op}"


def _is_cuda_error(e: BaseException) -> bool:
    if isinstance(e, (torch.OutOfMemoryError, torch.AcceleratorError)):
        return True
    # torch's CUDA checks and recfast::cuda::check both say "CUDA error"; the allocator "CUDA out of memory".
    return isinstance(e, RuntimeError) and "CUDA" in str(e)


def _named(op: str, e: RuntimeError, synced: bool) -> RuntimeError:
    """``e`` again, same type, its message prefixed with the op (a launch check's allocation failure,
    a plain RuntimeError naming cudaErrorMemoryAllocation, becomes the OutOfMemoryError it is)."""
    msg = str(e)
    cls: type[RuntimeError] = type(e)
    if cls is RuntimeError and "cudaErrorMemoryAllocation" in msg:
        cls = torch.OutOfMemoryError
    text = f"{_qualified(op)} (CUDA): {msg}"
    if not issubclass(cls, torch.OutOfMemoryError) and not synced:
        text += (f" (kernel faults are reported asynchronously, possibly by a later op: set {SYNC_ENV}=1 to have "
                 "each recfast op synchronize, or CUDA_LAUNCH_BLOCKING=1)")
    try:
        new = cls(text)
    except Exception:  # an exception type whose constructor wants more than a message
        new = RuntimeError(text)
    new._recfast_op = _qualified(op)  # type: ignore[attr-defined]
    return new


def _cuda_devices(objs: Iterable[Any]) -> list[torch.device]:
    """The CUDA devices of the real (not fake, not meta) tensors and CSR matrices among ``objs``."""
    from torch._subclasses.fake_tensor import is_fake

    out: list[torch.device] = []
    for o in objs:
        dev = getattr(o, "device", None)
        if isinstance(dev, torch.device) and dev.type == "cuda" and dev not in out:
            if isinstance(o, torch.Tensor) and is_fake(o):
                continue
            out.append(dev)
    return out


class cuda_errors:
    """Name ``op`` in the CUDA errors raised inside; a context manager or a decorator.

    ``torch.OutOfMemoryError``, ``torch.AcceleratorError`` and any ``RuntimeError`` about CUDA
    are raised again as the same type with the message prefixed "recfast.ops.<op> (CUDA): "
    (``op`` without a dot is taken as a ``recfast.ops`` name) and the original as ``__cause__``;
    an error already named by an inner ``cuda_errors`` passes unchanged, and anything else too.
    With ``RECFAST_CUDA_SYNC=1`` a call that succeeded synchronizes the CUDA devices of its
    arguments (the decorator) or ``device`` (the context manager; none when it is None), so an
    asynchronous fault is raised here, named. Under ``torch.compile`` tracing it does nothing.

    Example
    -------
    >>> import torch
    >>> from recfast._backend import cuda_errors
    >>> try:
    ...     with cuda_errors("bpr_loss"):
    ...         raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 TiB")
    ... except torch.OutOfMemoryError as e:
    ...     print(e)
    recfast.ops.bpr_loss (CUDA): CUDA out of memory. Tried to allocate 1 TiB
    """

    def __init__(self, op: str, device: torch.device | None = None) -> None:
        self.op = op
        self.device = device

    def __enter__(self) -> "cuda_errors":
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> bool:
        if e is None:
            if self.device is not None and cuda_sync_enabled() and torch.cuda.is_initialized():
                self._sync([self.device])
            return False
        self._rename(e)
        return False

    def _rename(self, e: BaseException, synced: bool = False) -> None:
        if isinstance(e, RuntimeError) and _is_cuda_error(e) and not hasattr(e, "_recfast_op"):
            raise _named(self.op, e, synced or cuda_sync_enabled()) from e

    def _sync(self, devices: list[torch.device | None]) -> None:
        try:
            for dev in devices:
                torch.cuda.synchronize(dev)
        except RuntimeError as e:  # the fault of a kernel this op launched (or an earlier one's)
            self._rename(e, synced=True)
            raise

    def __call__(self, fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if torch.compiler.is_compiling():
                return fn(*args, **kwargs)
            try:
                out = fn(*args, **kwargs)
            except RuntimeError as e:
                self._rename(e)
                raise
            if cuda_sync_enabled() and torch.cuda.is_initialized():
                self._sync(_cuda_devices([*args, *kwargs.values()]))
            return out

        return wrapper  # type: ignore[return-value]


def stream_of(t: torch.Tensor) -> int:
    """The raw handle of the current CUDA stream on ``t``'s device."""
    return int(torch.cuda.current_stream(t.device).cuda_stream)


def np_view(t: torch.Tensor) -> np.ndarray:
    """A numpy view of a contiguous CPU tensor (no copy): kernels write through it."""
    return t.detach().numpy()


# ---------------------------------------------------------------------------------------------
# Validation. Every message names the op, the argument, what was expected and what was received.
# ---------------------------------------------------------------------------------------------

def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def check_tensor(
    op: str,
    name: str,
    t: Any,
    *,
    dtypes: Iterable[torch.dtype] | None = None,
    ndim: int | Iterable[int] | None = None,
    device: torch.device | None = None,
    contiguous: bool = True,
) -> torch.Tensor:
    """Raise TypeError/ValueError naming ``op`` and ``name`` unless ``t`` fits; return it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            want = " or ".join(_dtype_name(d) for d in dtypes)
            raise TypeError(f"{op}: {name} must be a {want} tensor, got {_dtype_name(t.dtype)}")
    if ndim is not None:
        dims = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in dims:
            want = " or ".join(str(d) for d in dims)
            raise ValueError(f"{op}: {name} must have {want} dimensions, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device}, expected {device} (all inputs must share one device)")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be contiguous; call .contiguous() first")
    return t


def check_range(op: str, name: str, t: torch.Tensor, upper: int) -> None:
    """Raise ValueError unless every entry of integer tensor ``t`` lies in [0, upper)."""
    if t.numel() == 0:
        return
    lo_t, hi_t = torch.aminmax(t)  # one pass over the ids
    lo, hi = int(lo_t), int(hi_t)
    if lo < 0 or hi >= upper:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{op}: {name} holds id {bad}, expected 0 <= id < {upper}")


INDEX_DTYPES = (torch.int32, torch.int64)

MAX_THREADS = 1024
"""The most OpenMP threads an op accepts: far more asked for crashed libgomp (10**6 segfaulted)."""


def check_threads(op: str, num_threads: Any) -> int:
    """``num_threads`` as the kernels take it (0: OpenMP's default); TypeError/ValueError naming
    ``op`` unless it is None or an int in [0, MAX_THREADS]."""
    if num_threads is None:
        return 0
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"{op}: num_threads must be None or an int, got {type(num_threads).__name__}")
    n = int(num_threads)
    if not 0 <= n <= MAX_THREADS:
        raise ValueError(f"{op}: num_threads must be in [0, {MAX_THREADS}] (0 or None: OpenMP's default), got {n}")
    return n


_POOL_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


class _BufferPool:
    """Recycled CPU memory for the dense gradient tables the backward kernels fill.

    A gradient the size of an embedding table is allocated on every backward call and freed when
    the optimizer drops ``.grad``. glibc hands memory of that size back to the OS on free (tables
    above its mmap threshold are unmapped, smaller ones trimmed off the heap top), so the next call
    faults every page in again: at batch 2,048 that costs more than the kernel's work. Here a
    freed buffer returns to the pool instead, when the last tensor viewing it dies (a weakref
    finalizer on the numpy view the tensor holds), and the next request of the same size takes it.
    Buffers under ``min_bytes`` are left to malloc; the pool keeps at most ``max_bytes``
    (``RECFAST_BUFFER_POOL=0`` turns it off, ``clear()`` empties it).
    """

    def __init__(self, min_bytes: int = 1 << 20, max_bytes: int = 1 << 30) -> None:
        self.min_bytes, self.max_bytes = min_bytes, max_bytes
        self._free: dict[int, list[np.ndarray]] = {}
        self._held = 0
        self._lock = threading.RLock()  # a finalizer may run on this thread while it holds the lock

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous CPU tensor; the kernels that take it write every element."""
        np_dtype = _POOL_DTYPES.get(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * (np_dtype.itemsize if np_dtype is not None else 0)
        if nbytes < self.min_bytes or os.environ.get("RECFAST_BUFFER_POOL", "1") == "0":
            return torch.empty(shape, dtype=dtype)
        with self._lock:
            free = self._free.get(nbytes)
            raw = free.pop() if free else None
            if raw is not None:
                self._held -= nbytes
        if raw is None:
            raw = np.empty(nbytes, dtype=np.uint8)
        view = raw.view(np_dtype).reshape(shape)
        weakref.finalize(view, self._give_back, raw)
        return torch.from_numpy(view)

    def _give_back(self, raw: np.ndarray) -> None:
        with self._lock:
            if self._held + raw.nbytes <= self.max_bytes:
                self._free.setdefault(raw.nbytes, []).append(raw)
                self._held += raw.nbytes

    def clear(self) -> None:
        """Hand every pooled buffer back to the allocator."""
        with self._lock:
            self._free.clear()
            self._held = 0

    @property
    def held_bytes(self) -> int:
        return self._held


cpu_buffers = _BufferPool()
