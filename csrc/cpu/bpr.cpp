#include "recfast/bpr.h"

#include <algorithm>
#include <atomic>
#include <immintrin.h>
#include <cstring>
#include <type_traits>
#include <vector>

#include "recfast/parallel.h"
#include "recfast/sampling.h"

namespace recfast::cpu {

namespace {

template <typename T>
__attribute__((always_inline)) inline T dot(const T* a, const T* b, std::int64_t d) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (std::int64_t t = 0; t < d; ++t) s += a[t] * b[t];
  return s;
}

template <typename T>
inline T sqnorm(const T* a, std::int64_t d) {
  return dot(a, a, d);
}

// Rows are gathered at random: each loop prefetches the rows of example b + kAhead, so that their
// cache misses overlap the arithmetic of the examples in between.
constexpr std::int64_t kAhead = 8;

template <typename T>
inline void prefetch_row(const T* p, std::int64_t d, bool write = false) {
  const std::int64_t bytes = d * static_cast<std::int64_t>(sizeof(T));
  for (std::int64_t o = 0; o < bytes; o += 64) {
    if (write) {
      __builtin_prefetch(reinterpret_cast<const char*>(p) + o, 1, 3);
    } else {
      __builtin_prefetch(reinterpret_cast<const char*>(p) + o, 0, 3);
    }
  }
}

}  // namespace

// softplus(-x) and sigmoid(-x) from one exponential e = exp(-|x|): softplus(-x) = max(-x, 0) +
// log1p(e), sigmoid(-x) = e / (1 + e) for x >= 0 and 1 / (1 + e) otherwise. float for float
// tables (single-precision libm: the double versions cost as much as the rest of the forward).
// log1p(e) for e in [0, 1] by Kahan's trick, log(u) * e / (u - 1) with u = 1 + e (a few ulp): glibc's
// log1pf costs several times its logf and was a third of the forward kernel.
inline float log1p_unit(float e) {
  const float u = 1.0f + e;
  return u == 1.0f ? e : std::log(u) * (e / (u - 1.0f));
}

inline void neg_logsigmoid(float x, float* sp, float* sg) {
  const float e = std::exp(-std::fabs(x));
  *sp = (x < 0.0f ? -x : 0.0f) + log1p_unit(e);
  *sg = x >= 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
}
inline void neg_logsigmoid(double x, double* sp, double* sg) {
  const double e = std::exp(-std::fabs(x));
  *sp = (x < 0.0 ? -x : 0.0) + std::log1p(e);
  *sg = x >= 0.0 ? e / (1.0 + e) : 1.0 / (1.0 + e);
}

// Threads for `work` units (about 0.4 ns each on one core: an element of a row product, or ~10
// zeroed floats): one per kGrain units (~50 us), at most num_threads. On a quiet 2-core machine a
// batch of 2,048 (with its gradient tables to zero) runs 1.1-1.5x faster on both cores than on one
// (A/B, same process); on a loaded one a descheduled worker can hold the join for a time slice, so
// tiny calls stay on the calling thread.
constexpr std::int64_t kGrain = std::int64_t{1} << 17;

inline int grain_threads(int num_threads, std::int64_t work) {
  return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(resolve_threads(num_threads), work / kGrain)));
}

// The generic kernels, for double tables (gradcheck): scalar loops over d.
template <typename T>
void forward_generic(const T* U, const T* V, const T* bias, std::int64_t d, const std::int64_t* users,
                     const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2,
                     T* loss, T* coef, int num_threads) {
  const int threads = grain_threads(num_threads, B * K * (d + 32));  // + 32: the exp and log
#pragma omp parallel for schedule(static) num_threads(threads)
  for (std::int64_t b = 0; b < B; ++b) {
    if (b + kAhead < B) {
      const std::int64_t a = b + kAhead;
      prefetch_row(U + users[a] * d, d);
      prefetch_row(V + pos[a] * d, d);
      for (std::int64_t k = 0; k < K; ++k) prefetch_row(V + neg[a * K + k] * d, d);
    }
    const T* u = U + users[b] * d;
    const T* vi = V + pos[b] * d;
    const T ui = dot(u, vi, d) + (bias ? bias[pos[b]] : T(0));
    double total = 0.0, neg_sq = 0.0;
    for (std::int64_t k = 0; k < K; ++k) {
      const std::int64_t j = neg[b * K + k];
      const T* vj = V + j * d;
      const T x = ui - (dot(u, vj, d) + (bias ? bias[j] : T(0)));
      T sp, sg;
      neg_logsigmoid(x, &sp, &sg);
      total += static_cast<double>(sp);
      coef[b * K + k] = -sg;
      if (l2 != 0.0) neg_sq += static_cast<double>(sqnorm(vj, d));
    }
    double l = total / static_cast<double>(K);
    if (l2 != 0.0) {
      l += 0.5 * l2 * (static_cast<double>(sqnorm(u, d)) + static_cast<double>(sqnorm(vi, d)) + neg_sq / K);
    }
    loss[b] = static_cast<T>(l);
  }
}

// The thread that accumulates a row's gradient: a multiplicative hash of the row scaled to
// [0, threads) (two multiplies; a modulo per row and per thread cost as much as the arithmetic).
inline int row_owner(std::int64_t row, std::uint64_t threads) {
  const std::uint64_t h = static_cast<std::uint32_t>(static_cast<std::uint64_t>(row) * 0x9E3779B97F4A7C15ull >> 32);
  return static_cast<int>((h * threads) >> 32);
}

// Thread tid's share [lo, hi) of n elements, cut at multiples of 16 (whole cache lines of float).
inline void share(std::int64_t n, int tid, int threads, std::int64_t* lo, std::int64_t* hi) {
  const std::int64_t lines = (n + 15) / 16;
  *lo = std::min(n, lines * tid / threads * 16);
  *hi = std::min(n, lines * (tid + 1) / threads * 16);
}

// The backward's work units: its rows, and the floats it zeroes (gV == gU: one shared table).
template <typename T>
std::int64_t backward_work(std::int64_t B, std::int64_t K, std::int64_t d, const T* gU, const T* gV, const T* gbias,
                           std::int64_t zero_u, std::int64_t zero_v) {
  const std::int64_t zero_total = zero_u * d + (gV != gU ? zero_v * d : 0) + (gbias ? zero_v : 0);
  return B * (K + 2) * (d + 8) + zero_total / 8;
}

// Thread tid's contiguous share of the first zero_u rows of gU, zero_v rows of gV and zero_v
// entries of gbias. In the scatter's own region: one fork instead of a torch fill per table; the
// caller's barrier then orders the zeros before every row's accumulation (rows are owned by hash,
// not by share).
template <typename T>
void zero_share(T* gU, T* gV, T* gbias, std::int64_t d, std::int64_t zero_u, std::int64_t zero_v, int tid,
                int threads) {
  std::int64_t lo, hi;
  share(zero_u * d, tid, threads, &lo, &hi);
  if (hi > lo) std::memset(gU + lo, 0, static_cast<std::size_t>(hi - lo) * sizeof(T));
  if (gV != gU) {
    share(zero_v * d, tid, threads, &lo, &hi);
    if (hi > lo) std::memset(gV + lo, 0, static_cast<std::size_t>(hi - lo) * sizeof(T));
  }
  if (gbias) {
    share(zero_v, tid, threads, &lo, &hi);
    if (hi > lo) std::memset(gbias + lo, 0, static_cast<std::size_t>(hi - lo) * sizeof(T));
  }
}

template <typename T>
void backward_generic(const T* U, const T* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                      const std::int64_t* neg, std::int64_t B, std::int64_t K, const T* coef, const T* scale,
                      std::int64_t scale_stride, double l2, const std::int64_t* urow, const std::int64_t* prow,
                      const std::int64_t* nrow, T* gU, T* gV, T* gbias, std::int64_t zero_u, std::int64_t zero_v,
                      int num_threads) {
  const int threads = grain_threads(num_threads, backward_work(B, K, d, gU, gV, gbias, zero_u, zero_v));
  const T invK = T(1) / static_cast<T>(K);
  const T l2t = static_cast<T>(l2);
  const std::uint64_t nt = static_cast<std::uint64_t>(threads);
#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_id();
    if (zero_u || zero_v) {
      zero_share(gU, gV, gbias, d, zero_u, zero_v, tid, threads);
#pragma omp barrier
    }
    for (std::int64_t b = 0; b < B; ++b) {
      if (b + kAhead < B) {
        // the gradient rows this thread owns, and the table rows they need
        const std::int64_t a = b + kAhead;
        const bool pu = threads == 1 || row_owner(urow[a], nt) == tid;
        const bool pp = threads == 1 || row_owner(prow[a], nt) == tid;
        bool any = pu || pp;
        if (pu) prefetch_row(gU + urow[a] * d, d, true);
        if (pp) prefetch_row(gV + prow[a] * d, d, true);
        for (std::int64_t k = 0; k < K; ++k) {
          if (threads == 1 || row_owner(nrow[a * K + k], nt) == tid) {
            prefetch_row(gV + nrow[a * K + k] * d, d, true);
            any = true;
          }
        }
        if (any) {
          prefetch_row(U + users[a] * d, d);
          prefetch_row(V + pos[a] * d, d);
          for (std::int64_t k = 0; k < K; ++k) prefetch_row(V + neg[a * K + k] * d, d);
        }
      }
      const bool own_u = threads == 1 || row_owner(urow[b], nt) == tid;
      const bool own_p = threads == 1 || row_owner(prow[b], nt) == tid;
      bool own_n = threads == 1;
      for (std::int64_t k = 0; k < K && !own_n; ++k) own_n = row_owner(nrow[b * K + k], nt) == tid;
      if (!own_u && !own_p && !own_n) continue;
      const T s = scale[b * scale_stride];
      const T* u = U + users[b] * d;
      const T* vi = V + pos[b] * d;
      T csum = 0;
      for (std::int64_t k = 0; k < K; ++k) csum += coef[b * K + k];
      csum *= invK;
      if (own_u) {
        // d/du = (1/K) sum_k c_k (v_i - v_jk) + l2 u
        T* g = gU + urow[b] * d;
#pragma omp simd
        for (std::int64_t t = 0; t < d; ++t) g[t] += s * (csum * vi[t] + l2t * u[t]);
        for (std::int64_t k = 0; k < K; ++k) {
          const T ck = s * coef[b * K + k] * invK;
          const T* vj = V + neg[b * K + k] * d;
#pragma omp simd
          for (std::int64_t t = 0; t < d; ++t) g[t] -= ck * vj[t];
        }
      }
      if (own_p) {
        T* g = gV + prow[b] * d;
#pragma omp simd
        for (std::int64_t t = 0; t < d; ++t) g[t] += s * (csum * u[t] + l2t * vi[t]);
        if (gbias) gbias[prow[b]] += s * csum;
      }
      for (std::int64_t k = 0; k < K; ++k) {
        const std::int64_t r = nrow[b * K + k];
        if (threads != 1 && row_owner(r, nt) != tid) continue;
        const T ck = s * coef[b * K + k] * invK;
        const T lk = s * l2t * invK;
        const T* vj = V + neg[b * K + k] * d;
        T* g = gV + r * d;
#pragma omp simd
        for (std::int64_t t = 0; t < d; ++t) g[t] += -ck * u[t] + lk * vj[t];
        if (gbias) gbias[r] -= ck;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Fused SGD (bpr_sgd_step, bpr_sgd_epoch)
//
// One body, written on 16-float vectors (GCC vector extensions) with explicit fused multiply-adds,
// is inlined into three wrappers compiled for different instruction sets and picked at run time:
// portable x86-64, AVX2+FMA, AVX-512. GCC contracts a * b + c only where the target has FMA, so the
// body never writes a * b + c: every multiply-add is an explicit fma, and the other products feed
// no addition, hence the variants round identically. Within a variant, fixed-width copies for
// d = 32, 64, 128 keep the three rows in registers; other widths run the generic loop (with a
// zero-padded tail, which adds exact zeros).
//
// Per thread, the positions run through a software pipeline so that the memory accesses of a
// position are issued several positions before its arithmetic:
//   stage A (p + kLagA): entry e = order(p); prefetch its user and item ids;
//   stage B (p + kLagB): read them, the user's row extent and the K negative ranks; prefetch the
//                        user's and the positive's embedding rows and the first levels of the
//                        binary search in the user's row;
//   stage B2 (p + kLagB2): the first levels of the search for each rank (kth_unseen's result, its
//                        selects written as masked adds); prefetch the window of the row left;
//   stage C (p + kLagC): finish the search: the negative item; prefetch the negatives' rows;
//   stage D (p):         score and update.
// ---------------------------------------------------------------------------------------------

namespace {

// The vector helpers are always inlined, so no vector crosses a call boundary (GCC warns that
// 64-byte vectors change the ABI where AVX-512 is off; no call passes one).
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float vf16 __attribute__((vector_size(64)));
typedef float vf16u __attribute__((vector_size(64), aligned(4), may_alias));
typedef std::int32_t vi16 __attribute__((vector_size(64)));

RF_INLINE vf16 vload(const float* p) { return *reinterpret_cast<const vf16u*>(p); }
RF_INLINE void vstore(float* p, vf16 v) { *reinterpret_cast<vf16u*>(p) = v; }
RF_INLINE vf16 vset(float x) { return vf16{} + x; }

// Lanes [0, n) of p, zeros after (n < 16).
RF_INLINE vf16 vload_tail(const float* p, int n) {
  vf16 v = {};
  for (int l = 0; l < n; ++l) v[l] = p[l];
  return v;
}
RF_INLINE void vstore_tail(float* p, vf16 v, int n) {
  for (int l = 0; l < n; ++l) p[l] = v[l];
}

// a * b + c, rounded once, lane by lane (vfmadd where the target has FMA; fmaf from libm otherwise).
RF_INLINE vf16 vfma(vf16 a, vf16 b, vf16 c) {
  vf16 r;
  for (int l = 0; l < 16; ++l) r[l] = __builtin_fmaf(a[l], b[l], c[l]);
  return r;
}

// Sum of the 16 lanes by halving: (0..7)+(8..15), then 4, 2, 1.
RF_INLINE float vsum(vf16 v) {
  typedef float vf8 __attribute__((vector_size(32)));
  typedef float vf4 __attribute__((vector_size(16)));
  vf8 lo8, hi8;
  __builtin_memcpy(&lo8, &v, 32);
  __builtin_memcpy(&hi8, reinterpret_cast<const char*>(&v) + 32, 32);
  const vf8 s8 = lo8 + hi8;
  vf4 lo4, hi4;
  __builtin_memcpy(&lo4, &s8, 16);
  __builtin_memcpy(&hi4, reinterpret_cast<const char*>(&s8) + 16, 16);
  const vf4 s4 = lo4 + hi4;
  const float s2a = s4[0] + s4[2], s2b = s4[1] + s4[3];
  return s2a + s2b;
}

// Row of D floats (D == 0: d floats, runtime) as 16-lane chunks.
template <int D>
struct Row {
  static constexpr int kFixed = D / 16;
  std::int64_t d;
  RF_INLINE int chunks() const { return D ? kFixed : static_cast<int>((d + 15) / 16); }
  RF_INLINE vf16 load(const float* p, int c) const {
    if (D) return vload(p + 16 * c);
    const std::int64_t left = d - 16 * static_cast<std::int64_t>(c);
    return left >= 16 ? vload(p + 16 * c) : vload_tail(p + 16 * c, static_cast<int>(left));
  }
  RF_INLINE void store(float* p, int c, vf16 v) const {
    if (D) return vstore(p + 16 * c, v);
    const std::int64_t left = d - 16 * static_cast<std::int64_t>(c);
    if (left >= 16) {
      vstore(p + 16 * c, v);
    } else {
      vstore_tail(p + 16 * c, v, static_cast<int>(left));
    }
  }
  // <a, b>: chunk c goes to accumulator c % 4, the accumulators are combined as (0 + 1) + (2 + 3),
  // then the lanes by vsum. The first product of each accumulator is fma(a, b, 0), not a * b: a
  // plain product feeding an addition could be contracted on FMA targets only.
  RF_INLINE float dot(const float* a, const float* b) const {
    const int n = chunks();
    vf16 acc[4];
    const int na = n < 4 ? n : 4;
    for (int c = 0; c < na; ++c) acc[c] = vfma(load(a, c), load(b, c), vf16{});
    for (int c = 4; c < n; ++c) acc[c & 3] = vfma(load(a, c), load(b, c), acc[c & 3]);
    vf16 s;
    if (na == 4) {
      s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    } else if (na == 3) {
      s = (acc[0] + acc[1]) + acc[2];
    } else if (na == 2) {
      s = acc[0] + acc[1];
    } else if (na == 1) {
      s = acc[0];
    } else {
      s = vf16{};
    }
    return vsum(s);
  }
  RF_INLINE void prefetch(const float* p, bool write) const {
    const std::int64_t bytes = (D ? D : d) * static_cast<std::int64_t>(sizeof(float));
    for (std::int64_t o = 0; o < bytes; o += 64) {
      if (write) {
        __builtin_prefetch(reinterpret_cast<const char*>(p) + o, 1, 3);
      } else {
        __builtin_prefetch(reinterpret_cast<const char*>(p) + o, 0, 3);
      }
    }
  }
};

// Where position p's (user, positive) come from.
struct ListSource {  // bpr_sgd_step: users[p - base], pos[p - base]
  const std::int64_t* users;
  const std::int64_t* pos;
  std::int64_t base;
  RF_INLINE std::int64_t entry(std::int64_t p) const { return p - base; }
  RF_INLINE void prefetch(std::int64_t) const {}
  RF_INLINE std::int64_t user(std::int64_t e) const { return users[e]; }
  RF_INLINE std::int64_t item(std::int64_t e) const { return pos[e]; }
};

template <typename I>
struct EpochSource {  // bpr_sgd_epoch: entry order(p) of the CSR
  const std::int32_t* row_of;
  const I* indices;
  FeistelPermutation perm;
  bool shuffle;
  RF_INLINE std::int64_t entry(std::int64_t p) const {
    return shuffle ? static_cast<std::int64_t>(perm(static_cast<std::uint64_t>(p))) : p;
  }
  RF_INLINE void prefetch(std::int64_t e) const {
    __builtin_prefetch(row_of + e, 0, 3);
    __builtin_prefetch(indices + e, 0, 3);
  }
  RF_INLINE std::int64_t user(std::int64_t e) const { return row_of[e]; }
  RF_INLINE std::int64_t item(std::int64_t e) const { return static_cast<std::int64_t>(indices[e]); }
};

template <typename I>
struct SgdArgs {
  float* U;
  float* V;
  float* bias;
  std::int64_t d;
  const offset_t* indptr;
  const I* indices;
  std::int64_t n_items;
  std::int64_t K;
  std::uint64_t seed;
  float lr, l2;
};

// kth_unseen (sampling.h) with the search written as masked adds, which cannot become branches
// (GCC compiled kth_unseen's selects into a branch that random ranks mispredict half the time),
// and split in two so that its memory latency overlaps other positions: search_levels runs the
// first levels on the window [base, base + n) of the row, search_finish the rest. Same result:
// r + the number of m with row[m] - m <= r (nondecreasing in m).
template <typename I>
RF_INLINE void search_levels(const I* row, std::int64_t r, int levels, std::int64_t* base, std::int64_t* n) {
  std::int64_t b = *base, w = *n;
  for (int l = 0; l < levels && w > 1; ++l) {
    const std::int64_t half = w >> 1;
    const std::int64_t m = b + half;
    b += half & -static_cast<std::int64_t>(static_cast<std::int64_t>(row[m]) - m <= r);
    w -= half;
  }
  *base = b;
  *n = w;
}

template <typename I>
RF_INLINE std::int64_t search_finish(const I* row, std::int64_t r, std::int64_t base, std::int64_t n) {
  search_levels(row, r, 64, &base, &n);
  if (n == 1) base += static_cast<std::int64_t>(static_cast<std::int64_t>(row[base]) - base <= r);
  return r + base;
}

// Ask for the row ids a search will read: a range of up to `whole` bytes is fetched line by line
// (one line past it, for a range that does not start on a line), a longer one at seven probes.
template <typename I>
RF_INLINE void prefetch_ids(const I* r, std::int64_t n, std::int64_t whole) {
  const std::int64_t bytes = n * static_cast<std::int64_t>(sizeof(I));
  if (bytes <= whole) {
    for (std::int64_t o = 0; o < bytes + 64; o += 64) __builtin_prefetch(reinterpret_cast<const char*>(r) + o, 0, 3);
  } else {
    for (int t = 1; t < 8; ++t) __builtin_prefetch(r + (n * t >> 3), 0, 3);
  }
}

constexpr int kRing = 32;  // power of two > kLagA
constexpr int kLagA = 20, kLagB = 12, kLagB2 = 9, kLagC = 5;
constexpr int kEarlyLevels = 3;  // search levels of stage B2: those stage B prefetched

// Positions [lo, hi) on this thread. Adds the loss of the trained positions to *loss and their
// number to *count; lowers *bad to a position whose user has no negative.
template <int D, typename I, typename Src>
RF_INLINE void sgd_range(const SgdArgs<I>& a, const Src& src, std::int64_t lo, std::int64_t hi, double* loss,
                         std::int64_t* count, std::int64_t* bad) {
  const Row<D> row{a.d};
  const std::int64_t d = D ? D : a.d;
  const std::int64_t K = a.K;
  const float invK = 1.0f / static_cast<float>(K);
  const float lr = a.lr, l2 = a.l2, l2K = a.l2 * invK;
  const vf16 vlr = vset(-lr), vl2 = vset(l2), vl2K = vset(l2K);
  std::int64_t ring_e[kRing], ring_u[kRing], ring_i[kRing], ring_start[kRing], ring_deg[kRing];
  std::vector<std::int64_t> ring_r(static_cast<std::size_t>(kRing * K)), ring_j(static_cast<std::size_t>(kRing * K));
  std::vector<std::int64_t> ring_n(static_cast<std::size_t>(kRing * K));  // stage B2's search windows
  std::vector<float> coef(static_cast<std::size_t>(K));
  std::vector<float> gbuf(D ? 0 : static_cast<std::size_t>(row.chunks()) * 16);
  // The loss is sum max(-x, 0) + log(prod (1 + e)) over the negatives, over K: one log per range
  // instead of a log1pf per negative (a tenth of the step). The product is folded by frexp every
  // kFold factors (each in (1, 2]), so it never overflows.
  constexpr int kFold = 960;
  double total = 0.0, prod = 1.0;
  std::int64_t prod_exp = 0;
  int factors = 0;
  std::int64_t done = 0;
  for (std::int64_t p = lo - kLagA; p < hi; ++p) {
    // stage A
    if (const std::int64_t q = p + kLagA; q < hi) {
      const std::int64_t e = src.entry(q);
      ring_e[q & (kRing - 1)] = e;
      src.prefetch(e);
    }
    // stage B
    if (const std::int64_t q = p + kLagB; q >= lo && q < hi) {
      const int s = static_cast<int>(q & (kRing - 1));
      const std::int64_t e = ring_e[s];
      const std::int64_t u = src.user(e), i = src.item(e);
      const offset_t start = a.indptr[u];
      const std::int64_t deg = a.indptr[u + 1] - start;
      ring_u[s] = u;
      ring_i[s] = i;
      ring_start[s] = start;
      ring_deg[s] = deg;
      row.prefetch(a.U + u * d, true);
      row.prefetch(a.V + i * d, true);
      if (a.n_items - deg >= 1) {
        const std::uint64_t key = rng_key(a.seed, static_cast<std::uint64_t>(q));
        for (std::int64_t k = 0; k < K; ++k) {
          ring_r[s * K + k] = static_cast<std::int64_t>(
              rng_below(rng_bits(key, static_cast<std::uint64_t>(k)), static_cast<std::uint64_t>(a.n_items - deg)));
        }
        prefetch_ids(a.indices + start, deg, 256);
      }
    }
    // stage B2: the search levels whose probes stage B prefetched, then prefetch the window left
    if (const std::int64_t q = p + kLagB2; q >= lo && q < hi) {
      const int s = static_cast<int>(q & (kRing - 1));
      const std::int64_t deg = ring_deg[s];
      if (a.n_items - deg >= 1) {
        const I* r = a.indices + ring_start[s];
        for (std::int64_t k = 0; k < K; ++k) {
          std::int64_t base = 0, n = deg;
          search_levels(r, ring_r[s * K + k], kEarlyLevels, &base, &n);
          ring_j[s * K + k] = base;
          ring_n[s * K + k] = n;
          prefetch_ids(r + base, n, 512);
        }
      }
    }
    // stage C
    if (const std::int64_t q = p + kLagC; q >= lo && q < hi) {
      const int s = static_cast<int>(q & (kRing - 1));
      const std::int64_t deg = ring_deg[s];
      if (a.n_items - deg >= 1) {
        const I* r = a.indices + ring_start[s];
        for (std::int64_t k = 0; k < K; ++k) {
          const std::int64_t j = search_finish(r, ring_r[s * K + k], ring_j[s * K + k], ring_n[s * K + k]);
          ring_j[s * K + k] = j;
          row.prefetch(a.V + j * d, true);
        }
      }
    }
    // stage D
    if (p < lo) continue;
    const int s = static_cast<int>(p & (kRing - 1));
    if (a.n_items - ring_deg[s] < 1) {
      if (p < *bad) *bad = p;
      continue;
    }
    float* u = a.U + ring_u[s] * d;
    float* vi = a.V + ring_i[s] * d;
    const std::int64_t* js = &ring_j[s * K];
    const float ui = row.dot(u, vi) + (a.bias ? a.bias[ring_i[s]] : 0.0f);
    float csum = 0.0f, lsum = 0.0f;
    for (std::int64_t k = 0; k < K; ++k) {
      const float x = ui - (row.dot(u, a.V + js[k] * d) + (a.bias ? a.bias[js[k]] : 0.0f));
      // softplus(-x) = max(-x, 0) + log1p(e), sigmoid(-x) from the same e = exp(-|x|)
      const float e = __builtin_expf(-__builtin_fabsf(x));
      const float sig = x >= 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e);
      lsum += x < 0.0f ? -x : 0.0f;
      prod *= 1.0 + static_cast<double>(e);
      if (++factors == kFold) {
        int ex;
        prod = __builtin_frexp(prod, &ex);
        prod_exp += ex;
        factors = 0;
      }
      coef[k] = __builtin_fmaf(-sig, invK, 0.0f);  // not -sig * invK: csum's addition would contract it
      csum += coef[k];
    }
    total += static_cast<double>(lsum * invK);
    ++done;
    const vf16 vcsum = vset(csum);
    // the gradients from the current values, then the updates: negatives, positive, user
    if (D) {
      constexpr int NC = D ? D / 16 : 1;
      vf16 gu[NC], uu[NC];
      for (int c = 0; c < NC; ++c) {
        uu[c] = row.load(u, c);
        gu[c] = vfma(vcsum, row.load(vi, c), vl2 * uu[c]);
      }
      for (std::int64_t k = 0; k < K; ++k) {
        const float* vj = a.V + js[k] * d;
        const vf16 nc = vset(-coef[k]);
        for (int c = 0; c < NC; ++c) gu[c] = vfma(nc, row.load(vj, c), gu[c]);
      }
      for (std::int64_t k = 0; k < K; ++k) {
        float* vj = a.V + js[k] * d;
        const vf16 nc = vset(-coef[k]);
        for (int c = 0; c < NC; ++c) {
          const vf16 x = row.load(vj, c);
          row.store(vj, c, vfma(vlr, vfma(nc, uu[c], vl2K * x), x));
        }
        if (a.bias) a.bias[js[k]] = __builtin_fmaf(lr, coef[k], a.bias[js[k]]);
      }
      for (int c = 0; c < NC; ++c) {
        const vf16 x = row.load(vi, c);
        row.store(vi, c, vfma(vlr, vfma(vcsum, uu[c], vl2 * x), x));
      }
      for (int c = 0; c < NC; ++c) row.store(u, c, vfma(vlr, gu[c], uu[c]));
    } else {
      const int NC = row.chunks();
      float* g = gbuf.data();
      for (int c = 0; c < NC; ++c) vstore(g + 16 * c, vfma(vcsum, row.load(vi, c), vl2 * row.load(u, c)));
      for (std::int64_t k = 0; k < K; ++k) {
        const float* vj = a.V + js[k] * d;
        const vf16 nc = vset(-coef[k]);
        for (int c = 0; c < NC; ++c) vstore(g + 16 * c, vfma(nc, row.load(vj, c), vload(g + 16 * c)));
      }
      for (std::int64_t k = 0; k < K; ++k) {
        float* vj = a.V + js[k] * d;
        const vf16 nc = vset(-coef[k]);
        for (int c = 0; c < NC; ++c) {
          const vf16 x = row.load(vj, c);
          row.store(vj, c, vfma(vlr, vfma(nc, row.load(u, c), vl2K * x), x));
        }
        if (a.bias) a.bias[js[k]] = __builtin_fmaf(lr, coef[k], a.bias[js[k]]);
      }
      for (int c = 0; c < NC; ++c) {
        const vf16 x = row.load(vi, c);
        row.store(vi, c, vfma(vlr, vfma(vcsum, row.load(u, c), vl2 * x), x));
      }
      for (int c = 0; c < NC; ++c) row.store(u, c, vfma(vlr, vload(g + 16 * c), row.load(u, c)));
    }
    if (a.bias) a.bias[ring_i[s]] = __builtin_fmaf(-lr, csum, a.bias[ring_i[s]]);
  }
  // an explicit fma: a product feeding an addition would be contracted on FMA targets only
  *loss += total + __builtin_fma(static_cast<double>(prod_exp), 0.69314718055994530942, __builtin_log(prod)) /
                       static_cast<double>(K);
  *count += done;
}

template <typename I, typename Src>
RF_INLINE void sgd_dispatch_d(const SgdArgs<I>& a, const Src& src, std::int64_t lo, std::int64_t hi, double* loss,
                              std::int64_t* count, std::int64_t* bad) {
  switch (a.d) {
    case 32: return sgd_range<32>(a, src, lo, hi, loss, count, bad);
    case 64: return sgd_range<64>(a, src, lo, hi, loss, count, bad);
    case 128: return sgd_range<128>(a, src, lo, hi, loss, count, bad);
    default: return sgd_range<0>(a, src, lo, hi, loss, count, bad);
  }
}

template <typename I, typename Src>
void sgd_portable(const SgdArgs<I>& a, const Src& src, std::int64_t lo, std::int64_t hi, double* loss,
                  std::int64_t* count, std::int64_t* bad) {
  sgd_dispatch_d(a, src, lo, hi, loss, count, bad);
}

template <typename I, typename Src>
__attribute__((target("avx2,fma"))) void sgd_avx2(const SgdArgs<I>& a, const Src& src, std::int64_t lo,
                                                    std::int64_t hi, double* loss, std::int64_t* count,
                                                    std::int64_t* bad) {
  sgd_dispatch_d(a, src, lo, hi, loss, count, bad);
}

template <typename I, typename Src>
__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))) void sgd_avx512(const SgdArgs<I>& a, const Src& src,
                                                                             std::int64_t lo, std::int64_t hi,
                                                                             double* loss, std::int64_t* count,
                                                                             std::int64_t* bad) {
  sgd_dispatch_d(a, src, lo, hi, loss, count, bad);
}

int resolve_isa(int isa) {
  const int best = sgd_isa_supported();
  if (isa == kIsaAuto || isa > best) return best;
  return isa < 0 ? kIsaPortable : isa;
}

// ---------------------------------------------------------------------------------------------
// bpr_loss on float tables: the forward and backward on the fused SGD's 16-float vectors, per ISA
// and with fixed-width copies for d = 32, 64, 128. The generic loops (kept for double) spent a
// third of the forward at batch 2,048 in libm's expf and logf, one example at a time, and the rest
// in 4-float loops of run-time length: 29 ns an example with every row in L1. Here each block of
// kLossBlock examples scores its rows, then takes exp, log1p and the sigmoid on 16 x at once.
// Every multiply-add is an explicit fma (as in the SGD kernels), so the variants round alike.
// The kernels are in bpr_loss_f32.inc, compiled once per instruction set.
// ---------------------------------------------------------------------------------------------

struct LossArgs {
  const float* U;
  const float* V;
  const float* bias;
  std::int64_t d;
  const std::int64_t* users;
  const std::int64_t* pos;
  const std::int64_t* neg;
  std::int64_t B, K;
  float l2;
};

constexpr std::int64_t kLossBlock = 16;  // examples per block of the forward

struct LossGrads {
  const float* coef;
  const float* scale;
  std::int64_t scale_stride;
  const std::int64_t* urow;
  const std::int64_t* prow;
  const std::int64_t* nrow;
  float* gU;
  float* gV;
  float* gbias;
};

#define RF_LOSS_ISA 0
namespace loss_portable {
#include "bpr_loss_f32.inc"
}  // namespace loss_portable
#undef RF_LOSS_ISA

// (Clang spells GCC's target pragma as an attribute applied to every function in the region.)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define RF_LOSS_ISA 1
namespace loss_avx2 {
#include "bpr_loss_f32.inc"
}  // namespace loss_avx2
#undef RF_LOSS_ISA
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma")
#endif
#define RF_LOSS_ISA 2
namespace loss_avx512 {
#include "bpr_loss_f32.inc"
}  // namespace loss_avx512
#undef RF_LOSS_ISA
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

void forward_f32(const float* U, const float* V, const float* bias, std::int64_t d, const std::int64_t* users,
                 const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2,
                 float* loss, float* coef, int num_threads, int isa) {
  // A quarter of the generic kernel's grain: the vector forward's rows come from L3 at random, and
  // at batch 2,048 (d = 32) two threads took it from 62-77 to 51 us.
  const int threads = grain_threads(num_threads, 4 * B * K * (d + 32));
  const LossArgs a{U, V, bias, d, users, pos, neg, B, K, static_cast<float>(l2)};
  const int which = resolve_isa(isa);
#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_id();
    const std::int64_t lo = B * tid / threads, hi = B * (tid + 1) / threads;
    if (hi > lo) {
      if (which == kIsaAvx512) {
        loss_avx512::loss_forward(a, lo, hi, loss, coef);
      } else if (which == kIsaAvx2) {
        loss_avx2::loss_forward(a, lo, hi, loss, coef);
      } else {
        loss_portable::loss_forward(a, lo, hi, loss, coef);
      }
    }
  }
}

void backward_f32(const float* U, const float* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                  const std::int64_t* neg, std::int64_t B, std::int64_t K, const float* coef, const float* scale,
                  std::int64_t scale_stride, double l2, const std::int64_t* urow, const std::int64_t* prow,
                  const std::int64_t* nrow, float* gU, float* gV, float* gbias, std::int64_t zero_u,
                  std::int64_t zero_v, int num_threads, int isa) {
  const int threads = grain_threads(num_threads, backward_work(B, K, d, gU, gV, gbias, zero_u, zero_v));
  const LossArgs a{U, V, nullptr, d, users, pos, neg, B, K, static_cast<float>(l2)};
  const LossGrads g{coef, scale, scale_stride, urow, prow, nrow, gU, gV, gbias};
  const int which = resolve_isa(isa);
#pragma omp parallel num_threads(threads)
  {
    const int tid = thread_id();
    if (zero_u || zero_v) {
      zero_share(gU, gV, gbias, d, zero_u, zero_v, tid, threads);
#pragma omp barrier
    }
    if (which == kIsaAvx512) {
      loss_avx512::loss_backward(a, g, tid, threads);
    } else if (which == kIsaAvx2) {
      loss_avx2::loss_backward(a, g, tid, threads);
    } else {
      loss_portable::loss_backward(a, g, tid, threads);
    }
  }
}

// Runs [start, stop) in blocks of kBlock consecutive positions that the threads take from a shared
// counter (a thread that the OS preempts holds up the others by one block at most, not by its
// whole share); returns the summed loss.
constexpr std::int64_t kBlock = 4096;

template <typename I, typename Src>
double sgd_run(const SgdArgs<I>& a, const Src& src, std::int64_t start, std::int64_t stop, std::int64_t* count,
               std::int64_t* bad, int num_threads, int isa) {
  const std::int64_t n = stop - start;
  const int threads = static_cast<int>(
      std::max<std::int64_t>(1, std::min<std::int64_t>(resolve_threads(num_threads), (n + kBlock - 1) / kBlock)));
  const int which = resolve_isa(isa);
  std::vector<double> losses(static_cast<std::size_t>(threads), 0.0);
  std::vector<std::int64_t> counts(static_cast<std::size_t>(threads), 0), bads(static_cast<std::size_t>(threads), stop);
  std::atomic<std::int64_t> next{start};
#pragma omp parallel num_threads(threads)
  {
    const int t = thread_id();
    for (;;) {
      const std::int64_t lo = next.fetch_add(kBlock, std::memory_order_relaxed);
      if (lo >= stop) break;
      const std::int64_t hi = std::min(lo + kBlock, stop);
      if (which == kIsaAvx512) {
        sgd_avx512(a, src, lo, hi, &losses[t], &counts[t], &bads[t]);
      } else if (which == kIsaAvx2) {
        sgd_avx2(a, src, lo, hi, &losses[t], &counts[t], &bads[t]);
      } else {
        sgd_portable(a, src, lo, hi, &losses[t], &counts[t], &bads[t]);
      }
    }
  }
  double total = 0.0;
  std::int64_t c = 0, b = stop;
  for (int t = 0; t < threads; ++t) {
    total += losses[t];
    c += counts[t];
    b = std::min(b, bads[t]);
  }
  *count = c;
  *bad = b == stop ? -1 : b;
  return total;
}

}  // namespace

int sgd_isa_supported() {
  static const int best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl")) {
      return static_cast<int>(kIsaAvx512);
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return static_cast<int>(kIsaAvx2);
    return static_cast<int>(kIsaPortable);
  }();
  return best;
}

template <typename I>
double bpr_sgd_step(float* U, float* V, float* bias, std::int64_t d, const offset_t* indptr, const I* indices,
                    std::int64_t n_items, const std::int64_t* users, const std::int64_t* pos, std::int64_t B,
                    std::int64_t K, std::uint64_t seed, std::int64_t row_offset, double lr, double l2,
                    std::int64_t* bad, int num_threads, int isa) {
  if (B <= 0) {
    *bad = -1;
    return 0.0;
  }
  const SgdArgs<I> a{U, V, bias, d, indptr, indices, n_items, K, seed, static_cast<float>(lr), static_cast<float>(l2)};
  const ListSource src{users, pos, row_offset};
  std::int64_t count = 0, bad_pos = -1;
  const double total = sgd_run(a, src, row_offset, row_offset + B, &count, &bad_pos, num_threads, isa);
  *bad = bad_pos < 0 ? -1 : bad_pos - row_offset;
  return total / static_cast<double>(B);
}

template <typename I>
double bpr_sgd_epoch(float* U, float* V, float* bias, std::int64_t d, const offset_t* indptr, const I* indices,
                     std::int64_t n_items, const std::int32_t* row_of, std::int64_t nnz, std::int64_t start,
                     std::int64_t stop, bool shuffle, std::int64_t K, std::uint64_t seed, double lr, double l2,
                     std::int64_t* count, std::int64_t* bad, int num_threads, int isa) {
  *count = 0;
  *bad = -1;
  if (stop <= start) return 0.0;
  const SgdArgs<I> a{U, V, bias, d, indptr, indices, n_items, K, seed, static_cast<float>(lr), static_cast<float>(l2)};
  const EpochSource<I> src{row_of, indices, FeistelPermutation(static_cast<std::uint64_t>(nnz), seed), shuffle};
  return sgd_run(a, src, start, stop, count, bad, num_threads, isa);
}

template <typename T>
void bpr_forward(const T* U, const T* V, const T* bias, std::int64_t d, const std::int64_t* users,
                 const std::int64_t* pos, const std::int64_t* neg, std::int64_t B, std::int64_t K, double l2, T* loss,
                 T* coef, int num_threads, int isa) {
  if constexpr (std::is_same_v<T, float>) {
    forward_f32(U, V, bias, d, users, pos, neg, B, K, l2, loss, coef, num_threads, isa);
  } else {
    forward_generic(U, V, bias, d, users, pos, neg, B, K, l2, loss, coef, num_threads);
  }
}

template <typename T>
void bpr_backward(const T* U, const T* V, std::int64_t d, const std::int64_t* users, const std::int64_t* pos,
                  const std::int64_t* neg, std::int64_t B, std::int64_t K, const T* coef, const T* scale,
                  std::int64_t scale_stride, double l2, const std::int64_t* urow, const std::int64_t* prow,
                  const std::int64_t* nrow, T* gU, T* gV, T* gbias, std::int64_t zero_u, std::int64_t zero_v,
                  int num_threads, int isa) {
  if constexpr (std::is_same_v<T, float>) {
    backward_f32(U, V, d, users, pos, neg, B, K, coef, scale, scale_stride, l2, urow, prow, nrow, gU, gV, gbias,
                 zero_u, zero_v, num_threads, isa);
  } else {
    backward_generic(U, V, d, users, pos, neg, B, K, coef, scale, scale_stride, l2, urow, prow, nrow, gU, gV, gbias,
                     zero_u, zero_v, num_threads);
  }
}

#define RF_INSTANTIATE(T)                                                                                            \
  template void bpr_forward<T>(const T*, const T*, const T*, std::int64_t, const std::int64_t*, const std::int64_t*, \
                               const std::int64_t*, std::int64_t, std::int64_t, double, T*, T*, int, int);            \
  template void bpr_backward<T>(const T*, const T*, std::int64_t, const std::int64_t*, const std::int64_t*,          \
                                const std::int64_t*, std::int64_t, std::int64_t, const T*, const T*, std::int64_t,    \
                                double, const std::int64_t*, const std::int64_t*, const std::int64_t*, T*, T*, T*,    \
                                std::int64_t, std::int64_t, int, int);
RF_INSTANTIATE(float)
RF_INSTANTIATE(double)
#undef RF_INSTANTIATE
#define RF_INSTANTIATE_SGD(I)                                                                                     \
  template double bpr_sgd_step<I>(float*, float*, float*, std::int64_t, const offset_t*, const I*, std::int64_t,     \
                                  const std::int64_t*, const std::int64_t*, std::int64_t, std::int64_t,               \
                                  std::uint64_t, std::int64_t, double, double, std::int64_t*, int, int);             \
  template double bpr_sgd_epoch<I>(float*, float*, float*, std::int64_t, const offset_t*, const I*, std::int64_t,    \
                                   const std::int32_t*, std::int64_t, std::int64_t, std::int64_t, bool, std::int64_t, \
                                   std::uint64_t, double, double, std::int64_t*, std::int64_t*, int, int);
RF_INSTANTIATE_SGD(std::int32_t)
RF_INSTANTIATE_SGD(std::int64_t)
#undef RF_INSTANTIATE_SGD

}  // namespace recfast::cpu
