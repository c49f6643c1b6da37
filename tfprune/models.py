"""Loading a model to prune: a local Hugging Face directory, a hub id, or `builtin:FAMILY`."""
from __future__ import annotations

import torch

from .engine.adapters import adapter_for

__all__ = ["load_model", "DTYPES"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def load_model(spec: str, dtype: str | torch.dtype | None = None, device: str = "cpu"):
    """(model, tokenizer) for `spec`: 'builtin:llama' (and the other BUILTIN_FAMILIES), a local directory or
    a hub id. The architecture is checked from the config before any weight is loaded."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    if spec.startswith("builtin:"):
        from .builtin import build_model

        model, tokenizer = build_model(spec.split(":", 1)[1], dtype=dtype or torch.float32)
        return model.to(device), tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    adapter_for(AutoConfig.from_pretrained(spec))
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype or "auto")
    tokenizer = AutoTokenizer.from_pretrained(spec)
    return model.to(device).eval(), tokenizer
