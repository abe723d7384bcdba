#include "bindings.h"

void bind_optim(py::module_& m) { (void)m; }
