"""Pruning one weight matrix of a decoder block from its calibration statistics: score, mask, zero (and
SparseGPT's OBS update), then its LayerReport.

A matrix that received no calibration token (an expert the router never chose) has no activation statistics:
it is pruned by magnitude |W| (the best data-free score), without the OBS update, and its report says so; no
score divides by its zero norms."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from .. import masks, ops, sparsegpt
from ..config import PruneConfig
from ..errors import NonFiniteActivationError
from ..features import protected_channels, top_channels
from ..report import LayerReport
from ..stats import ChannelStats
from .discovery import Target

__all__ = ["prune_target", "kept_dense_report", "mask_selection", "MaskSelection", "UNSEEN_NOTE",
           "KEPT_DENSE_NOTE"]

log = logging.getLogger("tfprune")
UNSEEN_NOTE = "no calibration token reached it: pruned by magnitude"
KEPT_DENSE_NOTE = "kept dense (sensitivity-aware allocation)"


@dataclass(frozen=True, eq=False)
class MaskSelection:
    """How one matrix's keep-mask is chosen from its weights: the score of `method` (tfprune.scores; protected
    channels +inf) and the pattern (N:M, else per-row `sparsity`). What prune_target applies once and the
    learned-mask reconstruction applies to the current weights at every step. For 'sparsegpt' it is Wanda's
    score: where the pattern forces protected weights out (more than N protected channels in a group), the
    re-selection keeps the lower channels (the tie rule), not OBS's choice."""

    method: str
    sparsity: float
    nm: tuple[int, int] | None = None
    norm: torch.Tensor | None = None  # [in] fp32 ‖X_j‖₂ of the translation stream
    contrast_norm: torch.Tensor | None = None  # [in] fp32, method 'contrastive'
    protect: torch.Tensor | None = None  # [in] bool
    seed: int = 0

    def keep(self, weight: torch.Tensor, apply: bool = False) -> torch.Tensor:
        """The keep-mask [out, in] bool of weight: [out, in] (a view is fine); apply=True also zeroes it."""
        return ops.prune_weight_(weight, self.method, sparsity=self.sparsity, nm=self.nm, norm=self.norm,
                                 contrast_norm=self.contrast_norm, protect=self.protect, seed=self.seed,
                                 apply=apply)


def mask_selection(stats: dict[str, ChannelStats], config: PruneConfig, sparsity: float,
                   seed: int) -> MaskSelection:
    """The MaskSelection of a matrix from its input's {stream: ChannelStats}: magnitude for a matrix no token
    reached; for method 'sparsegpt' (whose OBS selection needs H, not the weights alone) the Wanda score."""
    translation = stats["translation"]
    if int(translation.n) == 0:
        return MaskSelection("magnitude", sparsity, config.nm)
    rule = config.protect_rule
    contrast = stats.get("contrast")
    return MaskSelection("wanda" if config.method == "sparsegpt" else config.method, sparsity, config.nm,
                         norm=translation.norm, contrast_norm=None if contrast is None else contrast.norm,
                         protect=protected_channels(translation, rule) if rule is not None else None, seed=seed)


def prune_target(name: str, target: Target, stats: dict[str, ChannelStats], config: PruneConfig,
                 selection: MaskSelection, hessian=None) -> LayerReport:
    """Score, mask and zero one matrix in place; returns its report. stats: {stream: ChannelStats} of its
    input; selection: its mask_selection (method 'sparsegpt' selects by OBS instead, with its sparsity and
    protected channels); hessian: its sparsegpt.HessianFactor (or H = XᵀX [in, in]), needed when
    config.update == 'obs'."""
    start = time.perf_counter()
    weight = target.matrix()
    translation = stats["translation"]
    translation.check_finite(name)
    contrast = stats.get("contrast")
    if contrast is not None:
        contrast.check_finite(f"{name} (contrast stream)")
    sparsity = selection.sparsity
    if int(translation.n) == 0:
        log.info("%s: %s", name, UNSEEN_NOTE)
        selection.keep(weight, apply=True)
        return _report(name, weight, translation, None, 0, config, sparsity, start, UNSEEN_NOTE)
    protect = selection.protect
    if config.update == "obs":
        hessian = _obs_hessian(name, hessian, translation, config)
    if config.method == "sparsegpt":
        pattern = {"nm": config.nm} if config.nm is not None else {"sparsity": sparsity}
        result = sparsegpt.sparsegpt_prune_(weight, hessian, protect=protect, blocksize=config.obs_blocksize,
                                            name=name, **pattern)
        log.debug("%s: OBS loss %.4g, dampening %.3g, %d dead channels", name, result.loss, result.dampening,
                  result.dead)
        return _report(name, weight, translation, protect, result.violations, config, sparsity, start)
    # one fused score + mask (+ apply) pass; the OBS update needs the mask before the weights change
    keep = selection.keep(weight, apply=config.update != "obs")
    violations = 0
    if config.nm is not None and protect is not None:
        n, m = config.nm
        violations = masks.nm_violations(protect, n, m, weight.shape[0])
    if config.update == "obs":
        sparsegpt.sparsegpt_prune_(weight, hessian, keep=keep, blocksize=config.obs_blocksize, name=name)
        ops.apply_mask_(weight, keep)
    return _report(name, weight, translation, protect, violations, config, sparsity, start)


def kept_dense_report(name: str, target: Target, translation: ChannelStats, config: PruneConfig) -> LayerReport:
    """The report of a matrix the layer plan leaves dense (target sparsity 0, the weight untouched)."""
    return _report(name, target.matrix(), translation, None, 0, config, 0.0, time.perf_counter(), KEPT_DENSE_NOTE)


def _report(name: str, weight: torch.Tensor, translation: ChannelStats, protect, violations: int,
            config: PruneConfig, sparsity: float, start: float, note: str = "") -> LayerReport:
    """The report of one pruned matrix (weight: its pruned [out, in] view); refuses a non-finite result."""
    if not bool(torch.isfinite(weight).all()):
        raise NonFiniteActivationError(f"{name}: the pruned weight holds NaN/Inf; nothing was written "
                                       "(check the model's dtype and the calibration)")
    return LayerReport(
        name=name,
        shape=tuple(weight.shape),
        target_sparsity=sparsity,
        sparsity=float((weight == 0).sum()) / weight.numel(),
        top_channels=top_channels(translation, config.report_topk) if int(translation.n) else [],
        protected=[] if protect is None else protect.nonzero().flatten().tolist(),
        violations=violations,
        seconds=time.perf_counter() - start,
        tokens=int(translation.n),
        note=note,
    )


def _obs_hessian(name: str, hessian, stats: ChannelStats, config: PruneConfig) -> sparsegpt.HessianFactor:
    """The layer's HessianFactor, checked against its channel statistics (diag H must be their Σx²)."""
    if hessian is None:
        raise RuntimeError(f"{name}: update 'obs' needs the layer's Hessian: pass "
                           "collect_block_stats(..., hessians=sparsegpt.HessianCollector()) results to prune_target")
    if not isinstance(hessian, sparsegpt.HessianFactor):
        hessian = sparsegpt.factorize(hessian, config.dampening, name)
    sparsegpt.check_hessian(hessian, stats.sumsq, name)
    return hessian
