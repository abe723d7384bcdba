// Top-k with exclusion, merged tile by tile (see recfast/ops/topk.py).
//
// Contract: for each row, the k items with the highest score, best first; ties go to the lower
// item id; items in the row's exclusion list never appear; NaN and -inf scores are never selected;
// rows with fewer than k candidates are padded with id -1 and score -inf.
#pragma once
#include <cstdint>

#include "recfast/common.h"

namespace recfast::cpu {

// Merges one score tile into the running top-k of each row.
// scores: n_rows x ld (row-major), column j holds item tile_start + j, for j < tile_len.
// Exclusion: row r's excluded items are ex_indices[ex_indptr[q] : ex_indptr[q + 1]] (sorted), with
// q = rows[r] when rows is given, else q = r; ex_indptr == nullptr means no exclusion.
// top_scores/top_ids: n_rows x k, a min-heap per row (worst at position 0) between calls;
// initialise with scores -inf and ids -1, and finish with topk_finalize (sorts best first).
template <typename I>
void topk_merge(const float* scores, std::int64_t n_rows, std::int64_t ld, std::int64_t tile_start,
                std::int64_t tile_len, const std::int64_t* rows, const offset_t* ex_indptr, const I* ex_indices,
                std::int64_t k, float* top_scores, std::int64_t* top_ids, int num_threads);

void topk_finalize(float* top_scores, std::int64_t* top_ids, std::int64_t n_rows, std::int64_t k, int num_threads);

// Scores and selects in one pass, without a score buffer: for each query row r, the k best items
// by score(r, i) = fma-chain over p of queries[r, p] * keys[i, p] (sequential from 0) + key_bias[i],
// excluding as topk_merge does; top_scores/top_ids start as in topk_merge and end sorted best first
// (no topk_finalize). isa: 0 = best available, 1 = portable, 2 = AVX-512; every isa gives the same bits.
// queries: n_rows x d, keys: n_items x d, row-major; key_bias may be nullptr.
template <typename I>
void topk_fused(const float* queries, const float* keys, const float* key_bias, std::int64_t n_rows,
                std::int64_t n_items, std::int64_t d, const std::int64_t* rows, const offset_t* ex_indptr,
                const I* ex_indices, std::int64_t k, float* top_scores, std::int64_t* top_ids, int isa,
                int num_threads);

// "avx512" when topk_fused's AVX-512 kernel runs on this CPU, else "portable".
const char* topk_fused_best_isa();

// For each (row b, rank j): whether ids[b, j] is in test row users[b] (sorted), as 0/1.
template <typename I>
void topk_hits(const std::int64_t* ids, std::int64_t n_rows, std::int64_t k, const std::int64_t* users,
               const offset_t* test_indptr, const I* test_indices, std::uint8_t* hits, int num_threads);

}  // namespace recfast::cpu

struct CUstream_st;

namespace recfast::cuda {

// Sets scores[r, j] = -inf for every item tile_start + j excluded for row r (its exclusion row is
// rows[r]); scores is n_rows x n_cols, row-major, on the device. Launched on `stream`.
template <typename I>
void topk_mask(float* scores, std::int64_t n_rows, std::int64_t n_cols, std::int64_t tile_start,
               const std::int64_t* rows, const offset_t* ex_indptr, const I* ex_indices, CUstream_st* stream);

}  // namespace recfast::cuda
