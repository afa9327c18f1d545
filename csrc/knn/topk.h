// Running top-k of the rows of score blocks, for the CPU path of unseg_kernels.knn. The CUDA
// path merges torch.topk results instead (a GPU top-k is fast; a CPU torch.topk costs about a
// third of the block's matrix product, while this costs a compare per score).
#pragma once

#include <cstdint>

namespace unseg {

// Folds a block of scores [rows, cols] (row-major, row stride `stride`) into the running top-k
// of each row: values/indices [rows, k], unordered, initialised by the caller to -inf (largest)
// or +inf (smallest) and -1. Column c of the block is key index col_offset + c. Rows run on up
// to num_threads threads (<= 0: one per hardware thread).
void topk_update_cpu(const float* scores, int64_t rows, int64_t cols, int64_t stride,
                     int64_t col_offset, int64_t k, bool largest, float* values, int64_t* indices,
                     int num_threads);

}  // namespace unseg
