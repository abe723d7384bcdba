#include "bindings.h"
#include "recfast/spmm.h"

namespace {

using ptr = std::uintptr_t;

template <typename T>
void spmm_typed(ptr indptr, ptr indices, bool i64, ptr values, std::int64_t n_rows, ptr dense, std::int64_t d, ptr out,
                ptr stream) {
  const auto* ip = reinterpret_cast<const std::int64_t*>(indptr);
  const auto* v = reinterpret_cast<const T*>(values);
  const auto* x = reinterpret_cast<const T*>(dense);
  auto* o = reinterpret_cast<T*>(out);
  auto* s = reinterpret_cast<CUstream_st*>(stream);
  if (i64) {
    recfast::cuda::spmm(ip, reinterpret_cast<const std::int64_t*>(indices), v, n_rows, x, d, o, s);
  } else {
    recfast::cuda::spmm(ip, reinterpret_cast<const std::int32_t*>(indices), v, n_rows, x, d, o, s);
  }
}

}  // namespace

void bind_spmm_cuda(py::module_& m) {
  m.def(
      "spmm",
      [](ptr indptr, ptr indices, bool i64, ptr values, std::int64_t n_rows, ptr dense, std::int64_t d, ptr out,
         bool f64, ptr stream) {
        py::gil_scoped_release release;
        if (f64) {
          spmm_typed<double>(indptr, indices, i64, values, n_rows, dense, d, out, stream);
        } else {
          spmm_typed<float>(indptr, indices, i64, values, n_rows, dense, d, out, stream);
        }
      },
      py::arg("indptr"), py::arg("indices"), py::arg("indices_i64"), py::arg("values"), py::arg("n_rows"),
      py::arg("dense"), py::arg("d"), py::arg("out"), py::arg("f64"), py::arg("stream"));
  m.def(
      "axpy",
      [](ptr out, ptr src, double w, std::int64_t n, bool f64, ptr stream) {
        py::gil_scoped_release release;
        auto* s = reinterpret_cast<CUstream_st*>(stream);
        if (f64) {
          recfast::cuda::axpy(reinterpret_cast<double*>(out), reinterpret_cast<const double*>(src), w, n, s);
        } else {
          recfast::cuda::axpy(reinterpret_cast<float*>(out), reinterpret_cast<const float*>(src), w, n, s);
        }
      },
      py::arg("out"), py::arg("src"), py::arg("w"), py::arg("n"), py::arg("f64"), py::arg("stream"));
}
