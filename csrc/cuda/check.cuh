// Error checking for the CUDA kernels. Launches happen on the caller's stream; no kernel here
// synchronizes or allocates: Python passes outputs and scratch.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace recfast::cuda {

// Thrown as RuntimeError in Python: "<what>: CUDA error cudaErrorX: <CUDA's message>". `what` names the
// kernel or call; recfast._backend.cuda_errors prefixes the public op's name, and turns
// cudaErrorMemoryAllocation into torch.OutOfMemoryError.
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the next op does not report it again
    throw std::runtime_error(std::string(what) + ": CUDA error " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
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

// Check the launch just made, right after it, naming the kernel: configuration errors (a grid or
// block the device cannot run, too much shared memory, no image for this architecture) surface
// here. Faults inside the kernel are asynchronous: the next synchronizing call reports them
// (RECFAST_CUDA_SYNC=1 makes that the op's own synchronization).
#define RF_CUDA_CHECK_LAUNCH(kernel) ::recfast::cuda::check(cudaGetLastError(), "launch of " #kernel)
#define RF_CUDA_CHECK(expr, what) ::recfast::cuda::check((expr), what)
