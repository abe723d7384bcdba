#include "recfast/topk.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

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

// A row's heap (worst at the root) into a row sorted best first: each pop moves the current worst
// to the end.
inline void heap_to_sorted(float* s, std::int64_t* id, std::int64_t k) {
  for (std::int64_t n = k; n > 1; --n) {
    std::swap(s[0], s[n - 1]);
    std::swap(id[0], id[n - 1]);
    sift_down(s, id, n - 1, 0);
  }
}

void topk_finalize(float* top_scores, std::int64_t* top_ids, std::int64_t n_rows, std::int64_t k, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(resolve_threads(num_threads))
  for (std::int64_t r = 0; r < n_rows; ++r) {
    heap_to_sorted(top_scores + r * k, top_ids + r * k, k);
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


// ---- Fused scoring + selection --------------------------------------------------------------------
//
// Users are the vector lanes: a panel of kLanes users has its queries packed p-major (d x kLanes),
// and a micro-tile of kNJ items is scored by broadcasting each item's key element, so every lane
// holds one (user, item) score built by the same sequential chain acc = fma(q[p], key[p], acc),
// p = 0..d-1, from acc = 0, then score = acc + bias. The AVX-512 kernel and the portable one
// perform exactly these float operations, so they agree to the bit. The scores stay in registers
// and are compared with each user's current k-th best (the heap root); only a micro-tile with a
// candidate that beats it goes through the scalar heap update, in ascending item order per user,
// so the result equals topk_merge over the same scores.

namespace {

constexpr int kLanes = 32;  // users per panel (two zmm)
constexpr int kNJ = 12;     // items per micro-tile

struct BlockState {
  float* top_s;           // n_rows x k
  std::int64_t* top_i;
  std::int64_t k;
  float* thr;             // per user of the block; +inf for padded lanes
  const void* ex_indices; // typed by the caller
  std::int64_t* ex_cur;   // cursor into each user's sorted exclusion row
  std::int64_t* ex_end;
};

// Scores of one micro-tile for one panel: sc[j * kLanes + lane]; returns the candidate bitmask per item.
using MicroFn = std::uint32_t (*)(const float* qp, const float* keys, std::int64_t d, std::int64_t i0, int nj,
                                  const float* bias, const float* thr, float* sc, std::uint32_t* m);

std::uint32_t micro_portable(const float* qp, const float* keys, std::int64_t d, std::int64_t i0, int nj,
                             const float* bias, const float* thr, float* sc, std::uint32_t* m) {
  std::uint32_t any = 0;
  for (int j = 0; j < nj; ++j) {
    const float* kr = keys + (i0 + j) * d;
    float acc[kLanes];
    for (int l = 0; l < kLanes; ++l) acc[l] = 0.0f;
    for (std::int64_t p = 0; p < d; ++p) {
      const float kv = kr[p];
      const float* q = qp + p * kLanes;
      for (int l = 0; l < kLanes; ++l) acc[l] = std::fma(q[l], kv, acc[l]);
    }
    const float b = bias ? bias[i0 + j] : 0.0f;
    std::uint32_t mj = 0;
    for (int l = 0; l < kLanes; ++l) {
      const float s = bias ? acc[l] + b : acc[l];
      sc[j * kLanes + l] = s;
      if (s > thr[l]) mj |= std::uint32_t{1} << l;
    }
    m[j] = mj;
    any |= mj;
  }
  return any;
}

#if defined(__x86_64__) || defined(_M_X64)
#define RF_TOPK_AVX512 1
template <int NJ>
__attribute__((target("avx512f"), always_inline)) inline std::uint32_t micro_avx512_n(
    const float* qp, const float* keys, std::int64_t d, std::int64_t i0, const float* bias, const float* thr,
    float* sc, std::uint32_t* m) {
  __m512 a0[NJ], a1[NJ];
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j) a0[j] = a1[j] = _mm512_setzero_ps();
  const float* kr = keys + i0 * d;
  for (std::int64_t p = 0; p < d; ++p) {
    const __m512 q0 = _mm512_loadu_ps(qp + p * kLanes);
    const __m512 q1 = _mm512_loadu_ps(qp + p * kLanes + 16);
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      const __m512 kb = _mm512_set1_ps(kr[j * d + p]);
      a0[j] = _mm512_fmadd_ps(q0, kb, a0[j]);
      a1[j] = _mm512_fmadd_ps(q1, kb, a1[j]);
    }
  }
  const __m512 t0 = _mm512_loadu_ps(thr), t1 = _mm512_loadu_ps(thr + 16);
  std::uint32_t any = 0;
#pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j) {
    if (bias) {
      const __m512 b = _mm512_set1_ps(bias[i0 + j]);
      a0[j] = _mm512_add_ps(a0[j], b);
      a1[j] = _mm512_add_ps(a1[j], b);
    }
    const std::uint32_t mj = static_cast<std::uint32_t>(_mm512_cmp_ps_mask(a0[j], t0, _CMP_GT_OQ)) |
                             (static_cast<std::uint32_t>(_mm512_cmp_ps_mask(a1[j], t1, _CMP_GT_OQ)) << 16);
    m[j] = mj;
    any |= mj;
  }
  if (any) {
#pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      _mm512_storeu_ps(sc + j * kLanes, a0[j]);
      _mm512_storeu_ps(sc + j * kLanes + 16, a1[j]);
    }
  }
  return any;
}

__attribute__((target("avx512f"))) std::uint32_t micro_avx512(const float* qp, const float* keys, std::int64_t d,
                                                               std::int64_t i0, int nj, const float* bias,
                                                               const float* thr, float* sc, std::uint32_t* m) {
  if (nj == kNJ) return micro_avx512_n<kNJ>(qp, keys, d, i0, bias, thr, sc, m);
  std::uint32_t any = 0;
  for (int j = 0; j < nj; ++j) any |= micro_avx512_n<1>(qp, keys, d, i0 + j, bias, thr, sc + j * kLanes, m + j);
  return any;
}
#endif

bool has_avx512() {
#ifdef RF_TOPK_AVX512
  static const bool yes = __builtin_cpu_supports("avx512f");
  return yes;
#else
  return false;
#endif
}

// Up to this k a row is kept sorted best first (insertion by a branch-free count and a short shift,
// cheaper than a heap's unpredictable sift); above it, a heap as in topk_merge.
constexpr std::int64_t kSortedMaxK = 64;

// Offers item (higher than every item the row holds) with score v to row u: as topk_merge, it enters
// only by beating the row's current worst; excluded items never enter.
template <bool Sorted, typename I>
inline void consider(std::int64_t u, std::int64_t item, float v, float* thr, float* hs, std::int64_t* hi,
                     std::int64_t k, const I* ex, std::int64_t& cur, std::int64_t end) {
  if (!(v > thr[u])) return;
  while (cur < end && static_cast<std::int64_t>(ex[cur]) < item) ++cur;
  if (cur < end && static_cast<std::int64_t>(ex[cur]) == item) return;
  if (Sorted) {
    // Entries with a score >= v stay ahead (equal scores hold lower ids); v > hs[k - 1], so pos < k.
    std::int64_t pos = 0;
    for (std::int64_t t = 0; t < k; ++t) pos += hs[t] >= v;
    for (std::int64_t t = k - 1; t > pos; --t) {
      hs[t] = hs[t - 1];
      hi[t] = hi[t - 1];
    }
    hs[pos] = v;
    hi[pos] = item;
    thr[u] = hs[k - 1];
  } else {
    hs[0] = v;
    hi[0] = item;
    sift_down(hs, hi, k, 0);
    thr[u] = hs[0];
  }
}

}  // namespace

const char* topk_fused_best_isa() { return has_avx512() ? "avx512" : "portable"; }

template <bool Sorted, typename I>
void topk_fused_impl(const float* queries, const float* keys, const float* key_bias, std::int64_t n_rows,
                     std::int64_t n_items, std::int64_t d, const std::int64_t* rows, const offset_t* ex_indptr,
                     const I* ex_indices, std::int64_t k, float* top_scores, std::int64_t* top_ids, int isa,
                     int num_threads) {
  if (k == 0 || n_rows == 0) return;
  MicroFn micro = micro_portable;
#ifdef RF_TOPK_AVX512
  if (isa == 2 || (isa == 0 && has_avx512())) micro = micro_avx512;
#endif
  const int nt = resolve_threads(num_threads);
  // Users per block: a few panels, fewer when there are few users so that every thread gets work.
  const std::int64_t per_thread = (n_rows + nt - 1) / nt;
  std::int64_t mb = std::min<std::int64_t>(256, (per_thread + kLanes - 1) / kLanes * kLanes);
  mb = std::max<std::int64_t>(mb, kLanes);
  // Items per tile: about 512 KiB of keys (stays in L2 while every panel of the block passes over it).
  const std::int64_t nt_items =
      std::max<std::int64_t>(kNJ, (512 * 1024 / 4 / std::max<std::int64_t>(d, 1)) / kNJ * kNJ);
  const std::int64_t n_blocks = (n_rows + mb - 1) / mb;
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> qp(static_cast<std::size_t>(mb * std::max<std::int64_t>(d, 1)));
    std::vector<float> thr(static_cast<std::size_t>(mb));
    std::vector<std::int64_t> cur(static_cast<std::size_t>(mb)), end(static_cast<std::size_t>(mb));
    alignas(64) float sc[kNJ * kLanes];
    std::uint32_t m[kNJ];
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t blk = 0; blk < n_blocks; ++blk) {
      const std::int64_t u0 = blk * mb, nu = std::min(mb, n_rows - u0);
      const std::int64_t n_pan = (nu + kLanes - 1) / kLanes;
      // Pack queries panel by panel, p-major; padded lanes are zero and never selected (thr +inf).
      for (std::int64_t pn = 0; pn < n_pan; ++pn) {
        float* dst = qp.data() + pn * kLanes * d;
        for (int l = 0; l < kLanes; ++l) {
          const std::int64_t u = pn * kLanes + l;
          for (std::int64_t p = 0; p < d; ++p) dst[p * kLanes + l] = u < nu ? queries[(u0 + u) * d + p] : 0.0f;
          thr[pn * kLanes + l] =
              u < nu ? top_scores[(u0 + u) * k + (Sorted ? k - 1 : 0)] : std::numeric_limits<float>::infinity();
        }
      }
      for (std::int64_t u = 0; u < nu; ++u) {
        cur[u] = end[u] = 0;
        if (ex_indptr != nullptr) {
          const std::int64_t q = rows ? rows[u0 + u] : u0 + u;
          cur[u] = ex_indptr[q];
          end[u] = ex_indptr[q + 1];
        }
      }
      for (std::int64_t t0 = 0; t0 < n_items; t0 += nt_items) {
        const std::int64_t t1 = std::min(n_items, t0 + nt_items);
        for (std::int64_t pn = 0; pn < n_pan; ++pn) {
          const float* qpan = qp.data() + pn * kLanes * d;
          float* tp = thr.data() + pn * kLanes;
          for (std::int64_t i0 = t0; i0 < t1; i0 += kNJ) {
            const int nj = static_cast<int>(std::min<std::int64_t>(kNJ, t1 - i0));
            const std::uint32_t any = micro(qpan, keys, d, i0, nj, key_bias, tp, sc, m);
            if (!any) continue;
            // Item by item, so that each user sees its candidates in ascending item order.
            for (int j = 0; j < nj; ++j) {
              std::uint32_t lanes = m[j];
              while (lanes) {
                const int l = __builtin_ctz(lanes);
                lanes &= lanes - 1;
                const std::int64_t u = pn * kLanes + l;
                consider<Sorted>(l, i0 + j, sc[j * kLanes + l], tp, top_scores + (u0 + u) * k,
                                 top_ids + (u0 + u) * k, k, ex_indices, cur[u], end[u]);
              }
            }
          }
        }
      }
      // Heaps: sort each row best first (as topk_finalize); sorted rows already are.
      for (std::int64_t u = u0; u < u0 + nu && !Sorted; ++u) {
        heap_to_sorted(top_scores + u * k, top_ids + u * k, k);
      }
    }
  }
}

template <typename I>
void topk_fused(const float* queries, const float* keys, const float* key_bias, std::int64_t n_rows,
                std::int64_t n_items, std::int64_t d, const std::int64_t* rows, const offset_t* ex_indptr,
                const I* ex_indices, std::int64_t k, float* top_scores, std::int64_t* top_ids, int isa,
                int num_threads) {
  if (k <= kSortedMaxK) {
    topk_fused_impl<true, I>(queries, keys, key_bias, n_rows, n_items, d, rows, ex_indptr, ex_indices, k, top_scores,
                             top_ids, isa, num_threads);
  } else {
    topk_fused_impl<false, I>(queries, keys, key_bias, n_rows, n_items, d, rows, ex_indptr, ex_indices, k,
                              top_scores, top_ids, isa, num_threads);
  }
}

#define RF_INSTANTIATE(I)                                                                                         \
  template void topk_merge<I>(const float*, std::int64_t, std::int64_t, std::int64_t, std::int64_t,              \
                              const std::int64_t*, const offset_t*, const I*, std::int64_t, float*, std::int64_t*, \
                              int);                                                                               \
  template void topk_hits<I>(const std::int64_t*, std::int64_t, std::int64_t, const std::int64_t*, const offset_t*, \
                             const I*, std::uint8_t*, int);                                                   \
  template void topk_fused<I>(const float*, const float*, const float*, std::int64_t, std::int64_t, std::int64_t, \
                              const std::int64_t*, const offset_t*, const I*, std::int64_t, float*, std::int64_t*, \
                              int, int);
RF_INSTANTIATE(std::int32_t)
RF_INSTANTIATE(std::int64_t)
#undef RF_INSTANTIATE

}  // namespace recfast::cpu
