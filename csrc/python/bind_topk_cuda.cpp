#include "bindings.h"
#include "recfast/topk.h"

namespace {

using ptr = std::uintptr_t;

void mask(ptr scores, std::int64_t n_rows, std::int64_t n_cols, std::int64_t tile_start, ptr rows, ptr indptr,
          ptr indices, bool indices_i64, ptr stream) {
  auto* s = reinterpret_cast<float*>(scores);
  const auto* r = reinterpret_cast<const std::int64_t*>(rows);
  const auto* ip = reinterpret_cast<const std::int64_t*>(indptr);
  auto* st = reinterpret_cast<CUstream_st*>(stream);
  py::gil_scoped_release release;
  if (indices_i64) {
    recfast::cuda::topk_mask(s, n_rows, n_cols, tile_start, r, ip, reinterpret_cast<const std::int64_t*>(indices), st);
  } else {
    recfast::cuda::topk_mask(s, n_rows, n_cols, tile_start, r, ip, reinterpret_cast<const std::int32_t*>(indices), st);
  }
}

}  // namespace

void bind_topk_cuda(py::module_& m) {
  m.def("topk_mask", &mask, py::arg("scores"), py::arg("n_rows"), py::arg("n_cols"), py::arg("tile_start"),
        py::arg("rows"), py::arg("indptr"), py::arg("indices"), py::arg("indices_i64"), py::arg("stream"),
        "Blank excluded items of a device score tile to -inf, on `stream`.");
}
