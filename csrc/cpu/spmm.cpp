#include "recfast/spmm.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "recfast/parallel.h"

// Every output element is sum_p (values[p] * x[indices[p], j]) accumulated from 0 in entry order,
// with a rounded multiply and then an add (never an FMA), in every ISA copy below, and rows never
// split across threads. So results are bitwise identical across thread counts, chunkings and ISA
// levels (SSE2 has no FMA; the AVX2 and AVX-512 copies must not use one either).

namespace recfast::cpu {

namespace {

// ---- ISA selection: once, at load --------------------------------------------------------------
// RECFAST_SPMM_ISA=base|avx2 caps the level (any other value: no cap); tests compare the capped
// outputs with the uncapped ones exactly.
enum Isa : int { kIsaBase = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };

int detect_isa() {
  __builtin_cpu_init();
  int isa = kIsaBase;
  if (__builtin_cpu_supports("avx2")) isa = kIsaAvx2;
  if (__builtin_cpu_supports("avx512f")) isa = kIsaAvx512;
  if (const char* cap = std::getenv("RECFAST_SPMM_ISA")) {
    if (std::strcmp(cap, "base") == 0) isa = kIsaBase;
    else if (std::strcmp(cap, "avx2") == 0) isa = std::min(isa, static_cast<int>(kIsaAvx2));
  }
  return isa;
}

const int g_isa = detect_isa();

// ---- one layer's job ---------------------------------------------------------------------------
// row = A[r, :] x; then out[r] = row (when out), and acc[r] = w0 * base[r] + w * row (when base,
// the fused first LightGCN layer) or acc[r] += w * row (when acc without base).
template <typename I, typename T>
struct Job {
  const offset_t* indptr;
  const I* indices;
  const T* values;  // nullptr: every entry is 1
  const T* x;
  std::int64_t d;
  T* out;
  T* acc;
  const T* base;
  T w0, w;
};

// Software prefetch of the neighbour row about 256 cache lines (16 KiB, well inside L1) ahead:
// 64 nonzeros at d = 64 floats, 16 at d = 256. Measured on Zen 4 at d = 32/64/128, one thread:
// 8 nonzeros ahead (the hardware prefetcher cannot guess a gather) was 1.3-1.5x slower.
constexpr std::int64_t kPrefetchLines = 256;

constexpr std::int64_t prefetch_distance(std::int64_t row_lines) {
  return std::max<std::int64_t>(8, std::min<std::int64_t>(256, kPrefetchLines / row_lines));
}

// GCC contracts a * b + c into an FMA wherever the target has one (even across statements); an
// empty asm on the product hides it, so each ISA copy rounds the product the same way.
#define RF_ROUNDED(expr)             \
  ({                                 \
    auto rf_product_ = (expr);       \
    __asm__("" : "+v"(rf_product_)); \
    rf_product_;                     \
  })

template <int VB, typename T>
struct Vec {
  typedef T type __attribute__((vector_size(VB)));
  static constexpr int lanes = static_cast<int>(VB / sizeof(T));
};

// s - V{} broadcasts the scalar s; subtracting +0 is exact (even for -0), so it folds away.
#define RF_SPLAT(V, s) ((s) - V{})

// Fixed width D, accumulators in VB-byte vector registers (16: SSE2, 32: AVX2, 64: AVX-512).
template <int VB, int D, bool kValued, typename I, typename T>
__attribute__((always_inline)) inline void row_fixed(const Job<I, T>& job, std::int64_t r, offset_t pf_end) {
  using V = typename Vec<VB, T>::type;
  constexpr int L = Vec<VB, T>::lanes;
  constexpr int NV = D / L;
  constexpr int kLines = static_cast<int>((D * sizeof(T) + 63) / 64);
  constexpr std::int64_t kAhead = prefetch_distance(kLines);
  static_assert(D % L == 0, "row width must be a multiple of the vector width");
  const I* __restrict idx = job.indices;
  const T* __restrict vals = job.values;
  const T* __restrict x = job.x;
  V acc[NV];
  for (int q = 0; q < NV; ++q) acc[q] = V{};
  const offset_t end = job.indptr[r + 1];
  for (offset_t p = job.indptr[r]; p < end; ++p) {
    if (p + kAhead < pf_end) {
      const char* nx = reinterpret_cast<const char*>(x + static_cast<std::int64_t>(idx[p + kAhead]) * D);
      for (int c = 0; c < kLines; ++c) __builtin_prefetch(nx + 64 * c, 0, 3);
    }
    const T v = kValued ? vals[p] : T(1);
    const V vv = RF_SPLAT(V, v);
    const T* xr = x + static_cast<std::int64_t>(idx[p]) * D;
    for (int q = 0; q < NV; ++q) {
      V xv;
      __builtin_memcpy(&xv, xr + q * L, sizeof(V));
      acc[q] += RF_ROUNDED(vv * xv);
    }
  }
  if (job.out) {
    T* o = job.out + r * D;
    for (int q = 0; q < NV; ++q) __builtin_memcpy(o + q * L, &acc[q], sizeof(V));
  }
  if (job.acc) {
    T* a = job.acc + r * D;
    const V wv = RF_SPLAT(V, job.w);
    if (job.base) {
      const T* b = job.base + r * D;
      const V w0v = RF_SPLAT(V, job.w0);
      for (int q = 0; q < NV; ++q) {
        V bv;
        __builtin_memcpy(&bv, b + q * L, sizeof(V));
        const V av = RF_ROUNDED(w0v * bv) + RF_ROUNDED(wv * acc[q]);
        __builtin_memcpy(a + q * L, &av, sizeof(V));
      }
    } else {
      for (int q = 0; q < NV; ++q) {
        V av;
        __builtin_memcpy(&av, a + q * L, sizeof(V));
        av += RF_ROUNDED(wv * acc[q]);
        __builtin_memcpy(a + q * L, &av, sizeof(V));
      }
    }
  }
}

// Any width: accumulate in tmp (d elements, L1-resident), in VB-byte blocks and a scalar tail;
// element by element the same operations in the same order as row_fixed.
template <int VB, bool kValued, typename I, typename T>
__attribute__((always_inline)) inline void row_generic(const Job<I, T>& job, std::int64_t r, offset_t pf_end,
                                                       T* __restrict tmp) {
  using V = typename Vec<VB, T>::type;
  constexpr int L = Vec<VB, T>::lanes;
  const std::int64_t d = job.d;
  const std::int64_t row_lines = (d * static_cast<std::int64_t>(sizeof(T)) + 63) / 64;
  const std::int64_t lines = std::min<std::int64_t>(row_lines, 16);  // very wide rows: their head only
  const std::int64_t ahead = prefetch_distance(std::max<std::int64_t>(row_lines, 1));
  const I* __restrict idx = job.indices;
  for (std::int64_t j = 0; j < d; ++j) tmp[j] = T(0);
  const offset_t end = job.indptr[r + 1];
  for (offset_t p = job.indptr[r]; p < end; ++p) {
    if (p + ahead < pf_end) {
      const char* nx = reinterpret_cast<const char*>(job.x + static_cast<std::int64_t>(idx[p + ahead]) * d);
      for (std::int64_t c = 0; c < lines; ++c) __builtin_prefetch(nx + 64 * c, 0, 3);
    }
    const T v = kValued ? job.values[p] : T(1);
    const V vv = RF_SPLAT(V, v);
    const T* __restrict xr = job.x + static_cast<std::int64_t>(idx[p]) * d;
    std::int64_t j = 0;
    for (; j + L <= d; j += L) {
      V t, xv;
      __builtin_memcpy(&t, tmp + j, sizeof(V));
      __builtin_memcpy(&xv, xr + j, sizeof(V));
      t += RF_ROUNDED(vv * xv);
      __builtin_memcpy(tmp + j, &t, sizeof(V));
    }
    for (; j < d; ++j) tmp[j] += RF_ROUNDED(v * xr[j]);
  }
  if (job.out) std::memcpy(job.out + r * d, tmp, static_cast<std::size_t>(d) * sizeof(T));
  if (job.acc) {
    T* __restrict a = job.acc + r * d;
    const T w = job.w;
    if (job.base) {
      const T* __restrict b = job.base + r * d;
      const T w0 = job.w0;
      for (std::int64_t j = 0; j < d; ++j) a[j] = RF_ROUNDED(w0 * b[j]) + RF_ROUNDED(w * tmp[j]);
    } else {
      for (std::int64_t j = 0; j < d; ++j) a[j] += RF_ROUNDED(w * tmp[j]);
    }
  }
}

// A chunk of rows [r0, r1): prefetches stop at the chunk's last entry. The job is copied so the
// compiler knows the output stores cannot change it.
template <int VB, int D, bool kValued, typename I, typename T>
__attribute__((always_inline)) inline void chunk_rows(const Job<I, T> job, std::int64_t r0, std::int64_t r1) {
  const offset_t pf_end = job.indptr[r1];
  if constexpr (D > 0) {
    for (std::int64_t r = r0; r < r1; ++r) row_fixed<VB, D, kValued>(job, r, pf_end);
  } else {
    std::vector<T> tmp(static_cast<std::size_t>(job.d));
    for (std::int64_t r = r0; r < r1; ++r) row_generic<VB, kValued>(job, r, pf_end, tmp.data());
  }
}

template <int VB, int D, typename I, typename T>
__attribute__((always_inline)) inline void chunk_body(const Job<I, T>& job, std::int64_t r0, std::int64_t r1) {
  if (job.values) chunk_rows<VB, D, true>(job, r0, r1);
  else chunk_rows<VB, D, false>(job, r0, r1);
}

// The same body compiled three times; the vector width follows the ISA (D = 0: any width).
template <int D, typename I, typename T>
void chunk_base(const Job<I, T>& job, std::int64_t r0, std::int64_t r1) {
  chunk_body<16, D>(job, r0, r1);
}

template <int D, typename I, typename T>
__attribute__((target("avx2"))) void chunk_avx2(const Job<I, T>& job, std::int64_t r0, std::int64_t r1) {
  chunk_body<32, D>(job, r0, r1);
}

template <int D, typename I, typename T>
__attribute__((target("avx512f"))) void chunk_avx512(const Job<I, T>& job, std::int64_t r0, std::int64_t r1) {
  chunk_body<64, D>(job, r0, r1);
}

template <typename I, typename T>
using ChunkFn = void (*)(const Job<I, T>&, std::int64_t, std::int64_t);

template <int D, typename I, typename T>
ChunkFn<I, T> pick_isa() {
  if (g_isa >= kIsaAvx512) return &chunk_avx512<D, I, T>;
  if (g_isa >= kIsaAvx2) return &chunk_avx2<D, I, T>;
  return &chunk_base<D, I, T>;
}

template <typename I, typename T>
ChunkFn<I, T> pick(std::int64_t d) {
  switch (d) {
    case 16: return pick_isa<16, I, T>();
    case 32: return pick_isa<32, I, T>();
    case 64: return pick_isa<64, I, T>();
    case 128: return pick_isa<128, I, T>();
    case 256: return pick_isa<256, I, T>();
    default: return pick_isa<0, I, T>();
  }
}

// Rows split into about 16 chunks per thread of equal work (nonzeros + rows: a row costs its
// gathers plus its output write), taken dynamically. Chunk bounds only decide which thread
// computes a row, never how, so they may depend on the thread count.
template <typename I, typename T>
void run_layer(const Job<I, T>& job, std::int64_t n_rows, int num_threads) {
  if (n_rows <= 0) return;
  const ChunkFn<I, T> fn = pick<I, T>(job.d);
  const int threads = resolve_threads(num_threads);
  const offset_t* indptr = job.indptr;
  const offset_t nz0 = indptr[0];
  auto cost = [&](std::int64_t r) { return (indptr[r] - nz0) + r; };
  const std::int64_t total = cost(n_rows);
  const std::int64_t n_chunks = std::max<std::int64_t>(1, std::min<std::int64_t>(n_rows, 16 * threads));
  std::vector<std::int64_t> bounds(static_cast<std::size_t>(n_chunks) + 1);
  bounds[0] = 0;
  bounds[n_chunks] = n_rows;
  for (std::int64_t k = 1; k < n_chunks; ++k) {
    const std::int64_t target = static_cast<std::int64_t>(static_cast<double>(total) * k / n_chunks);
    std::int64_t lo = bounds[k - 1], hi = n_rows;  // first r in [lo, hi] with cost(r) >= target
    while (lo < hi) {
      const std::int64_t mid = lo + (hi - lo) / 2;
      if (cost(mid) < target) lo = mid + 1;
      else hi = mid;
    }
    bounds[k] = lo;
  }
  if (threads == 1 || n_chunks == 1) {
    for (std::int64_t k = 0; k < n_chunks; ++k) fn(job, bounds[k], bounds[k + 1]);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (std::int64_t k = 0; k < n_chunks; ++k)
    if (bounds[k] < bounds[k + 1]) fn(job, bounds[k], bounds[k + 1]);
}

}  // namespace

template <typename I, typename T>
void spmm(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense,
          std::int64_t d, T* out, int num_threads) {
  const Job<I, T> job{indptr, indices, values, dense, d, out, nullptr, nullptr, T(0), T(0)};
  run_layer(job, n_rows, num_threads);
}

// Layer 1 is fused with the layer-0 term (out = w0 E + w1 A E, one pass); the last layer adds
// into out without storing A^L E. So L = 1 needs no scratch, L = 2 only buf_a.
template <typename I, typename T>
void lightgcn_propagate(const offset_t* indptr, const I* indices, const T* values, std::int64_t n, const T* emb,
                        std::int64_t d, std::int64_t num_layers, const double* w, T* out, T* buf_a, T* buf_b,
                        int num_threads) {
  const T w0 = static_cast<T>(w[0]);
  if (num_layers == 0) {
    const std::int64_t total = n * d;
#pragma omp parallel for schedule(static) num_threads(resolve_threads(num_threads))
    for (std::int64_t i = 0; i < total; ++i) out[i] = w0 * emb[i];
    return;
  }
  const T* cur = emb;
  T* next = buf_a;
  T* spare = buf_b;
  for (std::int64_t l = 1; l <= num_layers; ++l) {
    const bool last = l == num_layers;
    const Job<I, T> job{indptr, indices, values, cur, d, last ? nullptr : next, out, l == 1 ? emb : nullptr,
                        w0, static_cast<T>(w[l])};
    run_layer(job, n, num_threads);
    cur = next;
    std::swap(next, spare);
  }
}

template <typename I>
void normalized_adjacency(const offset_t* indptr, const I* indices, const offset_t* t_indptr, const I* t_indices,
                          std::int64_t n_users, std::int64_t n_items, int normalization, bool self_loops,
                          offset_t* out_indptr, I* out_indices, float* out_values) {
  const std::int64_t n = n_users + n_items;
  const std::int64_t loop = self_loops ? 1 : 0;
  out_indptr[0] = 0;
  for (std::int64_t r = 0; r < n; ++r) {
    const std::int64_t deg =
        r < n_users ? indptr[r + 1] - indptr[r] : t_indptr[r - n_users + 1] - t_indptr[r - n_users];
    out_indptr[r + 1] = out_indptr[r] + deg + loop;
  }
  auto degree = [&](std::int64_t r) { return static_cast<double>(out_indptr[r + 1] - out_indptr[r]); };
  auto value = [&](std::int64_t r, std::int64_t c) -> float {
    if (normalization == 1) return static_cast<float>(1.0 / std::sqrt(degree(r) * degree(c)));
    if (normalization == 2) return static_cast<float>(1.0 / degree(r));
    return 1.0f;
  };
#pragma omp parallel for schedule(dynamic, 256)
  for (std::int64_t r = 0; r < n; ++r) {
    offset_t w = out_indptr[r];
    if (r < n_users) {
      // user row: the self loop (column r) precedes every item column (>= n_users)
      if (self_loops) {
        out_indices[w] = static_cast<I>(r);
        out_values[w++] = value(r, r);
      }
      for (offset_t p = indptr[r]; p < indptr[r + 1]; ++p) {
        const std::int64_t c = n_users + static_cast<std::int64_t>(indices[p]);
        out_indices[w] = static_cast<I>(c);
        out_values[w++] = value(r, c);
      }
    } else {
      // item row: user columns (< n_users) precede the self loop
      const std::int64_t i = r - n_users;
      for (offset_t p = t_indptr[i]; p < t_indptr[i + 1]; ++p) {
        const std::int64_t c = static_cast<std::int64_t>(t_indices[p]);
        out_indices[w] = static_cast<I>(c);
        out_values[w++] = value(r, c);
      }
      if (self_loops) {
        out_indices[w] = static_cast<I>(r);
        out_values[w++] = value(r, r);
      }
    }
  }
}

#undef RF_ROUNDED
#undef RF_SPLAT

#define RF_INSTANTIATE(I, T)                                                                                      \
  template void spmm<I, T>(const offset_t*, const I*, const T*, std::int64_t, const T*, std::int64_t, T*, int);  \
  template void lightgcn_propagate<I, T>(const offset_t*, const I*, const T*, std::int64_t, const T*, std::int64_t, \
                                         std::int64_t, const double*, T*, T*, T*, int);
RF_INSTANTIATE(std::int32_t, float)
RF_INSTANTIATE(std::int64_t, float)
RF_INSTANTIATE(std::int32_t, double)
RF_INSTANTIATE(std::int64_t, double)
#undef RF_INSTANTIATE
template void normalized_adjacency<std::int32_t>(const offset_t*, const std::int32_t*, const offset_t*,
                                                 const std::int32_t*, std::int64_t, std::int64_t, int, bool, offset_t*,
                                                 std::int32_t*, float*);
template void normalized_adjacency<std::int64_t>(const offset_t*, const std::int64_t*, const offset_t*,
                                                 const std::int64_t*, std::int64_t, std::int64_t, int, bool, offset_t*,
                                                 std::int64_t*, float*);

}  // namespace recfast::cpu
