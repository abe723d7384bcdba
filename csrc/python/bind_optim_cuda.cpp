#include "bindings.h"
#include "recfast/optim.h"
#include "storage_cuda.h"

void bind_optim_cuda(py::module_& m) {
  m.def(
      "sparse_opt_step",
      [](int kind, double lr, double weight_decay, double beta1, double beta2, double eps, double bc1, double bc2,
         std::uintptr_t param, std::uintptr_t state1, std::uintptr_t state2, std::int64_t d, std::uintptr_t rows,
         std::uintptr_t grad, std::int64_t m_rows, const std::string& dtype, std::uintptr_t stream) {
        const recfast::SparseOptParams h{lr, weight_decay, beta1, beta2, eps, bc1, bc2};
        const auto k = static_cast<recfast::SparseOpt>(kind);
        auto* s = reinterpret_cast<CUstream_st*>(stream);
        const auto* r = reinterpret_cast<const std::int64_t*>(rows);
        recfast::python::with_storage(dtype, "sparse_opt_step", [&](auto* tag) {
          using P = std::remove_pointer_t<decltype(tag)>;
          using A = recfast::acc_t<P>;
          py::gil_scoped_release release;
          recfast::cuda::sparse_opt_step<P>(k, h, reinterpret_cast<P*>(param), reinterpret_cast<A*>(state1),
                                            reinterpret_cast<A*>(state2), d, r, reinterpret_cast<const A*>(grad),
                                            m_rows, s);
        });
      },
      py::arg("kind"), py::arg("lr"), py::arg("weight_decay"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
      py::arg("bias_correction1"), py::arg("bias_correction2"), py::arg("param"), py::arg("state1"),
      py::arg("state2"), py::arg("d"), py::arg("rows"), py::arg("grad"), py::arg("m"), py::arg("dtype"),
      py::arg("stream"),
      "Parameters of `dtype` (float32, float64, float16, bfloat16); states and grad in float64 for float64 "
      "parameters and float32 otherwise. Launches on `stream`; no synchronization.");
}
