#include "bindings.h"

void bind_topk(py::module_& m) { (void)m; }
