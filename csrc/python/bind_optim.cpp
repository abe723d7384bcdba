#include <algorithm>
#include <optional>

#include "bindings.h"
#include "recfast/optim.h"

namespace rp = recfast::python;
using rp::carray;

namespace {

template <typename T>
void step(int kind, double lr, double weight_decay, double beta1, double beta2, double eps, double bc1, double bc2,
          carray<T>& param, std::optional<carray<T>>& state1, std::optional<carray<T>>& state2,
          const carray<std::int64_t>& rows, const carray<T>& grad, int num_threads) {
  const std::int64_t m = rows.size();
  const std::int64_t d = m ? grad.size() / m : 0;
  rp::require(grad.size() == m * d, "sparse optimizer: grad must hold one row per index");
  rp::require(m == 0 || param.size() % d == 0, "sparse optimizer: param rows do not match the gradient width");
  for (auto* s : {&state1, &state2})
    if (*s) rp::require((*s)->size() == param.size(), "sparse optimizer: state must match the parameter");
  const recfast::SparseOptParams h{lr, weight_decay, beta1, beta2, eps, bc1, bc2};
  py::gil_scoped_release release;
  recfast::cpu::sparse_opt_step<T>(static_cast<recfast::SparseOpt>(kind), h, param.mutable_data(),
                                   state1 ? state1->mutable_data() : nullptr, state2 ? state2->mutable_data() : nullptr,
                                   d, rows.data(), grad.data(), m, num_threads);
}

template <typename T>
void bind_typed(py::module_& m) {
  m.def("sparse_opt_step", &step<T>, py::arg("kind"), py::arg("lr"), py::arg("weight_decay"), py::arg("beta1"),
        py::arg("beta2"), py::arg("eps"), py::arg("bias_correction1"), py::arg("bias_correction2"),
        py::arg("param").noconvert(), py::arg("state1").noconvert().none(true),
        py::arg("state2").noconvert().none(true), py::arg("rows").noconvert(), py::arg("grad").noconvert(),
        py::arg("num_threads"));
}

}  // namespace

void bind_optim(py::module_& m) {
  bind_typed<float>(m);
  bind_typed<double>(m);
  m.def(
      "unique_rows",
      [](const carray<std::int64_t>& ids, std::int64_t upper, carray<std::int64_t>& rows,
         carray<std::int64_t>& inverse) {
        const std::int64_t n = ids.size();
        rp::require(upper >= 0, "unique_rows: upper must be non-negative");
        rp::require(inverse.size() == n, "unique_rows: inverse must have one entry per id");
        rp::require(rows.size() >= std::min(n, upper), "unique_rows: rows must have room for min(len(ids), upper)");
        py::gil_scoped_release release;
        return recfast::cpu::unique_rows(ids.data(), n, upper, rows.mutable_data(), inverse.mutable_data());
      },
      py::arg("ids").noconvert(), py::arg("upper"), py::arg("rows").noconvert(), py::arg("inverse").noconvert());
}
