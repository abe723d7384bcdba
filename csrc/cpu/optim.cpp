#include <algorithm>
#include <cmath>
#include <vector>

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

std::int64_t unique_rows(const std::int64_t* ids, std::int64_t n, std::int64_t upper, std::int64_t* rows,
                         std::int64_t* inverse) {
  for (std::int64_t b = 0; b < n; ++b) {
    if (ids[b] < 0 || ids[b] >= upper) return -1 - b;
  }
  if (upper > 256 * n + (std::int64_t{1} << 20)) {
    // A range far wider than the ids: the bitmap would outweigh them; sort a copy instead.
    std::vector<std::int64_t> sorted(ids, ids + n);
    std::sort(sorted.begin(), sorted.end());
    const std::int64_t m = std::unique(sorted.begin(), sorted.end()) - sorted.begin();
    std::copy(sorted.begin(), sorted.begin() + m, rows);
    for (std::int64_t b = 0; b < n; ++b) inverse[b] = std::lower_bound(rows, rows + m, ids[b]) - rows;
    return m;
  }
  const std::int64_t words = (upper + 63) >> 6;
  std::vector<std::uint64_t> bits(static_cast<std::size_t>(words), 0);
  for (std::int64_t b = 0; b < n; ++b) bits[ids[b] >> 6] |= std::uint64_t{1} << (ids[b] & 63);
  // rank[w]: the ids below word w; the bits of a word, lowest first, are its ids in order.
  std::vector<std::int64_t> rank(static_cast<std::size_t>(words));
  std::int64_t m = 0;
  for (std::int64_t w = 0; w < words; ++w) {
    rank[w] = m;
    for (std::uint64_t v = bits[w]; v; v &= v - 1) rows[m++] = (w << 6) + __builtin_ctzll(v);
  }
  for (std::int64_t b = 0; b < n; ++b) {
    const std::int64_t x = ids[b];
    const std::uint64_t below = bits[x >> 6] & ((std::uint64_t{1} << (x & 63)) - 1);
    inverse[b] = rank[x >> 6] + __builtin_popcountll(below);
  }
  return m;
}

template void sparse_opt_step<float>(SparseOpt, const SparseOptParams&, float*, float*, float*, std::int64_t,
                                     const std::int64_t*, const float*, std::int64_t, int);
template void sparse_opt_step<double>(SparseOpt, const SparseOptParams&, double*, double*, double*, std::int64_t,
                                      const std::int64_t*, const double*, std::int64_t, int);

}  // namespace recfast::cpu
