// Turns CUDA runtime errors into C++ exceptions naming the failing call, so Python sees a
// RuntimeError instead of an abort.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace unseg {

inline void cuda_check(cudaError_t err, const char* call, const char* file, int line) {
  if (err != cudaSuccess) {
    cudaGetLastError();  // reset the last-error slot so the next call does not report it again
    throw std::runtime_error(std::string("CUDA error in ") + call + " (" + file + ":" +
                             std::to_string(line) + "): " + cudaGetErrorString(err));
  }
}

}  // namespace unseg

#define UNSEG_CUDA_CHECK(call) ::unseg::cuda_check((call), #call, __FILE__, __LINE__)
// After a kernel launch: catches launch-configuration errors without synchronising.
#define UNSEG_CUDA_CHECK_LAUNCH(name) \
  ::unseg::cuda_check(cudaGetLastError(), name, __FILE__, __LINE__)
