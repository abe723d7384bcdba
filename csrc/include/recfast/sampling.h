// Negative sampling contract (see also recfast/ops/sampling.py).
#pragma once
#include <cstdint>

#include "recfast/common.h"

namespace recfast {

// The r-th item (0-based) not present in a sorted, duplicate-free row of length deg, for
// 0 <= r < n_items - deg. row[j] - j is non-decreasing, so the answer is r + (the number of
// row entries that precede it), found by binary search in O(log deg).
template <typename I>
RF_HD std::int64_t kth_unseen(const I* row, std::int64_t deg, std::int64_t r) {
  std::int64_t lo = 0, hi = deg;
  while (lo < hi) {
    const std::int64_t mid = lo + ((hi - lo) >> 1);
    if (static_cast<std::int64_t>(row[mid]) - mid > r) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return r + lo;
}

}  // namespace recfast
