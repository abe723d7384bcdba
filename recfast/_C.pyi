# Type stubs for recfast._C, the CPU kernels. Arrays are C-contiguous numpy arrays of the exact
# dtype named (no conversion happens); int arrays named `indices` may be int32 or int64.
from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

def build_info() -> dict[str, Any]: ...
def max_threads() -> int: ...
def csr_check(indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], n_cols: int) -> str: ...
def csr_transpose(
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], values: npt.NDArray[np.float32] | None, n_cols: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any], npt.NDArray[np.float32] | None]: ...
def csr_from_coo_i32(
    rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], values: npt.NDArray[np.float32] | None,
    n_rows: int, duplicates: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float32] | None, int]: ...
def csr_from_coo_i64(
    rows: npt.NDArray[np.int64], cols: npt.NDArray[np.int64], values: npt.NDArray[np.float32] | None,
    n_rows: int, duplicates: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32] | None, int]: ...

# --- sampling ---
def sample_negatives(
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], n_items: int, users: npt.NDArray[np.int64],
    num_negatives: int, seed: int, row_offset: int, replace: bool, cum: npt.NDArray[np.float64] | None,
    keys: npt.NDArray[np.float64] | None, out: npt.NDArray[np.int64], num_threads: int,
    guide: npt.NDArray[np.int64] | None = None,
) -> int: ...
def sample_triples(
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], n_items: int, row_of: npt.NDArray[np.int64],
    order: npt.NDArray[np.int64], num_negatives: int, seed: int, row_offset: int, replace: bool,
    cum: npt.NDArray[np.float64] | None, keys: npt.NDArray[np.float64] | None, users_out: npt.NDArray[np.int64],
    items_out: npt.NDArray[np.int64], out: npt.NDArray[np.int64], num_threads: int,
    guide: npt.NDArray[np.int64] | None = None,
) -> int: ...
def sample_epoch_triples(
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], n_items: int, row_of: npt.NDArray[np.int64],
    shuffle: bool, order_seed: int, start: int, num_negatives: int, seed: int, replace: bool,
    cum: npt.NDArray[np.float64] | None, keys: npt.NDArray[np.float64] | None, guide: npt.NDArray[np.int64] | None,
    users_out: npt.NDArray[np.int64], items_out: npt.NDArray[np.int64], out: npt.NDArray[np.int64],
    num_threads: int,
) -> int: ...
def sampling_cdf_guide(cum: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]: ...
def sampling_isa() -> str: ...
def set_sampling_isa(isa: str) -> str: ...
def sampling_isas() -> list[str]: ...

# --- topk ---
def topk_merge(
    scores: npt.NDArray[np.float32], tile_start: int, tile_len: int, rows: npt.NDArray[np.int64] | None,
    ex_indptr: npt.NDArray[np.int64], ex_indices: npt.NDArray[Any], top_scores: npt.NDArray[np.float32],
    top_ids: npt.NDArray[np.int64], num_threads: int,
) -> None: ...
def topk_fused(
    queries: npt.NDArray[np.float32], keys: npt.NDArray[np.float32], key_bias: npt.NDArray[np.float32] | None,
    rows: npt.NDArray[np.int64] | None, ex_indptr: npt.NDArray[np.int64], ex_indices: npt.NDArray[Any],
    top_scores: npt.NDArray[np.float32], top_ids: npt.NDArray[np.int64], isa: str, num_threads: int,
) -> None: ...
def topk_fused_best_isa() -> str: ...
def topk_finalize(top_scores: npt.NDArray[np.float32], top_ids: npt.NDArray[np.int64], num_threads: int) -> None: ...
def topk_hits(
    ids: npt.NDArray[np.int64], users: npt.NDArray[np.int64], indptr: npt.NDArray[np.int64],
    indices: npt.NDArray[Any], out: npt.NDArray[np.uint8], num_threads: int,
) -> None: ...

# --- spmm ---
def spmm(
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], values: npt.NDArray[Any] | None,
    dense: npt.NDArray[Any], out: npt.NDArray[Any], num_threads: int,
) -> None: ...
def lightgcn_propagate(
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], values: npt.NDArray[Any] | None, emb: npt.NDArray[Any],
    weights: list[float], out: npt.NDArray[Any], buf_a: npt.NDArray[Any], buf_b: npt.NDArray[Any], num_threads: int,
) -> None: ...
def normalized_adjacency(
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], t_indptr: npt.NDArray[np.int64],
    t_indices: npt.NDArray[Any], n_items: int, normalization: int, self_loops: bool,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any], npt.NDArray[np.float32]]: ...

# --- bpr ---
def bpr_forward(
    user_emb: npt.NDArray[Any], item_emb: npt.NDArray[Any], item_bias: npt.NDArray[Any] | None,
    users: npt.NDArray[np.int64], pos: npt.NDArray[np.int64], neg: npt.NDArray[np.int64], l2: float,
    loss: npt.NDArray[Any], coef: npt.NDArray[Any], num_threads: int, isa: int = -1,
) -> None: ...
def bpr_backward(
    user_emb: npt.NDArray[Any], item_emb: npt.NDArray[Any], users: npt.NDArray[np.int64], pos: npt.NDArray[np.int64],
    neg: npt.NDArray[np.int64], coef: npt.NDArray[Any], scale: npt.NDArray[Any], l2: float,
    urow: npt.NDArray[np.int64], prow: npt.NDArray[np.int64], nrow: npt.NDArray[np.int64], grad_user: npt.NDArray[Any],
    grad_item: npt.NDArray[Any], grad_bias: npt.NDArray[Any] | None, num_threads: int, zero: bool = False,
    isa: int = -1,
) -> None: ...
def bpr_backward_sparse(
    user_emb: npt.NDArray[Any], item_emb: npt.NDArray[Any], users: npt.NDArray[np.int64], pos: npt.NDArray[np.int64],
    neg: npt.NDArray[np.int64], coef: npt.NDArray[Any], scale: npt.NDArray[Any], l2: float,
    urows: npt.NDArray[np.int64], urow: npt.NDArray[np.int64], irows: npt.NDArray[np.int64],
    iinv: npt.NDArray[np.int64], grad_user: npt.NDArray[Any], grad_item: npt.NDArray[Any],
    grad_bias: npt.NDArray[Any] | None, num_threads: int,
) -> tuple[int, int]: ...
def bpr_sgd_step(
    user_emb: npt.NDArray[np.float32], item_emb: npt.NDArray[np.float32], item_bias: npt.NDArray[np.float32] | None,
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], users: npt.NDArray[np.int64],
    pos: npt.NDArray[np.int64], num_negatives: int, seed: int, row_offset: int, lr: float, l2: float,
    num_threads: int, isa: int = -1,
) -> tuple[float, int]: ...
def bpr_sgd_epoch(
    user_emb: npt.NDArray[np.float32], item_emb: npt.NDArray[np.float32], item_bias: npt.NDArray[np.float32] | None,
    indptr: npt.NDArray[np.int64], indices: npt.NDArray[Any], row_of: npt.NDArray[np.int32], start: int, stop: int,
    shuffle: bool, num_negatives: int, seed: int, lr: float, l2: float, num_threads: int, isa: int = -1,
) -> tuple[float, int, int]: ...
def bpr_epoch_order(nnz: int, seed: int, start: int, stop: int) -> npt.NDArray[np.int64]: ...
def bpr_sgd_isa() -> int: ...

# --- optim ---
def sparse_opt_step(
    kind: int, lr: float, weight_decay: float, beta1: float, beta2: float, eps: float, bias_correction1: float,
    bias_correction2: float, param: npt.NDArray[Any], state1: npt.NDArray[Any] | None,
    state2: npt.NDArray[Any] | None, rows: npt.NDArray[np.int64], grad: npt.NDArray[Any], num_threads: int,
) -> None: ...
def unique_rows(
    ids: npt.NDArray[np.int64], upper: int, rows: npt.NDArray[np.int64], inverse: npt.NDArray[np.int64],
) -> int: ...
