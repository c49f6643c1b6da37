"""What differs between the transformers releases tfprune supports (4.56+ and 5.x), in one place."""
from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

__all__ = ["forward_with_cache"]


@functools.lru_cache(maxsize=None)
def _cache_argument(forward_type: type) -> str:
    """The name of the KV-cache argument of a CausalLM's forward: 'cache' (transformers >= 5.24, where
    `past_key_values` is deprecated) or 'past_key_values' (4.x)."""
    parameters = inspect.signature(forward_type.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def forward_with_cache(model: nn.Module, input_ids: torch.Tensor, cache=None) -> tuple[torch.Tensor, object]:
    """One forward pass with the KV cache: (logits [B, T, V], the updated cache). cache=None starts one."""
    name = _cache_argument(type(model))
    kwargs = {} if cache is None else {name: cache}
    out = model(input_ids=input_ids, use_cache=True, **kwargs)
    return out.logits, (out.cache if name == "cache" else out.past_key_values)
