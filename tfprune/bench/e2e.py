"""End-to-end benchmark: prefill tokens/s and decode tokens/s of a 2:4-pruned model kept dense vs the same
model sparsified (every decoder linear a SparseLinear)."""
from __future__ import annotations

import copy
import logging
import time

import torch
from torch import nn

from ..compat import forward_with_cache
from ..engine.discovery import decoder_layers, find_linears, weight_matrix
from .linear import prune_24_, sparse_support
from .timing import summarize, synchronize, time_fn

__all__ = ["load_e2e_model", "prune_model_24_", "sparsify_copy", "bench_e2e"]

log = logging.getLogger("tfprune")


def load_e2e_model(spec: str, dtype: torch.dtype, device: str, hidden: int | None = None,
                   layers: int | None = None):
    """(model, tokenizer). builtin:FAMILY takes `hidden` and `layers` (random weights, so any size is
    offline); other specs load as `tfprune prune` does."""
    if spec.startswith("builtin:"):
        from ..builtin import HIDDEN, build_model

        model, tokenizer = build_model(spec.split(":", 1)[1], hidden=hidden or HIDDEN, layers=layers or 2, dtype=dtype)
        return model.to(device).eval(), tokenizer
    from ..models import load_model

    return load_model(spec, dtype, device)


@torch.no_grad()
def prune_model_24_(model: nn.Module) -> int:
    """Magnitude 2:4 on every decoder linear whose in_features is a multiple of 4 (speed does not depend on
    which weights are kept). Returns the number of layers pruned."""
    pruned = 0
    for block in decoder_layers(model):
        for module in find_linears(block).values():
            weight = weight_matrix(module)
            if weight.shape[1] % 4 == 0:
                prune_24_(weight)
                pruned += 1
    return pruned


def sparsify_copy(model: nn.Module, fmt: str = "cutlass"):
    """(a sparsified deep copy of the 2:4-pruned model, number of SparseLinear layers, None) or
    (None, 0, why not)."""
    available, reason = sparse_support()
    if not available:
        return None, 0, reason
    from ..sparse import SparseLinear, sparsify

    sparse = copy.deepcopy(model)
    try:
        report = sparsify(sparse, format=fmt)
    except Exception as error:  # a format, device or dtype the sparse path does not take
        return None, 0, f"sparsify failed: {type(error).__name__}: {error}"
    swapped = sum(isinstance(module, SparseLinear) for module in sparse.modules())
    if swapped == 0:
        skipped = getattr(report, "skipped", {})
        why = next(iter(skipped.values()), "no linear layer qualified")
        return None, 0, f"sparsify swapped no layer ({why})"
    return sparse, swapped, None


def _decode_run(model: nn.Module, prompt: torch.Tensor, steps: int, device: str) -> float:
    """Milliseconds of `steps` greedy decode steps after an (untimed) prefill of prompt [1, P]."""
    logits, cache = forward_with_cache(model, prompt)
    token = logits[:, -1:].argmax(-1)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        logits, cache = forward_with_cache(model, token, cache)
        token = logits[:, -1:].argmax(-1)
    synchronize(device)
    return (time.perf_counter() - start) * 1e3


def _phase_timing(samples_ms: list[float], tokens: int) -> dict:
    stats = summarize(samples_ms)
    return {"median_ms": stats["median"], "tokens_per_s": tokens / (stats["median"] * 1e-3), "stats": stats,
            "samples_ms": samples_ms}


@torch.inference_mode()
def bench_e2e(spec: str, dtype: torch.dtype, device: str, prefill_tokens: int, decode_tokens: int, reps: int,
              warmup: int, fmt: str = "cutlass", hidden: int | None = None, layers: int | None = None,
              seed: int = 0) -> list[dict]:
    """Two rows, prefill and decode: dense vs sparsified tokens/s on one prompt of prefill_tokens random ids
    (batch 1); decode generates decode_tokens greedily with the KV cache after that prompt."""
    model, _tokenizer = load_e2e_model(spec, dtype, device, hidden, layers)
    prune_model_24_(model)
    sparse, swapped, reason = sparsify_copy(model, fmt)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    vocab = model.get_input_embeddings().weight.shape[0]
    prompt = torch.randint(0, vocab, (1, prefill_tokens), generator=generator).to(device)
    config = model.config
    base = {"device": torch.device(device).type, "dtype": str(dtype).replace("torch.", ""), "model": spec,
            "hidden": getattr(config, "hidden_size", None), "layers": len(decoder_layers(model)),
            "parameters": sum(p.numel() for p in model.parameters()), "batch": 1, "sparse_layers": swapped,
            "status": "measured", "reason": None}
    agree = None
    if sparse is not None:
        try:
            agree = float((sparse(input_ids=prompt).logits.float() - model(input_ids=prompt).logits.float()).abs().max())
        except Exception as error:  # the sparsified model cannot run here: report, keep the dense numbers
            sparse, reason = None, f"sparse forward failed: {type(error).__name__}: {error}"
    rows = []
    phases = {
        "prefill": (prefill_tokens, lambda m: time_fn(lambda: m(input_ids=prompt, use_cache=True), warmup, reps, device)),
        "decode": (decode_tokens, lambda m: [_decode_run(m, prompt, decode_tokens, device)
                                              for _ in range(warmup + reps)][warmup:]),
    }
    for phase, (tokens, measure) in phases.items():
        row = dict(base, phase=phase, tokens=tokens, context=prefill_tokens, dense=_phase_timing(measure(model), tokens),
                   sparse=None, speedup=None, max_abs_logit_diff=agree, sparse_status="unavailable",
                   sparse_reason=reason)
        if sparse is not None:
            row["sparse"] = _phase_timing(measure(sparse), tokens)
            row["speedup"] = row["dense"]["median_ms"] / row["sparse"]["median_ms"]
            row["sparse_status"] = "measured"
        log.info("e2e %s: dense %.1f tok/s, sparse %s", phase, row["dense"]["tokens_per_s"],
                 f"{row['sparse']['tokens_per_s']:.1f} tok/s" if row["sparse"] else row["sparse_status"])
        rows.append(row)
    return rows
