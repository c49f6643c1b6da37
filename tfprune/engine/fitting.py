"""What a fit after pruning trains, shared by the block-wise reconstruction (one block) and the end-to-end
distillation (every block): the kept weights of the decoder blocks' prunable matrices, their masks fixed, and
the blocks' normalization weights, in float32 whatever the model's dtype.

A pruned weight's gradient is zeroed before every optimizer step (Adam's moments and steps of it stay zero, so
it stays +0.0) and it is reset to +0.0 after the cast back: the N:M / per-row pattern stays exact. A matrix
left dense (kept by the layer plan) has no zero to keep and is fitted whole.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from .discovery import targets

__all__ = ["KeptWeights", "fitting_in_float32", "norm_modules", "fitted_parameter_names"]


def norm_modules(block: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the block's normalization layers that have a weight (LayerNorm, RMSNorm, ...)."""
    return {name: module for name, module in block.named_modules()
            if "norm" in type(module).__name__.lower() and isinstance(getattr(module, "weight", None), nn.Parameter)}


def fitted_parameter_names(block: nn.Module) -> set[str]:
    """Names (relative to the block) of the parameters a fit changes: the pruned matrices and the
    normalization weights (what a writer must take from the block rather than from the checkpoint)."""
    return ({target.parameter_name for target in targets(block).values()}
            | {f"{name}.weight" for name in norm_modules(block)})


def _unique(params) -> list[nn.Parameter]:
    return list({id(p): p for p in params}.values())


class KeptWeights:
    """The parameters a fit trains in `blocks`: `matrices`, the prunable matrices (a fused experts parameter
    [E, out, in] once, though it holds E matrices) but those in `exclude` (the learned-mask reconstruction
    trains those itself), with their keep-masks (nonzero when made: make it after the cast to float32, before
    any step), and `norms`, the normalization weights."""

    def __init__(self, blocks: list[nn.Module], exclude: list[nn.Parameter] = ()):
        excluded = {id(p) for p in exclude}
        self.matrices = [p for p in _unique(getattr(t.module, t.param) for block in blocks
                                            for t in targets(block).values()) if id(p) not in excluded]
        self.norms = _unique(module.weight for block in blocks for module in norm_modules(block).values())
        self.keeps = [p.data != 0 for p in self.matrices]

    @property
    def parameters(self) -> list[nn.Parameter]:
        return _unique(self.matrices + self.norms)

    def mask_gradients_(self) -> None:
        """Zero the gradient of every pruned weight (before the optimizer's step)."""
        for p, keep in zip(self.matrices, self.keeps):
            if p.grad is not None:  # None: an expert no token of this batch was routed to
                p.grad.masked_fill_(~keep, 0.0)

    @torch.no_grad()
    def reset_pruned_(self) -> None:
        """+0.0 again at every pruned weight (after the cast back to the model's dtype)."""
        for p, keep in zip(self.matrices, self.keeps):
            p.masked_fill_(~keep, 0.0)

    def finite(self, extra: list[nn.Parameter] = ()) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.parameters + list(extra))


def _tensor_dtypes(module: nn.Module) -> dict[str, torch.dtype]:
    """The dtype of every parameter and buffer of the module, by name (a block may mix them: float32 rotary
    inv_freq or norms beside bf16 weights)."""
    return {name: t.dtype for name, t in [*module.named_parameters(), *module.named_buffers()]}


def _restore_dtypes(module: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Cast the module back to the dtype of its first parameter (nn.Module.to: the Parameter objects and the
    gradients' dtypes follow), and every parameter or buffer recorded with another dtype (by _tensor_dtypes)
    to its own, from its float32 value (not through the first parameter's dtype)."""
    main = next(iter(dtypes.values()))
    others = {name: t for name, t in [*module.named_parameters(), *module.named_buffers()] if dtypes[name] != main}
    kept = {name: t.detach().clone() for name, t in others.items()}
    module.to(main)
    for name, param in module.named_parameters():
        if name in kept:
            param.data = kept[name].to(dtypes[name])
    for module_name, sub in module.named_modules():
        for key in list(sub._buffers):
            name = f"{module_name}.{key}" if module_name else key
            if name in kept:
                sub._buffers[key] = kept[name].to(dtypes[name])


@contextmanager
def fitting_in_float32(module: nn.Module):
    """The module in float32 with every parameter's requires_grad off (the fit turns on what it trains); on
    exit, whatever failed inside (out of memory included), every parameter and buffer back in its own dtype
    and every requires_grad flag as it was."""
    dtypes = _tensor_dtypes(module)
    flags = {id(p): p.requires_grad for p in module.parameters()}
    try:
        module.float()
        for p in module.parameters():
            p.requires_grad_(False)
        yield module
    finally:
        for p in module.parameters():
            p.requires_grad_(flags.get(id(p), False))
            p.grad = None
        _restore_dtypes(module, dtypes)
