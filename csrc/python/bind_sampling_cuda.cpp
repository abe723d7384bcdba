#include "bindings.h"

void bind_sampling_cuda(py::module_& m) { (void)m; }
