#include "check.cuh"
#include "recfast/sampling.h"

namespace recfast::cuda {

namespace {

__device__ __forceinline__ void fail_at(std::int64_t* bad, std::int64_t b) {
  atomicMin(reinterpret_cast<unsigned long long*>(bad), static_cast<unsigned long long>(b));
}

// One thread per (row, draw): uniform or weighted draws with replacement.
template <typename I>
__global__ void sample_with_replacement_kernel(const offset_t* indptr, const I* indices, std::int64_t n_items,
                                               const std::int64_t* users, std::int64_t batch, std::int64_t K,
                                               std::uint64_t seed, std::int64_t row_offset, const double* cum,
                                               const double* keys, std::int64_t* out, std::int64_t* bad) {
  const std::int64_t total = batch * K;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t b = idx / K;
    const std::int64_t k = idx - b * K;
    const std::int64_t u = users[b];
    const offset_t start = indptr[u];
    const std::int64_t deg = indptr[u + 1] - start;
    const std::uint64_t key = rng_key(seed, static_cast<std::uint64_t>(row_offset + b));
    if (cum == nullptr) {
      if (n_items - deg < 1) {
        fail_at(bad, b);
        continue;
      }
      out[idx] = uniform_negative(key, static_cast<std::uint64_t>(k), indices + start, deg, n_items);
    } else {
      const double* rowk = row_keys(keys, start, u);
      const double mass = rowk[deg];
      if (!(mass > 0.0)) {
        fail_at(bad, b);
        continue;
      }
      const double t = rng_unit(rng_bits(key, static_cast<std::uint64_t>(k))) * mass;
      const std::int64_t x = weighted_unseen(cum, n_items, indices + start, rowk, deg, t);
      if (x < 0) fail_at(bad, b);
      out[idx] = x;
    }
  }
}

// One thread per row: K distinct uniform negatives by Floyd's algorithm over complement ranks.
template <typename I>
__global__ void sample_distinct_kernel(const offset_t* indptr, const I* indices, std::int64_t n_items,
                                       const std::int64_t* users, std::int64_t batch, std::int64_t K,
                                       std::uint64_t seed, std::int64_t row_offset, std::int64_t* out,
                                       std::int64_t* bad) {
  for (std::int64_t b = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; b < batch;
       b += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t u = users[b];
    const offset_t start = indptr[u];
    const std::int64_t deg = indptr[u + 1] - start;
    const std::int64_t m = n_items - deg;
    if (m < K) {
      fail_at(bad, b);
      continue;
    }
    std::int64_t* o = out + b * K;
    floyd_ranks(rng_key(seed, static_cast<std::uint64_t>(row_offset + b)), m, K, o);
    for (std::int64_t k = 0; k < K; ++k) o[k] = kth_unseen(indices + start, deg, o[k]);
  }
}

}  // namespace

template <typename I>
void sample_negatives(const offset_t* indptr, const I* indices, std::int64_t n_items, const std::int64_t* users,
                      std::int64_t batch, std::int64_t num_negatives, std::uint64_t seed, std::int64_t row_offset,
                      bool replace, const double* cum, const double* keys, std::int64_t* out, std::int64_t* bad,
                      CUstream_st* stream) {
  constexpr unsigned block = 256;
  if (batch == 0 || num_negatives == 0) return;
  if (replace) {
    sample_with_replacement_kernel<I><<<grid_for(batch * num_negatives, block), block, 0, stream>>>(
        indptr, indices, n_items, users, batch, num_negatives, seed, row_offset, cum, keys, out, bad);
    RF_CUDA_CHECK_LAUNCH(sample_with_replacement_kernel);
  } else {
    sample_distinct_kernel<I><<<grid_for(batch, block), block, 0, stream>>>(indptr, indices, n_items, users, batch,
                                                                             num_negatives, seed, row_offset, out, bad);
    RF_CUDA_CHECK_LAUNCH(sample_distinct_kernel);
  }
}

template void sample_negatives<std::int32_t>(const offset_t*, const std::int32_t*, std::int64_t, const std::int64_t*,
                                             std::int64_t, std::int64_t, std::uint64_t, std::int64_t, bool,
                                             const double*, const double*, std::int64_t*, std::int64_t*,
                                             CUstream_st*);
template void sample_negatives<std::int64_t>(const offset_t*, const std::int64_t*, std::int64_t, const std::int64_t*,
                                             std::int64_t, std::int64_t, std::uint64_t, std::int64_t, bool,
                                             const double*, const double*, std::int64_t*, std::int64_t*,
                                             CUstream_st*);

}  // namespace recfast::cuda
