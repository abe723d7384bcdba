#include <optional>
#include <string>

#include "bindings.h"
#include "recfast/topk.h"

namespace rp = recfast::python;
using rp::carray;

namespace {

template <typename I>
void merge(const carray<float>& scores, std::int64_t tile_start, std::int64_t tile_len,
           const std::optional<carray<std::int64_t>>& rows, const carray<std::int64_t>& ex_indptr,
           const carray<I>& ex_indices, carray<float>& top_scores, carray<std::int64_t>& top_ids, int num_threads) {
  rp::require(scores.ndim() == 2, "topk: scores must be 2-D");
  rp::require(top_scores.ndim() == 2 && top_ids.ndim() == 2, "topk: top_scores/top_ids must be 2-D");
  const std::int64_t n_rows = scores.shape(0), ld = scores.shape(1), k = top_scores.shape(1);
  rp::require(top_scores.shape(0) >= n_rows && top_ids.shape(0) >= n_rows && top_ids.shape(1) == k,
              "topk: top_scores/top_ids must have a row per score row");
  rp::require(tile_len >= 0 && tile_len <= ld, "topk: tile_len exceeds the score rows");
  const bool has_ex = ex_indptr.size() > 0;
  if (rows) rp::require_size(*rows, n_rows, "topk", "rows");
  py::gil_scoped_release release;
  recfast::cpu::topk_merge<I>(scores.data(), n_rows, ld, tile_start, tile_len, rows ? rows->data() : nullptr,
                              has_ex ? ex_indptr.data() : nullptr, ex_indices.data(), k, top_scores.mutable_data(),
                              top_ids.mutable_data(), num_threads);
}

template <typename I>
void fused(const carray<float>& queries, const carray<float>& keys, const std::optional<carray<float>>& key_bias,
           const std::optional<carray<std::int64_t>>& rows, const carray<std::int64_t>& ex_indptr,
           const carray<I>& ex_indices, carray<float>& top_scores, carray<std::int64_t>& top_ids,
           const std::string& isa, int num_threads) {
  rp::require(queries.ndim() == 2 && keys.ndim() == 2, "topk: queries and keys must be 2-D");
  const std::int64_t n_rows = queries.shape(0), d = queries.shape(1), n_items = keys.shape(0);
  rp::require(keys.shape(1) == d, "topk: keys have dimension " + std::to_string(keys.shape(1)) + ", queries " +
                                      std::to_string(d));
  rp::require(top_scores.ndim() == 2 && top_ids.ndim() == 2, "topk: top_scores/top_ids must be 2-D");
  const std::int64_t k = top_scores.shape(1);
  rp::require(top_scores.shape(0) == n_rows && top_ids.shape(0) == n_rows && top_ids.shape(1) == k,
              "topk: top_scores/top_ids must be n_rows x k");
  if (key_bias) rp::require_size(*key_bias, n_items, "topk", "key_bias");
  if (rows) rp::require_size(*rows, n_rows, "topk", "rows");
  const bool has_ex = ex_indptr.size() > 0;
  int code = 0;
  if (isa == "portable") {
    code = 1;
  } else if (isa == "avx512") {
    rp::require(std::string(recfast::cpu::topk_fused_best_isa()) == "avx512",
                "topk: isa 'avx512' is not available on this CPU");
    code = 2;
  } else {
    rp::require(isa == "auto", "topk: isa must be 'auto', 'portable' or 'avx512', got '" + isa + "'");
  }
  py::gil_scoped_release release;
  recfast::cpu::topk_fused<I>(queries.data(), keys.data(), key_bias ? key_bias->data() : nullptr, n_rows, n_items, d,
                              rows ? rows->data() : nullptr, has_ex ? ex_indptr.data() : nullptr, ex_indices.data(),
                              k, top_scores.mutable_data(), top_ids.mutable_data(), code, num_threads);
}

template <typename I>
void hits(const carray<std::int64_t>& ids, const carray<std::int64_t>& users, const carray<std::int64_t>& indptr,
          const carray<I>& indices, carray<std::uint8_t>& out, int num_threads) {
  rp::require(ids.ndim() == 2 && out.ndim() == 2, "topk_hits: ids and out must be 2-D");
  const std::int64_t n = ids.shape(0), k = ids.shape(1);
  rp::require(out.shape(0) == n && out.shape(1) == k, "topk_hits: out must match ids");
  rp::require_size(users, n, "topk_hits", "users");
  py::gil_scoped_release release;
  recfast::cpu::topk_hits<I>(ids.data(), n, k, users.data(), indptr.data(), indices.data(), out.mutable_data(),
                             num_threads);
}

template <typename I>
void bind_typed(py::module_& m) {
  m.def("topk_merge", &merge<I>, py::arg("scores").noconvert(), py::arg("tile_start"), py::arg("tile_len"),
        py::arg("rows").noconvert().none(true), py::arg("ex_indptr").noconvert(), py::arg("ex_indices").noconvert(),
        py::arg("top_scores").noconvert(), py::arg("top_ids").noconvert(), py::arg("num_threads"),
        "Merge a score tile into the running per-row top-k heaps (empty ex_indptr: no exclusion).");
  m.def("topk_fused", &fused<I>, py::arg("queries").noconvert(), py::arg("keys").noconvert(),
        py::arg("key_bias").noconvert().none(true), py::arg("rows").noconvert().none(true),
        py::arg("ex_indptr").noconvert(), py::arg("ex_indices").noconvert(), py::arg("top_scores").noconvert(),
        py::arg("top_ids").noconvert(), py::arg("isa"), py::arg("num_threads"),
        "Score and select in one pass (no score buffer); rows end sorted best first.");
  m.def("topk_hits", &hits<I>, py::arg("ids").noconvert(), py::arg("users").noconvert(),
        py::arg("indptr").noconvert(), py::arg("indices").noconvert(), py::arg("out").noconvert(),
        py::arg("num_threads"));
}

}  // namespace

void bind_topk(py::module_& m) {
  bind_typed<std::int32_t>(m);
  bind_typed<std::int64_t>(m);
  m.def("topk_fused_best_isa", &recfast::cpu::topk_fused_best_isa,
        "The kernel topk_fused runs with isa='auto' on this CPU: 'avx512' or 'portable'.");
  m.def(
      "topk_finalize",
      [](carray<float>& s, carray<std::int64_t>& i, int num_threads) {
        rp::require(s.ndim() == 2 && i.ndim() == 2 && s.shape(0) == i.shape(0) && s.shape(1) == i.shape(1),
                    "topk_finalize: shapes differ");
        py::gil_scoped_release release;
        recfast::cpu::topk_finalize(s.mutable_data(), i.mutable_data(), s.shape(0), s.shape(1), num_threads);
      },
      py::arg("top_scores").noconvert(), py::arg("top_ids").noconvert(), py::arg("num_threads"));
}
