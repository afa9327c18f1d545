// The dense CRF inference kernels (crf_cpu_kernels.h) for CPUs with AVX2 and FMA. This file
// is compiled with -mavx2 -mfma; crf_cpu.cpp calls it only after checking the CPU.
#define UNSEG_CRF_ISA avx2
#define UNSEG_CRF_VECTOR_WIDTH 8
#include "crf/crf_cpu_kernels.h"
