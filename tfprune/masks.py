"""Keep-masks from scores (True = keep), N:M violation counts and OWL layerwise sparsity.

Convention: a mask is a bool tensor shaped like the weight; True keeps the weight, False prunes it.
Ties in the score go to the lower input index (it is kept first).
"""
from __future__ import annotations

import torch

__all__ = ["row_mask_ref", "nm_mask_ref", "nm_violations", "owl_sparsities", "outlier_ratio"]


def row_mask_ref(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per-row unstructured mask: each row of scores [out, in] loses exactly int(in · sparsity) weights,
    the lowest scores (ties: the higher index goes first). Returns bool [out, in]."""
    if scores.dim() != 2:
        raise ValueError(f"row_mask: scores must be [out, in], got shape {tuple(scores.shape)}")
    if not 0 <= sparsity < 1:
        raise ValueError(f"row_mask: sparsity must be in [0, 1), got {sparsity}")
    pruned = int(scores.shape[1] * sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    if pruned:
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        keep.scatter_(1, order[:, scores.shape[1] - pruned :], False)
    return keep


def nm_mask_ref(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask along the input dimension: in every group of m consecutive weights of a row keep the n
    highest scores (ties: the lower index). scores: [out, in], in % m == 0. Returns bool [out, in]."""
    if scores.dim() != 2:
        raise ValueError(f"nm_mask: scores must be [out, in], got shape {tuple(scores.shape)}")
    if not 0 < n < m:
        raise ValueError(f"nm_mask: need 0 < n < m, got {n}:{m}")
    out_features, in_features = scores.shape
    if in_features % m:
        raise ValueError(f"nm_mask: in_features={in_features} is not a multiple of m={m}")
    groups = scores.reshape(out_features, in_features // m, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(out_features, in_features)


def nm_violations(protect: torch.Tensor, n: int, m: int, rows: int) -> int:
    """Groups (over all `rows`) where more than n of m channels are protected, so that some protected
    weights must be pruned. protect: [in] bool."""
    per_group = protect.reshape(-1, m).sum(-1)
    return int((per_group > n).sum()) * rows


def outlier_ratio(scores: list[torch.Tensor], multiple: float) -> float:
    """OWL's outlier ratio of one block: the share of all scores above `multiple` × their mean."""
    total = sum(s.double().sum() for s in scores)
    numel = sum(s.numel() for s in scores)
    threshold = multiple * total / numel
    return float(sum((s > threshold).sum() for s in scores)) / numel


def owl_sparsities(ratios: list[float], sparsity: float, lam: float) -> list[float]:
    """OWL layerwise sparsity: outlier ratios D_l rescaled to [0, 2λ], shifted to mean density 1 − S;
    returns S_l = 1 − D'_l per block (mean S_l equals `sparsity`)."""
    d = torch.tensor(ratios, dtype=torch.float64)
    spread = d.max() - d.min()
    scaled = (d - d.min()) / spread * (2 * lam) if spread > 0 else torch.zeros_like(d)
    density = scaled - scaled.mean() + (1 - sparsity)
    return (1 - density).clamp(0.0, 0.999).tolist()
