#include "bindings.h"

void bind_sampling(py::module_& m) { (void)m; }
