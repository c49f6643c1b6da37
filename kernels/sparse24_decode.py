"""y = x @ Wᵀ (+ bias) for few rows of x (M ≤ 16) with W 2:4-sparse in tfprune's decode layout: the
decode (batch-1 generation) GEMV/GEMM, memory-bound, reading 9/16 of the dense bytes for 16-bit weights.

Layout (csrc/decode24_core.h): values [N, K/2] (W's dtype; group g = columns 4g..4g+3 keeps W[n, 4g+i0],
W[n, 4g+i1], i0 < i1, at values[n, 2g], values[n, 2g+1]) and codes uint8 [N, ceil(K/8)] (byte b: group 2b
in the low nibble, 2b+1 in the high one; nibble = i0 | i1 << 2, or with BITMASK compressed-tensors' bitmask
nibble, bit j = column 4g+j kept).

Each program owns BLOCK_N output rows and one of SPLIT slices of K (`plan`). Per BLOCK_K columns it loads the
[BLOCK_N, BLOCK_K/2] values and the [BLOCK_N, BLOCK_K/8] code bytes as two row-contiguous tiles (16-byte
vector loads), software-pipelined NUM_STAGES deep, expands them in registers to the dense [BLOCK_N, BLOCK_K]
tile (no dense copy of W in memory) and accumulates tl.dot(x [16, BLOCK_K], tileᵀ) in fp32; x's rows past
M are masked to 0. Deterministic: with SPLIT == 1 the program writes y (bias added, cast) itself; with
SPLIT > 1 (narrow outputs: too few row blocks to fill the GPU) every slice writes its fp32 partial to a
workspace [SPLIT, M, N] and a second kernel adds them in slice order: the same bits on every run, no
atomics. At most two launches, no host synchronization, shapes-only planning: safe to capture in a CUDA
graph (pass `out` to write into a preallocated output).
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import _common
from ._common import check_device

__all__ = ["MAX_ROWS", "plan", "sparse24_decode_linear", "launch", "sparse24_decode_ref", "unpack_ref"]

MAX_ROWS = 16  # rows of x the kernel takes (tl.dot's smallest M)
_DTYPES = (torch.float16, torch.bfloat16)
_OUT_DTYPES = _DTYPES + (torch.float32,)
#: programs of the GPU plan resident per SM (8 warps, ~125 registers, 51 KB of shared memory each): K is split
#: only where the row blocks do not fill one wave of them
_RESIDENT_PER_SM = 2


def _bitmask_codes(nibbles: range) -> int:
    """4-bit codes (lowest set bit | highest set bit << 2; 3 | 0 << 2 for an empty nibble), one per nibble."""
    code = lambda b: ((b & -b).bit_length() - 1 if b else 3) | (b.bit_length() - 1 if b else 0) << 2  # noqa: E731
    return sum(code(b) << (4 * i) for i, b in enumerate(nibbles))


_BITMASK_CODES_LO = tl.constexpr(_bitmask_codes(range(0, 8)))  # 0x898a4503: nibbles 0..7
_BITMASK_CODES_HI = tl.constexpr(_bitmask_codes(range(8, 16)))  # 0xcdcecdcf: nibbles 8..15


@triton.jit
def _nibbles(c_rows, k0, n_ok, K, CODE_WORDS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The code nibbles [BLOCK_N, BLOCK_K/4] (int32) of columns k0.. : CODE_WORDS reads the codes as int32
    words (8 nibbles, 32 columns each: 16-byte loads), else as bytes (2 nibbles)."""
    G: tl.constexpr = BLOCK_K // 4
    if CODE_WORDS:
        hc = k0 // 32 + tl.arange(0, BLOCK_K // 32)
        c = tl.load(c_rows + hc[None, :], mask=n_ok[:, None] & (hc < K // 32)[None, :], other=0)
        shifts = 4 * tl.arange(0, 8)
        nibble = (c[:, :, None] >> shifts[None, None, :]) & 0xF  # word w: groups 8w .. 8w+7, low nibble first
    else:
        hc = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        c = tl.load(c_rows + hc[None, :], mask=n_ok[:, None] & (hc < (K + 7) // 8)[None, :], other=0).to(tl.int32)
        nibble = tl.join(c & 0xF, c >> 4)  # byte b: group 2b low, 2b+1 high
    return tl.reshape(nibble, [BLOCK_N, G])


@triton.jit
def _expand_tile(v, nibble, BITMASK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Dense tile [BLOCK_N, BLOCK_K] of the value pairs v [BLOCK_N, BLOCK_K/2] and their code nibbles
    [BLOCK_N, BLOCK_K/4], built in registers: column 4g+j holds v[2g] if j == i0, v[2g+1] if j == i1,
    else 0."""
    G: tl.constexpr = BLOCK_K // 4
    if BITMASK:  # the code of a bitmask nibble (lowest | highest set bit << 2) from two 8-entry tables
        table = tl.where(nibble < 8, _BITMASK_CODES_LO, _BITMASK_CODES_HI).to(tl.int64)
        nibble = ((table >> (4 * (nibble & 7)).to(tl.int64)) & 0xF).to(tl.int32)
    i0 = nibble & 3
    i1 = nibble >> 2
    v0, v1 = tl.split(tl.reshape(v, [BLOCK_N, G, 2]))
    j = tl.arange(0, 4)[None, None, :]
    zero = tl.zeros([BLOCK_N, G, 4], dtype=v.dtype)
    w = tl.where(j == i0[:, :, None], v0[:, :, None], tl.where(j == i1[:, :, None], v1[:, :, None], zero))
    return tl.reshape(w, [BLOCK_N, BLOCK_K])


@triton.jit
def _sparse24_decode_kernel(x_ptr, v_ptr, c_ptr, b_ptr, out_ptr, M, N, K, stride_xm, stride_xk, stride_vn,
                            stride_cn, stride_om, stride_os, steps_per_split,
                            BITMASK: tl.constexpr, CODE_WORDS: tl.constexpr, HAS_BIAS: tl.constexpr,
                            PARTIAL: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, NUM_STAGES: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rm = tl.arange(0, BLOCK_M)
    m_ok = rm < M
    v_rows = v_ptr + rn.to(tl.int64)[:, None] * stride_vn  # [BLOCK_N, 1]
    c_rows = c_ptr + rn.to(tl.int64)[:, None] * stride_cn
    half_k = K // 2
    step0 = pid_s * steps_per_split
    steps = tl.minimum(steps_per_split, tl.cdiv(K, BLOCK_K) - step0)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for i in tl.range(0, steps, num_stages=NUM_STAGES):
        k0 = (step0 + i) * BLOCK_K
        hv = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        v = tl.load(v_rows + hv[None, :], mask=n_ok[:, None] & (hv < half_k)[None, :], other=0.0)
        w = _expand_tile(v, _nibbles(c_rows, k0, n_ok, K, CODE_WORDS, BLOCK_N, BLOCK_K), BITMASK, BLOCK_N, BLOCK_K)
        kk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=m_ok[:, None] & (kk < K)[None, :], other=0.0)
        if DOT_FP32:  # the interpreter: its bf16 tl.dot is wrong (triton 3.9), its fp32 one exact
            acc = tl.dot(x.to(tl.float32), tl.trans(w).to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(x.to(v.dtype), tl.trans(w), acc)
    out_ok = m_ok[:, None] & n_ok[None, :]
    if PARTIAL:  # this slice's fp32 partial: _split_k_reduce_kernel adds the slices in order
        tl.store(out_ptr + pid_s * stride_os + rm[:, None] * stride_om + rn[None, :], acc, mask=out_ok)
    else:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def _split_k_reduce_kernel(p_ptr, b_ptr, y_ptr, M, N, SPLIT, stride_ps, stride_pm, stride_ym,
                           HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """y [M, N] = Σ_s partial[s] (+ bias), s = 0, 1, ... in order: fixed-order fp32 sums."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    ok = (rm < M)[:, None] & (rn < N)[None, :]
    offsets = rm[:, None] * stride_pm + rn[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for s in range(0, SPLIT):
        acc += tl.load(p_ptr + s * stride_ps + offsets, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=ok)


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=4096)
def plan(n: int, k: int, sms: int, interpreted: bool) -> dict:
    """Tiles, split-K and pipelining of an [N, K] weight on a device with `sms` multiprocessors (a
    function of the shape only, so every call of a shape launches the same programs; do not mutate it).

    GPU: 32 rows x 256 columns a step, 8 warps, 3 stages (compiled for sm_80 and sm_90: ~125 registers, no
    spills, 16-byte asynchronous copies; tfprune.bench.kernel_sass); K is split into slices only where the
    row blocks do not fill one wave of resident programs, to about one wave. Interpreter: larger tiles, no
    split (programs run one after another)."""
    if interpreted:
        block_n, block_k, warps, stages = 64, 256, 4, 1
    else:
        block_n, block_k, warps, stages = 32, 256, 8, 3
    k_steps = max(1, triton.cdiv(k, block_k))
    n_blocks = max(1, triton.cdiv(n, block_n))
    wave = _RESIDENT_PER_SM * sms
    split = 1 if interpreted or n_blocks >= wave else min(k_steps, triton.cdiv(wave, n_blocks))
    return _with_split(dict(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, NUM_STAGES=stages), k_steps, split)


def _with_split(tile: dict, k_steps: int, split: int) -> dict:
    """tile with SPLIT slices of whole BLOCK_K steps (split rounded so that no slice is empty)."""
    steps = triton.cdiv(k_steps, max(1, min(split, k_steps)))
    return dict(tile, steps_per_split=steps, SPLIT=triton.cdiv(k_steps, steps))


def _check(x, values, codes, bias, out_dtype, out):
    if x.dim() != 2 or values.dim() != 2 or codes.dim() != 2:
        raise ValueError(f"sparse24_decode_linear: x [M, K], values [N, K/2], codes [N, ceil(K/8)] must be 2-D, "
                         f"got {tuple(x.shape)}, {tuple(values.shape)}, {tuple(codes.shape)}")
    m, k = x.shape
    n = values.shape[0]
    if not 1 <= m <= MAX_ROWS:
        raise ValueError(f"sparse24_decode_linear: x has M={m} rows; the decode kernel takes 1..{MAX_ROWS} "
                         "(use the dense or CUTLASS path for more)")
    if k % 4 or values.shape[1] * 2 != k or tuple(codes.shape) != (n, -(-k // 8)):
        raise ValueError(f"sparse24_decode_linear: x [M, K={k}] needs K a multiple of 4, values [N, {k // 2}] and "
                         f"codes [N, {-(-k // 8)}]; got values {tuple(values.shape)}, codes {tuple(codes.shape)}")
    if x.dtype not in _DTYPES or values.dtype not in _DTYPES or codes.dtype != torch.uint8:
        raise ValueError(f"sparse24_decode_linear: x and values must be fp16/bf16 and codes uint8, got {x.dtype}, "
                         f"{values.dtype}, {codes.dtype}")
    if values.stride(1) != 1 or codes.stride(1) != 1:
        raise ValueError("sparse24_decode_linear: values and codes must be contiguous along K")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"sparse24_decode_linear: bias must be [{n}], got {tuple(bias.shape)}")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"sparse24_decode_linear: out_dtype must be fp16/bf16/fp32, got {out_dtype}")
    if out is not None and (tuple(out.shape) != (m, n) or out.dtype != out_dtype or out.stride(1) != 1
                            or out.device != x.device):
        raise ValueError(f"sparse24_decode_linear: out must be [{m}, {n}] {out_dtype}, contiguous along N, on "
                         f"{x.device}; got {tuple(out.shape)} {out.dtype} strides {out.stride()} on {out.device}")


def sparse24_decode_linear(x: torch.Tensor, values: torch.Tensor, codes: torch.Tensor,
                           bias: torch.Tensor | None = None, *, bitmask: bool = False,
                           out_dtype: torch.dtype | None = None, out: torch.Tensor | None = None,
                           split_k: int | None = None, tile: dict | None = None) -> torch.Tensor:
    """x [M, K] (M ≤ 16, fp16/bf16, any strides) @ Wᵀ (+ bias [N]) -> [M, N] in out_dtype (default x's,
    or out's), with W [N, K] given as values [N, K/2] (fp16/bf16) and codes (or a bitmask) uint8
    [N, ceil(K/8)], both contiguous along K. fp32 accumulation in a fixed order: bitwise reproducible.
    x is cast to the values' dtype when they differ. out: a preallocated [M, N] output (contiguous along
    N), written and returned. split_k overrides `plan`'s number of K slices; tile forces a plan (tests run
    the GPU plan under the interpreter with it)."""
    device = check_device(x, values, codes, bias)
    out_dtype = out.dtype if out is not None and out_dtype is None else (out_dtype or x.dtype)
    _check(x, values, codes, bias, out_dtype, out)
    return launch(x, values, codes, bias, bitmask, out_dtype, out, split_k, tile)


def launch(x: torch.Tensor, values: torch.Tensor, codes: torch.Tensor, bias: torch.Tensor | None, bitmask: bool,
           out_dtype: torch.dtype, out: torch.Tensor | None = None, split_k: int | None = None,
           tile: dict | None = None) -> torch.Tensor:
    """sparse24_decode_linear without its checks (the host cost of a decode step): for callers that hold a
    weight validated once (tfprune.decode24.Decode24Weight) and have checked x (decode24.unsupported_reason)."""
    device = x.device
    m, k = x.shape
    n = values.shape[0]
    interpreted = _common.INTERPRETED and device.type == "cpu"
    if tile is not None:
        p = tile
    else:
        p = plan(n, k, _num_sms(device.index) if device.type == "cuda" else 1, interpreted)
    if split_k is not None:
        p = _with_split(p, max(1, triton.cdiv(k, p["BLOCK_K"])), int(split_k))
    y = out if out is not None else torch.empty(m, n, dtype=out_dtype, device=device)
    if n == 0:
        return y
    n_blocks = triton.cdiv(n, p["BLOCK_N"])
    partial = p["SPLIT"] > 1
    target = torch.empty(p["SPLIT"], m, n, dtype=torch.float32, device=device) if partial else y
    b = bias if bias is not None else values  # a valid pointer, never read without HAS_BIAS
    words = k % 32 == 0 and codes.data_ptr() % 4 == 0 and codes.stride(0) % 4 == 0
    code_units = codes.view(torch.int32) if words else codes  # [N, K/32] words: 16-byte loads of the codes
    _sparse24_decode_kernel[(n_blocks, p["SPLIT"])](
        x, values, code_units, b, target, m, n, k, x.stride(0), x.stride(1), values.stride(0), code_units.stride(0),
        target.stride(-2), target.stride(0) if partial else 0, p["steps_per_split"],
        BITMASK=bitmask, CODE_WORDS=words, HAS_BIAS=bias is not None, PARTIAL=partial, DOT_FP32=interpreted, BLOCK_M=MAX_ROWS,
        BLOCK_N=p["BLOCK_N"], BLOCK_K=p["BLOCK_K"], NUM_STAGES=p["NUM_STAGES"], num_warps=p["num_warps"])
    if partial:
        _split_k_reduce_kernel[(triton.cdiv(n, 64),)](
            target, b, y, m, n, p["SPLIT"], target.stride(0), target.stride(1), y.stride(0),
            HAS_BIAS=bias is not None, BLOCK_M=MAX_ROWS, BLOCK_N=64, num_warps=4)
    return y


def unpack_ref(values: torch.Tensor, codes: torch.Tensor, bitmask: bool = False) -> torch.Tensor:
    """Dense W [N, K] of the decode layout (pure torch)."""
    N, K = values.shape[0], values.shape[1] * 2
    nibbles = torch.stack([codes & 0xF, codes >> 4], dim=-1).reshape(N, -1)[:, :K // 4].long()  # [N, K/4]
    if bitmask:
        bits = (nibbles[..., None] >> torch.arange(4, device=codes.device)) & 1  # [N, G, 4]
        i0 = bits.argmax(-1)
        i1 = 3 - bits.flip(-1).argmax(-1)
    else:
        i0, i1 = nibbles & 3, nibbles >> 2
    dense = torch.zeros(N, K // 4, 4, dtype=values.dtype, device=values.device)
    pairs = values.reshape(N, K // 4, 2)
    dense.scatter_(-1, i1[..., None], pairs[..., 1:])
    dense.scatter_(-1, i0[..., None], pairs[..., :1])
    return dense.reshape(N, K)


def sparse24_decode_ref(x: torch.Tensor, values: torch.Tensor, codes: torch.Tensor,
                        bias: torch.Tensor | None = None, *, bitmask: bool = False,
                        out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reference: F.linear in float64 on the unpacked weight, cast to out_dtype (default x's)."""
    w = unpack_ref(values, codes, bitmask).double()
    y = torch.nn.functional.linear(x.double(), w, None if bias is None else bias.double())
    return y.to(out_dtype or x.dtype)


_common.inline_for_interpreter(globals())
