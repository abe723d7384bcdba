#include <cstdint>
#include <optional>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "bindings.h"
#include "recfast/spmm.h"

namespace rp = recfast::python;
using rp::carray;

namespace {

// Outputs and layer buffers are fresh torch.empty allocations: asking for transparent huge pages
// before the kernel's first write turns 512 page faults per MiB into 1 per 2 MiB (a fresh 512 MiB
// output faulted on 4 KiB pages cost 0.3-0.5 s in a VM, more than the large graph's whole layer),
// and the next layer's random row gathers from these buffers miss the TLB less. Only buffers of at
// least 32 MiB are advised: glibc serves those with a fresh mmap, so their pages are untouched
// here; smaller ones come from its reused heap, where the hint would only split the mapping. Only
// the 2 MiB-aligned interior is advised, so neighbouring allocations never change. A hint:
// failure (THP off, an old kernel) is ignored.
template <typename T>
void advise_huge_pages(carray<T>& a) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t{2} << 20;
  const std::uintptr_t bytes = static_cast<std::uintptr_t>(a.size()) * sizeof(T);
  if (bytes < 16 * kHuge) return;
  const std::uintptr_t begin = reinterpret_cast<std::uintptr_t>(a.mutable_data());
  const std::uintptr_t lo = (begin + kHuge - 1) & ~(kHuge - 1), hi = (begin + bytes) & ~(kHuge - 1);
  if (lo < hi) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)a;
#endif
}

template <typename I, typename T>
void spmm(const carray<std::int64_t>& indptr, const carray<I>& indices, const std::optional<carray<T>>& values,
          const carray<T>& dense, carray<T>& out, int num_threads) {
  rp::require(dense.ndim() == 2 && out.ndim() == 2, "spmm: dense and out must be 2-D");
  const std::int64_t n_rows = indptr.size() - 1, d = dense.shape(1);
  rp::require(out.shape(0) == n_rows && out.shape(1) == d, "spmm: out must be (n_rows, d)");
  if (values) rp::require_size(*values, indices.size(), "spmm", "values");
  py::gil_scoped_release release;
  advise_huge_pages(out);
  recfast::cpu::spmm<I, T>(indptr.data(), indices.data(), values ? values->data() : nullptr, n_rows, dense.data(), d,
                           out.mutable_data(), num_threads);
}

template <typename I, typename T>
void lightgcn(const carray<std::int64_t>& indptr, const carray<I>& indices, const std::optional<carray<T>>& values,
              const carray<T>& emb, std::vector<double> weights, carray<T>& out, carray<T>& buf_a, carray<T>& buf_b,
              int num_threads) {
  rp::require(emb.ndim() == 2, "lightgcn_propagate: emb must be 2-D");
  const std::int64_t n = indptr.size() - 1, d = emb.shape(1);
  rp::require(emb.shape(0) == n, "lightgcn_propagate: emb must have a row per node");
  for (auto* a : {&out, &buf_a, &buf_b}) rp::require(a->size() == n * d, "lightgcn_propagate: buffers must be (n, d)");
  rp::require(!weights.empty(), "lightgcn_propagate: need at least one layer weight");
  if (values) rp::require_size(*values, indices.size(), "lightgcn_propagate", "values");
  const std::int64_t layers = static_cast<std::int64_t>(weights.size()) - 1;
  py::gil_scoped_release release;
  for (auto* a : {&out, &buf_a, &buf_b}) advise_huge_pages(*a);
  recfast::cpu::lightgcn_propagate<I, T>(indptr.data(), indices.data(), values ? values->data() : nullptr, n,
                                         emb.data(), d, layers, weights.data(), out.mutable_data(),
                                         buf_a.mutable_data(), buf_b.mutable_data(), num_threads);
}

template <typename I>
py::tuple adjacency(const carray<std::int64_t>& indptr, const carray<I>& indices, const carray<std::int64_t>& t_indptr,
                    const carray<I>& t_indices, std::int64_t n_items, int normalization, bool self_loops) {
  const std::int64_t n_users = indptr.size() - 1;
  rp::require_size(t_indptr, n_items + 1, "normalized_adjacency", "t_indptr");
  const std::int64_t n = n_users + n_items;
  const std::int64_t nnz = 2 * indices.size() + (self_loops ? n : 0);
  carray<std::int64_t> out_indptr(n + 1);
  carray<I> out_indices(nnz);
  carray<float> out_values(nnz);
  {
    py::gil_scoped_release release;
    recfast::cpu::normalized_adjacency<I>(indptr.data(), indices.data(), t_indptr.data(), t_indices.data(), n_users,
                                          n_items, normalization, self_loops, out_indptr.mutable_data(),
                                          out_indices.mutable_data(), out_values.mutable_data());
  }
  return py::make_tuple(out_indptr, out_indices, out_values);
}

template <typename I, typename T>
void bind_float(py::module_& m) {
  m.def("spmm", &spmm<I, T>, py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("values").noconvert().none(true), py::arg("dense").noconvert(), py::arg("out").noconvert(),
        py::arg("num_threads"));
  m.def("lightgcn_propagate", &lightgcn<I, T>, py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("values").noconvert().none(true), py::arg("emb").noconvert(), py::arg("weights"),
        py::arg("out").noconvert(), py::arg("buf_a").noconvert(), py::arg("buf_b").noconvert(),
        py::arg("num_threads"));
}

}  // namespace

void bind_spmm(py::module_& m) {
  bind_float<std::int32_t, float>(m);
  bind_float<std::int64_t, float>(m);
  bind_float<std::int32_t, double>(m);
  bind_float<std::int64_t, double>(m);
  m.def("normalized_adjacency", &adjacency<std::int32_t>, py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("t_indptr").noconvert(), py::arg("t_indices").noconvert(),
        py::arg("n_items"), py::arg("normalization"), py::arg("self_loops"));
  m.def("normalized_adjacency", &adjacency<std::int64_t>, py::arg("indptr").noconvert(),
        py::arg("indices").noconvert(), py::arg("t_indptr").noconvert(), py::arg("t_indices").noconvert(),
        py::arg("n_items"), py::arg("normalization"), py::arg("self_loops"));
}
