// Python entry points of the two ops that run once per activation per forward pass
// (pack_signs, relu_pack), for eager calls from activation_hash/ops.py.
//
// A call through torch.ops (the op's OpOverload) converts its arguments to a stack of IValues
// by the schema and calls the op boxed: on a 64 x 64 input right after a forward pass that cost
// about 4 us against about 2 us for torch.relu. These entries take a plain Tensor and a float,
// call the same registered op through the dispatcher (unboxed: autograd, the CPU/CUDA kernel,
// and the Python dispatch key for fake tensors and dispatch modes, as any call does) and wrap
// the results. They do not look for __torch_function__ overrides: ops.py calls them only for a
// torch.Tensor (not a subclass) with no TorchFunctionMode on and outside torch.compile, and
// calls the OpOverload otherwise.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include "eager.h"

namespace activation_hash {
namespace {

const at::Tensor* tensor_arg(PyObject* obj, const char* fn) {
  if (!THPVariable_CheckExact(obj)) {
    PyErr_Format(PyExc_TypeError, "%s: x must be a torch.Tensor, got %s", fn,
                 Py_TYPE(obj)->tp_name);
    return nullptr;
  }
  return &THPVariable_Unpack(obj);
}

PyObject* pack_signs_eager(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 1) {
    PyErr_Format(PyExc_TypeError, "pack_signs_eager takes 1 argument (x), got %zd", nargs);
    return nullptr;
  }
  const at::Tensor* x = tensor_arg(args[0], "pack_signs_eager");
  if (x == nullptr) return nullptr;
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("activation_hash::pack_signs", "")
                       .typed<at::Tensor(const at::Tensor&)>();
  at::Tensor words;
  {
    pybind11::gil_scoped_release no_gil;  // as torch's own bindings do
    words = op.call(*x);
  }
  return THPVariable_Wrap(std::move(words));
  END_HANDLE_TH_ERRORS
}

PyObject* relu_pack_eager(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 2 || !PyFloat_CheckExact(args[1])) {
    PyErr_SetString(PyExc_TypeError,
                    "relu_pack_eager takes 2 arguments (x: Tensor, negative_slope: float)");
    return nullptr;
  }
  const at::Tensor* x = tensor_arg(args[0], "relu_pack_eager");
  if (x == nullptr) return nullptr;
  const double slope = PyFloat_AS_DOUBLE(args[1]);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("activation_hash::relu_pack", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, double)>();
  std::tuple<at::Tensor, at::Tensor> out;
  {
    pybind11::gil_scoped_release no_gil;
    out = op.call(*x, slope);
  }
  PyObject* y = THPVariable_Wrap(std::move(std::get<0>(out)));
  if (y == nullptr) return nullptr;
  PyObject* words = THPVariable_Wrap(std::move(std::get<1>(out)));
  if (words == nullptr) {
    Py_DECREF(y);
    return nullptr;
  }
  PyObject* pair = PyTuple_Pack(2, y, words);
  Py_DECREF(y);
  Py_DECREF(words);
  return pair;
  END_HANDLE_TH_ERRORS
}

PyMethodDef kEagerMethods[] = {
    {"pack_signs_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(&pack_signs_eager)),
     METH_FASTCALL, "pack_signs(x) for a torch.Tensor x, in eager mode (see ops.py)"},
    {"relu_pack_eager", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(&relu_pack_eager)),
     METH_FASTCALL, "relu_pack(x, negative_slope) for a torch.Tensor x, in eager mode"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* eager_methods() { return kEagerMethods; }

}  // namespace activation_hash
