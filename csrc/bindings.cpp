// Python bindings of unseg_kernels._C. This file only binds: each op lives in csrc/<op>/.
#include <pybind11/pybind11.h>

#include "crf/crf.h"
#include "info/info.h"
#include "kmeans/kmeans.h"
#include "knn/topk.h"

namespace py = pybind11;

namespace {

// Pointers cross from Python as integers (tensor.data_ptr()).
template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

unseg::CrfParams crf_params(int iters, float pos_w, float pos_xy_std, float bi_w, float bi_xy_std,
                            float bi_rgb_std) {
  return unseg::CrfParams{iters, pos_w, pos_xy_std, bi_w, bi_xy_std, bi_rgb_std};
}

unseg::KMeansShape kmeans_shape(int64_t b, int64_t n, int64_t d, int64_t k) {
  return unseg::KMeansShape{b, n, d, k};
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

  m.def(
      "kmeans_cpu_isa",
      [](int isa) {
        return std::string(unseg::kmeans_cpu_isa_name(static_cast<unseg::CpuIsa>(isa)));
      },
      "Name of the SIMD kernels the CPU k-means uses for isa (0 auto, 1 generic, 2 avx2).");
  m.def(
      "kmeans_plusplus_cpu",
      [](uintptr_t x, int64_t b, int64_t n, int64_t d, int64_t k, uintptr_t u, uintptr_t out,
         int num_threads, int isa) {
        unseg::kmeans_plusplus_cpu(ptr<const float>(x), kmeans_shape(b, n, d, k),
                                   ptr<const double>(u), ptr<float>(out), num_threads,
                                   static_cast<unseg::CpuIsa>(isa));
      },
      py::call_guard<py::gil_scoped_release>(), "k-means++ seeding on CPU (see kmeans.h).");
  m.def(
      "kmeans_lloyd_cpu",
      [](uintptr_t x, int64_t b, int64_t n, int64_t d, int64_t k, int metric, double tol,
         int max_iter, uintptr_t centroids, uintptr_t labels, uintptr_t inertia, uintptr_t n_iter,
         int num_threads, int isa) {
        unseg::kmeans_lloyd_cpu(ptr<const float>(x), kmeans_shape(b, n, d, k),
                                static_cast<unseg::KMeansMetric>(metric), tol, max_iter,
                                ptr<float>(centroids), ptr<int64_t>(labels), ptr<double>(inertia),
                                ptr<int64_t>(n_iter), num_threads, static_cast<unseg::CpuIsa>(isa));
      },
      py::call_guard<py::gil_scoped_release>(), "Lloyd k-means on CPU (see kmeans.h).");
  m.def(
      "topk_update_cpu",
      [](uintptr_t scores, int64_t rows, int64_t cols, int64_t stride, int64_t col_offset,
         int64_t k, bool largest, uintptr_t values, uintptr_t indices, int num_threads) {
        unseg::topk_update_cpu(ptr<const float>(scores), rows, cols, stride, col_offset, k, largest,
                               ptr<float>(values), ptr<int64_t>(indices), num_threads);
      },
      py::call_guard<py::gil_scoped_release>(),
      "Folds a block of scores into running per-row top-k heaps (see knn/topk.h).");
#ifdef UNSEG_WITH_CUDA
  m.def(
      "kmeans_plusplus_cuda_workspace_bytes",
      [](int64_t b, int64_t n, int64_t d, int64_t k) {
        return unseg::kmeans_plusplus_cuda_workspace_bytes(kmeans_shape(b, n, d, k));
      },
      "Bytes of device workspace kmeans_plusplus_cuda needs.");
  m.def(
      "kmeans_plusplus_cuda",
      [](uintptr_t x, int64_t b, int64_t n, int64_t d, int64_t k, uintptr_t u, uintptr_t out,
         uintptr_t workspace, uintptr_t stream) {
        unseg::kmeans_plusplus_cuda(ptr<const float>(x), kmeans_shape(b, n, d, k),
                                    ptr<const double>(u), ptr<float>(out), ptr<void>(workspace),
                                    stream);
      },
      py::call_guard<py::gil_scoped_release>(), "k-means++ seeding on CUDA (see kmeans.h).");
  m.def(
      "kmeans_lloyd_cuda_workspace_bytes",
      [](int64_t b, int64_t n, int64_t d, int64_t k) {
        return unseg::kmeans_lloyd_cuda_workspace_bytes(kmeans_shape(b, n, d, k));
      },
      "Bytes of device workspace kmeans_lloyd_cuda needs.");
  m.def(
      "kmeans_lloyd_cuda",
      [](uintptr_t x, int64_t b, int64_t n, int64_t d, int64_t k, int metric, double tol,
         int max_iter, uintptr_t centroids, uintptr_t labels, uintptr_t inertia, uintptr_t n_iter,
         uintptr_t workspace, uintptr_t stream) {
        unseg::kmeans_lloyd_cuda(ptr<const float>(x), kmeans_shape(b, n, d, k),
                                 static_cast<unseg::KMeansMetric>(metric), tol, max_iter,
                                 ptr<float>(centroids), ptr<int64_t>(labels), ptr<double>(inertia),
                                 ptr<int64_t>(n_iter), ptr<void>(workspace), stream);
      },
      py::call_guard<py::gil_scoped_release>(), "Lloyd k-means on CUDA (see kmeans.h).");
#endif
}
