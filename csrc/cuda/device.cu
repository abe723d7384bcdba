// Compiled so that _C_cuda always holds device code for the architectures it reports, even before
// an op adds its own kernels; recfast.build_info() lists those architectures.
#include "check.cuh"

namespace recfast::cuda {
__global__ void noop_kernel() {}
}  // namespace recfast::cuda
