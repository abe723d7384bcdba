// Fused BPR (see recfast/ops/bpr.py).
//
// For example b with user u, positive i and negatives j_1..j_K:
//   x_bk = <U[u], V[i] - V[j_k]> + bias[i] - bias[j_k]
//   loss_b = (1/K) sum_k softplus(-x_bk) + l2/2 * (|U[u]|^2 + |V[i]|^2 + (1/K) sum_k |V[j_k]|^2)
// softplus(z) = max(z, 0) + log1p(exp(-|z|)) is exact for |x| up to float's range (x = -80 gives 80).
#pragma once
#include <cmath>
#include <cstdint>

#include "recfast/common.h"

namespace recfast {

RF_HD double softplus(double z) { return (z > 0 ? z : 0.0) + log1p(exp(-fabs(z))); }

RF_HD double sigmoid(double z) {
  if (z >= 0) return 1.0 / (1.0 + exp(-z));
  const double e = exp(z);
  return e / (1.0 + e);
}

}  // namespace recfast

namespace recfast::cpu {

// loss_b (B) and coef (B*K): coef = d loss_b / d x_bk * K = -sigmoid(-x_bk).
template <typename T>
void bpr_forward(const T* U, const T* V, const T* bias, std::int64_t d, const std::int64_t* users,
                 const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2, T* loss,
                 T* coef, int num_threads);

// Accumulates scale[b] * d loss_b into gU[urow[b]], gV[prow[b]], gV[nrow[b*K+k]] (and gbias at the
// same item rows when gbias is given). Rows are owned by thread (row % threads): each output row is
// accumulated by one thread in batch order, so repeated rows lose nothing and the result does not
// depend on the thread count.
template <typename T>
void bpr_backward(const T* U, const T* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                  const std::int64_t* neg, std::int64_t B, std::int64_t K, const T* coef, const T* scale, double l2,
                  const std::int64_t* urow, const std::int64_t* prow, const std::int64_t* nrow, T* gU, T* gV, T* gbias,
                  int num_threads);

// One fused SGD step of BPR-MF: for each example, K uniform negatives drawn exactly as
// sample_negatives(csr, users, K, seed, row_offset) draws them, then the gradients of loss_b applied
// in place (Hogwild across threads: with more than one thread, updates to a shared row may
// interleave, as in implicit). Returns the mean loss.
template <typename I>
double bpr_sgd_step(float* U, float* V, float* bias, std::int64_t d, const offset_t* indptr, const I* indices,
                    std::int64_t n_items, const std::int64_t* users, const std::int64_t* pos, std::int64_t B,
                    std::int64_t K, std::uint64_t seed, std::int64_t row_offset, double lr, double l2,
                    std::int64_t* bad, int num_threads);

}  // namespace recfast::cpu

struct CUstream_st;

namespace recfast::cuda {

template <typename T>
void bpr_forward(const T* U, const T* V, const T* bias, std::int64_t d, const std::int64_t* users,
                 const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2, T* loss,
                 T* coef, CUstream_st* stream);

// The scatter uses atomicAdd: correct for repeated rows, but the summation order (and so the last
// bits) may vary between runs.
template <typename T>
void bpr_backward(const T* U, const T* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                  const std::int64_t* neg, std::int64_t B, std::int64_t K, const T* coef, const T* scale, double l2,
                  const std::int64_t* urow, const std::int64_t* prow, const std::int64_t* nrow, T* gU, T* gV, T* gbias,
                  CUstream_st* stream);

}  // namespace recfast::cuda
