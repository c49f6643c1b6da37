"""Where a causal LM keeps what tfprune prunes, found from the model itself (no table of families).

- Decoder blocks: the ModuleList of identical blocks under the base model. Candidates are ModuleLists whose
  children share one class; a class named in transformers' `_no_split_modules` (the model's own list of blocks
  that must stay on one device) wins, and among candidates the one holding the most parameters is the decoder
  stack. A model family nobody listed works without code changes.
- Prunable matrices of a block (`targets`): every nn.Linear and transformers Conv1D inside it, and every expert
  matrix of fused mixture-of-experts parameters (transformers 5 stores a block's experts as 3-D tensors
  `gate_up_proj` / `up_proj` [E, out, in] and `down_proj` [E, out, in], or [E, in, out] where the class says
  `is_transposed`). The one override: routers (the linear that scores experts, out_features = number of experts,
  or the 1-output gate of a shared expert) stay dense, as in llm-compressor's and SparseGPT's MoE recipes; their
  outputs decide where every token goes, and they are a negligible share of the weights.
- The embeddings and the LM head are outside the blocks: never pruned.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

__all__ = ["Target", "decoder_layers", "layers_path", "check_architecture", "targets", "find_linears",
           "weight_matrix", "expert_modules", "routed_linears", "block_norms"]

_FUSED_EXPERT_PARAMS = ("gate_up_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Target:
    """One prunable weight matrix of a decoder block.

    name: unique inside the block ("self_attn.q_proj", "mlp.experts.gate_up_proj.3"); module_name: the owning
    module inside the block; param: its parameter holding the weight; expert: index into a fused [E, ...]
    parameter, else None; transposed: the stored matrix is [in, out] (Conv1D, transposed experts)."""

    name: str
    module_name: str
    module: nn.Module
    param: str
    expert: int | None = None
    transposed: bool = False

    def matrix(self) -> torch.Tensor:
        """The live weight as an [out, in] view: in-place edits reach the model."""
        return self.view(getattr(self.module, self.param).data)

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """This target's [out, in] view of `tensor`, a tensor shaped like its parameter (a copy of it)."""
        if self.expert is not None:
            tensor = tensor[self.expert]
        return tensor.t() if self.transposed else tensor

    @property
    def parameter_name(self) -> str:
        """The parameter's name inside the block's state dict ("self_attn.q_proj.weight")."""
        return f"{self.module_name}.{self.param}" if self.module_name else self.param

    @property
    def is_linear(self) -> bool:
        """An nn.Linear (what 2:4 formats and SparseLinear take), not a Conv1D or an expert slice."""
        return isinstance(self.module, nn.Linear)


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """(name, list) of every ModuleList of at least one child whose children all have one class."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(child) for child in module}) == 1:
            found.append((name, module))
    return found


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _stack(model: nn.Module) -> tuple[str, nn.ModuleList]:
    candidates = [(name, blocks) for name, blocks in _block_lists(model) if any(
        isinstance(m, (nn.Linear, _conv1d())) for m in blocks[0].modules())]
    if not candidates:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: no stack of identical decoder blocks with linear layers was found; tfprune "
            "prunes decoder-only causal LMs (a ModuleList of blocks under the base model)")
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    preferred = [c for c in candidates if type(c[1][0]).__name__ in no_split]
    return max(preferred or candidates, key=lambda c: _params(c[1]))


def check_architecture(model_or_config) -> None:
    """Refuse what tfprune cannot prune: encoder-decoder models (a config or a model may be given)."""
    config = getattr(model_or_config, "config", model_or_config)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(
            f"{getattr(config, 'model_type', '?')} is an encoder-decoder model: tfprune prunes decoder-only "
            "causal LMs")
    if isinstance(model_or_config, nn.Module):
        _stack(model_or_config)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a CausalLM, in order (see the module docstring for how they are found)."""
    return _stack(model)[1]


def layers_path(model: nn.Module) -> str:
    """The dotted name of the decoder blocks' ModuleList inside the model ("model.layers")."""
    return _stack(model)[0]


def _conv1d():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def expert_modules(block: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the fused mixture-of-experts modules of a block: 3-D expert weight parameters."""
    found = {}
    for name, module in block.named_modules():
        params = [getattr(module, p, None) for p in _FUSED_EXPERT_PARAMS]
        if any(isinstance(p, nn.Parameter) and p.dim() == 3 for p in params):
            found[name] = module
    return found


def _num_experts(parent: nn.Module) -> int | None:
    experts = getattr(parent, "experts", None)
    if experts is None:
        return None
    if isinstance(experts, nn.ModuleList):
        return len(experts)
    return getattr(experts, "num_experts", None)


def _is_router(name: str, module: nn.Module, block: nn.Module) -> bool:
    parent_name, _, _ = name.rpartition(".")
    parent = block.get_submodule(parent_name) if parent_name else block
    count = _num_experts(parent)
    return count is not None and isinstance(module, nn.Linear) and module.out_features in (count, 1)


def routed_linears(block: nn.Module) -> set[str]:
    """Names of the nn.Linear layers inside per-expert modules (a ModuleList called `experts`, as transformers
    4.x builds MoE blocks): each sees only the tokens routed to its expert."""
    names = set()
    for name, module in block.named_modules():
        if isinstance(module, (nn.Linear, _conv1d())) and ".experts." in f".{name}":
            names.add(name)
    return names


def find_linears(block: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: module} of every nn.Linear and transformers Conv1D inside `block`, in order, routers
    excluded."""
    conv1d = _conv1d()
    return {name: module for name, module in block.named_modules()
            if isinstance(module, (nn.Linear, conv1d)) and not _is_router(name, module, block)}


def targets(block: nn.Module) -> dict[str, Target]:
    """{name: Target} of every prunable matrix of `block`: linears (find_linears) and fused expert matrices."""
    conv1d = _conv1d()
    found = {name: Target(name, name, module, "weight", transposed=isinstance(module, conv1d))
             for name, module in find_linears(block).items()}
    for module_name, module in expert_modules(block).items():
        transposed = bool(getattr(module, "is_transposed", False))
        for param in _FUSED_EXPERT_PARAMS:
            weight = getattr(module, param, None)
            if isinstance(weight, nn.Parameter) and weight.dim() == 3:
                for expert in range(weight.shape[0]):
                    name = f"{module_name}.{param}.{expert}" if module_name else f"{param}.{expert}"
                    found[name] = Target(name, module_name, module, param, expert, transposed)
    return found


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight of an nn.Linear or Conv1D as an [out, in] view (Conv1D stores [in, out])."""
    return module.weight.data.t() if isinstance(module, _conv1d()) else module.weight.data


def block_norms(block: nn.Module, hidden_size: int) -> dict[str, nn.Module]:
    """{name: module} of the normalization layers of a block that act on the hidden states (a [hidden_size]
    weight; q/k norms over the head dimension are not among them)."""
    return {name: module for name, module in block.named_modules()
            if "norm" in type(module).__name__.lower() and isinstance(getattr(module, "weight", None), torch.Tensor)
            and module.weight.shape == (hidden_size,)}
