#include "recfast/csr.h"

#include <algorithm>
#include <atomic>
#include <string>
#include <utility>
#include <vector>

#include "recfast/parallel.h"

namespace recfast::cpu {

template <typename I>
std::string csr_check(const offset_t* indptr, std::int64_t n_rows, const I* indices, std::int64_t nnz,
                      std::int64_t n_cols) {
  // Messages are built with std::to_string, not iostreams: an iostream message crashed a
  // Python whose other extensions loaded a different libstdc++ (seen on a GPU machine).
  using std::to_string;
  if (indptr[0] != 0) return "indptr[0] must be 0, got " + to_string(indptr[0]);
  if (indptr[n_rows] != nnz) {
    return "indptr[-1] must equal the number of indices (" + to_string(nnz) + "), got " + to_string(indptr[n_rows]);
  }
  for (std::int64_t r = 0; r < n_rows; ++r) {
    if (indptr[r + 1] < indptr[r]) {
      return "indptr must be non-decreasing, but indptr[" + to_string(r + 1) + "] = " + to_string(indptr[r + 1]) +
             " < indptr[" + to_string(r) + "] = " + to_string(indptr[r]);
    }
  }
  // Rows are independent; the first bad row (lowest id) is reported so the message is deterministic.
  std::atomic<std::int64_t> bad_row{n_rows};
#pragma omp parallel for schedule(dynamic, 1024)
  for (std::int64_t r = 0; r < n_rows; ++r) {
    if (r > bad_row.load(std::memory_order_relaxed)) continue;
    for (offset_t p = indptr[r]; p < indptr[r + 1]; ++p) {
      const std::int64_t c = indices[p];
      if (c < 0 || c >= n_cols || (p > indptr[r] && c <= static_cast<std::int64_t>(indices[p - 1]))) {
        std::int64_t cur = bad_row.load();
        while (r < cur && !bad_row.compare_exchange_weak(cur, r)) {
        }
        break;
      }
    }
  }
  const std::int64_t r = bad_row.load();
  if (r == n_rows) return {};
  for (offset_t p = indptr[r]; p < indptr[r + 1]; ++p) {
    const std::int64_t c = indices[p];
    if (c < 0 || c >= n_cols) {
      return "indices out of range: row " + to_string(r) + " has column " + to_string(c) +
             ", expected 0 <= column < " + to_string(n_cols);
    }
    if (p > indptr[r] && c <= static_cast<std::int64_t>(indices[p - 1])) {
      return "indices must be sorted and unique within each row: row " + to_string(r) + " has column " +
             to_string(c) + " after " + to_string(static_cast<std::int64_t>(indices[p - 1]));
    }
  }
  return {};
}

template <typename I>
std::int64_t csr_from_coo(const std::int64_t* rows, const std::int64_t* cols, const float* values,
                          std::int64_t nnz_in, std::int64_t n_rows, Duplicates dup, offset_t* out_indptr,
                          I* out_indices, float* out_values) {
  // Counting sort by row (stable, O(nnz + n_rows)), then sort each row by (col, input position):
  // the position breaks ties so that "last" keeps the latest entry.
  std::vector<offset_t> start(n_rows + 1, 0);
  for (std::int64_t e = 0; e < nnz_in; ++e) ++start[rows[e] + 1];
  for (std::int64_t r = 0; r < n_rows; ++r) start[r + 1] += start[r];
  std::vector<std::pair<std::int64_t, std::int64_t>> entries(nnz_in);  // (col, position)
  {
    std::vector<offset_t> fill(start.begin(), start.end() - 1);
    for (std::int64_t e = 0; e < nnz_in; ++e) entries[fill[rows[e]]++] = {cols[e], e};
  }
  std::vector<offset_t> kept(n_rows, 0);
  std::atomic<bool> has_duplicate{false};
#pragma omp parallel for schedule(dynamic, 256)
  for (std::int64_t r = 0; r < n_rows; ++r) {
    auto* b = entries.data() + start[r];
    auto* e = entries.data() + start[r + 1];
    std::sort(b, e);
    // Compact in place: entries[start[r] + kept[r]] holds (col, position of the value to keep);
    // for "sum" the summed value is staged in out_values at the same slot.
    offset_t w = start[r];
    for (auto* it = b; it != e; ++it) {
      const bool same = (w > start[r] && entries[w - 1].first == it->first);
      if (same) {
        if (dup == Duplicates::Error) {
          has_duplicate.store(true, std::memory_order_relaxed);
        } else if (dup == Duplicates::Last) {
          entries[w - 1].second = it->second;
          if (out_values) out_values[w - 1] = values ? values[it->second] : 1.0f;
        } else if (out_values) {
          out_values[w - 1] += values ? values[it->second] : 1.0f;
        }
        continue;
      }
      entries[w] = *it;
      if (out_values) out_values[w] = values ? values[it->second] : 1.0f;
      ++w;
    }
    kept[r] = w - start[r];
  }
  if (has_duplicate.load()) return -1;
  out_indptr[0] = 0;
  for (std::int64_t r = 0; r < n_rows; ++r) out_indptr[r + 1] = out_indptr[r] + kept[r];
  // Shift each row left to close the gaps left by dropped duplicates.
  for (std::int64_t r = 0; r < n_rows; ++r) {
    const offset_t src = start[r], dst = out_indptr[r];
    for (offset_t k = 0; k < kept[r]; ++k) {
      out_indices[dst + k] = static_cast<I>(entries[src + k].first);
      if (out_values) out_values[dst + k] = out_values[src + k];
    }
  }
  return out_indptr[n_rows];
}

template <typename I>
void csr_transpose(const offset_t* indptr, const I* indices, const float* values, std::int64_t n_rows,
                   std::int64_t n_cols, offset_t* out_indptr, I* out_indices, float* out_values) {
  const offset_t nnz = indptr[n_rows];
  std::fill(out_indptr, out_indptr + n_cols + 1, 0);
  for (offset_t p = 0; p < nnz; ++p) ++out_indptr[static_cast<std::int64_t>(indices[p]) + 1];
  for (std::int64_t c = 0; c < n_cols; ++c) out_indptr[c + 1] += out_indptr[c];
  std::vector<offset_t> fill(out_indptr, out_indptr + n_cols);
  // Visiting rows in increasing order keeps every output row sorted.
  for (std::int64_t r = 0; r < n_rows; ++r) {
    for (offset_t p = indptr[r]; p < indptr[r + 1]; ++p) {
      const offset_t dst = fill[indices[p]]++;
      out_indices[dst] = static_cast<I>(r);
      if (out_values) out_values[dst] = values ? values[p] : 1.0f;
    }
  }
}

#define RF_INSTANTIATE(I)                                                                                      \
  template std::string csr_check<I>(const offset_t*, std::int64_t, const I*, std::int64_t, std::int64_t);      \
  template std::int64_t csr_from_coo<I>(const std::int64_t*, const std::int64_t*, const float*, std::int64_t, \
                                        std::int64_t, Duplicates, offset_t*, I*, float*);                      \
  template void csr_transpose<I>(const offset_t*, const I*, const float*, std::int64_t, std::int64_t,         \
                                 offset_t*, I*, float*);
RF_INSTANTIATE(std::int32_t)
RF_INSTANTIATE(std::int64_t)
#undef RF_INSTANTIATE

}  // namespace recfast::cpu
