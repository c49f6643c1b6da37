"""Log-probabilities of whole texts under a causal LM, and the zero-shot choice rule of the paper:
the answer is the candidate whose full prompt has the highest mean per-token log-probability."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import TfpruneError

__all__ = ["encode", "sequence_logprobs", "mean_logprobs", "choose", "perplexity"]


def encode(tokenizer, texts: list[str], max_length: int | None = None) -> list[list[int]]:
    """Token ids of each text with the tokenizer's own special tokens (BOS where it adds one). A text longer
    than max_length keeps its last max_length tokens, so the label word at the end is never cut."""
    ids = [list(tokenizer(text)["input_ids"]) for text in texts]
    if max_length is not None:
        ids = [row[-max_length:] for row in ids]
    return ids


def _max_length(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


@torch.no_grad()
def sequence_logprobs(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 8,
                      max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ log p(t_i | t_<i) over every token of each text but the first, and the number of those tokens.

    Returns (sums [N] fp64, counts [N] int64). Texts are batched by length and right-padded; padding never
    enters a sum. The log-softmax is taken in fp32 whatever the model's dtype.
    """
    if batch_size < 1:
        raise TfpruneError(f"batch size must be a positive integer, got {batch_size}")
    ids = encode(tokenizer, texts, max_length or _max_length(model))
    sums = torch.zeros(len(ids), dtype=torch.float64)
    counts = torch.tensor([max(len(row) - 1, 0) for row in ids], dtype=torch.int64)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(ids[i]) for i in rows)
        if width < 2:
            continue
        input_ids = torch.full((len(rows), width), pad, dtype=torch.int64)
        mask = torch.zeros((len(rows), width), dtype=torch.int64)
        for r, i in enumerate(rows):
            input_ids[r, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.int64)
            mask[r, : len(ids[i])] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits  # [B, T, V]
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # [B, T-1]
        token_logp = token_logp.masked_fill(mask[:, 1:] == 0, 0.0)
        sums[rows] = token_logp.sum(1).double().cpu()
    return sums, counts


def mean_logprobs(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 8,
                  max_length: int | None = None) -> torch.Tensor:
    """Mean per-token log-probability of each text (tokens after the first): [N] fp64."""
    sums, counts = sequence_logprobs(model, tokenizer, texts, batch_size, max_length)
    if bool((counts == 0).any()):
        bad = int((counts == 0).nonzero()[0])
        raise TfpruneError(f"text {bad} ({texts[bad][:40]!r}) has a single token: nothing to score")
    return sums / counts


def choose(scores: torch.Tensor) -> torch.Tensor:
    """The chosen candidate per example: argmax over candidates of scores [N, L]; ties go to the lower
    label index. Returns [N] int64."""
    if scores.dim() != 2:
        raise ValueError(f"choose: scores must be [examples, labels], got {tuple(scores.shape)}")
    best = scores.max(dim=1, keepdim=True).values
    hits = scores == best
    return hits.to(torch.int64).argmax(dim=1)


def perplexity(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 8) -> tuple[float, int]:
    """Token-level perplexity exp(-Σ log p / #tokens) over all texts (first token of each not scored),
    and the number of tokens scored."""
    sums, counts = sequence_logprobs(model, tokenizer, texts, batch_size)
    tokens = int(counts.sum())
    if tokens == 0:
        raise TfpruneError("perplexity: no tokens to score")
    return math.exp(-float(sums.sum()) / tokens), tokens
