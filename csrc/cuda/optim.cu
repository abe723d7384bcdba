#include "check.cuh"
#include "convert.cuh"
#include "recfast/optim.h"

namespace recfast::cuda {

namespace {

template <typename P>
__global__ void sparse_opt_kernel(SparseOpt kind, SparseOptParams h, P* param, acc_t<P>* state1, acc_t<P>* state2,
                                  std::int64_t d, const std::int64_t* rows, const acc_t<P>* grad, std::int64_t m) {
  using A = acc_t<P>;
  const std::int64_t total = m * d;
  for (std::int64_t e = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t i = e / d, t = e - i * d;
    const std::int64_t off = rows[i] * d + t;
    A p = ld(param[off]);
    sparse_opt_element<A>(kind, h, &p, grad[e], state1 ? state1 + off : nullptr, state2 ? state2 + off : nullptr);
    param[off] = to_storage<P>(p);
  }
}

}  // namespace

template <typename P>
void sparse_opt_step(SparseOpt kind, const SparseOptParams& h, P* param, acc_t<P>* state1, acc_t<P>* state2,
                     std::int64_t d, const std::int64_t* rows, const acc_t<P>* grad, std::int64_t m,
                     CUstream_st* stream) {
  if (m == 0 || d == 0) return;
  sparse_opt_kernel<P><<<grid_for(m * d, 256), 256, 0, stream>>>(kind, h, param, state1, state2, d, rows, grad, m);
  RF_CUDA_CHECK_LAUNCH(sparse_opt_kernel);
}

#define RF_INSTANTIATE(P)                                                                                       \
  template void sparse_opt_step<P>(SparseOpt, const SparseOptParams&, P*, acc_t<P>*, acc_t<P>*, std::int64_t, \
                                   const std::int64_t*, const acc_t<P>*, std::int64_t, CUstream_st*);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
RF_INSTANTIATE(__half)
RF_INSTANTIATE(__nv_bfloat16)
#undef RF_INSTANTIATE

}  // namespace recfast::cuda
