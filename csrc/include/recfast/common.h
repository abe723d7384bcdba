// Shared definitions for the CPU and CUDA kernels.
#pragma once
#include <cstdint>

// Functions that both backends share (per-row logic, RNG) are marked RF_HD so that nvcc compiles
// them for the device and the host compiler inlines them into the OpenMP loops.
#if defined(__CUDACC__)
#define RF_HD __host__ __device__ __forceinline__
#else
#define RF_HD inline
#endif

// Host helpers called from the run-time dispatched ISA copies of a kernel (target("avx512...")
// functions): forced inline, since GCC keeps a default-target callee out of line there, and the
// call costs (a prefetch helper called per chunk made the weighted sampler ~40% slower).
#define RF_INLINE __attribute__((always_inline)) inline

namespace recfast {
// Row pointers and every offset into indices/values are 64-bit: nnz may exceed 2^31.
using offset_t = std::int64_t;

// The arithmetic type for values stored as S: double for double, float otherwise (float, and on
// CUDA __half and __nv_bfloat16, which kernels load as float and accumulate in float).
template <typename S>
struct acc {
  using type = float;
};
template <>
struct acc<double> {
  using type = double;
};
template <typename S>
using acc_t = typename acc<S>::type;
}  // namespace recfast
