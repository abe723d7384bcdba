// Loads and stores between a storage type and its arithmetic type acc_t (common.h): kernels that
// take float16/bfloat16 buffers read them as float, compute in float and round once on store.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "recfast/common.h"

namespace recfast::cuda {

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ double ld(double v) { return v; }
__device__ __forceinline__ float ld(__half v) { return __half2float(v); }
__device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }

// v rounded to nearest in S.
template <typename S>
__device__ __forceinline__ S to_storage(double v) {
  return static_cast<S>(v);
}
template <>
__device__ __forceinline__ __half to_storage<__half>(double v) {
  return __float2half_rn(static_cast<float>(v));
}
template <>
__device__ __forceinline__ __nv_bfloat16 to_storage<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(static_cast<float>(v));
}

}  // namespace recfast::cuda
