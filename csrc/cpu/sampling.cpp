#include "recfast/sampling.h"

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "recfast/bpr.h"  // FeistelPermutation: the epoch order of sample_epoch_triples
#include "recfast/parallel.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RF_SAMPLING_AVX512 1
#include <immintrin.h>
#else
#define RF_SAMPLING_AVX512 0
#endif

namespace recfast::cpu {

namespace {

// How many of a batch's `chunks` (units of lockstep lanes) to hand out at a time: an equal share
// for each of nt threads when the batch is small, at most `cap` (and at least 1).
std::int64_t chunks_per_share(std::int64_t chunks, int nt, std::int64_t cap) {
  return std::clamp<std::int64_t>((chunks + nt - 1) / nt, 1, cap);
}

void record_failure(std::atomic<std::int64_t>& first_bad, std::int64_t b) {
  std::int64_t cur = first_bad.load(std::memory_order_relaxed);
  while (b < cur && !first_bad.compare_exchange_weak(cur, b)) {
  }
}

// Shuffled users make every row a cache miss. While the lanes work on rows [b0, b0 + L), fetch
// the indptr entries of the chunk two ahead and, for the chunk one ahead, what its searches read
// first: probe(start, deg) prefetches those addresses of the row.
template <int L, typename Probe>
RF_INLINE void prefetch_rows_ahead(const offset_t* indptr, const std::int64_t* users, std::int64_t b0,
                                   std::int64_t prefetch_end, Probe probe) {
  if (prefetch_end <= b0 + 3 * L) return;
  for (int l = 0; l < L; ++l) __builtin_prefetch(indptr + users[b0 + 2 * L + l]);
  for (int l = 0; l < L; ++l) {
    const std::int64_t u = users[b0 + L + l];
    probe(u, indptr[u], indptr[u + 1] - indptr[u]);
  }
}

// The uniform search's first probe: the row's middle.
template <typename I>
struct UniformProbe {
  const I* indices;
  RF_INLINE void operator()(std::int64_t, offset_t s, offset_t d) const { __builtin_prefetch(indices + s + (d >> 1)); }
};

// The weighted draw's: the row's mass (its last key), which sets the draw's scale, the middle
// key (the search's first), and with Deep the keys the search reads next, down to its fourth level
// for rows longer than 32 (8 keys to a cache line). Deep suits the scalar lanes, 8 rows in flight:
// prefetching down to eighths of a row took their weighted draws from 2.5x to 2.0-2.2x uniform's
// time on a Zen 3 host, and is as good or better on an Intel one. The AVX-512 lanes have 64 rows
// in flight, and up to 8 lines for each of the next 64 rows fill the core's line-fill buffers and
// stall the current rows' gathers: on an Intel Xeon (family 6 model 167) they were 16% faster
// with the mass and the middle alone (1 thread 19.0 vs 23.0 ms for 810 k draws; fewer prefetches
// than these were no faster).
template <bool Deep>
struct WeightedProbe {
  const double* keys;
  RF_INLINE void operator()(std::int64_t u, offset_t s, offset_t d) const {
    const double* k = row_keys(keys, s, u);
    __builtin_prefetch(k + d);
    __builtin_prefetch(k + (d >> 1));
    if (!Deep) return;
    if (d > 8) {
      __builtin_prefetch(k + (d >> 2));
      __builtin_prefetch(k + (d >> 1) + (d >> 2));
    }
    if (d > 32) {
      for (offset_t e = 1; e < 8; e += 2) __builtin_prefetch(k + ((d * e) >> 3));
    }
  }
};

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
  prefetch_rows_ahead<L>(indptr, users, b0, prefetch_end, UniformProbe<I>{indices});
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

// Weighted draws with replacement for the rows of [b0, b1) (a multiple of L), the same arithmetic
// as weighted_unseen, L rows at a time. A draw is a chain of dependent loads: the row search over
// the keys, then the indices around the answer, cum at the gap and the guide bucket, then the
// bracketed CDF search. Each stage runs for L lanes in lockstep, and the stages of consecutive
// groups of L draws are software-pipelined: while one group searches its rows, the previous
// group's indices (prefetched when its search ended) give its gap targets, and the group before
// that (whose guide buckets were prefetched then) finishes. The loads of a stage were issued a
// whole stage earlier, so the chain's latencies overlap instead of adding up.
template <typename I, int L>
struct WeightedGroup {
  std::int64_t b0 = 0, k = 0;
  const I* row[L];
  const double* rowk[L];
  std::int64_t deg[L], lo[L], prev[L], next[L], j[L];
  double t[L], ta[L];
  bool ok[L];
};

template <typename I, int L>
void weighted_lanes(const offset_t* indptr, const I* indices, std::int64_t n_items, const std::int64_t* users,
                    std::int64_t b0, std::int64_t b1, std::int64_t K, std::uint64_t seed, std::int64_t row_offset,
                    const double* cum, const double* keys, const std::int64_t* guide, std::int64_t M, double inv_h,
                    std::int64_t* out, std::atomic<std::int64_t>& first_bad, std::int64_t prefetch_end) {
  static const I zero_row[1] = {0};
  WeightedGroup<I, L> ring[3];
  // The current chunk's rows, read once for its K draws (groups copy what their later stages need:
  // by then the next chunk may have replaced these).
  const I* row[L];
  const double* rowk[L];
  std::int64_t deg[L];
  double mass[L];
  std::uint64_t key[L];
  bool ok[L];
  // Stage 1: the rows and their searches (lo = #{keys <= t}); prefetch the indices around lo.
  auto search = [&](WeightedGroup<I, L>& g, std::int64_t c0, std::int64_t k) {
    g.b0 = c0;
    g.k = k;
    if (k == 0) {
      prefetch_rows_ahead<L>(indptr, users, c0, prefetch_end, WeightedProbe<true>{keys});
      for (int l = 0; l < L; ++l) {
        const std::int64_t b = c0 + l;
        const std::int64_t u = users[b];
        const offset_t start = indptr[u];
        deg[l] = indptr[u + 1] - start;
        row[l] = deg[l] > 0 ? indices + start : zero_row;
        rowk[l] = row_keys(keys, start, u);
        mass[l] = rowk[l][deg[l]];
        ok[l] = mass[l] > 0.0;
        key[l] = rng_key(seed, static_cast<std::uint64_t>(row_offset + b));
        if (!ok[l]) {
          record_failure(first_bad, b);
          deg[l] = 0;  // the lane still runs (nothing is read past the row), its draws are dropped
          mass[l] = 0.0;
        }
      }
    }
    std::int64_t n[L];
    for (int l = 0; l < L; ++l) {
      g.row[l] = row[l];
      g.rowk[l] = rowk[l];
      g.deg[l] = deg[l];
      g.ok[l] = ok[l];
      g.t[l] = rng_unit(rng_bits(key[l], static_cast<std::uint64_t>(k))) * mass[l];
      g.lo[l] = 0;
      n[l] = deg[l];
    }
    for (;;) {
      std::int64_t active = 0;
      for (int l = 0; l < L; ++l) {
        const std::int64_t half = n[l] >> 1;
        const std::int64_t mid = g.lo[l] + half;
        const std::int64_t live = -static_cast<std::int64_t>(n[l] > 0);
        const std::int64_t right = -static_cast<std::int64_t>(g.rowk[l][mid & live] <= g.t[l]) & live;
        g.lo[l] += (mid + 1 - g.lo[l]) & right;
        n[l] = (half & ~right) | ((n[l] - half - 1) & right);
        active |= n[l];
      }
      if (active == 0) break;
    }
    for (int l = 0; l < L; ++l) __builtin_prefetch(g.row[l] + (g.lo[l] > 0 ? g.lo[l] - 1 : 0));
  };
  // Stage 2: the row items on either side of the answer (-1: none), gap_target, the guide bucket.
  auto gap = [&](WeightedGroup<I, L>& g) {
    for (int l = 0; l < L; ++l) {
      const std::int64_t j = g.lo[l], last = g.deg[l] > 0 ? g.deg[l] - 1 : 0;
      const std::int64_t p = static_cast<std::int64_t>(g.row[l][j > 0 ? j - 1 : 0]);
      const std::int64_t q = static_cast<std::int64_t>(g.row[l][j < last ? j : last]);
      g.prev[l] = j > 0 ? p : -1;
      g.next[l] = j < g.deg[l] ? q : -1;
    }
    for (int l = 0; l < L; ++l) {
      const double ta = gap_target(cum, g.row[l], g.rowk[l], g.lo[l], g.t[l]);
      g.ta[l] = ta;
      g.j[l] = guide_bucket(M, inv_h, ta);
      __builtin_prefetch(guide + g.j[l]);
    }
  };
  // Stage 3: the bracketed CDF search and the answer.
  auto finish = [&](WeightedGroup<I, L>& g) {
    std::int64_t a[L], m[L];
    for (int l = 0; l < L; ++l) {
      a[l] = guide[g.j[l]];
      m[l] = guide[g.j[l] + 1] - a[l];
    }
    for (;;) {
      std::int64_t active = 0;
      for (int l = 0; l < L; ++l) {
        const std::int64_t half = m[l] >> 1;
        const std::int64_t mid = a[l] + half;
        const std::int64_t live = -static_cast<std::int64_t>(m[l] > 0);
        const std::int64_t right = -static_cast<std::int64_t>(cum[(mid & live) + 1] <= g.ta[l]) & live;
        a[l] += (mid + 1 - a[l]) & right;
        m[l] = (half & ~right) | ((m[l] - half - 1) & right);
        active |= m[l];
      }
      if (active == 0) break;
    }
    for (int l = 0; l < L; ++l) {
      if (!g.ok[l]) continue;
      // The common case, as in the vector code: guide_fixup leaves a unchanged (cum[a] <= ta <
      // cum[a + 1]) and weighted_finish accepts it (positive weight, after exactly lo row items
      // and not one of them). Only the other lanes take the repairs.
      const std::int64_t x = a[l];
      const double ta = g.ta[l];
      const bool good = x < n_items && (x == 0 || cum[x] <= ta) && cum[x + 1] > ta && cum[x + 1] - cum[x] > 0.0 &&
                        g.prev[l] < x && g.next[l] != x;
      const std::int64_t got =
          good ? x : weighted_finish(cum, n_items, g.row[l], g.deg[l], g.lo[l], guide_fixup(cum, n_items, x, ta));
      if (got < 0) record_failure(first_bad, g.b0 + l);
      out[(g.b0 + l) * K + g.k] = got;
    }
  };
  // Group s of the range is (rows c0 = b0 + (s / K) * L, draw s % K); at step s, stage 1 runs for
  // group s, stage 2 for s - 1 and stage 3 for s - 2 (ring slots s % 3).
  const std::int64_t steps = (b1 - b0) / L * K;
  for (std::int64_t s = 0; s < steps + 2; ++s) {
    if (s < steps) search(ring[s % 3], b0 + (s / K) * L, s % K);
    if (s >= 1 && s - 1 < steps) gap(ring[(s - 1) % 3]);
    if (s >= 2) finish(ring[(s - 2) % 3]);
  }
}

#if RF_SAMPLING_AVX512
// The same draws as uniform_lanes, V vectors of 8 rows at a time: the RNG in 64-bit lanes
// (vpmullq), and the 8 binary searches of a vector in lockstep with masked gathers. Bit-identical
// to the scalar path: the same counter-based streams, and rng_below's 64x64 multiply-high is
// exact from 32-bit products when the bound is below 2^32 (the caller checks n_items < 2^32).
#define RF_AVX512 __attribute__((target("avx512f,avx512dq")))
#ifndef RF_AVX512_VECTORS
// Vectors of 8 rows searched together: 4 keeps enough gathers in flight to hide the rows' load
// latency (measured on Zen 4: 1 vector ~1x the scalar 8-lane code, 2 ~1.5x, 4 ~2x).
#define RF_AVX512_VECTORS 4
#endif
#ifndef RF_AVX512_WEIGHTED_VECTORS
// Weighted draws wait on a longer chain after the row search (indices, gap target, guide, CDF search):
// 8 vectors (64 rows) keep more of it in flight (measured on Zen 4, 1 thread: ~10% over 4).
#define RF_AVX512_WEIGHTED_VECTORS 8
#endif

RF_AVX512 inline __m512i splitmix64_v(__m512i x) {
  x = _mm512_add_epi64(x, _mm512_set1_epi64(static_cast<long long>(0x9E3779B97F4A7C15ull)));
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 30)),
                         _mm512_set1_epi64(static_cast<long long>(0xBF58476D1CE4E5B9ull)));
  x = _mm512_mullo_epi64(_mm512_xor_si512(x, _mm512_srli_epi64(x, 27)),
                         _mm512_set1_epi64(static_cast<long long>(0x94D049BB133111EBull)));
  return _mm512_xor_si512(x, _mm512_srli_epi64(x, 31));
}

// rng_key(hseed-derived seed, stream) for the 8 consecutive streams first, first + 1, ..., first + 7;
// hseed is splitmix64(seed), hoisted by the caller.
RF_AVX512 inline __m512i rng_key_v(std::uint64_t hseed, std::int64_t first) {
  const __m512i stream = _mm512_add_epi64(_mm512_set1_epi64(first), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
  const __m512i mixed = _mm512_add_epi64(
      _mm512_mullo_epi64(stream, _mm512_set1_epi64(static_cast<long long>(0xD1B54A32D192ED03ull))),
      _mm512_set1_epi64(static_cast<long long>(0x8CB92BA72F3D8DD7ull)));
  return splitmix64_v(_mm512_xor_si512(_mm512_set1_epi64(static_cast<long long>(hseed)), mixed));
}

// rng_bits(key, counter) per lane.
RF_AVX512 inline __m512i rng_bits_v(__m512i key, std::int64_t counter) {
  const auto step = static_cast<long long>(static_cast<std::uint64_t>(counter) * 0x9E3779B97F4A7C15ull);
  return splitmix64_v(_mm512_add_epi64(key, _mm512_set1_epi64(step)));
}

// (bits * n) >> 64 for n < 2^32: bits * n = hi * n * 2^32 + lo * n, and hi * n + (lo * n >> 32)
// stays below 2^64.
RF_AVX512 inline __m512i mulhi_u32bound_v(__m512i bits, __m512i n) {
  const __m512i p_lo = _mm512_mul_epu32(bits, n);
  const __m512i p_hi = _mm512_mul_epu32(_mm512_srli_epi64(bits, 32), n);
  return _mm512_srli_epi64(_mm512_add_epi64(p_hi, _mm512_srli_epi64(p_lo, 32)), 32);
}

template <typename I>
RF_AVX512 inline __m512i gather_index_v(__mmask8 live, __m512i pos, const I* indices) {
  if constexpr (sizeof(I) == 4) {
    return _mm512_cvtepi32_epi64(_mm512_mask_i64gather_epi32(_mm256_setzero_si256(), live, pos, indices, 4));
  } else {
    return _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), live, pos, indices, 8);
  }
}

template <typename I, int V>
RF_AVX512 void uniform_lanes_avx512(const offset_t* indptr, const I* indices, std::int64_t n_items,
                                    const std::int64_t* users, std::int64_t b0, std::int64_t K, std::uint64_t hseed,
                                    std::int64_t row_offset, std::int64_t* out, std::atomic<std::int64_t>& first_bad,
                                    std::int64_t prefetch_end) {
  constexpr int L = 8 * V;
  prefetch_rows_ahead<L>(indptr, users, b0, prefetch_end, UniformProbe<I>{indices});
  const __m512i one = _mm512_set1_epi64(1);
  const __m512i zero = _mm512_setzero_si512();
  __m512i start[V], deg[V], bound[V], key[V];
  for (int v = 0; v < V; ++v) {
    const __m512i u = _mm512_loadu_si512(users + b0 + 8 * v);
    start[v] = _mm512_i64gather_epi64(u, indptr, 8);
    deg[v] = _mm512_sub_epi64(_mm512_i64gather_epi64(_mm512_add_epi64(u, one), indptr, 8), start[v]);
    const __m512i m = _mm512_sub_epi64(_mm512_set1_epi64(n_items), deg[v]);
    const __mmask8 empty = _mm512_cmplt_epi64_mask(m, one);
    if (empty) {
      for (int l = 0; l < 8; ++l)
        if (empty >> l & 1) record_failure(first_bad, b0 + 8 * v + l);
    }
    bound[v] = _mm512_mask_mov_epi64(m, empty, one);
    key[v] = rng_key_v(hseed, row_offset + b0 + 8 * v);
  }
  for (std::int64_t k = 0; k < K; ++k) {
    __m512i r[V], lo[V], n[V];
    for (int v = 0; v < V; ++v) {
      r[v] = mulhi_u32bound_v(rng_bits_v(key[v], k), bound[v]);
      lo[v] = zero;
      n[v] = deg[v];
    }
    for (;;) {
      __mmask8 any = 0;
      for (int v = 0; v < V; ++v) {
        // Lanes whose search is over (n == 0) neither load nor move: the gather and the update
        // are masked by `live`.
        const __mmask8 live = _mm512_cmpgt_epi64_mask(n[v], zero);
        const __m512i half = _mm512_srli_epi64(n[v], 1);
        const __m512i mid = _mm512_add_epi64(lo[v], half);
        const __m512i val = gather_index_v<I>(live, _mm512_add_epi64(start[v], mid), indices);
        const __mmask8 right = _mm512_mask_cmple_epi64_mask(live, _mm512_sub_epi64(val, mid), r[v]);
        lo[v] = _mm512_mask_add_epi64(lo[v], right, mid, one);
        n[v] = _mm512_mask_blend_epi64(right, half, _mm512_sub_epi64(_mm512_sub_epi64(n[v], half), one));
        any |= _mm512_cmpgt_epi64_mask(n[v], zero);
      }
      if (!any) break;
    }
    for (int v = 0; v < V; ++v) {
      const __m512i res = _mm512_add_epi64(r[v], lo[v]);
      if (K == 1) {
        _mm512_storeu_si512(out + b0 + 8 * v, res);
      } else {
        alignas(64) std::int64_t tmp[8];
        _mm512_store_si512(tmp, res);
        for (int l = 0; l < 8; ++l) out[(b0 + 8 * v + l) * K + k] = tmp[l];
      }
    }
  }
}

// weighted_lanes on V vectors of 8 rows: the same double arithmetic lane by lane (subtractions,
// additions, comparisons and the two products of rng_unit(bits) * mass, in the scalar order), so
// the draws are bit-identical; the rare boundary repairs run per lane in scalar code.
template <typename I, int V>
RF_AVX512 void weighted_lanes_avx512(const offset_t* indptr, const I* indices, std::int64_t n_items,
                                     const std::int64_t* users, std::int64_t b0, std::int64_t K, std::uint64_t hseed,
                                     std::int64_t row_offset, const double* cum, const double* keys,
                                     const std::int64_t* guide, std::int64_t M, double inv_h, std::int64_t* out,
                                     std::atomic<std::int64_t>& first_bad, std::int64_t prefetch_end) {
  constexpr int L = 8 * V;
  prefetch_rows_ahead<L>(indptr, users, b0, prefetch_end, WeightedProbe<false>{keys});
  const __m512i one = _mm512_set1_epi64(1);
  const __m512i zero = _mm512_setzero_si512();
  const __m512d zerod = _mm512_setzero_pd();
  // start: the row's first entry (indices); kst: its first key (keys + start + u, row_keys).
  __m512i start[V], kst[V], deg[V], key[V];
  __m512d mass[V];
  __mmask8 ok[V];
  for (int v = 0; v < V; ++v) {
    const __m512i u = _mm512_loadu_si512(users + b0 + 8 * v);
    start[v] = _mm512_i64gather_epi64(u, indptr, 8);
    deg[v] = _mm512_sub_epi64(_mm512_i64gather_epi64(_mm512_add_epi64(u, one), indptr, 8), start[v]);
    kst[v] = _mm512_add_epi64(start[v], u);
    mass[v] = _mm512_i64gather_pd(_mm512_add_epi64(kst[v], deg[v]), keys, 8);  // key_deg, the row's mass
    ok[v] = _mm512_cmp_pd_mask(mass[v], zerod, _CMP_GT_OQ);
    const __mmask8 bad = static_cast<__mmask8>(~ok[v]);
    if (bad) {
      for (int l = 0; l < 8; ++l)
        if (bad >> l & 1) record_failure(first_bad, b0 + 8 * v + l);
      deg[v] = _mm512_maskz_mov_epi64(ok[v], deg[v]);  // the lane runs on an empty row; dropped
      mass[v] = _mm512_maskz_mov_pd(ok[v], mass[v]);
    }
    key[v] = rng_key_v(hseed, row_offset + b0 + 8 * v);
  }
  const __m512d unit = _mm512_set1_pd(1.0 / 9007199254740992.0);
  const __m512d one_d = _mm512_set1_pd(1.0);
  const __m512d last_d = _mm512_set1_pd(static_cast<double>(M - 1));
  const __m512i n_items_v = _mm512_set1_epi64(n_items);
  for (std::int64_t k = 0; k < K; ++k) {
    __m512d t[V], ta[V];
    __m512i lo[V], n[V], a[V], m[V], next[V], prev[V];
    __mmask8 has_next[V], has_prev[V];
    for (int v = 0; v < V; ++v) {
      const __m512i bits = rng_bits_v(key[v], k);
      t[v] = _mm512_mul_pd(_mm512_mul_pd(_mm512_cvtepu64_pd(_mm512_srli_epi64(bits, 11)), unit), mass[v]);
      lo[v] = zero;
      n[v] = deg[v];
    }
    for (;;) {
      __mmask8 any = 0;
      for (int v = 0; v < V; ++v) {
        const __mmask8 live = _mm512_cmpgt_epi64_mask(n[v], zero);
        const __m512i half = _mm512_srli_epi64(n[v], 1);
        const __m512i mid = _mm512_add_epi64(lo[v], half);
        const __m512d c = _mm512_mask_i64gather_pd(zerod, live, _mm512_add_epi64(kst[v], mid), keys, 8);
        const __mmask8 right = _mm512_mask_cmp_pd_mask(live, c, t[v], _CMP_LE_OQ);
        lo[v] = _mm512_mask_add_epi64(lo[v], right, mid, one);
        n[v] = _mm512_mask_blend_epi64(right, half, _mm512_sub_epi64(_mm512_sub_epi64(n[v], half), one));
        any |= _mm512_cmpgt_epi64_mask(n[v], zero);
      }
      if (!any) break;
    }
    for (int v = 0; v < V; ++v) {
      // The row items on either side of the answer and gap_target: (t - key_{lo-1}) + cum[prev + 1].
      const __m512i pos = _mm512_add_epi64(start[v], lo[v]);
      has_next[v] = _mm512_cmplt_epi64_mask(lo[v], deg[v]);
      has_prev[v] = _mm512_cmpgt_epi64_mask(lo[v], zero);
      next[v] = gather_index_v<I>(has_next[v], pos, indices);
      prev[v] = gather_index_v<I>(has_prev[v], _mm512_sub_epi64(pos, one), indices);
      const __m512d kprev =
          _mm512_mask_i64gather_pd(zerod, has_prev[v], _mm512_add_epi64(kst[v], _mm512_sub_epi64(lo[v], one)), keys, 8);
      const __m512d cprev = _mm512_mask_i64gather_pd(zerod, has_prev[v], _mm512_add_epi64(prev[v], one), cum, 8);
      ta[v] = _mm512_mask_add_pd(t[v], has_prev[v], _mm512_sub_pd(t[v], kprev), cprev);
    }
    for (int v = 0; v < V; ++v) {
      const __m512d q = _mm512_mul_pd(ta[v], _mm512_set1_pd(inv_h));
      __m512i j = _mm512_cvttpd_epi64(q);
      j = _mm512_mask_mov_epi64(j, _mm512_cmp_pd_mask(q, last_d, _CMP_GE_OQ), _mm512_set1_epi64(M - 1));
      j = _mm512_mask_mov_epi64(j, _mm512_cmp_pd_mask(q, one_d, _CMP_LT_OQ), zero);
      a[v] = _mm512_i64gather_epi64(j, guide, 8);
      m[v] = _mm512_sub_epi64(_mm512_i64gather_epi64(_mm512_add_epi64(j, one), guide, 8), a[v]);
    }
    for (;;) {
      __mmask8 any = 0;
      for (int v = 0; v < V; ++v) {
        const __mmask8 live = _mm512_cmpgt_epi64_mask(m[v], zero);
        const __m512i half = _mm512_srli_epi64(m[v], 1);
        const __m512i mid = _mm512_add_epi64(a[v], half);
        const __m512d c = _mm512_mask_i64gather_pd(zerod, live, _mm512_add_epi64(mid, one), cum, 8);
        const __mmask8 right = _mm512_mask_cmp_pd_mask(live, c, ta[v], _CMP_LE_OQ);
        a[v] = _mm512_mask_add_epi64(a[v], right, mid, one);
        m[v] = _mm512_mask_blend_epi64(right, half, _mm512_sub_epi64(_mm512_sub_epi64(m[v], half), one));
        any |= _mm512_cmpgt_epi64_mask(m[v], zero);
      }
      if (!any) break;
    }
    for (int v = 0; v < V; ++v) {
      // The common case in vector form: guide_fixup leaves a unchanged (cum[a] <= ta < cum[a + 1])
      // and weighted_finish accepts it (a < n_items, positive weight, a after exactly lo row items
      // and not one of them). Only the other lanes take the scalar repair.
      const __mmask8 inside = _mm512_cmplt_epi64_mask(a[v], n_items_v);
      const __m512d ca = _mm512_i64gather_pd(a[v], cum, 8);
      const __m512d ca1 = _mm512_mask_i64gather_pd(zerod, inside, _mm512_add_epi64(a[v], one), cum, 8);
      __mmask8 good = ok[v] & inside;
      good &= static_cast<__mmask8>(_mm512_cmpeq_epi64_mask(a[v], zero) | _mm512_cmp_pd_mask(ca, ta[v], _CMP_NGT_UQ));
      good &= _mm512_cmp_pd_mask(ca1, ta[v], _CMP_NLE_UQ);
      good &= _mm512_cmp_pd_mask(_mm512_sub_pd(ca1, ca), zerod, _CMP_GT_OQ);
      good &= static_cast<__mmask8>(~has_next[v] | _mm512_cmpneq_epi64_mask(next[v], a[v]));
      good &= static_cast<__mmask8>(~has_prev[v] | _mm512_cmplt_epi64_mask(prev[v], a[v]));
      if (K == 1) {
        _mm512_mask_storeu_epi64(out + b0 + 8 * v, good, a[v]);
      } else {
        alignas(64) std::int64_t a_g[8];
        _mm512_store_si512(a_g, a[v]);
        for (int l = 0; l < 8; ++l)
          if (good >> l & 1) out[(b0 + 8 * v + l) * K + k] = a_g[l];
      }
      const __mmask8 rest = ok[v] & static_cast<__mmask8>(~good);
      if (!rest) continue;
      alignas(64) std::int64_t lo_s[8], a_s[8], st_s[8], dg_s[8];
      alignas(64) double ta_s[8];
      _mm512_store_si512(lo_s, lo[v]);
      _mm512_store_si512(a_s, a[v]);
      _mm512_store_si512(st_s, start[v]);
      _mm512_store_si512(dg_s, deg[v]);
      _mm512_store_pd(ta_s, ta[v]);
      for (int l = 0; l < 8; ++l) {
        if (!(rest >> l & 1)) continue;
        const std::int64_t x = guide_fixup(cum, n_items, a_s[l], ta_s[l]);
        const std::int64_t got = weighted_finish(cum, n_items, indices + st_s[l], dg_s[l], lo_s[l], x);
        if (got < 0) record_failure(first_bad, b0 + 8 * v + l);
        out[(b0 + 8 * v + l) * K + k] = got;
      }
    }
  }
}

// FeistelPermutation(p0 + i) for i = 0..7, the scalar arithmetic lane by lane (64-bit products
// wrap the same way), cycle walking masked per lane.
RF_AVX512 inline __m512i feistel_once_v(const FeistelPermutation& P, __m512i x) {
  int a = P.wa, b = P.wb;
  __m512i L = _mm512_srl_epi64(x, _mm_cvtsi32_si128(b));
  __m512i R = _mm512_and_si512(x, _mm512_set1_epi64(static_cast<long long>((std::uint64_t{1} << b) - 1)));
  for (int r = 0; r < 4; ++r) {
    __m512i h = _mm512_mullo_epi64(_mm512_xor_si512(R, _mm512_set1_epi64(static_cast<long long>(P.keys[r]))),
                                   _mm512_set1_epi64(static_cast<long long>(0xD1B54A32D192ED03ull)));
    h = _mm512_xor_si512(h, _mm512_srli_epi64(h, 29));
    h = _mm512_mullo_epi64(h, _mm512_set1_epi64(static_cast<long long>(0x94D049BB133111EBull)));
    const __m512i f = _mm512_and_si512(_mm512_srli_epi64(h, 32),
                                       _mm512_set1_epi64(static_cast<long long>((std::uint64_t{1} << a) - 1)));
    const __m512i nr = _mm512_xor_si512(L, f);
    L = R;
    R = nr;
    const int t = a;
    a = b;
    b = t;
  }
  return _mm512_or_si512(_mm512_sll_epi64(L, _mm_cvtsi32_si128(b)), R);
}

RF_AVX512 void feistel8(const FeistelPermutation& P, std::int64_t p0, std::int64_t* e) {
  const __m512i n = _mm512_set1_epi64(static_cast<long long>(P.n));
  __m512i y = feistel_once_v(P, _mm512_add_epi64(_mm512_set1_epi64(p0), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0)));
  for (__mmask8 walk = _mm512_cmpge_epu64_mask(y, n); walk; walk = _mm512_cmpge_epu64_mask(y, n)) {
    y = _mm512_mask_mov_epi64(y, walk, feistel_once_v(P, y));
  }
  _mm512_storeu_si512(e, y);
}

bool cpu_has_avx512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq");
  return yes;
}
#else
bool cpu_has_avx512() { return false; }
#endif

// The uniform kernel's instruction set: RF_ISA_AUTO picks AVX-512 where the CPU has it (and
// n_items < 2^32); tests force each path to compare them. The initial value comes from the
// environment variable RECFAST_SAMPLING_ISA (auto, scalar or avx512).
enum : int { RF_ISA_AUTO = 0, RF_ISA_SCALAR = 1, RF_ISA_AVX512 = 2 };

int isa_from_name(const char* name) {
  if (name == nullptr || std::strcmp(name, "auto") == 0 || name[0] == '\0') return RF_ISA_AUTO;
  if (std::strcmp(name, "scalar") == 0) return RF_ISA_SCALAR;
  if (std::strcmp(name, "avx512") == 0) return RF_ISA_AVX512;
  return -1;
}

std::atomic<int>& isa_setting() {
  static std::atomic<int> setting{[] {
    const int v = isa_from_name(std::getenv("RECFAST_SAMPLING_ISA"));
    return v < 0 || (v == RF_ISA_AVX512 && !cpu_has_avx512()) ? RF_ISA_AUTO : v;
  }()};
  return setting;
}

}  // namespace

const char* sampling_isa() {
  switch (isa_setting().load()) {
    case RF_ISA_SCALAR:
      return "scalar";
    case RF_ISA_AVX512:
      return "avx512";
    default:
      return "auto";
  }
}

bool set_sampling_isa(const char* name) {
  const int v = isa_from_name(name);
  if (v < 0 || (v == RF_ISA_AVX512 && !cpu_has_avx512())) return false;
  isa_setting().store(v);
  return true;
}

bool sampling_avx512_available() { return cpu_has_avx512(); }

void build_cdf_guide(const double* cum, std::int64_t n_items, std::int64_t* guide) {
  // M buckets of equal mass; see guide_bracket.
  const std::int64_t M = cdf_guide_buckets(n_items);
  const double total = cum[n_items];
  const double h = total / static_cast<double>(M);
  std::int64_t a = 0;
  for (std::int64_t j = 0; j <= M; ++j) {
    const double v = static_cast<double>(j) * h;
    while (a < n_items && cum[a + 1] <= v) ++a;
    guide[j] = a;
  }
}

namespace {

// How one call samples its rows: which kernel, and everything it reads. range() samples batch
// positions [b, e) on the calling thread; every path draws the same items for a position, so
// any split of the batch into ranges (and any thread count) gives the same output.
template <typename I>
struct Plan {
  enum Mode { kUniformAvx512, kUniformLanes, kWeightedAvx512, kWeightedLanes, kRows };
  const offset_t* indptr;
  const I* indices;
  std::int64_t n_items;
  const std::int64_t* users;
  std::int64_t K;
  std::uint64_t seed, hseed;
  std::int64_t row_offset;
  bool replace;
  const double* cum;
  const double* keys;
  const std::int64_t* guide;
  std::int64_t M;
  double inv_h;
  std::int64_t* out;
  std::atomic<std::int64_t>* first_bad;
  Mode mode;

  int lanes() const {
#if RF_SAMPLING_AVX512
    if (mode == kUniformAvx512) return 8 * RF_AVX512_VECTORS;
    if (mode == kWeightedAvx512) return 8 * RF_AVX512_WEIGHTED_VECTORS;
#endif
    return mode == kRows ? 1 : 8;
  }

  // The rows of [b0, b1), a multiple of L = lanes() of them, L at a time (prefetching rows below
  // prefetch_end).
  void chunks(std::int64_t b0, std::int64_t b1, std::int64_t prefetch_end) const {
    const std::int64_t L = lanes();
    switch (mode) {
#if RF_SAMPLING_AVX512
      case kUniformAvx512:
        for (; b0 < b1; b0 += L) {
          uniform_lanes_avx512<I, RF_AVX512_VECTORS>(indptr, indices, n_items, users, b0, K, hseed, row_offset, out,
                                                     *first_bad, prefetch_end);
        }
        return;
      case kWeightedAvx512:
        for (; b0 < b1; b0 += L) {
          weighted_lanes_avx512<I, RF_AVX512_WEIGHTED_VECTORS>(indptr, indices, n_items, users, b0, K, hseed,
                                                               row_offset, cum, keys, guide, M, inv_h, out,
                                                               *first_bad, prefetch_end);
        }
        return;
#endif
      case kUniformLanes:
        for (; b0 < b1; b0 += L) {
          uniform_lanes<I, 8>(indptr, indices, n_items, users, b0, K, seed, row_offset, out, *first_bad, prefetch_end);
        }
        return;
      case kWeightedLanes:
        weighted_lanes<I, 8>(indptr, indices, n_items, users, b0, b1, K, seed, row_offset, cum, keys, guide, M, inv_h,
                             out, *first_bad, prefetch_end);
        return;
      default:
        return;
    }
  }

  // One row by the per-row code (every mode's draws for a row equal these).
  void row(std::int64_t b, std::vector<std::int64_t>& local_row, std::vector<double>& local_G) const {
    if (K == 0) return;
    const std::int64_t u = users[b];
    const offset_t start = indptr[u];
    const std::int64_t deg = indptr[u + 1] - start;
    const I* r = indices + start;
    std::int64_t* o = out + b * K;
    const std::uint64_t key = rng_key(seed, static_cast<std::uint64_t>(row_offset + b));
    if (cum == nullptr) {
      const std::int64_t m = n_items - deg;
      if (m < (replace ? 1 : K)) {
        record_failure(*first_bad, b);
        return;
      }
      if (replace) {
        for (std::int64_t k = 0; k < K; ++k) o[k] = uniform_negative(key, static_cast<std::uint64_t>(k), r, deg, n_items);
      } else {
        floyd_ranks(key, m, K, o);
        for (std::int64_t k = 0; k < K; ++k) o[k] = kth_unseen(r, deg, o[k]);
      }
      return;
    }
    const double* rowk = row_keys(keys, start, u);
    if (replace) {
      const double mass = rowk[deg];
      if (!(mass > 0.0)) {
        record_failure(*first_bad, b);
        return;
      }
      for (std::int64_t k = 0; k < K; ++k) {
        const double t = rng_unit(rng_bits(key, static_cast<std::uint64_t>(k))) * mass;
        o[k] = guide != nullptr ? weighted_unseen_guided(cum, n_items, r, rowk, deg, t, guide, M, inv_h)
                                : weighted_unseen(cum, n_items, r, rowk, deg, t);
        if (o[k] < 0) record_failure(*first_bad, b);
      }
      return;
    }
    // Without replacement: each drawn item joins a private copy of the row and of its prefix
    // local_G[j] = P_j, removing its mass. From the keys, P_j = cum[row[j]] - key_j (j < deg) and
    // P_deg = cum[n_items] - key_deg.
    local_row.assign(r, r + deg);
    local_G.resize(static_cast<std::size_t>(deg + 1));
    for (std::int64_t j = 0; j < deg; ++j) local_G[j] = cum[static_cast<std::int64_t>(r[j])] - rowk[j];
    local_G[deg] = cum[n_items] - rowk[deg];
    for (std::int64_t k = 0; k < K; ++k) {
      const std::int64_t len = static_cast<std::int64_t>(local_row.size());
      const double mass = cum[n_items] - (local_G[len] - local_G[0]);
      if (!(mass > 1e-12 * cum[n_items])) {
        record_failure(*first_bad, b);
        break;
      }
      const double t = rng_unit(rng_bits(key, static_cast<std::uint64_t>(k))) * mass;
      const std::int64_t x = weighted_unseen_prefix(cum, n_items, local_row.data(), local_G.data(), len, t);
      o[k] = x;
      if (x < 0) {
        record_failure(*first_bad, b);
        break;
      }
      const std::int64_t pos = row_below(local_row.data(), len, x);
      const double w = cum[x + 1] - cum[x];
      local_row.insert(local_row.begin() + pos, x);
      local_G.insert(local_G.begin() + pos + 1, local_G[pos] + w);
      for (std::int64_t q = pos + 2; q < len + 2; ++q) local_G[q] += w;
    }
  }

  void range(std::int64_t b, std::int64_t e) const {
    const std::int64_t L = lanes();
    if (L > 1) {
      const std::int64_t full_end = b + (e - b) / L * L;
      chunks(b, full_end, e);
      b = full_end;
    }
    std::vector<std::int64_t> local_row;
    std::vector<double> local_G;
    for (; b < e; ++b) row(b, local_row, local_G);
  }
};

// Chooses the kernel. `guide` is the caller's guide table over cum (n_items + 1 entries) or
// nullptr; a large weighted batch without one builds it into `own_guide`.
template <typename I>
Plan<I> make_plan(const offset_t* indptr, const I* indices, std::int64_t n_items, const std::int64_t* users,
                  std::int64_t batch, std::int64_t K, std::uint64_t seed, std::int64_t row_offset, bool replace,
                  const double* cum, const double* keys, const std::int64_t* guide,
                  std::int64_t* out, std::atomic<std::int64_t>* first_bad, std::vector<std::int64_t>& own_guide) {
  Plan<I> p{indptr, indices, n_items, users, K, seed, splitmix64(seed), row_offset, replace, cum, keys, nullptr,
            0, 0.0,
            out, first_bad, Plan<I>::kRows};
  if (K == 0 || !replace) return p;
  const bool avx512 = isa_setting().load() != RF_ISA_SCALAR && cpu_has_avx512();
  if (cum == nullptr) {
    p.mode = avx512 && static_cast<std::uint64_t>(n_items) < (std::uint64_t{1} << 32) ? Plan<I>::kUniformAvx512
                                                                                       : Plan<I>::kUniformLanes;
    return p;
  }
  // Weighted with replacement: a guide table over the global CDF (M buckets of equal mass, one
  // per 16 items) narrows its O(log n_items) search to a bucket's few items, and rows go through
  // the lockstep lanes. Without a cached guide one is built here (O(n_items)) when the batch's
  // draws repay it; smaller batches take the per-row code. The output is the same either way.
  if (n_items <= 1 || !(cum[n_items] > 0.0)) return p;
  const std::int64_t M = cdf_guide_buckets(n_items);
  if (guide == nullptr) {
    if (batch * K < n_items / 4 + 64) return p;
    own_guide.resize(static_cast<std::size_t>(M + 1));
    build_cdf_guide(cum, n_items, own_guide.data());
    guide = own_guide.data();
  }
  p.guide = guide;
  p.M = M;
  p.inv_h = static_cast<double>(M) / cum[n_items];
  p.mode = avx512 ? Plan<I>::kWeightedAvx512 : Plan<I>::kWeightedLanes;
  return p;
}

}  // namespace

template <typename I>
std::int64_t sample_negatives(const offset_t* indptr, const I* indices, std::int64_t /*n_users*/,
                              std::int64_t n_items, const std::int64_t* users, std::int64_t batch,
                              std::int64_t num_negatives, std::uint64_t seed, std::int64_t row_offset, bool replace,
                              const double* cum, const double* keys,
                              std::int64_t* out, int num_threads, const std::int64_t* guide) {
  std::atomic<std::int64_t> first_bad{batch};
  std::vector<std::int64_t> own_guide;
  const Plan<I> p = make_plan<I>(indptr, indices, n_items, users, batch, num_negatives, seed, row_offset, replace, cum,
                                 keys, guide, out, &first_bad, own_guide);
  const std::int64_t L = p.lanes();
  if (L > 1) {
    // Rows in chunks of L (the lockstep searches), handed out up to 32 chunks at a time (the
    // weighted lanes pipeline the chunks of a range), fewer when the batch is small so that every
    // thread gets some; the last batch % L rows go one by one.
    const int nt = resolve_threads(num_threads);
    const std::int64_t full = batch / L * L, span = L * chunks_per_share(full / L, nt, 32);
    const std::int64_t n_spans = (full + span - 1) / span;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (std::int64_t c = 0; c < n_spans; ++c) p.chunks(c * span, std::min(c * span + span, full), full);
    p.range(full, batch);
  } else {
#pragma omp parallel num_threads(resolve_threads(num_threads))
    {
      std::vector<std::int64_t> local_row;
      std::vector<double> local_G;
#pragma omp for schedule(static)
      for (std::int64_t b = 0; b < batch; ++b) p.row(b, local_row, local_G);
    }
  }
  const std::int64_t bad = first_bad.load();
  return bad == batch ? -1 : bad;
}

namespace {

// Where batch position b's entry comes from: fill(b, n, e) writes the entries of positions
// [b, b + n).
struct ArrayOrder {
  const std::int64_t* order;
  void fill(std::int64_t b, std::int64_t n, std::int64_t* e) const {
    for (std::int64_t i = 0; i < n; ++i) e[i] = order[b + i];
  }
};

struct IdentityOrder {
  std::int64_t start;
  void fill(std::int64_t b, std::int64_t n, std::int64_t* e) const {
    for (std::int64_t i = 0; i < n; ++i) e[i] = start + b + i;
  }
};

struct FeistelOrder {
  FeistelPermutation perm;
  std::int64_t start;
  bool avx512;
  void fill(std::int64_t b, std::int64_t n, std::int64_t* e) const {
    std::int64_t i = 0;
#if RF_SAMPLING_AVX512
    if (avx512) {
      for (; i + 8 <= n; i += 8) feistel8(perm, start + b + i, e + i);
    }
#endif
    for (; i < n; ++i) e[i] = static_cast<std::int64_t>(perm(static_cast<std::uint64_t>(start + b + i)));
  }
};

// A loader's batch in one parallel region: blocks of consecutive positions, each gathered (users,
// items) and then sampled by the same thread while its users are in cache.
template <typename I, typename Order>
std::int64_t triples_impl(const offset_t* indptr, const I* indices, std::int64_t n_items, const std::int64_t* row_of,
                          const Order& order, std::int64_t batch, std::int64_t K, std::uint64_t seed,
                          std::int64_t row_offset, bool replace, const double* cum, const double* keys,
                          const std::int64_t* guide, std::int64_t* users_out,
                          std::int64_t* items_out, std::int64_t* out, int num_threads) {
  std::atomic<std::int64_t> first_bad{batch};
  std::vector<std::int64_t> own_guide;
  const Plan<I> p = make_plan<I>(indptr, indices, n_items, users_out, batch, K, seed, row_offset, replace, cum, keys,
                                 guide, out, &first_bad, own_guide);
  // Blocks of up to 2,048 positions, a multiple of every kernel's lane count (64 rows at most),
  // smaller when the batch is small so that every thread gets some.
  constexpr std::int64_t group = 64;
#if RF_SAMPLING_AVX512
  static_assert(group % (8 * RF_AVX512_VECTORS) == 0 && group % (8 * RF_AVX512_WEIGHTED_VECTORS) == 0,
                "blocks must hold whole chunks of lanes");
#endif
  const int nt = resolve_threads(num_threads);
  const std::int64_t block = group * chunks_per_share(batch / group, nt, 2048 / group);
  const std::int64_t n_blocks = (batch + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (std::int64_t c = 0; c < n_blocks; ++c) {
    const std::int64_t b0 = c * block;
    const std::int64_t b1 = b0 + block < batch ? b0 + block : batch;
    // The entries come in random order: compute (and prefetch) a group of them before gathering,
    // so that the gathers' cache misses overlap.
    for (std::int64_t g = b0; g < b1; g += group) {
      const std::int64_t n = g + group < b1 ? group : b1 - g;
      std::int64_t e[group];
      order.fill(g, n, e);
      for (std::int64_t i = 0; i < n; ++i) {
        __builtin_prefetch(row_of + e[i]);
        __builtin_prefetch(indices + e[i]);
      }
      for (std::int64_t i = 0; i < n; ++i) {
        users_out[g + i] = row_of[e[i]];
        items_out[g + i] = static_cast<std::int64_t>(indices[e[i]]);
      }
    }
    if (K > 0) p.range(b0, b1);
  }
  const std::int64_t bad = first_bad.load();
  return bad == batch ? -1 : bad;
}

}  // namespace

template <typename I>
std::int64_t sample_triples(const offset_t* indptr, const I* indices, std::int64_t /*n_users*/, std::int64_t n_items,
                            const std::int64_t* row_of, const std::int64_t* order, std::int64_t batch,
                            std::int64_t num_negatives, std::uint64_t seed, std::int64_t row_offset, bool replace,
                            const double* cum, const double* keys,
                            std::int64_t* users_out, std::int64_t* items_out, std::int64_t* out, int num_threads,
                            const std::int64_t* guide) {
  const ArrayOrder ord{order};
  return triples_impl<I>(indptr, indices, n_items, row_of, ord, batch, num_negatives, seed, row_offset, replace, cum,
                         keys, guide, users_out, items_out, out, num_threads);
}

template <typename I>
std::int64_t sample_epoch_triples(const offset_t* indptr, const I* indices, std::int64_t /*n_users*/,
                                  std::int64_t n_items, const std::int64_t* row_of, std::int64_t nnz, bool shuffle,
                                  std::uint64_t order_seed, std::int64_t start, std::int64_t batch,
                                  std::int64_t num_negatives, std::uint64_t seed, bool replace, const double* cum,
                                  const double* keys, const std::int64_t* guide,
                                  std::int64_t* users_out, std::int64_t* items_out, std::int64_t* out,
                                  int num_threads) {
  if (!shuffle) {
    const IdentityOrder ord{start};
    return triples_impl<I>(indptr, indices, n_items, row_of, ord, batch, num_negatives, seed, start, replace, cum, keys,
                           guide, users_out, items_out, out, num_threads);
  }
  const FeistelOrder ord{FeistelPermutation(static_cast<std::uint64_t>(nnz), order_seed), start,
                         isa_setting().load() != RF_ISA_SCALAR && cpu_has_avx512()};
  return triples_impl<I>(indptr, indices, n_items, row_of, ord, batch, num_negatives, seed, start, replace, cum, keys,
                         guide, users_out, items_out, out, num_threads);
}

#define RF_INSTANTIATE(I)                                                                                              \
  template std::int64_t sample_negatives<I>(const offset_t*, const I*, std::int64_t, std::int64_t,                     \
                                            const std::int64_t*, std::int64_t, std::int64_t, std::uint64_t,            \
                                            std::int64_t, bool, const double*, const double*,                          \
                                            std::int64_t*, int, const std::int64_t*);                                  \
  template std::int64_t sample_triples<I>(const offset_t*, const I*, std::int64_t, std::int64_t, const std::int64_t*,  \
                                          const std::int64_t*, std::int64_t, std::int64_t, std::uint64_t,              \
                                          std::int64_t, bool, const double*, const double*,                            \
                                          std::int64_t*, std::int64_t*, std::int64_t*, int, const std::int64_t*);      \
  template std::int64_t sample_epoch_triples<I>(const offset_t*, const I*, std::int64_t, std::int64_t,                 \
                                                const std::int64_t*, std::int64_t, bool, std::uint64_t, std::int64_t,  \
                                                std::int64_t, std::int64_t, std::uint64_t, bool, const double*,        \
                                                const double*, const std::int64_t*,                                    \
                                                std::int64_t*, std::int64_t*, std::int64_t*, int);
RF_INSTANTIATE(std::int32_t)
RF_INSTANTIATE(std::int64_t)
#undef RF_INSTANTIATE

}  // namespace recfast::cpu
