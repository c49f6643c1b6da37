// CPU kernels of the decode24 matmul y = x @ W^T (+ bias) for few rows of x (M <= 16), W 2:4-sparse in the
// decode layout (decode24_core.h). Host-only and free of torch (decode24_cpu.cpp is the torch shim), so a
// plain g++ can build them for a micro-benchmark.
//
// x is given as fp32 [M, K] (row stride ldx; for dpbf16 as bf16, and as fp32 only when K % 64 leaves tail groups),
// the output as fp32 or bf16 [M, N]; fp32
// accumulation throughout. OpenMP over output rows. Kernels (the AVX2 ones for fp16/fp32, or CPUs without
// AVX512_BF16; `auto_impl` picks by M, thresholds measured with benchmarks/bench_decode.py):
//   gather (M <= 4): per 16 columns (two code bytes, 8 values) one table row per code byte gives the lanes
//     of x holding the kept columns; two vpermps and a blend gather them, one FMA per row of x. Only the
//     kept half of W is multiplied: the best AVX2 kernel at M <= 2.
//   expand (blocks of up to 8 rows of x): per 8 columns (one code byte, 4 values) one table row maps the 4
//     values onto 8 dense fp32 lanes (vpermps of the values with a zero lane); one FMA per row of x. The
//     expansion is shared by the rows of x.
//   bcast (more rows): x transposed to xt [K, 8 or 16], so each kept weight v = W[n, k] adds v * xt[k, :]
//     to all rows of x at once (a broadcast and one FMA per 8 rows of x): only the kept half is multiplied,
//     and nothing is gathered per row of x. Blocks of K keep the slice of xt in L1.
//   dpbf16 (bf16 W and x, CPUs with AVX512_BF16): a group's two kept values are one bf16 pair; per 64 columns
//     a vpermd turns 16 nibbles into word indices and one vpermt2w per row of x gathers the matching pairs of
//     x for one vdpbf16ps (fp32 sums): only the kept half is multiplied, nothing is expanded.
//   portable: scalar loops, a nibble's two indices from a 16-entry table (any CPU).
// The AVX2/FMA/F16C and AVX-512 code is compiled with target attributes, so the extension builds with generic
// flags; `cpu_has_avx2()` / `cpu_has_avx512bf16()` (__builtin_cpu_supports) decide at run time.
// x's rows are K + 32 elements apart (the shim pads them): with K = 4096 they would otherwise map to the
// same L1 sets, and 8+ rows of x would evict each other on every step.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "decode24_core.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define TFP_D24_X86 1
#include <immintrin.h>
#define TFP_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TFP_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline
#define TFP_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define TFP_BF16_INLINE __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline)) inline
#else
#define TFP_D24_X86 0
#endif

namespace tfprune {
namespace d24 {
namespace cpu {

constexpr int64_t kMaxRows = 16;  // rows of x the kernels take

enum class WType { kBf16, kFp16, kFp32 };
enum class Impl { kPortable, kGather, kExpand, kBcast, kDpbf16 };

// One call: x (fp32 [M, K], row stride ldx) times W (N, K) packed, + bias (fp32 [N] or null) -> out (fp32 [M, N]).
struct Problem {
  const void* values;    // [N, K/2] of WType
  const uint8_t* codes;  // [N, code_bytes]
  const float* x;      // null for dpbf16 when K % 64 == 0 (no tail groups)
  const uint16_t* xh;  // x as bf16 (the dpbf16 kernel only), same row stride
  const float* bias;
  float* out;            // fp32 [M, N], or null when out_bf16 is set
  uint16_t* out_bf16;    // bf16 [M, N] (rounded to nearest even, as torch casts), or null
  int64_t M, N, K, code_bytes;
  int kind;     // 0: codes, 1: compressed-tensors' bitmask nibbles
  int64_t ldx;  // row stride of x and xh (elements): K padded so that rows do not share L1 sets
};

// Lookup tables by code byte (two groups), for codes (kind 0) and bitmask nibbles (kind 1).
struct Tables {
  // gather: for each of the byte's 4 values, the lane of x's 8 columns (the byte's two groups) it multiplies.
  alignas(64) int32_t gather[2][256][4];
  // expand: for each of the byte's 8 columns, the value (0..3) it holds, or 4 (a zero lane).
  alignas(64) uint8_t expand[2][256][8];
  // portable: the two indices of a nibble.
  uint8_t pair[2][16][2];
};

inline Tables build_tables() {
  Tables t;
  std::memset(&t, 0, sizeof(t));
  for (int kind = 0; kind < 2; ++kind) {
    for (unsigned nibble = 0; nibble < 16; ++nibble) {
      unsigned i0, i1;
      nibble_indices(nibble, kind == 1, i0, i1);
      t.pair[kind][nibble][0] = static_cast<uint8_t>(i0);
      t.pair[kind][nibble][1] = static_cast<uint8_t>(i1);
    }
    for (unsigned byte = 0; byte < 256; ++byte) {
      for (unsigned half = 0; half < 2; ++half) {
        const unsigned nibble = byte >> (4 * half) & 0xF;
        const unsigned i0 = t.pair[kind][nibble][0], i1 = t.pair[kind][nibble][1];
        t.gather[kind][byte][2 * half] = static_cast<int32_t>(4 * half + i0);
        t.gather[kind][byte][2 * half + 1] = static_cast<int32_t>(4 * half + i1);
        for (unsigned j = 0; j < 4; ++j) {  // i0 wins when a malformed nibble names one column twice
          const unsigned lane = (j == i0) ? 2 * half : (j == i1) ? 2 * half + 1 : 4;
          t.expand[kind][byte][4 * half + j] = static_cast<uint8_t>(lane);
        }
      }
    }
  }
  return t;
}

inline const Tables& tables() {
  static const Tables t = build_tables();
  return t;
}

// ---- element types (raw bits) ----

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE half -> float, exact (normals, subnormals, inf, NaN).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  const uint32_t exp = h >> 10 & 0x1F, man = h & 0x3FF;
  if (exp == 0x1F) return bits_to_float(sign | 0x7F800000u | man << 13);
  if (exp != 0) return bits_to_float(sign | (exp + 112) << 23 | man << 13);
  const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2^-24
  return sign ? -mag : mag;
}

struct Bf16 {
  using bits = uint16_t;
  static float to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }
};
struct Fp16 {
  using bits = uint16_t;
  static float to_float(uint16_t b) { return half_to_float(b); }
};
struct Fp32 {
  using bits = float;
  static float to_float(float b) { return b; }
};

// ---- portable ----

// Groups [g0, K/4) of row n for x rows [m0, m0 + mb), scalar; adds into acc.
template <typename W>
inline void tail_groups(const Problem& p, int64_t n, int64_t g0, int64_t m0, int mb, float* acc) {
  const auto* v = static_cast<const typename W::bits*>(p.values) + n * (p.K / 2);
  const uint8_t* c = p.codes + n * p.code_bytes;
  const auto& pair = tables().pair[p.kind];
  for (int64_t g = g0; g < p.K / 4; ++g) {
    const unsigned nibble = c[g >> 1] >> (4 * (g & 1)) & 0xF;
    const float v0 = W::to_float(v[2 * g]), v1 = W::to_float(v[2 * g + 1]);
    const int64_t k0 = 4 * g + pair[nibble][0], k1 = 4 * g + pair[nibble][1];
    for (int i = 0; i < mb; ++i) {
      const float* xm = p.x + (m0 + i) * p.ldx;
      acc[i] += v0 * xm[k0] + v1 * xm[k1];
    }
  }
}

// float -> bf16 bits as c10::BFloat16 rounds (nearest even; NaN -> the quiet 0x7FC0)
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

inline void store_row(const Problem& p, int64_t n, int64_t m0, int mb, const float* acc) {
  const float b = p.bias ? p.bias[n] : 0.0f;
  if (p.out_bf16) {
    for (int i = 0; i < mb; ++i) p.out_bf16[(m0 + i) * p.N + n] = float_to_bf16(acc[i] + b);
  } else {
    for (int i = 0; i < mb; ++i) p.out[(m0 + i) * p.N + n] = acc[i] + b;
  }
}

template <typename W>
void row_portable(const Problem& p, int64_t n) {
  float acc[kMaxRows] = {0};
  tail_groups<W>(p, n, 0, 0, static_cast<int>(p.M), acc);
  store_row(p, n, 0, static_cast<int>(p.M), acc);
}

#if TFP_D24_X86

// ---- AVX2 ----

// 8 weights -> 8 fp32 lanes; 4 weights -> 4 fp32 lanes and 4 zero lanes.
TFP_AVX2_INLINE __m256 load8(const uint16_t* w, Bf16) {
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
TFP_AVX2_INLINE __m256 load8(const uint16_t* w, Fp16) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
}
TFP_AVX2_INLINE __m256 load8(const float* w, Fp32) { return _mm256_loadu_ps(w); }
TFP_AVX2_INLINE __m256 load4(const uint16_t* w, Bf16) {
  const __m128i v = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w));
  return _mm256_zextps128_ps256(_mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(v), 16)));
}
TFP_AVX2_INLINE __m256 load4(const uint16_t* w, Fp16) {
  return _mm256_zextps128_ps256(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w))));
}
TFP_AVX2_INLINE __m256 load4(const float* w, Fp32) { return _mm256_zextps128_ps256(_mm_loadu_ps(w)); }

TFP_AVX2_INLINE float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// gather, one step: 16 columns (code bytes c[0], c[1]; 8 values at v) into acc[i], MB rows of x at x + i*ld.
template <typename W, int MB>
TFP_AVX2_INLINE void gather_step(const typename W::bits* v, const uint8_t* c, const float* x, int64_t ld,
                                 const int32_t (*lut)[4], __m256 (&acc)[MB]) {
  const __m256i idx = _mm256_inserti128_si256(
      _mm256_castsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(lut[c[0]]))),
      _mm_load_si128(reinterpret_cast<const __m128i*>(lut[c[1]])), 1);
  const __m256 w = load8(v, W{});
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i) {
    const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + i * ld), idx);
    const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(x + i * ld + 8), idx);
    acc[i] = _mm256_fmadd_ps(w, _mm256_blend_ps(lo, hi, 0xF0), acc[i]);
  }
}

// gather: row n, all M (= MB <= 4) rows of x; two accumulator sets (even and odd steps).
template <typename W, int MB>
TFP_AVX2 void row_gather(const Problem& p, int64_t n) {
  const int64_t K = p.K;
  const auto* v = static_cast<const typename W::bits*>(p.values) + n * (K / 2);
  const uint8_t* c = p.codes + n * p.code_bytes;
  const int32_t(*lut)[4] = tables().gather[p.kind];
  const float* x = p.x;
  const int64_t chunks = K / 16;
  __m256 acc0[MB], acc1[MB];
#pragma GCC unroll 4
  for (int i = 0; i < MB; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
  int64_t ch = 0;
  for (; ch + 2 <= chunks; ch += 2) {
    gather_step<W, MB>(v + 8 * ch, c + 2 * ch, x + 16 * ch, p.ldx, lut, acc0);
    gather_step<W, MB>(v + 8 * ch + 8, c + 2 * ch + 2, x + 16 * ch + 16, p.ldx, lut, acc1);
  }
  if (ch < chunks) gather_step<W, MB>(v + 8 * ch, c + 2 * ch, x + 16 * ch, p.ldx, lut, acc0);
  float out[MB];
  for (int i = 0; i < MB; ++i) out[i] = hsum(_mm256_add_ps(acc0[i], acc1[i]));
  tail_groups<W>(p, n, 4 * chunks, 0, MB, out);
  store_row(p, n, 0, MB, out);
}

// expand, one step: 8 columns (code byte c, 4 values at v) into acc[i], MB rows of x at x + i*ld.
template <typename W, int MB>
TFP_AVX2_INLINE void expand_step(const typename W::bits* v, unsigned c, const float* x, int64_t ld,
                                 const uint8_t (*lut)[8], __m256 (&acc)[MB]) {
  const __m256i lanes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(lut[c])));
  const __m256 w = _mm256_permutevar8x32_ps(load4(v, W{}), lanes);
#pragma GCC unroll 8
  for (int i = 0; i < MB; ++i) acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + i * ld), acc[i]);
}

// expand: row n, x rows [m0, m0 + MB), MB <= 8; two accumulator sets below 4 rows.
template <typename W, int MB>
TFP_AVX2 void row_expand(const Problem& p, int64_t n, int64_t m0) {
  const int64_t K = p.K;
  const auto* v = static_cast<const typename W::bits*>(p.values) + n * (K / 2);
  const uint8_t* c = p.codes + n * p.code_bytes;
  const uint8_t(*lut)[8] = tables().expand[p.kind];
  const float* x = p.x + m0 * p.ldx;
  const int64_t steps = K / 8;
  __m256 acc0[MB], acc1[MB];
#pragma GCC unroll 8
  for (int i = 0; i < MB; ++i) acc0[i] = acc1[i] = _mm256_setzero_ps();
  int64_t s = 0;
  if (MB < 4) {
    for (; s + 2 <= steps; s += 2) {
      expand_step<W, MB>(v + 4 * s, c[s], x + 8 * s, p.ldx, lut, acc0);
      expand_step<W, MB>(v + 4 * s + 4, c[s + 1], x + 8 * s + 8, p.ldx, lut, acc1);
    }
  }
  for (; s < steps; ++s) expand_step<W, MB>(v + 4 * s, c[s], x + 8 * s, p.ldx, lut, acc0);
  float out[MB];
  for (int i = 0; i < MB; ++i) out[i] = hsum(_mm256_add_ps(acc0[i], acc1[i]));
  tail_groups<W>(p, n, 2 * steps, m0, MB, out);
  store_row(p, n, m0, MB, out);
}

template <typename W>
void row_gather_any(const Problem& p, int64_t n) {
  switch (p.M) {
    case 1: row_gather<W, 1>(p, n); break;
    case 2: row_gather<W, 2>(p, n); break;
    case 3: row_gather<W, 3>(p, n); break;
    default: row_gather<W, 4>(p, n); break;
  }
}

template <typename W>
void row_expand_any(const Problem& p, int64_t n) {
  for (int64_t m0 = 0; m0 < p.M; m0 += 8) {
    switch (std::min<int64_t>(8, p.M - m0)) {
      case 1: row_expand<W, 1>(p, n, m0); break;
      case 2: row_expand<W, 2>(p, n, m0); break;
      case 3: row_expand<W, 3>(p, n, m0); break;
      case 4: row_expand<W, 4>(p, n, m0); break;
      case 5: row_expand<W, 5>(p, n, m0); break;
      case 6: row_expand<W, 6>(p, n, m0); break;
      case 7: row_expand<W, 7>(p, n, m0); break;
      default: row_expand<W, 8>(p, n, m0); break;
    }
  }
}

// bcast: x transposed, xt [K, MP] (MP = 8 * MV >= M, zero-padded), so that a kept weight v = W[n, k] adds
// v * xt[k, :] to the MP accumulator lanes of row n: only the kept half of W is multiplied, one FMA per
// 8 rows of x. Columns [k0, k0 + kc) of rows [n0, n1): per 16 columns the values (fp32) and the offsets of
// their rows of xt (from the gather table) go to a small buffer, one row ahead of the FMAs (so that they
// are read back long after they were stored), then 4 accumulator sets take turns.
// part [n1 - n0, MP] holds the running sums (columns before k0 included).
template <typename W>
TFP_AVX2_INLINE void bcast_decode(const Problem& p, int64_t n, int64_t k0, int64_t kc, int shift, float* vbuf,
                                  int32_t* obuf) {
  const int32_t(*lut)[4] = tables().gather[p.kind];
  const auto* v = static_cast<const typename W::bits*>(p.values) + n * (p.K / 2) + k0 / 2;
  const uint8_t* c = p.codes + n * p.code_bytes + k0 / 8;
  const __m256i half = _mm256_setr_epi32(0, 0, 0, 0, 8, 8, 8, 8);
  for (int64_t ch = 0; ch < kc / 16; ++ch) {
    const __m256i idx = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(lut[c[2 * ch]]))),
        _mm_load_si128(reinterpret_cast<const __m128i*>(lut[c[2 * ch + 1]])), 1);
    const __m256i col = _mm256_add_epi32(_mm256_add_epi32(idx, half), _mm256_set1_epi32(int32_t(k0 + 16 * ch)));
    _mm256_store_si256(reinterpret_cast<__m256i*>(obuf + 8 * ch), _mm256_sll_epi32(col, _mm_cvtsi32_si128(shift)));
    _mm256_store_ps(vbuf + 8 * ch, load8(v + 8 * ch, W{}));
  }
}

template <typename W, int MV>
TFP_AVX2 void rows_bcast(const Problem& p, const float* xt, int64_t n0, int64_t n1, int64_t k0, int64_t kc,
                         float* part, float* vbuf, int32_t* obuf) {
  constexpr int MP = 8 * MV;
  const int shift = MV == 1 ? 3 : 4;
  const int64_t nv = kc / 2;
  bcast_decode<W>(p, n0, k0, kc, shift, vbuf, obuf);
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t cur = (n - n0) & 1;
    if (n + 1 < n1) bcast_decode<W>(p, n + 1, k0, kc, shift, vbuf + (1 - cur) * nv, obuf + (1 - cur) * nv);
    const float* vb = vbuf + cur * nv;
    const int32_t* ob = obuf + cur * nv;
    float* out = part + (n - n0) * MP;
    __m256 a0[MV], a1[MV], a2[MV], a3[MV];
    for (int q = 0; q < MV; ++q) {
      a0[q] = _mm256_load_ps(out + 8 * q);
      a1[q] = a2[q] = a3[q] = _mm256_setzero_ps();
    }
    for (int64_t j = 0; j < nv; j += 4) {
      const __m256 b0 = _mm256_broadcast_ss(vb + j), b1 = _mm256_broadcast_ss(vb + j + 1);
      const __m256 b2 = _mm256_broadcast_ss(vb + j + 2), b3 = _mm256_broadcast_ss(vb + j + 3);
      const float *x0 = xt + ob[j], *x1 = xt + ob[j + 1], *x2 = xt + ob[j + 2], *x3 = xt + ob[j + 3];
      for (int q = 0; q < MV; ++q) {
        a0[q] = _mm256_fmadd_ps(b0, _mm256_load_ps(x0 + 8 * q), a0[q]);
        a1[q] = _mm256_fmadd_ps(b1, _mm256_load_ps(x1 + 8 * q), a1[q]);
        a2[q] = _mm256_fmadd_ps(b2, _mm256_load_ps(x2 + 8 * q), a2[q]);
        a3[q] = _mm256_fmadd_ps(b3, _mm256_load_ps(x3 + 8 * q), a3[q]);
      }
    }
    for (int q = 0; q < MV; ++q)
      _mm256_store_ps(out + 8 * q, _mm256_add_ps(_mm256_add_ps(a0[q], a1[q]), _mm256_add_ps(a2[q], a3[q])));
  }
}

// ---- AVX-512 BF16 ----

// dpbf16 (bf16 weights and x, CPUs with AVX512_BF16): a group's two kept values are adjacent in `values`, so
// they are one bf16 pair of vdpbf16ps; the kernel gathers the matching pair of x instead of expanding W. Per
// 64 columns (8 code bytes, 16 groups, 32 values): the 16 nibbles widened to dwords pick their word-index
// pairs (4g + i0, 4g + i1) from a 16-entry table held in a register (vpermd), one vpermt2w per row of x
// selects those 32 words from x's 64 columns, and one vdpbf16ps multiplies them with the 32 values. A
// malformed nibble (one column twice; checkpoints with such bitmasks are refused at load) carries bit 6 on its
// second index: that lane of x is zeroed, so the first value wins, as in the unpacker and the expand kernel
// (the scalar tail loop, used for the K % 64 tail groups, and the gather kernel add both values). Only the kept
// half is multiplied, nothing is expanded, and the weights stream in 9/16 of the dense bytes.
TFP_BF16_INLINE float hsum512(__m512 v) {  // through memory: GCC 12 warns inside its 512-bit shuffles
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s = 0.0f;
  for (int i = 0; i < 8; ++i) s += t[i] + t[i + 8];
  return s;
}

// dword per nibble: word index i0 | (i1, + 64 when i1 == i0) << 16, within the nibble's group of 4 columns
TFP_BF16_INLINE __m512i pair_index_table(int kind) {
  alignas(64) int32_t t[16];
  for (int nibble = 0; nibble < 16; ++nibble) {
    const uint8_t* pr = tables().pair[kind][nibble];
    t[nibble] = pr[0] | (pr[1] + (pr[1] == pr[0] ? 64 : 0)) << 16;
  }
  return _mm512_load_si512(t);
}

constexpr int64_t kDpbf16Prefetch = 2048;  // bytes ahead in a row's values: the hardware prefetcher lags

template <int MB>
TFP_BF16_INLINE void row_dpbf16(const Problem& p, int64_t n, int64_t m0, __m512i pair_table) {
  const int64_t K = p.K;
  const uint16_t* v = static_cast<const uint16_t*>(p.values) + n * (K / 2);
  const uint8_t* c = p.codes + n * p.code_bytes;
  const uint16_t* x = p.xh + m0 * p.ldx;
  const int64_t steps = K / 64;
  // group g of a step starts at word 4g: (4g) | (4g) << 16 in dword g
  const __m512i base = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(4 | 4 << 16));
  const __m512i malformed = _mm512_set1_epi16(64);
  __m512 acc0[MB], acc1[MB];
  for (int i = 0; i < MB; ++i) acc0[i] = acc1[i] = _mm512_setzero_ps();
  for (int64_t s = 0; s < steps; ++s) {
    _mm_prefetch(reinterpret_cast<const char*>(v + 32 * s) + kDpbf16Prefetch, _MM_HINT_T0);
    const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + 8 * s));
    // bytes lo0 hi0 lo1 hi1 ...: vpermd reads the low 4 bits of each dword, the nibble of group g
    const __m128i nibbles = _mm_unpacklo_epi8(bytes, _mm_srli_epi16(bytes, 4));
    const __m512i idx = _mm512_add_epi32(
        _mm512_maskz_permutexvar_epi32(0xFFFF, _mm512_maskz_cvtepu8_epi32(0xFFFF, nibbles), pair_table), base);
    // (maskz forms: GCC 12 warns on the undefined source of the plain ones)
    const __mmask32 real = _mm512_testn_epi16_mask(idx, malformed);
    const __m512bh w = (__m512bh)_mm512_loadu_si512(v + 32 * s);
    for (int i = 0; i < MB; ++i) {
      const uint16_t* xi = x + i * p.ldx + 64 * s;
      const __m512i lo = _mm512_loadu_si512(xi), hi = _mm512_loadu_si512(xi + 32);
      const __m512bh xv = (__m512bh)_mm512_maskz_permutex2var_epi16(real, lo, idx, hi);
      if (MB < 4 && (s & 1)) acc1[i] = _mm512_dpbf16_ps(acc1[i], w, xv);
      else acc0[i] = _mm512_dpbf16_ps(acc0[i], w, xv);
    }
  }
  float out[MB];
  for (int i = 0; i < MB; ++i) out[i] = hsum512(_mm512_add_ps(acc0[i], acc1[i]));
  tail_groups<Bf16>(p, n, 16 * steps, m0, MB, out);
  store_row(p, n, m0, MB, out);
}

TFP_BF16_INLINE void row_dpbf16_any(const Problem& p, int64_t n, __m512i pair_table) {
  for (int64_t m0 = 0; m0 < p.M; m0 += 16) {
    switch (std::min<int64_t>(16, p.M - m0)) {
      case 1: row_dpbf16<1>(p, n, m0, pair_table); break;
      case 2: row_dpbf16<2>(p, n, m0, pair_table); break;
      case 3: row_dpbf16<3>(p, n, m0, pair_table); break;
      case 4: row_dpbf16<4>(p, n, m0, pair_table); break;
      case 5: row_dpbf16<5>(p, n, m0, pair_table); break;
      case 6: row_dpbf16<6>(p, n, m0, pair_table); break;
      case 7: row_dpbf16<7>(p, n, m0, pair_table); break;
      case 8: row_dpbf16<8>(p, n, m0, pair_table); break;
      case 9: row_dpbf16<9>(p, n, m0, pair_table); break;
      case 10: row_dpbf16<10>(p, n, m0, pair_table); break;
      case 11: row_dpbf16<11>(p, n, m0, pair_table); break;
      case 12: row_dpbf16<12>(p, n, m0, pair_table); break;
      case 13: row_dpbf16<13>(p, n, m0, pair_table); break;
      case 14: row_dpbf16<14>(p, n, m0, pair_table); break;
      case 15: row_dpbf16<15>(p, n, m0, pair_table); break;
      default: row_dpbf16<16>(p, n, m0, pair_table); break;
    }
  }
}

TFP_BF16 inline void run_dpbf16(const Problem& p, int threads) {
  const __m512i pair_table = pair_index_table(p.kind);
  (void)threads;  // without OpenMP
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t n = 0; n < p.N; ++n) row_dpbf16_any(p, n, pair_table);
}

inline bool cpu_has_avx512bf16() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  return has;
}

struct FreeDeleter {
  void operator()(void* ptr) const { std::free(ptr); }
};
template <typename T>
std::unique_ptr<T[], FreeDeleter> aligned_buffer(int64_t count) {
  const size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
  return std::unique_ptr<T[], FreeDeleter>(static_cast<T*>(std::aligned_alloc(64, bytes ? bytes : 64)));
}

constexpr int64_t kBcastRowBlock = 64;  // rows of W per block: their partial sums stay in L1

template <typename W, int MV>
void run_bcast(const Problem& p, int threads) {
  constexpr int MP = 8 * MV;
  const int64_t K = p.K, N = p.N, M = p.M, K16 = K / 16 * 16;
  const int64_t KC = MV == 1 ? 768 : 384;  // a block of xt is 24 KiB: it stays in L1 while rows stream by
  auto xt = aligned_buffer<float>(K * MP);
  (void)threads;  // without OpenMP
#pragma omp parallel num_threads(threads)
  {
#ifdef _OPENMP
    const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
    const int64_t tid = 0, nth = 1;
#endif
    for (int64_t k = K * tid / nth; k < K * (tid + 1) / nth; ++k)
      for (int m = 0; m < MP; ++m) xt[k * MP + m] = m < M ? p.x[m * p.ldx + k] : 0.0f;
#pragma omp barrier
    auto part = aligned_buffer<float>(kBcastRowBlock * MP);
    auto vbuf = aligned_buffer<float>(KC);  // two rows' worth
    auto obuf = aligned_buffer<int32_t>(KC);
    const int64_t blocks = (N + kBcastRowBlock - 1) / kBcastRowBlock;
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t n0 = b * kBcastRowBlock, n1 = std::min(N, n0 + kBcastRowBlock);
      std::memset(part.get(), 0, sizeof(float) * kBcastRowBlock * MP);
      for (int64_t k0 = 0; k0 < K16; k0 += KC)
        rows_bcast<W, MV>(p, xt.get(), n0, n1, k0, std::min(KC, K16 - k0), part.get(), vbuf.get(), obuf.get());
      for (int64_t n = n0; n < n1; ++n) {
        float* acc = part.get() + (n - n0) * MP;
        tail_groups<W>(p, n, K16 / 4, 0, static_cast<int>(M), acc);
        store_row(p, n, 0, static_cast<int>(M), acc);
      }
    }
  }
}

inline bool cpu_has_avx2() {
  static const bool has =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  return has;
}

#else

inline bool cpu_has_avx2() { return false; }
inline bool cpu_has_avx512bf16() { return false; }

#endif  // TFP_D24_X86

// `auto`: dpbf16 for bf16 W and x where the CPU has AVX512_BF16; else gather for M <= kGatherMaxRows,
// expand up to kExpandMaxRows, bcast above (measured, benchmarks/README.md).
constexpr int64_t kGatherMaxRows = 2, kExpandMaxRows = 8;

// bf16_inputs: W and x both bf16 (dpbf16 then runs where the CPU has AVX512_BF16).
inline Impl auto_impl(int64_t M, bool bf16_inputs) {
  if (bf16_inputs && cpu_has_avx512bf16()) return Impl::kDpbf16;
  if (!cpu_has_avx2()) return Impl::kPortable;
  return M <= kGatherMaxRows ? Impl::kGather : M <= kExpandMaxRows ? Impl::kExpand : Impl::kBcast;
}

template <typename W>
void run(const Problem& p, Impl impl, int threads) {
  const int64_t N = p.N;
#if TFP_D24_X86
  if (impl == Impl::kBcast) {
    if (p.M <= 8) run_bcast<W, 1>(p, threads);
    else run_bcast<W, 2>(p, threads);
    return;
  }
  if (impl == Impl::kDpbf16) {
    (void)tables();  // built before the parallel region
    run_dpbf16(p, threads);
    return;
  }
#endif
  (void)tables();  // built before the parallel region
  (void)threads;   // without OpenMP
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t n = 0; n < N; ++n) {
#if TFP_D24_X86
    if (impl == Impl::kGather) {
      row_gather_any<W>(p, n);
      continue;
    }
    if (impl == Impl::kExpand) {
      row_expand_any<W>(p, n);
      continue;
    }
#endif
    row_portable<W>(p, n);
  }
}

// out = x @ W^T + bias for the Problem; impl must be kPortable where cpu_has_avx2() is false, kGather only
// for M <= 4, kDpbf16 only for bf16 W with p.xh set, where cpu_has_avx512bf16().
inline void linear(const Problem& p, WType wtype, Impl impl, int threads) {
  switch (wtype) {
    case WType::kBf16: run<Bf16>(p, impl, threads); break;
    case WType::kFp16: run<Fp16>(p, impl, threads); break;
    default: run<Fp32>(p, impl, threads); break;
  }
}

}  // namespace cpu
}  // namespace d24
}  // namespace tfprune
