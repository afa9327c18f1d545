#include <cuda_runtime.h>

#include "info/info.h"

namespace unseg {

int cuda_runtime_version() { return CUDART_VERSION; }

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: report zero, leave no error behind
    return 0;
  }
  return count;
}

}  // namespace unseg
