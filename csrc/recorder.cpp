// activation_hash._C.RecorderCore: the state of a recorder (activation_hash/record.py) and its
// three per-forward entry points, __init__, __enter__/__exit__ and _add_words, in C.
//
// A recorder is made, entered and left once per forward pass in the common case, and on a
// small model its Python bookkeeping cost as much as a twentieth of the forward pass
// (bench/record.py). Here each entry point takes the common case of *direct mode* (every site
// an activation module of ours, already known; docs/design.md, section 8) and hands every
// other case, unchanged, to the Python method that handles all of them: _enter_general,
// _exit_general, _add_words_general (activation_hash/record.py). A fast path changes nothing
// before it has decided to finish the call itself, so the general method always sees the
// state it would have seen without this file. activation_hash/record_core.py has the same
// class in Python (PyRecorderCore), used where the extension is not built; tests run the
// recorder on both.
#include <Python.h>
#include <structmember.h>
#include <torch/csrc/autograd/python_variable.h>

#include <cstddef>
#include <cstring>

#include "recorder.h"

namespace activation_hash {
namespace {

// Set once by recorder_setup (activation_hash/record_core.py, at import).
struct Globals {
  PyObject* active = nullptr;      // nn.ACTIVE_RECORDERS, a ContextVar of a tuple
  PyObject* generation = nullptr;  // taps._GENERATION, a list of one int
  PyObject* facts_key = nullptr;   // taps._FACTS_KEY: where a model keeps its ModelFacts
  PyObject* module_type = nullptr; // torch.nn.Module
} g;

// Interned attribute and method names.
struct Names {
  PyObject *generation, *model_id, *direct, *torch_activations, *first, *shapes, *inputs,
      *enter_general, *exit_general, *add_words_general, *join;
} n;

bool intern_names() {
  const char* text[] = {"generation", "model_id", "direct", "torch_activations", "first",
                        "shapes", "inputs", "_enter_general", "_exit_general",
                        "_add_words_general", "_join"};
  PyObject** slot[] = {&n.generation, &n.model_id, &n.direct, &n.torch_activations, &n.first,
                       &n.shapes, &n.inputs, &n.enter_general, &n.exit_general,
                       &n.add_words_general, &n.join};
  for (size_t i = 0; i < sizeof(text) / sizeof(text[0]); ++i) {
    *slot[i] = PyUnicode_InternFromString(text[i]);
    if (*slot[i] == nullptr) return false;
  }
  return true;
}

// The fields, named as the Python attributes of record.py (PyRecorderCore's __slots__).
struct RecorderCore {
  PyObject_HEAD
  PyObject* model;
  PyObject* layers;
  PyObject* keep;
  PyObject* on_batch;
  PyObject* functional;
  PyObject* batches;
  PyObject* keys;      // _keys
  PyObject* words;     // _words
  PyObject* first;     // _first
  PyObject* layout;    // _layout
  PyObject* selected;  // _selected
  PyObject* facts;     // _facts
  PyObject* watch;     // _watch
  PyObject* token;     // _token
  PyObject* direct;    // _direct
  PyObject* expected;  // _expected
  PyObject* shapes;    // _shapes
  PyObject* inputs;    // _inputs
  PyObject* odd;       // _odd
  PyObject* taps;      // _taps
  PyObject* handing;   // _handing
  Py_ssize_t pos;      // _pos
  Py_ssize_t depth;    // _depth
};

// Every object field, for GC and dealloc.
#define AH_RECORDER_OBJECTS(X)                                                             \
  X(model) X(layers) X(keep) X(on_batch) X(functional) X(batches) X(keys) X(words) X(first) \
  X(layout) X(selected) X(facts) X(watch) X(token) X(direct) X(expected) X(shapes)          \
  X(inputs) X(odd) X(taps) X(handing)

int core_traverse(RecorderCore* self, visitproc visit, void* arg) {
#define AH_VISIT(f) Py_VISIT(self->f);
  AH_RECORDER_OBJECTS(AH_VISIT)
#undef AH_VISIT
  return 0;
}

int core_clear(RecorderCore* self) {
#define AH_CLEAR(f) Py_CLEAR(self->f);
  AH_RECORDER_OBJECTS(AH_CLEAR)
#undef AH_CLEAR
  return 0;
}

void core_dealloc(RecorderCore* self) {
  PyObject_GC_UnTrack(self);
  core_clear(self);
  Py_TYPE(self)->tp_free(reinterpret_cast<PyObject*>(self));
}

const char* type_name(PyObject* obj) {  // as Python's type(obj).__name__
  const char* name = Py_TYPE(obj)->tp_name;
  const char* dot = std::strrchr(name, '.');
  return dot != nullptr ? dot + 1 : name;
}

void set_field(PyObject** field, PyObject* value) {  // value: a new reference (or null)
  Py_XSETREF(*field, value);
}

PyObject* new_ref(PyObject* obj) {
  Py_INCREF(obj);
  return obj;
}

// record(model, *, layers=None, keep=True, on_batch=None, functional=None): as
// PyRecorderCore.__init__.
int core_init(RecorderCore* self, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"model", "layers", "keep", "on_batch", "functional", nullptr};
  PyObject *model, *layers = Py_None, *keep = Py_True, *on_batch = Py_None, *functional = Py_None;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|$OOOO:record", const_cast<char**>(keywords),
                                   &model, &layers, &keep, &on_batch, &functional)) {
    return -1;
  }
  if (g.module_type == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "RecorderCore: recorder_setup was not called");
    return -1;
  }
  const int is_module = PyObject_IsInstance(model, g.module_type);
  if (is_module < 0) return -1;
  if (!is_module) {
    PyErr_Format(PyExc_TypeError, "record expects an nn.Module, got %s",
                 type_name(model));
    return -1;
  }
  if (functional != Py_None && !PyBool_Check(functional)) {
    PyErr_Format(PyExc_TypeError, "functional must be True or False, got %s %R",
                 type_name(functional), functional);
    return -1;
  }
  PyObject* layer_list = nullptr;
  if (layers != Py_None && (layer_list = PySequence_List(layers)) == nullptr) return -1;
  PyObject* batches = PyList_New(0);
  PyObject* words = PyList_New(0);
  if (batches == nullptr || words == nullptr) {
    Py_XDECREF(layer_list);
    Py_XDECREF(batches);
    Py_XDECREF(words);
    return -1;
  }
  set_field(&self->model, new_ref(model));
  set_field(&self->layers, layer_list != nullptr ? layer_list : new_ref(Py_None));
  set_field(&self->keep, new_ref(keep));
  set_field(&self->on_batch, new_ref(on_batch));
  set_field(&self->functional, new_ref(functional));
  set_field(&self->batches, batches);
  set_field(&self->keys, PyTuple_New(0));
  set_field(&self->words, words);
  set_field(&self->first, new_ref(Py_None));
  set_field(&self->layout, new_ref(Py_None));
  set_field(&self->selected, new_ref(Py_None));
  set_field(&self->token, new_ref(Py_None));
  set_field(&self->handing, PyTuple_New(0));
  set_field(&self->direct, PyTuple_New(0));
  set_field(&self->odd, new_ref(Py_None));
  set_field(&self->watch, new_ref(Py_None));
  self->pos = 0;
  self->depth = 0;
  if (self->keys == nullptr || self->handing == nullptr || self->direct == nullptr) return -1;
  return 0;
}

// The model's ModelFacts when they are current (a new reference), else null with no error set.
// Python: taps.model_facts without the recomputation.
PyObject* current_facts(PyObject* model) {
  PyObject* dict = PyObject_GenericGetDict(model, nullptr);
  if (dict == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  PyObject* facts = PyDict_GetItemWithError(dict, g.facts_key);
  Py_XINCREF(facts);
  Py_DECREF(dict);
  if (facts == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  PyObject* generation = PyObject_GetAttr(facts, n.generation);
  PyObject* model_id = PyObject_GetAttr(facts, n.model_id);
  bool current = generation != nullptr && model_id != nullptr &&
                 PyLong_CheckExact(generation) && PyLong_CheckExact(model_id) &&
                 PyList_CheckExact(g.generation) && PyList_GET_SIZE(g.generation) == 1 &&
                 PyObject_RichCompareBool(generation, PyList_GET_ITEM(g.generation, 0), Py_EQ) == 1 &&
                 PyLong_AsVoidPtr(model_id) == static_cast<void*>(model);
  Py_XDECREF(generation);
  Py_XDECREF(model_id);
  PyErr_Clear();
  if (!current) Py_CLEAR(facts);
  return facts;
}

PyObject* push_active(RecorderCore* self) {  // ACTIVE_RECORDERS += (self,); its token
  PyObject* active;
  if (PyContextVar_Get(g.active, nullptr, &active) < 0) return nullptr;
  if (active == nullptr || !PyTuple_Check(active)) {
    Py_XDECREF(active);
    PyErr_SetString(PyExc_RuntimeError, "ACTIVE_RECORDERS does not hold a tuple");
    return nullptr;
  }
  const Py_ssize_t k = PyTuple_GET_SIZE(active);
  PyObject* grown = PyTuple_New(k + 1);
  if (grown == nullptr) {
    Py_DECREF(active);
    return nullptr;
  }
  for (Py_ssize_t i = 0; i < k; ++i) PyTuple_SET_ITEM(grown, i, new_ref(PyTuple_GET_ITEM(active, i)));
  PyTuple_SET_ITEM(grown, k, new_ref(reinterpret_cast<PyObject*>(self)));
  Py_DECREF(active);
  PyObject* token = PyContextVar_Set(g.active, grown);
  Py_DECREF(grown);
  return token;
}

// __enter__: direct mode, every site one of our modules (no torch activation to hand its
// inputs over), the model's facts current; otherwise _enter_general.
PyObject* core_enter(RecorderCore* self, PyObject*) {
  PyObject* self_obj = reinterpret_cast<PyObject*>(self);
  if (g.active == nullptr || self->token != Py_None || self->functional == Py_True ||
      self->first == nullptr || self->model == nullptr) {
    return PyObject_CallMethodNoArgs(self_obj, n.enter_general);
  }
  PyObject* facts = current_facts(self->model);
  if (facts == nullptr) return PyObject_CallMethodNoArgs(self_obj, n.enter_general);
  PyObject* direct = PyObject_GetAttr(facts, n.direct);
  PyObject* theirs = direct != nullptr ? PyObject_GetAttr(facts, n.torch_activations) : nullptr;
  PyObject* expected = self->first != Py_None ? new_ref(self->first)
                                              : (theirs != nullptr ? PyObject_GetAttr(facts, n.first) : nullptr);
  bool fast = direct != nullptr && theirs != nullptr && expected != nullptr &&
              PyTuple_CheckExact(direct) && PyTuple_GET_SIZE(direct) > 0 &&
              PyList_CheckExact(theirs) && PyList_GET_SIZE(theirs) == 0 && expected != Py_None;
  PyObject* shapes = fast ? PyObject_GetAttr(expected, n.shapes) : nullptr;
  PyObject* inputs = shapes != nullptr ? PyObject_GetAttr(expected, n.inputs) : nullptr;
  Py_XDECREF(theirs);
  if (inputs == nullptr) {
    Py_DECREF(facts);
    Py_XDECREF(direct);
    Py_XDECREF(expected);
    Py_XDECREF(shapes);
    PyErr_Clear();
    return PyObject_CallMethodNoArgs(self_obj, n.enter_general);
  }
  PyObject* token = push_active(self);
  if (token == nullptr) {
    Py_DECREF(facts);
    Py_DECREF(direct);
    Py_DECREF(expected);
    Py_DECREF(shapes);
    Py_DECREF(inputs);
    return nullptr;
  }
  set_field(&self->facts, facts);
  set_field(&self->expected, expected);
  set_field(&self->direct, direct);
  set_field(&self->shapes, shapes);
  set_field(&self->inputs, inputs);
  set_field(&self->token, token);
  return new_ref(self_obj);
}

// self.<name>(*args, **kwargs) of a METH_FASTCALL | METH_KEYWORDS call: the general case.
PyObject* call_general(PyObject* self, PyObject* name, PyObject* const* args, size_t nargsf,
                       PyObject* kwnames) {
  const Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
  const Py_ssize_t total = nargs + (kwnames != nullptr ? PyTuple_GET_SIZE(kwnames) : 0);
  PyObject* stack[9];
  if (total > 8) {
    PyErr_Format(PyExc_TypeError, "too many arguments (%zd)", total);
    return nullptr;
  }
  stack[0] = self;
  for (Py_ssize_t i = 0; i < total; ++i) stack[i + 1] = args[i];
  return PyObject_VectorcallMethod(name, stack, static_cast<size_t>(nargs) + 1, kwnames);
}

// __exit__(exc_type, exc, tb): direct mode with no batch in progress and nothing handed over;
// otherwise _exit_general.
PyObject* core_exit(RecorderCore* self, PyObject* const* args, size_t nargsf, PyObject* kwnames) {
  PyObject* self_obj = reinterpret_cast<PyObject*>(self);
  const bool fast = PyVectorcall_NARGS(nargsf) == 3 && kwnames == nullptr && g.active != nullptr && self->direct != nullptr &&
                    PyTuple_CheckExact(self->direct) && PyTuple_GET_SIZE(self->direct) > 0 &&
                    self->pos == 0 && self->handing != nullptr &&
                    PyTuple_CheckExact(self->handing) && PyTuple_GET_SIZE(self->handing) == 0 &&
                    self->token != nullptr && self->token != Py_None;
  if (!fast) {
    return call_general(self_obj, n.exit_general, args, nargsf, kwnames);
  }
  if (PyContextVar_Reset(g.active, self->token) < 0) return nullptr;
  set_field(&self->token, new_ref(Py_None));
  PyObject* empty = PyTuple_New(0);
  if (empty == nullptr) return nullptr;
  set_field(&self->direct, empty);
  Py_RETURN_NONE;
}

// Whether tensor x has exactly the sizes of `shape` (a torch.Size, or anything else: no).
bool same_sizes(PyObject* x, PyObject* shape) {
  if (!PyTuple_Check(shape)) return false;
  const at::Tensor& t = THPVariable_Unpack(x);
  // sizes() throws for symbolic and nested tensors: those take the general path
  if (t.is_nested() || t.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) return false;
  const Py_ssize_t dim = PyTuple_GET_SIZE(shape);
  if (t.dim() != dim) return false;
  const auto sizes = t.sizes();
  for (Py_ssize_t d = 0; d < dim; ++d) {
    PyObject* item = PyTuple_GET_ITEM(shape, d);
    if (!PyLong_CheckExact(item)) return false;
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(item, &overflow);
    if (overflow || v != sizes[d]) return false;
  }
  return true;
}

// _add_words(module, x, words[, theirs]): in direct mode (where `theirs` changes nothing), the
// expected site with the input shape seen before, and (at the batch's last site) no layer selection and no on_batch;
// otherwise _add_words_general.
PyObject* core_add_words(RecorderCore* self, PyObject* const* args, size_t nargsf,
                         PyObject* kwnames) {
  PyObject* self_obj = reinterpret_cast<PyObject*>(self);
  const Py_ssize_t nargs = kwnames == nullptr ? PyVectorcall_NARGS(nargsf) : -1;
  PyObject* direct = self->direct;
  const Py_ssize_t i = self->pos;
  bool fast = (nargs == 3 || nargs == 4) && direct != nullptr && PyTuple_CheckExact(direct) && i >= 0 &&
              i < PyTuple_GET_SIZE(direct) && PyTuple_GET_ITEM(direct, i) == args[0] &&
              THPVariable_CheckExact(args[1]) && self->inputs != nullptr &&
              PyList_CheckExact(self->inputs) && i < PyList_GET_SIZE(self->inputs) &&
              same_sizes(args[1], PyList_GET_ITEM(self->inputs, i)) && self->words != nullptr &&
              PyList_CheckExact(self->words);
  const bool last = fast && i + 1 == PyTuple_GET_SIZE(direct);
  if (last) {  // (a recorder's first batch adopts the expected sites: _adopt, no layers)
    fast = (self->first == self->expected || self->layers == Py_None) &&
           self->selected == Py_None && self->on_batch == Py_None && self->batches != nullptr &&
           PyList_CheckExact(self->batches) && self->expected != nullptr && self->keep != nullptr;
  }
  if (!fast) {
    return call_general(self_obj, n.add_words_general, args, nargsf, kwnames);
  }
  PyObject* words = args[2];
  if (!last) {
    if (PyList_Append(self->words, words) < 0) return nullptr;
    self->pos = i + 1;
    Py_RETURN_NONE;
  }
  self->pos = 0;
  if (self->first != self->expected) set_field(&self->first, new_ref(self->expected));
  PyObject* code;
  if (i > 0) {  // the batch's words joined (as _add_words_general; the list is reused)
    PyObject* batch = self->words;
    Py_INCREF(batch);
    code = PyList_Append(batch, words) < 0 ? nullptr
                                           : PyObject_CallMethodOneArg(self_obj, n.join, batch);
    PyObject *type = nullptr, *value = nullptr, *tb = nullptr;
    if (code == nullptr) PyErr_Fetch(&type, &value, &tb);  // _join's error, kept
    const int cleared = PyList_SetSlice(batch, 0, PyList_GET_SIZE(batch), nullptr);
    if (code == nullptr) PyErr_Restore(type, value, tb);
    Py_DECREF(batch);
    if (code == nullptr) return nullptr;
    if (cleared < 0) {
      Py_DECREF(code);
      return nullptr;
    }
  } else {
    code = new_ref(words);
  }
  const int keep = PyObject_IsTrue(self->keep);
  const int appended = keep > 0 ? PyList_Append(self->batches, code) : keep;
  Py_DECREF(code);
  if (appended < 0) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef core_methods[] = {
    {"__enter__", reinterpret_cast<PyCFunction>(&core_enter), METH_NOARGS,
     "Start recording (direct mode here; every other case: _enter_general)."},
    {"__exit__", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(&core_exit)), METH_FASTCALL | METH_KEYWORDS,
     "Stop recording (direct mode with no batch in progress here; else _exit_general)."},
    {"_add_words", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(&core_add_words)),
     METH_FASTCALL | METH_KEYWORDS,
     "_add_words(module, x, words, theirs=False): a site's words (direct mode here; every "
     "other case: _add_words_general)."},
    {nullptr, nullptr, 0, nullptr}};

#define AH_MEMBER(name, field) \
  {name, T_OBJECT_EX, offsetof(RecorderCore, field), 0, nullptr}
PyMemberDef core_members[] = {
    AH_MEMBER("model", model), AH_MEMBER("layers", layers), AH_MEMBER("keep", keep),
    AH_MEMBER("on_batch", on_batch), AH_MEMBER("functional", functional),
    AH_MEMBER("batches", batches), AH_MEMBER("_keys", keys), AH_MEMBER("_words", words),
    AH_MEMBER("_first", first), AH_MEMBER("_layout", layout), AH_MEMBER("_selected", selected),
    AH_MEMBER("_facts", facts), AH_MEMBER("_watch", watch), AH_MEMBER("_token", token),
    AH_MEMBER("_direct", direct), AH_MEMBER("_expected", expected),
    AH_MEMBER("_shapes", shapes), AH_MEMBER("_inputs", inputs), AH_MEMBER("_odd", odd),
    AH_MEMBER("_taps", taps), AH_MEMBER("_handing", handing),
    {"_pos", T_PYSSIZET, offsetof(RecorderCore, pos), 0, nullptr},
    {"_depth", T_PYSSIZET, offsetof(RecorderCore, depth), 0, nullptr},
    {nullptr, 0, 0, 0, nullptr}};
#undef AH_MEMBER

PyTypeObject core_type = [] {
  PyTypeObject t{PyVarObject_HEAD_INIT(nullptr, 0)};
  t.tp_name = "activation_hash._C.RecorderCore";
  t.tp_basicsize = sizeof(RecorderCore);
  t.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC;
  t.tp_doc = "A recorder's state and its per-forward entry points (csrc/recorder.cpp).";
  t.tp_traverse = reinterpret_cast<traverseproc>(&core_traverse);
  t.tp_clear = reinterpret_cast<inquiry>(&core_clear);
  t.tp_dealloc = reinterpret_cast<destructor>(&core_dealloc);
  t.tp_methods = core_methods;
  t.tp_members = core_members;
  t.tp_init = reinterpret_cast<initproc>(&core_init);
  t.tp_new = PyType_GenericNew;
  return t;
}();

// recorder_setup(active_recorders, generation, facts_key, module_type)
PyObject* recorder_setup(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 4 || !PyList_CheckExact(args[1]) || !PyUnicode_Check(args[2]) ||
      !PyType_Check(args[3])) {
    PyErr_SetString(PyExc_TypeError,
                    "recorder_setup(active_recorders: ContextVar, generation: list, "
                    "facts_key: str, module_type: type)");
    return nullptr;
  }
  PyObject** slot[] = {&g.active, &g.generation, &g.facts_key, &g.module_type};
  for (int i = 0; i < 4; ++i) Py_XSETREF(*slot[i], new_ref(args[i]));
  Py_RETURN_NONE;
}

PyMethodDef kSetupMethod = {
    "recorder_setup", reinterpret_cast<PyCFunction>(reinterpret_cast<void*>(&recorder_setup)),
    METH_FASTCALL,
    "recorder_setup(active_recorders, generation, facts_key, module_type): what RecorderCore "
    "reads (activation_hash/record_core.py)"};

}  // namespace

bool add_recorder_core(PyObject* module) {
  if (!intern_names() || PyType_Ready(&core_type) < 0) return false;
  Py_INCREF(&core_type);
  if (PyModule_AddObject(module, "RecorderCore", reinterpret_cast<PyObject*>(&core_type)) < 0) {
    Py_DECREF(&core_type);
    return false;
  }
  PyObject* setup = PyCFunction_New(&kSetupMethod, nullptr);
  if (setup == nullptr || PyModule_AddObject(module, "recorder_setup", setup) < 0) {
    Py_XDECREF(setup);
    return false;
  }
  return true;
}

}  // namespace activation_hash
