#include "check.cuh"
#include "recfast/bpr.h"

namespace recfast::cuda {

namespace {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_dot(const T* a, const T* b, std::int64_t d, int lane) {
  T s = 0;
  for (std::int64_t t = lane; t < d; t += 32) s += a[t] * b[t];
  return warp_sum(s);
}

// A warp per example.
template <typename T>
__global__ void bpr_forward_kernel(const T* U, const T* V, const T* bias, std::int64_t d, const std::int64_t* users,
                                   const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K,
                                   double l2, T* loss, T* coef) {
  const int lane = threadIdx.x & 31;
  const std::int64_t warps = (static_cast<std::int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (std::int64_t b = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; b < B; b += warps) {
    const T* u = U + users[b] * d;
    const T* vi = V + pos[b] * d;
    const double ui = static_cast<double>(warp_dot(u, vi, d, lane)) + (bias ? static_cast<double>(bias[pos[b]]) : 0.0);
    double total = 0.0, neg_sq = 0.0;
    for (std::int64_t k = 0; k < K; ++k) {
      const std::int64_t j = neg[b * K + k];
      const T* vj = V + j * d;
      const double x = ui - static_cast<double>(warp_dot(u, vj, d, lane)) - (bias ? static_cast<double>(bias[j]) : 0.0);
      total += softplus(-x);
      if (lane == 0) coef[b * K + k] = static_cast<T>(-sigmoid(-x));
      if (l2 != 0.0) neg_sq += static_cast<double>(warp_dot(vj, vj, d, lane));
    }
    double l = total / static_cast<double>(K);
    if (l2 != 0.0) {
      const double uu = static_cast<double>(warp_dot(u, u, d, lane));
      const double ii = static_cast<double>(warp_dot(vi, vi, d, lane));
      l += 0.5 * l2 * (uu + ii + neg_sq / K);
    }
    if (lane == 0) loss[b] = static_cast<T>(l);
  }
}

template <typename T>
__global__ void bpr_backward_kernel(const T* U, const T* V, std::int64_t d, const std::int64_t* users,
                                    const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K,
                                    const T* coef, const T* scale, double l2, const std::int64_t* urow,
                                    const std::int64_t* prow, const std::int64_t* nrow, T* gU, T* gV, T* gbias) {
  const int lane = threadIdx.x & 31;
  const std::int64_t warps = (static_cast<std::int64_t>(gridDim.x) * blockDim.x) >> 5;
  const T invK = T(1) / static_cast<T>(K);
  const T l2t = static_cast<T>(l2);
  for (std::int64_t b = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; b < B; b += warps) {
    const T s = scale[b];
    const T* u = U + users[b] * d;
    const T* vi = V + pos[b] * d;
    T csum = 0;
    for (std::int64_t k = 0; k < K; ++k) csum += coef[b * K + k];
    csum *= invK;
    T* gu = gU + urow[b] * d;
    T* gp = gV + prow[b] * d;
    for (std::int64_t t = lane; t < d; t += 32) {
      T acc = csum * vi[t] + l2t * u[t];
      for (std::int64_t k = 0; k < K; ++k) acc -= coef[b * K + k] * invK * V[neg[b * K + k] * d + t];
      atomicAdd(gu + t, s * acc);
      atomicAdd(gp + t, s * (csum * u[t] + l2t * vi[t]));
      for (std::int64_t k = 0; k < K; ++k) {
        const T ck = s * coef[b * K + k] * invK;
        atomicAdd(gV + nrow[b * K + k] * d + t, -ck * u[t] + s * l2t * invK * V[neg[b * K + k] * d + t]);
      }
    }
    if (gbias && lane == 0) {
      atomicAdd(gbias + prow[b], s * csum);
      for (std::int64_t k = 0; k < K; ++k) atomicAdd(gbias + nrow[b * K + k], -s * coef[b * K + k] * invK);
    }
  }
}

}  // namespace

template <typename T>
void bpr_forward(const T* U, const T* V, const T* bias, std::int64_t d, const std::int64_t* users,
                 const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2, T* loss,
                 T* coef, CUstream_st* stream) {
  if (B == 0) return;
  bpr_forward_kernel<T><<<grid_for(B * 32, 256), 256, 0, stream>>>(U, V, bias, d, users, pos, neg, B, K, l2, loss, coef);
  RF_CUDA_CHECK_LAUNCH("bpr_loss");
}

template <typename T>
void bpr_backward(const T* U, const T* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                  const std::int64_t* neg, std::int64_t B, std::int64_t K, const T* coef, const T* scale, double l2,
                  const std::int64_t* urow, const std::int64_t* prow, const std::int64_t* nrow, T* gU, T* gV, T* gbias,
                  CUstream_st* stream) {
  if (B == 0) return;
  bpr_backward_kernel<T><<<grid_for(B * 32, 256), 256, 0, stream>>>(U, V, d, users, pos, neg, B, K, coef, scale, l2,
                                                                    urow, prow, nrow, gU, gV, gbias);
  RF_CUDA_CHECK_LAUNCH("bpr_loss backward");
}

template void bpr_forward<float>(const float*, const float*, const float*, std::int64_t, const std::int64_t*,
                                 const std::int64_t*, const std::int64_t*, std::int64_t, std::int64_t, double, float*,
                                 float*, CUstream_st*);
template void bpr_forward<double>(const double*, const double*, const double*, std::int64_t, const std::int64_t*,
                                  const std::int64_t*, const std::int64_t*, std::int64_t, std::int64_t, double, double*,
                                  double*, CUstream_st*);
template void bpr_backward<float>(const float*, const float*, std::int64_t, const std::int64_t*, const std::int64_t*,
                                  const std::int64_t*, std::int64_t, std::int64_t, const float*, const float*, double,
                                  const std::int64_t*, const std::int64_t*, const std::int64_t*, float*, float*, float*,
                                  CUstream_st*);
template void bpr_backward<double>(const double*, const double*, std::int64_t, const std::int64_t*, const std::int64_t*,
                                   const std::int64_t*, std::int64_t, std::int64_t, const double*, const double*,
                                   double, const std::int64_t*, const std::int64_t*, const std::int64_t*, double*,
                                   double*, double*, CUstream_st*);

}  // namespace recfast::cuda
