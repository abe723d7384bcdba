#include "recfast/topk.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "recfast/parallel.h"

namespace recfast::cpu {

namespace {

// Heap order: a is "worse" than b when its score is lower, or equal with a higher id. The heap's
// root is the row's current worst entry: a new item enters only by beating it.
inline bool worse(float sa, std::int64_t ia, float sb, std::int64_t ib) { return sa < sb || (sa == sb && ia > ib); }

inline void sift_down(float* s, std::int64_t* id, std::int64_t k, std::int64_t pos) {
  const float vs = s[pos];
  const std::int64_t vi = id[pos];
  for (;;) {
    std::int64_t c = 2 * pos + 1;
    if (c >= k) break;
    if (c + 1 < k && worse(s[c + 1], id[c + 1], s[c], id[c])) ++c;
    if (!worse(s[c], id[c], vs, vi)) break;
    s[pos] = s[c];
    id[pos] = id[c];
    pos = c;
  }
  s[pos] = vs;
  id[pos] = vi;
}

template <typename I>
inline bool excluded(const I* row, std::int64_t deg, std::int64_t item) {
  const I* it = std::lower_bound(row, row + deg, static_cast<I>(item));
  return it != row + deg && static_cast<std::int64_t>(*it) == item;
}

}  // namespace

template <typename I>
void topk_merge(const float* scores, std::int64_t n_rows, std::int64_t ld, std::int64_t tile_start,
                std::int64_t tile_len, const std::int64_t* rows, const offset_t* ex_indptr, const I* ex_indices,
                std::int64_t k, float* top_scores, std::int64_t* top_ids, int num_threads) {
  if (k == 0) return;
  constexpr std::int64_t chunk = 16;
#pragma omp parallel for schedule(static) num_threads(resolve_threads(num_threads))
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const float* s = scores + r * ld;
    float* hs = top_scores + r * k;
    std::int64_t* hi = top_ids + r * k;
    const I* ex = nullptr;
    std::int64_t deg = 0;
    if (ex_indptr != nullptr) {
      const std::int64_t q = rows ? rows[r] : r;
      ex = ex_indices + ex_indptr[q];
      deg = ex_indptr[q + 1] - ex_indptr[q];
    }
    float thr = hs[0];
    // An item enters only by beating the row's current worst (NaN never passes `>`, and -inf
    // never beats the initial -inf: neither is ever selected).
    auto consider = [&](std::int64_t t) {
      const float v = s[t];
      if (!(v > thr)) return;
      const std::int64_t item = tile_start + t;
      if (deg && excluded(ex, deg, item)) return;
      hs[0] = v;
      hi[0] = item;
      sift_down(hs, hi, k, 0);
      thr = hs[0];
    };
    std::int64_t j = 0;
    // Most chunks hold nothing better than the current worst: skip them with one vector max.
    for (; j + chunk <= tile_len; j += chunk) {
      float m = s[j];
#pragma omp simd reduction(max : m)
      for (std::int64_t t = 0; t < chunk; ++t) m = std::max(m, s[j + t]);
      if (!(m > thr)) continue;
      for (std::int64_t t = j; t < j + chunk; ++t) consider(t);
    }
    for (; j < tile_len; ++j) consider(j);
  }
}

void topk_finalize(float* top_scores, std::int64_t* top_ids, std::int64_t n_rows, std::int64_t k, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(resolve_threads(num_threads))
  for (std::int64_t r = 0; r < n_rows; ++r) {
    float* s = top_scores + r * k;
    std::int64_t* id = top_ids + r * k;
    // Pop the heap: each pop moves the current worst to the end, leaving the row best first.
    for (std::int64_t n = k; n > 1; --n) {
      std::swap(s[0], s[n - 1]);
      std::swap(id[0], id[n - 1]);
      sift_down(s, id, n - 1, 0);
    }
  }
}

template <typename I>
void topk_hits(const std::int64_t* ids, std::int64_t n_rows, std::int64_t k, const std::int64_t* users,
               const offset_t* test_indptr, const I* test_indices, std::uint8_t* hits, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(resolve_threads(num_threads))
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const std::int64_t u = users[r];
    const I* row = test_indices + test_indptr[u];
    const std::int64_t deg = test_indptr[u + 1] - test_indptr[u];
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int64_t item = ids[r * k + j];
      hits[r * k + j] = item >= 0 && deg && excluded(row, deg, item) ? 1 : 0;
    }
  }
}

#define RF_INSTANTIATE(I)                                                                                         \
  template void topk_merge<I>(const float*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,              \
                              const std::int64_t*, const offset_t*, const I*, std::int64_t, float*, std::int64_t*, \
                              int);                                                                               \
  template void topk_hits<I>(const std::int64_t*, std::int64_t, std::int64_t, const std::int64_t*, const offset_t*, \
                             const I*, std::uint8_t*, int);
RF_INSTANTIATE(std::int32_t)
RF_INSTANTIATE(std::int64_t)
#undef RF_INSTANTIATE

}  // namespace recfast::cpu
