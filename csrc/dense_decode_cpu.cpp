// dense_decode: y = x @ W^T (+ bias) for few rows of x (M <= 16) and a dense bf16 W on CPUs with AVX512_BF16,
// the decode step's matmul of the layers that stay dense (the LM head above all: 168M of Gemma 3 270M's 268M
// parameters). Batch-1 decoding is memory-bound; torch's bf16 GEMV streams ~11 GB/s on two cores of the
// development machine, this kernel ~20 GB/s (benchmarks/README.md): blocks of 8 rows of W, one vdpbf16ps per
// 32 columns, row of W and row of x, and a software prefetch one block ahead (the hardware prefetcher lags
// behind 8 interleaved row streams). K % 32 is taken by masked loads. fp32 accumulation; OpenMP over blocks.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstdint>

#include "decode24_kernels.h"  // TFP_D24_X86, TFP_BF16(_INLINE), hsum512, cpu_has_avx512bf16
#include "ops.h"

namespace {

using tfprune::d24::cpu::kMaxRows;  // rows of x the kernel takes (the decode24 kernels' limit too)
constexpr int64_t kBlock = 8;     // rows of W per block
constexpr int kRowsOfX = 2;       // rows of x per pass over a block (8 x 2 accumulators + 2 rows of x in registers)

#if TFP_D24_X86
using tfprune::d24::cpu::float_to_bf16;
using tfprune::d24::cpu::hsum512;

// rows n0 .. n0 + RB of W times rows m0 .. m0 + MB of x -> out[m, n] (+ bias[n]): fp32, or bf16 into out16
// (rounded as torch casts) when that is set
template <int RB, int MB>
TFP_BF16_INLINE void block(const uint16_t* w, const uint16_t* x, const float* bias, float* out, uint16_t* out16,
                           int64_t N, int64_t K, int64_t n0, int64_t m0) {
  __m512 acc[RB][MB];
  for (int r = 0; r < RB; ++r)
    for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_setzero_ps();
  const int64_t ahead = kBlock * K * 2;  // bytes: the same column of the next block
  for (int64_t k = 0; k < K; k += 32) {
    const __mmask32 lanes = K - k >= 32 ? ~__mmask32(0) : static_cast<__mmask32>((uint64_t(1) << (K - k)) - 1);
    __m512bh xv[MB];
    for (int m = 0; m < MB; ++m) xv[m] = (__m512bh)_mm512_maskz_loadu_epi16(lanes, x + (m0 + m) * K + k);
    for (int r = 0; r < RB; ++r) {
      const uint16_t* row = w + (n0 + r) * K + k;
      _mm_prefetch(reinterpret_cast<const char*>(row) + ahead, _MM_HINT_T0);
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(lanes, row);
      for (int m = 0; m < MB; ++m) acc[r][m] = _mm512_dpbf16_ps(acc[r][m], wv, xv[m]);
    }
  }
  for (int r = 0; r < RB; ++r)
    for (int m = 0; m < MB; ++m) {
      const float y = hsum512(acc[r][m]) + (bias ? bias[n0 + r] : 0.0f);
      if (out16) out16[(m0 + m) * N + n0 + r] = float_to_bf16(y);
      else out[(m0 + m) * N + n0 + r] = y;
    }
}

template <int RB>
TFP_BF16_INLINE void rows_of_w(const uint16_t* w, const uint16_t* x, const float* bias, float* out, uint16_t* out16,
                               int64_t M, int64_t N, int64_t K, int64_t n0) {
  int64_t m0 = 0;
  for (; m0 + kRowsOfX <= M; m0 += kRowsOfX) block<RB, kRowsOfX>(w, x, bias, out, out16, N, K, n0, m0);
  if (m0 < M) block<RB, 1>(w, x, bias, out, out16, N, K, n0, m0);
}

TFP_BF16 void run(const uint16_t* w, const uint16_t* x, const float* bias, float* out, uint16_t* out16, int64_t M,
                  int64_t N, int64_t K, int threads) {
  const int64_t blocks = N / kBlock;
  (void)threads;  // without OpenMP
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < blocks; ++b) rows_of_w<kBlock>(w, x, bias, out, out16, M, N, K, b * kBlock);
  for (int64_t n = blocks * kBlock; n < N; ++n) rows_of_w<1>(w, x, bias, out, out16, M, N, K, n);
}
#endif

}  // namespace

namespace tfprune {

bool dense_decode_available() { return tfprune::d24::cpu::cpu_has_avx512bf16(); }

torch::Tensor dense_decode_linear(const torch::Tensor& x, const torch::Tensor& weight,
                                  const c10::optional<torch::Tensor>& bias, c10::optional<at::ScalarType> out_dtype) {
  TORCH_CHECK(tfprune::d24::cpu::cpu_has_avx512bf16(), "dense_decode_linear: needs a CPU with AVX512_BF16");
  TORCH_CHECK(weight.dim() == 2 && x.dim() == 2, "dense_decode_linear: x (M, K) and weight (N, K) must be 2-D, got ",
              x.sizes(), " and ", weight.sizes());
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "dense_decode_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16,
              "dense_decode_linear: x and weight must be bfloat16, got ", x.scalar_type(), " and ",
              weight.scalar_type());
  TORCH_CHECK(weight.is_contiguous(), "dense_decode_linear: weight must be contiguous");
  const int64_t M = x.size(0), K = x.size(1), N = weight.size(0);
  TORCH_CHECK(weight.size(1) == K, "dense_decode_linear: x has ", K, " features, the weight takes ", weight.size(1));
  TORCH_CHECK(M <= kMaxRows, "dense_decode_linear: x has M=", M, " rows; the kernel takes 0..", kMaxRows);
  const auto ot = out_dtype.value_or(at::kBFloat16);
  TORCH_CHECK(ot == at::kBFloat16 || ot == at::kHalf || ot == at::kFloat,
              "dense_decode_linear: out_dtype must be bfloat16, float16 or float32, got ", ot);
  const torch::Tensor b = float_bias(bias, N, "dense_decode_linear");
  auto xc = x.contiguous();
  const bool bf16_out = ot == at::kBFloat16;  // rounded as the kernel stores: no second pass
  auto out = torch::empty({M, N}, x.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
#if TFP_D24_X86
  if (M > 0 && N > 0)
    run(static_cast<const uint16_t*>(weight.data_ptr()), static_cast<const uint16_t*>(xc.data_ptr()),
        b.defined() ? b.data_ptr<float>() : nullptr, bf16_out ? nullptr : out.data_ptr<float>(),
        bf16_out ? static_cast<uint16_t*>(out.data_ptr()) : nullptr, M, N, K, at::get_num_threads());
#endif
  return ot == at::kFloat || bf16_out ? out : out.to(ot);
}

}  // namespace tfprune
