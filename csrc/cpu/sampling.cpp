#include "recfast/sampling.h"

#include <atomic>
#include <vector>

#include "recfast/parallel.h"

namespace recfast::cpu {

namespace {

void record_failure(std::atomic<std::int64_t>& first_bad, std::int64_t b) {
  std::int64_t cur = first_bad.load(std::memory_order_relaxed);
  while (b < cur && !first_bad.compare_exchange_weak(cur, b)) {
  }
}

// Uniform draws with replacement for rows [b0, b0 + L): the L binary searches for draw k run in
// lockstep, so their dependent loads overlap instead of queueing behind each other (one search
// is a chain of log2(deg) cache hits; the chain's latency, not arithmetic, bounds a lone draw).
template <typename I, int L>
void uniform_lanes(const offset_t* indptr, const I* indices, std::int64_t n_items, const std::int64_t* users,
                   std::int64_t b0, std::int64_t K, std::uint64_t seed, std::int64_t row_offset, std::int64_t* out,
                   std::atomic<std::int64_t>& first_bad, std::int64_t prefetch_end) {
  static const I zero_row[1] = {0};
  const I* row[L];
  std::int64_t deg[L], m[L];
  std::uint64_t key[L];
  // Shuffled users make every row a cache miss: fetch the indptr entries two chunks ahead and the
  // row middles (the search's first probes) one chunk ahead while this chunk searches.
  if (prefetch_end > b0 + 3 * L) {
    for (int l = 0; l < L; ++l) __builtin_prefetch(indptr + users[b0 + 2 * L + l]);
    for (int l = 0; l < L; ++l) {
      const std::int64_t u = users[b0 + L + l];
      __builtin_prefetch(indices + ((indptr[u] + indptr[u + 1]) >> 1));
    }
  }
  for (int l = 0; l < L; ++l) {
    const std::int64_t b = b0 + l;
    const std::int64_t u = users[b];
    deg[l] = indptr[u + 1] - indptr[u];
    row[l] = deg[l] > 0 ? indices + indptr[u] : zero_row;
    m[l] = n_items - deg[l];
    key[l] = rng_key(seed, static_cast<std::uint64_t>(row_offset + b));
    if (m[l] < 1) record_failure(first_bad, b);
  }
  for (std::int64_t k = 0; k < K; ++k) {
    std::int64_t lo[L], n[L], r[L];
    for (int l = 0; l < L; ++l) {
      const std::uint64_t bound = static_cast<std::uint64_t>(m[l] > 0 ? m[l] : 1);
      r[l] = static_cast<std::int64_t>(rng_below(rng_bits(key[l], static_cast<std::uint64_t>(k)), bound));
      lo[l] = 0;
      n[l] = deg[l];
    }
    for (;;) {
      std::int64_t active = 0;
      for (int l = 0; l < L; ++l) {
        // Integer masks instead of conditionals: the comparisons are coin flips, and a branch the
        // compiler might emit for them would mispredict half the time.
        const std::int64_t half = n[l] >> 1;
        const std::int64_t mid = lo[l] + half;
        const std::int64_t live = -static_cast<std::int64_t>(n[l] > 0);
        const std::int64_t v = static_cast<std::int64_t>(row[l][mid & live]);
        const std::int64_t right = -static_cast<std::int64_t>(v - mid <= r[l]) & live;
        lo[l] += (mid + 1 - lo[l]) & right;
        n[l] = (half & ~right) | ((n[l] - half - 1) & right);
        active |= n[l];
      }
      if (active == 0) break;
    }
    for (int l = 0; l < L; ++l) out[(b0 + l) * K + k] = r[l] + lo[l];
  }
}

}  // namespace

template <typename I>
std::int64_t sample_negatives(const offset_t* indptr, const I* indices, std::int64_t /*n_users*/,
                              std::int64_t n_items, const std::int64_t* users, std::int64_t batch,
                              std::int64_t num_negatives, std::uint64_t seed, std::int64_t row_offset, bool replace,
                              const double* cum, const double* G, std::int64_t* out, int num_threads) {
  const std::int64_t K = num_negatives;
  std::atomic<std::int64_t> first_bad{batch};
  const bool weighted = cum != nullptr;
  if (!weighted && replace) {
    constexpr int L = 8;
    const std::int64_t full = batch / L;
#pragma omp parallel for schedule(static) num_threads(resolve_threads(num_threads))
    for (std::int64_t c = 0; c < full; ++c) {
      uniform_lanes<I, L>(indptr, indices, n_items, users, c * L, K, seed, row_offset, out, first_bad, full * L);
    }
    for (std::int64_t b = full * L; b < batch; ++b) {
      const std::int64_t u = users[b];
      const std::int64_t deg = indptr[u + 1] - indptr[u];
      if (n_items - deg < 1) {
        record_failure(first_bad, b);
        continue;
      }
      const std::uint64_t key = rng_key(seed, static_cast<std::uint64_t>(row_offset + b));
      for (std::int64_t k = 0; k < K; ++k)
        out[b * K + k] = uniform_negative(key, static_cast<std::uint64_t>(k), indices + indptr[u], deg, n_items);
    }
    const std::int64_t bad = first_bad.load();
    return bad == batch ? -1 : bad;
  }
#pragma omp parallel num_threads(resolve_threads(num_threads))
  {
    // Per-thread scratch for weighted sampling without replacement.
    std::vector<std::int64_t> local_row;
    std::vector<double> local_G;
#pragma omp for schedule(static)
    for (std::int64_t b = 0; b < batch; ++b) {
      const std::int64_t u = users[b];
      const offset_t start = indptr[u];
      const std::int64_t deg = indptr[u + 1] - start;
      const I* row = indices + start;
      std::int64_t* o = out + b * K;
      const std::uint64_t key = rng_key(seed, static_cast<std::uint64_t>(row_offset + b));
      if (K == 0) continue;
      if (!weighted) {
        const std::int64_t m = n_items - deg;
        if (m < (replace ? 1 : K)) {
          record_failure(first_bad, b);
          continue;
        }
        if (replace) {
          for (std::int64_t k = 0; k < K; ++k) o[k] = uniform_negative(key, static_cast<std::uint64_t>(k), row, deg, n_items);
        } else {
          floyd_ranks(key, m, K, o);
          for (std::int64_t k = 0; k < K; ++k) o[k] = kth_unseen(row, deg, o[k]);
        }
        continue;
      }
      const double* rowG = G + start;
      if (replace) {
        const double mass = complement_mass(cum, n_items, rowG, deg);
        if (!(mass > 0.0)) {
          record_failure(first_bad, b);
          continue;
        }
        for (std::int64_t k = 0; k < K; ++k) {
          const double t = rng_unit(rng_bits(key, static_cast<std::uint64_t>(k))) * mass;
          o[k] = weighted_unseen(cum, n_items, row, rowG, deg, t);
        }
        continue;
      }
      // Without replacement: each drawn item joins a private copy of the row, removing its mass.
      local_row.assign(row, row + deg);
      local_G.assign(rowG, rowG + deg + 1);
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t len = static_cast<std::int64_t>(local_row.size());
        const double mass = cum[n_items] - (local_G[len] - local_G[0]);
        if (!(mass > 1e-12 * cum[n_items])) {
          record_failure(first_bad, b);
          break;
        }
        const double t = rng_unit(rng_bits(key, static_cast<std::uint64_t>(k))) * mass;
        const std::int64_t x = weighted_unseen(cum, n_items, local_row.data(), local_G.data(), len, t);
        o[k] = x;
        const std::int64_t pos = row_below(local_row.data(), len, x);
        const double w = cum[x + 1] - cum[x];
        local_row.insert(local_row.begin() + pos, x);
        local_G.insert(local_G.begin() + pos + 1, local_G[pos] + w);
        for (std::int64_t q = pos + 2; q < len + 2; ++q) local_G[q] += w;
      }
    }
  }
  const std::int64_t bad = first_bad.load();
  return bad == batch ? -1 : bad;
}

template std::int64_t sample_negatives<std::int32_t>(const offset_t*, const std::int32_t*, std::int64_t, std::int64_t,
                                                     const std::int64_t*, std::int64_t, std::int64_t, std::uint64_t,
                                                     std::int64_t, bool, const double*, const double*, std::int64_t*,
                                                     int);
template std::int64_t sample_negatives<std::int64_t>(const offset_t*, const std::int64_t*, std::int64_t, std::int64_t,
                                                     const std::int64_t*, std::int64_t, std::int64_t, std::uint64_t,
                                                     std::int64_t, bool, const double*, const double*, std::int64_t*,
                                                     int);

}  // namespace recfast::cpu
