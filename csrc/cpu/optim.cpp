#include <cmath>

#include "recfast/optim.h"
#include "recfast/parallel.h"

namespace recfast::cpu {

template <typename T>
void sparse_opt_step(SparseOpt kind, const SparseOptParams& h, T* param, T* state1, T* state2, std::int64_t d,
                     const std::int64_t* rows, const T* grad, std::int64_t m, int num_threads) {
  using std::sqrt;
#pragma omp parallel for schedule(static) num_threads(resolve_threads(num_threads))
  for (std::int64_t i = 0; i < m; ++i) {
    const std::int64_t off = rows[i] * d;
    for (std::int64_t t = 0; t < d; ++t) {
      sparse_opt_element<T>(kind, h, param + off + t, grad[i * d + t], state1 ? state1 + off + t : nullptr,
                            state2 ? state2 + off + t : nullptr);
    }
  }
}

template void sparse_opt_step<float>(SparseOpt, const SparseOptParams&, float*, float*, float*, std::int64_t,
                                     const std::int64_t*, const float*, std::int64_t, int);
template void sparse_opt_step<double>(SparseOpt, const SparseOptParams&, double*, double*, double*, std::int64_t,
                                      const std::int64_t*, const double*, std::int64_t, int);

}  // namespace recfast::cpu
