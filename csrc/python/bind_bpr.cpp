#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "bindings.h"
#include "recfast/bpr.h"
#include "recfast/optim.h"

namespace rp = recfast::python;
using rp::carray;

namespace {

// "bpr_loss: users holds id 30, expected 0 <= id < 30" (the message of the Python check_range,
// which the CPU path leaves to this scan: one pass without a torch call per id tensor).
void check_ids(const carray<std::int64_t>& ids, std::int64_t upper, const char* name) {
  const std::int64_t* p = ids.data();
  const std::int64_t n = ids.size();
  std::int64_t lo = 0, hi = 0;
  if (n) lo = hi = p[0];
  for (std::int64_t t = 1; t < n; ++t) {
    lo = p[t] < lo ? p[t] : lo;
    hi = p[t] > hi ? p[t] : hi;
  }
  if (n && (lo < 0 || hi >= upper)) {
    rp::fail(std::string("bpr_loss: ") + name + " holds id " + std::to_string(lo < 0 ? lo : hi) +
             ", expected 0 <= id < " + std::to_string(upper));
  }
}

template <typename T>
void forward(const carray<T>& U, const carray<T>& V, const std::optional<carray<T>>& bias,
             const carray<std::int64_t>& users, const carray<std::int64_t>& pos, const carray<std::int64_t>& neg,
             double l2, carray<T>& loss, carray<T>& coef, int num_threads, int isa) {
  rp::require(U.ndim() == 2 && V.ndim() == 2 && U.shape(1) == V.shape(1), "bpr_loss: tables must be 2-D of equal width");
  const std::int64_t B = users.size();
  rp::require(B == 0 || neg.size() % B == 0, "bpr_loss: neg must hold K entries per example");
  const std::int64_t K = B ? neg.size() / B : 1;
  rp::require_size(pos, B, "bpr_loss", "pos_items");
  rp::require_size(loss, B, "bpr_loss", "loss");
  rp::require_size(coef, B * K, "bpr_loss", "coef");
  if (bias) rp::require_size(*bias, V.shape(0), "bpr_loss", "item_bias");
  check_ids(users, U.shape(0), "users");
  check_ids(pos, V.shape(0), "pos_items");
  check_ids(neg, V.shape(0), "neg_items");
  py::gil_scoped_release release;
  recfast::cpu::bpr_forward<T>(U.data(), V.data(), bias ? bias->data() : nullptr, U.shape(1), users.data(), pos.data(),
                               neg.data(), B, K, l2, loss.mutable_data(), coef.mutable_data(), num_threads, isa);
}

template <typename T>
void backward(const carray<T>& U, const carray<T>& V, const carray<std::int64_t>& users,
              const carray<std::int64_t>& pos, const carray<std::int64_t>& neg, const carray<T>& coef,
              const carray<T>& scale, double l2, const carray<std::int64_t>& urow, const carray<std::int64_t>& prow,
              const carray<std::int64_t>& nrow, carray<T>& gU, carray<T>& gV, std::optional<carray<T>>& gbias,
              int num_threads, bool zero, int isa) {
  const std::int64_t B = users.size();
  const std::int64_t K = B ? neg.size() / B : 1;
  rp::require_size(coef, B * K, "bpr_loss", "coef");
  // one scale per example, or one for the batch (the "mean" and "sum" reductions)
  if (scale.ndim() != 1 || (scale.size() != B && scale.size() != 1)) {
    rp::fail("bpr_loss: scale has " + std::to_string(scale.size()) + " entries, expected 1 or B = " + std::to_string(B));
  }
  rp::require(gU.ndim() == 2 && gV.ndim() == 2 && gU.shape(1) == U.shape(1) && gV.shape(1) == U.shape(1),
              "bpr_loss: gradients must be 2-D of the tables' width");
  if (gbias) rp::require_size(*gbias, gV.shape(0), "bpr_loss", "grad_bias");
  const bool shared = gU.data() == gV.data();
  rp::require(!shared || gU.shape(0) == gV.shape(0), "bpr_loss: a shared gradient must be one table");
  py::gil_scoped_release release;
  recfast::cpu::bpr_backward<T>(U.data(), V.data(), U.shape(1), users.data(), pos.data(), neg.data(), B, K, coef.data(),
                                scale.data(), scale.size() == B ? 1 : 0, l2, urow.data(), prow.data(), nrow.data(),
                                gU.mutable_data(), gV.mutable_data(), gbias ? gbias->mutable_data() : nullptr,
                                zero ? gU.shape(0) : 0, zero ? gV.shape(0) : 0, num_threads, isa);
}

// The sparse-gradient backward in one call: the distinct users and items of the batch (ascending,
// with each position's index among them), then the scatter into the first of those rows of gU and
// gV, which it zeroes first. Returns (distinct users, distinct items). At batch 2,048 the separate
// torch steps (concatenation, two unique calls, slices) cost more than the scatter.
template <typename T>
py::tuple backward_sparse(const carray<T>& U, const carray<T>& V, const carray<std::int64_t>& users,
                          const carray<std::int64_t>& pos, const carray<std::int64_t>& neg, const carray<T>& coef,
                          const carray<T>& scale, double l2, carray<std::int64_t>& urows, carray<std::int64_t>& urow,
                          carray<std::int64_t>& irows, carray<std::int64_t>& iinv, carray<T>& gU, carray<T>& gV,
                          std::optional<carray<T>>& gbias, int num_threads) {
  const char* op = "bpr_loss";
  const std::int64_t B = users.size();
  const std::int64_t K = B ? neg.size() / B : 1;
  const std::int64_t d = U.shape(1);
  rp::require(U.ndim() == 2 && V.ndim() == 2 && V.shape(1) == d, "bpr_loss: tables must be 2-D of equal width");
  rp::require_size(pos, B, op, "pos_items");
  rp::require(B == 0 || neg.size() % B == 0, "bpr_loss: neg must hold K entries per example");
  rp::require_size(coef, B * K, op, "coef");
  rp::require(scale.ndim() == 1 && (scale.size() == 1 || scale.size() == B), "bpr_loss: scale must hold 1 or B entries");
  rp::require_size(urow, B, op, "urow");
  rp::require_size(iinv, B * (K + 1), op, "iinv");
  const std::int64_t mu_cap = std::min(B, U.shape(0)), mi_cap = std::min(B * (K + 1), V.shape(0));
  rp::require(urows.size() >= mu_cap && irows.size() >= mi_cap, "bpr_loss: row buffers too small");
  rp::require(gU.ndim() == 2 && gV.ndim() == 2 && gU.shape(1) == d && gV.shape(1) == d && gU.shape(0) >= mu_cap &&
                  gV.shape(0) >= mi_cap,
              "bpr_loss: gradient buffers too small");
  if (gbias) rp::require(gbias->size() >= mi_cap, "bpr_loss: gradient bias buffer too small");
  std::int64_t mu, mi;
  {
    py::gil_scoped_release release;
    mu = recfast::cpu::unique_rows(users.data(), B, U.shape(0), urows.mutable_data(), urow.mutable_data());
    std::vector<std::int64_t> items(static_cast<std::size_t>(B * (K + 1)));
    std::copy(pos.data(), pos.data() + B, items.begin());
    std::copy(neg.data(), neg.data() + B * K, items.begin() + B);
    mi = mu < 0 ? 0
                : recfast::cpu::unique_rows(items.data(), B * (K + 1), V.shape(0), irows.mutable_data(),
                                            iinv.mutable_data());
    if (mu >= 0 && mi >= 0) {
      recfast::cpu::bpr_backward<T>(U.data(), V.data(), d, users.data(), pos.data(), neg.data(), B, K, coef.data(),
                                    scale.data(), scale.size() == B ? 1 : 0, l2, urow.data(), iinv.data(), iinv.data() + B,
                                    gU.mutable_data(), gV.mutable_data(), gbias ? gbias->mutable_data() : nullptr, mu,
                                    mi, num_threads);
    }
  }
  // the forward validated the ids: an id out of range here is a caller's bug, not bad input
  rp::require(mu >= 0, "bpr_loss: users holds an id outside the user table");
  rp::require(mi >= 0, "bpr_loss: pos_items or neg_items holds an id outside the item table");
  return py::make_tuple(mu, mi);
}

void check_sgd_tables(const carray<float>& U, const carray<float>& V, const std::optional<carray<float>>& bias,
                      const carray<std::int64_t>& indptr, const char* op) {
  rp::require(U.ndim() == 2 && V.ndim() == 2 && U.shape(1) == V.shape(1),
              std::string(op) + ": user_emb and item_emb must be 2-D of equal width");
  rp::require_size(indptr, U.shape(0) + 1, op, "indptr");
  if (bias) rp::require_size(*bias, V.shape(0), op, "item_bias");
}

template <typename I>
py::tuple sgd_step(carray<float>& U, carray<float>& V, std::optional<carray<float>>& bias,
                   const carray<std::int64_t>& indptr, const carray<I>& indices, const carray<std::int64_t>& users,
                   const carray<std::int64_t>& pos, std::int64_t K, std::uint64_t seed, std::int64_t row_offset,
                   double lr, double l2, int num_threads, int isa) {
  check_sgd_tables(U, V, bias, indptr, "bpr_sgd_step");
  const std::int64_t B = users.size();
  rp::require_size(pos, B, "bpr_sgd_step", "pos_items");
  rp::require(K >= 1, "bpr_sgd_step: num_negatives must be positive");
  std::int64_t bad = -1;
  double loss;
  {
    py::gil_scoped_release release;
    loss = recfast::cpu::bpr_sgd_step<I>(U.mutable_data(), V.mutable_data(), bias ? bias->mutable_data() : nullptr,
                                         U.shape(1), indptr.data(), indices.data(), V.shape(0), users.data(),
                                         pos.data(), B, K, seed, row_offset, lr, l2, &bad, num_threads, isa);
  }
  return py::make_tuple(loss, bad);
}

template <typename I>
py::tuple sgd_epoch(carray<float>& U, carray<float>& V, std::optional<carray<float>>& bias,
                    const carray<std::int64_t>& indptr, const carray<I>& indices, const carray<std::int32_t>& row_of,
                    std::int64_t start, std::int64_t stop, bool shuffle, std::int64_t K, std::uint64_t seed, double lr,
                    double l2, int num_threads, int isa) {
  const char* op = "bpr_sgd_epoch";
  check_sgd_tables(U, V, bias, indptr, op);
  const std::int64_t nnz = indices.size();
  rp::require_size(row_of, nnz, op, "row_of");
  rp::require(0 <= start && start <= stop && stop <= nnz,
              "bpr_sgd_epoch: need 0 <= start <= stop <= nnz = " + std::to_string(nnz) + ", got start = " +
                  std::to_string(start) + ", stop = " + std::to_string(stop));
  rp::require(K >= 1, "bpr_sgd_epoch: num_negatives must be positive");
  std::int64_t count = 0, bad = -1;
  double loss;
  {
    py::gil_scoped_release release;
    loss = recfast::cpu::bpr_sgd_epoch<I>(U.mutable_data(), V.mutable_data(), bias ? bias->mutable_data() : nullptr,
                                          U.shape(1), indptr.data(), indices.data(), V.shape(0), row_of.data(), nnz,
                                          start, stop, shuffle, K, seed, lr, l2, &count, &bad, num_threads, isa);
  }
  return py::make_tuple(loss, count, bad);
}

// The entries bpr_sgd_epoch visits at positions [start, stop) (for tests and debugging).
carray<std::int64_t> epoch_order(std::int64_t nnz, std::uint64_t seed, std::int64_t start, std::int64_t stop) {
  rp::require(0 <= start && start <= stop && stop <= nnz, "bpr_epoch_order: need 0 <= start <= stop <= nnz");
  carray<std::int64_t> out(stop - start);
  auto* o = out.mutable_data();
  const recfast::FeistelPermutation perm(static_cast<std::uint64_t>(nnz), seed);
  for (std::int64_t p = start; p < stop; ++p) o[p - start] = static_cast<std::int64_t>(perm(static_cast<std::uint64_t>(p)));
  return out;
}

template <typename I>
void bind_sgd(py::module_& m) {
  m.def("bpr_sgd_step", &sgd_step<I>, py::arg("user_emb").noconvert(), py::arg("item_emb").noconvert(),
        py::arg("item_bias").noconvert().none(true), py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("users").noconvert(), py::arg("pos").noconvert(), py::arg("num_negatives"), py::arg("seed"),
        py::arg("row_offset"), py::arg("lr"), py::arg("l2"), py::arg("num_threads"), py::arg("isa") = -1);
  m.def("bpr_sgd_epoch", &sgd_epoch<I>, py::arg("user_emb").noconvert(), py::arg("item_emb").noconvert(),
        py::arg("item_bias").noconvert().none(true), py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("row_of").noconvert(), py::arg("start"), py::arg("stop"), py::arg("shuffle"),
        py::arg("num_negatives"), py::arg("seed"), py::arg("lr"), py::arg("l2"), py::arg("num_threads"),
        py::arg("isa") = -1);
}

template <typename T>
void bind_float(py::module_& m) {
  m.def("bpr_forward", &forward<T>, py::arg("user_emb").noconvert(), py::arg("item_emb").noconvert(),
        py::arg("item_bias").noconvert().none(true), py::arg("users").noconvert(), py::arg("pos").noconvert(),
        py::arg("neg").noconvert(), py::arg("l2"), py::arg("loss").noconvert(), py::arg("coef").noconvert(),
        py::arg("num_threads"), py::arg("isa") = -1);
  m.def("bpr_backward", &backward<T>, py::arg("user_emb").noconvert(), py::arg("item_emb").noconvert(),
        py::arg("users").noconvert(), py::arg("pos").noconvert(), py::arg("neg").noconvert(),
        py::arg("coef").noconvert(), py::arg("scale").noconvert(), py::arg("l2"), py::arg("urow").noconvert(),
        py::arg("prow").noconvert(), py::arg("nrow").noconvert(), py::arg("grad_user").noconvert(),
        py::arg("grad_item").noconvert(), py::arg("grad_bias").noconvert().none(true), py::arg("num_threads"),
        py::arg("zero") = false, py::arg("isa") = -1);
  m.def("bpr_backward_sparse", &backward_sparse<T>, py::arg("user_emb").noconvert(), py::arg("item_emb").noconvert(),
        py::arg("users").noconvert(), py::arg("pos").noconvert(), py::arg("neg").noconvert(),
        py::arg("coef").noconvert(), py::arg("scale").noconvert(), py::arg("l2"), py::arg("urows").noconvert(),
        py::arg("urow").noconvert(), py::arg("irows").noconvert(), py::arg("iinv").noconvert(),
        py::arg("grad_user").noconvert(), py::arg("grad_item").noconvert(),
        py::arg("grad_bias").noconvert().none(true), py::arg("num_threads"));
}

}  // namespace

void bind_bpr(py::module_& m) {
  bind_float<float>(m);
  bind_float<double>(m);
  bind_sgd<std::int32_t>(m);
  bind_sgd<std::int64_t>(m);
  m.def("bpr_epoch_order", &epoch_order, py::arg("nnz"), py::arg("seed"), py::arg("start"), py::arg("stop"));
  m.def("bpr_sgd_isa", &recfast::cpu::sgd_isa_supported);
}
