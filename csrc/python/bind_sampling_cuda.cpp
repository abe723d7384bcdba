#include "bindings.h"
#include "recfast/sampling.h"

namespace {

using ptr = std::uintptr_t;

void sample(ptr indptr, ptr indices, bool indices_i64, std::int64_t n_items, ptr users, std::int64_t batch,
            std::int64_t num_negatives, std::uint64_t seed, std::int64_t row_offset, bool replace, ptr cum, ptr keys,
            ptr out, ptr bad, ptr stream) {
  auto* s = reinterpret_cast<CUstream_st*>(stream);
  const auto* ip = reinterpret_cast<const std::int64_t*>(indptr);
  const auto* us = reinterpret_cast<const std::int64_t*>(users);
  const auto* c = reinterpret_cast<const double*>(cum);
  const auto* k = reinterpret_cast<const double*>(keys);
  auto* o = reinterpret_cast<std::int64_t*>(out);
  auto* b = reinterpret_cast<std::int64_t*>(bad);
  py::gil_scoped_release release;
  if (indices_i64) {
    recfast::cuda::sample_negatives(ip, reinterpret_cast<const std::int64_t*>(indices), n_items, us, batch,
                                    num_negatives, seed, row_offset, replace, c, k, o, b, s);
  } else {
    recfast::cuda::sample_negatives(ip, reinterpret_cast<const std::int32_t*>(indices), n_items, us, batch,
                                    num_negatives, seed, row_offset, replace, c, k, o, b, s);
  }
}

}  // namespace

void bind_sampling_cuda(py::module_& m) {
  m.def("sample_negatives", &sample, py::arg("indptr"), py::arg("indices"), py::arg("indices_i64"),
        py::arg("n_items"), py::arg("users"), py::arg("batch"), py::arg("num_negatives"), py::arg("seed"),
        py::arg("row_offset"), py::arg("replace"), py::arg("cum"), py::arg("keys"), py::arg("out"), py::arg("bad"),
        py::arg("stream"), "Device pointers; launches on `stream`; no synchronization.");
}
