// Batched Lloyd k-means and k-means++ seeding (SPEC section 5), CPU (kmeans_cpu.cpp) and CUDA
// (kmeans_cuda.cu) twins behind one interface.
//
// Every entry point works on B independent problems of N points in D dimensions, stored as one
// contiguous float32 array x [B, N, D]. Python prepares the inputs: it converts to float32,
// L2-normalises the points for metric "cosine" (spherical k-means), draws the random numbers
// (so a seed gives the same draws on every device) and fills the initial centroids.
//
// Semantics shared by both twins:
//   * assignment: the nearest centroid by squared L2 distance (euclidean) or the largest dot
//     product (cosine), ties to the lowest centroid index;
//   * update: the mean of the assigned points, accumulated in float64 over fixed slabs of
//     points and reduced in slab order, so results do not depend on the thread count;
//     cosine re-normalises every centroid (t / max(||t||, 1e-10));
//   * empty clusters: the empty clusters, in index order, take the points farthest from their
//     centroid (distance descending, index ascending); each such point leaves its cluster's
//     sum (the cluster keeps its previous centroid if that leaves it empty) and becomes the
//     empty cluster's centroid;
//   * convergence (scikit-learn): stop when no label changed, or when the sum of squared
//     centroid moves is <= tol * (mean over features of the per-feature variance of x[b]);
//   * finally every point is assigned to the returned centroids and inertia is the exact sum
//     of squared distances (euclidean) or of 1 - cos (cosine), accumulated in float64.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define UNSEG_HOST_DEVICE __host__ __device__
#else
#define UNSEG_HOST_DEVICE
#endif

namespace unseg {

enum class KMeansMetric : int { kEuclidean = 0, kCosine = 1 };

// Instruction sets of the CPU distance kernels. kAuto picks the best one the CPU supports.
enum class CpuIsa : int { kAuto = 0, kGeneric = 1, kAvx2 = 2 };

// B problems of N points in D dimensions, K clusters each.
struct KMeansShape {
  int64_t batch;
  int64_t n;
  int64_t d;
  int64_t k;
};

// Index chosen by D^2 sampling among n weights: the first i with a positive weight whose
// running sum (from 0, in index order) exceeds target. Falls back to the last positive weight
// when rounding leaves no crossing. Shared by both twins so that the rule is written once.
template <typename Real, typename Get>
UNSEG_HOST_DEVICE inline int64_t dsquared_pick(Real target, int64_t n, Get weight) {
  Real cum = Real(0);
  int64_t last_positive = -1;
  for (int64_t i = 0; i < n; ++i) {
    const Real w = weight(i);
    if (w > Real(0)) {
      last_positive = i;
      cum += w;
      if (cum > target) return i;
    }
  }
  return last_positive;
}

// First centroid of k-means++: uniform over the points. u is in [0, 1).
UNSEG_HOST_DEVICE inline int64_t uniform_pick(double u, int64_t n) {
  int64_t i = static_cast<int64_t>(u * static_cast<double>(n));
  return i < n ? i : n - 1;
}

// ----------------------------------------------------------------------------------------------
// CPU. Pointers are host pointers; num_threads <= 0 means one per hardware thread.

// The instruction set the CPU kernels would use for `isa` (kAuto resolved), as a name.
const char* kmeans_cpu_isa_name(CpuIsa isa);

// k-means++ seeding. u [B, K] uniform draws in [0, 1) (u[b, 0] picks the first centroid
// uniformly, u[b, j] the j-th by D^2 sampling). Writes centroids [B, K, D].
void kmeans_plusplus_cpu(const float* x, KMeansShape shape, const double* u, float* centroids,
                         int num_threads, CpuIsa isa);

// Lloyd iterations from the centroids in `centroids` [B, K, D] (updated in place), with the
// relative tolerance tol. Writes labels [B, N], inertia [B], n_iter [B].
void kmeans_lloyd_cpu(const float* x, KMeansShape shape, KMeansMetric metric, double tol,
                      int max_iter, float* centroids, int64_t* labels, double* inertia,
                      int64_t* n_iter, int num_threads, CpuIsa isa);

// ----------------------------------------------------------------------------------------------
// CUDA. Pointers are device pointers on the current device, work is queued on `stream` (a
// cudaStream_t passed as an integer). Workspace is one device buffer of the size returned by
// the *_workspace_bytes function, allocated by the caller (torch's caching allocator).

int64_t kmeans_plusplus_cuda_workspace_bytes(KMeansShape shape);
void kmeans_plusplus_cuda(const float* x, KMeansShape shape, const double* u, float* centroids,
                          void* workspace, uintptr_t stream);

int64_t kmeans_lloyd_cuda_workspace_bytes(KMeansShape shape);
// Like kmeans_lloyd_cpu. Convergence flags stay on the device: the host reads one counter
// back every few iterations.
void kmeans_lloyd_cuda(const float* x, KMeansShape shape, KMeansMetric metric, double tol,
                       int max_iter, float* centroids, int64_t* labels, double* inertia,
                       int64_t* n_iter, void* workspace, uintptr_t stream);

}  // namespace unseg
