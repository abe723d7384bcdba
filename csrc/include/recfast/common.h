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

namespace recfast {
// Row pointers and every offset into indices/values are 64-bit: nnz may exceed 2^31.
using offset_t = std::int64_t;
}  // namespace recfast
