// Dense CRF on the GPU (see crf.h for the math): every image of the batch at once, lattice
// construction included, on one stream, with no host synchronisation.
//
// Lattice construction, per image and kernel (grid.y is the image):
//   embed     one thread per pixel embeds it (permutohedral.h, the same code as the CPU path),
//             packs the d+1 corner keys into 64-bit codes and inserts them into the image's
//             hash table (open addressing, atomicCAS on the code itself, capacity twice the
//             N (d+1) corners so it can never fill); each corner remembers its slot;
//   number    occupied slots get dense vertex ids (atomicAdd on the image's vertex count);
//   neighbours one thread per vertex looks up code + axis offset for every axis; the reverse
//             neighbour is recorded by the same thread;
//   normalise the lattice filters ones; n_p = 1 / sqrt(K(1)_p + 1e-20) is folded into the
//             corner weights.
// Every buffer is sized for the worst case (N (d+1) vertices), so its size is known on the
// host without reading the vertex counts; kernels read the counts on the device and skip the
// rows beyond them.
//
// One mean-field iteration: zero the vertex rows, splat (one thread per pixel and label,
// float atomicAdd into the d+1 corner rows), blur one axis per launch (one thread per vertex
// and label, a fresh buffer per axis), and a fused slice + update (one warp per pixel, lanes
// over labels): Q = softmax((w_pos msg_pos - U) + w_bi msg_bi). Q and U are [B][N][C] so that
// threads of a warp touch one contiguous row. Float atomics make the splat sums' order, and
// so the last bits of Q, vary between runs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "common/cuda_check.cuh"
#include "common/errors.h"
#include "crf/crf.h"
#include "crf/permutohedral.h"

namespace unseg {
namespace {

using crf::BI_D;
using crf::KeyPacking;
using crf::POS_D;

constexpr uint64_t EMPTY_SLOT = ~0ull;
constexpr int THREADS = 256;
constexpr int WARP = 32;
constexpr int WARPS_PER_BLOCK = THREADS / WARP;
constexpr size_t WORKSPACE_ALIGN = 256;
constexpr int64_t MAX_GRID_Y = 65535;  // images are grid.y of every per-pixel launch
constexpr float PROB_CLIP = 1e-5f;     // pydensecrf.utils.unary_from_softmax
constexpr double NORM_EPS = 1e-20;     // NORMALIZE_SYMMETRIC: 1 / sqrt(K(1) + eps)

int64_t next_pow2(int64_t x) {
  int64_t p = 1;
  while (p < x) p *= 2;
  return p;
}

int blocks_for(int64_t n, int per_block) {
  return static_cast<int>(std::max<int64_t>(1, (n + per_block - 1) / per_block));
}

// ---------------------------------------------------------------------------------------
// Workspace: the same layout is computed for sizing and for use.

struct LatticeBuffers {
  uint64_t* table;         // [S] codes, EMPTY_SLOT where free
  int32_t* slot_id;        // [S] vertex id of an occupied slot
  uint64_t* vertex_code;   // [M] code of each vertex
  int32_t* corner_vertex;  // [N][d+1] slot, then vertex id, of each simplex corner
  float* corner_weight;    // [N][d+1] barycentric weight, then times n_p
  int32_t* neighbour;      // [d+1][M][2] both neighbours per axis, -1 if none
  float* rows_a;           // [M][C] value buffers
  float* rows_b;
  int32_t* count;  // vertices
  int64_t slots, max_vertices;
};

struct ImageBuffers {
  LatticeBuffers pos, bi;
  float* unary;  // [N][C]
  float* q;      // [N][C]
};

struct Layout {
  int64_t n, labels;
  int64_t pos_slots, bi_slots, pos_vertices, bi_vertices;
  size_t image_bytes = 0;
  // byte offsets within one image's block
  size_t off[20] = {};

  Layout(int64_t height, int64_t width, int64_t labels_) : n(height * width), labels(labels_) {
    pos_vertices = n * (POS_D + 1);
    bi_vertices = n * (BI_D + 1);
    pos_slots = next_pow2(2 * pos_vertices);
    bi_slots = next_pow2(2 * bi_vertices);
    int k = 0;
    auto add = [&](size_t bytes) {
      off[k++] = image_bytes;
      image_bytes += (bytes + WORKSPACE_ALIGN - 1) / WORKSPACE_ALIGN * WORKSPACE_ALIGN;
    };
    for (int lat = 0; lat < 2; ++lat) {
      const int d = lat == 0 ? POS_D : BI_D;
      const int64_t slots = lat == 0 ? pos_slots : bi_slots;
      const int64_t vertices = lat == 0 ? pos_vertices : bi_vertices;
      add(slots * sizeof(uint64_t));
      add(slots * sizeof(int32_t));
      add(vertices * sizeof(uint64_t));
      add(n * (d + 1) * sizeof(int32_t));
      add(n * (d + 1) * sizeof(float));
      add((d + 1) * vertices * 2 * sizeof(int32_t));
      add(vertices * labels * sizeof(float));
      add(vertices * labels * sizeof(float));
      add(sizeof(int32_t));
    }
    add(n * labels * sizeof(float));
    add(n * labels * sizeof(float));
  }

  ImageBuffers carve(char* base) const {
    ImageBuffers ib;
    int k = 0;
    for (int lat = 0; lat < 2; ++lat) {
      LatticeBuffers& lb = lat == 0 ? ib.pos : ib.bi;
      lb.table = reinterpret_cast<uint64_t*>(base + off[k++]);
      lb.slot_id = reinterpret_cast<int32_t*>(base + off[k++]);
      lb.vertex_code = reinterpret_cast<uint64_t*>(base + off[k++]);
      lb.corner_vertex = reinterpret_cast<int32_t*>(base + off[k++]);
      lb.corner_weight = reinterpret_cast<float*>(base + off[k++]);
      lb.neighbour = reinterpret_cast<int32_t*>(base + off[k++]);
      lb.rows_a = reinterpret_cast<float*>(base + off[k++]);
      lb.rows_b = reinterpret_cast<float*>(base + off[k++]);
      lb.count = reinterpret_cast<int32_t*>(base + off[k++]);
      lb.slots = lat == 0 ? pos_slots : bi_slots;
      lb.max_vertices = lat == 0 ? pos_vertices : bi_vertices;
    }
    ib.unary = reinterpret_cast<float*>(base + off[k++]);
    ib.q = reinterpret_cast<float*>(base + off[k++]);
    return ib;
  }
};

// Per-lattice pointers of image blockIdx.y, derived from image 0's and the image stride.
template <typename T>
__device__ __forceinline__ T* image_ptr(T* p, size_t stride_bytes) {
  return reinterpret_cast<T*>(reinterpret_cast<char*>(p) + blockIdx.y * stride_bytes);
}

template <typename T>
__device__ __forceinline__ const T* image_ptr(const T* p, size_t stride_bytes) {
  return reinterpret_cast<const T*>(reinterpret_cast<const char*>(p) + blockIdx.y * stride_bytes);
}

__device__ __forceinline__ uint64_t slot_hash(uint64_t x) {
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

// ---------------------------------------------------------------------------------------
// Lattice construction.

template <int D>
struct EmbedParams {
  float scale[D];
  KeyPacking<D> pk;
  float xy_std, rgb_std;
};

template <int D>
__global__ void embed_kernel(const uint8_t* images, int64_t n, int64_t width, EmbedParams<D> ep,
                             LatticeBuffers lb, size_t stride) {
  constexpr int V = D + 1;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= n) return;
  const uint8_t* image = images + blockIdx.y * n * 3;
  uint64_t* table = image_ptr(lb.table, stride);
  int32_t* corner_vertex = image_ptr(lb.corner_vertex, stride);
  float* corner_weight = image_ptr(lb.corner_weight, stride);
  const uint64_t mask = static_cast<uint64_t>(lb.slots - 1);

  float f[D];
  crf::pixel_features<D>(image, width, p, ep.xy_std, ep.rgb_std, f);
  crf::Simplex<D> s;
  crf::embed<D>(f, ep.scale, s);
  for (int r = 0; r < V; ++r) {
    int key[D];
    crf::vertex_key<D>(s, r, key);
    const uint64_t code = ep.pk.template pack<uint64_t>(key);
    uint64_t h = slot_hash(code) & mask;
    while (true) {
      const uint64_t prev = atomicCAS(reinterpret_cast<unsigned long long*>(table + h),
                                      static_cast<unsigned long long>(EMPTY_SLOT),
                                      static_cast<unsigned long long>(code));
      if (prev == EMPTY_SLOT || prev == code) break;
      h = (h + 1) & mask;
    }
    corner_vertex[p * V + r] = static_cast<int32_t>(h);
    corner_weight[p * V + r] = s.bary[r];
  }
}

// Dense vertex ids for the occupied slots.
__global__ void number_kernel(LatticeBuffers lb, size_t stride) {
  const int64_t h = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (h >= lb.slots) return;
  const uint64_t* table = image_ptr(lb.table, stride);
  const uint64_t code = table[h];
  if (code == EMPTY_SLOT) return;
  const int32_t id = atomicAdd(image_ptr(lb.count, stride), 1);
  image_ptr(lb.slot_id, stride)[h] = id;
  image_ptr(lb.vertex_code, stride)[id] = code;
}

// Corner slots to vertex ids.
__global__ void corner_ids_kernel(int64_t corners, LatticeBuffers lb, size_t stride) {
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= corners) return;
  int32_t* corner_vertex = image_ptr(lb.corner_vertex, stride);
  corner_vertex[e] = image_ptr(lb.slot_id, stride)[corner_vertex[e]];
}

template <int D>
struct AxisOffsets {
  uint64_t off[D + 1];
};

// For each vertex and axis: the neighbour whose key is key - (1, ..., 1) + (D+1) e_j, and
// the reverse relation for that neighbour. `neighbour` starts all -1.
template <int D>
__global__ void neighbour_kernel(AxisOffsets<D> ao, LatticeBuffers lb, size_t stride) {
  const int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t m = *image_ptr(lb.count, stride);
  if (v >= m) return;
  const uint64_t* table = image_ptr(lb.table, stride);
  const int32_t* slot_id = image_ptr(lb.slot_id, stride);
  int32_t* neighbour = image_ptr(lb.neighbour, stride);
  const uint64_t code = image_ptr(lb.vertex_code, stride)[v];
  const uint64_t mask = static_cast<uint64_t>(lb.slots - 1);
  for (int j = 0; j <= D; ++j) {
    const uint64_t target = code + ao.off[j];
    uint64_t h = slot_hash(target) & mask;
    int32_t u = -1;
    while (true) {
      const uint64_t c = table[h];
      if (c == EMPTY_SLOT) break;
      if (c == target) {
        u = slot_id[h];
        break;
      }
      h = (h + 1) & mask;
    }
    if (u >= 0) {
      int32_t* nb = neighbour + j * lb.max_vertices * 2;
      nb[2 * v] = u;
      nb[2 * static_cast<int64_t>(u) + 1] = static_cast<int32_t>(v);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Splat, blur, slice (row width `labels`; width 1 for the normalisation).

__global__ void zero_rows_kernel(float* rows, int64_t labels, LatticeBuffers lb, size_t stride) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= *image_ptr(lb.count, stride) * labels) return;
  image_ptr(rows, stride)[i] = 0.0f;
}

// rows[corner] += weight * values[p][c] for every corner of pixel p (values == nullptr: 1).
template <int D>
__global__ void splat_kernel(const float* values, size_t values_stride, int64_t n, int64_t labels,
                             float* rows, LatticeBuffers lb, size_t stride) {
  constexpr int V = D + 1;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * labels) return;
  const int64_t p = i / labels, c = i % labels;
  const float x = values ? image_ptr(values, values_stride)[i] : 1.0f;
  const int32_t* corner_vertex = image_ptr(lb.corner_vertex, stride);
  const float* corner_weight = image_ptr(lb.corner_weight, stride);
  float* out = image_ptr(rows, stride);
  for (int r = 0; r < V; ++r) {
    atomicAdd(out + static_cast<int64_t>(corner_vertex[p * V + r]) * labels + c,
              corner_weight[p * V + r] * x);
  }
}

// dst[v] = src[v] + 0.5 * (src[n1] + src[n2]) along axis j.
__global__ void blur_kernel(int axis, const float* src, float* dst, int64_t labels,
                            LatticeBuffers lb, size_t stride) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= *image_ptr(lb.count, stride) * labels) return;
  const int64_t v = i / labels, c = i % labels;
  const int32_t* nb = image_ptr(lb.neighbour, stride) + (axis * lb.max_vertices + v) * 2;
  const float* s = image_ptr(src, stride);
  const float left = nb[0] >= 0 ? s[static_cast<int64_t>(nb[0]) * labels + c] : 0.0f;
  const float right = nb[1] >= 0 ? s[static_cast<int64_t>(nb[1]) * labels + c] : 0.0f;
  image_ptr(dst, stride)[i] = s[i] + 0.5f * (left + right);
}

// n_p = 1 / sqrt(alpha sum_r w_r K1[corner_r] + eps), folded into the corner weights.
template <int D>
__global__ void normalise_kernel(const float* k1, int64_t n, float alpha, LatticeBuffers lb,
                                 size_t stride) {
  constexpr int V = D + 1;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (p >= n) return;
  const int32_t* corner_vertex = image_ptr(lb.corner_vertex, stride);
  float* corner_weight = image_ptr(lb.corner_weight, stride);
  const float* rows = image_ptr(k1, stride);
  float s = 0.0f;
  for (int r = 0; r < V; ++r) {
    s = __fadd_rn(
        s, __fmul_rn(__fmul_rn(corner_weight[p * V + r], rows[corner_vertex[p * V + r]]), alpha));
  }
  const float norm = static_cast<float>(1.0 / sqrt(static_cast<double>(s) + NORM_EPS));
  for (int r = 0; r < V; ++r) corner_weight[p * V + r] *= norm;
}

// Sum over the corners of pixel p of weight * rows[corner][c].
template <int D>
__device__ __forceinline__ float slice_value(const LatticeBuffers& lb, size_t stride,
                                             const float* rows, int64_t p, int64_t c,
                                             int64_t labels) {
  constexpr int V = D + 1;
  const int32_t* corner_vertex = image_ptr(lb.corner_vertex, stride);
  const float* corner_weight = image_ptr(lb.corner_weight, stride);
  const float* r0 = image_ptr(rows, stride);
  float acc = 0.0f;
  for (int r = 0; r < V; ++r) {
    const int64_t row = corner_vertex[p * V + r];
    acc += corner_weight[p * V + r] * r0[row * labels + c];
  }
  return acc;
}

__device__ __forceinline__ float warp_max(float x) {
  for (int o = WARP / 2; o > 0; o /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = WARP / 2; o > 0; o /= 2) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// q[p] = softmax over labels of x[p] (in place), one warp per pixel, lanes over labels.
__device__ __forceinline__ void softmax_row_warp(float* row, int64_t labels, int lane) {
  float mx = -INFINITY;
  for (int64_t c = lane; c < labels; c += WARP) mx = fmaxf(mx, row[c]);
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int64_t c = lane; c < labels; c += WARP) {
    const float e = expf(row[c] - mx);
    row[c] = e;
    sum += e;
  }
  sum = warp_sum(sum);
  __syncwarp();
  for (int64_t c = lane; c < labels; c += WARP) row[c] = row[c] / sum;
}

// U = -log(clip(P, 1e-5, 1)) in [N][C], Q0 = softmax(-U).
__global__ void unary_kernel(const float* probs, int64_t n, int64_t labels, float* unary, float* q,
                             size_t stride) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(WARPS_PER_BLOCK) + threadIdx.x / WARP;
  const int lane = threadIdx.x % WARP;
  if (p >= n) return;
  const float* pr = probs + blockIdx.y * n * labels;
  float* u = image_ptr(unary, stride) + p * labels;
  float* qp = image_ptr(q, stride) + p * labels;
  for (int64_t c = lane; c < labels; c += WARP) {
    u[c] = -logf(fminf(fmaxf(pr[c * n + p], PROB_CLIP), 1.0f));
    qp[c] = -u[c];
  }
  __syncwarp();
  softmax_row_warp(qp, labels, lane);
}

// Q = softmax((w_pos msg_pos - U) + w_bi msg_bi), the order in which pydensecrf adds.
__global__ void update_kernel(int64_t n, int64_t labels, float pos_scale, const float* pos_rows,
                              LatticeBuffers pos, float bi_scale, const float* bi_rows,
                              LatticeBuffers bi, const float* unary, float* q, size_t stride) {
  const int64_t p = blockIdx.x * static_cast<int64_t>(WARPS_PER_BLOCK) + threadIdx.x / WARP;
  const int lane = threadIdx.x % WARP;
  if (p >= n) return;
  const float* u = image_ptr(unary, stride) + p * labels;
  float* qp = image_ptr(q, stride) + p * labels;
  for (int64_t c = lane; c < labels; c += WARP) {
    const float mp = pos_scale * slice_value<POS_D>(pos, stride, pos_rows, p, c, labels);
    const float mb = bi_scale * slice_value<BI_D>(bi, stride, bi_rows, p, c, labels);
    qp[c] = (mp - u[c]) + mb;
  }
  __syncwarp();
  softmax_row_warp(qp, labels, lane);
}

// out [B][C][N] from q [N][C].
__global__ void output_kernel(const float* q, int64_t n, int64_t labels, float* out,
                              size_t stride) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= n * labels) return;
  const int64_t c = i / n, p = i % n;
  out[blockIdx.y * n * labels + i] = image_ptr(q, stride)[p * labels + c];
}

// ---------------------------------------------------------------------------------------
// Host side.

template <int D>
EmbedParams<D> embed_params(int64_t height, int64_t width, float xy_std, float rgb_std) {
  EmbedParams<D> ep;
  for (int i = 0; i < D; ++i) ep.scale[i] = crf::elevation_scale(D, i);
  ep.pk = KeyPacking<D>::for_image(height, width, xy_std, rgb_std, ep.scale);
  ep.xy_std = xy_std;
  ep.rgb_std = rgb_std;
  UNSEG_CHECK_ARG(ep.pk.bits <= 64, "dense_crf on CUDA packs lattice keys into 64 bits, but ",
                  height, "x", width, " images with these standard deviations need ", ep.pk.bits,
                  "; use the CPU path or larger standard deviations");
  return ep;
}

template <int D>
void build_lattice(const uint8_t* images, int64_t batch, int64_t height, int64_t width,
                   const EmbedParams<D>& ep, const LatticeBuffers& lb, size_t stride,
                   cudaStream_t stream) {
  constexpr int V = D + 1;
  const int64_t n = height * width;
  AxisOffsets<D> ao;
  for (int j = 0; j <= D; ++j) ao.off[j] = ep.pk.template axis_offset<uint64_t>(j);

  const dim3 pixels(blocks_for(n, THREADS), static_cast<unsigned>(batch));
  const dim3 slots(blocks_for(lb.slots, THREADS), static_cast<unsigned>(batch));
  const dim3 corners(blocks_for(n * V, THREADS), static_cast<unsigned>(batch));
  const dim3 vertices(blocks_for(lb.max_vertices, THREADS), static_cast<unsigned>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    char* base = reinterpret_cast<char*>(lb.table) + b * stride;
    UNSEG_CUDA_CHECK(cudaMemsetAsync(base, 0xFF, lb.slots * sizeof(uint64_t), stream));
    UNSEG_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<char*>(lb.count) + b * stride, 0,
                                     sizeof(int32_t), stream));
    UNSEG_CUDA_CHECK(cudaMemsetAsync(reinterpret_cast<char*>(lb.neighbour) + b * stride, 0xFF,
                                     V * lb.max_vertices * 2 * sizeof(int32_t), stream));
  }
  embed_kernel<D><<<pixels, THREADS, 0, stream>>>(images, n, width, ep, lb, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf embed_kernel");
  number_kernel<<<slots, THREADS, 0, stream>>>(lb, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf number_kernel");
  corner_ids_kernel<<<corners, THREADS, 0, stream>>>(n * V, lb, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf corner_ids_kernel");
  neighbour_kernel<D><<<vertices, THREADS, 0, stream>>>(ao, lb, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf neighbour_kernel");

  // Normalisation: filter ones (rows of width 1 in the value buffers).
  zero_rows_kernel<<<vertices, THREADS, 0, stream>>>(lb.rows_a, 1, lb, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf zero_rows_kernel");
  splat_kernel<D><<<pixels, THREADS, 0, stream>>>(nullptr, 0, n, 1, lb.rows_a, lb, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf splat_kernel");
  float* src = lb.rows_a;
  float* dst = lb.rows_b;
  for (int j = 0; j <= D; ++j) {
    blur_kernel<<<vertices, THREADS, 0, stream>>>(j, src, dst, 1, lb, stride);
    UNSEG_CUDA_CHECK_LAUNCH("dense_crf blur_kernel");
    std::swap(src, dst);
  }
  normalise_kernel<D><<<pixels, THREADS, 0, stream>>>(src, n, crf::slice_alpha(D), lb, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf normalise_kernel");
}

// Splat and blur one lattice; returns the buffer holding the blurred rows.
template <int D>
const float* filter(const float* q, int64_t batch, int64_t n, int64_t labels,
                    const LatticeBuffers& lb, size_t stride, cudaStream_t stream) {
  const dim3 entries(blocks_for(n * labels, THREADS), static_cast<unsigned>(batch));
  const dim3 rows(blocks_for(lb.max_vertices * labels, THREADS), static_cast<unsigned>(batch));
  zero_rows_kernel<<<rows, THREADS, 0, stream>>>(lb.rows_a, labels, lb, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf zero_rows_kernel");
  splat_kernel<D><<<entries, THREADS, 0, stream>>>(q, stride, n, labels, lb.rows_a, lb, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf splat_kernel");
  float* src = lb.rows_a;
  float* dst = lb.rows_b;
  for (int j = 0; j <= D; ++j) {
    blur_kernel<<<rows, THREADS, 0, stream>>>(j, src, dst, labels, lb, stride);
    UNSEG_CUDA_CHECK_LAUNCH("dense_crf blur_kernel");
    std::swap(src, dst);
  }
  return src;
}

// Restores the calling thread's current device on scope exit.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    UNSEG_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != device) UNSEG_CUDA_CHECK(cudaSetDevice(device));
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

}  // namespace

size_t dense_crf_cuda_workspace_bytes(int64_t batch, int64_t labels, int64_t height,
                                      int64_t width) {
  return static_cast<size_t>(batch) * Layout(height, width, labels).image_bytes;
}

void dense_crf_cuda(const uint8_t* images, const float* probs, float* q, int64_t batch,
                    int64_t labels, int64_t height, int64_t width, const CrfParams& params,
                    int device, void* workspace, size_t workspace_bytes, uintptr_t stream_handle) {
  UNSEG_CHECK_ARG(batch >= 1 && batch <= MAX_GRID_Y, "dense_crf_cuda: batch must be in [1, ",
                  MAX_GRID_Y, "], got ", batch);
  UNSEG_CHECK_ARG(labels >= 1 && height >= 1 && width >= 1,
                  "dense_crf_cuda: labels, height and width must be positive");
  const Layout layout(height, width, labels);
  UNSEG_CHECK_ARG(workspace_bytes >= static_cast<size_t>(batch) * layout.image_bytes,
                  "dense_crf_cuda: workspace of ", workspace_bytes, " bytes, need ",
                  static_cast<size_t>(batch) * layout.image_bytes);
  UNSEG_CHECK_ARG(reinterpret_cast<uintptr_t>(workspace) % WORKSPACE_ALIGN == 0,
                  "dense_crf_cuda: workspace must be ", WORKSPACE_ALIGN, "-byte aligned");
  // Both key packings are checked before anything is queued.
  const EmbedParams<POS_D> pos_ep = embed_params<POS_D>(height, width, params.pos_xy_std, 1.0f);
  const EmbedParams<BI_D> bi_ep =
      embed_params<BI_D>(height, width, params.bi_xy_std, params.bi_rgb_std);
  DeviceGuard guard(device);
  const cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const size_t stride = layout.image_bytes;
  const ImageBuffers ib = layout.carve(static_cast<char*>(workspace));
  const int64_t n = layout.n;

  build_lattice<POS_D>(images, batch, height, width, pos_ep, ib.pos, stride, stream);
  build_lattice<BI_D>(images, batch, height, width, bi_ep, ib.bi, stride, stream);

  const dim3 warps(blocks_for(n, WARPS_PER_BLOCK), static_cast<unsigned>(batch));
  unary_kernel<<<warps, THREADS, 0, stream>>>(probs, n, labels, ib.unary, ib.q, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf unary_kernel");
  const float pos_scale = params.pos_w * crf::slice_alpha(POS_D);
  const float bi_scale = params.bi_w * crf::slice_alpha(BI_D);
  for (int it = 0; it < params.iters; ++it) {
    const float* pos_rows = filter<POS_D>(ib.q, batch, n, labels, ib.pos, stride, stream);
    const float* bi_rows = filter<BI_D>(ib.q, batch, n, labels, ib.bi, stride, stream);
    update_kernel<<<warps, THREADS, 0, stream>>>(n, labels, pos_scale, pos_rows, ib.pos, bi_scale,
                                                 bi_rows, ib.bi, ib.unary, ib.q, stride);
    UNSEG_CUDA_CHECK_LAUNCH("dense_crf update_kernel");
  }
  const dim3 outputs(blocks_for(n * labels, THREADS), static_cast<unsigned>(batch));
  output_kernel<<<outputs, THREADS, 0, stream>>>(ib.q, n, labels, q, stride);
  UNSEG_CUDA_CHECK_LAUNCH("dense_crf output_kernel");
}

}  // namespace unseg
