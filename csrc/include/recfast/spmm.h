// Sparse propagation: CSR SpMM and the fused LightGCN layer sum (see recfast/ops/spmm.py).
//
// out[r, :] = sum over stored entries p of row r of values[p] * dense[indices[p], :]
// (values == nullptr: every entry is 1). Each output row is computed by one thread from its
// entries in order, each product rounded before it is added (no FMA), so results do not depend on
// the thread count or on the ISA copy chosen at load (AVX-512, AVX2 or SSE2;
// RECFAST_SPMM_ISA=base|avx2 caps it).
#pragma once
#include <cstdint>

#include "recfast/common.h"

namespace recfast::cpu {

template <typename I, typename T>
void spmm(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense,
          std::int64_t d, T* out, int num_threads);

// out = sum_{l=0..L} w[l] * A^l * emb with A square (n x n); buf_a and buf_b are n x d scratch:
// layer 1 is fused with the w[0] term and A^L emb is added into out without being stored, so
// L <= 1 writes neither buffer and L = 2 writes only buf_a (pass out for an unused one).
template <typename I, typename T>
void lightgcn_propagate(const offset_t* indptr, const I* indices, const T* values, std::int64_t n, const T* emb,
                        std::int64_t d, std::int64_t num_layers, const double* layer_weights, T* out, T* buf_a,
                        T* buf_b, int num_threads);

// The bipartite adjacency [[0, R], [R^T, 0]] (+ I with self_loops) of a users x items matrix R,
// normalised: 0 = "none" (1), 1 = "sym" (D^-1/2 A D^-1/2), 2 = "left" (D^-1 A); degrees count the
// self loop. Zero-degree nodes get empty rows. Output rows are sorted. out_indptr has
// n_users + n_items + 1 entries; out_indices/out_values have 2 * nnz (+ n with self loops).
template <typename I>
void normalized_adjacency(const offset_t* indptr, const I* indices, const offset_t* t_indptr, const I* t_indices,
                          std::int64_t n_users, std::int64_t n_items, int normalization, bool self_loops,
                          offset_t* out_indptr, I* out_indices, float* out_values);

}  // namespace recfast::cpu

struct CUstream_st;

namespace recfast::cuda {

// A warp per output row (rows longer than 256 entries: a block). When d is a multiple of the
// vector width, the warp splits into groups of lanes reading 16-byte vectors, each group summing
// every G-th entry, and the groups' sums meet in a fixed shuffle tree (deterministic).
template <typename I, typename T>
void spmm(const offset_t* indptr, const I* indices, const T* values, std::int64_t n_rows, const T* dense,
          std::int64_t d, T* out, CUstream_st* stream);

// out += w * src (n x d), fused into the layer loop of lightgcn_propagate on the device.
template <typename T>
void axpy(T* out, const T* src, double w, std::int64_t n, CUstream_st* stream);

}  // namespace recfast::cuda
