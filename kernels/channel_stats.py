"""Per-channel activation statistics in one pass over X: [T, C] -> running Σx², max|x|, #(|x| > τ).

Reduction scheme (deterministic, no atomics): stage 1 splits the tokens into S contiguous chunks and
gives each (chunk, channel block) program fp32 accumulators [BLOCK_T, BLOCK_C], reduced over the tile at
the end; it writes one fp32/int32 partial per (chunk, channel) to a workspace [S, C]. Stage 2 folds the S
partials of each channel in chunk order, Σx² in fp64, into the running buffers (fp64 Σx², fp32 max|x|,
int64 count). S and the blocks depend only on (T, C) and the device kind, so a given input gives the
same bits on every run. With S == 1, stage 1 updates the buffers itself (one launch).

NaN: a NaN in x makes that channel's Σx² NaN (squares are >= 0, so it cannot come from Inf - Inf), and
stage 2 then writes NaN to max|x| as torch.amax does; ChannelStats.check_finite reports it.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check_device, next_pow2
from . import _common

__all__ = ["channel_stats_", "channel_stats_ref", "plan"]

_GPU_PROGRAMS = 1024  # stage-1 programs aimed at on a GPU (a few waves of 132 SMs)


@triton.jit
def _fold(sumsq_ptr, maxabs_ptr, count_ptr, cols, cmask, part_sum, part_max, part_cnt):
    """Add one channel block's totals (fp64 sum, fp32 max, int64 count) into the running buffers."""
    old_sum = tl.load(sumsq_ptr + cols, mask=cmask, other=0.0)
    old_max = tl.load(maxabs_ptr + cols, mask=cmask, other=0.0)
    old_cnt = tl.load(count_ptr + cols, mask=cmask, other=0)
    new_sum = old_sum + part_sum
    new_max = tl.maximum(old_max, part_max)
    new_max = tl.where((old_max != old_max) | (new_sum != new_sum), float("nan"), new_max)
    tl.store(sumsq_ptr + cols, new_sum, mask=cmask)
    tl.store(maxabs_ptr + cols, new_max, mask=cmask)
    tl.store(count_ptr + cols, old_cnt + part_cnt, mask=cmask)


@triton.jit
def _channel_stats_kernel(x_ptr, tmask_ptr, psum_ptr, pmax_ptr, pcnt_ptr, sumsq_ptr, maxabs_ptr, count_ptr,
                          T, C, stride_t, stride_c, tau, tokens_per_split,
                          HAS_MASK: tl.constexpr, DIRECT: tl.constexpr,
                          BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_s = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    acc_sum = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    acc_max = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.float32)
    acc_cnt = tl.zeros([BLOCK_T, BLOCK_C], dtype=tl.int32)
    t_start = pid_s * tokens_per_split
    t_end = tl.minimum(t_start + tokens_per_split, T)
    for t0 in range(t_start, t_end, BLOCK_T):
        tok = t0 + tl.arange(0, BLOCK_T)
        tmask = tok < t_end
        if HAS_MASK:
            tmask = tmask & (tl.load(tmask_ptr + tok, mask=tmask, other=0) != 0)
        ptrs = x_ptr + tok.to(tl.int64)[:, None] * stride_t + cols.to(tl.int64)[None, :] * stride_c  # int64: C·stride ≥ 2³¹
        x = tl.load(ptrs, mask=tmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        ax = tl.abs(x)
        acc_sum += x * x
        acc_max = tl.maximum(acc_max, ax)
        acc_cnt += (ax > tau).to(tl.int32)
    part_sum = tl.sum(acc_sum, axis=0)
    part_max = tl.max(acc_max, axis=0)
    part_cnt = tl.sum(acc_cnt, axis=0)
    if DIRECT:
        _fold(sumsq_ptr, maxabs_ptr, count_ptr, cols, cmask, part_sum.to(tl.float64), part_max,
              part_cnt.to(tl.int64))
    else:
        tl.store(psum_ptr + pid_s * C + cols, part_sum, mask=cmask)
        tl.store(pmax_ptr + pid_s * C + cols, part_max, mask=cmask)
        tl.store(pcnt_ptr + pid_s * C + cols, part_cnt, mask=cmask)


@triton.jit
def _channel_stats_finish_kernel(psum_ptr, pmax_ptr, pcnt_ptr, sumsq_ptr, maxabs_ptr, count_ptr, C, S,
                                 BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    total = tl.zeros([BLOCK_C], dtype=tl.float64)
    top = tl.zeros([BLOCK_C], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_C], dtype=tl.int64)
    for s in range(0, S):  # fixed order: the sum's bits do not depend on scheduling
        total += tl.load(psum_ptr + s * C + cols, mask=cmask, other=0.0).to(tl.float64)
        top = tl.maximum(top, tl.load(pmax_ptr + s * C + cols, mask=cmask, other=0.0))
        cnt += tl.load(pcnt_ptr + s * C + cols, mask=cmask, other=0).to(tl.int64)
    _fold(sumsq_ptr, maxabs_ptr, count_ptr, cols, cmask, total, top, cnt)


def plan(tokens: int, channels: int, interpreted: bool, splits: int | None = None) -> dict:
    """Block sizes and token chunking of stage 1 (a function of the shape only)."""
    if interpreted:  # programs run one after another: few, large ones
        block_c, block_t, programs = min(next_pow2(channels), 1024), min(next_pow2(tokens), 256), 1
    else:
        block_c, block_t, programs = min(next_pow2(channels), 128), 32, _GPU_PROGRAMS
    c_blocks = triton.cdiv(channels, block_c)
    t_blocks = max(1, triton.cdiv(tokens, block_t))
    wanted = splits if splits is not None else max(1, programs // c_blocks)
    per_split = triton.cdiv(t_blocks, max(1, min(wanted, t_blocks))) * block_t
    return dict(BLOCK_C=block_c, BLOCK_T=block_t, c_blocks=c_blocks, tokens_per_split=per_split,
                splits=max(1, triton.cdiv(tokens, per_split)))


def channel_stats_(x: torch.Tensor, tau: float, token_mask: torch.Tensor | None, sumsq: torch.Tensor,
                   maxabs: torch.Tensor, count: torch.Tensor, n: torch.Tensor, *, splits: int | None = None) -> None:
    """Accumulate the statistics of x: [T, C] (fp16/bf16/fp32, any strides) into the running buffers
    sumsq [C] fp64, maxabs [C] fp32, count [C] int64 and n [] int64, in place.

    token_mask: [T] bool, True = a real token (others are skipped); tau: the |x| > tau threshold.
    splits: force the number of token chunks (tests); default from `plan`.
    """
    if x.dim() != 2:
        raise ValueError(f"channel_stats: x must be [tokens, channels], got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"channel_stats: x must be fp16/bf16/fp32, got {x.dtype}")
    tokens, channels = x.shape
    for name, buf, dtype in (("sumsq", sumsq, torch.float64), ("maxabs", maxabs, torch.float32),
                             ("count", count, torch.int64)):
        if buf.shape != (channels,) or buf.dtype != dtype or not buf.is_contiguous():
            raise ValueError(f"channel_stats: {name} must be a contiguous [{channels}] {dtype} buffer, "
                             f"got {tuple(buf.shape)} {buf.dtype}")
    if n.shape != () or n.dtype != torch.int64:
        raise ValueError(f"channel_stats: n must be a 0-d int64 tensor, got {tuple(n.shape)} {n.dtype}")
    if token_mask is not None:
        if token_mask.shape != (tokens,):
            raise ValueError(f"channel_stats: token_mask must be [{tokens}], got {tuple(token_mask.shape)}")
        token_mask = token_mask.to(torch.bool).contiguous().view(torch.uint8)
    device = check_device(x, token_mask, sumsq, maxabs, count, n)
    n += int(tokens) if token_mask is None else token_mask.sum(dtype=torch.int64)
    if tokens == 0 or channels == 0:
        return
    p = plan(tokens, channels, _common.INTERPRETED and device.type == "cpu", splits)
    direct = p["splits"] == 1
    if direct:
        psum = pmax = pcnt = sumsq  # unused
    else:
        psum = torch.empty(p["splits"], channels, dtype=torch.float32, device=device)
        pmax = torch.empty_like(psum)
        pcnt = torch.empty(p["splits"], channels, dtype=torch.int32, device=device)
    _channel_stats_kernel[(p["c_blocks"], p["splits"])](
        x, token_mask if token_mask is not None else x, psum, pmax, pcnt, sumsq, maxabs, count,
        tokens, channels, x.stride(0), x.stride(1), float(tau), p["tokens_per_split"],
        HAS_MASK=token_mask is not None, DIRECT=direct, BLOCK_T=p["BLOCK_T"], BLOCK_C=p["BLOCK_C"],
        num_warps=4)
    if not direct:
        _channel_stats_finish_kernel[(p["c_blocks"],)](psum, pmax, pcnt, sumsq, maxabs, count, channels,
                                                        p["splits"], BLOCK_C=p["BLOCK_C"], num_warps=4)


def channel_stats_ref(x: torch.Tensor, tau: float, token_mask: torch.Tensor | None = None):
    """float64 reference: (Σx² [C] fp64, max|x| [C] fp32, #(|x| > tau) [C] int64, n [] int64)."""
    if token_mask is not None:
        x = x[token_mask.to(torch.bool)]
    x64 = x.double()
    absx = x64.abs()
    if x.shape[0] == 0:
        return (torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros(x.shape[1]),
                torch.zeros(x.shape[1], dtype=torch.int64), torch.tensor(0))
    return (x64.square().sum(0), absx.amax(0).float(), (absx > tau).sum(0), torch.tensor(x.shape[0]))


_common.inline_for_interpreter(globals())
