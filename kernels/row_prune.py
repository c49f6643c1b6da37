"""Per-row unstructured pruning without a sort: select the k-th smallest score of every row by
bisection on the score's int32 order key, then apply, in place.

Selection: with k = int(in · sparsity), find per row the largest key T with #(key < T) < k, bit by bit
from the top (1 sign step + 31 steps: 32 counting passes over the row, which lives in registers when
it fits one tile, SINGLE; otherwise every pass re-reads the row, from L2 on a GPU). Then the weights
with key < T are pruned, and of those with key == T the last k - #(key < T) by index (a running cumsum
over the ties), which is torch.sort(descending, stable)'s rule: ties keep the lower index. Exactly k
weights per row are pruned, NaN counts as the largest score, -0.0 equals +0.0. No score tensor of W's
size exists. Optional: Σ score and #(score > threshold) per program (OWL).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common
from ._common import _order_key, _score_tile, _write_tile, next_pow2
from .nm_prune import PruneResult, alloc_mask, check_scores
from .scores import prepare, scores_ref

__all__ = ["row_prune_", "row_prune_ref"]


@triton.jit
def _row_keys(w_ptr, s_ptr, f_ptr, p_ptr, rows, cols, row_ok, C, stride_wr, stride_wc, stride_sr, stride_sc,
              FROM_SCORES: tl.constexpr, HAS_FACTOR: tl.constexpr, HAS_PROTECT: tl.constexpr):
    valid = row_ok & (cols < C)
    s = _score_tile(w_ptr, s_ptr, f_ptr, p_ptr, rows, cols, valid, stride_wr, stride_wc, stride_sr, stride_sc,
                    FROM_SCORES, HAS_FACTOR, HAS_PROTECT)
    return s, _order_key(s), valid


@triton.jit
def _count_chunked(w_ptr, s_ptr, f_ptr, p_ptr, rows, row_ok, C, stride_wr, stride_wc, stride_sr, stride_sc, cand,
                   FROM_SCORES: tl.constexpr, HAS_FACTOR: tl.constexpr, HAS_PROTECT: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(#(key < cand), #(key == cand)) per row [BLOCK_R, 1], reading the row chunk by chunk."""
    below = tl.zeros([BLOCK_R, 1], dtype=tl.int32)
    equal = tl.zeros([BLOCK_R, 1], dtype=tl.int32)
    for c0 in range(0, C, BLOCK_C):
        cols = (c0 + tl.arange(0, BLOCK_C))[None, :]
        _, key, valid = _row_keys(w_ptr, s_ptr, f_ptr, p_ptr, rows, cols, row_ok, C, stride_wr, stride_wc,
                                  stride_sr, stride_sc, FROM_SCORES, HAS_FACTOR, HAS_PROTECT)
        below += tl.sum(((key < cand) & valid).to(tl.int32), axis=1, keep_dims=True)
        equal += tl.sum(((key == cand) & valid).to(tl.int32), axis=1, keep_dims=True)
    return below, equal


@triton.jit
def _row_prune_kernel(w_ptr, s_ptr, f_ptr, p_ptr, mask_ptr, psum_ptr, pcnt_ptr,
                      R, C, K, stride_wr, stride_wc, stride_sr, stride_sc, stride_mr, n_bytes, threshold,
                      FROM_SCORES: tl.constexpr, HAS_FACTOR: tl.constexpr, HAS_PROTECT: tl.constexpr,
                      APPLY: tl.constexpr, MASK_MODE: tl.constexpr, COUNT: tl.constexpr, SINGLE: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
    row_ok = rows < R
    if SINGLE:  # the whole row is one tile: keys stay in registers for all 32 passes
        cols = tl.arange(0, BLOCK_C)[None, :]
        s, key, valid = _row_keys(w_ptr, s_ptr, f_ptr, p_ptr, rows, cols, row_ok, C, stride_wr, stride_wc,
                                  stride_sr, stride_sc, FROM_SCORES, HAS_FACTOR, HAS_PROTECT)
        below = tl.sum(((key < 0) & valid).to(tl.int32), axis=1, keep_dims=True)
        lo = tl.where(below < K, 0, tl.full([BLOCK_R, 1], -2147483648, dtype=tl.int32))
        for i in range(0, 31):
            cand = lo + (1 << (30 - i))  # no overflow: lo's bits below 31 - i are clear
            below = tl.sum(((key < cand) & valid).to(tl.int32), axis=1, keep_dims=True)
            lo = tl.where(below < K, cand, lo)
        less = tl.sum(((key < lo) & valid).to(tl.int32), axis=1, keep_dims=True)
        equal = (key == lo) & valid
        keep_eq = tl.sum(equal.to(tl.int32), axis=1, keep_dims=True) - (K - less)
        keep = (key > lo) | (equal & (tl.cumsum(equal.to(tl.int32), axis=1) <= keep_eq))
        _write_tile(w_ptr, mask_ptr, keep, rows, cols, 0, valid, stride_wr, stride_wc, stride_mr, n_bytes, R,
                    APPLY, MASK_MODE, BLOCK_R, BLOCK_C)
        if COUNT:
            total = tl.sum(tl.sum(s, axis=1), axis=0)
            over = tl.sum(tl.sum(((s > threshold) & valid).to(tl.int32), axis=1), axis=0)
    else:  # rows longer than a tile: every pass streams the row again
        zero = tl.zeros([BLOCK_R, 1], dtype=tl.int32)
        below, _ = _count_chunked(w_ptr, s_ptr, f_ptr, p_ptr, rows, row_ok, C, stride_wr, stride_wc, stride_sr,
                                  stride_sc, zero, FROM_SCORES, HAS_FACTOR, HAS_PROTECT, BLOCK_R, BLOCK_C)
        lo = tl.where(below < K, zero, zero - 2147483647 - 1)
        for i in range(0, 31):
            cand = lo + (1 << (30 - i))
            below, _ = _count_chunked(w_ptr, s_ptr, f_ptr, p_ptr, rows, row_ok, C, stride_wr, stride_wc, stride_sr,
                                      stride_sc, cand, FROM_SCORES, HAS_FACTOR, HAS_PROTECT, BLOCK_R, BLOCK_C)
            lo = tl.where(below < K, cand, lo)
        less, n_equal = _count_chunked(w_ptr, s_ptr, f_ptr, p_ptr, rows, row_ok, C, stride_wr, stride_wc,
                                       stride_sr, stride_sc, lo, FROM_SCORES, HAS_FACTOR, HAS_PROTECT, BLOCK_R,
                                       BLOCK_C)
        keep_eq = n_equal - (K - less)
        seen = zero
        total = 0.0
        over = 0
        for c0 in range(0, C, BLOCK_C):
            cols = (c0 + tl.arange(0, BLOCK_C))[None, :]
            s, key, valid = _row_keys(w_ptr, s_ptr, f_ptr, p_ptr, rows, cols, row_ok, C, stride_wr, stride_wc,
                                      stride_sr, stride_sc, FROM_SCORES, HAS_FACTOR, HAS_PROTECT)
            equal = (key == lo) & valid
            keep = (key > lo) | (equal & (seen + tl.cumsum(equal.to(tl.int32), axis=1) <= keep_eq))
            seen += tl.sum(equal.to(tl.int32), axis=1, keep_dims=True)
            _write_tile(w_ptr, mask_ptr, keep, rows, cols, c0, valid, stride_wr, stride_wc, stride_mr, n_bytes, R,
                        APPLY, MASK_MODE, BLOCK_R, BLOCK_C)
            if COUNT:
                total += tl.sum(tl.sum(s, axis=1), axis=0)
                over += tl.sum(tl.sum(((s > threshold) & valid).to(tl.int32), axis=1), axis=0)
    if COUNT:
        tl.store(psum_ptr + tl.program_id(0), total)
        tl.store(pcnt_ptr + tl.program_id(0), over)


def plan(rows: int, cols: int, interpreted: bool, block_c: int | None = None) -> dict:
    """Tile of the selection: whole rows in registers up to 16384 columns (GPU) / 4096 (interpreter)."""
    single_max = 4096 if interpreted else 16384
    if block_c is None:
        block_c = next_pow2(cols) if cols <= single_max else 4096
    block_c = max(8, block_c)
    single = cols <= block_c
    block_r = max(1, min(next_pow2(rows), (16384 if interpreted else 2048) // block_c))
    num_warps = 4 if block_c * block_r <= 4096 else (8 if block_c * block_r <= 8192 else 16)
    return dict(BLOCK_R=block_r, BLOCK_C=block_c, SINGLE=single, num_warps=num_warps)


def row_prune_(weight: torch.Tensor | None, sparsity: float, factor: torch.Tensor | None = None,
               protect: torch.Tensor | None = None, *, scores: torch.Tensor | None = None, apply: bool = True,
               mask_format: str | None = "bool", threshold: float | None = None,
               block_c: int | None = None) -> PruneResult:
    """Prune exactly int(in · sparsity) weights of every row of weight [out, in] in place, the lowest
    scores (ties: the higher index goes first), zeroed to +0.0.

    Arguments as nm_prune_ (scores from |weight|·factor with protect, or given); block_c forces the
    column tile (tests use it to run the multi-pass path on small rows).
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"row_mask: sparsity must be in [0, 1), got {sparsity}")
    ref = check_scores(scores, weight, "row_prune_")
    device, factor, protect = prepare(weight if scores is None else ref, factor, protect, "row_prune_")
    if weight is not None:
        _common.check_device(weight, ref)
    if scores is not None and (factor is not None or protect is not None):
        raise ValueError("row_prune_: factor/protect apply to scored weights, not to given scores")
    if apply and weight is None:
        raise ValueError("row_prune_: apply=True needs the weight")
    rows, cols = ref.shape
    k = int(cols * sparsity)
    mask, mask_view, stride_mr, n_bytes = alloc_mask(rows, cols, mask_format, device)
    p = plan(rows, cols, _common.INTERPRETED and device.type == "cpu", block_c)
    grid = (triton.cdiv(rows, p["BLOCK_R"]),)
    count = threshold is not None
    psum = torch.empty(grid[0] if count else 1, dtype=torch.float32, device=device)
    pcnt = torch.empty(grid[0] if count else 1, dtype=torch.int32, device=device)
    if rows and cols:
        w = weight if weight is not None else ref
        s = scores if scores is not None else ref
        _row_prune_kernel[grid](
            w, s, factor if factor is not None else psum, protect if protect is not None else psum,
            mask_view if mask_view is not None else psum, psum, pcnt, rows, cols, k, w.stride(0), w.stride(1),
            s.stride(0), s.stride(1), stride_mr, n_bytes, float(threshold) if count else 0.0,
            FROM_SCORES=scores is not None, HAS_FACTOR=factor is not None, HAS_PROTECT=protect is not None,
            APPLY=apply, MASK_MODE={None: 0, "bool": 1, "bits": 2}[mask_format], COUNT=count,
            SINGLE=p["SINGLE"], BLOCK_R=p["BLOCK_R"], BLOCK_C=p["BLOCK_C"], num_warps=p["num_warps"])
    if not count:
        return PruneResult(mask)
    if not (rows and cols):
        psum, pcnt = psum[:0], pcnt[:0]
    return PruneResult(mask, psum.double().sum(), pcnt.sum(dtype=torch.int64))


def row_prune_ref(weight: torch.Tensor | None, sparsity: float, factor: torch.Tensor | None = None,
                  protect: torch.Tensor | None = None, *, scores: torch.Tensor | None = None,
                  apply: bool = True) -> torch.Tensor:
    """Reference: scores_ref, tfprune.masks.row_mask_ref (a stable sort), masked_fill. Returns the mask."""
    from tfprune.masks import row_mask_ref

    score = scores if scores is not None else scores_ref(weight, factor, protect)
    keep = row_mask_ref(score, sparsity)
    if apply:
        weight.masked_fill_(~keep, 0.0)
    return keep


_common.inline_for_interpreter(globals())
