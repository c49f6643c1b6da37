// The 2:4 formats as torch ops: checks, the CPU implementation (OpenMP over rows, or blocks of rows for the
// CUTLASS meta; the per-group logic of sparse24_core.h, AVX2 rows for 16-bit weights in sparse24_avx2.h)
// and, under TFPRUNE_WITH_CUDA, the dispatch of CUDA tensors to sparse24_cuda.cu.
// Every op returns its outputs and `ok`, a 0-dim bool tensor on the input's device: false when a group
// is invalid (packing: more than two non-zeros; unpacking a bitmask: a nibble without exactly two bits).
// The caller (tfprune.sparse) turns that into an error naming the first offending row and group.
#include <torch/extension.h>

#include <string>
#include <tuple>
#include <vector>

#include "ops.h"
#include "sparse24_avx2.h"
#include "sparse24_core.h"

#ifdef TFPRUNE_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "sparse24_cuda.h"
#endif

namespace {

namespace s24 = tfprune::s24;
using torch::Tensor;

bool s24_avx2_available() {
#ifdef TFP_S24_AVX2
  return s24::avx2::cpu_has_avx2();
#else
  return false;
#endif
}

// ---- CPU loops ----

// The reordered CUTLASS meta permutes rows within blocks of 32 (16 for int32 meta) and stores column pairs
// 2 * rows apart: written word by word from row-major loops, every store lands on another cache line at a
// power-of-two stride, and large matrices thrash the caches. So rows are packed in blocks, their words kept
// row-major in a small buffer, and each block is scattered (gathered, to unpack) column pair by column pair,
// each pair a contiguous run of 2 * block words.
template <typename Meta>
constexpr int64_t meta_block_rows() {
  return sizeof(Meta) == 4 ? 16 : 32;
}

// Within a block and a column pair (2p, 2p + 1) the reordered offsets are p * 2 * rows + 2 * row0 plus a
// position in [0, 2 * block) that depends only on the row in the block and the column's parity (the row
// permutation and the 2x2 swizzle stay inside the pair): tabulated once, from cutlass_meta_offset.
template <typename Meta>
const int64_t* meta_pair_positions() {
  constexpr int64_t kBlock = meta_block_rows<Meta>();
  static const auto positions = [] {
    std::vector<int64_t> table(2 * kBlock);
    for (int64_t r = 0; r < kBlock; ++r) {
      for (int64_t parity = 0; parity < 2; ++parity) {
        table[2 * r + parity] = s24::cutlass_meta_offset(r, parity, kBlock, sizeof(Meta) == 4);
      }
    }
    return table;
  }();
  return positions.data();
}

// ncols is even in every CUTLASS layout (in_features is a multiple of two meta words).
template <typename Meta>
void scatter_meta_block(const Meta* block, Meta* meta, int64_t row0, int64_t ncols, int64_t rows) {
  constexpr int64_t kBlock = meta_block_rows<Meta>();
  const int64_t* position = meta_pair_positions<Meta>();
  for (int64_t pair = 0; pair < ncols / 2; ++pair) {
    Meta* out = meta + pair * 2 * rows + 2 * row0;
    for (int64_t r = 0; r < kBlock; ++r) {
      out[position[2 * r]] = block[r * ncols + 2 * pair];
      out[position[2 * r + 1]] = block[r * ncols + 2 * pair + 1];
    }
  }
}

template <typename Meta>
void gather_meta_block(const Meta* meta, Meta* block, int64_t row0, int64_t ncols, int64_t rows) {
  constexpr int64_t kBlock = meta_block_rows<Meta>();
  const int64_t* position = meta_pair_positions<Meta>();
  for (int64_t pair = 0; pair < ncols / 2; ++pair) {
    const Meta* in = meta + pair * 2 * rows + 2 * row0;
    for (int64_t r = 0; r < kBlock; ++r) {
      block[r * ncols + 2 * pair] = in[position[2 * r]];
      block[r * ncols + 2 * pair + 1] = in[position[2 * r + 1]];
    }
  }
}

// One row: dense -> values and its ncols meta words (row-major). Returns false when a group is invalid.
template <typename Bits, typename Meta, int G, bool Pairs>
bool pack_cutlass_row(const Bits* d, Bits* v, Meta* words, int64_t ncols, bool use_avx2) {
  constexpr int kDense = 32 / sizeof(Bits), kValues = kDense / 2;  // per meta word
  constexpr Bits kMag = sizeof(Bits) == 1 ? Bits(0xFF) : s24::float_magnitude_mask<Bits>();
#ifdef TFP_S24_AVX2
  if constexpr (sizeof(Bits) == 2) {
    if (use_avx2) {
      return s24::avx2::pack_row16(d, v, ncols, s24::avx2::pack_tables(false),
                                   [&](int64_t col, uint16_t word) { words[col] = word; });
    }
  }
#endif
  bool bad = false;
  for (int64_t col = 0; col < ncols; ++col) {
    if constexpr (Pairs) {
      words[col] = s24::cutlass_pack_word_pairs<Bits>(d + col * kDense, v + col * kValues, kMag, bad);
    } else {
      words[col] = s24::cutlass_pack_word<Bits, Meta, G>(d + col * kDense, v + col * kValues, kMag, bad);
    }
  }
  return !bad;
}

template <typename Bits, typename Meta, int G, bool Pairs>
bool pack_cutlass_cpu(const Bits* dense, Bits* values, Meta* meta, int64_t rows, int64_t cols) {
  constexpr int64_t kBlock = meta_block_rows<Meta>();
  const int64_t ncols = cols / (32 / sizeof(Bits));
  [[maybe_unused]] const bool use_avx2 = s24_avx2_available();
  bool bad = false;
#pragma omp parallel reduction(|| : bad)
  {
    std::vector<Meta> block(kBlock * ncols);
#pragma omp for schedule(static)
    for (int64_t row0 = 0; row0 < rows; row0 += kBlock) {
      for (int64_t r = 0; r < kBlock; ++r) {
        const int64_t row = row0 + r;
        const bool ok = pack_cutlass_row<Bits, Meta, G, Pairs>(dense + row * cols, values + row * (cols / 2),
                                                               block.data() + r * ncols, ncols, use_avx2);
        bad = bad || !ok;
      }
      scatter_meta_block(block.data(), meta, row0, ncols, rows);
    }
  }
  return !bad;
}

template <typename Bits, typename Meta, int G>
void unpack_cutlass_cpu(const Bits* values, const Meta* meta, Bits* dense, int64_t rows, int64_t cols) {
  constexpr int64_t kBlock = meta_block_rows<Meta>();
  const int64_t ncols = cols / (4 * G);
  [[maybe_unused]] const bool use_avx2 = s24_avx2_available();
#pragma omp parallel
  {
    std::vector<Meta> block(kBlock * ncols);
#pragma omp for schedule(static)
    for (int64_t row0 = 0; row0 < rows; row0 += kBlock) {
      gather_meta_block(meta, block.data(), row0, ncols, rows);
      for (int64_t r = 0; r < kBlock; ++r) {
        const Bits* v = values + (row0 + r) * (cols / 2);
        Bits* d = dense + (row0 + r) * cols;
        const Meta* words = block.data() + r * ncols;
#ifdef TFP_S24_AVX2
        if constexpr (sizeof(Bits) == 2) {
          if (use_avx2) {
            s24::avx2::unpack_row16(v, d, ncols, s24::avx2::unpack_tables(false),
                                    [&](int64_t col) { return static_cast<unsigned>(words[col]); });
            continue;
          }
        }
#endif
        for (int64_t col = 0; col < ncols; ++col) {
          s24::cutlass_unpack_word<Bits, Meta, G>(words[col], v + col * 2 * G, d + col * 4 * G);
        }
      }
    }
  }
}

// Groups [begin, groups) of one bitmask row; begin is even (a byte boundary).
template <typename Bits>
void pack_bitmask_groups(const Bits* d, Bits* v, uint8_t* b, int64_t begin, int64_t groups, bool& bad) {
  constexpr Bits kMag = s24::float_magnitude_mask<Bits>();
  for (int64_t g = begin; g < groups; ++g) {
    const unsigned nibble = s24::bitmask_pack_group<Bits>(d + 4 * g, v + 2 * g, kMag, bad);
    b[g / 2] = static_cast<uint8_t>(g % 2 ? b[g / 2] | nibble << 4 : nibble);
  }
}

template <typename Bits>
void unpack_bitmask_groups(const Bits* v, const uint8_t* b, Bits* d, int64_t begin, int64_t groups, bool& bad) {
  for (int64_t g = begin; g < groups; ++g) {
    s24::bitmask_unpack_group<Bits>(b[g / 2] >> (4 * (g % 2)) & 0xF, v + 2 * g, d + 4 * g, bad);
  }
}

template <typename Bits>
bool pack_bitmask_cpu(const Bits* dense, Bits* values, uint8_t* bitmask, int64_t rows, int64_t cols) {
  const int64_t groups = cols / 4, width = (groups + 1) / 2;
  [[maybe_unused]] const bool use_avx2 = s24_avx2_available();
  bool bad = false;
#pragma omp parallel for reduction(|| : bad) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    bool row_bad = false;
    const Bits* d = dense + row * cols;
    Bits* v = values + row * (cols / 2);
    uint8_t* b = bitmask + row * width;
    int64_t done = 0;  // groups
#ifdef TFP_S24_AVX2
    if constexpr (sizeof(Bits) == 2) {
      if (use_avx2) {
        const int64_t steps = cols / 16;
        const auto store = [&](int64_t step, uint16_t word) {
          b[2 * step] = static_cast<uint8_t>(word);
          b[2 * step + 1] = static_cast<uint8_t>(word >> 8);
        };
        row_bad = !s24::avx2::pack_row16(d, v, steps, s24::avx2::pack_tables(true), store);
        done = 4 * steps;
      }
    }
#endif
    pack_bitmask_groups(d, v, b, done, groups, row_bad);
    bad = bad || row_bad;
  }
  return !bad;
}

template <typename Bits>
bool unpack_bitmask_cpu(const Bits* values, const uint8_t* bitmask, Bits* dense, int64_t rows, int64_t cols) {
  const int64_t groups = cols / 4, width = (groups + 1) / 2;
  [[maybe_unused]] const bool use_avx2 = s24_avx2_available();
  bool bad = false;
#pragma omp parallel for reduction(|| : bad) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    bool row_bad = false;
    const Bits* v = values + row * (cols / 2);
    const uint8_t* b = bitmask + row * width;
    Bits* d = dense + row * cols;
    int64_t done = 0;
#ifdef TFP_S24_AVX2
    if constexpr (sizeof(Bits) == 2) {
      if (use_avx2) {
        const int64_t steps = cols / 16;
        const auto load = [&](int64_t step) {
          return static_cast<unsigned>(b[2 * step]) | static_cast<unsigned>(b[2 * step + 1]) << 8;
        };
        row_bad = !s24::avx2::unpack_row16(v, d, steps, s24::avx2::unpack_tables(true), load);
        done = 4 * steps;
      }
    }
#endif
    unpack_bitmask_groups(v, b, d, done, groups, row_bad);
    bad = bad || row_bad;
  }
  return !bad;
}

bool bitmask_to_cutlass_meta_cpu(const uint8_t* bitmask, int16_t* meta, int64_t rows, int64_t cols) {
  constexpr int64_t kBlock = meta_block_rows<uint16_t>();
  const int64_t ncols = cols / 16;
  bool bad = false;
#pragma omp parallel reduction(|| : bad)
  {
    std::vector<uint16_t> block(kBlock * ncols);
#pragma omp for schedule(static)
    for (int64_t row0 = 0; row0 < rows; row0 += kBlock) {
      for (int64_t r = 0; r < kBlock; ++r) {
        const uint8_t* b = bitmask + (row0 + r) * (cols / 8);
        for (int64_t col = 0; col < ncols; ++col) {
          const unsigned nibbles = unsigned(b[2 * col]) | unsigned(b[2 * col + 1]) << 8;
          block[r * ncols + col] = s24::bitmask_to_cutlass_word(nibbles, bad);
        }
      }
      scatter_meta_block(block.data(), reinterpret_cast<uint16_t*>(meta), row0, ncols, rows);
    }
  }
  return !bad;
}

// ---- layouts and checks ----

struct CutlassLayout {
  int kind;             // s24::CutlassKind
  int64_t row_tile;     // rows must be a multiple of this
  int64_t col_tile;     // in_features must be a multiple of this
  int64_t cols_per_word;
  torch::ScalarType meta_dtype;
};

CutlassLayout cutlass_layout(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kHalf:
    case torch::kBFloat16: return {s24::kCutlass16, 32, 32, 16, torch::kInt16};
    case torch::kChar: return {s24::kCutlass8, 16, 64, 32, torch::kInt32};
    case torch::kFloat: return {s24::kCutlass32, 32, 16, 8, torch::kInt16};
    default:
      TORCH_CHECK_VALUE(false, "format 'cutlass' supports float16, bfloat16, float32 (1:2) and int8, got ", dtype);
  }
  return {};
}

int bitmask_elem_bytes(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat8_e4m3fn: return 1;
    case torch::kHalf:
    case torch::kBFloat16: return 2;
    case torch::kFloat: return 4;
    case torch::kDouble: return 8;
    default:
      TORCH_CHECK_VALUE(false, "format 'bitmask' supports float64, float32, float16, bfloat16 and float8_e4m3fn, got ",
                        dtype);
  }
  return 0;
}

void check_format(const std::string& format) {
  TORCH_CHECK_VALUE(format == "cutlass" || format == "bitmask", "unknown 2:4 format '", format,
                    "': choose 'cutlass' or 'bitmask'");
}

void check_2d(const Tensor& t, const char* what) {
  TORCH_CHECK_VALUE(t.dim() == 2, what, " must be 2-D, got shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device().is_cpu() || t.device().is_cuda(), what, ": CPU or CUDA tensors only, got ", t.device());
}

void check_same_device(const Tensor& a, const Tensor& b) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "tensors on different devices: ", a.device(), " and ", b.device());
}

Tensor ok_tensor(bool ok, const Tensor& like) { return torch::full({}, ok, like.options().dtype(torch::kBool)); }

#ifdef TFPRUNE_WITH_CUDA
Tensor cuda_flag(const Tensor& like) { return torch::zeros({}, like.options().dtype(torch::kInt32)); }
cudaStream_t cuda_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

#ifndef TFPRUNE_WITH_CUDA
[[noreturn]] void no_cuda(const char* op) {
  TORCH_CHECK(false, op, ": tfprune._C was built without CUDA; reinstall with a CUDA build of torch and nvcc on PATH, "
              "or move the tensors to the CPU");
}
#endif

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.data_ptr());
}

}  // namespace

namespace tfprune {

std::tuple<Tensor, Tensor, Tensor> sparse24_pack(const Tensor& weight, const std::string& format) {
  check_format(format);
  check_2d(weight, "sparse24_pack: weight");
  const auto dense = weight.contiguous();
  const int64_t rows = dense.size(0), cols = dense.size(1);
  if (format == "cutlass") {
    const auto layout = cutlass_layout(dense.scalar_type());
    TORCH_CHECK_VALUE(rows % layout.row_tile == 0 && cols % layout.col_tile == 0, "format 'cutlass' (",
                      dense.scalar_type(), ") needs rows a multiple of ", layout.row_tile,
                      " and in_features a multiple of ", layout.col_tile, ", got ", dense.sizes());
    auto values = torch::empty({rows, cols / 2}, dense.options());
    auto meta = torch::empty({rows, cols / layout.cols_per_word}, dense.options().dtype(layout.meta_dtype));
    if (dense.is_cuda()) {
#ifdef TFPRUNE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(dense.device());
      auto flag = cuda_flag(dense);
      C10_CUDA_CHECK(cuda::sparse24_pack_cutlass(dense.data_ptr(), values.data_ptr(), meta.data_ptr(), ptr<int>(flag),
                                                 rows, cols, layout.kind, cuda_stream()));
      return {values, meta, flag.eq(0)};
#else
      no_cuda("sparse24_pack");
#endif
    }
    bool ok = true;
    switch (layout.kind) {
      case s24::kCutlass16:
        ok = pack_cutlass_cpu<uint16_t, uint16_t, 4, false>(ptr<uint16_t>(dense), ptr<uint16_t>(values),
                                                            ptr<uint16_t>(meta), rows, cols);
        break;
      case s24::kCutlass8:
        ok = pack_cutlass_cpu<uint8_t, uint32_t, 8, false>(ptr<uint8_t>(dense), ptr<uint8_t>(values),
                                                           ptr<uint32_t>(meta), rows, cols);
        break;
      default:
        ok = pack_cutlass_cpu<uint32_t, uint16_t, 4, true>(ptr<uint32_t>(dense), ptr<uint32_t>(values),
                                                           ptr<uint16_t>(meta), rows, cols);
    }
    return {values, meta, ok_tensor(ok, dense)};
  }
  const int elem = bitmask_elem_bytes(dense.scalar_type());
  TORCH_CHECK_VALUE(cols % 4 == 0, "format 'bitmask' needs in_features a multiple of 4, got ", dense.sizes());
  auto values = torch::empty({rows, cols / 2}, dense.options());
  auto bitmask = torch::empty({rows, (cols + 7) / 8}, dense.options().dtype(torch::kUInt8));
  if (dense.is_cuda()) {
#ifdef TFPRUNE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(dense.device());
    auto flag = cuda_flag(dense);
    C10_CUDA_CHECK(cuda::sparse24_pack_bitmask(dense.data_ptr(), values.data_ptr(), ptr<uint8_t>(bitmask),
                                               ptr<int>(flag), rows, cols, elem, cuda_stream()));
    return {values, bitmask, flag.eq(0)};
#else
    no_cuda("sparse24_pack");
#endif
  }
  bool ok = true;
  switch (elem) {
    case 1: ok = pack_bitmask_cpu<uint8_t>(ptr<uint8_t>(dense), ptr<uint8_t>(values), ptr<uint8_t>(bitmask), rows, cols); break;
    case 2: ok = pack_bitmask_cpu<uint16_t>(ptr<uint16_t>(dense), ptr<uint16_t>(values), ptr<uint8_t>(bitmask), rows, cols); break;
    case 4: ok = pack_bitmask_cpu<uint32_t>(ptr<uint32_t>(dense), ptr<uint32_t>(values), ptr<uint8_t>(bitmask), rows, cols); break;
    default: ok = pack_bitmask_cpu<uint64_t>(ptr<uint64_t>(dense), ptr<uint64_t>(values), ptr<uint8_t>(bitmask), rows, cols);
  }
  return {values, bitmask, ok_tensor(ok, dense)};
}

std::tuple<Tensor, Tensor> sparse24_unpack(const Tensor& values_in, const Tensor& meta_in, const std::string& format) {
  check_format(format);
  check_2d(values_in, "sparse24_unpack: values");
  check_2d(meta_in, "sparse24_unpack: meta");
  check_same_device(values_in, meta_in);
  const auto values = values_in.contiguous();
  const auto meta = meta_in.contiguous();
  const int64_t rows = values.size(0), cols = 2 * values.size(1);
  auto dense = torch::empty({rows, cols}, values.options());
  if (format == "cutlass") {
    const auto layout = cutlass_layout(values.scalar_type());
    TORCH_CHECK_VALUE(meta.scalar_type() == layout.meta_dtype, "cutlass meta of ", values.scalar_type(),
                      " values must be ", layout.meta_dtype, ", got ", meta.scalar_type());
    TORCH_CHECK_VALUE(rows % layout.row_tile == 0 && cols % layout.col_tile == 0, "cutlass values ", values.sizes(),
                      " do not come from a dense matrix with rows a multiple of ", layout.row_tile,
                      " and in_features a multiple of ", layout.col_tile);
    TORCH_CHECK_VALUE(meta.size(0) == rows && meta.size(1) == cols / layout.cols_per_word, "cutlass meta must be (",
                      rows, ", ", cols / layout.cols_per_word, ") for values ", values.sizes(), ", got ", meta.sizes());
    if (values.is_cuda()) {
#ifdef TFPRUNE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(values.device());
      C10_CUDA_CHECK(cuda::sparse24_unpack_cutlass(values.data_ptr(), meta.data_ptr(), dense.data_ptr(), rows, cols,
                                                   layout.kind, cuda_stream()));
      return {dense, ok_tensor(true, values)};
#else
      no_cuda("sparse24_unpack");
#endif
    }
    switch (layout.kind) {
      case s24::kCutlass8:
        unpack_cutlass_cpu<uint8_t, uint32_t, 8>(ptr<uint8_t>(values), ptr<uint32_t>(meta), ptr<uint8_t>(dense), rows, cols);
        break;
      default: {  // 16-bit, and fp32 on its 16-bit view (as torch's _to_dense_cutlass)
        const int64_t halves = layout.kind == s24::kCutlass32 ? 2 * cols : cols;
        unpack_cutlass_cpu<uint16_t, uint16_t, 4>(ptr<uint16_t>(values), ptr<uint16_t>(meta), ptr<uint16_t>(dense), rows,
                                                  halves);
      }
    }
    return {dense, ok_tensor(true, values)};
  }
  const int elem = bitmask_elem_bytes(values.scalar_type());
  TORCH_CHECK_VALUE(meta.scalar_type() == torch::kUInt8, "bitmask must be uint8, got ", meta.scalar_type());
  TORCH_CHECK_VALUE(cols % 4 == 0 && meta.size(0) == rows && meta.size(1) == (cols + 7) / 8, "bitmask must be (", rows,
                    ", ", (cols + 7) / 8, ") for values ", values.sizes(), " (", cols,
                    " dense columns, a multiple of 4), got ", meta.sizes());
  if (values.is_cuda()) {
#ifdef TFPRUNE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(values.device());
    auto flag = cuda_flag(values);
    C10_CUDA_CHECK(cuda::sparse24_unpack_bitmask(values.data_ptr(), ptr<uint8_t>(meta), dense.data_ptr(), ptr<int>(flag),
                                                 rows, cols, elem, cuda_stream()));
    return {dense, flag.eq(0)};
#else
    no_cuda("sparse24_unpack");
#endif
  }
  bool ok = true;
  switch (elem) {
    case 1: ok = unpack_bitmask_cpu<uint8_t>(ptr<uint8_t>(values), ptr<uint8_t>(meta), ptr<uint8_t>(dense), rows, cols); break;
    case 2: ok = unpack_bitmask_cpu<uint16_t>(ptr<uint16_t>(values), ptr<uint8_t>(meta), ptr<uint16_t>(dense), rows, cols); break;
    case 4: ok = unpack_bitmask_cpu<uint32_t>(ptr<uint32_t>(values), ptr<uint8_t>(meta), ptr<uint32_t>(dense), rows, cols); break;
    default: ok = unpack_bitmask_cpu<uint64_t>(ptr<uint64_t>(values), ptr<uint8_t>(meta), ptr<uint64_t>(dense), rows, cols);
  }
  return {dense, ok_tensor(ok, values)};
}

std::tuple<Tensor, Tensor> sparse24_bitmask_to_cutlass_meta(const Tensor& bitmask_in) {
  check_2d(bitmask_in, "sparse24_bitmask_to_cutlass_meta: bitmask");
  TORCH_CHECK_VALUE(bitmask_in.scalar_type() == torch::kUInt8, "bitmask must be uint8, got ", bitmask_in.scalar_type());
  const auto bitmask = bitmask_in.contiguous();
  const int64_t rows = bitmask.size(0), cols = 8 * bitmask.size(1);
  TORCH_CHECK_VALUE(rows % 32 == 0 && cols % 32 == 0, "bitmask -> cutlass needs rows and in_features multiples of 32, "
                    "got a bitmask of ", bitmask.sizes(), " (", cols, " columns)");
  auto meta = torch::empty({rows, cols / 16}, bitmask.options().dtype(torch::kInt16));
  if (bitmask.is_cuda()) {
#ifdef TFPRUNE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(bitmask.device());
    auto flag = cuda_flag(bitmask);
    C10_CUDA_CHECK(cuda::sparse24_bitmask_to_cutlass_meta(ptr<uint8_t>(bitmask), ptr<int16_t>(meta), ptr<int>(flag),
                                                          rows, cols, cuda_stream()));
    return {meta, flag.eq(0)};
#else
    no_cuda("sparse24_bitmask_to_cutlass_meta");
#endif
  }
  const bool ok = bitmask_to_cutlass_meta_cpu(ptr<uint8_t>(bitmask), ptr<int16_t>(meta), rows, cols);
  return {meta, ok_tensor(ok, bitmask)};
}

}  // namespace tfprune
