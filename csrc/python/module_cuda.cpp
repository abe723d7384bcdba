#include "bindings.h"
#include "check.cuh"

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "recfast CUDA kernels";
  m.attr("__version__") = RECFAST_VERSION;
  m.attr("architectures") = RECFAST_CUDA_ARCHS;
  m.def("device_count", [] {
    int n = 0;
    // No driver or no device is "zero devices", not an error: the CPU ops still work.
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n;
  });
  bind_sampling_cuda(m);
  bind_bpr_cuda(m);
  bind_optim_cuda(m);
  bind_spmm_cuda(m);
  bind_topk_cuda(m);
}
