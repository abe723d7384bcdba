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
  spmm_kernel<I, T><<<grid_for(n_rows * 32, block), block, 0, stream>>>(indptr, indices, values, n_rows, dense, d, out);
  RF_CUDA_CHECK_LAUNCH(spmm_kernel);
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
