"""Score + N:M mask + apply in one pass over W: [out, in], in place.

Each program owns a [BLOCK_R, BLOCK_C] tile. The score of every weight is computed in registers
(|W|·factor, +inf on protected channels; or read from a given score tensor), turned into an int32 order
key, and ranked inside its group of M by a pairwise compare against the M members of the group (the
members are re-read from the same cache lines): rank = #{greater} + #{equal with a lower index}, keep
when rank < N. That is exactly torch.sort(descending, stable)'s first N, ties to the lower index, for
any M. A program owns SPAN columns, a multiple of M (and of 8 with a bit mask) at most BLOCK_C: groups
never straddle programs, so no program reads a weight that another one has already zeroed in place. Pruned weights are stored as +0.0 (only those are written); the mask
is written as bool [out, in] or as a bit mask [out, ceil(in/8)] uint8 (little bit order). No score
tensor of W's size exists. Optional: Σ score and #(score > threshold) of the tile (OWL), per program.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import _common
from ._common import SCORE_DTYPES, _order_key, _score_tile, _write_tile, next_pow2
from .scores import prepare, scores_ref

__all__ = ["nm_prune_", "nm_prune_ref", "PruneResult"]


@triton.jit
def _nm_prune_kernel(w_ptr, s_ptr, f_ptr, p_ptr, mask_ptr, psum_ptr, pcnt_ptr,
                     R, C, stride_wr, stride_wc, stride_sr, stride_sc, stride_mr, n_bytes, threshold,
                     N: tl.constexpr, M: tl.constexpr, FROM_SCORES: tl.constexpr, HAS_FACTOR: tl.constexpr,
                     HAS_PROTECT: tl.constexpr, APPLY: tl.constexpr, MASK_MODE: tl.constexpr,
                     COUNT: tl.constexpr, SPAN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
    col0 = tl.program_id(1) * SPAN  # this program owns columns col0 .. col0 + SPAN - 1: whole groups, whole bytes
    lanes = tl.arange(0, BLOCK_C)[None, :]
    cols = col0 + lanes
    valid = (rows < R) & (cols < C) & (lanes < SPAN)
    s = _score_tile(w_ptr, s_ptr, f_ptr, p_ptr, rows, cols, valid, stride_wr, stride_wc, stride_sr, stride_sc,
                    FROM_SCORES, HAS_FACTOR, HAS_PROTECT)
    key = _order_key(s)
    first = (cols // M) * M
    rank = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.int32)
    for j in tl.static_range(M):
        other = first + j
        kj = _order_key(_score_tile(w_ptr, s_ptr, f_ptr, p_ptr, rows, other, valid, stride_wr, stride_wc,
                                    stride_sr, stride_sc, FROM_SCORES, HAS_FACTOR, HAS_PROTECT))
        rank += ((kj > key) | ((kj == key) & (other < cols))).to(tl.int32)
    keep = rank < N
    own_bytes = tl.minimum(n_bytes, (col0 + SPAN) // 8)  # SPAN % 8 == 0 with a bit mask
    _write_tile(w_ptr, mask_ptr, keep, rows, cols, col0, valid, stride_wr, stride_wc, stride_mr, own_bytes, R,
                APPLY, MASK_MODE, BLOCK_R, BLOCK_C)
    if COUNT:
        pid = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
        tl.store(psum_ptr + pid, tl.sum(tl.sum(s, axis=1), axis=0))
        tl.store(pcnt_ptr + pid, tl.sum(tl.sum(((s > threshold) & valid).to(tl.int32), axis=1), axis=0))


class PruneResult(tuple):
    """(mask, score_sum, outliers): the keep-mask (bool [out, in], bit mask uint8 [out, ceil(in/8)], or
    None), and with a threshold Σ score ([] fp64) and #(score > threshold) ([] int64), else None."""

    def __new__(cls, mask, score_sum=None, outliers=None):
        return super().__new__(cls, (mask, score_sum, outliers))

    mask = property(lambda self: self[0])
    score_sum = property(lambda self: self[1])
    outliers = property(lambda self: self[2])


def alloc_mask(rows: int, cols: int, mask_format: str | None, device):
    """The mask buffer of `mask_format` and its row stride (a bool mask is written through uint8)."""
    if mask_format is None:
        return None, None, 0, 0
    if mask_format == "bool":
        mask = torch.empty(rows, cols, dtype=torch.bool, device=device)
        return mask, mask.view(torch.uint8), cols, 0
    if mask_format == "bits":
        n_bytes = triton.cdiv(cols, 8)
        mask = torch.empty(rows, n_bytes, dtype=torch.uint8, device=device)
        return mask, mask, n_bytes, n_bytes
    raise ValueError(f"mask_format must be 'bool', 'bits' or None, got {mask_format!r}")


def check_scores(scores: torch.Tensor | None, weight: torch.Tensor | None, what: str) -> torch.Tensor:
    """The tensor whose shape/device rule the launch: weight (scored) or the given scores."""
    if scores is None:
        if weight is None:
            raise ValueError(f"{what}: give weight or scores")
        return weight
    if scores.dim() != 2 or scores.dtype not in SCORE_DTYPES:
        raise ValueError(f"{what}: scores must be a 2-D fp16/bf16/fp32 tensor, "
                         f"got {tuple(scores.shape)} {scores.dtype}")
    if weight is not None and weight.shape != scores.shape:
        raise ValueError(f"{what}: weight {tuple(weight.shape)} and scores {tuple(scores.shape)} differ in shape")
    return scores


def plan(rows: int, cols: int, m: int, mask_format: str | None, interpreted: bool) -> dict:
    """The tile of a program: BLOCK_R rows x BLOCK_C lanes (powers of two), of which the first SPAN columns
    are its own. SPAN is a multiple of m (and of 8 for a bit mask), so no group of m (and no mask byte) is
    shared by two programs: a program never reads a weight that another one zeroes."""
    unit = math.lcm(m, 8) if mask_format == "bits" else m
    block_c = max(8, next_pow2(unit), min(next_pow2(cols), 2048 if interpreted else 128))
    block_r = max(1, min(next_pow2(rows), (16384 if interpreted else 2048) // block_c))
    return dict(BLOCK_R=block_r, BLOCK_C=block_c, SPAN=block_c // unit * unit)


def nm_prune_(weight: torch.Tensor | None, n: int, m: int, factor: torch.Tensor | None = None,
              protect: torch.Tensor | None = None, *, scores: torch.Tensor | None = None, apply: bool = True,
              mask_format: str | None = "bool", threshold: float | None = None,
              tile: dict | None = None) -> PruneResult:
    """N:M-prune weight [out, in] in place: in every group of m consecutive inputs keep the n highest
    scores (ties: the lower index), zero the others to +0.0.

    Scores: |weight|·factor ([in] fp32, None = magnitude), +inf on protect ([in] bool); or `scores`
    [out, in] given (then weight is only written, and may be None when apply=False). apply=False leaves
    weight untouched. mask_format: 'bool' | 'bits' | None. threshold: also return Σ score and the count
    of scores above it (OWL), from the same pass. tile: force `plan`'s tile (tests run the GPU tile under the
    interpreter with it).
    """
    if not 0 < n < m:
        raise ValueError(f"nm_mask: need 0 < n < m, got {n}:{m}")
    ref = check_scores(scores, weight, "nm_prune_")
    device, factor, protect = prepare(weight if scores is None else ref, factor, protect, "nm_prune_")
    if weight is not None:
        _common.check_device(weight, ref)
    rows, cols = ref.shape
    if cols % m:
        raise ValueError(f"nm_mask: in_features={cols} is not a multiple of m={m}")
    if scores is not None and (factor is not None or protect is not None):
        raise ValueError("nm_prune_: factor/protect apply to scored weights, not to given scores")
    if apply and weight is None:
        raise ValueError("nm_prune_: apply=True needs the weight")
    mask, mask_view, stride_mr, n_bytes = alloc_mask(rows, cols, mask_format, device)
    p = plan(rows, cols, m, mask_format, _common.INTERPRETED and device.type == "cpu") if tile is None else tile
    block_r, block_c, span = p["BLOCK_R"], p["BLOCK_C"], p["SPAN"]
    grid = (triton.cdiv(rows, block_r), triton.cdiv(cols, span))
    count = threshold is not None
    psum = torch.empty(grid[0] * grid[1] if count else 1, dtype=torch.float32, device=device)
    pcnt = torch.empty(grid[0] * grid[1] if count else 1, dtype=torch.int32, device=device)
    if rows and cols:
        w = weight if weight is not None else ref
        s = scores if scores is not None else ref
        _nm_prune_kernel[grid](
            w, s, factor if factor is not None else psum, protect if protect is not None else psum,
            mask_view if mask_view is not None else psum, psum, pcnt, rows, cols, w.stride(0), w.stride(1),
            s.stride(0), s.stride(1), stride_mr, n_bytes, float(threshold) if count else 0.0,
            N=n, M=m, FROM_SCORES=scores is not None, HAS_FACTOR=factor is not None,
            HAS_PROTECT=protect is not None, APPLY=apply, MASK_MODE={None: 0, "bool": 1, "bits": 2}[mask_format],
            COUNT=count, SPAN=span, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    if not count:
        return PruneResult(mask)
    return PruneResult(mask, psum.double().sum(), pcnt.sum(dtype=torch.int64))


def nm_prune_ref(weight: torch.Tensor | None, n: int, m: int, factor: torch.Tensor | None = None,
                 protect: torch.Tensor | None = None, *, scores: torch.Tensor | None = None,
                 apply: bool = True) -> torch.Tensor:
    """Reference: scores_ref, tfprune.masks.nm_mask_ref, masked_fill. Returns the bool keep-mask."""
    from tfprune.masks import nm_mask_ref

    score = scores if scores is not None else scores_ref(weight, factor, protect)
    keep = nm_mask_ref(score, n, m)
    if apply:
        weight.masked_fill_(~keep, 0.0)
    return keep


_common.inline_for_interpreter(globals())
