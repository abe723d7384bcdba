#include "check.cuh"
#include "recfast/spmm.h"

namespace recfast::cuda {

namespace {

constexpr std::int64_t kLongRow = 256;  // rows longer than this get a whole block

// A warp per row; each lane accumulates its columns (lane, lane + 32, ...) over the row's entries,
// so the dense rows are read with coalesced 128-byte accesses. Long rows are left to
// spmm_long_kernel: on power-law graphs one warp walking a 10,000-entry row serially would set the
// kernel's time.
template <typename I, typename T>
__global__ void spmm_kernel(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows,
                            const T* dense, std::int64_t d, T* out) {
  const std::int64_t warps = (static_cast<std::int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int lane = threadIdx.x & 31;
  for (std::int64_t r = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < n_rows;
       r += warps) {
    const offset_t begin = indptr[r], end = indptr[r + 1];
    if (end - begin > kLongRow) continue;
    for (std::int64_t c0 = 0; c0 < d; c0 += 32 * 4) {
      T acc[4] = {T(0), T(0), T(0), T(0)};
#pragma unroll 4
      for (offset_t p = begin; p < end; ++p) {
        const T v = values ? values[p] : T(1);
        const T* x = dense + static_cast<std::int64_t>(indices[p]) * d;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const std::int64_t c = c0 + lane + 32 * q;
          if (c < d) acc[q] += v * x[c];
        }
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const std::int64_t c = c0 + lane + 32 * q;
        if (c < d) out[r * d + c] = acc[q];
      }
    }
  }
}

// Vector loads for the common case (d a multiple of the vector width, 16-byte aligned rows): a
// row of d = 64 floats is 16 float4s, so a warp splits into G = 32 / S groups of S lanes, each
// group summing every G-th entry of the row (G entries' rows in flight per step instead of one).
// The row's indices and values are read once per 32 entries, a lane each, and broadcast with
// shuffles. The groups' partial sums are combined by a fixed xor-shuffle tree, so the result does
// not depend on scheduling.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using type = float4;
  static constexpr int n = 4;
};
template <>
struct Vec<double> {
  using type = double2;
  static constexpr int n = 2;
};

__device__ __forceinline__ void axpy_vec(float4& acc, float v, const float4& x) {
  acc.x += v * x.x;
  acc.y += v * x.y;
  acc.z += v * x.z;
  acc.w += v * x.w;
}
__device__ __forceinline__ void axpy_vec(double2& acc, double v, const double2& x) {
  acc.x += v * x.x;
  acc.y += v * x.y;
}
__device__ __forceinline__ void add_shfl_xor(float4& a, int off) {
  a.x += __shfl_xor_sync(0xffffffffu, a.x, off);
  a.y += __shfl_xor_sync(0xffffffffu, a.y, off);
  a.z += __shfl_xor_sync(0xffffffffu, a.z, off);
  a.w += __shfl_xor_sync(0xffffffffu, a.w, off);
}
__device__ __forceinline__ void add_shfl_xor(double2& a, int off) {
  a.x += __shfl_xor_sync(0xffffffffu, a.x, off);
  a.y += __shfl_xor_sync(0xffffffffu, a.y, off);
}

// S (lanes per group) is a power of two, 1 <= S <= 32; dv = d / Vec<T>::n.
template <typename I, typename T, int S>
__global__ void spmm_vec_kernel(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows,
                                const T* dense, std::int64_t dv, T* out) {
  using V = typename Vec<T>::type;
  constexpr int G = 32 / S;
  const std::int64_t warps = (static_cast<std::int64_t>(gridDim.x) * blockDim.x) >> 5;
  const int lane = threadIdx.x & 31, g = lane / S, s = lane % S;
  const V* x = reinterpret_cast<const V*>(dense);
  V* o = reinterpret_cast<V*>(out);
  // Warp-uniform row loop: every lane of the warp reaches each shuffle below.
  for (std::int64_t r = (static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < n_rows;
       r += warps) {
    const offset_t begin = indptr[r], end = indptr[r + 1];
    if (end - begin > kLongRow) continue;
    for (std::int64_t c0 = 0; c0 < dv; c0 += S) {
      const std::int64_t c = c0 + s;
      const bool col_ok = c < dv;
      V acc{};
      for (offset_t p0 = begin; p0 < end; p0 += 32) {
        const int n = static_cast<int>(end - p0 < 32 ? end - p0 : 32);
        const std::int64_t my_idx = lane < n ? static_cast<std::int64_t>(indices[p0 + lane]) : 0;
        const T my_val = values ? (lane < n ? values[p0 + lane] : T(0)) : T(1);
#pragma unroll 4
        for (int j0 = 0; j0 < n; j0 += G) {
          const int j = j0 + g;
          const std::int64_t idx = __shfl_sync(0xffffffffu, my_idx, j & 31);
          const T v = __shfl_sync(0xffffffffu, my_val, j & 31);
          if (j < n && col_ok) axpy_vec(acc, v, x[idx * dv + c]);
        }
      }
#pragma unroll
      for (int off = S; off < 32; off <<= 1) add_shfl_xor(acc, off);
      if (g == 0 && col_ok) o[r * dv + c] = acc;
    }
  }
}

template <typename I, typename T>
void launch_spmm_vec(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense,
                     std::int64_t dv, T* out, unsigned grid, unsigned block, cudaStream_t stream) {
  // The smallest power-of-two group that covers the row's vectors (32 lanes past that).
  if (dv <= 1) {
    spmm_vec_kernel<I, T, 1><<<grid, block, 0, stream>>>(indptr, indices, values, n_rows, dense, dv, out);
  } else if (dv <= 2) {
    spmm_vec_kernel<I, T, 2><<<grid, block, 0, stream>>>(indptr, indices, values, n_rows, dense, dv, out);
  } else if (dv <= 4) {
    spmm_vec_kernel<I, T, 4><<<grid, block, 0, stream>>>(indptr, indices, values, n_rows, dense, dv, out);
  } else if (dv <= 8) {
    spmm_vec_kernel<I, T, 8><<<grid, block, 0, stream>>>(indptr, indices, values, n_rows, dense, dv, out);
  } else if (dv <= 16) {
    spmm_vec_kernel<I, T, 16><<<grid, block, 0, stream>>>(indptr, indices, values, n_rows, dense, dv, out);
  } else {
    spmm_vec_kernel<I, T, 32><<<grid, block, 0, stream>>>(indptr, indices, values, n_rows, dense, dv, out);
  }
}

// A block of 8 warps per long row: warp w takes entries w, w + 8, ...; the partial rows are summed
// in shared memory in a fixed order, so the result does not depend on scheduling.
template <typename I, typename T>
__global__ void spmm_long_kernel(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows,
                                 const T* dense, std::int64_t d, T* out) {
  constexpr int W = 8;
  __shared__ T part[W][128];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  for (std::int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
    const offset_t begin = indptr[r], end = indptr[r + 1];
    if (end - begin <= kLongRow) continue;
    for (std::int64_t c0 = 0; c0 < d; c0 += 128) {
      T acc[4] = {T(0), T(0), T(0), T(0)};
      for (offset_t p = begin + w; p < end; p += W) {
        const T v = values ? values[p] : T(1);
        const T* x = dense + static_cast<std::int64_t>(indices[p]) * d;
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const std::int64_t c = c0 + lane + 32 * q;
          if (c < d) acc[q] += v * x[c];
        }
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) part[w][lane + 32 * q] = acc[q];
      __syncthreads();
      if (w == 0) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          const std::int64_t c = c0 + lane + 32 * q;
          T s = T(0);
          for (int k = 0; k < W; ++k) s += part[k][lane + 32 * q];
          if (c < d) out[r * d + c] = s;
        }
      }
      __syncthreads();
    }
  }
}

template <typename T>
__global__ void axpy_kernel(T* out, const T* src, T w, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    out[i] += w * src[i];
}

}  // namespace

template <typename I, typename T>
void spmm(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense,
          std::int64_t d, T* out, CUstream_st* stream) {
  if (n_rows == 0 || d == 0) return;
  constexpr unsigned block = 256;
  const unsigned grid = grid_for(n_rows * 32, block);
  constexpr int vn = Vec<T>::n;
  const bool aligned = reinterpret_cast<std::uintptr_t>(dense) % (sizeof(T) * vn) == 0 &&
                       reinterpret_cast<std::uintptr_t>(out) % (sizeof(T) * vn) == 0;
  if (d % vn == 0 && aligned) {
    launch_spmm_vec<I, T>(indptr, indices, values, n_rows, dense, d / vn, out, grid, block, stream);
    RF_CUDA_CHECK_LAUNCH(spmm_vec_kernel);
  } else {
    spmm_kernel<I, T><<<grid, block, 0, stream>>>(indptr, indices, values, n_rows, dense, d, out);
    RF_CUDA_CHECK_LAUNCH(spmm_kernel);
  }
  // Every block scans the row lengths and skips the short rows; a grid of 1,024 blocks covers the
  // rows in strides, which is cheap next to the long rows' work.
  const unsigned long_grid = static_cast<unsigned>(n_rows < 1024 ? n_rows : 1024);
  spmm_long_kernel<I, T><<<long_grid, 256, 0, stream>>>(indptr, indices, values, n_rows, dense, d, out);
  RF_CUDA_CHECK_LAUNCH(spmm_long_kernel);
}

template <typename T>
void axpy(T* out, const T* src, double w, std::int64_t n, CUstream_st* stream) {
  if (n == 0) return;
  axpy_kernel<T><<<grid_for(n, 256), 256, 0, stream>>>(out, src, static_cast<T>(w), n);
  RF_CUDA_CHECK_LAUNCH(axpy_kernel);
}

#define RF_INSTANTIATE(I, T)                                                                                       \
  template void spmm<I, T>(const offset_t*, const I*, const T*, std::int64_t, const T*, std::int64_t, T*, CUstream_st*);
RF_INSTANTIATE(std::int32_t, float)
RF_INSTANTIATE(std::int64_t, float)
RF_INSTANTIATE(std::int32_t, double)
RF_INSTANTIATE(std::int64_t, double)
#undef RF_INSTANTIATE
template void axpy<float>(float*, const float*, double, std::int64_t, CUstream_st*);
template void axpy<double>(double*, const double*, double, std::int64_t, CUstream_st*);

}  // namespace recfast::cuda
