"""Loading the compiled modules and the helpers every op uses to validate and dispatch.

Ops validate on the Python side (dtype, device, shape, ranges) and then route on
``tensor.device.type``: CPU tensors go to ``recfast._C`` as numpy views (no copy), CUDA tensors to
``recfast._C_cuda`` as raw pointers plus the current stream. Without ``_C_cuda`` a CUDA input runs
the op's torch reference on the GPU after a one-time warning; never a silent fallback.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any, Iterable

import numpy as np
import torch

from . import _C

try:  # built only where CMake found a CUDA toolkit
    from . import _C_cuda as _C_cuda_module
except ImportError:  # pragma: no cover - depends on the build
    _C_cuda_module = None

_C_cuda: ModuleType | None = _C_cuda_module
_warned_reference = False


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
