#include "check.cuh"
#include "recfast/optim.h"

namespace recfast::cuda {

namespace {

template <typename T>
__global__ void sparse_opt_kernel(SparseOpt kind, SparseOptParams h, T* param, T* state1, T* state2, std::int64_t d,
                                  const std::int64_t* rows, const T* grad, std::int64_t m) {
  const std::int64_t total = m * d;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i = e / d, t = e - i * d;
    const std::int64_t off = rows[i] * d + t;
    sparse_opt_element<T>(kind, h, param + off, grad[e], state1 ? state1 + off : nullptr,
                          state2 ? state2 + off : nullptr);
  }
}

}  // namespace

template <typename T>
void sparse_opt_step(SparseOpt kind, const SparseOptParams& h, T* param, T* state1, T* state2, std::int64_t d,
                     const std::int64_t* rows, const T* grad, std::int64_t m, CUstream_st* stream) {
  if (m == 0 || d == 0) return;
  sparse_opt_kernel<T><<<grid_for(m * d, 256), 256, 0, stream>>>(kind, h, param, state1, state2, d, rows, grad, m);
  RF_CUDA_CHECK_LAUNCH(sparse_opt_kernel);
}

template void sparse_opt_step<float>(SparseOpt, const SparseOptParams&, float*, float*, float*, std::int64_t,
                                     const std::int64_t*, const float*, std::int64_t, CUstream_st*);
template void sparse_opt_step<double>(SparseOpt, const SparseOptParams&, double*, double*, double*, std::int64_t,
                                      const std::int64_t*, const double*, std::int64_t, CUstream_st*);

}  // namespace recfast::cuda
