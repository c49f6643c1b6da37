"""Scores of a weight W: [out, in] from per-channel factors, and their OWL statistics in one read of W.

score_ij = |W_ij| · factor_j (factor None: |W_ij|), +inf on protected channels: the fp32 product of
tfprune.scores.scores_ref, bit for bit (`channel_factor` builds factor with the reference's own ops).

`score_stats` is OWL's pass: Σ score and #(score > threshold) of a layer without materializing the
scores. Partials (one per program, fp32 sum / int32 count) are added in program order on the host side
in fp64 / int64: deterministic. OWL's threshold (M × the block's mean score) needs the block's sum first,
so the engine runs it twice per block (sum, then count); the prune kernels return the count for a given
threshold from their own pass over W as well.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from ._common import SCORE_DTYPES, _score_tile, check_device, next_pow2

__all__ = ["channel_factor", "scores", "scores_ref", "score_stats", "score_stats_ref", "prepare"]


@triton.jit
def _scores_kernel(w_ptr, f_ptr, p_ptr, out_ptr, R, C, stride_wr, stride_wc,
                   HAS_FACTOR: tl.constexpr, HAS_PROTECT: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
    cols = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
    valid = (rows < R) & (cols < C)
    s = _score_tile(w_ptr, w_ptr, f_ptr, p_ptr, rows, cols, valid, stride_wr, stride_wc, 0, 0,
                    False, HAS_FACTOR, HAS_PROTECT)
    tl.store(out_ptr + rows * C + cols, s, mask=valid)


@triton.jit
def _score_stats_kernel(w_ptr, f_ptr, p_ptr, psum_ptr, pcnt_ptr, R, C, stride_wr, stride_wc, threshold,
                        HAS_FACTOR: tl.constexpr, HAS_PROTECT: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
    cols = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C))[None, :]
    valid = (rows < R) & (cols < C)
    s = _score_tile(w_ptr, w_ptr, f_ptr, p_ptr, rows, cols, valid, stride_wr, stride_wc, 0, 0,
                    False, HAS_FACTOR, HAS_PROTECT)
    tl.store(psum_ptr + pid, tl.sum(tl.sum(s, axis=1), axis=0))
    tl.store(pcnt_ptr + pid, tl.sum(tl.sum(((s > threshold) & valid).to(tl.int32), axis=1), axis=0))


def channel_factor(method: str, norm: torch.Tensor | None, contrast_norm: torch.Tensor | None,
                   device: torch.device) -> torch.Tensor | None:
    """The per-channel fp32 factor of `method` ('magnitude' -> None), computed exactly as scores_ref
    does, so that |W|·factor in fp32 is its score bit for bit."""
    if method == "magnitude":
        return None
    if norm is None:
        raise ValueError(f"scores: method {method!r} needs norm")
    if method == "wanda":
        return norm.to(device, torch.float32).contiguous()
    if method == "contrastive":
        if contrast_norm is None:
            raise ValueError(f"scores: method {method!r} needs contrast_norm")
        contrast = contrast_norm.to(device, torch.float64)
        contrast = torch.where(contrast > 0, contrast, torch.ones_like(contrast))
        return (norm.to(device, torch.float64).square() / contrast).float().contiguous()
    raise ValueError(f"no per-channel factor for score method {method!r}")


def prepare(weight: torch.Tensor, factor: torch.Tensor | None, protect: torch.Tensor | None, what: str):
    """Validate weight [out, in] and the [in] vectors; returns (device, factor fp32, protect uint8)."""
    if weight.dim() != 2:
        raise ValueError(f"{what}: weight must be [out, in], got shape {tuple(weight.shape)}")
    if weight.dtype not in SCORE_DTYPES:
        raise TypeError(f"{what}: weight must be fp16/bf16/fp32, got {weight.dtype}")
    in_features = weight.shape[1]
    for name, vec in (("factor", factor), ("protect", protect)):
        if vec is not None and vec.shape != (in_features,):
            raise ValueError(f"{what}: {name} must be [{in_features}], got {tuple(vec.shape)}")
    device = check_device(weight, factor, protect)
    if factor is not None:
        factor = factor.to(torch.float32).contiguous()
    if protect is not None:
        protect = protect.to(torch.bool).contiguous().view(torch.uint8)
    return device, factor, protect


def _blocks(rows: int, cols: int, interpreted: bool) -> tuple[int, int]:
    block_c = min(next_pow2(cols), 4096 if interpreted else 256)
    block_r = max(1, min(next_pow2(rows), (65536 if interpreted else 4096) // block_c))
    return block_r, block_c


def scores(weight: torch.Tensor, factor: torch.Tensor | None = None,
           protect: torch.Tensor | None = None) -> torch.Tensor:
    """score = |W|·factor (+inf on protect): [out, in] fp32, written by one kernel."""
    device, factor, protect = prepare(weight, factor, protect, "scores")
    rows, cols = weight.shape
    out = torch.empty(rows, cols, dtype=torch.float32, device=device)
    if out.numel() == 0:
        return out
    block_r, block_c = _blocks(rows, cols, _common.INTERPRETED and device.type == "cpu")
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_c))
    _scores_kernel[grid](weight, factor if factor is not None else out, protect if protect is not None else out,
                         out, rows, cols, weight.stride(0), weight.stride(1), HAS_FACTOR=factor is not None,
                         HAS_PROTECT=protect is not None, BLOCK_R=block_r, BLOCK_C=block_c)
    return out


def score_stats(weight: torch.Tensor, factor: torch.Tensor | None = None, protect: torch.Tensor | None = None,
                threshold: float = float("inf")) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ score [] fp64, #(score > threshold) [] int64) of weight [out, in], reading W once."""
    device, factor, protect = prepare(weight, factor, protect, "score_stats")
    rows, cols = weight.shape
    if weight.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=device), torch.zeros((), dtype=torch.int64, device=device)
    block_r, block_c = _blocks(rows, cols, _common.INTERPRETED and device.type == "cpu")
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, block_c))
    psum = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=device)
    pcnt = torch.empty(grid[0] * grid[1], dtype=torch.int32, device=device)
    _score_stats_kernel[grid](weight, factor if factor is not None else psum,
                              protect if protect is not None else psum, psum, pcnt, rows, cols,
                              weight.stride(0), weight.stride(1), float(threshold), HAS_FACTOR=factor is not None,
                              HAS_PROTECT=protect is not None, BLOCK_R=block_r, BLOCK_C=block_c)
    return psum.double().sum(), pcnt.sum(dtype=torch.int64)


def scores_ref(weight: torch.Tensor, factor: torch.Tensor | None = None,
               protect: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: |W|.float() · factor, +inf on protected channels."""
    score = weight.abs().float()
    if factor is not None:
        score = score * factor.float()[None, :]
    if protect is not None:
        score[:, protect.to(torch.bool)] = float("inf")
    return score


def score_stats_ref(weight: torch.Tensor, factor: torch.Tensor | None = None, protect: torch.Tensor | None = None,
                    threshold: float = float("inf")) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 reference of score_stats: Σ score in fp64 and #(fp32 score > threshold)."""
    score = scores_ref(weight, factor, protect)
    return score.double().sum(), (score > threshold).sum()


_common.inline_for_interpreter(globals())
