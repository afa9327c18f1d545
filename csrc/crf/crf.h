// Batched fully connected CRF (Kraehenbuehl & Koltun 2011) with the Gaussian (position) and
// bilateral (position + colour) kernels of pydensecrf, mean-field inference (SPEC section 4):
//
//   U   = -log(clip(P, 1e-5, 1))
//   Q0  = softmax_c(-U)
//   Q  <- softmax_c(-U + sum_k w_k n_k * Kt_k(n_k * Q))     (iters times)
//
// Kt_k is the permutohedral-lattice approximation of the Gaussian filter with features
// f_k / std_k (self term included), n_k = 1 / sqrt(Kt_k(1) + 1e-20) the symmetric
// normalisation. The lattice of each kernel depends only on the image: it is built once and
// reused for every iteration and every label.
//
// Layouts: images uint8 [B, H, W, 3] (channels used in the order given), probs and Q float32
// [B, C, H, W], all contiguous. The CPU path (crf_cpu.cpp) and the CUDA path (crf_cuda.cu)
// follow the same steps; both read probs and write Q only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace unseg {

struct CrfParams {
  int iters;
  float pos_w;       // weight of the Gaussian kernel
  float pos_xy_std;  // its spatial std (pixels)
  float bi_w;        // weight of the bilateral kernel
  float bi_xy_std;   // its spatial std (pixels)
  float bi_rgb_std;  // its colour std (intensity levels)
};

// Refines probs into q on the CPU. Images are processed in parallel; an image gets several
// threads (over vertices and pixels) when the batch is smaller than num_threads (<= 0: all
// hardware threads). The inference kernels use AVX2 and FMA when the CPU has them, unless
// baseline_only (then SSE2 on x86-64, NEON on ARM); the two differ by float rounding only.
void dense_crf_cpu(const uint8_t* images, const float* probs, float* q, int64_t batch,
                   int64_t labels, int64_t height, int64_t width, const CrfParams& params,
                   int num_threads, bool baseline_only);

// Vertices of the two lattices of one image and the bytes the CPU path keeps for them
// (pixel orders, per-pixel vertices and weights, splat lists, blur neighbours, and the two
// value buffers of `labels` labels per lattice); for reporting, not needed to run.
struct LatticeStats {
  int64_t pos_vertices;
  int64_t bi_vertices;
  int64_t bytes;
};
LatticeStats dense_crf_lattice_stats_cpu(const uint8_t* image, int64_t labels, int64_t height,
                                         int64_t width, const CrfParams& params);

// Bytes of device workspace dense_crf_cuda needs for `batch` images (worst-case lattice of
// N * (d + 1) vertices per image and kernel, N = height * width).
size_t dense_crf_cuda_workspace_bytes(int64_t batch, int64_t labels, int64_t height, int64_t width);

// Refines probs into q on GPU `device`, all images at once, on `stream` (a cudaStream_t), with
// `workspace` (device memory of at least dense_crf_cuda_workspace_bytes, 256-byte aligned)
// for every temporary. Queues work only: no host synchronisation.
void dense_crf_cuda(const uint8_t* images, const float* probs, float* q, int64_t batch,
                    int64_t labels, int64_t height, int64_t width, const CrfParams& params,
                    int device, void* workspace, size_t workspace_bytes, uintptr_t stream);

}  // namespace unseg
