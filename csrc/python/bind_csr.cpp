#include <optional>

#include "bindings.h"
#include "recfast/csr.h"

namespace rp = recfast::python;
namespace rc = recfast::cpu;
using rp::carray;

namespace {

template <typename I>
std::string check(const carray<std::int64_t>& indptr, const carray<I>& indices, std::int64_t n_cols) {
  rp::require(indptr.ndim() == 1 && indptr.size() >= 1, "CSR: indptr must be 1-D with at least one entry");
  rp::require(indices.ndim() == 1, "CSR: indices must be 1-D");
  const std::int64_t n_rows = indptr.size() - 1;
  py::gil_scoped_release release;
  return rc::csr_check<I>(indptr.data(), n_rows, indices.data(), indices.size(), n_cols);
}

template <typename I>
py::tuple transpose(const carray<std::int64_t>& indptr, const carray<I>& indices,
                    const std::optional<carray<float>>& values, std::int64_t n_cols) {
  rp::require(indptr.ndim() == 1 && indptr.size() >= 1, "transpose: indptr must be 1-D with at least one entry");
  const std::int64_t n_rows = indptr.size() - 1;
  const std::int64_t nnz = indices.size();
  if (values) rp::require_size(*values, nnz, "transpose", "values");
  carray<std::int64_t> out_indptr(n_cols + 1);
  carray<I> out_indices(nnz);
  std::optional<carray<float>> out_values;
  if (values) out_values.emplace(nnz);
  {
    py::gil_scoped_release release;
    rc::csr_transpose<I>(indptr.data(), indices.data(), values ? values->data() : nullptr, n_rows, n_cols,
                         out_indptr.mutable_data(), out_indices.mutable_data(),
                         out_values ? out_values->mutable_data() : nullptr);
  }
  return py::make_tuple(out_indptr, out_indices, out_values ? py::object(*out_values) : py::none());
}

template <typename I>
py::tuple from_coo(const carray<std::int64_t>& rows, const carray<std::int64_t>& cols,
                   const std::optional<carray<float>>& values, std::int64_t n_rows, int duplicates) {
  const std::int64_t nnz = rows.size();
  rp::require_size(cols, nnz, "from_coo", "cols");
  if (values) rp::require_size(*values, nnz, "from_coo", "values");
  carray<std::int64_t> indptr(n_rows + 1);
  carray<I> indices(nnz);
  std::optional<carray<float>> out_values;
  if (values) out_values.emplace(nnz);
  std::int64_t kept;
  {
    py::gil_scoped_release release;
    kept = rc::csr_from_coo<I>(rows.data(), cols.data(), values ? values->data() : nullptr, nnz, n_rows,
                               static_cast<rc::Duplicates>(duplicates), indptr.mutable_data(),
                               indices.mutable_data(), out_values ? out_values->mutable_data() : nullptr);
  }
  if (kept < 0) rp::fail("from_coo: duplicate (row, col) pairs found and duplicates='error'");
  return py::make_tuple(indptr, indices, out_values ? py::object(*out_values) : py::none(), kept);
}

template <typename I>
void bind_typed(py::module_& m) {
  m.def("csr_check", &check<I>, py::arg("indptr").noconvert(), py::arg("indices").noconvert(), py::arg("n_cols"),
        "Empty string when the CSR structure is valid, else a description of the first problem.");
  m.def("csr_transpose", &transpose<I>, py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("values").noconvert().none(true), py::arg("n_cols"));
}

}  // namespace

void bind_csr(py::module_& m) {
  bind_typed<std::int32_t>(m);
  bind_typed<std::int64_t>(m);
  m.def("csr_from_coo_i32", &from_coo<std::int32_t>, py::arg("rows").noconvert(), py::arg("cols").noconvert(),
        py::arg("values").noconvert().none(true), py::arg("n_rows"), py::arg("duplicates"));
  m.def("csr_from_coo_i64", &from_coo<std::int64_t>, py::arg("rows").noconvert(), py::arg("cols").noconvert(),
        py::arg("values").noconvert().none(true), py::arg("n_rows"), py::arg("duplicates"));
}
