// Running top-k by a bounded heap per row (see topk.h). Each row keeps its k best scores as a
// heap whose root is the worst of them; a score enters only if it beats the root, so after
// the first few blocks almost every score costs one comparison.
#include "common/parallel.h"
#include "knn/topk.h"

namespace unseg {
namespace {

// Heap on (value, index) pairs where `worse(a, b)` puts the worst entry at the root.
template <bool LARGEST>
bool worse(float a, float b) {
  return LARGEST ? a < b : a > b;
}

template <bool LARGEST>
void sift_down(float* v, int64_t* idx, int64_t k) {
  int64_t i = 0;
  while (true) {
    const int64_t l = 2 * i + 1, r = l + 1;
    int64_t w = i;
    if (l < k && worse<LARGEST>(v[l], v[w])) w = l;
    if (r < k && worse<LARGEST>(v[r], v[w])) w = r;
    if (w == i) return;
    const float tv = v[i];
    v[i] = v[w];
    v[w] = tv;
    const int64_t ti = idx[i];
    idx[i] = idx[w];
    idx[w] = ti;
    i = w;
  }
}

template <bool LARGEST>
void update_rows(const float* scores, int64_t r0, int64_t r1, int64_t cols, int64_t stride,
                 int64_t col_offset, int64_t k, float* values, int64_t* indices) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* s = scores + r * stride;
    float* v = values + r * k;
    int64_t* idx = indices + r * k;
    // The caller's initial values (all equal) already form a heap; so does every state after.
    float root = v[0];
    for (int64_t c = 0; c < cols; ++c) {
      if (worse<LARGEST>(root, s[c])) {
        v[0] = s[c];
        idx[0] = col_offset + c;
        sift_down<LARGEST>(v, idx, k);
        root = v[0];
      }
    }
  }
}

}  // namespace

void topk_update_cpu(const float* scores, int64_t rows, int64_t cols, int64_t stride,
                     int64_t col_offset, int64_t k, bool largest, float* values, int64_t* indices,
                     int num_threads) {
  parallel_for(rows, num_threads, [&](int64_t r0, int64_t r1) {
    if (largest) {
      update_rows<true>(scores, r0, r1, cols, stride, col_offset, k, values, indices);
    } else {
      update_rows<false>(scores, r0, r1, cols, stride, col_offset, k, values, indices);
    }
  });
}

}  // namespace unseg
