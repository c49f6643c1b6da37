"""Large-magnitude features (input channels with huge activations) found from ChannelStats."""
from __future__ import annotations

import math

import torch

from .config import ProtectRule
from .stats import ChannelStats

__all__ = ["top_channels", "protected_channels"]


def top_channels(stats: ChannelStats, k: int) -> list[tuple[int, float]]:
    """The k input channels with the largest ‖X_j‖₂, as (channel, norm) pairs, largest first."""
    k = min(k, stats.channels)
    if k == 0:
        return []
    values, indices = torch.topk(stats.norm, k)
    return [(int(i), float(v)) for i, v in zip(indices.tolist(), values.tolist())]


def protected_channels(stats: ChannelStats, rule: ProtectRule) -> torch.Tensor:
    """Channels whose weights are never pruned under `rule`: [C] bool.

    topk: the ceil(fraction · C) channels with the largest ‖X_j‖₂ (at least 1; ties to the lower index).
    int8: channels with |x_j| > tau on at least `fraction` of the calibration tokens (stats.tau is that tau).
    """
    protect = torch.zeros(stats.channels, dtype=torch.bool, device=stats.sumsq.device)
    if rule.kind == "topk":
        k = max(1, math.ceil(rule.fraction * stats.channels))
        order = torch.sort(stats.norm, descending=True, stable=True).indices
        protect[order[:k]] = True
    elif rule.kind == "int8":
        if rule.tau != stats.tau:
            raise ValueError(f"int8 rule threshold {rule.tau} differs from the statistics' tau {stats.tau}")
        tokens = int(stats.n)
        if tokens:
            protect = stats.count.double() >= rule.fraction * tokens
    else:
        raise ValueError(f"unknown protect rule kind {rule.kind!r}")
    return protect
