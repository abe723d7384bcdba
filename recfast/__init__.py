"""recfast: compiled CPU/CUDA kernels for recommender systems under a thin PyTorch layer."""

from __future__ import annotations

try:
    from . import _C
except ImportError as _e:  # pragma: no cover - depends on how recfast was imported
    raise ImportError(
        f"recfast's compiled module recfast._C was not found next to {__file__}. If this is a source "
        "checkout, Python is importing it instead of the installed package: run from another folder "
        "after `pip install .`, or build it in place with tools/build_inplace.sh."
    ) from _e
from ._backend import build_info, cuda_available
from .csr import CSR

__version__: str = _C.__version__

from . import data, eval, graph, models, ops, optim  # noqa: E402
from .registry import build_model, get_model, list_models, register_model  # noqa: E402
from .trainers import Trainer  # noqa: E402

__all__ = [
    "CSR", "build_info", "cuda_available", "data", "eval", "graph", "models", "ops", "optim",
    "register_model", "get_model", "list_models", "build_model", "Trainer", "__version__",
]
