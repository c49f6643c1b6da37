// CUDA kernels of the 2:4 formats: one thread per meta word (cutlass) or bitmask byte (bitmask), the
// per-group logic from sparse24_core.h. No torch headers: see sparse24_cuda.h.
#include <cstdint>

#include "sparse24_core.h"
#include "sparse24_cuda.h"

namespace tfprune {
namespace cuda {
namespace {

constexpr int kThreads = 256;

inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// 32 bytes from src to dst: two 16-byte loads when both are 16-byte aligned.
template <bool Vec>
__device__ __forceinline__ void copy32(const void* src, void* dst) {
  if constexpr (Vec) {
    const uint4* s = static_cast<const uint4*>(src);
    uint4* d = static_cast<uint4*>(dst);
    d[0] = s[0];
    d[1] = s[1];
  } else {
    const uint8_t* s = static_cast<const uint8_t*>(src);
    uint8_t* d = static_cast<uint8_t*>(dst);
    for (int i = 0; i < 32; ++i) d[i] = s[i];
  }
}

template <bool Vec>
__device__ __forceinline__ void copy16(const void* src, void* dst) {
  if constexpr (Vec) {
    *static_cast<uint4*>(dst) = *static_cast<const uint4*>(src);
  } else {
    const uint8_t* s = static_cast<const uint8_t*>(src);
    uint8_t* d = static_cast<uint8_t*>(dst);
    for (int i = 0; i < 16; ++i) d[i] = s[i];
  }
}

// Every layout reads 32 dense bytes and writes 16 value bytes per meta word:
// 16-bit: 16 elements, 4 codes; int8: 32 elements, 8 codes; fp32 pairs: 8 floats, 4 codes.
template <typename Bits, typename Meta, int G, bool Pairs, bool Vec>
__global__ void pack_cutlass_kernel(const Bits* __restrict__ dense, Bits* __restrict__ values, Meta* __restrict__ meta,
                                    int* __restrict__ bad, int64_t rows, int64_t cols) {
  constexpr int kDense = 32 / sizeof(Bits), kValues = kDense / 2;
  const int64_t ncols = cols / kDense;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * ncols) return;
  const int64_t row = index / ncols, col = index % ncols;
  alignas(16) Bits in[kDense];
  alignas(16) Bits out[kValues];
  copy32<Vec>(dense + row * cols + col * kDense, in);
  bool invalid = false;
  Meta word;
  if constexpr (Pairs) {
    word = s24::cutlass_pack_word_pairs<Bits>(in, out, s24::float_magnitude_mask<Bits>(), invalid);
  } else {
    const Bits mag = sizeof(Bits) == 1 ? Bits(0xFF) : s24::float_magnitude_mask<Bits>();  // int8 or fp16/bf16
    word = s24::cutlass_pack_word<Bits, Meta, G>(in, out, mag, invalid);
  }
  copy16<Vec>(out, values + row * (cols / 2) + col * kValues);
  meta[s24::cutlass_meta_offset(row, col, rows, sizeof(Meta) == 4)] = word;
  if (invalid) *bad = 1;
}

template <typename Bits, typename Meta, int G, bool Vec>
__global__ void unpack_cutlass_kernel(const Bits* __restrict__ values, const Meta* __restrict__ meta,
                                      Bits* __restrict__ dense, int64_t rows, int64_t cols) {
  constexpr int kDense = 4 * G, kValues = 2 * G;
  const int64_t ncols = cols / kDense;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * ncols) return;
  const int64_t row = index / ncols, col = index % ncols;
  alignas(16) Bits in[kValues];
  alignas(16) Bits out[kDense];
  copy16<Vec>(values + row * (cols / 2) + col * kValues, in);
  const Meta word = meta[s24::cutlass_meta_offset(row, col, rows, sizeof(Meta) == 4)];
  s24::cutlass_unpack_word<Bits, Meta, G>(word, in, out);
  copy32<Vec>(out, dense + row * cols + col * kDense);
}

// One thread per bitmask byte: groups 2b and 2b + 1 of a row (the second absent when cols % 8 == 4).
template <typename Bits>
__global__ void pack_bitmask_kernel(const Bits* __restrict__ dense, Bits* __restrict__ values,
                                    uint8_t* __restrict__ bitmask, int* __restrict__ bad, int64_t rows, int64_t cols) {
  const int64_t groups = cols / 4, width = (groups + 1) / 2;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * width) return;
  const int64_t row = index / width, byte = index % width;
  bool invalid = false;
  unsigned bits = 0;
  for (int i = 0; i < 2; ++i) {
    const int64_t group = 2 * byte + i;
    if (group < groups) {
      bits |= s24::bitmask_pack_group<Bits>(dense + row * cols + 4 * group, values + row * (cols / 2) + 2 * group,
                                            s24::float_magnitude_mask<Bits>(), invalid)
              << (4 * i);
    }
  }
  bitmask[index] = static_cast<uint8_t>(bits);
  if (invalid) *bad = 1;
}

template <typename Bits>
__global__ void unpack_bitmask_kernel(const Bits* __restrict__ values, const uint8_t* __restrict__ bitmask,
                                      Bits* __restrict__ dense, int* __restrict__ bad, int64_t rows, int64_t cols) {
  const int64_t groups = cols / 4, width = (groups + 1) / 2;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * width) return;
  const int64_t row = index / width, byte = index % width;
  const unsigned bits = bitmask[index];
  bool invalid = false;
  for (int i = 0; i < 2; ++i) {
    const int64_t group = 2 * byte + i;
    if (group < groups) {
      s24::bitmask_unpack_group<Bits>(bits >> (4 * i) & 0xF, values + row * (cols / 2) + 2 * group,
                                      dense + row * cols + 4 * group, invalid);
    }
  }
  if (invalid) *bad = 1;
}

// One thread per int16 meta word: two bitmask bytes (16 columns).
__global__ void bitmask_to_cutlass_meta_kernel(const uint8_t* __restrict__ bitmask, int16_t* __restrict__ meta,
                                               int* __restrict__ bad, int64_t rows, int64_t cols) {
  const int64_t ncols = cols / 16;
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * ncols) return;
  const int64_t row = index / ncols, col = index % ncols;
  const uint8_t* bytes = bitmask + row * (cols / 8) + 2 * col;
  bool invalid = false;
  const uint16_t word = s24::bitmask_to_cutlass_word(unsigned(bytes[0]) | unsigned(bytes[1]) << 8, invalid);
  meta[s24::cutlass_meta_offset(row, col, rows, false)] = static_cast<int16_t>(word);
  if (invalid) *bad = 1;
}

bool aligned16(const void* a, const void* b) {
  return (reinterpret_cast<uintptr_t>(a) % 16 == 0) && (reinterpret_cast<uintptr_t>(b) % 16 == 0);
}

template <typename Bits, typename Meta, int G, bool Pairs>
void launch_pack_cutlass(const void* dense, void* values, void* meta, int* bad, int64_t rows, int64_t cols,
                         cudaStream_t stream) {
  const int64_t words = rows * (cols / (32 / sizeof(Bits)));
  if (words == 0) return;
  const auto* d = static_cast<const Bits*>(dense);
  auto* v = static_cast<Bits*>(values);
  auto* m = static_cast<Meta*>(meta);
  if (aligned16(dense, values)) {
    pack_cutlass_kernel<Bits, Meta, G, Pairs, true><<<blocks_for(words), kThreads, 0, stream>>>(d, v, m, bad, rows, cols);
  } else {
    pack_cutlass_kernel<Bits, Meta, G, Pairs, false><<<blocks_for(words), kThreads, 0, stream>>>(d, v, m, bad, rows, cols);
  }
}

template <typename Bits, typename Meta, int G>
void launch_unpack_cutlass(const void* values, const void* meta, void* dense, int64_t rows, int64_t cols,
                           cudaStream_t stream) {
  const int64_t words = rows * (cols / (4 * G));
  if (words == 0) return;
  const auto* v = static_cast<const Bits*>(values);
  const auto* m = static_cast<const Meta*>(meta);
  auto* d = static_cast<Bits*>(dense);
  if (aligned16(dense, values)) {
    unpack_cutlass_kernel<Bits, Meta, G, true><<<blocks_for(words), kThreads, 0, stream>>>(v, m, d, rows, cols);
  } else {
    unpack_cutlass_kernel<Bits, Meta, G, false><<<blocks_for(words), kThreads, 0, stream>>>(v, m, d, rows, cols);
  }
}

template <typename Bits>
void launch_pack_bitmask(const void* dense, void* values, uint8_t* bitmask, int* bad, int64_t rows, int64_t cols,
                         cudaStream_t stream) {
  const int64_t bytes = rows * ((cols / 4 + 1) / 2);
  if (bytes == 0) return;
  pack_bitmask_kernel<Bits><<<blocks_for(bytes), kThreads, 0, stream>>>(
      static_cast<const Bits*>(dense), static_cast<Bits*>(values), bitmask, bad, rows, cols);
}

template <typename Bits>
void launch_unpack_bitmask(const void* values, const uint8_t* bitmask, void* dense, int* bad, int64_t rows,
                           int64_t cols, cudaStream_t stream) {
  const int64_t bytes = rows * ((cols / 4 + 1) / 2);
  if (bytes == 0) return;
  unpack_bitmask_kernel<Bits><<<blocks_for(bytes), kThreads, 0, stream>>>(
      static_cast<const Bits*>(values), bitmask, static_cast<Bits*>(dense), bad, rows, cols);
}

}  // namespace

cudaError_t sparse24_pack_cutlass(const void* dense, void* values, void* meta, int* bad, int64_t rows, int64_t cols,
                                  int kind, cudaStream_t stream) {
  switch (kind) {
    case s24::kCutlass16: launch_pack_cutlass<uint16_t, uint16_t, 4, false>(dense, values, meta, bad, rows, cols, stream); break;
    case s24::kCutlass8: launch_pack_cutlass<uint8_t, uint32_t, 8, false>(dense, values, meta, bad, rows, cols, stream); break;
    case s24::kCutlass32: launch_pack_cutlass<uint32_t, uint16_t, 4, true>(dense, values, meta, bad, rows, cols, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t sparse24_unpack_cutlass(const void* values, const void* meta, void* dense, int64_t rows, int64_t cols,
                                    int kind, cudaStream_t stream) {
  switch (kind) {
    case s24::kCutlass16: launch_unpack_cutlass<uint16_t, uint16_t, 4>(values, meta, dense, rows, cols, stream); break;
    case s24::kCutlass8: launch_unpack_cutlass<uint8_t, uint32_t, 8>(values, meta, dense, rows, cols, stream); break;
    // fp32 unpacks on its 16-bit view, as torch's _to_dense_cutlass does.
    case s24::kCutlass32: launch_unpack_cutlass<uint16_t, uint16_t, 4>(values, meta, dense, rows, 2 * cols, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t sparse24_pack_bitmask(const void* dense, void* values, uint8_t* bitmask, int* bad, int64_t rows,
                                  int64_t cols, int elem_bytes, cudaStream_t stream) {
  switch (elem_bytes) {
    case 1: launch_pack_bitmask<uint8_t>(dense, values, bitmask, bad, rows, cols, stream); break;
    case 2: launch_pack_bitmask<uint16_t>(dense, values, bitmask, bad, rows, cols, stream); break;
    case 4: launch_pack_bitmask<uint32_t>(dense, values, bitmask, bad, rows, cols, stream); break;
    case 8: launch_pack_bitmask<uint64_t>(dense, values, bitmask, bad, rows, cols, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t sparse24_unpack_bitmask(const void* values, const uint8_t* bitmask, void* dense, int* bad, int64_t rows,
                                    int64_t cols, int elem_bytes, cudaStream_t stream) {
  switch (elem_bytes) {
    case 1: launch_unpack_bitmask<uint8_t>(values, bitmask, dense, bad, rows, cols, stream); break;
    case 2: launch_unpack_bitmask<uint16_t>(values, bitmask, dense, bad, rows, cols, stream); break;
    case 4: launch_unpack_bitmask<uint32_t>(values, bitmask, dense, bad, rows, cols, stream); break;
    case 8: launch_unpack_bitmask<uint64_t>(values, bitmask, dense, bad, rows, cols, stream); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t sparse24_bitmask_to_cutlass_meta(const uint8_t* bitmask, int16_t* meta, int* bad, int64_t rows,
                                             int64_t cols, cudaStream_t stream) {
  const int64_t words = rows * (cols / 16);
  if (words > 0) {
    bitmask_to_cutlass_meta_kernel<<<blocks_for(words), kThreads, 0, stream>>>(bitmask, meta, bad, rows, cols);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace tfprune
