#include "bindings.h"

void bind_spmm(py::module_& m) { (void)m; }
