// Per-group 2:4 logic of the packed formats, shared by the CPU build (sparse24.cpp) and the CUDA
// kernels (sparse24_cuda.cu): plain __host__ __device__ functions on raw element bits, no torch.
//
// Elements are handled as unsigned bit patterns (`Bits`: uint8/16/32/64). An element is non-zero when
// (bits & mag) != 0, where `mag` clears the sign bit of a float (so -0.0 is zero, NaN is non-zero, as
// `x != 0` in torch) and keeps all bits of an integer. A "group" is 4 consecutive input weights of a row.
//
// Formats (DESIGN.md §3):
//   cutlass: torch's semi-structured CUTLASS layout. Values (rows, cols/2): the pair (idx0, idx1) picked
//     by torch's encoding (sparse_semi_structured_from_dense_cutlass), in that order. Meta: a 4-bit code
//     idx0 | idx1 << 2 per group, 4 codes per int16 word (16-bit and fp32 values) or 8 per int32 word
//     (int8), reordered for CUTLASS's ColumnMajorInterleaved<2>. fp32 is 1:2: each pair of floats is a
//     "group" of 4 halves, and only one of the two may be non-zero.
//   bitmask: compressed-tensors' sparse-24-bitmask. Values (rows, cols/2): the two kept weights of each
//     group in index order. Bitmask (rows, ceil(cols/8)) uint8, little bit order (bit j of byte b is
//     column 8b + j): a nibble per group with exactly two bits set, chosen as compressed-tensors'
//     topk(|w|, 2) chooses them.
#pragma once
#include <cstdint>

#include "nm_core.h"

#if defined(__CUDACC__)
#define TFP_UNROLL _Pragma("unroll")
#else
#define TFP_UNROLL
#endif

namespace tfprune {
namespace s24 {

// The layouts of torch's CUTLASS format by value dtype: 16-bit (fp16/bf16, int16 meta, 4 codes a word),
// 8-bit (int8, int32 meta, 8 codes a word) and 32-bit (fp32, 1:2, int16 meta, 4 pair codes a word).
enum CutlassKind : int { kCutlass16 = 0, kCutlass8 = 1, kCutlass32 = 2 };

TFP_HD constexpr int popcount4(unsigned x) { return (x & 1) + (x >> 1 & 1) + (x >> 2 & 1) + (x >> 3 & 1); }

// `mag` of a float of Bits' width: every bit but the sign.
template <typename Bits>
TFP_HD constexpr Bits float_magnitude_mask() {
  return static_cast<Bits>(~(Bits(1) << (8 * sizeof(Bits) - 1)));
}

// Non-zero flags of the 4 elements at g: bit i set when g[i] is non-zero.
template <typename Bits>
TFP_HD unsigned nonzero_flags(const Bits* g, Bits mag) {
  return unsigned((g[0] & mag) != 0) | unsigned((g[1] & mag) != 0) << 1 | unsigned((g[2] & mag) != 0) << 2 |
         unsigned((g[3] & mag) != 0) << 3;
}

// torch's CUTLASS code idx0 | idx1 << 2 of a group with non-zero flags nz: the boolean functions of
// sparse_semi_structured_from_dense_cutlass, so groups with fewer than 2 non-zeros get torch's fixed codes
// (all-zero -> indices 2, 3).
TFP_HD constexpr unsigned cutlass_code(unsigned nz) {
  const bool m0 = nz & 1, m1 = nz >> 1 & 1, m3 = nz >> 3 & 1;
  const bool expr0 = m0 && m1, expr1 = !m0 && m1, expr2 = !m0 && !m1;
  const unsigned idx0 = unsigned(expr1) | unsigned(expr2) << 1;
  const unsigned idx1 = unsigned(expr0 || expr2 || m3) | unsigned(expr1 || !m1) << 1;
  return idx0 | idx1 << 2;
}

// compressed-tensors' kept nibble for a group with non-zero flags nz: the non-zeros when there are two;
// with fewer, the zeros that torch's CPU topk(|w|, 2) over 4 equal-magnitude ties picks (all-zero -> {2, 3},
// one non-zero at 0, 1, 2, 3 -> {0, 2}, {1, 3}, {2, 3}, {2, 3}). More than two: nz itself (an error).
TFP_HD constexpr unsigned bitmask_keep(unsigned nz) {
  return nz == 0x0 ? 0xC : nz == 0x1 ? 0x5 : nz == 0x2 ? 0xA : (nz == 0x4 || nz == 0x8) ? 0xC : nz;
}

// bitmask_keep and the lowest / highest set bit of a nibble as 16-entry tables of 4-bit (2-bit) fields,
// looked up without branches: field nz of kKeep is bitmask_keep(nz), field x of kLowest /
// kHighest is the lowest / highest set bit of x.
constexpr uint64_t nibble_table(int which) {  // 0: kKeep, 1: kLowest, 2: kHighest
  uint64_t table = 0;
  for (unsigned x = 0; x < 16; ++x) {
    const unsigned lowest = (x & 1) ? 0 : (x & 2) ? 1 : (x & 4) ? 2 : 3;
    const unsigned highest = (x & 8) ? 3 : (x & 4) ? 2 : (x & 2) ? 1 : 0;
    table |= which == 0 ? static_cast<uint64_t>(bitmask_keep(x)) << (4 * x)
                        : static_cast<uint64_t>(which == 1 ? lowest : highest) << (2 * x);
  }
  return table;
}
constexpr uint64_t kKeep = nibble_table(0), kLowest = nibble_table(1), kHighest = nibble_table(2);
TFP_HD unsigned lookup4(uint64_t table, unsigned x) { return static_cast<unsigned>(table >> (4 * x)) & 0xF; }
TFP_HD unsigned lookup2(uint64_t table, unsigned x) { return static_cast<unsigned>(table >> (2 * x)) & 0x3; }

// Offset of element (row, col) of the (rows, ncols) meta matrix in torch's reordered CUTLASS meta
// (_calculate_meta_reordering_scatter_offsets): row permutation within groups of 32 rows (int16 meta;
// 16 for int32), a 2x2 swizzle, then ColumnMajorInterleaved<2>.
TFP_HD int64_t cutlass_meta_offset(int64_t row, int64_t col, int64_t rows, bool wide) {
  const int64_t group = wide ? 16 : 32, interweave = wide ? 2 : 4;
  int64_t dr = row / group * group + (row % 8) * interweave + (row % group) / 8;
  int64_t dc = col;
  if ((dr & 1) == 0 && (dc & 1) == 1) {
    ++dr;
    --dc;
  } else if ((dr & 1) == 1 && (dc & 1) == 0) {
    --dr;
    ++dc;
  }
  return (dc / 2) * rows * 2 + dr * 2 + (dc & 1);
}

// A group of 4 from its pair of values at indices i0, i1 (+0 elsewhere; the second wins if i0 == i1).
template <typename Bits>
TFP_HD void scatter_pair(unsigned i0, unsigned i1, const Bits* values, Bits* g) {
  const Bits v0 = values[0], v1 = values[1];
TFP_UNROLL
  for (unsigned j = 0; j < 4; ++j) g[j] = j == i1 ? v1 : (j == i0 ? v0 : Bits(0));
}

// cutlass, 4-element groups (16-bit and int8 values): packs the G groups (4G elements) of one meta word
// into 2G values and returns the word (Meta: uint16_t with G = 4, uint32_t with G = 8). Sets bad when a
// group holds more than two non-zeros.
template <typename Bits, typename Meta, int G>
TFP_HD Meta cutlass_pack_word(const Bits* dense, Bits* values, Bits mag, bool& bad) {
  Meta word = 0;
TFP_UNROLL
  for (int i = 0; i < G; ++i) {
    const Bits* g = dense + 4 * i;
    const unsigned nz = nonzero_flags(g, mag);
    bad = bad || popcount4(nz) > 2;
    const unsigned code = cutlass_code(nz);
    values[2 * i] = g[code & 3];
    values[2 * i + 1] = g[code >> 2];
    word |= static_cast<Meta>(static_cast<Meta>(code) << (4 * i));
  }
  return word;
}

// cutlass, fp32 (1:2): the 4 pairs of one int16 meta word (8 floats) -> 4 values. Sets bad when both
// floats of a pair are non-zero.
template <typename Bits>
TFP_HD uint16_t cutlass_pack_word_pairs(const Bits* dense, Bits* values, Bits mag, bool& bad) {
  uint16_t word = 0;
TFP_UNROLL
  for (int i = 0; i < 4; ++i) {
    const bool a = (dense[2 * i] & mag) != 0, b = (dense[2 * i + 1] & mag) != 0;
    bad = bad || (a && b);
    const unsigned code = cutlass_code((a ? 0x3u : 0u) | (b ? 0xCu : 0u));
    values[i] = dense[2 * i + ((code & 3) >> 1)];
    word |= static_cast<uint16_t>(code << (4 * i));
  }
  return word;
}

// cutlass: the 4G dense elements of one meta word from its 2G values (fp32 runs this on its 16-bit view,
// as torch's _to_dense_cutlass does). Elements not named by a code are +0.
template <typename Bits, typename Meta, int G>
TFP_HD void cutlass_unpack_word(Meta word, const Bits* values, Bits* dense) {
TFP_UNROLL
  for (int i = 0; i < G; ++i) {
    const unsigned code = static_cast<unsigned>(word >> (4 * i)) & 0xF;
    scatter_pair(code & 3, code >> 2, values + 2 * i, dense + 4 * i);
  }
}

// bitmask: one group -> its two kept values, in index order; returns the group's nibble. Sets bad when the
// group holds more than two non-zeros.
template <typename Bits>
TFP_HD unsigned bitmask_pack_group(const Bits* g, Bits* values, Bits mag, bool& bad) {
  const unsigned nz = nonzero_flags(g, mag);
  bad = bad || popcount4(nz) > 2;
  const unsigned keep = lookup4(kKeep, nz);
  values[0] = g[lookup2(kLowest, keep)];
  values[1] = g[lookup2(kHighest, keep)];
  return keep;
}

// bitmask: one group from its nibble and two values (others +0). Sets bad unless the nibble has exactly
// two bits, the only masks compressed-tensors writes.
template <typename Bits>
TFP_HD void bitmask_unpack_group(unsigned nibble, const Bits* values, Bits* g, bool& bad) {
  bad = bad || popcount4(nibble) != 2;
  scatter_pair(lookup2(kLowest, nibble), lookup2(kHighest, nibble), values, g);
}

// bitmask -> cutlass: the int16 meta word of 4 groups from their nibbles (nibbles: 16 bits, group i in bits
// 4i..4i+3). The bitmask values are already the cutlass values (the kept pair of each group in index
// order), so only the meta changes. Sets bad unless every nibble has exactly two bits.
TFP_HD uint16_t bitmask_to_cutlass_word(unsigned nibbles, bool& bad) {
  uint16_t word = 0;
TFP_UNROLL
  for (int i = 0; i < 4; ++i) {
    const unsigned nibble = nibbles >> (4 * i) & 0xF;
    bad = bad || popcount4(nibble) != 2;
    word |= static_cast<uint16_t>((lookup2(kLowest, nibble) | lookup2(kHighest, nibble) << 2) << (4 * i));
  }
  return word;
}

}  // namespace s24
}  // namespace tfprune
