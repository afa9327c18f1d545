// The permutohedral lattice embedding (Adams, Baek & Davis 2010) exactly as pydensecrf computes
// it, shared by the CPU and CUDA paths so both find the same vertices with the same weights.
//
// A feature vector f [d] is scaled per dimension (scale[i] = sqrt(2/3) (d+1) / sqrt((i+1)(i+2))
// with the 1/std of its kernel folded in by the caller), elevated onto the hyperplane
// sum(x) = 0 of R^(d+1), and located in a simplex of the lattice (d+1) Z^(d+1) + shifts:
// rem0 is the nearest remainder-0 lattice point, rank the order of the residual coordinates.
// The d+1 vertices of that simplex are keyed by their first d coordinates (the last one is
// implied by the zero sum) and carry barycentric weights that sum to one.
//
// Every float operation below is rounded on its own (no fused multiply-add), in the order
// pydensecrf uses, so a key never lands in a different simplex than the reference's. Ties in
// the rounding go to even, as the reference's SSE conversion does.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define UNSEG_HD __host__ __device__ __forceinline__
#else
#define UNSEG_HD inline
#endif

namespace unseg::crf {

// Feature dimensions of the two kernels: (x, y) and (x, y, r, g, b).
constexpr int POS_D = 2;
constexpr int BI_D = 5;
constexpr int MAX_D = BI_D;

UNSEG_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

UNSEG_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

UNSEG_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

// Per-dimension factor of the elevation matrix times the expected standard deviation of the
// lattice (p.5-6 of Adams et al.), computed in double and rounded once, as the reference does.
inline float elevation_scale(int d, int i) {
  const float inv_std_dev = static_cast<float>(std::sqrt(2.0 / 3.0) * (d + 1));
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>((i + 2) * (i + 1))) *
                            static_cast<double>(inv_std_dev));
}

// 1 / (1 + 2^-d): the slice scaling that makes the blurred lattice approximate a unit Gaussian.
inline float slice_alpha(int d) { return 1.0f / (1.0f + std::pow(2.0f, static_cast<float>(-d))); }

// Where one feature vector sits in the lattice.
template <int D>
struct Simplex {
  int rem0[D + 1];    // the remainder-0 vertex, coordinates multiples of D+1
  int rank[D + 1];    // rank[i]: position of coordinate i in the sorted residual
  float bary[D + 2];  // bary[r]: weight of the vertex of remainder r (r <= D)
};

// Locates the scaled feature f (f[i] already divided by its kernel's std) in the lattice.
template <int D>
UNSEG_HD void embed(const float* f, const float* scale, Simplex<D>& s) {
  const float down = 1.0f / static_cast<float>(D + 1);
  const float up = static_cast<float>(D + 1);

  float elevated[D + 1];
  float sm = 0.0f;
  for (int j = D; j > 0; --j) {
    const float cf = mul_rn(f[j - 1], scale[j - 1]);
    elevated[j] = sub_rn(sm, mul_rn(static_cast<float>(j), cf));
    sm = add_rn(sm, cf);
  }
  elevated[0] = sm;

  // Nearest remainder-0 point by rounding each coordinate to a multiple of D+1.
  float rem0[D + 1];
  float sum = 0.0f;
  for (int i = 0; i <= D; ++i) {
    const float v = rintf(mul_rn(down, elevated[i]));
    rem0[i] = mul_rn(v, up);
    sum = add_rn(sum, v);
  }

  // Rank of each residual coordinate (ties ordered by index, as in the reference). The
  // comparisons are data-dependent coin flips, so they are counted without branches.
  int rank[D + 1];
  float residual[D + 1];
  for (int i = 0; i <= D; ++i) {
    rank[i] = 0;
    residual[i] = sub_rn(elevated[i], rem0[i]);
  }
  for (int i = 0; i < D; ++i) {
    for (int j = i + 1; j <= D; ++j) {
      const int less = residual[i] < residual[j];
      rank[i] += less;
      rank[j] += 1 - less;
    }
  }

  // If the rounded point is off the plane (sum != 0), move it back by wrapping ranks.
  const int isum = static_cast<int>(sum);
  for (int i = 0; i <= D; ++i) {
    rank[i] += isum;
    const int wrap = (rank[i] < 0) - (rank[i] > D);  // +1, -1 or 0
    rank[i] += wrap * (D + 1);
    rem0[i] = add_rn(rem0[i], static_cast<float>(wrap) * up);  // exact; -0 + 0 = +0 is harmless
  }

  // Barycentric coordinates (p.10 of Adams et al.).
  for (int i = 0; i <= D + 1; ++i) s.bary[i] = 0.0f;
  for (int i = 0; i <= D; ++i) {
    const float v = mul_rn(sub_rn(elevated[i], rem0[i]), down);
    const int p = D - rank[i];
    s.bary[p] = add_rn(s.bary[p], v);
    s.bary[p + 1] = sub_rn(s.bary[p + 1], v);
  }
  s.bary[0] = add_rn(s.bary[0], add_rn(1.0f, s.bary[D + 1]));

  for (int i = 0; i <= D; ++i) {
    s.rem0[i] = static_cast<int>(rem0[i]);
    s.rank[i] = rank[i];
  }
}

// Key (first D coordinates) of the vertex of remainder r of simplex s.
template <int D>
UNSEG_HD void vertex_key(const Simplex<D>& s, int r, int* key) {
  for (int i = 0; i < D; ++i) key[i] = s.rem0[i] + (s.rank[i] <= D - r ? r : r - (D + 1));
}

// Keys of the two neighbours of `key` along lattice axis j (0 <= j <= D): the vertex moved by
// +-(D+1) e_j - (1, ..., 1) projected to the first D coordinates. Axis D moves every stored
// coordinate by -+1.
template <int D>
UNSEG_HD void neighbour_keys(const int* key, int j, int* n1, int* n2) {
  for (int k = 0; k < D; ++k) {
    n1[k] = key[k] - 1;
    n2[k] = key[k] + 1;
  }
  if (j < D) {
    n1[j] = key[j] + D;
    n2[j] = key[j] - D;
  }
}

// Features of pixel p of an image [H, W, 3]: (x, y) / xy_std and, for the bilateral kernel,
// (r, g, b) / rgb_std, each divided in float as pydensecrf does.
template <int D>
UNSEG_HD void pixel_features(const uint8_t* image, int64_t width, int64_t p, float xy_std,
                             float rgb_std, float* f) {
  f[0] = static_cast<float>(p % width) / xy_std;
  f[1] = static_cast<float>(p / width) / xy_std;
  if constexpr (D == BI_D) {
    for (int c = 0; c < 3; ++c) f[2 + c] = static_cast<float>(image[p * 3 + c]) / rgb_std;
  }
}

// Vertex keys packed into one integer: coordinate i is stored in bits [shift_i, shift_i +
// bits_i) as key_i - lo_i, coordinate 0 most significant. The fields are sized from the
// feature ranges with headroom, so every key of the image, moved by any blur offset, still
// fits its fields: then code(key + s) = code(key) + offset(s), and sorting codes sorts keys
// lexicographically.
template <int D>
struct KeyPacking {
  int64_t lo[D];
  int64_t hi[D];
  int shift[D];
  int bits;

  // Elevated coordinate i is sum_{k>=i} cf_k - i cf_{i-1} with 0 <= cf_k <= cmax_k (cf the
  // scaled features); a remainder-0 point lies within 1.5 (D+1) of it, a simplex corner within
  // D of that, a blur neighbour within D more, and MARGIN covers all three.
  static KeyPacking for_image(int64_t height, int64_t width, float xy_std, float rgb_std,
                              const float* scale) {
    constexpr int64_t MARGIN = 4 * (D + 1);
    double cmax[D];
    cmax[0] = static_cast<double>(width - 1) / xy_std * scale[0];
    cmax[1] = static_cast<double>(height - 1) / xy_std * scale[1];
    for (int i = 2; i < D; ++i) cmax[i] = 255.0 / rgb_std * scale[i];
    KeyPacking pk;
    int total = 0;
    for (int i = D - 1; i >= 0; --i) {
      double top = 0.0;
      for (int k = i; k < D; ++k) top += cmax[k];
      const double bottom = i > 0 ? -i * cmax[i - 1] : 0.0;
      pk.lo[i] = static_cast<int64_t>(std::floor(bottom)) - MARGIN;
      pk.hi[i] = static_cast<int64_t>(std::ceil(top)) + MARGIN;
      int b = 1;
      while ((int64_t{1} << b) <= pk.hi[i] - pk.lo[i]) ++b;
      pk.shift[i] = total;
      total += b;
    }
    pk.bits = total;
    return pk;
  }

  UNSEG_HD bool fits(const int* key) const {
    for (int i = 0; i < D; ++i) {
      if (key[i] < lo[i] || key[i] > hi[i]) return false;
    }
    return true;
  }

  template <typename Code>
  UNSEG_HD Code pack(const int* key) const {
    Code c = 0;
    for (int i = 0; i < D; ++i) c |= static_cast<Code>(key[i] - lo[i]) << shift[i];
    return c;
  }

  // code(key + s) - code(key), in the modular arithmetic of Code.
  template <typename Code>
  UNSEG_HD Code offset(const int* s) const {
    Code c = 0;
    for (int i = 0; i < D; ++i) c += static_cast<Code>(static_cast<int64_t>(s[i])) << shift[i];
    return c;
  }

  // Offset of the neighbour along axis j that neighbour_keys calls n1.
  template <typename Code>
  UNSEG_HD Code axis_offset(int j) const {
    int origin[D] = {}, n1[D], n2[D];
    neighbour_keys<D>(origin, j, n1, n2);
    return offset<Code>(n1);
  }
};

}  // namespace unseg::crf
