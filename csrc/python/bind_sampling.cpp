#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "recfast/sampling.h"

namespace rp = recfast::python;
using rp::carray;

namespace {

void check_guide(const std::optional<carray<std::int64_t>>& guide, bool weighted, std::int64_t n_items,
                 const char* op) {
  if (!guide) return;
  rp::require(weighted, std::string(op) + ": guide needs cum and keys");
  rp::require(n_items > 1, std::string(op) + ": guide needs n_items > 1");
  rp::require_size(*guide, recfast::cdf_guide_buckets(n_items) + 1, op, "guide");
}

// The weighted tables come together: cum (n_items + 1) and the rows' keys (nnz + n_users: deg + 1
// per row); see recfast/sampling.h.
const double* check_tables(const std::optional<carray<double>>& cum, const std::optional<carray<double>>& keys,
                           std::int64_t n_items, std::int64_t nnz, std::int64_t n_users, const char* op) {
  rp::require(cum.has_value() == keys.has_value(), std::string(op) + ": cum and keys must be given together");
  if (!cum) return nullptr;
  rp::require_size(*cum, n_items + 1, op, "cum");
  rp::require_size(*keys, nnz + n_users, op, "keys");
  return keys->data();
}

template <typename I>
std::int64_t sample(const carray<std::int64_t>& indptr, const carray<I>& indices, std::int64_t n_items,
                    const carray<std::int64_t>& users, std::int64_t num_negatives, std::uint64_t seed,
                    std::int64_t row_offset, bool replace, const std::optional<carray<double>>& cum,
                    const std::optional<carray<double>>& keys, carray<std::int64_t>& out, int num_threads,
                    const std::optional<carray<std::int64_t>>& guide) {
  const std::int64_t n_users = indptr.size() - 1;
  const std::int64_t batch = users.size();
  check_guide(guide, cum.has_value(), n_items, "sample_negatives");
  const double* kp = check_tables(cum, keys, n_items, indices.size(), n_users, "sample_negatives");
  rp::require_size(out, batch * num_negatives, "sample_negatives", "out");
  py::gil_scoped_release release;
  return recfast::cpu::sample_negatives<I>(indptr.data(), indices.data(), n_users, n_items, users.data(), batch,
                                           num_negatives, seed, row_offset, replace, cum ? cum->data() : nullptr, kp,
                                           out.mutable_data(), num_threads, guide ? guide->data() : nullptr);
}

template <typename I>
std::int64_t triples(const carray<std::int64_t>& indptr, const carray<I>& indices, std::int64_t n_items,
                     const carray<std::int64_t>& row_of, const carray<std::int64_t>& order, std::int64_t num_negatives,
                     std::uint64_t seed, std::int64_t row_offset, bool replace,
                     const std::optional<carray<double>>& cum, const std::optional<carray<double>>& keys,
                     carray<std::int64_t>& users_out, carray<std::int64_t>& items_out, carray<std::int64_t>& out,
                     int num_threads, const std::optional<carray<std::int64_t>>& guide) {
  const std::int64_t n_users = indptr.size() - 1;
  const std::int64_t batch = order.size();
  check_guide(guide, cum.has_value(), n_items, "sample_triples");
  const double* kp = check_tables(cum, keys, n_items, indices.size(), n_users, "sample_triples");
  rp::require_size(row_of, indices.size(), "sample_triples", "row_of");
  rp::require_size(users_out, batch, "sample_triples", "users_out");
  rp::require_size(items_out, batch, "sample_triples", "items_out");
  rp::require_size(out, batch * num_negatives, "sample_triples", "out");
  py::gil_scoped_release release;
  return recfast::cpu::sample_triples<I>(indptr.data(), indices.data(), n_users, n_items, row_of.data(), order.data(),
                                         batch, num_negatives, seed, row_offset, replace,
                                         cum ? cum->data() : nullptr, kp, users_out.mutable_data(),
                                         items_out.mutable_data(), out.mutable_data(), num_threads,
                                         guide ? guide->data() : nullptr);
}

template <typename I>
std::int64_t epoch_triples(const carray<std::int64_t>& indptr, const carray<I>& indices, std::int64_t n_items,
                           const carray<std::int64_t>& row_of, bool shuffle, std::uint64_t order_seed,
                           std::int64_t start, std::int64_t num_negatives, std::uint64_t seed, bool replace,
                           const std::optional<carray<double>>& cum, const std::optional<carray<double>>& keys,
                           const std::optional<carray<std::int64_t>>& guide, carray<std::int64_t>& users_out,
                           carray<std::int64_t>& items_out, carray<std::int64_t>& out, int num_threads) {
  const std::int64_t n_users = indptr.size() - 1;
  const std::int64_t nnz = indices.size();
  const std::int64_t batch = users_out.size();
  const double* kp = check_tables(cum, keys, n_items, nnz, n_users, "sample_epoch_triples");
  check_guide(guide, cum.has_value(), n_items, "sample_epoch_triples");
  rp::require_size(row_of, nnz, "sample_epoch_triples", "row_of");
  rp::require(start >= 0 && start <= nnz - batch, "sample_epoch_triples: need 0 <= start and start + len(users_out) "
                                                  "<= nnz, got start=" + std::to_string(start) + ", batch=" +
                                                  std::to_string(batch) + ", nnz=" + std::to_string(nnz));
  rp::require_size(items_out, batch, "sample_epoch_triples", "items_out");
  rp::require_size(out, batch * num_negatives, "sample_epoch_triples", "out");
  py::gil_scoped_release release;
  return recfast::cpu::sample_epoch_triples<I>(indptr.data(), indices.data(), n_users, n_items, row_of.data(), nnz,
                                               shuffle, order_seed, start, batch, num_negatives, seed, replace,
                                               cum ? cum->data() : nullptr, kp, guide ? guide->data() : nullptr,
                                               users_out.mutable_data(),
                                               items_out.mutable_data(), out.mutable_data(), num_threads);
}

template <typename I>
void bind_typed(py::module_& m) {
  m.def("sample_triples", &triples<I>, py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("n_items"), py::arg("row_of").noconvert(), py::arg("order").noconvert(), py::arg("num_negatives"),
        py::arg("seed"), py::arg("row_offset"), py::arg("replace"), py::arg("cum").noconvert().none(true),
        py::arg("keys").noconvert().none(true), py::arg("users_out").noconvert(), py::arg("items_out").noconvert(),
        py::arg("out").noconvert(), py::arg("num_threads"), py::arg("guide").noconvert().none(true) = py::none(),
        "A loader batch in one call: users_out[b] = row_of[order[b]], items_out[b] = indices[order[b]] and their "
        "negatives in out, as sample_negatives draws them; returns -1 or the first bad batch position. Callers "
        "validate order and row_of first.");
  m.def("sample_epoch_triples", &epoch_triples<I>, py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("n_items"), py::arg("row_of").noconvert(), py::arg("shuffle"), py::arg("order_seed"),
        py::arg("start"), py::arg("num_negatives"), py::arg("seed"), py::arg("replace"),
        py::arg("cum").noconvert().none(true), py::arg("keys").noconvert().none(true),
        py::arg("guide").noconvert().none(true), py::arg("users_out").noconvert(), py::arg("items_out").noconvert(),
        py::arg("out").noconvert(), py::arg("num_threads"),
        "Positions [start, start + len(users_out)) of an epoch: entry e = p (shuffle false) or the Feistel "
        "permutation (bpr_epoch_order(nnz, order_seed, ...)) of p, users_out = row_of[e], items_out = indices[e] "
        "and negatives drawn with row_offset = p; returns -1 or the first bad batch position.");
  m.def("sample_negatives", &sample<I>, py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("n_items"), py::arg("users").noconvert(), py::arg("num_negatives"), py::arg("seed"),
        py::arg("row_offset"), py::arg("replace"), py::arg("cum").noconvert().none(true),
        py::arg("keys").noconvert().none(true), py::arg("out").noconvert(), py::arg("num_threads"),
        py::arg("guide").noconvert().none(true) = py::none(),
        "Writes negatives into out (flattened (batch, K)); returns -1, or the batch position of the first "
        "user without enough candidates. Callers validate ids first.");
}

}  // namespace

void bind_sampling(py::module_& m) {
  bind_typed<std::int32_t>(m);
  bind_typed<std::int64_t>(m);
  m.def(
      "sampling_cdf_guide",
      [](const carray<double>& cum) {
        const std::int64_t n_items = cum.size() - 1;
        rp::require(n_items > 1, "sampling_cdf_guide: cum needs at least 3 entries");
        rp::require(cum.data()[n_items] > 0.0, "sampling_cdf_guide: the total weight must be positive");
        py::array_t<std::int64_t> guide(recfast::cdf_guide_buckets(n_items) + 1);
        std::int64_t* g = guide.mutable_data();
        {
          py::gil_scoped_release release;  // held again before guide is returned
          recfast::cpu::build_cdf_guide(cum.data(), n_items, g);
        }
        return guide;
      },
      py::arg("cum").noconvert(),
      "A new bucket table over the CDF cum (its size set by the kernels) that weighted sampling searches first.");
  m.def("sampling_isa", [] { return std::string(recfast::cpu::sampling_isa()); },
        "The uniform sampler's instruction-set setting: auto, scalar or avx512.");
  m.def(
      "set_sampling_isa",
      [](const std::string& isa) {
        std::string previous = recfast::cpu::sampling_isa();
        rp::require(recfast::cpu::set_sampling_isa(isa.c_str()),
                    "set_sampling_isa: isa must be one of auto, scalar, avx512 (avx512 needs a CPU with avx512f "
                    "and avx512dq), got '" + isa + "'");
        return previous;
      },
      py::arg("isa"),
      "Selects the uniform sampler's path (auto, scalar or avx512; bit-identical output) and returns the "
      "previous setting. For tests and benchmarks.");
  m.def("sampling_isas", [] {
    std::vector<std::string> isas{"scalar"};
    if (recfast::cpu::sampling_avx512_available()) isas.emplace_back("avx512");
    return isas;
  }, "The uniform sampler's paths this CPU can run.");
}
