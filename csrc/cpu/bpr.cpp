#include "recfast/bpr.h"

#include <algorithm>
#include <atomic>
#include <vector>

#include "recfast/parallel.h"
#include "recfast/sampling.h"

namespace recfast::cpu {

namespace {

template <typename T>
__attribute__((always_inline)) inline T dot(const T* a, const T* b, std::int64_t d) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (std::int64_t t = 0; t < d; ++t) s += a[t] * b[t];
  return s;
}

template <typename T>
inline T sqnorm(const T* a, std::int64_t d) {
  return dot(a, a, d);
}

}  // namespace

template <typename T>
void bpr_forward(const T* U, const T* V, const T* bias, std::int64_t d, const std::int64_t* users,
                 const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2, T* loss,
                 T* coef, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(resolve_threads(num_threads))
  for (std::int64_t b = 0; b < B; ++b) {
    const T* u = U + users[b] * d;
    const T* vi = V + pos[b] * d;
    const double ui = static_cast<double>(dot(u, vi, d)) + (bias ? static_cast<double>(bias[pos[b]]) : 0.0);
    double total = 0.0, neg_sq = 0.0;
    for (std::int64_t k = 0; k < K; ++k) {
      const std::int64_t j = neg[b * K + k];
      const T* vj = V + j * d;
      const double x = ui - static_cast<double>(dot(u, vj, d)) - (bias ? static_cast<double>(bias[j]) : 0.0);
      total += softplus(-x);
      coef[b * K + k] = static_cast<T>(-sigmoid(-x));
      if (l2 != 0.0) neg_sq += static_cast<double>(sqnorm(vj, d));
    }
    double l = total / static_cast<double>(K);
    if (l2 != 0.0) {
      l += 0.5 * l2 * (static_cast<double>(sqnorm(u, d)) + static_cast<double>(sqnorm(vi, d)) + neg_sq / K);
    }
    loss[b] = static_cast<T>(l);
  }
}

template <typename T>
void bpr_backward(const T* U, const T* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                  const std::int64_t* neg, std::int64_t B, std::int64_t K, const T* coef, const T* scale, double l2,
                  const std::int64_t* urow, const std::int64_t* prow, const std::int64_t* nrow, T* gU, T* gV, T* gbias,
                  int num_threads) {
  const int threads = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(resolve_threads(num_threads), B)));
  const T invK = T(1) / static_cast<T>(K);
  const T l2t = static_cast<T>(l2);
#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_id();
    const int nt = threads;
    for (std::int64_t b = 0; b < B; ++b) {
      const bool own_u = urow[b] % nt == tid;
      const bool own_p = prow[b] % nt == tid;
      bool own_n = false;
      for (std::int64_t k = 0; k < K && !own_n; ++k) own_n = nrow[b * K + k] % nt == tid;
      if (!own_u && !own_p && !own_n) continue;
      const T s = scale[b];
      const T* u = U + users[b] * d;
      const T* vi = V + pos[b] * d;
      T csum = 0;
      for (std::int64_t k = 0; k < K; ++k) csum += coef[b * K + k];
      csum *= invK;
      if (own_u) {
        // d/du = (1/K) sum_k c_k (v_i - v_jk) + l2 u
        T* g = gU + urow[b] * d;
#pragma omp simd
        for (std::int64_t t = 0; t < d; ++t) g[t] += s * (csum * vi[t] + l2t * u[t]);
        for (std::int64_t k = 0; k < K; ++k) {
          const T ck = s * coef[b * K + k] * invK;
          const T* vj = V + neg[b * K + k] * d;
#pragma omp simd
          for (std::int64_t t = 0; t < d; ++t) g[t] -= ck * vj[t];
        }
      }
      if (own_p) {
        T* g = gV + prow[b] * d;
#pragma omp simd
        for (std::int64_t t = 0; t < d; ++t) g[t] += s * (csum * u[t] + l2t * vi[t]);
        if (gbias) gbias[prow[b]] += s * csum;
      }
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t r = nrow[b * K + k];
        if (r % nt != tid) continue;
        const T ck = s * coef[b * K + k] * invK;
        const T lk = s * l2t * invK;
        const T* vj = V + neg[b * K + k] * d;
        T* g = gV + r * d;
#pragma omp simd
        for (std::int64_t t = 0; t < d; ++t) g[t] += -ck * u[t] + lk * vj[t];
        if (gbias) gbias[r] -= ck;
      }
    }
  }
}

namespace {

// The step's body, inlined into a baseline and an AVX2+FMA copy (picked at run time): the dot
// products and row updates are most of the arithmetic.
template <typename I>
__attribute__((always_inline)) inline double sgd_body(float* U, float* V, float* bias, std::int64_t d,
                                                      const offset_t* indptr, const I* indices, std::int64_t n_items,
                                                      const std::int64_t* users, const std::int64_t* pos,
                                                      std::int64_t B, std::int64_t K, std::uint64_t seed,
                                                      std::int64_t row_offset, double lr, double l2,
                                                      std::int64_t* bad, int num_threads) {
  double total = 0.0;
  std::atomic<std::int64_t> first_bad{B};
  const float lrf = static_cast<float>(lr), l2f = static_cast<float>(l2), invK = 1.0f / static_cast<float>(K);
#pragma omp parallel num_threads(resolve_threads(num_threads)) reduction(+ : total)
  {
    std::vector<float> gu(d);
    std::vector<std::int64_t> negs(K);
    std::vector<float> coefs(K);
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < B; ++b) {
      const std::int64_t uid = users[b];
      const offset_t start = indptr[uid];
      const std::int64_t deg = indptr[uid + 1] - start;
      if (n_items - deg < 1) {
        std::int64_t cur = first_bad.load();
        while (b < cur && !first_bad.compare_exchange_weak(cur, b)) {
        }
        continue;
      }
      const std::uint64_t key = rng_key(seed, static_cast<std::uint64_t>(row_offset + b));
      float* u = U + uid * d;
      float* vi = V + pos[b] * d;
      const float ui = dot(u, vi, d) + (bias ? bias[pos[b]] : 0.0f);
      float csum = 0.0f;
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t j = uniform_negative(key, static_cast<std::uint64_t>(k), indices + start, deg, n_items);
        negs[k] = j;
        const float x = ui - dot(u, V + j * d, d) - (bias ? bias[j] : 0.0f);
        total += softplus(-static_cast<double>(x)) / static_cast<double>(K);
        coefs[k] = static_cast<float>(-sigmoid(-static_cast<double>(x))) * invK;
        csum += coefs[k];
      }
      // gradients from the current values, then the updates
      for (std::int64_t t = 0; t < d; ++t) gu[t] = csum * vi[t] + l2f * u[t];
      for (std::int64_t k = 0; k < K; ++k) {
        const float* vj = V + negs[k] * d;
#pragma omp simd
        for (std::int64_t t = 0; t < d; ++t) gu[t] -= coefs[k] * vj[t];
      }
      for (std::int64_t k = 0; k < K; ++k) {
        float* vj = V + negs[k] * d;
        const float c = coefs[k];
#pragma omp simd
        for (std::int64_t t = 0; t < d; ++t) vj[t] -= lrf * (-c * u[t] + l2f * invK * vj[t]);
        if (bias) bias[negs[k]] -= lrf * (-c);
      }
#pragma omp simd
      for (std::int64_t t = 0; t < d; ++t) vi[t] -= lrf * (csum * u[t] + l2f * vi[t]);
      if (bias) bias[pos[b]] -= lrf * csum;
#pragma omp simd
      for (std::int64_t t = 0; t < d; ++t) u[t] -= lrf * gu[t];
    }
  }
  const std::int64_t fb = first_bad.load();
  *bad = fb == B ? -1 : fb;
  return B ? total / static_cast<double>(B) : 0.0;
}

template <typename I>
double sgd_base(float* U, float* V, float* bias, std::int64_t d, const offset_t* indptr, const I* indices,
                std::int64_t n_items, const std::int64_t* users, const std::int64_t* pos, std::int64_t B,
                std::int64_t K, std::uint64_t seed, std::int64_t row_offset, double lr, double l2, std::int64_t* bad,
                int num_threads) {
  return sgd_body(U, V, bias, d, indptr, indices, n_items, users, pos, B, K, seed, row_offset, lr, l2, bad,
                  num_threads);
}

template <typename I>
__attribute__((target("avx2,fma"))) double sgd_avx2(float* U, float* V, float* bias, std::int64_t d,
                                                      const offset_t* indptr, const I* indices, std::int64_t n_items,
                                                      const std::int64_t* users, const std::int64_t* pos,
                                                      std::int64_t B, std::int64_t K, std::uint64_t seed,
                                                      std::int64_t row_offset, double lr, double l2,
                                                      std::int64_t* bad, int num_threads) {
  return sgd_body(U, V, bias, d, indptr, indices, n_items, users, pos, B, K, seed, row_offset, lr, l2, bad,
                  num_threads);
}

}  // namespace

template <typename I>
double bpr_sgd_step(float* U, float* V, float* bias, std::int64_t d, const offset_t* indptr, const I* indices,
                    std::int64_t n_items, const std::int64_t* users, const std::int64_t* pos, std::int64_t B,
                    std::int64_t K, std::uint64_t seed, std::int64_t row_offset, double lr, double l2,
                    std::int64_t* bad, int num_threads) {
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return (avx2 ? sgd_avx2<I> : sgd_base<I>)(U, V, bias, d, indptr, indices, n_items, users, pos, B, K, seed,
                                             row_offset, lr, l2, bad, num_threads);
}

#define RF_INSTANTIATE(T)                                                                                            \
  template void bpr_forward<T>(const T*, const T*, const T*, std::int64_t, const std::int64_t*, const std::int64_t*, \
                               const std::int64_t*, std::int64_t, std::int64_t, double, T*, T*, int);                 \
  template void bpr_backward<T>(const T*, const T*, std::int64_t, const std::int64_t*, const std::int64_t*,          \
                                const std::int64_t*, std::int64_t, std::int64_t, const T*, const T*, double,          \
                                const std::int64_t*, const std::int64_t*, const std::int64_t*, T*, T*, T*, int);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
#undef RF_INSTANTIATE
template double bpr_sgd_step<std::int32_t>(float*, float*, float*, std::int64_t, const offset_t*, const std::int32_t*,
                                           std::int64_t, const std::int64_t*, const std::int64_t*, std::int64_t,
                                           std::int64_t, std::uint64_t, std::int64_t, double, double, std::int64_t*,
                                           int);
template double bpr_sgd_step<std::int64_t>(float*, float*, float*, std::int64_t, const offset_t*, const std::int64_t*,
                                           std::int64_t, const std::int64_t*, const std::int64_t*, std::int64_t,
                                           std::int64_t, std::uint64_t, std::int64_t, double, double, std::int64_t*,
                                           int);

}  // namespace recfast::cpu
