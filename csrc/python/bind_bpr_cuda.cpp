#include "bindings.h"
#include "recfast/bpr.h"

namespace {

using ptr = std::uintptr_t;

template <typename T>
T* P(ptr p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace

void bind_bpr_cuda(py::module_& m) {
  m.def(
      "bpr_forward",
      [](ptr U, ptr V, ptr bias, std::int64_t d, ptr users, ptr pos, ptr neg, std::int64_t B, std::int64_t K, double l2,
         ptr loss, ptr coef, bool f64, ptr stream) {
        py::gil_scoped_release release;
        auto* s = reinterpret_cast<CUstream_st*>(stream);
        const auto *u = P<const std::int64_t>(users), *p = P<const std::int64_t>(pos), *n = P<const std::int64_t>(neg);
        if (f64) {
          recfast::cuda::bpr_forward<double>(P<const double>(U), P<const double>(V), P<const double>(bias), d, u, p, n,
                                             B, K, l2, P<double>(loss), P<double>(coef), s);
        } else {
          recfast::cuda::bpr_forward<float>(P<const float>(U), P<const float>(V), P<const float>(bias), d, u, p, n, B,
                                            K, l2, P<float>(loss), P<float>(coef), s);
        }
      },
      py::arg("user_emb"), py::arg("item_emb"), py::arg("item_bias"), py::arg("d"), py::arg("users"), py::arg("pos"),
      py::arg("neg"), py::arg("B"), py::arg("K"), py::arg("l2"), py::arg("loss"), py::arg("coef"), py::arg("f64"),
      py::arg("stream"));
  m.def(
      "bpr_backward",
      [](ptr U, ptr V, std::int64_t d, ptr users, ptr pos, ptr neg, std::int64_t B, std::int64_t K, ptr coef,
         ptr scale, double l2, ptr urow, ptr prow, ptr nrow, ptr gU, ptr gV, ptr gbias, bool f64, ptr stream) {
        py::gil_scoped_release release;
        auto* s = reinterpret_cast<CUstream_st*>(stream);
        const auto *u = P<const std::int64_t>(users), *p = P<const std::int64_t>(pos), *n = P<const std::int64_t>(neg);
        const auto *ur = P<const std::int64_t>(urow), *pr = P<const std::int64_t>(prow), *nr = P<const std::int64_t>(nrow);
        if (f64) {
          recfast::cuda::bpr_backward<double>(P<const double>(U), P<const double>(V), d, u, p, n, B, K,
                                              P<const double>(coef), P<const double>(scale), l2, ur, pr, nr,
                                              P<double>(gU), P<double>(gV), P<double>(gbias), s);
        } else {
          recfast::cuda::bpr_backward<float>(P<const float>(U), P<const float>(V), d, u, p, n, B, K,
                                             P<const float>(coef), P<const float>(scale), l2, ur, pr, nr, P<float>(gU),
                                             P<float>(gV), P<float>(gbias), s);
        }
      },
      py::arg("user_emb"), py::arg("item_emb"), py::arg("d"), py::arg("users"), py::arg("pos"), py::arg("neg"),
      py::arg("B"), py::arg("K"), py::arg("coef"), py::arg("scale"), py::arg("l2"), py::arg("urow"), py::arg("prow"),
      py::arg("nrow"), py::arg("grad_user"), py::arg("grad_item"), py::arg("grad_bias"), py::arg("f64"),
      py::arg("stream"));
}
