// activation_hash._C.RecorderCore (csrc/recorder.cpp): a recorder's state and per-forward entry
// points, the base of activation_hash.record.Recorder.
#pragma once

#include <Python.h>

namespace activation_hash {

// Adds RecorderCore and recorder_setup to the module; false with a Python error set on failure.
bool add_recorder_core(PyObject* module);

}  // namespace activation_hash
