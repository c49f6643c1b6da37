// AVX2 rows of the CPU packer for 16-bit weights (fp16/bf16), both formats: one 32-byte load is 16 weights,
// 4 groups, one meta word (cutlass) or two bitmask bytes. The per-group decisions are the functions of
// sparse24_core.h, tabulated per byte of non-zero flags (two groups, one 128-bit lane), so a step is a
// compare, a movemask, two table lookups and one pshufb. Compiled with target attributes (the extension
// keeps generic flags); sparse24.cpp calls these only where cpu_has_avx2() says so, the core loops elsewhere.
// Host-only, no torch.
#pragma once
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define TFP_S24_AVX2 1
#include <immintrin.h>

#include <cstdint>

#include "sparse24_core.h"

#define TFP_TARGET_AVX2 __attribute__((target("avx2")))

namespace tfprune {
namespace s24 {
namespace avx2 {

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// The pair (idx0 | idx1 << 2) a format keeps of a group with non-zero flags nz.
inline unsigned kept_pair(bool bitmask, unsigned nz) {
  const unsigned keep = lookup4(kKeep, nz);
  return bitmask ? lookup2(kLowest, keep) | lookup2(kHighest, keep) << 2 : cutlass_code(nz);
}

// Indexed by a byte of non-zero flags (group 0 in the low nibble): the pshufb control that gathers the two
// kept halves of both groups of a lane into its low 8 bytes, the byte of the two result nibbles (cutlass
// codes or bitmask nibbles), and whether a group holds more than two non-zeros.
struct PackTables {
  uint64_t shuffle[256];
  uint8_t word[256];
  uint8_t bad[256];

  explicit PackTables(bool bitmask) {
    for (unsigned byte = 0; byte < 256; ++byte) {
      uint64_t ctrl = 0;
      unsigned word_byte = 0, invalid = 0;
      for (unsigned g = 0; g < 2; ++g) {
        const unsigned nz = byte >> (4 * g) & 0xF, pair = kept_pair(bitmask, nz);
        const unsigned i0 = 8 * g + 2 * (pair & 3), i1 = 8 * g + 2 * (pair >> 2);
        ctrl |= uint64_t(i0 | (i0 + 1) << 8 | i1 << 16 | (i1 + 1) << 24) << (32 * g);
        word_byte |= (bitmask ? lookup4(kKeep, nz) : pair) << (4 * g);
        invalid |= popcount4(nz) > 2;
      }
      shuffle[byte] = ctrl;
      word[byte] = static_cast<uint8_t>(word_byte);
      bad[byte] = static_cast<uint8_t>(invalid);
    }
  }
};

// Indexed by a byte of two codes (idx0 | idx1 << 2 each; bitmask: two nibbles): the pshufb control that
// expands a lane's 4 values (low 8 bytes) into its 8 halves (+0 elsewhere), and whether a bitmask nibble
// lacks exactly two bits.
struct UnpackTables {
  alignas(16) uint8_t expand[256][16];
  uint8_t bad[256];

  explicit UnpackTables(bool bitmask) {
    for (unsigned byte = 0; byte < 256; ++byte) {
      unsigned invalid = 0;
      for (unsigned g = 0; g < 2; ++g) {
        const unsigned field = byte >> (4 * g) & 0xF;
        const unsigned pair = bitmask ? lookup2(kLowest, field) | lookup2(kHighest, field) << 2 : field;
        invalid |= bitmask && popcount4(field) != 2;
        for (unsigned j = 0; j < 4; ++j) {
          // as scatter_pair: the second value wins when both indices are j
          const int source = j == (pair >> 2) ? 4 * g + 2 : j == (pair & 3) ? 4 * g : -1;
          expand[byte][8 * g + 2 * j] = source < 0 ? 0x80 : static_cast<uint8_t>(source);
          expand[byte][8 * g + 2 * j + 1] = source < 0 ? 0x80 : static_cast<uint8_t>(source + 1);
        }
      }
      bad[byte] = static_cast<uint8_t>(invalid);
    }
  }
};

inline const PackTables& pack_tables(bool bitmask) {
  static const PackTables cutlass(false), bits(true);
  return bitmask ? bits : cutlass;
}
inline const UnpackTables& unpack_tables(bool bitmask) {
  static const UnpackTables cutlass(false), bits(true);
  return bitmask ? bits : cutlass;
}

// One row: dense d (16 * words halves) -> values v (8 * words); store(w, word) receives the 16-bit word of
// step w (cutlass meta word, or bitmask bytes 2w, 2w + 1). Returns false when a group is invalid.
template <typename Store>
TFP_TARGET_AVX2 bool pack_row16(const uint16_t* d, uint16_t* v, int64_t words, const PackTables& t, Store store) {
  const __m256i mag = _mm256_set1_epi16(0x7FFF), zero = _mm256_setzero_si256();
  unsigned invalid = 0;
  for (int64_t w = 0; w < words; ++w) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(d + 16 * w));
    const __m256i is_zero = _mm256_cmpeq_epi16(_mm256_and_si256(x, mag), zero);
    // bytes 0-7: halves 0-7 (lane 0), bytes 16-23: halves 8-15 (lane 1); a set bit is a zero
    const unsigned zeros = static_cast<unsigned>(_mm256_movemask_epi8(_mm256_packs_epi16(is_zero, is_zero)));
    const unsigned nz0 = ~zeros & 0xFF, nz1 = ~zeros >> 16 & 0xFF;
    const __m256i ctrl = _mm256_set_epi64x(-1, static_cast<int64_t>(t.shuffle[nz1]), -1,
                                           static_cast<int64_t>(t.shuffle[nz0]));
    const __m256i kept = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(x, ctrl), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(v + 8 * w), _mm256_castsi256_si128(kept));
    store(w, static_cast<uint16_t>(t.word[nz0] | t.word[nz1] << 8));
    invalid |= t.bad[nz0] | t.bad[nz1];
  }
  return invalid == 0;
}

// One row: values v (8 * words) and load(w) -> the 16-bit word of step w -> dense d (16 * words halves).
// Returns false when a bitmask nibble lacks exactly two bits.
template <typename Load>
TFP_TARGET_AVX2 bool unpack_row16(const uint16_t* v, uint16_t* d, int64_t words, const UnpackTables& t, Load load) {
  unsigned invalid = 0;
  for (int64_t w = 0; w < words; ++w) {
    const __m128i values = _mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 8 * w));
    // lane 0 <- values 0-3, lane 1 <- values 4-7
    const __m256i spread = _mm256_permute4x64_epi64(_mm256_castsi128_si256(values), 0x50);
    const unsigned word = load(w), b0 = word & 0xFF, b1 = word >> 8 & 0xFF;
    const __m256i ctrl =
        _mm256_set_m128i(_mm_load_si128(reinterpret_cast<const __m128i*>(t.expand[b1])),
                         _mm_load_si128(reinterpret_cast<const __m128i*>(t.expand[b0])));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + 16 * w), _mm256_shuffle_epi8(spread, ctrl));
    invalid |= t.bad[b0] | t.bad[b1];
  }
  return invalid == 0;
}

}  // namespace avx2
}  // namespace s24
}  // namespace tfprune
#endif
