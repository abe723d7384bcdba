#include <cmath>

#include "check.cuh"
#include "recfast/topk.h"

namespace recfast::cuda {

namespace {

// A block per row; its threads walk the row's excluded items and blank those inside the tile.
template <typename I>
__global__ void topk_mask_kernel(float* scores, std::int64_t n_rows, std::int64_t n_cols, std::int64_t tile_start,
                                 const std::int64_t* rows, const offset_t* ex_indptr, const I* ex_indices) {
  for (std::int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
    const std::int64_t q = rows[r];
    const offset_t end = ex_indptr[q + 1];
    for (offset_t p = ex_indptr[q] + threadIdx.x; p < end; p += blockDim.x) {
      const std::int64_t j = static_cast<std::int64_t>(ex_indices[p]) - tile_start;
      if (j >= 0 && j < n_cols) scores[r * n_cols + j] = -INFINITY;
    }
  }
}

}  // namespace

template <typename I>
void topk_mask(float* scores, std::int64_t n_rows, std::int64_t n_cols, std::int64_t tile_start,
               const std::int64_t* rows, const offset_t* ex_indptr, const I* ex_indices, CUstream_st* stream) {
  if (n_rows == 0 || n_cols == 0) return;
  const unsigned grid = static_cast<unsigned>(n_rows < 65535 ? n_rows : 65535);
  topk_mask_kernel<I><<<grid, 128, 0, stream>>>(scores, n_rows, n_cols, tile_start, rows, ex_indptr, ex_indices);
  RF_CUDA_CHECK_LAUNCH(topk_mask_kernel);
}

template void topk_mask<std::int32_t>(float*, std::int64_t, std::int64_t, std::int64_t, const std::int64_t*,
                                      const offset_t*, const std::int32_t*, CUstream_st*);
template void topk_mask<std::int64_t>(float*, std::int64_t, std::int64_t, std::int64_t, const std::int64_t*,
                                      const offset_t*, const std::int64_t*, CUstream_st*);

}  // namespace recfast::cuda
