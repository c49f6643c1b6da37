"""Checks of a model's weights before any pruning work: nothing non-finite goes in or comes out."""
from __future__ import annotations

import torch

from ..errors import NonFiniteWeightError

__all__ = ["check_finite_weights", "check_finite_tensor"]


def check_finite_tensor(name: str, tensor: torch.Tensor, where: str = "") -> None:
    """Raise NonFiniteWeightError naming the tensor (and `where` it comes from) if it holds NaN or Inf."""
    if tensor.is_floating_point() and not tensor.is_meta and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        origin = f" in {where}" if where else ""
        raise NonFiniteWeightError(f"tensor {name}{origin} holds {bad} NaN/Inf values: the checkpoint is corrupt "
                                   "(re-download or re-convert it); nothing was pruned or written")


def check_finite_weights(named_tensors, where: str = "") -> None:
    """check_finite_tensor over (name, tensor) pairs, e.g. model.named_parameters()."""
    for name, tensor in named_tensors:
        check_finite_tensor(name, tensor.detach(), where)
