#include "info/info.h"

#ifndef UNSEG_CUDA_ARCHS
#define UNSEG_CUDA_ARCHS ""
#endif

namespace unseg {

#ifdef UNSEG_WITH_CUDA
int cuda_runtime_version();  // info_cuda.cu
#else
int cuda_device_count() { return 0; }
static int cuda_runtime_version() { return -1; }
#endif

BuildInfo build_info() {
  BuildInfo info;
  info.version = UNSEG_VERSION;
#if defined(__clang__)
  info.cxx_compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  info.cxx_compiler = "gcc " __VERSION__;
#else
  info.cxx_compiler = "unknown";
#endif
#ifdef UNSEG_WITH_CUDA
  info.with_cuda = true;
#else
  info.with_cuda = false;
#endif
  info.cuda_runtime_version = cuda_runtime_version();
  info.cuda_architectures = UNSEG_CUDA_ARCHS;
  return info;
}

}  // namespace unseg
