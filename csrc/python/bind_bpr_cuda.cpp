#include "bindings.h"
#include "recfast/bpr.h"
#include "storage_cuda.h"

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
         ptr loss, ptr coef, const std::string& dtype, ptr stream) {
        auto* s = reinterpret_cast<CUstream_st*>(stream);
        const auto *u = P<const std::int64_t>(users), *p = P<const std::int64_t>(pos), *n = P<const std::int64_t>(neg);
        recfast::python::with_storage(dtype, "bpr_forward", [&](auto* tag) {
          using S = std::remove_pointer_t<decltype(tag)>;
          using A = recfast::acc_t<S>;
          py::gil_scoped_release release;
          recfast::cuda::bpr_forward<S>(P<const S>(U), P<const S>(V), P<const S>(bias), d, u, p, n, B, K, l2,
                                        P<S>(loss), P<A>(coef), s);
        });
      },
      py::arg("user_emb"), py::arg("item_emb"), py::arg("item_bias"), py::arg("d"), py::arg("users"), py::arg("pos"),
      py::arg("neg"), py::arg("B"), py::arg("K"), py::arg("l2"), py::arg("loss"), py::arg("coef"), py::arg("dtype"),
      py::arg("stream"),
      "Tables of `dtype` (float32, float64, float16, bfloat16); loss in `dtype`, coef in float64 for float64 "
      "tables and float32 otherwise. Launches on `stream`; no synchronization.");
  m.def(
      "bpr_backward",
      [](ptr U, ptr V, std::int64_t d, ptr users, ptr pos, ptr neg, std::int64_t B, std::int64_t K, ptr coef,
         ptr scale, double l2, ptr urow, ptr prow, ptr nrow, ptr gU, ptr gV, ptr gbias, const std::string& dtype,
         ptr stream) {
        auto* s = reinterpret_cast<CUstream_st*>(stream);
        const auto *u = P<const std::int64_t>(users), *p = P<const std::int64_t>(pos), *n = P<const std::int64_t>(neg);
        const auto *ur = P<const std::int64_t>(urow), *pr = P<const std::int64_t>(prow), *nr = P<const std::int64_t>(nrow);
        recfast::python::with_storage(dtype, "bpr_backward", [&](auto* tag) {
          using S = std::remove_pointer_t<decltype(tag)>;
          using A = recfast::acc_t<S>;
          py::gil_scoped_release release;
          recfast::cuda::bpr_backward<S>(P<const S>(U), P<const S>(V), d, u, p, n, B, K, P<const A>(coef),
                                         P<const A>(scale), l2, ur, pr, nr, P<A>(gU), P<A>(gV), P<A>(gbias), s);
        });
      },
      py::arg("user_emb"), py::arg("item_emb"), py::arg("d"), py::arg("users"), py::arg("pos"), py::arg("neg"),
      py::arg("B"), py::arg("K"), py::arg("coef"), py::arg("scale"), py::arg("l2"), py::arg("urow"), py::arg("prow"),
      py::arg("nrow"), py::arg("grad_user"), py::arg("grad_item"), py::arg("grad_bias"), py::arg("dtype"),
      py::arg("stream"),
      "Tables of `dtype`; coef, scale and the gradient buffers (accumulated atomically) in float64 for float64 "
      "tables and float32 otherwise.");
}
