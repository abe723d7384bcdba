#include <optional>

#include "bindings.h"
#include "recfast/bpr.h"

namespace rp = recfast::python;
using rp::carray;

namespace {

template <typename T>
void forward(const carray<T>& U, const carray<T>& V, const std::optional<carray<T>>& bias,
             const carray<std::int64_t>& users, const carray<std::int64_t>& pos, const carray<std::int64_t>& neg,
             double l2, carray<T>& loss, carray<T>& coef, int num_threads) {
  rp::require(U.ndim() == 2 && V.ndim() == 2 && U.shape(1) == V.shape(1), "bpr_loss: tables must be 2-D of equal width");
  const std::int64_t B = users.size();
  rp::require(B == 0 || neg.size() % B == 0, "bpr_loss: neg must hold K entries per example");
  const std::int64_t K = B ? neg.size() / B : 1;
  rp::require_size(pos, B, "bpr_loss", "pos_items");
  rp::require_size(loss, B, "bpr_loss", "loss");
  rp::require_size(coef, B * K, "bpr_loss", "coef");
  py::gil_scoped_release release;
  recfast::cpu::bpr_forward<T>(U.data(), V.data(), bias ? bias->data() : nullptr, U.shape(1), users.data(), pos.data(),
                               neg.data(), B, K, l2, loss.mutable_data(), coef.mutable_data(), num_threads);
}

template <typename T>
void backward(const carray<T>& U, const carray<T>& V, const carray<std::int64_t>& users,
              const carray<std::int64_t>& pos, const carray<std::int64_t>& neg, const carray<T>& coef,
              const carray<T>& scale, double l2, const carray<std::int64_t>& urow, const carray<std::int64_t>& prow,
              const carray<std::int64_t>& nrow, carray<T>& gU, carray<T>& gV, std::optional<carray<T>>& gbias,
              int num_threads) {
  const std::int64_t B = users.size();
  const std::int64_t K = B ? neg.size() / B : 1;
  rp::require_size(coef, B * K, "bpr_loss", "coef");
  rp::require_size(scale, B, "bpr_loss", "scale");
  rp::require(gU.ndim() == 2 && gV.ndim() == 2, "bpr_loss: gradients must be 2-D");
  py::gil_scoped_release release;
  recfast::cpu::bpr_backward<T>(U.data(), V.data(), U.shape(1), users.data(), pos.data(), neg.data(), B, K, coef.data(),
                                scale.data(), l2, urow.data(), prow.data(), nrow.data(), gU.mutable_data(),
                                gV.mutable_data(), gbias ? gbias->mutable_data() : nullptr, num_threads);
}

template <typename I>
py::tuple sgd_step(carray<float>& U, carray<float>& V, std::optional<carray<float>>& bias,
                   const carray<std::int64_t>& indptr, const carray<I>& indices, const carray<std::int64_t>& users,
                   const carray<std::int64_t>& pos, std::int64_t K, std::uint64_t seed, std::int64_t row_offset,
                   double lr, double l2, int num_threads) {
  const std::int64_t B = users.size();
  rp::require_size(pos, B, "bpr_sgd_step", "pos_items");
  std::int64_t bad = -1;
  double loss;
  {
    py::gil_scoped_release release;
    loss = recfast::cpu::bpr_sgd_step<I>(U.mutable_data(), V.mutable_data(), bias ? bias->mutable_data() : nullptr,
                                         U.shape(1), indptr.data(), indices.data(), V.shape(0), users.data(),
                                         pos.data(), B, K, seed, row_offset, lr, l2, &bad, num_threads);
  }
  return py::make_tuple(loss, bad);
}

template <typename T>
void bind_float(py::module_& m) {
  m.def("bpr_forward", &forward<T>, py::arg("user_emb").noconvert(), py::arg("item_emb").noconvert(),
        py::arg("item_bias").noconvert().none(true), py::arg("users").noconvert(), py::arg("pos").noconvert(),
        py::arg("neg").noconvert(), py::arg("l2"), py::arg("loss").noconvert(), py::arg("coef").noconvert(),
        py::arg("num_threads"));
  m.def("bpr_backward", &backward<T>, py::arg("user_emb").noconvert(), py::arg("item_emb").noconvert(),
        py::arg("users").noconvert(), py::arg("pos").noconvert(), py::arg("neg").noconvert(),
        py::arg("coef").noconvert(), py::arg("scale").noconvert(), py::arg("l2"), py::arg("urow").noconvert(),
        py::arg("prow").noconvert(), py::arg("nrow").noconvert(), py::arg("grad_user").noconvert(),
        py::arg("grad_item").noconvert(), py::arg("grad_bias").noconvert().none(true), py::arg("num_threads"));
}

}  // namespace

void bind_bpr(py::module_& m) {
  bind_float<float>(m);
  bind_float<double>(m);
  m.def("bpr_sgd_step", &sgd_step<std::int32_t>, py::arg("user_emb").noconvert(), py::arg("item_emb").noconvert(),
        py::arg("item_bias").noconvert().none(true), py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("users").noconvert(), py::arg("pos").noconvert(), py::arg("num_negatives"), py::arg("seed"),
        py::arg("row_offset"), py::arg("lr"), py::arg("l2"), py::arg("num_threads"));
  m.def("bpr_sgd_step", &sgd_step<std::int64_t>, py::arg("user_emb").noconvert(), py::arg("item_emb").noconvert(),
        py::arg("item_bias").noconvert().none(true), py::arg("indptr").noconvert(), py::arg("indices").noconvert(),
        py::arg("users").noconvert(), py::arg("pos").noconvert(), py::arg("num_negatives"), py::arg("seed"),
        py::arg("row_offset"), py::arg("lr"), py::arg("l2"), py::arg("num_threads"));
}
