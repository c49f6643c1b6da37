"""Tensor ops of the pruning engine, dispatched by device.

Every op has one pure-torch reference (in stats.py, scores.py, masks.py) used on the CPU and by the
tests; the Triton kernels of tfprune.kernels plug in here for CUDA tensors.
"""
from __future__ import annotations

import torch

from .masks import nm_mask_ref, row_mask_ref
from .scores import scores_ref

__all__ = ["channel_stats", "scores", "nm_mask", "row_mask", "apply_mask_"]


def channel_stats(x: torch.Tensor, tau: float = 6.0, token_mask: torch.Tensor | None = None):
    """Σx², max|x|, #(|x| > tau) per channel and the token count of x: [T, C] (token_mask: [T] bool).
    Returns (sumsq [C] fp32, maxabs [C] fp32, count [C] int64, n [] int64)."""
    from .stats import channel_stats_ref

    return channel_stats_ref(x, tau, token_mask)


def scores(weight, method, norm=None, contrast_norm=None, protect=None, seed=0) -> torch.Tensor:
    """Importance of every weight of weight: [out, in] -> [out, in] fp32 (see scores.scores_ref)."""
    return scores_ref(weight, method, norm, contrast_norm, protect, seed)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask [out, in] bool keeping the n best of every m consecutive inputs of a row."""
    return nm_mask_ref(scores, n, m)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask [out, in] bool pruning exactly int(in · sparsity) lowest scores of every row."""
    return row_mask_ref(scores, sparsity)


def apply_mask_(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero (to +0.0) the weights where keep is False, in place. weight, keep: [out, in]."""
    return weight.masked_fill_(~keep, 0.0)
