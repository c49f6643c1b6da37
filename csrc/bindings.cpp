// pybind11 module tfprune._C: thin bindings over the ops declared in ops.h.
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "tfprune C++/CUDA extension";
  module.def("nm_first_violation", &tfprune::nm_first_violation, pybind11::arg("weight"), pybind11::arg("n"),
             pybind11::arg("m"),
             "First (row, group) of weight (out, in; fp32/fp64/fp16/bf16, CPU) whose group of m input weights "
             "holds more than n non-zeros, or (-1, -1) when weight is n:m sparse.");
}
