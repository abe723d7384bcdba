// Error checking for the CUDA kernels. Launches happen on the caller's stream; no kernel here
// synchronizes or allocates: Python passes outputs and scratch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace recfast::cuda {

// Thrown as RuntimeError in Python, with the op's name and CUDA's message.
inline void check(cudaError_t err, const char* op) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a sticky-free error so the next op does not report it again
    throw std::runtime_error(std::string(op) + ": CUDA error: " + cudaGetErrorString(err));
  }
}

inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

template <typename T>
inline T* as_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

inline unsigned grid_for(long long n, unsigned block, unsigned cap = 65535u * 32u) {
  long long g = (n + block - 1) / block;
  if (g < 1) g = 1;
  return static_cast<unsigned>(g > cap ? cap : g);
}

}  // namespace recfast::cuda

// Check the launch just made: configuration errors surface here, naming the op.
#define RF_CUDA_CHECK_LAUNCH(op) ::recfast::cuda::check(cudaGetLastError(), op)
#define RF_CUDA_CHECK(expr, op) ::recfast::cuda::check((expr), op)
