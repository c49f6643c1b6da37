"""Block-wise reconstruction: optimizer steps per decoder block (256 by default for N:M), the masks fixed or
learned, bring the pruned block's output back to the dense block's on the calibration activations.

For block i, X are the calibration batches at its input (what the pruned blocks before it produce) and Y the
dense block's output on them (recorded while its statistics were collected, before pruning). Adam minimizes the
relative squared error Σ‖B̃(X) − Y‖² / Σ‖Y‖² over the real tokens (padding excluded), one batch per step in turn
(the total, not the mean per-token error: on Gemma 3 the first token of each prompt, the attention sink, holds
40–60 % of Σ‖Y‖² in the middle blocks, and weighing every token alike was worse: benchmarks/README.md),
updating only the kept weights of the block's pruned matrices (their gradients are masked, so Adam's moments and
steps of the pruned weights stay zero, and they are reset to +0.0 after the cast back: the N:M / per-row pattern
stays exact) and the block's normalization weights.
With learned masks (`selections`, config.reconstruct_mask 'learned'), the pruned weights are not frozen: a
float32 copy of each pruned matrix (the latent weights: the kept weights as pruning left them, OBS-updated or
not, the pruned ones at their dense values) is what Adam updates; at every step each matrix's mask is re-selected
from its latent weights by its MaskSelection (the run's score, pattern and protected channels), the block runs on
the masked latent weights and their gradient is passed straight through to every latent weight (STE), so that a
pruned weight the loss pulls back can replace a kept one. The result is the masked latent weights: the pattern
stays exact. A matrix the plan keeps dense inside a fused experts parameter is fitted as a dense matrix.
The block is optimized in float32 whatever its dtype and cast back, each tensor to its own dtype. Memory: the
float32 block, its gradients and Adam's two moments (16 bytes per weight, counted by the streaming engine's
plan; learned masks add the latent copy, 4 more, the dense matrices until their latent copies are made, and two
sets of masks, 1 byte each: the first step's, kept to report the change, and each step's; all counted; not
counted: one matrix's score and selection temporaries per step), one batch's autograd state (not counted), and
the targets Y, one more copy of the activations.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import NonFiniteActivationError
from .capture import run_block
from .discovery import Target, targets
from .fitting import KeptWeights, fitting_in_float32
from .layer import MaskSelection

__all__ = ["BlockReconstruction", "reconstruct_block_", "relative_error", "goal_keeper"]

log = logging.getLogger("tfprune")


@dataclass
class BlockReconstruction:
    """One block's reconstruction: relative output error on the calibration batches before and after, the
    steps taken, seconds spent and (learned masks) the share of the weights whose mask changed."""

    index: int
    error_before: float
    error_after: float
    steps: int
    seconds: float
    # learned masks: share of their weights whose keep flag the fit changed, from the fit's first selection (for
    # Wanda-style scores the one-shot mask; sparsegpt's OBS mask and --update obs may already differ from it)
    mask_changed: float = 0.0


def goal_keeper(inputs, goals: list[torch.Tensor]):
    """The on_output callback of collect_block_stats that appends the dense block's output [B, T, H] of each
    batch to `goals`: on the device when the activations are there, else in host memory beside them."""
    on_device = getattr(inputs, "tier", "device") == "device"
    return lambda output: goals.append(output if on_device else output.cpu())


def _cast(value, dtype: torch.dtype):
    """A batch's tensors (LayerInput fields, nested arguments) with the floating point ones in `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(item, dtype) for item in value)
    if isinstance(value, dict):
        return {key: _cast(item, dtype) for key, item in value.items()}
    return value


def _batch(inputs, i: int, dtype: torch.dtype):
    """Batch i of `inputs` in the dtype of the block that runs it (float32 while fitting, else its own)."""
    item = inputs[i]
    if item.hidden.dtype == dtype:
        return item
    return replace(item, hidden=item.hidden.to(dtype), arguments=_cast(item.arguments, dtype))


@torch.no_grad()
def relative_error(block: nn.Module, index: int, inputs, goals: list[torch.Tensor], stream: str | None = None) -> float:
    """Σ‖block(X) − Y‖² / Σ‖Y‖² over the real tokens of every batch, or of the batches of one calibration stream
    (float64 sums, on the activations' device: one host sync at the end): what the fit minimizes and the
    allocation (tfprune.engine.plan) measures."""
    error = norm = 0.0  # float64 tensors after the first batch
    dtype = next(block.parameters()).dtype
    streams = [item.stream for item in getattr(inputs, "items", inputs)]  # without loading a stored batch
    for i in range(len(inputs)):
        if stream is not None and streams[i] != stream:
            continue
        item = _batch(inputs, i, dtype)
        output = run_block(block, item, index)
        real = item.token_mask.reshape(output.shape[:2])
        goal = goals[i].to(output.device)[real].double()
        error = error + (output[real].double() - goal).square().sum()
        norm = norm + goal.square().sum()
    return float(error) / max(float(norm), 1e-30)


class _LearnedMasks:
    """The latent float32 weights of the matrices whose masks are learned, grouped by parameter (a fused experts
    parameter holds several matrices): `mask_()` writes each parameter's masked latent weights into it.
    selections: {target name: MaskSelection}; dense_weights: {target name: [out, in]} the matrices before pruning,
    the latent values of the pruned weights (consumed: each is dropped from the dict once its latent is made)."""

    def __init__(self, block: nn.Module, selections: dict[str, MaskSelection],
                 dense_weights: dict[str, torch.Tensor]):
        members: dict[int, tuple[nn.Parameter, list[tuple[Target, MaskSelection]]]] = {}
        for name, target in targets(block).items():
            if name in selections:
                param = getattr(target.module, target.param)
                members.setdefault(id(param), (param, []))[1].append((target, selections[name]))
        self.groups = list(members.values())
        self.latents = []
        with torch.no_grad():
            for param, group in self.groups:
                latent = param.detach().clone()  # float32: the block is
                for target, _ in group:
                    view = target.view(latent)
                    torch.where(view != 0, view, dense_weights.pop(target.name).to(view), out=view)
                self.latents.append(latent.requires_grad_(True))

    @torch.no_grad()
    def mask_(self) -> list[list[torch.Tensor]]:
        """Re-select every mask from the latent weights and write the masked latent weights into the block's
        parameters (a matrix of the parameter without a selection, kept dense, takes its latent weights);
        returns the keep-masks [out, in] bool, per parameter, per matrix."""
        keeps = []
        for (param, group), latent in zip(self.groups, self.latents):
            param.data.copy_(latent)
            keeps.append([])
            for target, selection in group:
                keep = selection.keep(target.view(latent))
                target.view(param.data).masked_fill_(~keep, 0.0)
                keeps[-1].append(keep)
        return keeps

    def pass_gradients_(self) -> None:
        """Straight-through: each latent weight takes the gradient of its masked parameter."""
        for (param, _), latent in zip(self.groups, self.latents):
            latent.grad, param.grad = param.grad, None

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [param for param, _ in self.groups]

    @staticmethod
    def changed(first: list[list[torch.Tensor]], last: list[list[torch.Tensor]]) -> float:
        """The share of the learned matrices' weights whose keep flag differs between two mask_() results."""
        pairs = [(a, b) for group_a, group_b in zip(first, last) for a, b in zip(group_a, group_b)]
        return sum(int((a != b).sum()) for a, b in pairs) / max(sum(a.numel() for a, _ in pairs), 1)


def reconstruct_block_(block: nn.Module, index: int, inputs, goals: list[torch.Tensor], steps: int,
                       lr: float, selections: dict[str, MaskSelection] | None = None,
                       dense_weights: dict[str, torch.Tensor] | None = None) -> BlockReconstruction:
    """Optimize the kept weights (and the norms; with learned masks, every weight of the learned matrices and
    their masks) of pruned block `index` in place so that its outputs on
    `inputs` (an ActivationStore or list of LayerInput) approach `goals` ([B, T, H] per batch: the dense block's
    outputs on the same inputs). selections: {target name: MaskSelection} of the matrices whose masks are
    learned (see the module docstring), dense_weights: {target name: [out, in]} those matrices before pruning;
    the other matrices keep their masks. Returns the errors before and after."""
    start = time.perf_counter()
    with torch.no_grad():
        before = relative_error(block, index, inputs, goals)
    with fitting_in_float32(block):  # whatever fails, the block gets its dtypes and requires_grad flags back
        learned = _LearnedMasks(block, selections or {}, dense_weights or {})
        kept = KeptWeights([block], exclude=learned.parameters)
        for p in kept.parameters + learned.parameters:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(kept.parameters + learned.latents, lr=lr, fused=True)  # one kernel (CPU, CUDA)
        first = learned.mask_()  # for Wanda-style scores, the one-shot masks (the latent weights are the dense ones)
        with torch.enable_grad():
            for step in range(steps):
                if step:
                    learned.mask_()
                i = step % len(inputs)
                item = _batch(inputs, i, torch.float32)
                output = run_block(block, item, index).float()
                real = item.token_mask.reshape(output.shape[:2])
                goal = goals[i].to(output.device).float()[real]
                loss = (output[real] - goal).square().sum() / goal.square().sum().clamp_min(1e-30)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                learned.pass_gradients_()
                kept.mask_gradients_()
                optimizer.step()  # a fixed mask's pruned weight has had only zero gradients: Adam leaves it at +0.0
        final = learned.mask_()
    kept.reset_pruned_()  # +0.0 again after the cast
    if not kept.finite(learned.parameters):
        raise NonFiniteActivationError(f"block {index}: reconstruction diverged (NaN/Inf weights); lower "
                                       "--reconstruct-lr")
    with torch.no_grad():
        after = relative_error(block, index, inputs, goals)
    result = BlockReconstruction(index, before, after, steps, time.perf_counter() - start,
                                 learned.changed(first, final))
    log.info("block %d: reconstruction %d steps, output error %.4g -> %.4g%s (%.1f s)", index, steps, before, after,
             f", {result.mask_changed:.2%} of the learned masks changed" if learned.groups else "", result.seconds)
    return result
