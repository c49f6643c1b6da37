// Declarations of the CPU ops that bindings.cpp exports as tfprune._C.
#pragma once
#include <torch/extension.h>

#include <string>
#include <tuple>
#include <utility>

namespace tfprune {

// An optional bias of the CPU matmuls checked ((N,), on the CPU) and as contiguous float32, or an undefined tensor.
inline torch::Tensor float_bias(const c10::optional<torch::Tensor>& bias, int64_t N, const char* op) {
  if (!bias.has_value() || !bias->defined()) return {};
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == N && bias->device().is_cpu(), op,
              ": bias must be a CPU tensor of shape (", N, "), got ", bias->sizes());
  return bias->to(at::kFloat).contiguous();
}

// First (row, group) of `weight` (out, in) whose group of m input weights holds more than n
// non-zeros, or (-1, -1) when the matrix is n:m sparse.
std::pair<int64_t, int64_t> nm_first_violation(const torch::Tensor& weight, int64_t n, int64_t m);

// 2:4 formats (sparse24.cpp; format "cutlass" | "bitmask"). Each returns its outputs and `ok`, a 0-dim
// bool tensor on the input's device, false when a group is invalid.
// dense (rows, cols) -> (values (rows, cols/2), meta: reordered int16/int32 cutlass meta or uint8 bitmask, ok).
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> sparse24_pack(const torch::Tensor& weight,
                                                                      const std::string& format);
// (values, meta) -> (dense (rows, 2 * values.size(1)), ok).
std::tuple<torch::Tensor, torch::Tensor> sparse24_unpack(const torch::Tensor& values, const torch::Tensor& meta,
                                                         const std::string& format);
// bitmask (rows, cols/8) -> (reordered int16 cutlass meta (rows, cols/16), ok); the values stay as they are.
std::tuple<torch::Tensor, torch::Tensor> sparse24_bitmask_to_cutlass_meta(const torch::Tensor& bitmask);

// decode24: tfprune's decode layout of 2:4 weights and its few-row matmul (decode24_cpu.cpp; layout in
// decode24_core.h). weight (N, K) -> (values (N, K/2), codes uint8 (N, ceil(K/8))).
std::tuple<torch::Tensor, torch::Tensor> decode24_pack(const torch::Tensor& weight);
// (values, codes or, with bitmask, compressed-tensors' bitmask) -> dense (N, K).
torch::Tensor decode24_unpack(const torch::Tensor& values, const torch::Tensor& codes, bool bitmask);
// y (..., N) = x (..., K; M <= 16 rows in all) @ W^T (+ bias), fp32 accumulation; impl: auto | gather | expand |
// bcast | dpbf16 | portable.
torch::Tensor decode24_linear(const torch::Tensor& x, const torch::Tensor& values, const torch::Tensor& codes,
                              const c10::optional<torch::Tensor>& bias, bool bitmask,
                              c10::optional<at::ScalarType> out_dtype, const std::string& impl);
// "avx512bf16" (dpbf16 for bf16, AVX2 kernels otherwise), "avx2" or "portable": the best kernels this CPU runs.
std::string decode24_isa();

// dense_decode (dense_decode_cpu.cpp): y (M, N) = x (M <= 16, K) @ W^T (+ bias (N,)) for bf16 x and a dense bf16
// W (N, K), fp32 accumulation, output in out_dtype (default bf16); CPUs with AVX512_BF16 only.
torch::Tensor dense_decode_linear(const torch::Tensor& x, const torch::Tensor& weight,
                                  const c10::optional<torch::Tensor>& bias, c10::optional<at::ScalarType> out_dtype);
// Whether this CPU runs dense_decode_linear (AVX512_BF16).
bool dense_decode_available();

}  // namespace tfprune
