// Row-sparse optimizer steps (see recfast/optim.py): each updates only the m rows `rows` of a
// (n, d) parameter, given their summed gradients grad (m, d); rows are distinct.
#pragma once
#include <cstdint>

#include "recfast/common.h"

namespace recfast {

enum class SparseOpt : int { SGD = 0, Adagrad = 1, Adam = 2 };

struct SparseOptParams {
  double lr, weight_decay;
  double beta1, beta2, eps;       // Adam (eps also Adagrad)
  double bias_correction1;        // Adam: 1 - beta1^step
  double bias_correction2;        // Adam: 1 - beta2^step
};

// Element t of row r: the same arithmetic on both backends (torch's SparseAdam / Adagrad formulas;
// weight decay adds weight_decay * p to the gradient of the touched rows).
template <typename T>
RF_HD void sparse_opt_element(SparseOpt kind, const SparseOptParams& h, T* p, T g, T* s1, T* s2) {
  g += static_cast<T>(h.weight_decay) * *p;
  if (kind == SparseOpt::SGD) {
    *p -= static_cast<T>(h.lr) * g;
  } else if (kind == SparseOpt::Adagrad) {
    *s1 += g * g;
    *p -= static_cast<T>(h.lr) * g / (sqrt(*s1) + static_cast<T>(h.eps));
  } else {
    *s1 += (g - *s1) * static_cast<T>(1.0 - h.beta1);
    *s2 += (g * g - *s2) * static_cast<T>(1.0 - h.beta2);
    const T step = static_cast<T>(h.lr * sqrt(h.bias_correction2) / h.bias_correction1);
    *p -= step * *s1 / (sqrt(*s2) + static_cast<T>(h.eps));
  }
}

}  // namespace recfast

namespace recfast::cpu {

template <typename T>
void sparse_opt_step(SparseOpt kind, const SparseOptParams& h, T* param, T* state1, T* state2, std::int64_t d,
                     const std::int64_t* rows, const T* grad, std::int64_t m, int num_threads);

// torch.unique(ids, return_inverse=True) for ids in [0, upper), by a bitmap over [0, upper)
// instead of a sort (O(n + upper / 64)) while the range is under 256 n + 2^20 (its 16 bytes per 64
// ids, bits and ranks, then stay near the ids' size), by a sort beyond: the distinct ids ascending
// into rows (room for min(n, upper)), inverse[b] = the position of ids[b] in rows. Returns their
// count, or -1 - b for the first b whose id is out of range.
std::int64_t unique_rows(const std::int64_t* ids, std::int64_t n, std::int64_t upper, std::int64_t* rows,
                         std::int64_t* inverse);

}  // namespace recfast::cpu

struct CUstream_st;

namespace recfast::cuda {

// Parameters stored as P: float, double, __half or __nv_bfloat16. States and gradients are acc_t<P>
// (float32 for half parameters); each element is updated in acc_t<P> and rounded to P once.
template <typename P>
void sparse_opt_step(SparseOpt kind, const SparseOptParams& h, P* param, acc_t<P>* state1, acc_t<P>* state2,
                     std::int64_t d, const std::int64_t* rows, const acc_t<P>* grad, std::int64_t m,
                     CUstream_st* stream);

}  // namespace recfast::cuda
