"""y = x @ Wᵀ (+ bias) for few rows of x (M ≤ 16) with W 2:4-sparse in tfprune's decode layout: the
decode (batch-1 generation) GEMV/GEMM, memory-bound, reading 9/16 of the dense bytes for 16-bit weights.

Layout (csrc/decode24_core.h): values [N, K/2] (W's dtype; group g = columns 4g..4g+3 keeps W[n, 4g+i0],
W[n, 4g+i1], i0 < i1, at values[n, 2g], values[n, 2g+1]) and codes uint8 [N, ceil(K/8)] (byte b: group 2b
in the low nibble, 2b+1 in the high one; nibble = i0 | i1 << 2, or with BITMASK compressed-tensors' bitmask
nibble, bit j = column 4g+j kept).

Each program owns BLOCK_N output rows and one of SPLIT_K slices of K. Per BLOCK_K columns it loads the
[BLOCK_N, BLOCK_K/4] value pairs and code nibbles, expands them in registers to the dense [BLOCK_N, BLOCK_K]
tile (no dense copy of W in memory) and accumulates tl.dot(x [16, BLOCK_K], tileᵀ) in fp32; x's rows past M
are masked to 0. SPLIT_K > 1 (narrow outputs: too few row blocks to fill the GPU) adds fp32 partials with
atomic_add into an fp32 buffer, cast by the launcher.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from ._common import check_device

__all__ = ["MAX_ROWS", "sparse24_decode_linear", "sparse24_decode_ref", "unpack_ref"]

MAX_ROWS = 16  # rows of x the kernel takes (tl.dot's smallest M)
_DTYPES = (torch.float16, torch.bfloat16)


@triton.jit
def _sparse24_decode_kernel(x_ptr, v_ptr, c_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_xk, stride_vn,
                            stride_cn, stride_ym, k_per_split,
                            BITMASK: tl.constexpr, HAS_BIAS: tl.constexpr, ATOMIC: tl.constexpr,
                            DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    G: tl.constexpr = BLOCK_K // 4
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    rm = tl.arange(0, BLOCK_M)
    n_ok = rn < N
    j = tl.arange(0, 4)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_begin = pid_k * k_per_split
    k_end = tl.minimum(k_begin + k_per_split, K)
    for k0 in range(k_begin, k_end, BLOCK_K):
        g = k0 // 4 + tl.arange(0, G)  # groups of this step [G]
        ok = n_ok[:, None] & (g < K // 4)[None, :]  # [BLOCK_N, G]
        pair = v_ptr + rn[:, None] * stride_vn + 2 * g[None, :]
        v0 = tl.load(pair, mask=ok, other=0.0)
        v1 = tl.load(pair + 1, mask=ok, other=0.0)
        byte = tl.load(c_ptr + rn[:, None] * stride_cn + (g // 2)[None, :], mask=ok, other=0).to(tl.int32)
        nibble = (byte >> (4 * (g & 1))[None, :]) & 0xF
        if BITMASK:  # lowest and highest set bit
            i0 = tl.where((nibble & 1) != 0, 0, tl.where((nibble & 2) != 0, 1, tl.where((nibble & 4) != 0, 2, 3)))
            i1 = tl.where((nibble & 8) != 0, 3, tl.where((nibble & 4) != 0, 2, tl.where((nibble & 2) != 0, 1, 0)))
        else:
            i0 = nibble & 3
            i1 = nibble >> 2
        jj = j[None, None, :]
        w = tl.where(jj == i0[:, :, None], v0[:, :, None], tl.where(jj == i1[:, :, None], v1[:, :, None], 0.0))
        w = tl.reshape(w.to(v0.dtype), [BLOCK_N, BLOCK_K])  # dense tile [BLOCK_N, BLOCK_K]
        kk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
                    mask=(rm < M)[:, None] & (kk < K)[None, :], other=0.0)
        if DOT_FP32:  # the interpreter: its bf16 tl.dot is wrong (triton 3.9), its fp32 one exact
            acc = tl.dot(x.to(tl.float32), tl.trans(w).to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(x.to(v0.dtype), tl.trans(w), acc)
    if HAS_BIAS:
        bias = tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        acc += tl.where(pid_k == 0, bias, 0.0)[None, :]
    y_ptrs = y_ptr + rm[:, None] * stride_ym + rn[None, :]
    y_ok = (rm < M)[:, None] & n_ok[None, :]
    if ATOMIC:
        tl.atomic_add(y_ptrs, acc, mask=y_ok)
    else:
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_ok)


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def sparse24_decode_linear(x: torch.Tensor, values: torch.Tensor, codes: torch.Tensor,
                           bias: torch.Tensor | None = None, *, bitmask: bool = False,
                           out_dtype: torch.dtype | None = None, split_k: int | None = None,
                           block_n: int | None = None, block_k: int | None = None) -> torch.Tensor:
    """x [M, K] (M ≤ 16, fp16/bf16, any strides) @ Wᵀ (+ bias [N]) -> [M, N] in out_dtype (default x's),
    with W [N, K] given as values [N, K/2] (fp16/bf16) and codes (or a bitmask) uint8 [N, ceil(K/8)].
    fp32 accumulation; x is cast to the values' dtype when they differ. split_k / block_n / block_k
    override the launcher's choice (split_k is rounded so each slice is whole BLOCK_K steps)."""
    device = check_device(x, values, codes, bias)
    if x.dim() != 2 or values.dim() != 2 or codes.dim() != 2:
        raise ValueError(f"sparse24_decode_linear: x [M, K], values [N, K/2], codes [N, ceil(K/8)] must be 2-D, "
                         f"got {tuple(x.shape)}, {tuple(values.shape)}, {tuple(codes.shape)}")
    M, K = x.shape
    N = values.shape[0]
    if not 1 <= M <= MAX_ROWS:
        raise ValueError(f"sparse24_decode_linear: x has M={M} rows; the decode kernel takes 1..{MAX_ROWS} "
                         "(use the dense or CUTLASS path for more)")
    if K % 4 or values.shape[1] * 2 != K or tuple(codes.shape) != (N, -(-K // 8)):
        raise ValueError(f"sparse24_decode_linear: x [M, K={K}] needs K a multiple of 4, values [N, {K // 2}] and "
                         f"codes [N, {-(-K // 8)}]; got values {tuple(values.shape)}, codes {tuple(codes.shape)}")
    if x.dtype not in _DTYPES or values.dtype not in _DTYPES or codes.dtype != torch.uint8:
        raise ValueError(f"sparse24_decode_linear: x and values must be fp16/bf16 and codes uint8, got {x.dtype}, "
                         f"{values.dtype}, {codes.dtype}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"sparse24_decode_linear: bias must be [{N}], got {tuple(bias.shape)}")
    out_dtype = out_dtype or x.dtype
    if out_dtype not in _DTYPES + (torch.float32,):
        raise ValueError(f"sparse24_decode_linear: out_dtype must be fp16/bf16/fp32, got {out_dtype}")
    values, codes = values.contiguous(), codes.contiguous()
    interpreted = _common.INTERPRETED and device.type == "cpu"
    block_n = block_n or (64 if interpreted else 32)
    block_k = block_k or (256 if interpreted else 128)
    k_steps = triton.cdiv(K, block_k)
    n_blocks = triton.cdiv(N, block_n)
    if split_k is None:  # fill ~4 programs per SM; only where the output alone gives too few row blocks
        split_k = 1 if interpreted else max(1, min(k_steps, 4 * _num_sms(device) // n_blocks))
    split_k = max(1, min(int(split_k), k_steps))
    k_per_split = triton.cdiv(k_steps, split_k) * block_k
    split_k = triton.cdiv(K, k_per_split)
    atomic = split_k > 1
    y = torch.zeros(M, N, dtype=torch.float32, device=device) if atomic else \
        torch.empty(M, N, dtype=out_dtype, device=device)
    if N:
        _sparse24_decode_kernel[(n_blocks, split_k)](
            x, values, codes, bias if bias is not None else values, y, M, N, K, x.stride(0), x.stride(1),
            values.stride(0), codes.stride(0), y.stride(0), k_per_split,
            BITMASK=bitmask, HAS_BIAS=bias is not None, ATOMIC=atomic, DOT_FP32=interpreted, BLOCK_M=MAX_ROWS, BLOCK_N=block_n,
            BLOCK_K=block_k, num_warps=4)
    return y.to(out_dtype) if atomic else y


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
    """Reference: F.linear in fp32 on the unpacked weight, cast to out_dtype (default x's)."""
    w = unpack_ref(values, codes, bitmask).float()
    y = torch.nn.functional.linear(x.float(), w, None if bias is None else bias.float())
    return y.to(out_dtype or x.dtype)
