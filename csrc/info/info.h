// Build and runtime facts reported by `python -m unseg_kernels info`.
#pragma once

#include <string>

namespace unseg {

struct BuildInfo {
  std::string version;
  std::string cxx_compiler;
  bool with_cuda;
  int cuda_runtime_version;  // e.g. 13000; -1 without CUDA
  std::string cuda_architectures;
};

BuildInfo build_info();

// Devices visible to the CUDA runtime; 0 when built without CUDA, or when no driver or GPU is
// present (never an error: a CPU-only machine is a supported configuration).
int cuda_device_count();

}  // namespace unseg
