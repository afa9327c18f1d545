// The CPU k-means kernels for AVX2 + FMA. CMake compiles this file alone with -mavx2 -mfma
// (x86-64 only); the driver calls into it only after checking that the CPU has both.
#include <immintrin.h>

#include "kmeans/kmeans_cpu_kernels.h"

namespace unseg::kmeans_cpu {
namespace {

// 8 float lanes. Internal linkage: the instantiated kernels cannot leak into portable code.
struct Avx2Vec {
  using R = __m256;
  static constexpr int W = 8;
  static R zero() { return _mm256_setzero_ps(); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R load_partial(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static void store(float* p, R r) { _mm256_storeu_ps(p, r); }
  static void store_partial(float* p, R r, int n) { _mm256_maskstore_ps(p, mask(n), r); }
  static R fma(R a, R b, R acc) { return _mm256_fmadd_ps(a, b, acc); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  // Without this GCC folds the point load into each of the NR FMAs that use it (NR loads
  // instead of one), which made the assignment kernel 20% slower.
  static void keep_in_register(R& r) { asm volatile("" : "+x"(r)); }
  static float hsum(R r) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace

const KernelTable& avx2_kernels() {
  static const KernelTable table = make_table<Avx2Vec>("avx2");
  return table;
}

}  // namespace unseg::kmeans_cpu
