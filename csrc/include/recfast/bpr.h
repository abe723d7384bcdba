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

// A seeded bijection of [0, n): a 4-round unbalanced Feistel network on the smallest power-of-two
// domain 2^w >= n (w >= 2), with cycle walking (apply again until the value falls below n; the
// domain is under 2n, so under 2 applications on average). O(1) memory: a shuffled epoch without a
// shuffled index array.
struct FeistelPermutation {
  std::uint64_t n = 0;
  int wa = 1, wb = 1;  // widths of the left and right halves
  std::uint64_t keys[4] = {0, 0, 0, 0};

  RF_HD FeistelPermutation() {}
  RF_HD FeistelPermutation(std::uint64_t n_, std::uint64_t seed) : n(n_) {
    int w = 2;
    while (w < 63 && (std::uint64_t{1} << w) < n) ++w;
    wa = w / 2;
    wb = w - wa;
    std::uint64_t k = seed ^ 0x6A09E667F3BCC908ull;
    for (int r = 0; r < 4; ++r) {
      k += 0x9E3779B97F4A7C15ull;
      std::uint64_t z = k;
      z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
      z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
      keys[r] = z ^ (z >> 31);
    }
  }

  RF_HD std::uint64_t once(std::uint64_t x) const {
    int a = wa, b = wb;
    std::uint64_t L = x >> b, R = x & ((std::uint64_t{1} << b) - 1);
    for (int r = 0; r < 4; ++r) {
      std::uint64_t h = (R ^ keys[r]) * 0xD1B54A32D192ED03ull;
      h ^= h >> 29;
      h *= 0x94D049BB133111EBull;
      const std::uint64_t f = (h >> 32) & ((std::uint64_t{1} << a) - 1);
      const std::uint64_t nl = R, nr = L ^ f;  // R has b bits, L ^ f has a bits
      L = nl;
      R = nr;
      const int t = a;
      a = b;
      b = t;
    }
    return (L << b) | R;  // four rounds: the widths are back to (wa, wb)
  }

  RF_HD std::uint64_t operator()(std::uint64_t p) const {
    std::uint64_t x = once(p);
    while (x >= n) x = once(x);
    return x;
  }
};

}  // namespace recfast

namespace recfast::cpu {

// Instruction sets of the float kernels (the fused SGD and bpr_loss's float forward and backward),
// chosen at run time (the build is not -march=native).
// Every variant performs the same float operations in the same order (explicit fused multiply-adds,
// a fixed 16-lane reduction tree), so they give bit-identical results. kIsaAuto picks the best the
// CPU supports; the others force one (tests compare them).
enum SgdIsa : int { kIsaAuto = -1, kIsaPortable = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

// The best variant this CPU runs (never kIsaAuto).
int sgd_isa_supported();

// loss_b (B) and coef (B*K): coef = d loss_b / d x_bk * K = -sigmoid(-x_bk). Float tables run
// 16-float vector kernels chosen by isa (as the SGD's), double tables generic loops.
template <typename T>
void bpr_forward(const T* U, const T* V, const T* bias, std::int64_t d, const std::int64_t* users,
                 const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2, T* loss,
                 T* coef, int num_threads, int isa = kIsaAuto);

// Accumulates scale[b * scale_stride] * d loss_b (scale_stride 0: one scale for the batch) into
// gU[urow[b]], gV[prow[b]], gV[nrow[b*K+k]] (and gbias at the same item rows when gbias is given).
// Rows are owned by thread (float tables in separate gradients: user rows by one group of threads,
// item rows by the other; within a group, and otherwise, by a hash of the row): each output row is
// accumulated by one thread in batch order, so repeated rows lose nothing and the result does not
// depend on the thread count. isa picks the float kernels' variant (kIsaAuto: the best; all agree
// bit for bit); double tables run generic loops.
// zero_u, zero_v > 0: the first zero_u rows of gU, zero_v rows of gV and zero_v entries of gbias
// are zeroed first, in the same parallel region (a dense gradient from uninitialised buffers;
// gV == gU, the shared-table form, is zeroed once).
template <typename T>
void bpr_backward(const T* U, const T* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                  const std::int64_t* neg, std::int64_t B, std::int64_t K, const T* coef, const T* scale,
                  std::int64_t scale_stride, double l2, const std::int64_t* urow, const std::int64_t* prow,
                  const std::int64_t* nrow, T* gU, T* gV, T* gbias, std::int64_t zero_u, std::int64_t zero_v,
                  int num_threads, int isa = kIsaAuto);

// One fused SGD step of BPR-MF: for each example, K uniform negatives drawn exactly as
// sample_negatives(csr, users, K, seed, row_offset) draws them, then the gradients of loss_b applied
// in place (Hogwild across threads: with more than one thread, updates to a shared row may
// interleave, as in implicit). Returns the mean loss.
template <typename I>
double bpr_sgd_step(float* U, float* V, float* bias, std::int64_t d, const offset_t* indptr, const I* indices,
                    std::int64_t n_items, const std::int64_t* users, const std::int64_t* pos, std::int64_t B,
                    std::int64_t K, std::uint64_t seed, std::int64_t row_offset, double lr, double l2,
                    std::int64_t* bad, int num_threads, int isa = kIsaAuto);

// Positions [start, stop) of one SGD epoch over the nnz stored entries of the CSR (indptr, indices):
// position p trains on entry e = epoch_order(p) (user row_of[e], positive indices[e]; row_of[e] is
// the row of entry e), with K negatives drawn as sample_negatives(csr, row_of[e], K, seed,
// row_offset = p) draws them, and the update of bpr_sgd_step. epoch_order is the identity
// (shuffle == false) or the FeistelPermutation(nnz, seed) above: a seeded permutation computed on
// the fly, so no shuffled index array is built. Threads take blocks of 4096 consecutive positions
// from a shared counter and update Hogwild (as bpr_sgd_step); a call for [a, b) followed by one for
// [b, c) equals one call for [a, c) when num_threads == 1. Returns the sum over the trained positions of loss_b and writes
// their number to *count; *bad receives the lowest position whose user has no negative (-1: none).
template <typename I>
double bpr_sgd_epoch(float* U, float* V, float* bias, std::int64_t d, const offset_t* indptr, const I* indices,
                     std::int64_t n_items, const std::int32_t* row_of, std::int64_t nnz, std::int64_t start,
                     std::int64_t stop, bool shuffle, std::int64_t K, std::uint64_t seed, double lr, double l2,
                     std::int64_t* count, std::int64_t* bad, int num_threads, int isa = kIsaAuto);

}  // namespace recfast::cpu

struct CUstream_st;

namespace recfast::cuda {

// Tables are stored as S: float, double, or (CUDA only) __half and __nv_bfloat16. Every load is
// converted to acc_t<S> (common.h: double for double, float otherwise) and all arithmetic, coef,
// scale and the gradients are acc_t<S>: half tables get float32 accumulation and float32 gradient
// buffers, which the caller rounds to the tables' dtype once at the end (repeated rows summed in
// half would lose low bits on every add). The per-example loss is written as S.
template <typename S>
void bpr_forward(const S* U, const S* V, const S* bias, std::int64_t d, const std::int64_t* users,
                 const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2, S* loss,
                 acc_t<S>* coef, CUstream_st* stream);

// The scatter uses atomicAdd: correct for repeated rows, but the summation order (and so the last
// bits) may vary between runs.
template <typename S>
void bpr_backward(const S* U, const S* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                  const std::int64_t* neg, std::int64_t B, std::int64_t K, const acc_t<S>* coef,
                  const acc_t<S>* scale, double l2, const std::int64_t* urow, const std::int64_t* prow,
                  const std::int64_t* nrow, acc_t<S>* gU, acc_t<S>* gV, acc_t<S>* gbias,
                  CUstream_st* stream);

}  // namespace recfast::cuda
