#include "bindings.h"

void bind_bpr_cuda(py::module_& m) { (void)m; }
