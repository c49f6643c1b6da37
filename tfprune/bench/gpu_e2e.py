"""End to end for `make gpu-check`: prefill and greedy decode tokens/s of a random-weight model with a real
configuration (Llama-3-8B-class layers: hidden 4096, MLP 14336, 32 heads, 8 KV heads; a few layers) pruned to 2:4,
kept dense vs sparsified (every decoder linear a SparseLinear). Eager PyTorch with the KV cache, batch 1: the
decode numbers include the host's per-kernel overhead, as a plain `generate` loop does."""
from __future__ import annotations

import time

import torch

from ..compat import forward_with_cache
from .e2e import prune_model_24_, sparsify_copy
from .gpu_measure import Context, _row

__all__ = ["llama3_class_config", "e2e"]


def llama3_class_config(layers: int, dry: bool):
    """A LlamaConfig with Llama-3-8B's layer shapes (tiny ones in the dry run) and a 32000-token vocabulary
    (so the LM head does not dominate a few-layer model)."""
    from transformers import LlamaConfig

    if dry:
        return LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=1, vocab_size=256, max_position_embeddings=256)
    return LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                       num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=8192, rope_theta=500000.0)


def _decode_ms(ctx: Context, model, prompt: torch.Tensor, steps: int) -> float:
    """Wall ms of `steps` greedy decode steps with the KV cache after an untimed prefill of prompt [1, P]."""
    logits, cache = forward_with_cache(model, prompt)
    token = logits[:, -1:].argmax(-1)
    ctx.sync()
    start = time.perf_counter()
    for _ in range(steps):
        logits, cache = forward_with_cache(model, token, cache)
        token = logits[:, -1:].argmax(-1)
    ctx.sync()
    return (time.perf_counter() - start) * 1e3


@torch.inference_mode()
def e2e(ctx: Context, layers: int = 4) -> list[dict]:
    from transformers import AutoModelForCausalLM

    config = llama3_class_config(layers, ctx.dry)
    with torch.device(ctx.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    pruned = prune_model_24_(model)
    sparse, swapped, reason = sparsify_copy(model, "cutlass")
    prefill, steps = (16, 4) if ctx.dry else (2048, 64)
    generator = torch.Generator(device="cpu").manual_seed(0)
    prompt = torch.randint(0, config.vocab_size, (1, prefill), generator=generator).to(ctx.device)
    base = dict(hidden=config.hidden_size, intermediate=config.intermediate_size, layers=config.num_hidden_layers,
                parameters=sum(p.numel() for p in model.parameters()), pruned_linears=pruned, sparse_linears=swapped)
    if sparse is None:
        return [_row("end to end", False, reason=reason, **base)]
    diff = float((sparse(input_ids=prompt).logits.float() - model(input_ids=prompt).logits.float()).abs().max())
    scale = float(model(input_ids=prompt).logits.float().abs().max())
    rows = []
    dense_ms = ctx.ms(lambda: model(input_ids=prompt))
    sparse_ms = ctx.ms(lambda: sparse(input_ids=prompt))
    rows.append(_row(f"prefill {prefill} tokens", diff <= 0.05 * scale + 1e-3, max_abs_logit_diff=diff, logit_scale=scale,
                     dense_tokens_per_s=prefill / (dense_ms * 1e-3), sparse_tokens_per_s=prefill / (sparse_ms * 1e-3),
                     speedup=dense_ms / sparse_ms, **base))
    reps = 1 if ctx.dry else 3
    dense_dec = min(_decode_ms(ctx, model, prompt[:, :128], steps) for _ in range(reps))
    sparse_dec = min(_decode_ms(ctx, sparse, prompt[:, :128], steps) for _ in range(reps))
    rows.append(_row(f"decode {steps} tokens after 128 (greedy, KV cache, eager)", None,
                     dense_tokens_per_s=steps / (dense_dec * 1e-3), sparse_tokens_per_s=steps / (sparse_dec * 1e-3),
                     speedup=dense_dec / sparse_dec, **base))
    del model, sparse
    return rows
