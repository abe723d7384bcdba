#include "check.cuh"
#include "convert.cuh"
#include "recfast/bpr.h"

namespace recfast::cuda {

namespace {

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename S, typename A = acc_t<S>>
__device__ __forceinline__ A warp_dot(const S* a, const S* b, std::int64_t d, int lane) {
  A s = 0;
  for (std::int64_t t = lane; t < d; t += 32) s += ld(a[t]) * ld(b[t]);
  return warp_sum(s);
}

// A warp per example.
template <typename S>
__global__ void bpr_forward_kernel(const S* U, const S* V, const S* bias, std::int64_t d, const std::int64_t* users,
                                   const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K,
                                   double l2, S* loss, acc_t<S>* coef) {
  using A = acc_t<S>;
  const int lane = threadIdx.x & 31;
  const std::int64_t warps = (static_cast<std::int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (std::int64_t b = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; b < B; b += warps) {
    const S* u = U + users[b] * d;
    const S* vi = V + pos[b] * d;
    const double ui =
        static_cast<double>(warp_dot(u, vi, d, lane)) + (bias ? static_cast<double>(ld(bias[pos[b]])) : 0.0);
    double total = 0.0, neg_sq = 0.0;
    for (std::int64_t k = 0; k < K; ++k) {
      const std::int64_t j = neg[b * K + k];
      const S* vj = V + j * d;
      const double x =
          ui - static_cast<double>(warp_dot(u, vj, d, lane)) - (bias ? static_cast<double>(ld(bias[j])) : 0.0);
      total += softplus(-x);
      if (lane == 0) coef[b * K + k] = static_cast<A>(-sigmoid(-x));
      if (l2 != 0.0) neg_sq += static_cast<double>(warp_dot(vj, vj, d, lane));
    }
    double l = total / static_cast<double>(K);
    if (l2 != 0.0) {
      const double uu = static_cast<double>(warp_dot(u, u, d, lane));
      const double ii = static_cast<double>(warp_dot(vi, vi, d, lane));
      l += 0.5 * l2 * (uu + ii + neg_sq / K);
    }
    if (lane == 0) loss[b] = to_storage<S>(l);
  }
}

template <typename S>
__global__ void bpr_backward_kernel(const S* U, const S* V, std::int64_t d, const std::int64_t* users,
                                    const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K,
                                    const acc_t<S>* coef, const acc_t<S>* scale, double l2,
                                    const std::int64_t* urow, const std::int64_t* prow, const std::int64_t* nrow,
                                    acc_t<S>* gU, acc_t<S>* gV, acc_t<S>* gbias) {
  using A = acc_t<S>;
  const int lane = threadIdx.x & 31;
  const std::int64_t warps = (static_cast<std::int64_t>(gridDim.x) * blockDim.x) >> 5;
  const A invK = A(1) / static_cast<A>(K);
  const A l2t = static_cast<A>(l2);
  for (std::int64_t b = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; b < B; b += warps) {
    const A s = scale[b];
    const S* u = U + users[b] * d;
    const S* vi = V + pos[b] * d;
    A csum = 0;
    for (std::int64_t k = 0; k < K; ++k) csum += coef[b * K + k];
    csum *= invK;
    A* gu = gU + urow[b] * d;
    A* gp = gV + prow[b] * d;
    for (std::int64_t t = lane; t < d; t += 32) {
      const A ut = ld(u[t]), it = ld(vi[t]);
      A acc = csum * it + l2t * ut;
      for (std::int64_t k = 0; k < K; ++k) acc -= coef[b * K + k] * invK * ld(V[neg[b * K + k] * d + t]);
      atomicAdd(gu + t, s * acc);
      atomicAdd(gp + t, s * (csum * ut + l2t * it));
      for (std::int64_t k = 0; k < K; ++k) {
        const A ck = s * coef[b * K + k] * invK;
        atomicAdd(gV + nrow[b * K + k] * d + t, -ck * ut + s * l2t * invK * ld(V[neg[b * K + k] * d + t]));
      }
    }
    if (gbias && lane == 0) {
      atomicAdd(gbias + prow[b], s * csum);
      for (std::int64_t k = 0; k < K; ++k) atomicAdd(gbias + nrow[b * K + k], -s * coef[b * K + k] * invK);
    }
  }
}

}  // namespace

template <typename S>
void bpr_forward(const S* U, const S* V, const S* bias, std::int64_t d, const std::int64_t* users,
                 const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2, S* loss,
                 acc_t<S>* coef, CUstream_st* stream) {
  if (B == 0) return;
  bpr_forward_kernel<S><<<grid_for(B * 32, 256), 256, 0, stream>>>(U, V, bias, d, users, pos, neg, B, K, l2, loss, coef);
  RF_CUDA_CHECK_LAUNCH(bpr_forward_kernel);
}

template <typename S>
void bpr_backward(const S* U, const S* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                  const std::int64_t* neg, std::int64_t B, std::int64_t K, const acc_t<S>* coef,
                  const acc_t<S>* scale, double l2, const std::int64_t* urow, const std::int64_t* prow,
                  const std::int64_t* nrow, acc_t<S>* gU, acc_t<S>* gV, acc_t<S>* gbias,
                  CUstream_st* stream) {
  if (B == 0) return;
  bpr_backward_kernel<S><<<grid_for(B * 32, 256), 256, 0, stream>>>(U, V, d, users, pos, neg, B, K, coef, scale, l2,
                                                                    urow, prow, nrow, gU, gV, gbias);
  RF_CUDA_CHECK_LAUNCH(bpr_backward_kernel);
}

#define RF_INSTANTIATE(S)                                                                                         \
  template void bpr_forward<S>(const S*, const S*, const S*, std::int64_t, const std::int64_t*,                  \
                               const std::int64_t*, const std::int64_t*, std::int64_t, std::int64_t, double, S*, \
                               acc_t<S>*, CUstream_st*);                                                     \
  template void bpr_backward<S>(const S*, const S*, std::int64_t, const std::int64_t*, const std::int64_t*,      \
                                const std::int64_t*, std::int64_t, std::int64_t, const acc_t<S>*,            \
                                const acc_t<S>*, double, const std::int64_t*, const std::int64_t*,           \
                                const std::int64_t*, acc_t<S>*, acc_t<S>*, acc_t<S>*, CUstream_st*);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
RF_INSTANTIATE(__half)
RF_INSTANTIATE(__nv_bfloat16)
#undef RF_INSTANTIATE

}  // namespace recfast::cuda
