// Python bindings of unseg_kernels._C. This file only binds: each op lives in csrc/<op>/.
#include <pybind11/pybind11.h>

#include "info/info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "Native kernels of unseg_kernels (C++ CPU paths, CUDA paths when built with CUDA).";

  m.def(
      "build_info",
      [] {
        const unseg::BuildInfo info = unseg::build_info();
        py::dict d;
        d["version"] = info.version;
        d["cxx_compiler"] = info.cxx_compiler;
        d["with_cuda"] = info.with_cuda;
        d["cuda_runtime_version"] = info.cuda_runtime_version;
        d["cuda_architectures"] = info.cuda_architectures;
        return d;
      },
      "How this module was built: version, compiler, CUDA runtime and architectures.");
  m.def("cuda_device_count", &unseg::cuda_device_count,
        "CUDA devices visible to the runtime (0 without CUDA, driver or GPU).");
}
