"""The sequential pruning engine (Wanda's order), in memory.

Embed the calibration batches, then for each decoder block: collect per-channel statistics of every
linear input (forward hooks, padding excluded), prune each linear, and recompute the block's outputs
with the pruned weights as the next block's inputs.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import masks, ops
from ..calib import build_calibration
from ..config import PruneConfig
from ..errors import ConfigError
from ..features import protected_channels, top_channels
from ..report import LayerReport, PruneReport
from ..stats import ChannelStats
from .adapters import adapter_for, decoder_layers, find_linears, weight_matrix

__all__ = ["prune", "LayerInput", "capture_layer_inputs", "run_block"]

log = logging.getLogger("tfprune")


@dataclass
class LayerInput:
    """One calibration batch at the input of a decoder block.

    hidden: [B, T, H]; args/kwargs: the other arguments the model passed to the block (masks, position
    embeddings, alibi...); token_mask: [B*T] bool, True = real token; stream: 'translation' | 'contrast'.
    """

    stream: str
    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    token_mask: torch.Tensor


class _StopForward(Exception):
    pass


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, calib, stream: str, batch_size: int) -> list[LayerInput]:
    """Run the model up to its first decoder block for every batch of `calib` (a CalibrationSet) and
    keep what the block receives."""
    first = decoder_layers(model)[0]
    device = next(model.parameters()).device
    captured: list[LayerInput] = []
    state = {}

    def catch(_module, args, kwargs):
        kwargs = dict(kwargs)
        hidden = args[0] if args else kwargs.pop("hidden_states")
        state["input"] = (hidden, tuple(args[1:]), kwargs)
        raise _StopForward

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for input_ids, attention_mask in calib.batches(batch_size):
            try:
                model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), use_cache=False)
            except _StopForward:
                pass
            hidden, args, kwargs = state.pop("input")
            captured.append(LayerInput(stream, hidden, args, kwargs, attention_mask.reshape(-1).bool().to(device)))
    finally:
        handle.remove()
    return captured


def run_block(block: nn.Module, item: LayerInput) -> torch.Tensor:
    """The block's output hidden states [B, T, H] for one calibration batch."""
    out = block(item.hidden, *item.args, **item.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def collect_block_stats(block: nn.Module, inputs: list[LayerInput], tau: float) -> dict[str, dict[str, ChannelStats]]:
    """Per-stream, per-linear ChannelStats of one block over all calibration batches: {stream: {name: stats}}."""
    linears = find_linears(block)
    stats: dict[str, dict[str, ChannelStats]] = {}
    current: dict = {}

    def hook(name):
        def accumulate(_module, args, _output):
            x = args[0]
            x = x.reshape(-1, x.shape[-1])
            mask = current["mask"] if x.shape[0] == current["mask"].numel() else None
            if mask is None:
                raise RuntimeError(f"{name}: {x.shape[0]} tokens, expected {current['mask'].numel()}")
            per_stream = stats.setdefault(current["stream"], {})
            if name not in per_stream:
                per_stream[name] = ChannelStats.empty(x.shape[-1], tau, x.device)
            per_stream[name].update(x, mask)

        return accumulate

    handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
    try:
        for item in inputs:
            current.update(stream=item.stream, mask=item.token_mask)
            run_block(block, item)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def prune_linear(name: str, module: nn.Module, stats: dict[str, ChannelStats], config: PruneConfig,
                 sparsity: float, seed: int) -> LayerReport:
    """Score, mask and zero one linear layer in place; returns its report."""
    start = time.perf_counter()
    weight = weight_matrix(module)
    translation = stats["translation"]
    translation.check_finite(name)
    contrast = stats.get("contrast")
    if contrast is not None:
        contrast.check_finite(f"{name} (contrast stream)")
    rule = config.protect_rule
    protect = protected_channels(translation, rule) if rule is not None else None
    score = ops.scores(weight, config.method, norm=translation.norm,
                       contrast_norm=None if contrast is None else contrast.norm, protect=protect, seed=seed)
    violations = 0
    if config.nm is not None:
        n, m = config.nm
        keep = ops.nm_mask(score, n, m)
        if protect is not None:
            violations = masks.nm_violations(protect, n, m, weight.shape[0])
    else:
        keep = ops.row_mask(score, sparsity)
    ops.apply_mask_(weight, keep)
    return LayerReport(
        name=name,
        shape=tuple(weight.shape),
        target_sparsity=sparsity,
        sparsity=float((weight == 0).sum()) / weight.numel(),
        top_channels=top_channels(translation, config.report_topk),
        protected=[] if protect is None else protect.nonzero().flatten().tolist(),
        violations=violations,
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def owl_block_sparsities(model: nn.Module, inputs: list[LayerInput], config: PruneConfig) -> list[float]:
    """OWL: a dense pass over all blocks measuring each block's outlier ratio of Wanda scores, then the
    layerwise sparsities (mean = config.sparsity)."""
    multiple, lam = config.owl
    ratios = []
    for block in decoder_layers(model):
        stats = collect_block_stats(block, inputs, config.tau)["translation"]
        block_scores = [ops.scores(weight_matrix(module), "wanda", norm=stats[name].norm)
                        for name, module in find_linears(block).items()]
        ratios.append(masks.outlier_ratio(block_scores, multiple))
        for item in inputs:
            item.hidden = run_block(block, item)
    return masks.owl_sparsities(ratios, config.sparsity, lam)


def check_prunable(model: nn.Module, config: PruneConfig) -> None:
    """Raise ConfigError before any work if a linear layer's in_features does not fit the N:M pattern."""
    if config.nm is None:
        return
    m = config.nm[1]
    for index, block in enumerate(decoder_layers(model)):
        for name, module in find_linears(block).items():
            in_features = weight_matrix(module).shape[1]
            if in_features % m:
                raise ConfigError(f"layer {index}.{name} has in_features={in_features}, not a multiple of M={m} "
                                  f"(pattern {config.pattern})")


@torch.no_grad()
def prune(model: nn.Module, tokenizer, config: PruneConfig, calib=None, contrast_calib=None,
          progress: bool = True) -> PruneReport:
    """Prune every linear layer of every decoder block of `model` in place.

    calib: None (built-in translation demonstrations) | ParallelCorpus | list[str] | LongTensor [N, T]
    of token ids | CalibrationSet. contrast_calib: the contrast stream of method 'contrastive' (default:
    monolingual prompts from the same corpus). Returns a PruneReport.
    """
    start = time.perf_counter()
    adapter_for(model)
    check_prunable(model, config)
    streams = {"translation": build_calibration(calib, tokenizer, config, "translation")}
    if config.method == "contrastive":
        source = contrast_calib if contrast_calib is not None else (calib if not isinstance(calib, (torch.Tensor, list)) else None)
        streams["contrast"] = build_calibration(source, tokenizer, config, "contrast")
    model.eval()
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        inputs = [item for stream, calibration in streams.items()
                  for item in capture_layer_inputs(model, calibration, stream, config.batch_size)]
        blocks = decoder_layers(model)
        sparsities = [config.sparsity] * len(blocks)
        if config.owl is not None:
            originals = [item.hidden for item in inputs]
            sparsities = owl_block_sparsities(model, inputs, config)
            for item, hidden in zip(inputs, originals):
                item.hidden = hidden
        report = PruneReport(calibration_tokens=streams["translation"].tokens, block_sparsity=sparsities)
        for index, block in enumerate(tqdm(blocks, desc="pruning", unit="block", disable=not progress)):
            stats = collect_block_stats(block, inputs, config.tau)
            for name, module in find_linears(block).items():
                per_stream = {stream: stats[stream][name] for stream in stats}
                report.layers.append(prune_linear(f"{index}.{name}", module, per_stream, config, sparsities[index],
                                                  config.seed + len(report.layers)))
            for item in inputs:
                item.hidden = run_block(block, item)
    finally:
        model.config.use_cache = use_cache
    report.seconds = time.perf_counter() - start
    report.peak_memory_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        report.peak_gpu_memory_bytes = torch.cuda.max_memory_allocated()
    log.info("pruned %d linear layers to sparsity %.4f in %.1f s", len(report.layers), report.sparsity, report.seconds)
    return report
