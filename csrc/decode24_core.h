// Per-group logic of tfprune's decode layout of 2:4 weights ("decode24"), shared by the CPU packer and
// matmul (decode24_cpu.cpp) and usable from CUDA code (__host__ __device__, no torch).
//
// Layout of a 2:4 weight W (N, K), K a multiple of 4; group g of row r = columns 4g .. 4g+3:
//   values (N, K/2), W's dtype, row-major: values[r, 2g], values[r, 2g+1] = W[r, 4g+i0], W[r, 4g+i1], i0 < i1.
//     These are exactly the values of torch's CUTLASS format (sparse_semi_structured_from_dense_cutlass) and,
//     wherever a group holds two non-zeros, the `compressed` tensor of compressed-tensors' sparse-24-bitmask.
//   codes (N, ceil(K/8)) uint8, row-major: byte b holds group 2b in its low nibble and group 2b+1 in its high
//     nibble (0 past the last group); a nibble is i0 | i1 << 2, torch's CUTLASS code, i.e. the int16 meta of
//     sparse_semi_structured_from_dense_cutlass *before* CUTLASS's reordering, read as little-endian bytes.
//     Groups with fewer than two non-zeros get torch's fixed codes (all-zero -> 2, 3; their values are +0).
// 16-bit weights: (K/2 * 2 + K/8) / (2K) = 9/16 of the dense bytes. A row's codes sit in one short run, so
// a kernel streams values and codes once, in order, and decodes a code byte (two groups) with one lookup.
//
// The kernels read compressed-tensors' bitmask (N, ceil(K/8)) in place of the codes unchanged: the same
// nibble per group, bit j = column 4g+j kept (exactly two bits set, as compressed-tensors writes it), so a
// packed bitmask checkpoint runs without conversion. Only the lookup tables differ.
#pragma once
#include <cstdint>

#include "nm_core.h"

namespace tfprune {
namespace d24 {

// Non-zero flags of the 4 elements at g (bit i: g[i] non-zero). Elements are unsigned bit patterns; `mag`
// clears the sign bit of a float, so -0.0 is zero and NaN is non-zero (as `x != 0` in torch).
template <typename Bits>
TFP_HD unsigned nonzero_flags(const Bits* g, Bits mag) {
  return unsigned((g[0] & mag) != 0) | unsigned((g[1] & mag) != 0) << 1 | unsigned((g[2] & mag) != 0) << 2 |
         unsigned((g[3] & mag) != 0) << 3;
}

TFP_HD int popcount4(unsigned x) { return (x & 1) + (x >> 1 & 1) + (x >> 2 & 1) + (x >> 3 & 1); }

// torch's CUTLASS code i0 | i1 << 2 of a group with non-zero flags nz (the boolean functions of
// sparse_semi_structured_from_dense_cutlass): the two non-zeros in index order when there are two, fixed
// codes otherwise (all-zero -> 2, 3; one non-zero at 0, 1, 2, 3 -> (0, 2), (1, 3), (2, 3), (2, 3)).
TFP_HD unsigned group_code(unsigned nz) {
  const bool m0 = nz & 1, m1 = nz >> 1 & 1, m3 = nz >> 3 & 1;
  const bool expr0 = m0 && m1, expr1 = !m0 && m1, expr2 = !m0 && !m1;
  const unsigned i0 = unsigned(expr1) | unsigned(expr2) << 1;
  const unsigned i1 = unsigned(expr0 || expr2 || m3) | unsigned(expr1 || !m1) << 1;
  return i0 | i1 << 2;
}

// The two column indices (within the group) named by a nibble: a code (i0 | i1 << 2), or a bitmask nibble
// (its lowest and highest set bit; a nibble without two bits is invalid and decodes to some pair in 0..3).
TFP_HD void nibble_indices(unsigned nibble, bool bitmask, unsigned& i0, unsigned& i1) {
  if (!bitmask) {
    i0 = nibble & 3;
    i1 = nibble >> 2 & 3;
  } else {
    i0 = (nibble & 1) ? 0 : (nibble & 2) ? 1 : (nibble & 4) ? 2 : 3;
    i1 = (nibble & 8) ? 3 : (nibble & 4) ? 2 : (nibble & 2) ? 1 : 0;
  }
}

// One group -> its two values (index order) and its code. Sets bad when it holds more than two non-zeros.
template <typename Bits>
TFP_HD unsigned pack_group(const Bits* g, Bits* values, Bits mag, bool& bad) {
  const unsigned nz = nonzero_flags(g, mag);
  bad = bad || popcount4(nz) > 2;
  const unsigned code = group_code(nz);
  values[0] = g[code & 3];
  values[1] = g[code >> 2];
  return code;
}

}  // namespace d24
}  // namespace tfprune
