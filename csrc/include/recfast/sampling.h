// Negative sampling contract (see also recfast/ops/sampling.py).
#pragma once
#include <cstdint>

#include "recfast/common.h"

namespace recfast {

// The r-th item (0-based) not present in a sorted, duplicate-free row of length deg, for
// 0 <= r < n_items - deg. row[j] - j is non-decreasing, so the answer is r + (the number of
// row entries that precede it), found by binary search in O(log deg).
template <typename I>
RF_HD std::int64_t kth_unseen(const I* row, std::int64_t deg, std::int64_t r) {
  // Branchless lower bound (the select compiles to a conditional move): random r makes the
  // comparisons unpredictable, and mispredictions would dominate a branchy search.
  std::int64_t lo = 0, n = deg;
  while (n > 0) {
    const std::int64_t half = n >> 1;
    const std::int64_t mid = lo + half;
    const bool right = static_cast<std::int64_t>(row[mid]) - mid <= r;
    lo = right ? mid + 1 : lo;
    n = right ? n - half - 1 : half;
  }
  return r + lo;
}

}  // namespace recfast

#include "recfast/rng.h"

namespace recfast {

// Weighted draws use an inverse CDF over the complement of the row:
//   cum[i] = w_0 + ... + w_{i-1} (n_items + 1 doubles, cum[0] = 0) is the global prefix;
//   G[p] = w(indices[0]) + ... + w(indices[p-1]) is the prefix over the stored entries, so the
//   weight of a row's first j entries is P_j = G[s + j] - G[s] (s = indptr[u]);
//   the complement mass below item x is C(x) = cum[x] - P_{#row entries < x}.
// A target t in [0, C(n_items)) maps to the smallest x with C(x + 1) > t, which is never a row
// item (those add no mass). The kernels read one table besides cum, built once per (csr, weights)
// by the caller (recfast/ops/sampling.py): row u's keys, deg + 1 doubles from keys + s + u,
//   key_j = C(row[j]) = cum[row[j]] - P_j for j < deg (non-decreasing), and
//   key_deg = C(n_items) = cum[n_items] - P_deg, the row's complement mass (the draw's scale).
// A draw counts lo = #{j < deg : key_j <= t} (the row search: 8-byte keys, read where the uniform
// search reads the 4-byte indices), after which the answer lies in the gap between the row items
// prev = row[lo - 1] and row[lo]. Inside that gap C(x) = cum[x] - P_lo, and P_lo = cum[prev + 1] -
// key_{lo-1} (the item prev adds no complement mass), so the global CDF target is
//   ta = (t - key_{lo-1}) + cum[prev + 1]   (ta = t when lo = 0),
// and x solves cum[x] <= ta < cum[x + 1]. Nothing per entry but the key: the whole draw reads the
// keys, the two indices around the answer and cum, the fewest cache lines a draw can touch. (An
// earlier layout of 16-byte records per entry overflowed the last-level cache of a shared VM, where
// each of its misses went to DRAM: 4-5x the uniform draw's time.) 8 bytes an entry and one per
// row. weighted_finish repairs the rare rounding at a gap's edge; the answer is never a row item.

// #{j < n : key_j <= t} over a row's keys (a branchless lower bound; the keys are non-decreasing).
// Integer masks rather than conditionals: the comparisons are unpredictable.
RF_HD std::int64_t key_count(const double* rowk, std::int64_t n, double t) {
  std::int64_t lo = 0;
  while (n > 0) {
    const std::int64_t half = n >> 1;
    const std::int64_t mid = lo + half;
    const std::int64_t right = -static_cast<std::int64_t>(rowk[mid] <= t);
    lo += (mid + 1 - lo) & right;
    n = (half & ~right) | ((n - half - 1) & right);
  }
  return lo;
}

// Row u's keys: keys + indptr[u] + u.
RF_HD const double* row_keys(const double* keys, offset_t start, std::int64_t u) { return keys + start + u; }

// The global CDF target of complement target t after lo row items (see above).
template <typename I>
RF_HD double gap_target(const double* cum, const I* row, const double* rowk, std::int64_t lo, double t) {
  return lo > 0 ? (t - rowk[lo - 1]) + cum[static_cast<std::int64_t>(row[lo - 1]) + 1] : t;
}

template <typename I>
RF_HD std::int64_t row_below(const I* row, std::int64_t deg, std::int64_t x) {
  std::int64_t lo = 0, hi = deg;
  while (lo < hi) {
    const std::int64_t mid = lo + ((hi - lo) >> 1);
    if (static_cast<std::int64_t>(row[mid]) < x) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// #{j < n : key_j <= t} by the exact keys, with rowG[j] - rowG[0] = P_j: a row and its prefix, for
// rows that change between draws (weighted sampling without replacement).
template <typename I>
RF_HD std::int64_t weighted_row_count_prefix(const double* cum, const I* row, const double* rowG, std::int64_t n,
                                             double t) {
  std::int64_t lo = 0;
  while (n > 0) {
    const std::int64_t half = n >> 1;
    const std::int64_t mid = lo + half;
    const std::int64_t right =
        -static_cast<std::int64_t>(cum[static_cast<std::int64_t>(row[mid])] - (rowG[mid] - rowG[0]) <= t);
    lo += (mid + 1 - lo) & right;
    n = (half & ~right) | ((n - half - 1) & right);
  }
  return lo;
}

// #{x in [a, a + m) : cum[x + 1] <= ta} + a: over [0, n_items) it is the global search.
RF_HD std::int64_t cdf_count(const double* cum, std::int64_t a, std::int64_t m, double ta) {
  while (m > 0) {
    const std::int64_t half = m >> 1;
    const std::int64_t mid = a + half;
    const std::int64_t right = -static_cast<std::int64_t>(cum[mid + 1] <= ta);
    a += (mid + 1 - a) & right;
    m = (half & ~right) | ((m - half - 1) & right);
  }
  return a;
}

// A guide over the global CDF (CPU): guide[j] = #{x : cum[x + 1] <= j * total / M} for
// j = 0..M, M = cdf_guide_buckets(n_items), inv_h = M / total. The bucket of ta brackets the
// answer of the global search; when rounding put ta in a neighbouring bucket, the walk after the
// bracketed search corrects it, so the result is that of the full search (cum is non-decreasing).
// One bucket of equal mass per 16 items: the table (half a byte per item, 20 KB for 41 k items)
// takes little of the L2 that the rows' keys and cum compete for, where a bucket per item took as
// much as cum; the search inside a bucket costs ~4 more steps over its ~2 cache lines of cum. On 2
// threads of an Intel Xeon VM, 810 k weighted draws on the Gowalla-shaped set took 9.9 instead of
// 10.8 ms (medians of 12 alternating processes; the same draws; 1 thread unchanged).
constexpr std::int64_t kGuideItems = 16;
RF_HD std::int64_t cdf_guide_buckets(std::int64_t n_items) {
  return n_items / kGuideItems > 1 ? n_items / kGuideItems : 1;
}

RF_HD std::int64_t guide_bucket(std::int64_t M, double inv_h, double ta) {
  const double q = ta * inv_h;
  return q < 1.0 ? 0 : (q >= static_cast<double>(M - 1) ? M - 1 : static_cast<std::int64_t>(q));
}

RF_HD void guide_bracket(const std::int64_t* guide, std::int64_t M, double inv_h, double ta, std::int64_t* a,
                         std::int64_t* m) {
  const std::int64_t j = guide_bucket(M, inv_h, ta);
  *a = guide[j];
  *m = guide[j + 1] - guide[j];
}

RF_HD std::int64_t guide_fixup(const double* cum, std::int64_t n_items, std::int64_t a, double ta) {
  while (a > 0 && cum[a] > ta) --a;
  while (a < n_items && cum[a + 1] <= ta) ++a;
  return a;
}

// x = a after `lo` row items: accept it, or repair a rounding at a boundary.
template <typename I>
RF_HD std::int64_t weighted_finish(const double* cum, std::int64_t n_items, const I* row, std::int64_t deg,
                                   std::int64_t lo, std::int64_t a) {
  // Exact arithmetic puts x after exactly `lo` row items, outside the row, with positive weight.
  if (a < n_items && cum[a + 1] - cum[a] > 0.0 && (lo >= deg || static_cast<std::int64_t>(row[lo]) != a) &&
      (lo == 0 || static_cast<std::int64_t>(row[lo - 1]) < a)) {
    return a;
  }
  // Rounding at a boundary can land on a row item, a zero-weight item or past the end: step
  // forward to the next item outside the row with positive weight, else back to the previous one.
  // None at all (the row holds every item of positive weight, and the complement's mass, the
  // difference of two sums of the same weights, rounded to a few ulps instead of 0): -1, which
  // the callers report as a row without negatives.
  std::int64_t x = a < n_items ? a : n_items - 1;
  std::int64_t p = row_below(row, deg, x);
  while (x < n_items && ((p < deg && static_cast<std::int64_t>(row[p]) == x) || !(cum[x + 1] - cum[x] > 0.0))) {
    if (p < deg && static_cast<std::int64_t>(row[p]) == x) ++p;
    ++x;
  }
  if (x >= n_items) {
    x = n_items - 1;
    p = row_below(row, deg, x);
    while (x >= 0 && ((p < deg && static_cast<std::int64_t>(row[p]) == x) || !(cum[x + 1] - cum[x] > 0.0))) {
      --x;
      if (x >= 0) p = row_below(row, deg, x);
    }
  }
  return x;
}

// A weighted draw from a row and its keys (rowk = row_keys(keys, indptr[u], u)), t in [0, rowk[deg]).
template <typename I>
RF_HD std::int64_t weighted_unseen(const double* cum, std::int64_t n_items, const I* row, const double* rowk,
                                   std::int64_t deg, double t) {
  const std::int64_t lo = key_count(rowk, deg, t);
  const double ta = gap_target(cum, row, rowk, lo, t);
  return weighted_finish(cum, n_items, row, deg, lo, cdf_count(cum, 0, n_items, ta));
}

// The same draw with the global search narrowed to ta's guide bucket (CPU; see guide_bracket).
template <typename I>
RF_HD std::int64_t weighted_unseen_guided(const double* cum, std::int64_t n_items, const I* row, const double* rowk,
                                          std::int64_t deg, double t, const std::int64_t* guide, std::int64_t M,
                                          double inv_h) {
  const std::int64_t lo = key_count(rowk, deg, t);
  const double ta = gap_target(cum, row, rowk, lo, t);
  std::int64_t a, m;
  guide_bracket(guide, M, inv_h, ta, &a, &m);
  return weighted_finish(cum, n_items, row, deg, lo, guide_fixup(cum, n_items, cdf_count(cum, a, m, ta), ta));
}

// The same draw from a row and its prefix rowG (see weighted_row_count_prefix).
template <typename I>
RF_HD std::int64_t weighted_unseen_prefix(const double* cum, std::int64_t n_items, const I* row, const double* rowG,
                                          std::int64_t deg, double t) {
  const std::int64_t lo = weighted_row_count_prefix(cum, row, rowG, deg, t);
  const double ta = t + (rowG[lo] - rowG[0]);
  return weighted_finish(cum, n_items, row, deg, lo, cdf_count(cum, 0, n_items, ta));
}

// Uniform draw number `draw` for batch position `pos`: the r-th unseen item of the row.
template <typename I>
RF_HD std::int64_t uniform_negative(std::uint64_t key, std::uint64_t draw, const I* row, std::int64_t deg,
                                    std::int64_t n_items) {
  const std::uint64_t r = rng_below(rng_bits(key, draw), static_cast<std::uint64_t>(n_items - deg));
  return kth_unseen(row, deg, static_cast<std::int64_t>(r));
}

// Floyd's algorithm: K distinct ranks in [0, m) from draws 0..K-1 of the stream, written to
// out[0..K); membership is a scan of the ranks written so far (O(K^2), fine for the tens to
// hundreds of negatives of sampled evaluation). The caller maps ranks to items by kth_unseen.
RF_HD void floyd_ranks(std::uint64_t key, std::int64_t m, std::int64_t K, std::int64_t* out) {
  std::int64_t c = 0;
  for (std::int64_t j = m - K; j < m; ++j, ++c) {
    const std::int64_t t = static_cast<std::int64_t>(rng_below(rng_bits(key, static_cast<std::uint64_t>(c)),
                                                               static_cast<std::uint64_t>(j + 1)));
    bool seen = false;
    for (std::int64_t q = 0; q < c; ++q) {
      if (out[q] == t) {
        seen = true;
        break;
      }
    }
    out[c] = seen ? j : t;
  }
}

}  // namespace recfast

namespace recfast::cpu {

// out[b * K + k] = a negative for user users[b]. The stream of row b is rng_key(seed, row_offset + b)
// and draw k of that stream is rng_bits(key, k), so any split of the batch with the matching
// row_offset reproduces the whole batch, on any thread count and on CUDA.
// cum, keys: nullptr (uniform) or the CDF and the rows' keys described above (weighted).
// replace == false draws distinct items per row (Floyd's algorithm over complement ranks for
// uniform; sequential removal of each drawn item's mass for weighted).
// Returns -1 on success, else the batch position of a user without enough negatives.
template <typename I>
std::int64_t sample_negatives(const offset_t* indptr, const I* indices, std::int64_t n_users, std::int64_t n_items,
                              const std::int64_t* users, std::int64_t batch, std::int64_t num_negatives,
                              std::uint64_t seed, std::int64_t row_offset, bool replace, const double* cum,
                              const double* keys, std::int64_t* out, int num_threads,
                              const std::int64_t* guide = nullptr);

// guide[j] = #{x : cum[x + 1] <= j * cum[n_items] / M} for j = 0..M, M = cdf_guide_buckets(n_items)
// (M + 1 entries; needs n_items > 1 and cum[n_items] > 0): the bucket table that weighted
// sampling with replacement searches first. Callers that sample many batches with the same
// weights build it once and pass it as `guide`; without it, a call builds its own when the batch
// is large enough. The output is the same with or without a guide.
void build_cdf_guide(const double* cum, std::int64_t n_items, std::int64_t* guide);

// A loader's batch in one call: interaction e = order[b] (an index into indices) gives
// users_out[b] = row_of[e] (the row holding e), items_out[b] = indices[e], and out[b * K ..] its
// negatives, exactly as sample_negatives(..., users_out, ...) draws them.
template <typename I>
std::int64_t sample_triples(const offset_t* indptr, const I* indices, std::int64_t n_users, std::int64_t n_items,
                            const std::int64_t* row_of, const std::int64_t* order, std::int64_t batch,
                            std::int64_t num_negatives, std::uint64_t seed, std::int64_t row_offset, bool replace,
                            const double* cum, const double* keys, std::int64_t* users_out, std::int64_t* items_out,
                            std::int64_t* out, int num_threads, const std::int64_t* guide = nullptr);

// sample_triples for positions [start, start + batch) of an epoch over the nnz stored entries,
// without an order array: position p takes entry p (shuffle == false) or
// FeistelPermutation(nnz, order_seed)(p) (recfast/bpr.h: the seeded bijection bpr_sgd_epoch and
// _C.bpr_epoch_order use, computed on the fly), and its negatives are drawn with row_offset = p.
// Gathering and sampling run in one parallel region, block by block.
template <typename I>
std::int64_t sample_epoch_triples(const offset_t* indptr, const I* indices, std::int64_t n_users,
                                  std::int64_t n_items, const std::int64_t* row_of, std::int64_t nnz, bool shuffle,
                                  std::uint64_t order_seed, std::int64_t start, std::int64_t batch,
                                  std::int64_t num_negatives, std::uint64_t seed, bool replace, const double* cum,
                                  const double* keys, const std::int64_t* guide, std::int64_t* users_out,
                                  std::int64_t* items_out, std::int64_t* out, int num_threads);

// The uniform kernel's instruction set, for tests and benchmarks: "auto" (AVX-512 where the CPU
// has avx512f and avx512dq and n_items < 2^32, else scalar), "scalar" or "avx512" (falls back to
// scalar when n_items >= 2^32). Both paths give bit-identical output. The initial setting comes
// from the environment variable RECFAST_SAMPLING_ISA. set_sampling_isa returns false (and changes
// nothing) for an unknown name or for "avx512" on a CPU without it.
const char* sampling_isa();
bool set_sampling_isa(const char* name);
bool sampling_avx512_available();

}  // namespace recfast::cpu

struct CUstream_st;  // cudaStream_t is CUstream_st*; declared here so CPU-only code can include this

namespace recfast::cuda {

// The CUDA twin of cpu::sample_negatives, on device pointers, launched on `stream`. `bad` is a
// device int64 that the caller initialises to `batch`; it receives the lowest batch position of a
// user without enough candidates. Weighted sampling without replacement is sequential per row and
// runs on the host (same streams, same result).
template <typename I>
void sample_negatives(const offset_t* indptr, const I* indices, std::int64_t n_items, const std::int64_t* users,
                      std::int64_t batch, std::int64_t num_negatives, std::uint64_t seed, std::int64_t row_offset,
                      bool replace, const double* cum, const double* keys, std::int64_t* out, std::int64_t* bad,
                      CUstream_st* stream);

}  // namespace recfast::cuda
