"""One small table of model families: where the decoder blocks live and which norms feed their linears."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

__all__ = ["Adapter", "ADAPTERS", "adapter_for", "decoder_layers", "find_linears", "weight_matrix"]


@dataclass(frozen=True)
class Adapter:
    """layers: dotted path from the CausalLM to the ModuleList of decoder blocks.
    norms: names (inside a block) of the norms whose outputs feed the attention and MLP linears."""

    layers: str
    norms: tuple[str, ...]


_LLAMA = Adapter("model.layers", ("input_layernorm", "post_attention_layernorm"))
ADAPTERS = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "bloom": Adapter("transformer.h", ("input_layernorm", "post_attention_layernorm")),
    "xglm": Adapter("model.layers", ("self_attn_layer_norm", "final_layer_norm")),
    "gpt2": Adapter("transformer.h", ("ln_1", "ln_2")),
    "opt": Adapter("model.decoder.layers", ("self_attn_layer_norm", "final_layer_norm")),
}


def adapter_for(config) -> Adapter:
    """The adapter of a transformers config (or model), or UnsupportedArchitectureError."""
    config = getattr(config, "config", config)
    model_type = getattr(config, "model_type", None)
    if model_type not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {model_type!r}: tfprune supports {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a CausalLM, in order."""
    module = model
    for name in adapter_for(model).layers.split("."):
        module = getattr(module, name)
    return module


def find_linears(block: nn.Module) -> dict[str, nn.Module]:
    """{qualified name: module} of every nn.Linear and transformers Conv1D inside `block`, in order."""
    from transformers.pytorch_utils import Conv1D

    return {name: module for name, module in block.named_modules() if isinstance(module, (nn.Linear, Conv1D))}


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as an [out, in] view (Conv1D stores [in, out]); in-place edits reach the module."""
    from transformers.pytorch_utils import Conv1D

    return module.weight.data.t() if isinstance(module, Conv1D) else module.weight.data
