// Python bindings of unseg_kernels._C. This file only binds: each op lives in csrc/<op>/.
#include <pybind11/pybind11.h>

#include "crf/crf.h"
#include "info/info.h"

namespace py = pybind11;

namespace {

unseg::CrfParams crf_params(int iters, float pos_w, float pos_xy_std, float bi_w, float bi_xy_std,
                            float bi_rgb_std) {
  return unseg::CrfParams{iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std};
}

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

}  // namespace

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

  // Dense CRF: raw addresses of contiguous tensors (images uint8 [B, H, W, 3], probs and q
  // float32 [B, C, H, W]); Python validates every argument before calling these.
  m.def("dense_crf_cpu",
        [](uintptr_t images, uintptr_t probs, uintptr_t q, int64_t batch, int64_t labels,
           int64_t height, int64_t width, int iters, float pos_w, float pos_xy_std, float bi_w,
           float bi_xy_std, float bi_rgb_std, int num_threads, bool baseline_only) {
          py::gil_scoped_release release;
          unseg::dense_crf_cpu(ptr<const uint8_t>(images), ptr<const float>(probs), ptr<float>(q),
                               batch, labels, height, width,
                               crf_params(iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std),
                               num_threads, baseline_only);
        });
  m.def("dense_crf_lattice_stats_cpu",
        [](uintptr_t image, int64_t labels, int64_t height, int64_t width, float pos_xy_std,
           float bi_xy_std, float bi_rgb_std) {
          unseg::LatticeStats s;
          {
            py::gil_scoped_release release;
            s = unseg::dense_crf_lattice_stats_cpu(
                ptr<const uint8_t>(image), labels, height, width,
                crf_params(0, 0.0f, pos_xy_std, 0.0f, bi_xy_std, bi_rgb_std));
          }
          py::dict d;
          d["pos_vertices"] = s.pos_vertices;
          d["bi_vertices"] = s.bi_vertices;
          d["bytes"] = s.bytes;
          return d;
        });
  m.def("dense_crf_cuda_workspace_bytes", &unseg::dense_crf_cuda_workspace_bytes,
        "Device workspace bytes dense_crf_cuda needs for (batch, labels, height, width).");
  m.def("dense_crf_cuda",
        [](uintptr_t images, uintptr_t probs, uintptr_t q, int64_t batch, int64_t labels,
           int64_t height, int64_t width, int iters, float pos_w, float pos_xy_std, float bi_w,
           float bi_xy_std, float bi_rgb_std, int device, uintptr_t workspace,
           size_t workspace_bytes, uintptr_t stream) {
          py::gil_scoped_release release;
          unseg::dense_crf_cuda(ptr<const uint8_t>(images), ptr<const float>(probs), ptr<float>(q),
                                batch, labels, height, width,
                                crf_params(iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std),
                                device, ptr<void>(workspace), workspace_bytes, stream);
        });
}
