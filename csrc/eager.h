// The Python methods of activation_hash._C (csrc/eager.cpp): eager entry points of the
// per-forward ops, for activation_hash/ops.py.
#pragma once

#include <Python.h>

namespace activation_hash {

// The module's method table (null-terminated).
PyMethodDef* eager_methods();

}  // namespace activation_hash
