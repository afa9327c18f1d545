// Dense CRF on the CPU (see crf.h for the math): lattice construction, and the choice of the
// inference kernels (crf_cpu_kernels.h) for this CPU.
//
// Lattice construction, once per image and kernel:
//   1. every pixel is embedded (permutohedral.h); its remainder-0 point and the d+1 corner
//      keys of its simplex are packed into integer codes, one bit field per coordinate sized
//      from the feature ranges with headroom, so moving a key by a blur offset adds a constant
//      to its code;
//   2. pixels are ordered by the code of their remainder-0 point and vertices by their code
//      (LSD radix sorts; see lattice_cpu.h for why these orders);
//   3. the neighbours along each axis come from one merge of the sorted codes with themselves
//      shifted by the axis offset;
//   4. the lattice filters a vector of ones to get the symmetric normalisation n_p, folded
//      into the pixel's weights.
// No hashing or sorting happens after this. This file is compiled for the baseline
// instruction set and without floating-point contraction, so the keys are pydensecrf's on
// every CPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "common/errors.h"
#include "common/parallel.h"
#include "crf/crf.h"
#include "crf/lattice_cpu.h"
#include "crf/permutohedral.h"

#define UNSEG_CRF_ISA baseline
#define UNSEG_CRF_VECTOR_WIDTH 4  // SSE2 on x86-64, NEON on ARM
#include "crf/crf_cpu_kernels.h"

namespace unseg::crf {

#ifdef UNSEG_CRF_AVX2
namespace avx2 {
void dense_crf(const uint8_t* images, const float* probs, float* q, int64_t batch, int64_t labels,
               int64_t height, int64_t width, const CrfParams& params,
               int num_threads);  // crf_cpu_avx2.cpp
}
#endif

namespace {

constexpr double NORM_EPS = 1e-20;  // NORMALIZE_SYMMETRIC: 1 / sqrt(K(1) + eps)
constexpr int RADIX_BITS = 11;      // digit width of the LSD radix sorts

using WideCode = unsigned __int128;

// ---------------------------------------------------------------------------------------
// Sorting (code, index) pairs by code; stable, so equal codes keep index order.

template <typename Code>
struct Keyed {
  Code code;
  int32_t index;
  float weight;  // carried along (it fills what would be padding)
};

// LSD radix sort over the low `bits` bits of the codes; the histograms of all digits are
// counted in one pass.
void sort_keyed(Buffer<Keyed<uint64_t>>& a, Buffer<Keyed<uint64_t>>& tmp, int bits) {
  constexpr int BUCKETS = 1 << RADIX_BITS;
  constexpr uint64_t MASK = BUCKETS - 1;
  const int passes = (bits + RADIX_BITS - 1) / RADIX_BITS;
  std::vector<size_t> count(static_cast<size_t>(passes) * BUCKETS, 0);
  for (const auto& e : a) {
    for (int d = 0; d < passes; ++d) ++count[d * BUCKETS + ((e.code >> (d * RADIX_BITS)) & MASK)];
  }
  tmp.resize(a.size());
  for (int d = 0; d < passes; ++d) {
    size_t* c = count.data() + d * BUCKETS;
    if (std::find(c, c + BUCKETS, a.size()) != c + BUCKETS) continue;  // a single digit value
    size_t pos = 0;
    for (int b = 0; b < BUCKETS; ++b) {
      const size_t k = c[b];
      c[b] = pos;
      pos += k;
    }
    const int shift = d * RADIX_BITS;
    for (const auto& e : a) tmp[c[(e.code >> shift) & MASK]++] = e;
    a.swap(tmp);
  }
}

void sort_keyed(Buffer<Keyed<WideCode>>& a, Buffer<Keyed<WideCode>>&, int) {
  std::stable_sort(a.begin(), a.end(), [](const Keyed<WideCode>& x, const Keyed<WideCode>& y) {
    return x.code < y.code;
  });
}

// ---------------------------------------------------------------------------------------
// Features and packed keys.

// The features of one image for one kernel.
struct Features {
  const uint8_t* image;  // [H, W, 3]
  int64_t height, width;
  float xy_std;
  float rgb_std;

  template <int D>
  void get(int64_t p, float* f) const {
    pixel_features<D>(image, width, p, xy_std, rgb_std, f);
  }
};

// Packs a key, checking the bound the packing relies on.
template <typename Code, int D>
Code pack_checked(const KeyPacking<D>& pk, const int* key) {
  UNSEG_CHECK_ARG(pk.fits(key),
                  "dense_crf: a lattice key is outside its packing bound "
                  "(internal error)");
  return pk.template pack<Code>(key);
}

// Temporaries of a lattice build, kept for the next image.
template <typename Code>
struct BuildScratch {
  Buffer<Keyed<Code>> keyed, corners, tmp;  // pixel codes, corner codes, sort buffer
  Buffer<Code> codes;                       // sorted unique vertex codes
  Buffer<float> a, b, norm;                 // normalisation: vertex values, n_p
};

}  // namespace

struct LatticeBuilder::Scratch {
  BuildScratch<uint64_t> narrow;
  BuildScratch<WideCode> wide;
};

namespace {

template <int D, typename Code>
void build_lattice_coded(const Features& feat, int64_t n, const float* scale,
                         const KeyPacking<D>& pk, Lattice& lat, BuildScratch<Code>& bs) {
  constexpr int V = D + 1;
  Buffer<Keyed<Code>>& keyed = bs.keyed;
  Buffer<Keyed<Code>>& corners = bs.corners;

  // Embed every pixel (raster order): the code of its remainder-0 point, which orders the
  // pixels, and the codes and weights of its corners.
  keyed.resize(static_cast<size_t>(n));
  corners.resize(static_cast<size_t>(n) * V);
  for (int64_t p = 0; p < n; ++p) {
    float f[D];
    feat.get<D>(p, f);
    Simplex<D> s;
    embed<D>(f, scale, s);
    keyed[p] = {pack_checked<Code>(pk, s.rem0), static_cast<int32_t>(p), 0.0f};
    for (int r = 0; r < V; ++r) {
      int key[D];
      vertex_key<D>(s, r, key);
      corners[p * V + r] = {pack_checked<Code>(pk, key), static_cast<int32_t>(p * V + r),
                            s.bary[r]};
    }
  }
  sort_keyed(keyed, bs.tmp, pk.bits);
  lat.order.resize(static_cast<size_t>(n));
  lat.rank.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    lat.order[i] = keyed[i].index;
    lat.rank[keyed[i].index] = static_cast<int32_t>(i);
  }

  // Sorted corner codes: each run of equal codes is one vertex, its entries in raster order
  // (the order in which pydensecrf splats).
  sort_keyed(corners, bs.tmp, pk.bits);
  bs.codes.clear();
  lat.splat_begin.clear();
  lat.splat_entry.resize(static_cast<size_t>(n) * V);
  for (size_t e = 0; e < corners.size(); ++e) {
    if (e == 0 || corners[e].code != corners[e - 1].code) {
      bs.codes.push_back(corners[e].code);
      lat.splat_begin.push_back(static_cast<int32_t>(e));
    }
    const int32_t raster = corners[e].index / V, r = corners[e].index % V;
    const int32_t pixel = lat.rank[raster];
    lat.corner[static_cast<int64_t>(pixel) * V + r] =
        Corner{static_cast<int32_t>(bs.codes.size()) - 1, corners[e].weight};
    lat.splat_entry[e] = SplatEntry{pixel, corners[e].weight};
  }
  const int32_t m = static_cast<int32_t>(bs.codes.size());
  lat.m = m;
  lat.splat_begin.push_back(static_cast<int32_t>(corners.size()));

  // Neighbours along axis j: key - (1, ..., 1) + (D+1) e_j one way, its reverse the other;
  // a merge of the sorted codes with themselves shifted by that offset finds them all.
  lat.neighbour.assign(static_cast<size_t>(V) * m * 2, m);
  lat.reach.fill(0);
  for (int j = 0; j <= D; ++j) {
    const Code off = pk.template axis_offset<Code>(j);
    int32_t* nb = lat.neighbour.data() + static_cast<int64_t>(j) * m * 2;
    int32_t u = 0;
    for (int32_t v = 0; v < m; ++v) {
      const Code target = bs.codes[v] + off;
      while (u < m && bs.codes[u] < target) ++u;
      if (u == m) break;
      if (bs.codes[u] == target) {
        nb[2 * v] = u;
        nb[2 * u + 1] = v;
        lat.reach[j] = std::max(lat.reach[j], std::abs(u - v));
      }
    }
  }

  // Symmetric normalisation n_p = 1 / sqrt(K(1)_p + eps): filter a vector of ones (one value
  // per vertex, so plain loops), then fold n_p into both weights.
  bs.a.assign(static_cast<size_t>(m) + 1, 0.0f);
  bs.b.assign(static_cast<size_t>(m) + 1, 0.0f);
  for (int32_t v = 0; v < m; ++v) {
    for (int32_t e = lat.splat_begin[v]; e < lat.splat_begin[v + 1]; ++e) {
      bs.a[v] += lat.splat_entry[e].weight;
    }
  }
  for (int j = 0; j <= D; ++j) {
    const int32_t* nb = lat.neighbour.data() + static_cast<int64_t>(j) * m * 2;
    for (int32_t v = 0; v < m; ++v) {
      bs.b[v] = bs.a[v] + 0.5f * (bs.a[nb[2 * v]] + bs.a[nb[2 * v + 1]]);
    }
    bs.a.swap(bs.b);
  }
  bs.norm.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    float s = 0.0f;
    Corner* corner = lat.corner.data() + i * V;
    for (int r = 0; r < V; ++r) s += corner[r].weight * bs.a[corner[r].vertex] * lat.alpha;
    bs.norm[i] = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s) + NORM_EPS));
    for (int r = 0; r < V; ++r) corner[r].weight *= bs.norm[i];
  }
  for (SplatEntry& en : lat.splat_entry) en.weight *= bs.norm[en.pixel];

  // When a sweep may slice pixel i: once every corner of pixels 0..i is final.
  lat.ready.resize(static_cast<size_t>(n));
  lat.slice_reach = 0;
  int32_t ready = 0;
  for (int64_t i = 0; i < n; ++i) {
    int32_t lowest = m;
    for (int r = 0; r < V; ++r) {
      ready = std::max(ready, lat.corner[i * V + r].vertex);
      lowest = std::min(lowest, lat.corner[i * V + r].vertex);
    }
    lat.ready[i] = ready;
    lat.slice_reach = std::max(lat.slice_reach, ready - lowest);
  }
}

template <int D>
void build_lattice(const Features& feat, int64_t n, Lattice& lat,
                   LatticeBuilder::Scratch& scratch) {
  constexpr int V = D + 1;
  lat.d = D;
  lat.alpha = slice_alpha(D);
  lat.corner.resize(static_cast<size_t>(n) * V);
  float scale[D];
  for (int i = 0; i < D; ++i) scale[i] = elevation_scale(D, i);
  const KeyPacking<D> pk =
      KeyPacking<D>::for_image(feat.height, feat.width, feat.xy_std, feat.rgb_std, scale);
  UNSEG_CHECK_ARG(pk.bits <= 128, "dense_crf: lattice keys need ", pk.bits,
                  " bits, more than 128; increase the kernel standard deviations");
  if (pk.bits <= 64) {
    build_lattice_coded<D, uint64_t>(feat, n, scale, pk, lat, scratch.narrow);
  } else {
    build_lattice_coded<D, WideCode>(feat, n, scale, pk, lat, scratch.wide);
  }
}

}  // namespace

LatticeBuilder::LatticeBuilder()
    : pos_scratch_(std::make_unique<Scratch>()), bi_scratch_(std::make_unique<Scratch>()) {}

LatticeBuilder::~LatticeBuilder() = default;

void LatticeBuilder::build(const uint8_t* image, int64_t height, int64_t width,
                           const CrfParams& prm, int threads, Lattice& pos, Lattice& bi) {
  const int64_t n = height * width;
  parallel_for(2, threads, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      if (k == 0) {
        build_lattice<POS_D>(Features{image, height, width, prm.pos_xy_std, 1.0f}, n, pos,
                             *pos_scratch_);
      } else {
        build_lattice<BI_D>(Features{image, height, width, prm.bi_xy_std, prm.bi_rgb_std}, n, bi,
                            *bi_scratch_);
      }
    }
  });
}

}  // namespace unseg::crf

namespace unseg {

void dense_crf_cpu(const uint8_t* images, const float* probs, float* q, int64_t batch,
                   int64_t labels, int64_t height, int64_t width, const CrfParams& params,
                   int num_threads, bool baseline_only) {
  if (num_threads <= 0) num_threads = default_num_threads();
#ifdef UNSEG_CRF_AVX2
  if (!baseline_only && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    crf::avx2::dense_crf(images, probs, q, batch, labels, height, width, params, num_threads);
    return;
  }
#endif
  (void)baseline_only;
  crf::baseline::dense_crf(images, probs, q, batch, labels, height, width, params, num_threads);
}

LatticeStats dense_crf_lattice_stats_cpu(const uint8_t* image, int64_t labels, int64_t height,
                                         int64_t width, const CrfParams& params) {
  crf::LatticeBuilder builder;
  crf::Lattice pos, bi;
  builder.build(image, height, width, params, 1, pos, bi);
  // Two value buffers of m + 1 rows per lattice, labels padded as the baseline kernels do.
  const int64_t w = (labels + crf::baseline::VW - 1) / crf::baseline::VW * crf::baseline::VW;
  LatticeStats s;
  s.pos_vertices = pos.m;
  s.bi_vertices = bi.m;
  s.bytes = static_cast<int64_t>(pos.bytes() + bi.bytes()) +
            2 * (pos.m + bi.m + 2) * w * static_cast<int64_t>(sizeof(float));
  return s;
}

#ifndef UNSEG_WITH_CUDA
size_t dense_crf_cuda_workspace_bytes(int64_t, int64_t, int64_t, int64_t) { return 0; }

void dense_crf_cuda(const uint8_t*, const float*, float*, int64_t, int64_t, int64_t, int64_t,
                    const CrfParams&, int, void*, size_t, uintptr_t) {
  throw std::runtime_error(
      "unseg_kernels._C was built without CUDA: dense_crf_cuda is unavailable");
}
#endif

}  // namespace unseg
