#include "bindings.h"

void bind_bpr(py::module_& m) { (void)m; }
