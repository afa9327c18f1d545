// Mean-field inference on the CPU lattices (lattice_cpu.h), compiled once per instruction set:
// the including file defines UNSEG_CRF_ISA (the namespace) and UNSEG_CRF_VECTOR_WIDTH (floats
// per vector register). crf_cpu.cpp builds it for the baseline (SSE2 on x86-64, NEON on ARM)
// and crf_cpu_avx2.cpp with AVX2 and FMA; crf_cpu.cpp picks one at run time.
//
// One iteration. U and Q are kept in the Gaussian lattice's pixel order, Q_bi (a copy of Q)
// in the bilateral lattice's; for each lattice, bilateral first:
//   splat   vertex row = sum over its pixels of weight * Q[pixel], a gather per vertex (so
//           threads can split vertices) summed in raster order, as pydensecrf does;
//   blur    new = old + 0.5 * (left + right) along each axis in turn, a fresh buffer per axis;
//   slice   bilateral: its message replaces Q_bi[pixel]; Gaussian: per pixel
//           Q = softmax((w_pos msg_pos - U) + w_bi msg_bi), then copied to Q_bi.
// On one thread each lattice does all three in one sweep through its vertices (`sweep`):
// the rows in use stay in two small ring buffers in cache. With more threads they are
// separate parallel passes over full buffers. Both give the same values, bit for bit.
// Labels of a vertex or pixel are contiguous and padded to whole vectors (padded labels have
// U = +inf, hence Q = 0), so every inner loop is a fixed-width vector loop.
//
// No include guard: this file is meant to be included once per instruction set.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "common/parallel.h"
#include "crf/buffer_cpu.h"
#include "crf/crf.h"
#include "crf/lattice_cpu.h"

namespace unseg::crf::UNSEG_CRF_ISA {

constexpr int VW = UNSEG_CRF_VECTOR_WIDTH;  // floats per vector
constexpr float PROB_CLIP = 1e-5f;          // pydensecrf.utils.unary_from_softmax
constexpr int MAX_FIXED_WIDTH = 32;         // padded label counts up to this are constants
constexpr int64_t SWEEP_CHUNK = 256;        // vertices each stage of a sweep takes at a time
constexpr int64_t TRANSPOSE_BLOCK = 64;     // pixels per block of the layout changes
constexpr int64_t ROW_PREFETCH = 16;        // pixels ahead whose scattered rows are fetched
constexpr int FLOATS_PER_LINE = 16;         // 64-byte cache lines

using FloatBuffer = Buffer<float>;

// ---------------------------------------------------------------------------------------
// Float vectors (GCC/Clang vector extensions) with exp and log as Cephes single-precision
// polynomials (relative error about 1e-7).

typedef float fv __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t iv __attribute__((vector_size(VW * sizeof(int32_t))));

inline fv load(const float* p) {
  fv v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store(float* p, fv v) { std::memcpy(p, &v, sizeof(v)); }

inline fv broadcast(float x) { return fv{} + x; }

inline fv as_float(iv v) {
  fv r;
  std::memcpy(&r, &v, sizeof(r));
  return r;
}

inline iv as_int(fv v) {
  iv r;
  std::memcpy(&r, &v, sizeof(r));
  return r;
}

// exp(x) for x <= 0; 0 below -87, where expf leaves the normal range.
inline fv exp_nonpositive(fv x) {
  const fv lim = broadcast(-87.0f);
  const fv xc = x < lim ? lim : x;
  const fv round = broadcast(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const fv nf = (xc * 1.44269504088896341f + round) - round;
  const fv r = xc - nf * 0.693359375f - nf * -2.12194440e-4f;
  fv p = broadcast(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const fv e = p * r * r + r + 1.0f;
  const fv scale = as_float((__builtin_convertvector(nf, iv) + 127) << 23);
  return x < lim ? broadcast(0.0f) : e * scale;
}

// log(x) for normal x > 0.
inline fv log_positive(fv x) {
  const iv bits = as_int(x);
  fv e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, fv);
  fv m = as_float((bits & 0x007fffff) | 0x3f000000);  // x = m 2^e, m in [0.5, 1)
  const auto low = m < broadcast(0.707106781186547524f);
  e = low ? e - 1.0f : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const fv z = m * m;
  fv y = broadcast(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += e * -2.12194440e-4f;
  y += z * -0.5f;
  return m + y + e * 0.693359375f;
}

// Two-source lane shuffle with constant indices (lanes of y numbered after those of x).
#if defined(__clang__)
#define UNSEG_CRF_SHUFFLE(x, y, ...) __builtin_shufflevector(x, y, __VA_ARGS__)
#else
#define UNSEG_CRF_SHUFFLE(x, y, ...) __builtin_shuffle(x, y, iv{__VA_ARGS__})
#endif

// Lane l of the result is op over the lanes of v[l], for VW vectors v: a transpose and reduce
// in log2(VW) shuffle stages, where one row at a time would need as many stages per row and
// a chain of dependent latencies. Every input goes through the same tree of ops, so a row's
// result does not depend on its position in v.
template <typename Op>
inline fv reduce_lanes(const fv* v, Op op) {
#if UNSEG_CRF_VECTOR_WIDTH == 8
  // Stage 1 folds lane i + 4 onto lane i of two rows, stage 2 lane i + 2 onto i of four,
  // stage 3 lane i + 1 onto i of eight; inputs in the order 0 4 1 5 2 6 3 7 come out in
  // natural order.
  auto half = [&](fv x, fv y) {
    return op(UNSEG_CRF_SHUFFLE(x, y, 0, 1, 2, 3, 8, 9, 10, 11),
              UNSEG_CRF_SHUFFLE(x, y, 4, 5, 6, 7, 12, 13, 14, 15));
  };
  auto quarter = [&](fv x, fv y) {
    return op(UNSEG_CRF_SHUFFLE(x, y, 0, 1, 8, 9, 4, 5, 12, 13),
              UNSEG_CRF_SHUFFLE(x, y, 2, 3, 10, 11, 6, 7, 14, 15));
  };
  const fv a = quarter(half(v[0], v[4]), half(v[1], v[5]));
  const fv b = quarter(half(v[2], v[6]), half(v[3], v[7]));
  return op(UNSEG_CRF_SHUFFLE(a, b, 0, 2, 8, 10, 4, 6, 12, 14),
            UNSEG_CRF_SHUFFLE(a, b, 1, 3, 9, 11, 5, 7, 13, 15));
#elif UNSEG_CRF_VECTOR_WIDTH == 4
  auto half = [&](fv x, fv y) {
    return op(UNSEG_CRF_SHUFFLE(x, y, 0, 1, 4, 5), UNSEG_CRF_SHUFFLE(x, y, 2, 3, 6, 7));
  };
  const fv a = half(v[0], v[1]);
  const fv b = half(v[2], v[3]);
  return op(UNSEG_CRF_SHUFFLE(a, b, 0, 2, 4, 6), UNSEG_CRF_SHUFFLE(a, b, 1, 3, 5, 7));
#else
#error "UNSEG_CRF_VECTOR_WIDTH must be 4 or 8"
#endif
}

inline fv vmax(fv x, fv y) { return x > y ? x : y; }
inline fv vadd(fv x, fv y) { return x + y; }

// Row width (labels padded to whole vectors) as a compile-time constant when W > 0, else
// the runtime value; rows are handled as whole vectors.
template <int W>
struct RowWidth {
  static constexpr int WIDTH = W;
  int runtime;
  constexpr int operator()() const { return W > 0 ? W : runtime; }
  constexpr int vectors() const { return W > 0 ? W / VW : runtime / VW; }
};

// Per-row accumulator: a local array of vectors when the width is fixed, a heap buffer
// otherwise.
template <int W>
struct Accumulator {
  fv fixed[W > 0 ? W / VW : 1];
  Buffer<fv> dynamic;
  explicit Accumulator(RowWidth<W> width) {
    if constexpr (W == 0) dynamic.resize(static_cast<size_t>(width.vectors()));
  }
  fv* data() {
    if constexpr (W > 0) {
      return fixed;
    } else {
      return dynamic.data();
    }
  }
};

// Softmax over each row of `tile` (VW rows of width() floats), rows [0, count) handed to
// emit(p, offset, vector) instead of stored. Rows at or past count are computed and dropped.
// Maxima and sums are taken per lane, then across lanes (reduce_lanes); the normaliser is
// one reciprocal per row.
template <int W, typename Emit>
inline void softmax_group(float* tile, RowWidth<W> width, int count, Emit&& emit) {
  const int w = width();
  const int nv = width.vectors();
  fv part[VW];
  alignas(CACHE_LINE) float row_value[VW];
  for (int p = 0; p < VW; ++p) {
    const float* x = tile + p * w;
    fv mx = load(x);
    for (int k = 1; k < nv; ++k) mx = vmax(mx, load(x + k * VW));
    part[p] = mx;
  }
  store(row_value, reduce_lanes(part, vmax));
  for (int p = 0; p < VW; ++p) {
    float* x = tile + p * w;
    const fv mx = broadcast(row_value[p]);
    fv sum = broadcast(0.0f);
    for (int k = 0; k < nv; ++k) {
      const fv e = exp_nonpositive(load(x + k * VW) - mx);
      store(x + k * VW, e);
      sum += e;
    }
    part[p] = sum;
  }
  store(row_value, broadcast(1.0f) / reduce_lanes(part, vadd));
  for (int p = 0; p < count; ++p) {
    const float* x = tile + p * w;
    const fv inv = broadcast(row_value[p]);
    for (int k = 0; k < nv; ++k) emit(p, k * VW, load(x + k * VW) * inv);
  }
}

// ---------------------------------------------------------------------------------------
// Splat, blur, slice.

inline void prefetch_row(const float* row, int w) {
  for (int k = 0; k < w; k += FLOATS_PER_LINE) __builtin_prefetch(row + k);
}

// The vertex rows of one value buffer. FullRows holds every vertex, row m (no vertex) zero.
// RingRows holds the vertices a sweep is using: vertex v in row v mod size, and row size is
// the zero row for "no vertex".
// The row width is a constant when W > 0, which keeps a multiply out of every address.
template <int W>
struct FullRows {
  float* base;
  RowWidth<W> width;
  float* operator()(int64_t v) const { return base + v * width(); }
  const float* neighbour(int64_t v) const { return base + v * width(); }
};

template <int W>
struct RingRows {
  float* base;
  RowWidth<W> width;
  int64_t mask;  // rows - 1, rows a power of two
  int64_t m;
  float* operator()(int64_t v) const { return base + (v & mask) * width(); }
  // Branch-free: along the bilateral lattice's axes about half the vertices lack a
  // neighbour, so a branch here would be mispredicted about as often as taken.
  const float* neighbour(int64_t v) const {
    int64_t row = v & mask;
    row += (mask + 1 - row) & -static_cast<int64_t>(v >= m);  // row `rows`: the zero row
    return base + row * width();
  }
};

// rows(v) = sum over the pixels of vertex v of weight * values[pixel], v in [v0, v1).
template <int W, typename Rows>
void splat_rows(const Lattice& lat, RowWidth<W> width, const float* values, const Rows& rows,
                int64_t v0, int64_t v1) {
  const int w = width();
  const int nv = width.vectors();
  Accumulator<W> storage(width);
  fv* acc = storage.data();
  const int32_t end = lat.splat_begin[v1];
  for (int64_t v = v0; v < v1; ++v) {
    for (int k = 0; k < nv; ++k) acc[k] = broadcast(0.0f);
    for (int32_t e = lat.splat_begin[v]; e < lat.splat_begin[v + 1]; ++e) {
      if (e + ROW_PREFETCH < end) {
        prefetch_row(values + static_cast<int64_t>(lat.splat_entry[e + ROW_PREFETCH].pixel) * w, w);
      }
      const SplatEntry en = lat.splat_entry[e];
      const float* in = values + static_cast<int64_t>(en.pixel) * w;
      const fv wt = broadcast(en.weight);
      for (int k = 0; k < nv; ++k) acc[k] += wt * load(in + k * VW);
    }
    float* out = rows(v);
    for (int k = 0; k < nv; ++k) store(out + k * VW, acc[k]);
  }
}

// dst(v) = src(v) + 0.5 * (src(n1) + src(n2)) along axis j.
template <int W, typename Rows>
inline void blur_vertex(const Lattice& lat, RowWidth<W> width, int j, int64_t v, const Rows& src,
                        const Rows& dst) {
  const int nv = width.vectors();
  const int32_t* nb = lat.neighbour.data() + (static_cast<int64_t>(j) * lat.m + v) * 2;
  const float* n1 = src.neighbour(nb[0]);
  const float* n2 = src.neighbour(nb[1]);
  const float* old = src(v);
  float* out = dst(v);
  const fv half = broadcast(0.5f);
  for (int k = 0; k < nv; ++k) {
    store(out + k * VW, load(old + k * VW) + half * (load(n1 + k * VW) + load(n2 + k * VW)));
  }
}

// Each axis a parallel pass over the vertices (two buffers, a fresh one per axis).
// Returns the buffer holding the result.
template <int W>
float* blur_passes(const Lattice& lat, RowWidth<W> width, float* a, float* b, int threads) {
  for (int j = 0; j <= lat.d; ++j) {
    const FullRows<W> src{a, width}, dst{b, width};
    parallel_for(lat.m, threads, [&](int64_t v0, int64_t v1) {
      for (int64_t v = v0; v < v1; ++v) blur_vertex<W>(lat, width, j, v, src, dst);
    });
    std::swap(a, b);
  }
  return a;
}

// acc = sum_r weight[p][r] * rows(vertex[p][r]), p in the lattice's pixel order.
template <int W, typename Rows>
inline void slice_pixel(const Lattice& lat, RowWidth<W> width, const Rows& rows, int64_t p,
                        fv* acc) {
  const int nv = width.vectors();
  const int v = lat.d + 1;
  const Corner* corner = lat.corner.data() + p * v;
  const float* first = rows(corner[0].vertex);
  const fv w0 = broadcast(corner[0].weight);
  for (int k = 0; k < nv; ++k) acc[k] = w0 * load(first + k * VW);
  for (int r = 1; r < v; ++r) {
    const float* src = rows(corner[r].vertex);
    const fv wr = broadcast(corner[r].weight);
    for (int k = 0; k < nv; ++k) acc[k] += wr * load(src + k * VW);
  }
}

// Splat, blur and slice of one lattice in a single pass, for one thread: at step t the splat
// fills vertex t of buffer 0, axis j blurs vertex t - lead[j] from buffer j % 2 into
// (j + 1) % 2 (see Lattice::leads), then the pixels whose corners are all final are sliced:
// slice(i0, i1, rows) for pixels [i0, i1). Only the vertices between the slice and the splat are in
// use, so each buffer is a ring of lat.ring_rows(SWEEP_CHUNK) rows (plus a zero row) that stays in
// cache, where separate passes would stream every row through memory several times. The
// values are those of the separate passes. `a` and `b` hold (ring_rows + 1) * width floats.
template <int W, typename Slice>
void sweep(const Lattice& lat, RowWidth<W> width, const float* values, float* a, float* b,
           Slice&& slice) {
  const int w = width();
  const int64_t m = lat.m;
  const int64_t n = static_cast<int64_t>(lat.ready.size());
  const int64_t size = lat.ring_rows(SWEEP_CHUNK);
  const auto lead = lat.leads();
  std::fill(a + size * w, a + (size + 1) * w, 0.0f);
  std::fill(b + size * w, b + (size + 1) * w, 0.0f);
  const RingRows<W> buf[2] = {{a, width, size - 1, m}, {b, width, size - 1, m}};
  const RingRows<W>& final_rows = buf[(lat.d + 1) % 2];
  int64_t next_pixel = 0;
  for (int64_t t = 0; next_pixel < n; t += SWEEP_CHUNK) {
    splat_rows<W>(lat, width, values, buf[0], std::min(t, m), std::min(t + SWEEP_CHUNK, m));
    for (int j = 0; j <= lat.d; ++j) {
      const int64_t v0 = std::clamp<int64_t>(t - lead[j], 0, m);
      const int64_t v1 = std::clamp<int64_t>(t + SWEEP_CHUNK - lead[j], 0, m);
      for (int64_t v = v0; v < v1; ++v) {
        blur_vertex<W>(lat, width, j, v, buf[j % 2], buf[(j + 1) % 2]);
      }
    }
    const int64_t done = t + SWEEP_CHUNK - 1 - lead[lat.d];  // vertices 0..done are final
    const int64_t first = next_pixel;
    while (next_pixel < n && lat.ready[next_pixel] <= done) ++next_pixel;
    if (next_pixel > first) slice(first, next_pixel, final_rows);
  }
}

// ---------------------------------------------------------------------------------------
// Inference.

// Everything one image needs; reused by the next image of the same worker.
struct ImageState {
  LatticeBuilder builder;
  Lattice pos, bi;
  Buffer<int32_t> to_bi;                 // [N] bilateral-order index of Gaussian-order pixels
  FloatBuffer unary, q;                  // [N][width] Gaussian order; padding: U = +inf, Q = 0
  FloatBuffer q_bi;                      // [N][width] bilateral order: Q, then the message
  FloatBuffer pos_a, pos_b, bi_a, bi_b;  // value buffers (FullRows or RingRows)
  FloatBuffer tile;                      // [VW][width] the rows of one softmax group
};

// rows + 1 rows of w floats, the last one zero.
inline void resize_rows(FloatBuffer& buf, int64_t rows, int w) {
  buf.resize(static_cast<size_t>(rows + 1) * w);
  std::fill(buf.end() - w, buf.end(), 0.0f);
}

template <int W>
void crf_image(ImageState& st, const uint8_t* image, const float* probs, float* out, int64_t labels,
               int64_t height, int64_t width, const CrfParams& prm, int threads,
               RowWidth<W> row_width) {
  const int64_t n = height * width;
  const int w = row_width();
  const int nv = row_width.vectors();
  st.builder.build(image, height, width, prm, threads, st.pos, st.bi);
  const Lattice& pos = st.pos;
  const Lattice& bi = st.bi;
  st.to_bi.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) st.to_bi[i] = bi.rank[pos.order[i]];

  // U = -log(clip(P, 1e-5, 1)) and Q0 = softmax(-U) = clip(P) / sum(clip(P)). Raster order
  // here: the probability planes are read as streams and each pixel's row is written where
  // the lattices want it.
  const size_t plane = static_cast<size_t>(n) * w;
  st.unary.resize(plane);
  st.q.resize(plane);
  st.q_bi.resize(plane);
  static_assert(TRANSPOSE_BLOCK % VW == 0, "whole groups of rows per block");
  parallel_for((n + TRANSPOSE_BLOCK - 1) / TRANSPOSE_BLOCK, threads, [&](int64_t b0, int64_t b1) {
    FloatBuffer tile(static_cast<size_t>(TRANSPOSE_BLOCK) * w);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * TRANSPOSE_BLOCK, count = std::min(TRANSPOSE_BLOCK, n - p0);
      for (int64_t c = 0; c < w; ++c) {
        for (int64_t k = 0; k < TRANSPOSE_BLOCK; ++k) {
          // Padding (labels and pixels past the end): P = 0, i.e. U = +inf and Q = 0.
          tile[k * w + c] = c < labels && k < count
                                ? std::min(std::max(probs[c * n + p0 + k], PROB_CLIP), 1.0f)
                                : 0.0f;
        }
      }
      for (int64_t g = 0; g < count; g += VW) {
        fv part[VW];
        for (int k = 0; k < VW; ++k) {
          const float* clipped = tile.data() + (g + k) * w;
          fv sum = broadcast(0.0f);
          for (int j = 0; j < w; j += VW) sum += load(clipped + j);
          part[k] = sum;
        }
        alignas(CACHE_LINE) float inv[VW];
        store(inv, broadcast(1.0f) / reduce_lanes(part, vadd));
        for (int64_t k = g; k < std::min(g + VW, count); ++k) {
          const int64_t p = p0 + k;
          const float* clipped = tile.data() + k * w;
          float* u = st.unary.data() + static_cast<int64_t>(pos.rank[p]) * w;
          float* qi = st.q.data() + static_cast<int64_t>(pos.rank[p]) * w;
          float* qb = st.q_bi.data() + static_cast<int64_t>(bi.rank[p]) * w;
          const fv scale = broadcast(inv[k - g]);
          for (int j = 0; j < w; j += VW) {
            const fv x = load(clipped + j);
            const fv q0 = x * scale;
            store(u + j, -log_positive(x));
            store(qi + j, q0);
            store(qb + j, q0);
          }
          for (int64_t c = labels; c < w; ++c) u[c] = std::numeric_limits<float>::infinity();
        }
      }
    }
  });

  // Value buffers: rings for the one-thread sweeps, every vertex for the parallel passes.
  const int64_t pos_rows = threads == 1 ? pos.ring_rows(SWEEP_CHUNK) : pos.m;
  const int64_t bi_rows = threads == 1 ? bi.ring_rows(SWEEP_CHUNK) : bi.m;
  resize_rows(st.pos_a, pos_rows, w);
  resize_rows(st.pos_b, pos_rows, w);
  resize_rows(st.bi_a, bi_rows, w);
  resize_rows(st.bi_b, bi_rows, w);
  const float pos_scale = prm.pos_w * pos.alpha;
  const float bi_scale = prm.bi_w * bi.alpha;
  const int64_t pos_m = pos.m;
  // Slice of the bilateral lattice for pixels [i0, i1): its message replaces Q_bi[i], which no
  // splat reads any more (every corner of pixel i has been splatted).
  auto bi_slice = [&](int64_t i0, int64_t i1, const auto& rows, fv* acc) {
    for (int64_t i = i0; i < i1; ++i) {
      slice_pixel<W>(bi, row_width, rows, i, acc);
      float* dst = st.q_bi.data() + i * w;
      for (int k = 0; k < nv; ++k) store(dst + k * VW, bi_scale * acc[k]);
    }
  };
  // Slice of the Gaussian lattice and the update for pixels [i0, i1) (Q[i] likewise no longer
  // read): Q = softmax((w_pos msg_pos - U) + w_bi msg_bi), the order in which pydensecrf
  // adds. VW pixels at a time, so that the softmax works across pixels (softmax_group).
  auto pos_update = [&](int64_t i0, int64_t i1, const auto& rows, fv* acc, float* tile, bool last) {
    for (int64_t g = i0; g < i1; g += VW) {
      const int count = static_cast<int>(std::min<int64_t>(VW, i1 - g));
      for (int p = 0; p < count; ++p) {
        const int64_t i = g + p;
        // The Q_bi rows come in bilateral order, i.e. scattered: fetch them ahead.
        if (i + ROW_PREFETCH < n) {
          prefetch_row(st.q_bi.data() + static_cast<int64_t>(st.to_bi[i + ROW_PREFETCH]) * w, w);
        }
        slice_pixel<W>(pos, row_width, rows, i, acc);
        const float* u = st.unary.data() + i * w;
        const float* msg = st.q_bi.data() + static_cast<int64_t>(st.to_bi[i]) * w;
        float* x = tile + p * w;
        for (int k = 0; k < nv; ++k) {
          const int o = k * VW;
          store(x + o, (pos_scale * acc[k] - load(u + o)) + load(msg + o));
        }
      }
      softmax_group<W>(tile, row_width, count, [&](int p, int o, fv q) {
        const int64_t i = g + p;
        store(st.q.data() + i * w + o, q);
        if (!last) store(st.q_bi.data() + static_cast<int64_t>(st.to_bi[i]) * w + o, q);
      });
    }
  };
  Accumulator<W> storage(row_width);
  fv* acc = storage.data();
  st.tile.assign(static_cast<size_t>(VW) * w, 0.0f);
  for (int it = 0; it < prm.iters; ++it) {
    const bool last = it + 1 == prm.iters;
    if (threads == 1) {
      sweep<W>(
          bi, row_width, st.q_bi.data(), st.bi_a.data(), st.bi_b.data(),
          [&](int64_t i0, int64_t i1, const RingRows<W>& rows) { bi_slice(i0, i1, rows, acc); });
      sweep<W>(pos, row_width, st.q.data(), st.pos_a.data(), st.pos_b.data(),
               [&](int64_t i0, int64_t i1, const RingRows<W>& rows) {
                 pos_update(i0, i1, rows, acc, st.tile.data(), last);
               });
      continue;
    }
    // The same steps as separate parallel passes.
    parallel_for(pos_m + bi.m, threads, [&](int64_t v0, int64_t v1) {
      if (v0 < pos_m) {
        splat_rows<W>(pos, row_width, st.q.data(), FullRows<W>{st.pos_a.data(), row_width}, v0,
                      std::min(v1, pos_m));
      }
      if (v1 > pos_m) {
        splat_rows<W>(bi, row_width, st.q_bi.data(), FullRows<W>{st.bi_a.data(), row_width},
                      std::max(v0, pos_m) - pos_m, v1 - pos_m);
      }
    });
    const FullRows<W> pos_final{
        blur_passes<W>(pos, row_width, st.pos_a.data(), st.pos_b.data(), threads), row_width};
    const FullRows<W> bi_final{
        blur_passes<W>(bi, row_width, st.bi_a.data(), st.bi_b.data(), threads), row_width};
    parallel_for(n, threads, [&](int64_t i0, int64_t i1) {
      Accumulator<W> local(row_width);
      bi_slice(i0, i1, bi_final, local.data());
    });
    parallel_for(n, threads, [&](int64_t i0, int64_t i1) {
      Accumulator<W> local(row_width);
      FloatBuffer tile(static_cast<size_t>(VW) * w, 0.0f);
      pos_update(i0, i1, pos_final, local.data(), tile.data(), last);
    });
  }

  // Back to [C, H, W], a block of pixels at a time so that each plane is written in runs.
  parallel_for((n + TRANSPOSE_BLOCK - 1) / TRANSPOSE_BLOCK, threads, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t p0 = b * TRANSPOSE_BLOCK, count = std::min(TRANSPOSE_BLOCK, n - p0);
      for (int64_t c = 0; c < labels; ++c) {
        for (int64_t k = 0; k < count; ++k) {
          out[c * n + p0 + k] = st.q[static_cast<int64_t>(pos.rank[p0 + k]) * w + c];
        }
      }
    }
  });
}

// Calls fn(RowWidth<W>{w}) with w the label count padded to whole vectors, as a compile-time
// W when w <= MAX_FIXED_WIDTH, else with W = 0.
template <int W = VW, typename Fn>
void with_row_width(int w, Fn&& fn) {
  if constexpr (W > MAX_FIXED_WIDTH) {
    fn(RowWidth<0>{w});
  } else if (w == W) {
    fn(RowWidth<W>{w});
  } else {
    with_row_width<W + VW>(w, fn);
  }
}

// Images in parallel (num_threads >= 1); leftover threads work inside each image.
void dense_crf(const uint8_t* images, const float* probs, float* q, int64_t batch, int64_t labels,
               int64_t height, int64_t width, const CrfParams& params, int num_threads) {
  const int64_t outer = std::min<int64_t>(batch, num_threads);
  const int inner = static_cast<int>(std::max<int64_t>(1, num_threads / outer));
  const int64_t n = height * width;
  with_row_width(static_cast<int>((labels + VW - 1) / VW * VW), [&](auto row_width) {
    constexpr int W = decltype(row_width)::WIDTH;
    parallel_for(batch, static_cast<int>(outer), [&](int64_t b0, int64_t b1) {
      ImageState st;
      for (int64_t b = b0; b < b1; ++b) {
        crf_image<W>(st, images + b * n * 3, probs + b * labels * n, q + b * labels * n, labels,
                     height, width, params, inner, row_width);
      }
    });
  });
}

}  // namespace unseg::crf::UNSEG_CRF_ISA
