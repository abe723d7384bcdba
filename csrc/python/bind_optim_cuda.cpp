#include "bindings.h"

void bind_optim_cuda(py::module_& m) { (void)m; }
