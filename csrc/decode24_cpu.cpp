// decode24 on the CPU, the torch shim: the packer of tfprune's decode layout of 2:4 weights (decode24_core.h),
// its unpacker, and y = x @ W^T (+ bias) for few rows of x (M <= 16) on the kernels of decode24_kernels.h,
// which read the packed weight without expanding it in memory (batch-1 decoding is memory-bound: they
// stream 9/16 of the dense bytes for 16-bit weights). Checks here, loops there.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <cstring>
#include <limits>
#include <string>

#include "decode24_core.h"
#include "decode24_kernels.h"
#include "ops.h"

namespace {

namespace cpu = tfprune::d24::cpu;

cpu::Impl choose(const std::string& name, int64_t M, bool bf16_inputs) {
  if (name == "auto") return cpu::auto_impl(M, bf16_inputs);
  if (name == "portable") return cpu::Impl::kPortable;
  if (name == "dpbf16") {
    TORCH_CHECK(cpu::cpu_has_avx512bf16(), "decode24_linear: impl='dpbf16' needs a CPU with AVX512_BF16");
    TORCH_CHECK(bf16_inputs, "decode24_linear: impl='dpbf16' takes bfloat16 x and values");
    return cpu::Impl::kDpbf16;
  }
  TORCH_CHECK(name == "gather" || name == "expand" || name == "bcast",
              "decode24_linear: impl must be 'auto', 'gather', 'expand', 'bcast', 'dpbf16' or 'portable', got '", name,
              "'");
  TORCH_CHECK(cpu::cpu_has_avx2(), "decode24_linear: impl='", name, "' needs a CPU with AVX2, FMA and F16C");
  TORCH_CHECK(name != "gather" || M <= 4, "decode24_linear: impl='gather' takes M <= 4 rows of x, got M=", M);
  return name == "gather" ? cpu::Impl::kGather : name == "expand" ? cpu::Impl::kExpand : cpu::Impl::kBcast;
}

template <typename T>
void pack_rows(const T* w, T* values, uint8_t* codes, int64_t rows, int64_t cols, int64_t code_bytes, T mag,
               int64_t& first_bad) {
  const int64_t groups = cols / 4;
  int64_t first = std::numeric_limits<int64_t>::max();
#pragma omp parallel for schedule(static) reduction(min : first)
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = w + r * cols;
    T* vrow = values + r * (cols / 2);
    uint8_t* crow = codes + r * code_bytes;
    std::memset(crow, 0, code_bytes);
    for (int64_t g = 0; g < groups; ++g) {
      bool bad = false;
      const unsigned code = tfprune::d24::pack_group(row + 4 * g, vrow + 2 * g, mag, bad);
      crow[g >> 1] |= static_cast<uint8_t>(code << (4 * (g & 1)));
      if (bad && first == std::numeric_limits<int64_t>::max()) first = r * groups + g;
    }
  }
  first_bad = first;
}

template <typename T>
void unpack_rows(const T* values, const uint8_t* codes, T* dense, int64_t rows, int64_t cols, int64_t code_bytes,
                 int kind) {
  const auto& pair = cpu::tables().pair[kind];
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* vrow = values + r * (cols / 2);
    const uint8_t* crow = codes + r * code_bytes;
    T* out = dense + r * cols;
    std::memset(out, 0, cols * sizeof(T));
    for (int64_t g = 0; g < cols / 4; ++g) {
      const unsigned nibble = crow[g >> 1] >> (4 * (g & 1)) & 0xF;
      out[4 * g + pair[nibble][1]] = vrow[2 * g + 1];
      out[4 * g + pair[nibble][0]] = vrow[2 * g];
    }
  }
}

void check_packed(const torch::Tensor& values, const torch::Tensor& codes, const char* op) {
  TORCH_CHECK(values.dim() == 2 && codes.dim() == 2, op, ": values (N, K/2) and codes (N, ceil(K/8)) must be 2-D, got ",
              values.sizes(), " and ", codes.sizes());
  TORCH_CHECK(values.device().is_cpu() && codes.device().is_cpu(), op, ": CPU tensors only, got ", values.device(),
              " and ", codes.device());
  TORCH_CHECK(values.scalar_type() == at::kBFloat16 || values.scalar_type() == at::kHalf ||
                  values.scalar_type() == at::kFloat,
              op, ": values must be bfloat16, float16 or float32, got ", values.scalar_type());
  TORCH_CHECK(codes.scalar_type() == at::kByte, op, ": codes must be uint8, got ", codes.scalar_type());
  const int64_t K = values.size(1) * 2;
  TORCH_CHECK(K % 4 == 0 && K > 0, op, ": values have ", values.size(1), " columns; a 2:4 layout of K input ",
              "features has K/2 with K a positive multiple of 4");
  TORCH_CHECK(codes.size(0) == values.size(0) && codes.size(1) == (K + 7) / 8, op, ": codes ", codes.sizes(),
              " do not match values ", values.sizes(), " (expected (", values.size(0), ", ", (K + 7) / 8, "))");
  TORCH_CHECK(values.is_contiguous() && codes.is_contiguous(), op, ": values and codes must be contiguous");
}

}  // namespace

namespace tfprune {

std::tuple<torch::Tensor, torch::Tensor> decode24_pack(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "decode24_pack: weight must be 2-D (out, in), got ", weight.sizes());
  TORCH_CHECK(weight.device().is_cpu(), "decode24_pack: CPU tensors only, got ", weight.device());
  const auto dtype = weight.scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kHalf || dtype == at::kFloat,
              "decode24_pack: weight must be bfloat16, float16 or float32, got ", dtype);
  const int64_t rows = weight.size(0), cols = weight.size(1);
  TORCH_CHECK(cols % 4 == 0 && cols > 0, "decode24_pack: in_features=", cols, " is not a positive multiple of 4");
  auto w = weight.contiguous();
  const int64_t code_bytes = (cols + 7) / 8;
  auto values = torch::empty({rows, cols / 2}, w.options());
  auto codes = torch::empty({rows, code_bytes}, w.options().dtype(at::kByte));
  int64_t first = std::numeric_limits<int64_t>::max();
  if (dtype == at::kFloat) {
    pack_rows<uint32_t>(static_cast<const uint32_t*>(w.data_ptr()), static_cast<uint32_t*>(values.data_ptr()),
                        codes.data_ptr<uint8_t>(), rows, cols, code_bytes, 0x7FFFFFFFu, first);
  } else {
    pack_rows<uint16_t>(static_cast<const uint16_t*>(w.data_ptr()), static_cast<uint16_t*>(values.data_ptr()),
                        codes.data_ptr<uint8_t>(), rows, cols, code_bytes, uint16_t(0x7FFF), first);
  }
  TORCH_CHECK(first == std::numeric_limits<int64_t>::max(), "decode24_pack: weight is not 2:4 sparse: row ",
              first / (cols / 4), ", group ", first % (cols / 4), " (columns ", 4 * (first % (cols / 4)), "..",
              4 * (first % (cols / 4)) + 3, ") holds more than 2 non-zeros");
  return {values, codes};
}

torch::Tensor decode24_unpack(const torch::Tensor& values, const torch::Tensor& codes, bool bitmask) {
  check_packed(values, codes, "decode24_unpack");
  const int64_t rows = values.size(0), cols = values.size(1) * 2;
  auto dense = torch::empty({rows, cols}, values.options());
  if (values.scalar_type() == at::kFloat) {
    unpack_rows<uint32_t>(static_cast<const uint32_t*>(values.data_ptr()), codes.data_ptr<uint8_t>(),
                          static_cast<uint32_t*>(dense.data_ptr()), rows, cols, codes.size(1), bitmask ? 1 : 0);
  } else {
    unpack_rows<uint16_t>(static_cast<const uint16_t*>(values.data_ptr()), codes.data_ptr<uint8_t>(),
                          static_cast<uint16_t*>(dense.data_ptr()), rows, cols, codes.size(1), bitmask ? 1 : 0);
  }
  return dense;
}

torch::Tensor decode24_linear(const torch::Tensor& x_in, const torch::Tensor& values, const torch::Tensor& codes,
                              const c10::optional<torch::Tensor>& bias, bool bitmask,
                              c10::optional<at::ScalarType> out_dtype, const std::string& impl) {
  check_packed(values, codes, "decode24_linear");
  const int64_t N = values.size(0), K = values.size(1) * 2;
  TORCH_CHECK(x_in.dim() >= 1, "decode24_linear: x must be (..., K), got ", x_in.sizes());
  TORCH_CHECK(x_in.size(-1) == K, "decode24_linear: x has ", x_in.size(-1), " features, the weight takes K=", K);
  const auto x = x_in.reshape({-1, K});  // (M, K): a view where it can be
  TORCH_CHECK(x.device().is_cpu(), "decode24_linear: CPU tensors only, got x on ", x.device());
  const int64_t M = x.size(0);
  TORCH_CHECK(M <= cpu::kMaxRows, "decode24_linear: x has M=", M, " rows; the decode kernel takes 1..", cpu::kMaxRows,
              " (use the dense or CUTLASS path for more)");
  const auto xt = x.scalar_type();
  TORCH_CHECK(xt == at::kBFloat16 || xt == at::kHalf || xt == at::kFloat,
              "decode24_linear: x must be bfloat16, float16 or float32, got ", xt);
  const auto ot = out_dtype.value_or(xt);
  TORCH_CHECK(ot == at::kBFloat16 || ot == at::kHalf || ot == at::kFloat,
              "decode24_linear: out_dtype must be bfloat16, float16 or float32, got ", ot);
  const torch::Tensor b = float_bias(bias, N, "decode24_linear");
  const bool bf16_inputs = xt == at::kBFloat16 && values.scalar_type() == at::kBFloat16;
  const cpu::Impl chosen = choose(impl, M, bf16_inputs);
  const bool bf16_out = ot == at::kBFloat16;  // the kernels round to bf16 as they store: no second pass
  auto out = torch::empty({M, N}, x.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
  if (M > 0 && N > 0) {
    // dpbf16 with no tail groups reads only bf16 x, within its K columns: one or two contiguous rows are read
    // in place. Otherwise x is copied to rows of K + 32 elements: rows K * 4 (or 2) bytes apart would share L1
    // sets (K = 4096...) when many rows of x stream together.
    const bool in_place = chosen == cpu::Impl::kDpbf16 && K % 64 == 0 && M <= 2 && x.is_contiguous();
    const int64_t ldx = in_place ? K : K + 32;
    torch::Tensor xf, xh;
    if (chosen != cpu::Impl::kDpbf16 || K % 64) {  // dpbf16 reads fp32 x only for its tail groups
      xf = torch::zeros({M, ldx}, x.options().dtype(at::kFloat));
      xf.narrow(1, 0, K).copy_(x);
    }
    if (in_place) {
      xh = x;
    } else if (chosen == cpu::Impl::kDpbf16) {
      xh = torch::zeros({M, ldx}, x.options());
      xh.narrow(1, 0, K).copy_(x);
    }
    const cpu::Problem p{values.data_ptr(),
                         codes.data_ptr<uint8_t>(),
                         xf.defined() ? xf.data_ptr<float>() : nullptr,
                         xh.defined() ? static_cast<const uint16_t*>(xh.data_ptr()) : nullptr,
                         b.defined() ? b.data_ptr<float>() : nullptr,
                         bf16_out ? nullptr : out.data_ptr<float>(),
                         bf16_out ? static_cast<uint16_t*>(out.data_ptr()) : nullptr,
                         M,
                         N,
                         K,
                         codes.size(1),
                         bitmask ? 1 : 0,
                         ldx};
    const auto wtype = values.scalar_type() == at::kBFloat16 ? cpu::WType::kBf16
                       : values.scalar_type() == at::kHalf   ? cpu::WType::kFp16
                                                             : cpu::WType::kFp32;
    cpu::linear(p, wtype, chosen, at::get_num_threads());
  }
  auto shape = x_in.sizes().vec();
  shape.back() = N;
  return (ot == at::kFloat || bf16_out ? out : out.to(ot)).view(shape);
}

std::string decode24_isa() {
  return cpu::cpu_has_avx512bf16() ? "avx512bf16" : cpu::cpu_has_avx2() ? "avx2" : "portable";
}

}  // namespace tfprune
