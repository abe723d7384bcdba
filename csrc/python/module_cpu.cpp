#include "bindings.h"
#include "recfast/parallel.h"

#ifndef RECFAST_WITH_CUDA
#define RECFAST_WITH_CUDA 0
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "recfast CPU kernels";
  m.attr("__version__") = RECFAST_VERSION;
  m.def("build_info", [] {
    py::dict d;
    d["version"] = RECFAST_VERSION;
    d["compiler"] = RECFAST_COMPILER;
#ifdef _OPENMP
    d["openmp"] = true;
    d["openmp_version"] = _OPENMP;
#else
    d["openmp"] = false;
    d["openmp_version"] = 0;
#endif
#ifdef RECFAST_NATIVE
    d["native"] = true;
#else
    d["native"] = false;
#endif
#ifdef RECFAST_SANITIZE
    d["sanitize"] = true;
#else
    d["sanitize"] = false;
#endif
    d["cuda_compiled"] = static_cast<bool>(RECFAST_WITH_CUDA);
    d["cuda_architectures"] = std::string(RECFAST_CUDA_ARCHS);
    return d;
  });
  m.def("max_threads", &recfast::cpu::max_threads, "OpenMP's current maximum thread count (1 without OpenMP).");
  bind_csr(m);
  bind_sampling(m);
  bind_bpr(m);
  bind_optim(m);
  bind_spmm(m);
  bind_topk(m);
}
