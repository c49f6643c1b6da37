"""Pruning scores of a weight matrix (pure torch references; tfprune.ops dispatches to them)."""
from __future__ import annotations

import torch

__all__ = ["scores_ref", "SCORE_METHODS", "TENSOR_SCORES", "RIA_POWER"]

SCORE_METHODS = ("magnitude", "wanda", "contrastive", "random", "ria")
# scores that are not |W_ij| times a per-channel factor: the kernels take them as a precomputed score tensor
TENSOR_SCORES = ("random", "ria")
RIA_POWER = 0.5  # RIA's exponent a of ‖X_j‖₂ (Zhang et al., ICLR 2024)


def scores_ref(
    weight: torch.Tensor,
    method: str,
    norm: torch.Tensor | None = None,
    contrast_norm: torch.Tensor | None = None,
    protect: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Score of every weight; higher = more important. Returns [out, in] fp32.

    weight: [out, in]; norm: [in] ‖X_j‖₂ of the (translation) calibration stream;
    contrast_norm: [in] ‖X^contrast_j‖₂ (method 'contrastive'); protect: [in] bool, channels scored +inf.
      magnitude   |W_ij|
      wanda       |W_ij| · ‖X_j‖₂
      contrastive |W_ij| · ‖X_j‖₂² / ‖X^contrast_j‖₂   (a channel unseen by the contrast stream counts as 1)
      random      uniform in [0, 1), seeded
      ria         (|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ‖X_j‖₂^0.5   (relative importance: the weight's
                  share of its row and of its column; Zhang et al., "Plug-and-Play", ICLR 2024)
    """
    if weight.dim() != 2:
        raise ValueError(f"scores: weight must be [out, in], got shape {tuple(weight.shape)}")
    in_features = weight.shape[1]
    for name, vec in (("norm", norm), ("contrast_norm", contrast_norm), ("protect", protect)):
        if vec is not None and vec.shape != (in_features,):
            raise ValueError(f"scores: {name} must be [{in_features}], got {tuple(vec.shape)}")
    if method == "magnitude":
        score = weight.abs().float()
    elif method == "wanda":
        _require(norm, "norm", method)
        score = weight.abs().float() * norm.to(weight.device, torch.float32)[None, :]
    elif method == "contrastive":
        _require(norm, "norm", method)
        _require(contrast_norm, "contrast_norm", method)
        contrast = contrast_norm.to(weight.device, torch.float64)
        contrast = torch.where(contrast > 0, contrast, torch.ones_like(contrast))
        channel = (norm.to(weight.device, torch.float64).square() / contrast).float()
        score = weight.abs().float() * channel[None, :]
    elif method == "ria":
        _require(norm, "norm", method)
        magnitude = weight.abs().to(torch.float64)
        rows = magnitude.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        cols = magnitude.sum(0, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        channel = norm.to(weight.device, torch.float64).pow(RIA_POWER)[None, :]
        score = ((magnitude / rows + magnitude / cols) * channel).float()
    elif method == "random":
        generator = torch.Generator().manual_seed(seed)
        score = torch.rand(weight.shape, generator=generator).to(weight.device)
    else:
        raise ValueError(f"unknown score method {method!r}; choose one of {', '.join(SCORE_METHODS)}")
    if protect is not None:
        score[:, protect.to(weight.device, torch.bool)] = float("inf")
    return score


def _require(vec, name, method):
    if vec is None:
        raise ValueError(f"scores: method {method!r} needs {name}")
