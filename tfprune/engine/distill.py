"""End-to-end distillation after pruning (config.distill steps): every decoder block's kept weights and
normalization weights fitted at once so that the pruned model's next-token distributions match the dense
model's on the calibration prompts.

Block-wise reconstruction (tfprune.engine.reconstruct) brings each block's output back to the dense block's on
the block's own inputs; what it cannot see is how the blocks' remaining errors add up through the model and
what they do to the logits. Distillation fits the model's output: Adam (learning rate decayed on a cosine to
zero) minimizes KL(p_dense ‖ p_pruned), the Kullback-Leibler divergence of the next-token distributions over
the whole vocabulary, averaged over the real tokens of a calibration batch (padding excluded; one batch per
step, in turn), through every block (tfprune.engine.fitting: masks fixed, the pattern stays exact).

The dense model's distributions come from its final hidden states ([B, T, H] per batch, recorded before
pruning: one more copy of the activations, no dense copy of the model) through the output head the two models
share (embeddings and LM head are never pruned), checked once against the model's own logits. Logits are made
for a chunk of tokens at a time ([chunk, V] float32, at most 2^26 values), used and dropped: the vocabulary
never multiplies the batch's memory. The in-memory engine only: a step runs the whole model forward and back.
Memory: the model in float32 while fitting, the gradients and Adam's two moments of the decoder blocks' fitted
weights (16 bytes per weight), one batch's autograd state through every block, the dense final hidden states.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError, NonFiniteActivationError
from .discovery import decoder_layers
from .fitting import KeptWeights, fitting_in_float32

__all__ = ["Distillation", "OutputHead", "dense_final_states", "distill_", "kl_divergence"]

log = logging.getLogger("tfprune")
CHUNK_VALUES = 2**26  # logits [chunk, V] float32 made at a time: 256 MB


@dataclass
class Distillation:
    """What the end-to-end distillation did: steps, seconds, and the KL divergence from the dense model
    (nats per token) of the first step's batch before any update and the mean over the last pass over the
    batches (the last min(steps, batches) steps, each measured before its own update)."""

    steps: int
    seconds: float
    kl_first: float
    kl_last: float


class OutputHead:
    """The model's logits from its final hidden states: hidden [n, H] -> logits [n, V] float32, the output
    embeddings (the LM head) and, where the configuration has one, the final logit soft-capping (Gemma 2)."""

    def __init__(self, model: nn.Module):
        self.linear = model.get_output_embeddings()
        if self.linear is None:
            raise ConfigError(f"{type(model).__name__} has no output embeddings (LM head): distillation matches "
                              "next-token distributions and needs one")
        self.cap = getattr(model.config, "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.linear(hidden).float()
        return logits if not self.cap else torch.tanh(logits / self.cap) * self.cap

    @property
    def vocab(self) -> int:
        return self.linear.weight.shape[0]


def _final_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H]: the base model's last hidden states (after its final norm), what the LM head reads."""
    out = model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


@torch.no_grad()
def _check_head(model: nn.Module, head: OutputHead, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Refuse a model whose logits are not head(final hidden states) (a logit scale, a projection the head
    does not know): the distillation would match the wrong distributions. Checked on one prompt's first
    16 tokens, to float32 precision of the model's dtype."""
    ids, mask = input_ids[:1, :16], attention_mask[:1, :16]
    expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    got = head(_final_hidden(model, ids, mask))
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    if expected.shape != got.shape or not torch.allclose(got, expected, rtol=tolerance, atol=tolerance):
        raise ConfigError(f"{type(model).__name__}'s logits are not its LM head applied to its last hidden states "
                          "(a logit scale or an extra projection?): --distill cannot match its distributions; "
                          "use --distill 0")


@torch.no_grad()
def dense_final_states(model: nn.Module, calibration, batch_size: int) -> list[torch.Tensor]:
    """The dense model's final hidden states [B, T, H] (its dtype, its device) of every calibration batch
    (calibration.batches(batch_size)), the distillation's targets; checks the output head first."""
    device = next(model.parameters()).device
    head = OutputHead(model)
    states = []
    for input_ids, attention_mask in calibration.batches(batch_size):
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if not states:
            _check_head(model, head, input_ids, attention_mask)
        states.append(_final_hidden(model, input_ids, attention_mask))
    return states


def kl_divergence(head: OutputHead, student: torch.Tensor, teacher: torch.Tensor) -> tuple[float, torch.Tensor]:
    """Σ over tokens of KL(softmax(head(teacher)) ‖ softmax(head(student))) and its gradient with respect to
    student: [n, H] -> (float, [n, H] float32). Chunked over tokens so that at most CHUNK_VALUES logits exist at
    once; the head's weights take no gradient."""
    leaf = student.detach().float().requires_grad_(True)
    chunk = max(1, CHUNK_VALUES // head.vocab)
    total = 0.0
    for start in range(0, leaf.shape[0], chunk):
        with torch.no_grad():
            log_p = torch.log_softmax(head(teacher[start:start + chunk].float()), dim=-1)
        with torch.enable_grad():
            log_q = torch.log_softmax(head(leaf[start:start + chunk]), dim=-1)
            kl = (log_p.exp() * (log_p - log_q)).sum()
            kl.backward()
        total += float(kl.detach())
    return total, leaf.grad


def distill_(model: nn.Module, calibration, targets: list[torch.Tensor], steps: int, lr: float, batch_size: int,
             progress: bool = False) -> Distillation:
    """Fit the pruned `model` in place (see the module docstring): `steps` Adam steps at learning rate `lr`
    (cosine decay), step i on batch i mod len(targets) of calibration.batches(batch_size), whose dense final
    hidden states are targets[i] (dense_final_states before pruning). Returns the KL divergence on the
    first batch and on the last pass."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    batches = list(calibration.batches(batch_size))
    if len(batches) != len(targets):
        raise ValueError(f"{len(targets)} dense final states for {len(batches)} calibration batches")
    losses = []
    with fitting_in_float32(model):
        head = OutputHead(model)
        kept = KeptWeights(decoder_layers(model))
        for p in kept.parameters:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(kept.parameters, lr=lr, fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                     lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
        bar = tqdm(range(steps), desc="distillation", unit="step", disable=not progress)
        for step in bar:
            i = step % len(batches)
            input_ids, attention_mask = (t.to(device) for t in batches[i])
            real = attention_mask.bool()
            with torch.enable_grad():
                student = _final_hidden(model, input_ids, attention_mask)[real]
                kl, grad = kl_divergence(head, student, targets[i][real])
                tokens = int(real.sum())
                optimizer.zero_grad(set_to_none=True)
                student.backward(grad.to(student.dtype) / tokens)
            kept.mask_gradients_()
            optimizer.step()
            schedule.step()
            losses.append(kl / tokens)
            bar.set_postfix(kl=f"{losses[-1]:.4f}")
    kept.reset_pruned_()
    if not kept.finite() or not all(map(math.isfinite, losses)):
        raise NonFiniteActivationError("distillation diverged (NaN/Inf weights or loss); lower --distill-lr")
    last = losses[-min(steps, len(batches)):]
    result = Distillation(steps, time.perf_counter() - start, losses[0], sum(last) / len(last))
    log.info("distillation: %d steps, KL from the dense model %.4g -> %.4g nats/token (%.1f s)", steps,
             result.kl_first, result.kl_last, result.seconds)
    return result
