// Launchers of the CUDA 2:4 kernels (sparse24_cuda.cu). Raw pointers and cudaStream_t only, no torch
// headers: the .cu compiles with plain nvcc, and sparse24.cpp binds these under TFPRUNE_WITH_CUDA.
// All tensors are contiguous row-major; `bad` is a device int that a kernel sets to 1 when it meets an
// invalid group (more than two non-zeros when packing, a bitmask nibble without exactly two bits when
// unpacking); the caller zeroes it first. Shapes are checked by the caller.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace tfprune {
namespace cuda {

// dense (rows, cols) -> values (rows, cols/2) and reordered meta; kind: s24::CutlassKind.
cudaError_t sparse24_pack_cutlass(const void* dense, void* values, void* meta, int* bad, int64_t rows, int64_t cols,
                                  int kind, cudaStream_t stream);
// values + reordered meta -> dense (rows, cols).
cudaError_t sparse24_unpack_cutlass(const void* values, const void* meta, void* dense, int64_t rows, int64_t cols,
                                    int kind, cudaStream_t stream);
// dense (rows, cols) floats of elem_bytes 1/2/4/8 -> values (rows, cols/2) and bitmask (rows, ceil(cols/8)).
cudaError_t sparse24_pack_bitmask(const void* dense, void* values, uint8_t* bitmask, int* bad, int64_t rows,
                                  int64_t cols, int elem_bytes, cudaStream_t stream);
// values + bitmask -> dense (rows, cols).
cudaError_t sparse24_unpack_bitmask(const void* values, const uint8_t* bitmask, void* dense, int* bad, int64_t rows,
                                    int64_t cols, int elem_bytes, cudaStream_t stream);
// bitmask (rows, cols/8) of 16-bit weights -> reordered int16 CUTLASS meta (rows, cols/16).
cudaError_t sparse24_bitmask_to_cutlass_meta(const uint8_t* bitmask, int16_t* meta, int* bad, int64_t rows,
                                             int64_t cols, cudaStream_t stream);

}  // namespace cuda
}  // namespace tfprune
