// Per-group N:M logic shared by the CPU build and the CUDA kernels (__host__ __device__).
// A "group" is M consecutive input weights of one output row; a weight is non-zero when != 0
// (so -0.0 counts as zero, as in torch's semi-structured conversion).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define TFP_HD __host__ __device__ __forceinline__
#else
#define TFP_HD inline
#endif

namespace tfprune {

// Number of non-zeros among the m values starting at `group`.
template <typename T>
TFP_HD int group_nonzeros(const T* group, int m) {
  int count = 0;
  for (int i = 0; i < m; ++i) count += (static_cast<float>(group[i]) != 0.0f) ? 1 : 0;
  return count;
}

}  // namespace tfprune
