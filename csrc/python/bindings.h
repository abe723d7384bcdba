// Declarations shared by the binding files, and the conventions they follow:
// - every array argument is a C-contiguous array of the exact dtype, marked noconvert, so a wrong
//   dtype or a strided view is rejected instead of silently copied (the kernel would write the copy);
// - shape problems throw std::invalid_argument (Python: ValueError) naming the op and the argument;
// - the GIL is released once Python objects have been read.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace recfast::python {

template <typename T>
using carray = py::array_t<T, py::array::c_style>;

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }

inline void require(bool ok, const std::string& msg) {
  if (!ok) fail(msg);
}

// "op: name has 11 entries, expected 10"
template <typename T>
void require_size(const carray<T>& a, std::int64_t expected, const char* op, const char* name) {
  if (a.ndim() != 1 || a.size() != expected) {
    fail(std::string(op) + ": " + name + " has " + std::to_string(a.size()) + " entries, expected " +
         std::to_string(expected));
  }
}

}  // namespace recfast::python

// CPU bindings (module_cpu.cpp calls each).
void bind_csr(py::module_& m);
void bind_sampling(py::module_& m);
void bind_bpr(py::module_& m);
void bind_optim(py::module_& m);
void bind_spmm(py::module_& m);
void bind_topk(py::module_& m);

// CUDA bindings (module_cuda.cpp calls each). Pointers and the stream arrive as std::uintptr_t.
void bind_sampling_cuda(py::module_& m);
void bind_bpr_cuda(py::module_& m);
void bind_optim_cuda(py::module_& m);
void bind_spmm_cuda(py::module_& m);
void bind_topk_cuda(py::module_& m);
