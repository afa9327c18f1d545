// SIMD kernels of the CPU k-means, written once over a vector type V and compiled once per
// instruction set: kmeans_cpu.cpp instantiates them with a portable 4-wide vector (SSE2 on any
// x86-64, NEON on arm64), kmeans_cpu_avx2.cpp with AVX2 + FMA in a translation unit built
// with -mavx2 -mfma. The driver picks a table at run time from what the CPU supports.
//
// Each translation unit instantiates the templates with a V of internal linkage, so no symbol
// compiled for AVX2 can be shared with (and called from) the portable code. For the same
// reason this header calls no standard-library templates.
//
// V provides: R (register type), W (lanes), zero(), load(p), load_partial(p, n) (n < W lanes,
// rest zero), store(p, r), store_partial(p, r, n), fma(a, b, acc) = acc + a * b, add, sub,
// hsum(r) (sum of the lanes) and keep_in_register(r) (a code-generation hint, see Avx2Vec).
#pragma once

#include <cstdint>

namespace unseg::kmeans_cpu {

// Assignment micro-kernel tile: MR points x NR centroids of dot products held in registers
// over the whole of D: 12 accumulators + 3 centroid vectors + 1 point vector fill the 16
// vector registers of x86-64, and each D step issues 12 FMAs for 7 loads. Measured on Zen 3
// against 6x2, 3x4 and an outer-product (broadcast) 6x16 tile, this shape was fastest for
// K = 16..64 at D = 384.
constexpr int MR = 4;
constexpr int NR = 3;
// Points whose sums are gathered in float before being added to the float64 slab sums:
// short enough that float rounding stays near 1e-6 relative (scikit-learn sums every point
// in float32), long enough that the float64 flush (K * D adds) costs little per point.
constexpr int64_t FLOAT_CHUNK = 512;
// Rows of the k-means++ distance update handled together (sharing each centroid load).
constexpr int KPP_ROWS = 4;

// Centroids as the assignment kernel reads them (see pack()): groups of NR centroids whose
// vectors for one D step lie side by side, so the whole set streams as one sequence. K is
// padded to KP (a multiple of NR) and D to DP (a multiple of every vector width) with zeros;
// bias[k] = ||c_k||^2 (euclidean) or 0 (cosine), +inf on padding rows so they never win.
struct PackedCentroids {
  const float* c;     // [KP / NR, DP / W, NR, W]
  const float* bias;  // [KP]
  int64_t k, kp, dp;
};

// One slab of points for the assignment step.
struct AssignArgs {
  const float* x;     // [n, d]
  const float* x_sq;  // [n] squared norms (euclidean); nullptr for cosine
  int64_t n, d;
  PackedCentroids cents;
  int64_t* labels;  // [n] in: previous labels, out: new labels
  float* best;      // [n] out: squared distance (euclidean) or 1 - cos (cosine)
  // Accumulation of the update step; sums == nullptr for a pure assignment.
  double* sums;     // [k, d] zeroed by the caller
  int64_t* counts;  // [k] zeroed by the caller
  float* scratch;   // [k, dp] float partial sums
  int64_t changes;  // out: labels that differ from the previous ones
};

// The kernels one instruction set provides.
struct KernelTable {
  const char* name;
  // Packs centroids c [k, d] into packed [kp * dp] and bias [kp] (layout of PackedCentroids).
  void (*pack)(const float* c, int64_t k, int64_t d, int cosine, int64_t kp, int64_t dp,
               float* packed, float* bias);
  // Assigns a slab to its nearest centroids and (when sums) accumulates it.
  void (*assign)(AssignArgs& a);
  // d2[i] = min(d2[i], ||x_i - c||^2) over n rows; returns sum_i d2[i] (float64, in order).
  double (*min_sq_dist)(const float* x, int64_t n, int64_t d, const float* c, float* d2);
  // Sum over rows of the exact distance to centroid labels[i] (||x - c||^2, or 1 - x.c).
  double (*exact_cost)(const float* x, int64_t n, int64_t d, const float* c, const int64_t* labels,
                       int cosine);
  // out[i] = ||x_i||^2.
  void (*sq_norms)(const float* x, int64_t n, int64_t d, float* out);
};

const KernelTable& generic_kernels();  // kmeans_cpu.cpp
const KernelTable& avx2_kernels();     // kmeans_cpu_avx2.cpp (x86-64 builds only)

// ----------------------------------------------------------------------------------------------
// Implementations, instantiated by each instruction-set translation unit.

template <class V>
inline float dot(const float* a, const float* b, int64_t d) {
  typename V::R acc0 = V::zero(), acc1 = V::zero();
  int64_t i = 0;
  for (; i + 2 * V::W <= d; i += 2 * V::W) {
    acc0 = V::fma(V::load(a + i), V::load(b + i), acc0);
    acc1 = V::fma(V::load(a + i + V::W), V::load(b + i + V::W), acc1);
  }
  for (; i + V::W <= d; i += V::W) acc0 = V::fma(V::load(a + i), V::load(b + i), acc0);
  if (i < d) {
    const int rest = static_cast<int>(d - i);
    acc1 = V::fma(V::load_partial(a + i, rest), V::load_partial(b + i, rest), acc1);
  }
  return V::hsum(V::add(acc0, acc1));
}

template <class V>
inline float sq_dist(const float* a, const float* b, int64_t d) {
  typename V::R acc0 = V::zero(), acc1 = V::zero();
  int64_t i = 0;
  for (; i + 2 * V::W <= d; i += 2 * V::W) {
    const typename V::R t0 = V::sub(V::load(a + i), V::load(b + i));
    const typename V::R t1 = V::sub(V::load(a + i + V::W), V::load(b + i + V::W));
    acc0 = V::fma(t0, t0, acc0);
    acc1 = V::fma(t1, t1, acc1);
  }
  for (; i + V::W <= d; i += V::W) {
    const typename V::R t = V::sub(V::load(a + i), V::load(b + i));
    acc0 = V::fma(t, t, acc0);
  }
  if (i < d) {
    const int rest = static_cast<int>(d - i);
    const typename V::R t = V::sub(V::load_partial(a + i, rest), V::load_partial(b + i, rest));
    acc1 = V::fma(t, t, acc1);
  }
  return V::hsum(V::add(acc0, acc1));
}

template <class V>
void pack(const float* c, int64_t k, int64_t d, int cosine, int64_t kp, int64_t dp, float* packed,
          float* bias) {
  const int64_t steps = dp / V::W;
  for (int64_t i = 0; i < kp * dp; ++i) packed[i] = 0.0f;
  for (int64_t kk = 0; kk < kp; ++kk) {
    if (kk >= k) {
      bias[kk] = __builtin_inff();
      continue;
    }
    const int64_t g = kk / NR, j = kk % NR;
    double sq = 0.0;
    for (int64_t t = 0; t < d; ++t) {
      const float v = c[kk * d + t];
      packed[((g * steps + t / V::W) * NR + j) * V::W + t % V::W] = v;
      sq += static_cast<double>(v) * v;
    }
    bias[kk] = cosine ? 0.0f : static_cast<float>(sq);
  }
}

// out[i][j] = x_i . c_j for MR point rows xr[i] and the NR packed centroids at cg. The
// centroids are zero padded, so only the point rows need a partial load at the end. While it
// computes, it prefetches the point rows pf[r] for r = pf_first, pf_first + pf_step, ...
// (the next tile's rows), so that they arrive from L2/L3 before they are needed.
template <class V>
inline void dot_tile(const float* const* xr, const float* cg, int64_t d, const float* const* pf,
                     int pf_first, int pf_step, float out[MR][NR]) {
  typename V::R acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = V::zero();
  const int64_t full = d / V::W;
  for (int64_t s = 0; s < full; ++s) {
    for (int r = pf_first; r < MR; r += pf_step) __builtin_prefetch(pf[r] + s * V::W);
    typename V::R cv[NR];
    for (int j = 0; j < NR; ++j) cv[j] = V::load(cg + (s * NR + j) * V::W);
    for (int i = 0; i < MR; ++i) {
      typename V::R xv = V::load(xr[i] + s * V::W);
      V::keep_in_register(xv);
      for (int j = 0; j < NR; ++j) acc[i][j] = V::fma(xv, cv[j], acc[i][j]);
    }
  }
  if (full * V::W < d) {
    const int rest = static_cast<int>(d - full * V::W);
    typename V::R cv[NR];
    for (int j = 0; j < NR; ++j) cv[j] = V::load(cg + (full * NR + j) * V::W);
    for (int i = 0; i < MR; ++i) {
      const typename V::R xv = V::load_partial(xr[i] + full * V::W, rest);
      for (int j = 0; j < NR; ++j) acc[i][j] = V::fma(xv, cv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i][j] = V::hsum(acc[i][j]);
}

// dst[0:d] += src[0:d] in float.
template <class V>
inline void add_row(float* dst, const float* src, int64_t d) {
  int64_t i = 0;
  for (; i + V::W <= d; i += V::W) V::store(dst + i, V::add(V::load(dst + i), V::load(src + i)));
  if (i < d) {
    const int rest = static_cast<int>(d - i);
    const typename V::R a = V::load_partial(dst + i, rest), b = V::load_partial(src + i, rest);
    V::store_partial(dst + i, V::add(a, b), rest);
  }
}

// Moves the float partial sums of the clusters touched since the last flush (every cluster
// when touched is nullptr) into the float64 sums and clears them.
template <class V>
inline void flush_scratch(AssignArgs& a, unsigned char* touched) {
  const int64_t d = a.d, dp = a.cents.dp;
  for (int64_t k = 0; k < a.cents.k; ++k) {
    if (touched != nullptr) {
      if (!touched[k]) continue;
      touched[k] = 0;
    }
    float* s = a.scratch + k * dp;
    double* out = a.sums + k * d;
    for (int64_t j = 0; j < d; ++j) {
      out[j] += static_cast<double>(s[j]);
      s[j] = 0.0f;
    }
  }
}

template <class V>
void assign(AssignArgs& a) {
  const PackedCentroids& pc = a.cents;
  const int64_t n = a.n, d = a.d;
  const bool accumulate = a.sums != nullptr;
  // Clusters with float partial sums pending; K bytes on the stack would limit K, so a small
  // fixed array covers the common case and larger K flushes every cluster.
  constexpr int64_t TOUCH_MAX = 1024;
  unsigned char touched[TOUCH_MAX];
  const bool track = pc.k <= TOUCH_MAX;
  if (accumulate) {
    for (int64_t k = 0; k < pc.k * pc.dp; ++k) a.scratch[k] = 0.0f;
    for (int64_t k = 0; k < (track ? pc.k : 0); ++k) touched[k] = 0;
  }
  int64_t changes = 0, since_flush = 0;
  const int64_t groups = pc.kp / NR, group_size = (pc.dp / V::W) * NR * V::W;
  // Groups 0 .. MR-1 (cyclically when there are fewer) each prefetch some next-tile rows.
  const int pf_step = static_cast<int>(groups < MR ? groups : MR);
  for (int64_t i0 = 0; i0 < n; i0 += MR) {
    const int64_t rows = n - i0 < MR ? n - i0 : MR;
    const float* xr[MR];
    const float* pf[MR];
    for (int i = 0; i < MR; ++i) {
      xr[i] = a.x + (i0 + (i < rows ? i : rows - 1)) * d;
      const int64_t next = i0 + MR + i;
      pf[i] = a.x + (next < n ? next : n - 1) * d;
    }
    float best_score[MR];
    int64_t best_k[MR];
    for (int i = 0; i < MR; ++i) {
      best_score[i] = __builtin_inff();
      best_k[i] = 0;
    }
    for (int64_t g = 0; g < groups; ++g) {
      float dots[MR][NR];
      const int pf_first = g < pf_step ? static_cast<int>(g) : MR;
      dot_tile<V>(xr, pc.c + g * group_size, d, pf, pf_first, pf_step, dots);
      for (int i = 0; i < MR; ++i) {
        for (int j = 0; j < NR; ++j) {
          // argmin of ||c||^2 - 2 x.c: the point's own norm does not change the order.
          const float s = pc.bias[g * NR + j] - 2.0f * dots[i][j];
          if (s < best_score[i]) {
            best_score[i] = s;
            best_k[i] = g * NR + j;
          }
        }
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t p = i0 + i;
      const int64_t label = best_k[i];
      float dist;
      if (a.x_sq != nullptr) {
        dist = a.x_sq[p] + best_score[i];
        dist = dist > 0.0f ? dist : 0.0f;
      } else {
        dist = 1.0f + 0.5f * best_score[i];
      }
      a.best[p] = dist;
      changes += a.labels[p] != label;
      a.labels[p] = label;
      if (accumulate) {
        add_row<V>(a.scratch + label * pc.dp, a.x + p * d, d);
        a.counts[label] += 1;
        if (track) touched[label] = 1;
      }
    }
    since_flush += rows;
    if (accumulate && (since_flush >= FLOAT_CHUNK || i0 + MR >= n)) {
      flush_scratch<V>(a, track ? touched : nullptr);
      since_flush = 0;
    }
  }
  a.changes = changes;
}

template <class V>
double min_sq_dist(const float* x, int64_t n, int64_t d, const float* c, float* d2) {
  // Streams x once per call (k-means++ makes K calls): KPP_ROWS rows at a time, prefetching
  // the next rows, since the loads, not the arithmetic, bound this loop.
  double total = 0.0;
  const int64_t full = d / V::W;
  const int rest = static_cast<int>(d - full * V::W);
  for (int64_t i0 = 0; i0 < n; i0 += KPP_ROWS) {
    const int64_t rows = n - i0 < KPP_ROWS ? n - i0 : KPP_ROWS;
    const float* xr[KPP_ROWS];
    const float* pf[KPP_ROWS];
    for (int r = 0; r < KPP_ROWS; ++r) {
      xr[r] = x + (i0 + (r < rows ? r : rows - 1)) * d;
      const int64_t next = i0 + KPP_ROWS + r;
      pf[r] = x + (next < n ? next : n - 1) * d;
    }
    typename V::R acc[KPP_ROWS];
    for (int r = 0; r < KPP_ROWS; ++r) acc[r] = V::zero();
    for (int64_t s = 0; s < full; ++s) {
      const typename V::R cv = V::load(c + s * V::W);
      for (int r = 0; r < KPP_ROWS; ++r) {
        __builtin_prefetch(pf[r] + s * V::W);
        const typename V::R t = V::sub(V::load(xr[r] + s * V::W), cv);
        acc[r] = V::fma(t, t, acc[r]);
      }
    }
    if (rest > 0) {
      const typename V::R cv = V::load_partial(c + full * V::W, rest);
      for (int r = 0; r < KPP_ROWS; ++r) {
        const typename V::R t = V::sub(V::load_partial(xr[r] + full * V::W, rest), cv);
        acc[r] = V::fma(t, t, acc[r]);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      const float di = V::hsum(acc[r]);
      const float m = di < d2[i0 + r] ? di : d2[i0 + r];
      d2[i0 + r] = m;
      total += static_cast<double>(m);
    }
  }
  return total;
}

template <class V>
double exact_cost(const float* x, int64_t n, int64_t d, const float* c, const int64_t* labels,
                  int cosine) {
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const float* ci = c + labels[i] * d;
    total += cosine ? 1.0 - static_cast<double>(dot<V>(x + i * d, ci, d))
                    : static_cast<double>(sq_dist<V>(x + i * d, ci, d));
  }
  return total;
}

template <class V>
void sq_norms(const float* x, int64_t n, int64_t d, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = dot<V>(x + i * d, x + i * d, d);
}

template <class V>
KernelTable make_table(const char* name) {
  return KernelTable{name, &pack<V>, &assign<V>, &min_sq_dist<V>, &exact_cost<V>, &sq_norms<V>};
}

}  // namespace unseg::kmeans_cpu
