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
share (embeddings and LM head are never pruned, and stay frozen), checked once against the model's own logits.
The KL's gradient with respect to the final hidden states is written out (softmax(z_pruned) − softmax(z_dense),
through the soft-cap, times the head's weight) for a chunk of tokens at a time, so that no autograd graph
holds logits: about four [chunk, V] float32 buffers (CHUNK_VALUES values each) exist at once. The in-memory
engine only: a step runs the whole model forward and back, one prompt of the batch at a time (the gradients of
the batch's prompts add up: the same step as the whole batch at once), each decoder block under activation
checkpointing (torch.utils.checkpoint: only the blocks' inputs are kept through the forward, one block's
autograd state is rebuilt at a time in the backward, for one more forward per step). Memory (`fit_bytes`,
checked before pruning by `planned_steps`): a float32 copy of the model where it is not float32, the gradients
and Adam's two moments of the decoder blocks' fitted weights and their keep-masks (13 bytes per weight), the
dense final hidden states of the calibration, and one prompt's activations (the blocks' float32 inputs, one
block's autograd state, the KL's buffers).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from torch.utils.checkpoint import checkpoint

from ..config import PruneConfig, default_distill_steps
from ..errors import ConfigError, NonFiniteActivationError
from .activations import free_memory
from .discovery import decoder_layers
from .fitting import KeptWeights, fitting_in_float32

__all__ = ["Distillation", "OutputHead", "checkpointed_blocks", "dense_final_states", "distill_", "fit_bytes",
           "kl_divergence", "planned_steps", "skip_default"]

log = logging.getLogger("tfprune")
CHUNK_VALUES = 2**26  # values of one [chunk, V] float32 buffer: 256 MB


@dataclass
class Distillation:
    """What the end-to-end distillation did: steps, seconds, and the KL divergence from the dense model
    (nats per token) of the first calibration batch before the fit and after it (the returned model, in its
    own dtype)."""

    steps: int
    seconds: float
    kl_before: float
    kl_after: float


class OutputHead:
    """The model's logits from its final hidden states: hidden [n, H] -> logits [n, V] float32, the output
    embeddings (an nn.Linear, weight [V, H]) and, where the configuration has one, the final logit
    soft-capping (Gemma 2)."""

    def __init__(self, model: nn.Module):
        self.linear = model.get_output_embeddings()
        if not isinstance(self.linear, nn.Linear):
            raise ConfigError(f"{type(model).__name__} has no nn.Linear output embeddings (LM head): --distill "
                              "matches next-token distributions through it; use --distill 0")
        if model.base_model is model:
            raise ConfigError(f"{type(model).__name__} has no base model that returns its last hidden states: "
                              "--distill cannot read the states its LM head sees; use --distill 0")
        self.cap = getattr(model.config, "final_logit_softcapping", None)

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.linear(hidden.to(self.linear.weight.dtype)).float()
        return logits if not self.cap else torch.tanh(logits / self.cap) * self.cap

    @property
    def vocab(self) -> int:
        return self.linear.weight.shape[0]


def _final_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T, H]: the base model's last hidden states (after its final norm), what the LM head reads."""
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


@torch.no_grad()
def _check_head(model: nn.Module, head: OutputHead, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Refuse a model whose logits are not head(final hidden states) (a logit scale, a projection the head
    does not know): the distillation would match the wrong distributions. Checked on one prompt's first
    16 tokens, to the precision of the model's dtype."""
    if not hasattr(model.base_model(input_ids=input_ids[:1, :2], attention_mask=attention_mask[:1, :2],
                                    use_cache=False), "last_hidden_state"):
        raise ConfigError(f"{type(model).__name__} has no base model that returns its last hidden states: --distill "
                          "cannot read the states its LM head sees; use --distill 0")
    ids, mask = input_ids[:1, :16], attention_mask[:1, :16]
    expected = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    got = head(_final_hidden(model, ids, mask))
    tolerance = 1e-3 if next(model.parameters()).dtype == torch.float32 else 5e-2
    if expected.shape != got.shape or not torch.allclose(got, expected, rtol=tolerance, atol=tolerance):
        raise ConfigError(f"{type(model).__name__}'s logits are not its LM head applied to its last hidden states "
                          "(a logit scale or an extra projection?): --distill cannot match its distributions; "
                          "use --distill 0")


def fit_bytes(model: nn.Module, config: PruneConfig) -> int:
    """Bytes the distillation needs on the model's device beyond the model itself (see the module docstring):
    the float32 upcast of every parameter not in float32 (4 − its itemsize bytes each), 13 bytes per fitted
    block weight, the dense final hidden states of config.nsamples prompts of config.seqlen tokens, and one
    prompt's activations: every block's float32 input, one block's autograd state (about 16 hidden-size and 4
    intermediate-size float32 vectors per token, and two [heads, T, T] float32 attention maps, as eager
    attention keeps them) and the KL's four [chunk, V] float32 buffers. Mixture-of-experts blocks are counted
    by the configuration's intermediate_size."""
    params = {id(p): p for p in model.parameters()}.values()
    upcast = sum((4 - p.element_size()) * p.numel() for p in params if p.dtype != torch.float32)
    blocks = decoder_layers(model)
    fitted = sum(p.numel() for p in {id(p): p for block in blocks for p in block.parameters()}.values())
    vocab, hidden = model.get_input_embeddings().weight.shape
    inner = getattr(model.config, "intermediate_size", None) or 4 * hidden
    heads = getattr(model.config, "num_attention_heads", None) or 1
    itemsize = next(model.parameters()).element_size()
    tokens = config.seqlen
    states = config.nsamples * tokens * hidden * itemsize
    block = 4 * tokens * (16 * hidden + 4 * inner) + 2 * 4 * heads * tokens * tokens
    activations = 4 * tokens * len(blocks) * hidden + block + 16 * min(CHUNK_VALUES, tokens * vocab)
    return upcast + 13 * fitted + states + activations


def planned_steps(model: nn.Module, config: PruneConfig) -> tuple[int, str | None]:
    """The distillation steps of this in-memory run, decided before any work, and why the default is skipped
    (None when it is not): config.distill when it is given (refused with ConfigError when the fit does not fit
    the device's free memory), else the default for the pattern and method (config.default_distill_steps),
    or 0, with the reason in one warning, where it does not fit or the model has no plain LM head."""
    steps = config.distill if config.distill is not None else default_distill_steps(config.method, config.nm)
    if not steps:
        return 0, None
    device = next(model.parameters()).device
    needed, free = fit_bytes(model, config), free_memory(device)
    problem = None
    if needed > free:
        problem = (f"it needs ~{needed / 2**30:.1f} GiB more on {device} (a float32 copy of the model, Adam's state "
                   f"for its block weights, one prompt's activations), {free / 2**30:.1f} GiB are free")
    else:
        try:
            OutputHead(model)
        except ConfigError as error:
            problem = str(error)
    if problem is None:
        return steps, None
    if config.distill is not None:
        raise ConfigError(f"--distill: {problem}; use a larger device or --distill 0" if needed > free
                          else problem)
    return skip_default(problem)


def skip_default(problem: str) -> tuple[int, str]:
    """No distillation where the default cannot run: (0, the reason), said in one warning."""
    log.warning("no end-to-end distillation (the default for N:M patterns): %s (--distill 0 silences this)",
                problem)
    return 0, problem


@torch.no_grad()
def dense_final_states(model: nn.Module, calibration, batch_size: int) -> list[torch.Tensor]:
    """The dense model's final hidden states [B, T, H] (its dtype, its device) of every calibration batch
    (calibration.batches(batch_size)), the distillation's targets; checks the output head first."""
    model.eval()
    device = next(model.parameters()).device
    head = OutputHead(model)
    states = []
    for input_ids, attention_mask in calibration.batches(batch_size):
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if not states:
            _check_head(model, head, input_ids, attention_mask)
        states.append(_final_hidden(model, input_ids, attention_mask))
    return states


@torch.no_grad()
def kl_divergence(head: OutputHead, student: torch.Tensor, teacher: torch.Tensor,
                  gradient: bool = True) -> tuple[float, torch.Tensor | None]:
    """Σ over tokens of KL(softmax(head(teacher)) ‖ softmax(head(student))) and, when `gradient`, its gradient
    with respect to student: [n, H], [n, H] -> (float, [n, H] float32 or None). Per chunk of tokens
    (CHUNK_VALUES logits): dKL/dz = softmax(z_student) − softmax(z_teacher) for logits z, times 1 − tanh²
    through a soft-cap, then times the head's weight [V, H]. The head's weights take no gradient."""
    weight = head.linear.weight
    grad = torch.empty(student.shape, dtype=torch.float32, device=student.device) if gradient else None
    chunk = max(1, CHUNK_VALUES // head.vocab)
    total = 0.0
    for start in range(0, student.shape[0], chunk):
        rows = slice(start, start + chunk)
        log_p = torch.log_softmax(head(teacher[rows]), dim=-1)
        raw = head.linear(student[rows].to(weight.dtype)).float()
        if head.cap:
            capped = torch.tanh(raw.div_(head.cap))  # raw / cap, then tanh: raw's buffer holds tanh's input
            log_q = torch.log_softmax(capped * head.cap, dim=-1)
        else:
            capped, log_q = None, torch.log_softmax(raw, dim=-1)
        del raw
        total += float((log_p.exp() * (log_p - log_q)).sum())
        if grad is None:
            continue
        d_logits = log_q.exp_().sub_(log_p.exp_())  # softmax(z_student) − softmax(z_teacher), in log_q's buffer
        if capped is not None:
            d_logits.mul_(1 - capped.square_())
        grad[rows] = (d_logits.to(weight.dtype) @ weight).float()
    return total, grad


def _kl(model: nn.Module, head: OutputHead, batch, dense_state: torch.Tensor, device) -> float:
    """The mean KL per real token of one batch (input_ids, attention_mask), no gradient."""
    input_ids, attention_mask = (t.to(device) for t in batch)
    real = attention_mask.bool()
    with torch.no_grad():
        total, _ = kl_divergence(head, _final_hidden(model, input_ids, attention_mask)[real], dense_state[real],
                                 gradient=False)
    return total / int(real.sum())


@contextmanager
def checkpointed_blocks(model: nn.Module):
    """Run every decoder block of `model` under activation checkpointing while inside: a block keeps only its
    inputs through the forward and runs again in the backward (non-reentrant torch.utils.checkpoint; the
    blocks have no randomness in eval mode)."""
    previous = [(block, vars(block).get("forward")) for block in decoder_layers(model)]  # an accelerate hook's
    for block, _ in previous:
        block.forward = _checkpointed(block.forward)
    try:
        yield
    finally:
        for block, forward in previous:
            if forward is None:
                del block.forward  # the class's forward again
            else:
                block.forward = forward


def _checkpointed(forward):
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def _accumulate_gradients(model: nn.Module, head: OutputHead, batch, dense_state: torch.Tensor, device) -> float:
    """One step's gradients of the mean KL per real token of `batch` (input_ids, attention_mask [B, T]) added to
    the fitted weights' .grad, one prompt at a time (their sum is the batch's gradient). Returns the mean KL."""
    input_ids, attention_mask = (t.to(device) for t in batch)
    tokens = int(attention_mask.sum())
    total = 0.0
    for row in range(input_ids.shape[0]):
        positions = attention_mask[row].nonzero()
        if not len(positions):
            continue
        end = int(positions[-1]) + 1  # trailing padding cut: no real token attends to it (causal attention)
        ids, mask = input_ids[row:row + 1, :end], attention_mask[row:row + 1, :end]
        real = mask.bool()
        with torch.enable_grad():
            student = _final_hidden(model, ids, mask)[real]
            kl, grad = kl_divergence(head, student, dense_state[row:row + 1, :end][real])
            total += kl
            if not math.isfinite(kl):
                return kl
            student.backward(grad.div_(tokens).to(student.dtype))
    return total / tokens


def distill_(model: nn.Module, calibration, dense_states: list[torch.Tensor], steps: int, lr: float,
             batch_size: int, progress: bool = False) -> Distillation:
    """Fit the pruned `model` in place (see the module docstring): `steps` >= 1 Adam steps at peak learning
    rate `lr` (cosine decay), step i on batch i mod len(dense_states) of calibration.batches(batch_size), whose
    dense final hidden states are dense_states[i] (dense_final_states before pruning). Returns the KL divergence
    of the first batch before and after. Raises NonFiniteActivationError at the first non-finite loss or at
    non-finite weights (the model in memory is then half fitted: nothing should be written from it)."""
    if steps < 1:
        raise ValueError(f"distillation needs steps >= 1, got {steps}")
    start = time.perf_counter()
    model.eval()
    device = next(model.parameters()).device
    batches = list(calibration.batches(batch_size))
    if len(batches) != len(dense_states):
        raise ValueError(f"{len(dense_states)} dense final states for {len(batches)} calibration batches")
    head = OutputHead(model)
    before = _kl(model, head, batches[0], dense_states[0], device)
    with fitting_in_float32(model):
        kept = KeptWeights(decoder_layers(model))
        for p in kept.parameters:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(kept.parameters, lr=lr, fused=True)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                     lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
        bar = tqdm(range(steps), desc="distillation", unit="step", disable=not progress)
        with checkpointed_blocks(model):
            for step in bar:
                i = step % len(batches)
                kl = _accumulate_gradients(model, head, batches[i], dense_states[i], device)
                if not math.isfinite(kl):
                    raise NonFiniteActivationError(f"distillation diverged at step {step} (KL {kl}); nothing was "
                                                   "written: lower --distill-lr")
                kept.mask_gradients_()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)  # before the next forward: its gradients are not kept alive
                schedule.step()
                bar.set_postfix(kl=f"{kl:.4f}")
    kept.reset_pruned_()
    if not kept.finite():
        raise NonFiniteActivationError("distillation diverged (NaN/Inf weights); nothing was written: lower "
                                       "--distill-lr")
    result = Distillation(steps, time.perf_counter() - start, before,
                          _kl(model, head, batches[0], dense_states[0], device))
    log.info("distillation: %d steps, KL from the dense model on the first batch %.4g -> %.4g nats/token (%.1f s)",
             steps, result.kl_before, result.kl_after, result.seconds)
    return result
