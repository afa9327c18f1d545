// CUDA k-means: the twin of kmeans_cpu.cpp (semantics in kmeans.h).
//
// Every kernel covers all B problems of the batch in one launch. One Lloyd iteration is three
// launches and no host synchronisation:
//   assign    fused distances + argmin + accumulation. A block owns a slab of SLAB_TILES tiles of
//             BM points of one problem; a tile's dot products with a tile of BN centroids are a
//             register-blocked [BM x BN] product over D staged through shared memory, so no
//             N x K buffer exists. The block then adds each point to its cluster's row of a
//             [K, D] float sum it owns (in shared memory when it fits): thread t owns columns
//             t, t + 128, ..., so there are no atomics and the order is fixed.
//   reduce    adds the per-slab sums in slab order (float64) and the counts.
//   finalize  one block per problem: re-seeds empty clusters, computes the new centroids, their
//             shift and squared norms, and sets the problem's done flag (labels unchanged or
//             shift <= tol), decrementing an active-problem counter.
// Problems that are done make later launches return at once; the host reads the counter back
// every CHECK_EVERY iterations and stops when it reaches zero. A final assignment gives labels
// consistent with the returned centroids, and the inertia is summed exactly per point.
//
// k-means++ is 2K - 1 launches for the whole batch: for each new centroid, one kernel updates
// every point's D^2 and per-block sums, and one warp per problem picks the next point.
#include <cuda_runtime.h>
#include <math_constants.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/errors.h"
#include "kmeans/kmeans.h"

namespace unseg {
namespace {

// --- assignment tile ---------------------------------------------------------------------------
constexpr int BM = 64;                          // points per tile
constexpr int BN = 32;                          // centroids per tile
constexpr int BK = 32;                          // dimensions per shared-memory stage
constexpr int TM = 4;                           // points per thread
constexpr int TN = 4;                           // centroids per thread
constexpr int TX = BN / TN;                     // threads along centroids (8, one lane group)
constexpr int ASSIGN_THREADS = (BM / TM) * TX;  // 128
constexpr int XS_STRIDE = BK + 1;               // point tile [BM][BK]: conflict-free reads
constexpr int CS_STRIDE = BN + 4;               // centroid tile [BK][BN]: float4 reads aligned
constexpr int ROW_STEP = ASSIGN_THREADS / BK;   // rows one pass of the threads loads
// A slab has at least SLAB_MIN_TILES tiles and at least K / 16 tiles (its [K, D] sum is then at
// most a quarter of its points), and more when the batch has many tiles (about MAX_SLABS blocks).
constexpr int64_t SLAB_MIN_TILES = 1;
constexpr int64_t MAX_SLABS = 2048;
// Largest [K, D] float sum kept in shared memory; larger ones live in the slab's global buffer.
constexpr int64_t SMEM_ACC_MAX_BYTES = 96 * 1024;

// --- other kernels -------------------------------------------------------------------------------
constexpr int WARP = 32;
constexpr int ROW_THREADS = 256;  // warp-per-row kernels
constexpr int ROW_WARPS = ROW_THREADS / WARP;
constexpr int64_t PTS = WARP * WARP;  // points per block in the D^2 / inertia sums
constexpr int STAT_THREADS = 128;
constexpr int64_t STAT_ROWS = 1024;  // rows per block of the variance partials
constexpr int CHECK_EVERY = 8;       // iterations between reads of the counter
constexpr float NORM_EPS = 1e-10f;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// By value (std::min takes references, which device code cannot bind to host constants).
__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// Where each buffer lives in the caller's workspace.
struct Layout {
  int64_t kp, tiles, slab_tiles, slabs, pts_blocks, stat_chunks;
  int64_t x_sq, best, cbias, partial, partial_counts, sums, counts, shift_k, tol_abs, moments,
      inertia_part, changes, done, active, bytes;
};

Layout lloyd_layout(const KMeansShape& s) {
  Layout l{};
  l.kp = round_up(s.k, BN);
  l.tiles = ceil_div(s.n, BM);
  l.slab_tiles = std::max<int64_t>(
      {SLAB_MIN_TILES, ceil_div(s.k, 16), ceil_div(s.batch * l.tiles, MAX_SLABS)});
  l.slab_tiles = std::min(l.slab_tiles, l.tiles);
  l.slabs = ceil_div(l.tiles, l.slab_tiles);
  l.pts_blocks = ceil_div(s.n, PTS);
  l.stat_chunks = ceil_div(s.n, STAT_ROWS);
  int64_t off = 0;
  auto take = [&off](int64_t bytes) {
    const int64_t at = off;
    off += round_up(bytes, 256);
    return at;
  };
  l.x_sq = take(s.batch * s.n * 4);
  l.best = take(s.batch * s.n * 4);
  l.cbias = take(s.batch * l.kp * 4);
  l.partial = take(s.batch * l.slabs * s.k * s.d * 4);
  l.partial_counts = take(s.batch * l.slabs * s.k * 4);
  l.sums = take(s.batch * s.k * s.d * 8);
  l.counts = take(s.batch * s.k * 8);
  l.shift_k = take(s.batch * s.k * 8);
  l.tol_abs = take(s.batch * 8);
  l.moments = take(s.batch * l.stat_chunks * s.d * 2 * 8);
  l.inertia_part = take(s.batch * l.pts_blocks * 8);
  l.changes = take(s.batch * 8);
  l.done = take(s.batch * 4);
  l.active = take(4);
  l.bytes = off;
  return l;
}

template <typename T>
T* at(void* base, int64_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of vals[0 .. PTS) in a fixed order: lane l adds vals[32 l .. 32 l + 31] in sequence,
// then lane sums in sequence. Called by one whole warp; the result is valid in lane 0.
__device__ double fixed_order_sum(const double* vals, double* lane_sums) {
  const int lane = threadIdx.x % WARP;
  double s = 0.0;
  for (int i = 0; i < WARP; ++i) s += vals[lane * WARP + i];
  lane_sums[lane] = s;
  __syncwarp();
  double total = 0.0;
  if (lane == 0)
    for (int i = 0; i < WARP; ++i) total += lane_sums[i];
  return total;
}

// ------------------------------------------------------------------------------------------------
// Row statistics.

// out[b * n + i] = ||x_i||^2, one warp per row.
__global__ void sq_norms_kernel(const float* __restrict__ x, int64_t rows, int64_t d,
                                float* __restrict__ out) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * ROW_THREADS + threadIdx.x) / WARP;
  if (row >= rows) return;
  const float* xr = x + row * d;
  float s = 0.0f;
  for (int64_t j = threadIdx.x % WARP; j < d; j += WARP) s = fmaf(xr[j], xr[j], s);
  s = warp_sum(s);
  if (threadIdx.x % WARP == 0) out[row] = s;
}

// Column sums and sums of squares (float64) over chunks of STAT_ROWS rows:
// moments[((b * chunks + c) * d + j) * 2 + {0, 1}].
__global__ void moments_kernel(const float* __restrict__ x, int64_t n, int64_t d, int64_t chunks,
                               int64_t col_blocks, double* __restrict__ moments) {
  const int64_t blk = blockIdx.x;
  const int64_t b = blk / (chunks * col_blocks);
  const int64_t c = (blk / col_blocks) % chunks;
  const int64_t j = (blk % col_blocks) * STAT_THREADS + threadIdx.x;
  if (j >= d) return;
  const float* xb = x + b * n * d;
  const int64_t r1 = min64(n, (c + 1) * STAT_ROWS);
  double s1 = 0.0, s2 = 0.0;
  for (int64_t r = c * STAT_ROWS; r < r1; ++r) {
    const double v = xb[r * d + j];
    s1 += v;
    s2 += v * v;
  }
  double* m = moments + ((b * chunks + c) * d + j) * 2;
  m[0] = s1;
  m[1] = s2;
}

// tol_abs[b] = tol * mean over columns of the population variance. One block per problem.
__global__ void tolerance_kernel(const double* __restrict__ moments, int64_t n, int64_t d,
                                 int64_t chunks, double tol, double* __restrict__ tol_abs) {
  __shared__ double warp_part[ROW_WARPS];
  const int64_t b = blockIdx.x;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += ROW_THREADS) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      const double* m = moments + ((b * chunks + c) * d + j) * 2;
      s1 += m[0];
      s2 += m[1];
    }
    const double mean = s1 / static_cast<double>(n);
    acc += fmax(s2 / static_cast<double>(n) - mean * mean, 0.0);
  }
  acc = warp_sum(acc);
  if (threadIdx.x % WARP == 0) warp_part[threadIdx.x / WARP] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < ROW_WARPS; ++w) total += warp_part[w];
    tol_abs[b] = tol * total / static_cast<double>(d);
  }
}

// ------------------------------------------------------------------------------------------------
// Lloyd iteration.

struct AssignParams {
  const float* x;               // [B, N, D]
  const float* centroids;       // [B, K, D]
  const float* cbias;           // [B, KP]: ||c||^2 (euclidean) or 0, +inf on padding
  const float* x_sq;            // [B, N], nullptr for cosine
  int64_t* labels;              // [B, N] in: previous labels, out: new labels
  float* best;                  // [B, N] distance to the chosen centroid
  const int* done;              // [B], nullptr in the final pass
  unsigned long long* changes;  // [B], nullptr in the final pass
  float* partial;               // [B, S, K, D], nullptr in the final pass
  int* partial_counts;          // [B, S, K]
  int64_t n, d, k, kp, tiles, slab_tiles, slabs;
  bool smem_acc;
};

__global__ void __launch_bounds__(ASSIGN_THREADS) assign_kernel(AssignParams p) {
  __shared__ float xs[BM * XS_STRIDE];
  __shared__ __align__(16) float cs[BK * CS_STRIDE];
  __shared__ int lab_s[BM];
  __shared__ unsigned changes_s;
  extern __shared__ float acc_s[];  // [K, D] when p.smem_acc

  const int64_t b = blockIdx.x / p.slabs, slab = blockIdx.x % p.slabs;
  if (p.done != nullptr && p.done[b]) return;
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  const int col = tid % BK, row0 = tid / BK;
  const int64_t n = p.n, d = p.d, k = p.k;
  const float* xb = p.x + b * n * d;
  const float* cb = p.centroids + b * k * d;
  const float* biasb = p.cbias + b * p.kp;
  const bool accumulate = p.partial != nullptr;
  float* acc = nullptr;
  int* counts = nullptr;
  if (accumulate) {
    acc = p.smem_acc ? acc_s : p.partial + (b * p.slabs + slab) * k * d;
    counts = p.partial_counts + (b * p.slabs + slab) * k;
    for (int64_t i = tid; i < k * d; i += ASSIGN_THREADS) acc[i] = 0.0f;
    for (int64_t i = tid; i < k; i += ASSIGN_THREADS) counts[i] = 0;
  }
  if (tid == 0) changes_s = 0;
  unsigned my_changes = 0;

  const int64_t t1 = min64(p.tiles, (slab + 1) * p.slab_tiles);
  for (int64_t t = slab * p.slab_tiles; t < t1; ++t) {
    const int64_t p0 = t * BM;
    float best_s[TM];
    int best_k[TM];
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      best_s[i] = CUDART_INF_F;
      best_k[i] = 0;
    }
    for (int64_t j0 = 0; j0 < p.kp; j0 += BN) {
      float dot[TM][TN];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) dot[i][j] = 0.0f;
      for (int64_t k0 = 0; k0 < d; k0 += BK) {
        __syncthreads();  // the previous stage has been read
        // Point chunk [BM][BK] and centroid chunk (transposed to [BK][BN]): thread tid reads
        // column tid % BK of rows tid / BK, + 4, + 8, ...: consecutive threads read
        // consecutive dimensions of a row.
        const int64_t gd = k0 + col;
        const bool col_ok = gd < d;
        const float* xp = xb + (p0 + row0) * d + gd;
#pragma unroll
        for (int r = 0; r < BM / ROW_STEP; ++r) {
          const int row = row0 + r * ROW_STEP;
          xs[row * XS_STRIDE + col] = (col_ok && p0 + row < n) ? xp[r * ROW_STEP * d] : 0.0f;
        }
        const float* cp = cb + (j0 + row0) * d + gd;
#pragma unroll
        for (int r = 0; r < BN / ROW_STEP; ++r) {
          const int c = row0 + r * ROW_STEP;
          cs[col * CS_STRIDE + c] = (col_ok && j0 + c < k) ? cp[r * ROW_STEP * d] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < BK; ++kk) {
          const float4 cv = *reinterpret_cast<const float4*>(&cs[kk * CS_STRIDE + tx * TN]);
#pragma unroll
          for (int i = 0; i < TM; ++i) {
            const float xv = xs[(ty * TM + i) * XS_STRIDE + kk];
            dot[i][0] = fmaf(xv, cv.x, dot[i][0]);
            dot[i][1] = fmaf(xv, cv.y, dot[i][1]);
            dot[i][2] = fmaf(xv, cv.z, dot[i][2]);
            dot[i][3] = fmaf(xv, cv.w, dot[i][3]);
          }
        }
      }
      // argmin of ||c||^2 - 2 x.c over this thread's centroids (ascending, so ties keep the
      // lower index); padding centroids have bias +inf.
#pragma unroll
      for (int j = 0; j < TN; ++j) {
        const int kidx = static_cast<int>(j0) + tx * TN + j;
        const float bias = biasb[kidx];
#pragma unroll
        for (int i = 0; i < TM; ++i) {
          const float s = bias - 2.0f * dot[i][j];
          if (s < best_s[i]) {
            best_s[i] = s;
            best_k[i] = kidx;
          }
        }
      }
    }
    // Across the TX lanes that share these points (one aligned group of 8 lanes).
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      for (int o = TX / 2; o > 0; o /= 2) {
        const float os = __shfl_xor_sync(0xffffffffu, best_s[i], o);
        const int ok = __shfl_xor_sync(0xffffffffu, best_k[i], o);
        if (os < best_s[i] || (os == best_s[i] && ok < best_k[i])) {
          best_s[i] = os;
          best_k[i] = ok;
        }
      }
    }
    if (tx == 0) {
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int pt = ty * TM + i;
        const int64_t gp = p0 + pt;
        if (gp >= n) continue;
        const int64_t label = best_k[i];
        const float dist = p.x_sq != nullptr ? fmaxf(p.x_sq[b * n + gp] + best_s[i], 0.0f)
                                             : 1.0f + 0.5f * best_s[i];
        p.best[b * n + gp] = dist;
        my_changes += p.labels[b * n + gp] != label;
        p.labels[b * n + gp] = label;
        lab_s[pt] = best_k[i];
        if (accumulate) atomicAdd(&counts[label], 1);  // integer: order-free
      }
    }
    if (accumulate) {
      __syncthreads();  // lab_s is complete
      const int64_t rows = min64(BM, n - p0);
      for (int64_t j = tid; j < d; j += ASSIGN_THREADS) {
        const float* col = xb + p0 * d + j;
        for (int64_t r = 0; r < rows; ++r) acc[lab_s[r] * d + j] += col[r * d];
      }
    }
  }
  if (p.changes != nullptr) {
    atomicAdd(&changes_s, my_changes);
    __syncthreads();
    if (tid == 0 && changes_s != 0) atomicAdd(&p.changes[b], changes_s);
  }
  if (accumulate && p.smem_acc) {
    __syncthreads();
    float* out = p.partial + (b * p.slabs + slab) * k * d;
    for (int64_t i = tid; i < k * d; i += ASSIGN_THREADS) out[i] = acc_s[i];
  }
}

// sums[b, k, :] and counts[b, k]: the slab partials added in slab order. Block = (problem,
// cluster, column block of 128).
__global__ void reduce_kernel(const float* __restrict__ partial,
                              const int* __restrict__ partial_counts, int64_t slabs, int64_t k,
                              int64_t d, int64_t col_blocks, const int* __restrict__ done,
                              double* __restrict__ sums, int64_t* __restrict__ counts) {
  const int64_t blk = blockIdx.x;
  const int64_t b = blk / (k * col_blocks), c = (blk / col_blocks) % k, cb = blk % col_blocks;
  if (done[b]) return;
  const int64_t j = cb * STAT_THREADS + threadIdx.x;
  if (j < d) {
    double s = 0.0;
    for (int64_t t = 0; t < slabs; ++t) s += partial[((b * slabs + t) * k + c) * d + j];
    sums[(b * k + c) * d + j] = s;
  }
  if (cb == 0 && threadIdx.x == 0) {
    int64_t n = 0;
    for (int64_t t = 0; t < slabs; ++t) n += partial_counts[(b * slabs + t) * k + c];
    counts[b * k + c] = n;
  }
}

struct FinalizeParams {
  const float* x;
  const int64_t* labels;
  float* best;
  double* sums;
  int64_t* counts;
  float* centroids;
  float* cbias;
  double* shift_k;
  const double* tol_abs;
  unsigned long long* changes;
  int* done;
  int64_t* n_iter;
  int* active;
  int64_t n, d, k, kp;
  int iteration;
  bool cosine;
};

// (key, index) pairs ordered by largest key, then smallest index: any order of comparisons
// picks the same winner, so the block reduction below is deterministic.
struct Pick {
  float key;
  int64_t idx;
};

__device__ __forceinline__ bool better(const Pick& a, const Pick& b) {
  return a.key > b.key || (a.key == b.key && a.idx < b.idx);
}

// The best Pick of the block, returned to every thread.
__device__ Pick block_best(Pick mine, Pick* warp_best) {
  for (int o = WARP / 2; o > 0; o /= 2) {
    Pick other{__shfl_xor_sync(0xffffffffu, mine.key, o),
               __shfl_xor_sync(0xffffffffu, mine.idx, o)};
    if (better(other, mine)) mine = other;
  }
  if (threadIdx.x % WARP == 0) warp_best[threadIdx.x / WARP] = mine;
  __syncthreads();
  Pick all = warp_best[0];
  for (int w = 1; w < ROW_WARPS; ++w)
    if (better(warp_best[w], all)) all = warp_best[w];
  __syncthreads();
  return all;
}

__global__ void __launch_bounds__(ROW_THREADS) finalize_kernel(FinalizeParams p) {
  __shared__ Pick warp_best[ROW_WARPS];
  const int64_t b = blockIdx.x;
  if (p.done[b]) return;
  const int64_t n = p.n, d = p.d, k = p.k;
  const int tid = threadIdx.x, lane = tid % WARP, warp = tid / WARP;
  int64_t* counts = p.counts + b * k;
  double* sums = p.sums + b * k * d;
  float* cent = p.centroids + b * k * d;

  // Empty clusters, in index order, take the farthest points (best descending, index
  // ascending). Mark the clusters empty now as -1, so clusters that a donation empties are
  // not re-seeded in this iteration (as on CPU).
  for (int64_t c = tid; c < k; c += ROW_THREADS)
    if (counts[c] == 0) counts[c] = -1;
  __syncthreads();
  int64_t prev = -1;
  while (true) {
    Pick e{0.0f, INT64_MAX};
    for (int64_t c = prev + 1 + tid; c < k; c += ROW_THREADS) {
      if (counts[c] == -1) {
        e = Pick{0.0f, c};
        break;
      }
    }
    e = block_best(e, warp_best);
    if (e.idx == INT64_MAX) break;
    // Taken points hold -inf; 1 - cos may round slightly below 0, so no other sentinel.
    Pick far{-CUDART_INF_F, INT64_MAX};
    for (int64_t i = tid; i < n; i += ROW_THREADS) {
      const Pick cand{p.best[b * n + i], i};
      if (cand.key != -CUDART_INF_F && better(cand, far)) far = cand;
    }
    far = block_best(far, warp_best);
    const int64_t pt = far.idx, from = p.labels[b * n + pt], to = e.idx;
    const float* xp = p.x + (b * n + pt) * d;
    for (int64_t j = tid; j < d; j += ROW_THREADS) {
      sums[from * d + j] -= xp[j];
      sums[to * d + j] = xp[j];
    }
    __syncthreads();
    if (tid == 0) {
      p.best[b * n + pt] = -CUDART_INF_F;  // taken
      counts[from] -= 1;
      counts[to] = 1;
    }
    __syncthreads();
    prev = to;
  }

  // New centroids (one warp per row); clusters left empty keep theirs.
  for (int64_t c = warp; c < k; c += ROW_WARPS) {
    const int64_t cnt = counts[c];
    if (cnt <= 0) {
      if (lane == 0) p.shift_k[b * k + c] = 0.0;
      continue;
    }
    const double inv = 1.0 / static_cast<double>(cnt);
    float scale = 1.0f;
    if (p.cosine) {
      double sq = 0.0;
      for (int64_t j = lane; j < d; j += WARP) {
        const double v = static_cast<float>(sums[c * d + j] * inv);
        sq += v * v;
      }
      sq = warp_sum(sq);
      scale = 1.0f / fmaxf(static_cast<float>(sqrt(sq)), NORM_EPS);
    }
    double shift = 0.0, norm = 0.0;
    for (int64_t j = lane; j < d; j += WARP) {
      const float v = static_cast<float>(sums[c * d + j] * inv) * scale;
      const double move = static_cast<double>(v) - cent[c * d + j];
      shift += move * move;
      norm += static_cast<double>(v) * v;
      cent[c * d + j] = v;
    }
    shift = warp_sum(shift);
    norm = warp_sum(norm);
    if (lane == 0) {
      p.shift_k[b * k + c] = shift;
      p.cbias[b * p.kp + c] = p.cosine ? 0.0f : static_cast<float>(norm);
    }
  }
  __syncthreads();
  if (tid == 0) {
    double shift = 0.0;
    for (int64_t c = 0; c < k; ++c) shift += p.shift_k[b * k + c];
    const unsigned long long changed = p.changes[b];
    p.changes[b] = 0;
    p.n_iter[b] = p.iteration + 1;
    if (changed == 0 || shift <= p.tol_abs[b]) {
      p.done[b] = 1;
      atomicSub(p.active, 1);
    }
  }
}

// cbias for the initial centroids: ||c||^2 (euclidean) or 0, +inf on padding rows.
__global__ void cbias_kernel(const float* __restrict__ centroids, int64_t batch, int64_t k,
                             int64_t kp, int64_t d, bool cosine, float* __restrict__ cbias) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * ROW_THREADS + threadIdx.x) / WARP;
  if (row >= batch * kp) return;
  const int64_t b = row / kp, c = row % kp;
  const int lane = threadIdx.x % WARP;
  if (c >= k) {
    if (lane == 0) cbias[row] = CUDART_INF_F;
    return;
  }
  double s = 0.0;
  const float* cr = centroids + (b * k + c) * d;
  for (int64_t j = lane; j < d; j += WARP) s += static_cast<double>(cr[j]) * cr[j];
  s = warp_sum(s);
  if (lane == 0) cbias[row] = cosine ? 0.0f : static_cast<float>(s);
}

__global__ void init_state_kernel(int64_t batch, unsigned long long* changes, int* done,
                                  int64_t* n_iter, double* tol_abs, int* active) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < batch) {
    changes[b] = 0;
    done[b] = 0;
    n_iter[b] = 0;
    tol_abs[b] = 0.0;
  }
  if (b == 0) *active = static_cast<int>(batch);
}

// Per block of PTS points: the sum of their exact distances to their centroid (fixed order).
__global__ void __launch_bounds__(ROW_THREADS)
    inertia_kernel(const float* __restrict__ x, const float* __restrict__ centroids,
                   const int64_t* __restrict__ labels, int64_t n, int64_t d, int64_t k,
                   int64_t blocks, bool cosine, double* __restrict__ part) {
  __shared__ double vals[PTS];
  __shared__ double lane_sums[WARP];
  const int64_t b = blockIdx.x / blocks, blk = blockIdx.x % blocks;
  const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
  for (int64_t i = warp; i < PTS; i += ROW_WARPS) {
    const int64_t pt = blk * PTS + i;
    float s = 0.0f;
    if (pt < n) {
      const float* xr = x + (b * n + pt) * d;
      const float* cr = centroids + (b * k + labels[b * n + pt]) * d;
      for (int64_t j = lane; j < d; j += WARP) {
        if (cosine) {
          s = fmaf(xr[j], cr[j], s);
        } else {
          const float t = xr[j] - cr[j];
          s = fmaf(t, t, s);
        }
      }
      s = warp_sum(s);
    }
    if (lane == 0) vals[i] = pt < n ? (cosine ? 1.0 - static_cast<double>(s) : s) : 0.0;
  }
  __syncthreads();
  if (warp == 0) {
    const double total = fixed_order_sum(vals, lane_sums);
    if (lane == 0) part[b * blocks + blk] = total;
  }
}

__global__ void inertia_reduce_kernel(const double* __restrict__ part, int64_t batch,
                                      int64_t blocks, double* __restrict__ inertia) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= batch) return;
  double s = 0.0;
  for (int64_t i = 0; i < blocks; ++i) s += part[b * blocks + i];
  inertia[b] = s;
}

// ------------------------------------------------------------------------------------------------
// k-means++.

struct PlusPlusLayout {
  int64_t blocks, d2, block_sums, bytes;
};

PlusPlusLayout plusplus_layout(const KMeansShape& s) {
  PlusPlusLayout l{};
  l.blocks = ceil_div(s.n, PTS);
  l.d2 = 0;
  l.block_sums = round_up(s.batch * s.n * 4, 256);
  l.bytes = l.block_sums + round_up(s.batch * l.blocks * 8, 256);
  return l;
}

// d2[i] = min(d2[i], ||x_i - c_{j-1}||^2) (d2 starts at +inf for j = 1), and the sum of each
// block's PTS values in the fixed order that kpp_select_kernel repeats.
__global__ void __launch_bounds__(ROW_THREADS)
    kpp_update_kernel(const float* __restrict__ x, const float* __restrict__ centroids, int64_t n,
                      int64_t d, int64_t k, int64_t j, int64_t blocks, float* __restrict__ d2,
                      double* __restrict__ block_sums) {
  __shared__ double vals[PTS];
  __shared__ double lane_sums[WARP];
  const int64_t b = blockIdx.x / blocks, blk = blockIdx.x % blocks;
  const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
  const float* c = centroids + (b * k + j - 1) * d;
  for (int64_t i = warp; i < PTS; i += ROW_WARPS) {
    const int64_t pt = blk * PTS + i;
    float v = 0.0f;
    if (pt < n) {
      const float* xr = x + (b * n + pt) * d;
      float s = 0.0f;
      for (int64_t t = lane; t < d; t += WARP) {
        const float diff = xr[t] - c[t];
        s = fmaf(diff, diff, s);
      }
      s = warp_sum(s);
      const float prev = j == 1 ? CUDART_INF_F : d2[b * n + pt];
      v = fminf(prev, s);
      if (lane == 0) d2[b * n + pt] = v;
    }
    if (lane == 0) vals[i] = v;
  }
  __syncthreads();
  if (warp == 0) {
    const double total = fixed_order_sum(vals, lane_sums);
    if (lane == 0) block_sums[b * blocks + blk] = total;
  }
}

// Picks centroid j of every problem (one warp per problem) and copies the point.
__global__ void kpp_select_kernel(const float* __restrict__ x, const double* __restrict__ u,
                                  const float* __restrict__ d2,
                                  const double* __restrict__ block_sums, int64_t batch, int64_t n,
                                  int64_t d, int64_t k, int64_t j, int64_t blocks,
                                  float* __restrict__ centroids) {
  __shared__ double lane_sums[WARP];
  __shared__ int64_t pick;
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x;
  const double ub = u[b * k + j];
  if (lane == 0) pick = -1;
  __syncwarp();
  double total = 0.0;
  if (j > 0)
    for (int64_t i = 0; i < blocks; ++i) total += block_sums[b * blocks + i];
  if (!(total > 0.0)) {  // first centroid, or every point already sits on a centroid
    if (lane == 0) pick = uniform_pick(ub, n);
  } else {
    const double target = ub * total;
    int64_t blk = -1, last = 0;
    double base = 0.0, before_last = 0.0;
    for (int64_t i = 0; i < blocks; ++i) {
      const double s = block_sums[b * blocks + i];
      if (s > 0.0) {
        last = i;
        before_last = base;
        if (base + s > target) {
          blk = i;
          break;
        }
      }
      base += s;
    }
    if (blk < 0) {
      blk = last;
      base = before_last;
    }
    // Lane sums of the chosen block, exactly as kpp_update_kernel formed its total.
    const float* w = d2 + b * n + blk * PTS;
    const int64_t count = min64(PTS, n - blk * PTS);
    double s = 0.0;
    for (int i = 0; i < WARP; ++i) {
      const int64_t t = lane * WARP + i;
      s += t < count ? static_cast<double>(w[t]) : 0.0;
    }
    lane_sums[lane] = s;
    __syncwarp();
    if (lane == 0) {
      const double r = target - base;
      const int64_t l = dsquared_pick<double>(r, WARP, [&](int64_t i) { return lane_sums[i]; });
      double lane_base = 0.0;
      for (int64_t i = 0; i < l; ++i) lane_base += lane_sums[i];
      const int64_t first = l * WARP;
      const int64_t i = dsquared_pick<double>(r - lane_base, WARP, [&](int64_t t) {
        return first + t < count ? static_cast<double>(w[first + t]) : 0.0;
      });
      pick = blk * PTS + first + (i < 0 ? 0 : i);
    }
  }
  __syncwarp();
  const int64_t idx = pick;
  for (int64_t t = lane; t < d; t += WARP)
    centroids[(b * k + j) * d + t] = x[(b * n + idx) * d + t];
}

void check_shape(const KMeansShape& s) {
  UNSEG_CHECK_ARG(s.batch >= 1 && s.n >= 1 && s.d >= 1, "x must be non-empty, got B=", s.batch,
                  " N=", s.n, " D=", s.d);
  UNSEG_CHECK_ARG(s.k >= 1 && s.k <= s.n, "k must be in [1, N=", s.n, "], got ", s.k);
  UNSEG_CHECK_ARG(s.n <= INT32_MAX && s.k <= INT32_MAX, "N and K must fit in 32 bits");
}

unsigned grid_of(int64_t blocks) {
  UNSEG_CHECK_ARG(blocks <= INT32_MAX, "problem too large for one launch: ", blocks, " blocks");
  return static_cast<unsigned>(blocks);
}

}  // namespace

int64_t kmeans_plusplus_cuda_workspace_bytes(KMeansShape shape) {
  check_shape(shape);
  return plusplus_layout(shape).bytes;
}

void kmeans_plusplus_cuda(const float* x, KMeansShape shape, const double* u, float* centroids,
                          void* workspace, uintptr_t stream_handle) {
  check_shape(shape);
  const PlusPlusLayout l = plusplus_layout(shape);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  float* d2 = at<float>(workspace, l.d2);
  double* block_sums = at<double>(workspace, l.block_sums);
  const int64_t B = shape.batch, N = shape.n, D = shape.d, K = shape.k;
  kpp_select_kernel<<<grid_of(B), WARP, 0, stream>>>(x, u, d2, block_sums, B, N, D, K, 0, l.blocks,
                                                     centroids);
  UNSEG_CUDA_CHECK_LAUNCH("kpp_select_kernel");
  for (int64_t j = 1; j < K; ++j) {
    kpp_update_kernel<<<grid_of(B * l.blocks), ROW_THREADS, 0, stream>>>(x, centroids, N, D, K, j,
                                                                         l.blocks, d2, block_sums);
    UNSEG_CUDA_CHECK_LAUNCH("kpp_update_kernel");
    kpp_select_kernel<<<grid_of(B), WARP, 0, stream>>>(x, u, d2, block_sums, B, N, D, K, j,
                                                       l.blocks, centroids);
    UNSEG_CUDA_CHECK_LAUNCH("kpp_select_kernel");
  }
}

int64_t kmeans_lloyd_cuda_workspace_bytes(KMeansShape shape) {
  check_shape(shape);
  return lloyd_layout(shape).bytes;
}

void kmeans_lloyd_cuda(const float* x, KMeansShape shape, KMeansMetric metric, double tol,
                       int max_iter, float* centroids, int64_t* labels, double* inertia,
                       int64_t* n_iter, void* workspace, uintptr_t stream_handle) {
  check_shape(shape);
  UNSEG_CHECK_ARG(max_iter >= 1, "max_iter must be >= 1, got ", max_iter);
  const Layout l = lloyd_layout(shape);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const int64_t B = shape.batch, N = shape.n, D = shape.d, K = shape.k;
  const bool cosine = metric == KMeansMetric::kCosine;
  float* x_sq = at<float>(workspace, l.x_sq);
  float* best = at<float>(workspace, l.best);
  float* cbias = at<float>(workspace, l.cbias);
  float* partial = at<float>(workspace, l.partial);
  int* partial_counts = at<int>(workspace, l.partial_counts);
  double* sums = at<double>(workspace, l.sums);
  int64_t* counts = at<int64_t>(workspace, l.counts);
  double* shift_k = at<double>(workspace, l.shift_k);
  double* tol_abs = at<double>(workspace, l.tol_abs);
  double* moments = at<double>(workspace, l.moments);
  double* inertia_part = at<double>(workspace, l.inertia_part);
  auto* changes = at<unsigned long long>(workspace, l.changes);
  int* done = at<int>(workspace, l.done);
  int* active = at<int>(workspace, l.active);

  // Shared memory for the [K, D] slab sums when they fit.
  int device = 0, optin = 0;
  UNSEG_CUDA_CHECK(cudaGetDevice(&device));
  UNSEG_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  cudaFuncAttributes attr{};
  UNSEG_CUDA_CHECK(cudaFuncGetAttributes(&attr, assign_kernel));
  // The attribute is always set to this one limit, never to a call's own size: another host
  // thread may be between setting the attribute and launching with a larger size.
  const int64_t dyn_limit =
      std::min<int64_t>(SMEM_ACC_MAX_BYTES, optin - static_cast<int64_t>(attr.sharedSizeBytes));
  const int64_t acc_bytes = K * D * 4;
  const bool smem_acc = acc_bytes <= dyn_limit;
  const int dyn_smem = smem_acc ? static_cast<int>(acc_bytes) : 0;
  if (dyn_limit > 0) {
    UNSEG_CUDA_CHECK(cudaFuncSetAttribute(
        assign_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn_limit)));
  }

  UNSEG_CUDA_CHECK(cudaMemsetAsync(labels, 0xff, B * N * sizeof(int64_t), stream));  // -1
  init_state_kernel<<<grid_of(ceil_div(B, 256)), 256, 0, stream>>>(B, changes, done, n_iter,
                                                                   tol_abs, active);
  UNSEG_CUDA_CHECK_LAUNCH("init_state_kernel");
  if (tol > 0.0) {
    const int64_t col_blocks = ceil_div(D, STAT_THREADS);
    moments_kernel<<<grid_of(B * l.stat_chunks * col_blocks), STAT_THREADS, 0, stream>>>(
        x, N, D, l.stat_chunks, col_blocks, moments);
    UNSEG_CUDA_CHECK_LAUNCH("moments_kernel");
    tolerance_kernel<<<grid_of(B), ROW_THREADS, 0, stream>>>(moments, N, D, l.stat_chunks, tol,
                                                             tol_abs);
    UNSEG_CUDA_CHECK_LAUNCH("tolerance_kernel");
  }
  if (!cosine) {
    sq_norms_kernel<<<grid_of(ceil_div(B * N, ROW_WARPS)), ROW_THREADS, 0, stream>>>(x, B * N, D,
                                                                                     x_sq);
    UNSEG_CUDA_CHECK_LAUNCH("sq_norms_kernel");
  }
  cbias_kernel<<<grid_of(ceil_div(B * l.kp, ROW_WARPS)), ROW_THREADS, 0, stream>>>(
      centroids, B, K, l.kp, D, cosine, cbias);
  UNSEG_CUDA_CHECK_LAUNCH("cbias_kernel");

  AssignParams ap{x,       centroids,      cbias,   cosine ? nullptr : x_sq,
                  labels,  best,           done,    changes,
                  partial, partial_counts, N,       D,
                  K,       l.kp,           l.tiles, l.slab_tiles,
                  l.slabs, smem_acc};
  FinalizeParams fp{x,    labels, best,   sums, counts, centroids, cbias, shift_k, tol_abs, changes,
                    done, n_iter, active, N,    D,      K,         l.kp,  0,       cosine};
  const int64_t col_blocks = ceil_div(D, STAT_THREADS);
  for (int it = 0; it < max_iter; ++it) {
    assign_kernel<<<grid_of(B * l.slabs), ASSIGN_THREADS, dyn_smem, stream>>>(ap);
    UNSEG_CUDA_CHECK_LAUNCH("assign_kernel");
    reduce_kernel<<<grid_of(B * K * col_blocks), STAT_THREADS, 0, stream>>>(
        partial, partial_counts, l.slabs, K, D, col_blocks, done, sums, counts);
    UNSEG_CUDA_CHECK_LAUNCH("reduce_kernel");
    fp.iteration = it;
    finalize_kernel<<<grid_of(B), ROW_THREADS, 0, stream>>>(fp);
    UNSEG_CUDA_CHECK_LAUNCH("finalize_kernel");
    if ((it + 1) % CHECK_EVERY == 0 && it + 1 < max_iter) {
      int still_active = 0;
      UNSEG_CUDA_CHECK(
          cudaMemcpyAsync(&still_active, active, sizeof(int), cudaMemcpyDeviceToHost, stream));
      UNSEG_CUDA_CHECK(cudaStreamSynchronize(stream));
      if (still_active == 0) break;
    }
  }

  // Final assignment to the returned centroids, then the exact inertia.
  AssignParams final_ap = ap;
  final_ap.done = nullptr;
  final_ap.changes = nullptr;
  final_ap.partial = nullptr;
  final_ap.partial_counts = nullptr;
  final_ap.smem_acc = false;
  assign_kernel<<<grid_of(B * l.slabs), ASSIGN_THREADS, 0, stream>>>(final_ap);
  UNSEG_CUDA_CHECK_LAUNCH("assign_kernel");
  inertia_kernel<<<grid_of(B * l.pts_blocks), ROW_THREADS, 0, stream>>>(
      x, centroids, labels, N, D, K, l.pts_blocks, cosine, inertia_part);
  UNSEG_CUDA_CHECK_LAUNCH("inertia_kernel");
  inertia_reduce_kernel<<<grid_of(ceil_div(B, 256)), 256, 0, stream>>>(inertia_part, B,
                                                                       l.pts_blocks, inertia);
  UNSEG_CUDA_CHECK_LAUNCH("inertia_reduce_kernel");
}

}  // namespace unseg
