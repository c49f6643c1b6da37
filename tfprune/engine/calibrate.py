"""Calibrating one decoder block: per-channel statistics (and SparseGPT's H) of the input of every prunable
matrix, accumulated by forward hooks over every calibration batch; padding never counts.

- nn.Linear / Conv1D: a forward hook reads the module's input.
- Mixture of experts: each expert's matrices are scored with the statistics of the tokens routed to it.
  Fused experts (transformers 5: 3-D parameters): a pre-hook on the experts module receives the hidden states
  [S, H] and the router's choice top_k_index [S, k]; for every expert it takes the rows routed to it (and their
  token mask) as the input of gate_up_proj / up_proj, and recomputes the expert's activation
  (`module._apply_gate`, the class's own gating) as the input of down_proj. Per-expert modules (transformers 4:
  a ModuleList of MLPs) receive only their tokens' rows, which cannot be matched to the token mask: the engine
  calibrates such models one prompt per batch, so that no padding exists (see `needs_unpadded_batches`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import sparsegpt
from ..stats import ChannelStats
from .capture import LayerInput, run_block
from .discovery import expert_modules, find_linears, routed_linears, targets

__all__ = ["collect_block_stats", "needs_unpadded_batches"]


def needs_unpadded_batches(blocks) -> bool:
    """Whether some block has per-expert linear modules (they see routed rows only, not the token mask)."""
    return any(routed_linears(block) for block in blocks)


def _expert_weight(module: nn.Module, param: str, expert: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in], bias [out] or None) of one expert of a fused experts module."""
    weight = getattr(module, param)[expert]
    if getattr(module, "is_transposed", False):
        weight = weight.t()
    bias = getattr(module, f"{param}_bias", None)
    return weight, None if bias is None else bias[expert]


@torch.no_grad()
def collect_block_stats(block: nn.Module, index: int, inputs: list[LayerInput], tau: float,
                        hessians: sparsegpt.HessianCollector | None = None,
                        on_output: Callable[[torch.Tensor], None] | None = None) -> dict[str, dict[str, ChannelStats]]:
    """Per-stream, per-target ChannelStats of block `index` over all calibration batches: {stream: {name:
    stats}}; every target of the block has an entry per stream (an expert no token reached: n = 0).
    hessians: if given, the same hooks also accumulate H = XᵀX of every target over the translation stream.
    on_output: if given, called with the block's output [B, T, H] of every batch, in batch order (the
    reconstruction's targets)."""
    names = targets(block)
    routed = routed_linears(block)
    streams = {item.stream for item in inputs}
    stats = {stream: {} for stream in streams}
    current: dict = {}

    def accumulate(name: str, inp: torch.Tensor, x: torch.Tensor, mask: torch.Tensor | None) -> None:
        per_stream = stats[current["stream"]]
        if name not in per_stream:
            per_stream[name] = ChannelStats.empty(x.shape[-1], tau, x.device)
        if not x.shape[0]:
            return  # an expert no token of this batch reached
        per_stream[name].update(x, mask)
        if hessians is not None and current["stream"] == "translation":
            hessians.add(name, inp, x, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
                         if mask is None else mask)

    def linear_hook(name: str):
        def hook(_module, args, _output):
            inp = args[0]
            x = inp.reshape(-1, inp.shape[-1])
            mask = current["mask"]
            if x.shape[0] != mask.numel():
                if name not in routed or not bool(mask.all()):
                    raise RuntimeError(f"{index}.{name}: {x.shape[0]} input rows for {mask.numel()} tokens")
                mask = None  # an expert's routed rows of an unpadded batch: all real tokens
            accumulate(name, inp, x, mask)

        return hook

    def experts_hook(module_name: str):
        prefix = f"{module_name}." if module_name else ""

        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            top_k_index = args[1] if len(args) > 1 else kwargs["top_k_index"]
            x = hidden.reshape(-1, hidden.shape[-1])
            mask = current["mask"]
            if x.shape[0] != mask.numel():
                raise RuntimeError(f"{index}.{module_name}: {x.shape[0]} rows for {mask.numel()} tokens")
            first = "gate_up_proj" if getattr(module, "gate_up_proj", None) is not None else "up_proj"
            for expert in range(getattr(module, first).shape[0]):
                rows = (top_k_index == expert).any(-1).nonzero().flatten()
                x_e, mask_e = x[rows], mask[rows]
                accumulate(f"{prefix}{first}.{expert}", x_e, x_e, mask_e)
                weight, bias = _expert_weight(module, first, expert)
                projected = F.linear(x_e, weight, bias)
                inner = module._apply_gate(projected) if first == "gate_up_proj" else module.act_fn(projected)
                accumulate(f"{prefix}down_proj.{expert}", inner, inner, mask_e)

        return hook

    handles = [module.register_forward_hook(linear_hook(name)) for name, module in find_linears(block).items()]
    handles += [module.register_forward_pre_hook(experts_hook(name), with_kwargs=True)
                for name, module in expert_modules(block).items()]
    try:
        for item in inputs:
            current.update(stream=item.stream, mask=item.token_mask)
            if hessians is not None:
                hessians.new_batch()
            output = run_block(block, item, index)
            if on_output is not None:
                on_output(output)
    finally:
        for handle in handles:
            handle.remove()
        if hessians is not None:
            hessians.new_batch()
    for stream in streams:
        for name, target in names.items():
            if name not in stats[stream]:  # no token reached it (an unused expert)
                stats[stream][name] = ChannelStats.empty(target.matrix().shape[1], tau, target.matrix().device)
    return stats
