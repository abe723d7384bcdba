// OpenMP helpers for the CPU kernels; every kernel compiles without OpenMP too.
#pragma once
#ifdef _OPENMP
#include <omp.h>
#endif

namespace recfast::cpu {

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// num_threads <= 0 means "OpenMP's default".
inline int resolve_threads(int num_threads) { return num_threads > 0 ? num_threads : max_threads(); }

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

}  // namespace recfast::cpu
