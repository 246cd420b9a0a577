// The Python module of rllc's CPU kernels (rllc/kernels/cpu_kernels.py). Each kernel's
// source registers its own functions, so the sources, which include torch's headers and
// take most of the build, compile in parallel; this file needs pybind11's headers only.
#include <pybind11/pybind11.h>

void register_softmax_rows(pybind11::module_& m);
void register_causal_attention(pybind11::module_& m);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  register_softmax_rows(m);
  register_causal_attention(m);
}
