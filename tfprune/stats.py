"""Per-input-channel activation statistics of one linear layer (never stores the activations)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import ops
from .errors import NonFiniteActivationError

__all__ = ["ChannelStats", "channel_stats_ref"]


def channel_stats_ref(x: torch.Tensor, tau: float, token_mask: torch.Tensor | None = None):
    """Statistics of one batch of activations (pure torch reference).

    x: [T, C] any float dtype; token_mask: [T] bool (True = a real token) or None.
    Returns (sumsq [C] fp32, maxabs [C] fp32, count [C] int64, n [] int64): Σx², max|x|, #(|x| > tau)
    over the real tokens, and their number. NaN propagates into maxabs; Inf shows there too.
    """
    if x.dim() != 2:
        raise ValueError(f"channel_stats: x must be [tokens, channels], got shape {tuple(x.shape)}")
    if token_mask is not None:
        if token_mask.shape != (x.shape[0],):
            raise ValueError(f"channel_stats: token_mask must be [{x.shape[0]}], got {tuple(token_mask.shape)}")
        x = x[token_mask.to(torch.bool)]
    x = x.float()
    absx = x.abs()
    if x.shape[0] == 0:
        zeros = torch.zeros(x.shape[1], dtype=torch.float32, device=x.device)
        return zeros, zeros.clone(), torch.zeros(x.shape[1], dtype=torch.int64, device=x.device), torch.tensor(0)
    return (
        x.square().sum(0),
        absx.amax(0),
        (absx > tau).sum(0, dtype=torch.int64),
        torch.tensor(x.shape[0], dtype=torch.int64),
    )


@dataclass
class ChannelStats:
    """Running statistics over every calibration token seen by one linear layer.

    n: [] int64 token count; sumsq: [C] fp64 Σx_j² (fp32 partials summed in fp64);
    maxabs: [C] fp32 max|x_j|; count: [C] int64 number of tokens with |x_j| > tau.
    """

    sumsq: torch.Tensor
    maxabs: torch.Tensor
    count: torch.Tensor
    n: torch.Tensor
    tau: float

    @classmethod
    def empty(cls, channels: int, tau: float, device: torch.device | str = "cpu") -> "ChannelStats":
        return cls(
            sumsq=torch.zeros(channels, dtype=torch.float64, device=device),
            maxabs=torch.zeros(channels, dtype=torch.float32, device=device),
            count=torch.zeros(channels, dtype=torch.int64, device=device),
            n=torch.zeros((), dtype=torch.int64, device=device),
            tau=tau,
        )

    def update(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> None:
        """Add a batch of activations x: [T, C] (token_mask: [T] bool, True = real token)."""
        ops.accumulate_channel_stats_(x, self.tau, token_mask, self.sumsq, self.maxabs, self.count, self.n)

    @property
    def norm(self) -> torch.Tensor:
        """‖X_j‖₂ over all calibration tokens: [C] fp64."""
        return self.sumsq.sqrt()

    @property
    def channels(self) -> int:
        return self.sumsq.numel()

    def check_finite(self, where: str) -> None:
        """Raise NonFiniteActivationError naming `where` if any activation was NaN or Inf."""
        bad = ~torch.isfinite(self.maxabs) | ~torch.isfinite(self.sumsq)
        if bad.any():
            channels = bad.nonzero().flatten()[:5].tolist()
            raise NonFiniteActivationError(
                f"NaN/Inf activations at the input of {where} (channels {channels}...): "
                "check the model's dtype (fp16 overflow?) and its weights"
            )
