// CSR contract shared by every op.
//
// A CSR matrix with n_rows rows and n_cols columns is given by
//   indptr  : int64[n_rows + 1], indptr[0] == 0, non-decreasing, indptr[n_rows] == nnz
//   indices : I[nnz] (I = int32 or int64), each row's entries strictly increasing in [0, n_cols)
//   values  : float32[nnz] or absent (nullptr: every stored entry is 1)
// Ops that rely on sorted rows (sampling, masking) state it; csr_check verifies all of the above.
#pragma once
#include <cstdint>
#include <string>

#include "recfast/common.h"

namespace recfast::cpu {

// Returns an empty string for a valid matrix, else a description of the first problem found.
template <typename I>
std::string csr_check(const offset_t* indptr, std::int64_t n_rows, const I* indices, std::int64_t nnz,
                      std::int64_t n_cols);

// How from_coo treats repeated (row, col) pairs.
enum class Duplicates { Sum = 0, Last = 1, Error = 2 };

// Builds CSR from COO. rows/cols are int64[nnz_in], values float32[nnz_in] or nullptr.
// Writes up to nnz_in entries into out_indices/out_values and n_rows + 1 into out_indptr.
// Returns the number of entries kept, or -1 when dup == Error and a duplicate exists.
// Callers have validated that 0 <= rows < n_rows and 0 <= cols < n_cols.
template <typename I>
std::int64_t csr_from_coo(const std::int64_t* rows, const std::int64_t* cols, const float* values,
                          std::int64_t nnz_in, std::int64_t n_rows, Duplicates dup, offset_t* out_indptr,
                          I* out_indices, float* out_values);

// Transpose (equivalently CSC of the input). out_indptr has n_cols + 1 entries; rows of the output
// come out sorted. values/out_values may be nullptr.
template <typename I>
void csr_transpose(const offset_t* indptr, const I* indices, const float* values, std::int64_t n_rows,
                   std::int64_t n_cols, offset_t* out_indptr, I* out_indices, float* out_values);

}  // namespace recfast::cpu
