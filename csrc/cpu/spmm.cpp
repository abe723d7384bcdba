#include "recfast/spmm.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "recfast/parallel.h"

namespace recfast::cpu {

namespace {

// Compile-time width: the accumulator row is an array of 32-byte vectors the compiler keeps in
// registers (the baseline build splits each into two SSE halves; the AVX2 copy below uses them
// whole). Plain loops over a T array did not vectorise: GCC kept the accumulator in memory.
template <typename T>
struct Vec32 {
  typedef T type __attribute__((vector_size(32)));
  static constexpr int lanes = static_cast<int>(32 / sizeof(T));
};

template <int D, typename I, typename T>
__attribute__((always_inline)) inline void spmm_row_fixed(const offset_t* indptr, const I* indices, const T* values,
                                                         std::int64_t r, const T* dense, T* out, T* acc_out, T w) {
  using V = typename Vec32<T>::type;
  constexpr int L = Vec32<T>::lanes;
  constexpr int NV = D / L;
  V acc[NV];
  for (int q = 0; q < NV; ++q) acc[q] = V{} ;
  const offset_t end = indptr[r + 1];
  for (offset_t p = indptr[r]; p < end; ++p) {
    const T v = values ? values[p] : T(1);
    const V vv = V{} + v;
    const T* x = dense + static_cast<std::int64_t>(indices[p]) * D;
    for (int q = 0; q < NV; ++q) {
      V xv;
      __builtin_memcpy(&xv, x + q * L, sizeof(V));
      acc[q] += vv * xv;
    }
  }
  T* o = out + r * D;
  for (int q = 0; q < NV; ++q) __builtin_memcpy(o + q * L, &acc[q], sizeof(V));
  if (acc_out) {
    T* a = acc_out + r * D;
    const V wv = V{} + w;
    for (int q = 0; q < NV; ++q) {
      V av;
      __builtin_memcpy(&av, a + q * L, sizeof(V));
      av += wv * acc[q];
      __builtin_memcpy(a + q * L, &av, sizeof(V));
    }
  }
}

template <int D, typename I, typename T>
void spmm_fixed_base(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense,
                     T* out, int num_threads, T* acc_out, double w) {
#pragma omp parallel for schedule(dynamic, 128) num_threads(resolve_threads(num_threads))
  for (std::int64_t r = 0; r < n_rows; ++r)
    spmm_row_fixed<D>(indptr, indices, values, r, dense, out, acc_out, static_cast<T>(w));
}

template <int D, typename I, typename T>
__attribute__((target("avx2,fma"))) void spmm_fixed_avx2(const offset_t* indptr, const I* indices, const T* values,
                                                          std::int64_t n_rows, const T* dense, T* out,
                                                          int num_threads, T* acc_out, double w) {
#pragma omp parallel for schedule(dynamic, 128) num_threads(resolve_threads(num_threads))
  for (std::int64_t r = 0; r < n_rows; ++r)
    spmm_row_fixed<D>(indptr, indices, values, r, dense, out, acc_out, static_cast<T>(w));
}

bool cpu_has_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

template <int D, typename I, typename T>
void spmm_fixed(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense, T* out,
                int num_threads, T* acc_out = nullptr, double w = 0.0) {
  if (cpu_has_avx2()) {
    spmm_fixed_avx2<D>(indptr, indices, values, n_rows, dense, out, num_threads, acc_out, w);
  } else {
    spmm_fixed_base<D>(indptr, indices, values, n_rows, dense, out, num_threads, acc_out, w);
  }
}

template <typename I, typename T>
void spmm_generic(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense,
                  std::int64_t d, T* out, int num_threads, T* acc_out = nullptr, double w = 0.0) {
#pragma omp parallel for schedule(dynamic, 128) num_threads(resolve_threads(num_threads))
  for (std::int64_t r = 0; r < n_rows; ++r) {
    T* o = out + r * d;
    std::fill(o, o + d, T(0));
    for (offset_t p = indptr[r]; p < indptr[r + 1]; ++p) {
      const T v = values ? values[p] : T(1);
      const T* x = dense + static_cast<std::int64_t>(indices[p]) * d;
#pragma omp simd
      for (std::int64_t j = 0; j < d; ++j) o[j] += v * x[j];
    }
    if (acc_out) {
      T* a = acc_out + r * d;
      const T wt = static_cast<T>(w);
#pragma omp simd
      for (std::int64_t j = 0; j < d; ++j) a[j] += wt * o[j];
    }
  }
}

// One layer: out = A x, and optionally acc += w * out in the same pass (while the row is hot).
template <typename I, typename T>
void layer(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense,
           std::int64_t d, T* out, int num_threads, T* acc = nullptr, double w = 0.0) {
  switch (d) {
    case 16: return spmm_fixed<16>(indptr, indices, values, n_rows, dense, out, num_threads, acc, w);
    case 32: return spmm_fixed<32>(indptr, indices, values, n_rows, dense, out, num_threads, acc, w);
    case 64: return spmm_fixed<64>(indptr, indices, values, n_rows, dense, out, num_threads, acc, w);
    case 128: return spmm_fixed<128>(indptr, indices, values, n_rows, dense, out, num_threads, acc, w);
    case 256: return spmm_fixed<256>(indptr, indices, values, n_rows, dense, out, num_threads, acc, w);
    default: return spmm_generic(indptr, indices, values, n_rows, dense, d, out, num_threads, acc, w);
  }
}

}  // namespace

template <typename I, typename T>
void spmm(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense,
          std::int64_t d, T* out, int num_threads) {
  layer(indptr, indices, values, n_rows, dense, d, out, num_threads);
}

template <typename I, typename T>
void lightgcn_propagate(const offset_t* indptr, const I* indices, const T* values, std::int64_t n, const T* emb,
                        std::int64_t d, std::int64_t num_layers, const double* w, T* out, T* buf_a, T* buf_b,
                        int num_threads) {
  const std::int64_t total = n * d;
  const T w0 = static_cast<T>(w[0]);
#pragma omp parallel for schedule(static) num_threads(resolve_threads(num_threads))
  for (std::int64_t i = 0; i < total; ++i) out[i] = w0 * emb[i];
  const T* cur = emb;
  T* next = buf_a;
  T* spare = buf_b;
  for (std::int64_t l = 1; l <= num_layers; ++l) {
    layer(indptr, indices, values, n, cur, d, next, num_threads, out, w[l]);
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
