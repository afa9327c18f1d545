// Dense CRF on the CPU (see crf.h for the math): lattice construction, and the choice of the
// inference kernels (crf_cpu_kernels.h) for this CPU.
//
// Lattice construction, once per image and kernel:
//   1. every pixel is embedded (permutohedral.h); its remainder-0 point and the d+1 corner
//      keys of its simplex are packed into integer codes, one bit field per coordinate sized
//      from the feature ranges with headroom, so moving a key by a blur offset adds a constant
//      to its code; an open-addressing table gives each distinct corner code a vertex id
//      (sorting all N (d+1) corner codes to find the distinct ones cost more);
//   2. pixels are ordered by the code of their remainder-0 point and the m vertices by their
//      code (LSD radix sorts; see lattice_cpu.h for why these orders);
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
// Features, packed keys and the vertex table.

// The features of one image for one kernel, with pydensecrf's float divisions done once per
// coordinate value: x / xy_std for every column, y / xy_std for every row, c / rgb_std for
// every intensity.
struct Features {
  const uint8_t* image;  // [H, W, 3]
  int64_t height, width;
  float xy_std;
  float rgb_std;
};

struct FeatureTables {
  std::vector<float> x, y, colour;

  FeatureTables(const Features& feat) : x(feat.width), y(feat.height), colour(256) {
    for (int64_t i = 0; i < feat.width; ++i) x[i] = static_cast<float>(i) / feat.xy_std;
    for (int64_t i = 0; i < feat.height; ++i) y[i] = static_cast<float>(i) / feat.xy_std;
    for (int i = 0; i < 256; ++i) colour[i] = static_cast<float>(i) / feat.rgb_std;
  }
};

uint64_t code_hash(uint64_t code) { return code * 0x9E3779B97F4A7C15ull; }
uint64_t code_hash(WideCode code) {
  return code_hash(static_cast<uint64_t>(code) ^
                   code_hash(static_cast<uint64_t>(code >> 64) + uint64_t{0x632BE59BD9B4E019}));
}

// Open-addressing hash table from vertex code to a vertex id, ids given in order of first
// insertion. Kept at most half full.
template <typename Code>
class VertexTable {
 public:
  void reset(int64_t expected) {
    int bits = 10;
    while ((int64_t{1} << bits) < 2 * expected) ++bits;
    resize(bits);
    codes_.clear();
  }

  // The id of `code`, a new one (codes().size() before the call) if it was not there.
  int32_t insert(Code code) {
    size_t h = slot(code);
    while (true) {
      const Slot& s = slots_[h];
      if (s.id < 0) break;
      if (s.code == code) return s.id;
      h = (h + 1) & mask_;
    }
    const int32_t id = static_cast<int32_t>(codes_.size());
    slots_[h] = Slot{code, id};
    codes_.push_back(code);
    if (2 * codes_.size() > slots_.size()) rehash();
    return id;
  }

  const Buffer<Code>& codes() const { return codes_; }

 private:
  struct Slot {
    Code code;
    int32_t id;  // -1: empty
  };

  size_t slot(Code code) const { return static_cast<size_t>(code_hash(code) >> shift_); }

  void resize(int bits) {
    slots_.assign(size_t{1} << bits, Slot{Code{0}, -1});
    mask_ = slots_.size() - 1;
    shift_ = 64 - bits;
  }

  void rehash() {
    resize(64 - shift_ + 1);
    for (size_t id = 0; id < codes_.size(); ++id) {
      size_t h = slot(codes_[id]);
      while (slots_[h].id >= 0) h = (h + 1) & mask_;
      slots_[h] = Slot{codes_[id], static_cast<int32_t>(id)};
    }
  }

  Buffer<Slot> slots_;
  Buffer<Code> codes_;  // by id
  size_t mask_ = 0;
  int shift_ = 64;
};

// Temporaries of a lattice build, kept for the next image.
template <typename Code>
struct BuildScratch {
  Buffer<Keyed<Code>> keyed, tmp;  // pixel codes / vertex codes, sort buffer
  Buffer<int32_t> corner_id;       // [N][d+1] raster order: vertex id in insertion order
  Buffer<float> corner_weight;     // [N][d+1] raster order: barycentric weight
  Buffer<int32_t> sorted_id;       // insertion id -> id in code order
  Buffer<Code> codes;              // vertex codes in code order
  VertexTable<Code> table;
  Buffer<float> a, b, norm;  // normalisation: vertex values, n_p
};

}  // namespace

struct LatticeBuilder::Scratch {
  BuildScratch<uint64_t> narrow;
  BuildScratch<WideCode> wide;
};

namespace {

// Embeds every pixel (raster order): the code of its remainder-0 point (keyed, to order the
// pixels), and the vertex ids and weights of its corners. A corner of remainder r + 1 is the
// one of remainder r plus (1, ..., 1) minus (D+1) at the coordinate of rank D - r, so its code
// is one add away (KeyPacking: code(key + s) = code(key) + offset(s)). Pixels next to each
// other in the image mostly share vertices, so the table lookups mostly hit the cache.
template <int D, typename Code>
void embed_pixels(const Features& feat, const float* scale, const KeyPacking<D>& pk,
                  BuildScratch<Code>& bs) {
  constexpr int V = D + 1;
  const FeatureTables tables(feat);
  int ones[D];
  for (int i = 0; i < D; ++i) ones[i] = 1;
  const Code step = pk.template offset<Code>(ones);
  Code drop[D + 1];  // what the coordinate of rank D - r gives back
  for (int i = 0; i <= D; ++i) {
    int s[D] = {};
    if (i < D) s[i] = D + 1;
    drop[i] = pk.template offset<Code>(s);
  }
  // rem0 within D of the packing bounds keeps every corner inside them.
  int64_t lo[D], hi[D];
  for (int i = 0; i < D; ++i) {
    lo[i] = pk.lo[i] + D;
    hi[i] = pk.hi[i] - D;
  }
  bool outside = false;
  int64_t p = 0;
  for (int64_t y = 0; y < feat.height; ++y) {
    for (int64_t x = 0; x < feat.width; ++x, ++p) {
      float f[D];
      f[0] = tables.x[x];
      f[1] = tables.y[y];
      if constexpr (D == BI_D) {
        for (int c = 0; c < 3; ++c) f[2 + c] = tables.colour[feat.image[p * 3 + c]];
      }
      Simplex<D> s;
      embed<D>(f, scale, s);
      for (int i = 0; i < D; ++i) outside |= s.rem0[i] < lo[i] || s.rem0[i] > hi[i];
      Code code = pk.template pack<Code>(s.rem0);
      bs.keyed[p] = {code, static_cast<int32_t>(p), 0.0f};
      int by_rank[D + 1];
      for (int i = 0; i <= D; ++i) by_rank[s.rank[i]] = i;
      for (int r = 0; r < V; ++r) {
        bs.corner_id[p * V + r] = bs.table.insert(code);
        bs.corner_weight[p * V + r] = s.bary[r];
        code += step - drop[by_rank[D - r]];
      }
    }
  }
  UNSEG_CHECK_ARG(!outside,
                  "dense_crf: a lattice key is outside its packing bound "
                  "(internal error)");
}

// For each vertex v (codes sorted), the vertex whose code is codes[v] + off, if any, and the
// reverse relation: one branch-free merge of the codes with themselves shifted (a vertex
// lacks a neighbour about half the time, so a branch would be mispredicted that often).
// Writes nb[2 v] and nb[2 u + 1]; m where there is none.
template <typename Code>
int32_t match_shifted(const Buffer<Code>& codes, Code off, int32_t* nb) {
  const int32_t m = static_cast<int32_t>(codes.size());
  int32_t reach = 0;
  int32_t v = 0, u = 0;
  while (v < m && u < m) {
    const Code a = codes[v] + off, b = codes[u];
    const bool same = a == b;
    // The last write to nb[2 v] is made when v moves on: u if that is its match, else m.
    nb[2 * v] = same ? u : m;
    nb[2 * u + 1] = same ? v : m;
    reach = std::max(reach, same ? std::abs(u - v) : 0);
    v += a <= b;
    u += b <= a;
  }
  for (; v < m; ++v) nb[2 * v] = m;
  for (; u < m; ++u) nb[2 * u + 1] = m;
  return reach;
}

template <int D, typename Code>
void build_lattice_coded(const Features& feat, int64_t n, const float* scale,
                         const KeyPacking<D>& pk, Lattice& lat, BuildScratch<Code>& bs) {
  constexpr int V = D + 1;
  bs.keyed.resize(static_cast<size_t>(n));
  bs.corner_id.resize(static_cast<size_t>(n) * V);
  bs.corner_weight.resize(static_cast<size_t>(n) * V);
  bs.table.reset(n + n / 4);
  embed_pixels<D, Code>(feat, scale, pk, bs);

  // Pixels in the order of their remainder-0 codes.
  sort_keyed(bs.keyed, bs.tmp, pk.bits);
  lat.order.resize(static_cast<size_t>(n));
  lat.rank.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    lat.order[i] = bs.keyed[i].index;
    lat.rank[bs.keyed[i].index] = static_cast<int32_t>(i);
  }

  // Vertices in the order of their codes.
  const Buffer<Code>& inserted = bs.table.codes();
  const int32_t m = static_cast<int32_t>(inserted.size());
  lat.m = m;
  bs.keyed.resize(static_cast<size_t>(m));
  for (int32_t v = 0; v < m; ++v) bs.keyed[v] = {inserted[v], v, 0.0f};
  sort_keyed(bs.keyed, bs.tmp, pk.bits);
  bs.sorted_id.resize(static_cast<size_t>(m));
  bs.codes.resize(static_cast<size_t>(m));
  for (int32_t v = 0; v < m; ++v) {
    bs.sorted_id[bs.keyed[v].index] = v;
    bs.codes[v] = bs.keyed[v].code;
  }

  // Corners per pixel (lattice order) and pixels per vertex (CSR, raster order within a
  // vertex: the order in which pydensecrf splats).
  lat.splat_begin.assign(static_cast<size_t>(m) + 1, 0);
  for (int64_t p = 0; p < n; ++p) {
    Corner* corner = lat.corner.data() + static_cast<int64_t>(lat.rank[p]) * V;
    for (int r = 0; r < V; ++r) {
      const int32_t v = bs.sorted_id[bs.corner_id[p * V + r]];
      corner[r] = Corner{v, bs.corner_weight[p * V + r]};
      ++lat.splat_begin[v + 1];
    }
  }
  for (int32_t v = 0; v < m; ++v) lat.splat_begin[v + 1] += lat.splat_begin[v];
  lat.splat_entry.resize(static_cast<size_t>(n) * V);
  {
    Buffer<int32_t>& fill = bs.sorted_id;  // reused: next free entry of each vertex
    std::copy(lat.splat_begin.begin(), lat.splat_begin.end() - 1, fill.begin());
    for (int64_t p = 0; p < n; ++p) {
      const int32_t pixel = lat.rank[p];
      const Corner* corner = lat.corner.data() + static_cast<int64_t>(pixel) * V;
      for (int r = 0; r < V; ++r) {
        lat.splat_entry[fill[corner[r].vertex]++] = SplatEntry{pixel, corner[r].weight};
      }
    }
  }

  // Neighbours along axis j: key - (1, ..., 1) + (D+1) e_j one way, its reverse the other.
  lat.neighbour.resize(static_cast<size_t>(V) * m * 2);
  for (int j = 0; j <= D; ++j) {
    lat.reach[j] = match_shifted<Code>(bs.codes, pk.template axis_offset<Code>(j),
                                       lat.neighbour.data() + static_cast<int64_t>(j) * m * 2);
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
