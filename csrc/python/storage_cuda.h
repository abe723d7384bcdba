// For the CUDA bindings: the storage type of a float buffer, from the dtype name Python passes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "bindings.h"

namespace recfast::python {

// Calls f with a null pointer of the C++ type torch calls `dtype` (float32, float64, float16,
// bfloat16); anything else throws std::invalid_argument (ValueError) naming `op`.
template <typename F>
void with_storage(const std::string& dtype, const char* op, F&& f) {
  if (dtype == "float32") {
    f(static_cast<float*>(nullptr));
  } else if (dtype == "float64") {
    f(static_cast<double*>(nullptr));
  } else if (dtype == "float16") {
    f(static_cast<__half*>(nullptr));
  } else if (dtype == "bfloat16") {
    f(static_cast<__nv_bfloat16*>(nullptr));
  } else {
    fail(std::string(op) + ": tensors must be float32, float64, float16 or bfloat16, got " + dtype);
  }
}

}  // namespace recfast::python
