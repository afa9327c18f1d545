// The CPU lattices of one image, as built by crf_cpu.cpp and used by the inference kernels of
// crf_cpu_kernels.h.
//
// Both orders are chosen for memory locality: pixels are sorted by the packed code of their
// remainder-0 lattice point and vertices by their packed key, with the leading coordinate
// most significant. A simplex's corners and a vertex's blur neighbours differ from it by at
// most D+1 in that coordinate, so in these orders splat, blur and slice only touch rows in a
// short window around the current position.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "crf/buffer_cpu.h"
#include "crf/crf.h"
#include "crf/permutohedral.h"

namespace unseg::crf {

struct SplatEntry {
  int32_t pixel;  // in the lattice's pixel order
  float weight;   // barycentric weight times n_pixel
};

struct Corner {
  int32_t vertex;
  float weight;  // barycentric weight times n_pixel
};

struct Lattice {
  static constexpr int MAX_D = BI_D;
  int d = 0;
  int32_t m = 0;                           // vertices; row m of a value buffer is the zero row
  std::array<int32_t, MAX_D + 1> reach{};  // largest |neighbour - vertex| along each axis
  float alpha = 1.0f;                      // slice scaling 1 / (1 + 2^-d)
  Buffer<int32_t> order;                   // [N] raster index of each pixel, in lattice order
  Buffer<int32_t> rank;                    // [N] lattice-order index of each raster pixel
  Buffer<Corner> corner;                   // [N][d+1] the corners of each pixel's simplex
  Buffer<int32_t> splat_begin;             // [m+1] CSR over splat_entry
  Buffer<SplatEntry> splat_entry;          // [N (d+1)] each vertex's pixels, in pixel order
  Buffer<int32_t> neighbour;               // [d+1][m][2] both neighbours per axis (m: none)
  Buffer<int32_t> ready;                   // [N] largest corner vertex of pixels 0..i
  int32_t slice_reach = 0;                 // largest ready[i] - (smallest corner vertex of i)

  // Positions of the stages of a sweep (crf_cpu_kernels.h): at step t the splat fills vertex
  // t and axis j blurs vertex t - lead[j]. Axis j reads its input within reach[j] of its
  // vertex, and buffer j+2 is buffer j, so lead[j] - lead[j-1] >= max(reach[j-1], reach[j])
  // and lead[0] >= reach[0].
  std::array<int64_t, MAX_D + 1> leads() const {
    std::array<int64_t, MAX_D + 1> lead{};
    lead[0] = std::max<int64_t>(reach[0], 1);
    for (int j = 1; j <= d; ++j) {
      lead[j] = lead[j - 1] + std::max<int64_t>({reach[j - 1], reach[j], 1});
    }
    return lead;
  }

  // Rows a sweep that moves `chunk` vertices at a time keeps per buffer: a power of two above
  // the span of vertices in use at once (from the slice, lead[d] + slice_reach behind the
  // splat, to the end of the splat's chunk).
  int64_t ring_rows(int64_t chunk) const {
    const int64_t span = leads()[d] + std::max<int64_t>(slice_reach, reach[d]) + chunk + 1;
    int64_t rows = 1;
    while (rows < span) rows *= 2;
    return rows;
  }

  size_t bytes() const {
    return (order.size() + rank.size() + splat_begin.size() + neighbour.size() + ready.size()) *
               sizeof(int32_t) +
           corner.size() * sizeof(Corner) + splat_entry.size() * sizeof(SplatEntry);
  }
};

// Builds the Gaussian (d = 2) and bilateral (d = 5) lattices of images, keeping its
// temporaries for the next image.
class LatticeBuilder {
 public:
  LatticeBuilder();
  ~LatticeBuilder();
  LatticeBuilder(const LatticeBuilder&) = delete;
  LatticeBuilder& operator=(const LatticeBuilder&) = delete;

  // Both lattices of image [height, width, 3], the two built in parallel when threads > 1.
  void build(const uint8_t* image, int64_t height, int64_t width, const CrfParams& params,
             int threads, Lattice& pos, Lattice& bi);

  struct Scratch;  // temporaries of one lattice (crf_cpu.cpp)

 private:
  std::unique_ptr<Scratch> pos_scratch_, bi_scratch_;
};

}  // namespace unseg::crf
