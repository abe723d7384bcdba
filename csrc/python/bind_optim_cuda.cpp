#include "bindings.h"
#include "recfast/optim.h"

void bind_optim_cuda(py::module_& m) {
  m.def(
      "sparse_opt_step",
      [](int kind, double lr, double weight_decay, double beta1, double beta2, double eps, double bc1, double bc2,
         std::uintptr_t param, std::uintptr_t state1, std::uintptr_t state2, std::int64_t d, std::uintptr_t rows,
         std::uintptr_t grad, std::int64_t m_rows, bool f64, std::uintptr_t stream) {
        const recfast::SparseOptParams h{lr, weight_decay, beta1, beta2, eps, bc1, bc2};
        const auto k = static_cast<recfast::SparseOpt>(kind);
        auto* s = reinterpret_cast<CUstream_st*>(stream);
        const auto* r = reinterpret_cast<const std::int64_t*>(rows);
        py::gil_scoped_release release;
        if (f64) {
          recfast::cuda::sparse_opt_step<double>(k, h, reinterpret_cast<double*>(param),
                                                 reinterpret_cast<double*>(state1), reinterpret_cast<double*>(state2),
                                                 d, r, reinterpret_cast<const double*>(grad), m_rows, s);
        } else {
          recfast::cuda::sparse_opt_step<float>(k, h, reinterpret_cast<float*>(param), reinterpret_cast<float*>(state1),
                                                reinterpret_cast<float*>(state2), d, r,
                                                reinterpret_cast<const float*>(grad), m_rows, s);
        }
      },
      py::arg("kind"), py::arg("lr"), py::arg("weight_decay"), py::arg("beta1"), py::arg("beta2"), py::arg("eps"),
      py::arg("bias_correction1"), py::arg("bias_correction2"), py::arg("param"), py::arg("state1"),
      py::arg("state2"), py::arg("d"), py::arg("rows"), py::arg("grad"), py::arg("m"), py::arg("f64"),
      py::arg("stream"));
}
