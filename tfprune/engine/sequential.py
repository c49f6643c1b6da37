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

from .. import masks, ops, sparsegpt
from ..calib import build_calibration
from ..config import PruneConfig
from ..errors import ConfigError
from ..features import protected_channels, top_channels
from ..report import LayerReport, PruneReport
from ..stats import ChannelStats
from .adapters import adapter_for, decoder_layers, find_linears, weight_matrix

__all__ = ["prune", "LayerInput", "capture_layer_inputs", "run_block", "calibration_streams", "prune_block",
           "block_outlier_ratio"]

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
def capture_layer_inputs(model: nn.Module, calib, stream: str, batch_size: int,
                         device: torch.device | str | None = None) -> list[LayerInput]:
    """Run the model up to its first decoder block for every batch of `calib` (a CalibrationSet) and
    keep what the block receives. device: where the token ids go (default: the model's first parameter's)."""
    first = decoder_layers(model)[0]
    device = next(model.parameters()).device if device is None else torch.device(device)
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
def collect_block_stats(block: nn.Module, inputs: list[LayerInput], tau: float,
                        hessians: sparsegpt.HessianCollector | None = None) -> dict[str, dict[str, ChannelStats]]:
    """Per-stream, per-linear ChannelStats of one block over all calibration batches: {stream: {name: stats}}.
    hessians: if given, the same hook also accumulates H = XᵀX of every linear over the translation stream."""
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
            if hessians is not None and current["stream"] == "translation":
                hessians.add(name, args[0], x, mask)

        return accumulate

    handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
    try:
        for item in inputs:
            current.update(stream=item.stream, mask=item.token_mask)
            if hessians is not None:
                hessians.new_batch()
            run_block(block, item)
    finally:
        for handle in handles:
            handle.remove()
        if hessians is not None:
            hessians.new_batch()
    return stats


def prune_linear(name: str, module: nn.Module, stats: dict[str, ChannelStats], config: PruneConfig,
                 sparsity: float, seed: int, hessian=None) -> LayerReport:
    """Score, mask and zero one linear layer in place; returns its report. hessian: the layer's
    sparsegpt.HessianFactor (or H = XᵀX [in, in]), needed when config.update == 'obs'."""
    start = time.perf_counter()
    weight = weight_matrix(module)
    translation = stats["translation"]
    translation.check_finite(name)
    contrast = stats.get("contrast")
    if contrast is not None:
        contrast.check_finite(f"{name} (contrast stream)")
    rule = config.protect_rule
    protect = protected_channels(translation, rule) if rule is not None else None
    if config.update == "obs":
        hessian = _obs_hessian(name, hessian, translation, config)
    if config.method == "sparsegpt":
        return _prune_linear_sparsegpt(name, weight, hessian, translation, protect, config, sparsity, start)
    # one fused score + mask (+ apply) pass; the OBS update needs the mask before the weights change
    keep = ops.prune_weight_(weight, config.method, sparsity=sparsity, nm=config.nm, norm=translation.norm,
                             contrast_norm=None if contrast is None else contrast.norm, protect=protect, seed=seed,
                             apply=config.update != "obs")
    violations = 0
    if config.nm is not None and protect is not None:
        n, m = config.nm
        violations = masks.nm_violations(protect, n, m, weight.shape[0])
    if config.update == "obs":
        sparsegpt.sparsegpt_prune_(weight, hessian, keep=keep, blocksize=config.obs_blocksize, name=name)
        ops.apply_mask_(weight, keep)
    return _layer_report(name, weight, translation, protect, violations, config, sparsity, start)


def _layer_report(name: str, weight: torch.Tensor, translation: ChannelStats, protect, violations: int,
                  config: PruneConfig, sparsity: float, start: float) -> LayerReport:
    """The report of one pruned linear layer (weight: its pruned [out, in] matrix)."""
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


def _obs_hessian(name: str, hessian, stats: ChannelStats, config: PruneConfig) -> sparsegpt.HessianFactor:
    """The layer's HessianFactor, checked against its channel statistics (diag H must be their Σx²)."""
    if hessian is None:
        raise RuntimeError(f"{name}: update 'obs' needs the layer's Hessian: pass "
                           "collect_block_stats(..., hessians=sparsegpt.HessianCollector()) results to prune_linear")
    if not isinstance(hessian, sparsegpt.HessianFactor):
        hessian = sparsegpt.factorize(hessian, config.dampening, name)
    sparsegpt.check_hessian(hessian, stats.sumsq, name)
    return hessian


def _prune_linear_sparsegpt(name: str, weight: torch.Tensor, hessian: sparsegpt.HessianFactor,
                            translation: ChannelStats, protect, config: PruneConfig, sparsity: float,
                            start: float) -> LayerReport:
    """Method 'sparsegpt': SparseGPT's OBS mask selection and weight update of one linear layer, in place."""
    selection = {"nm": config.nm} if config.nm is not None else {"sparsity": sparsity}
    result = sparsegpt.sparsegpt_prune_(weight, hessian, protect=protect, blocksize=config.obs_blocksize, name=name,
                                        **selection)
    log.debug("%s: OBS loss %.4g, dampening %.3g, %d dead channels", name, result.loss, result.dampening,
              result.dead)
    return _layer_report(name, weight, translation, protect, result.violations, config, sparsity, start)


@torch.no_grad()
def owl_block_sparsities(model: nn.Module, inputs: list[LayerInput], config: PruneConfig) -> list[float]:
    """OWL: a dense pass over all blocks measuring each block's outlier ratio of Wanda scores, then the
    layerwise sparsities (mean = config.sparsity)."""
    ratios = []
    for block in decoder_layers(model):
        ratios.append(block_outlier_ratio(block, inputs, config))
        for item in inputs:
            item.hidden = run_block(block, item)
    return masks.owl_sparsities(ratios, config.sparsity, config.owl[1])


@torch.no_grad()
def block_outlier_ratio(block: nn.Module, inputs: list[LayerInput], config: PruneConfig) -> float:
    """OWL's outlier ratio of one dense block: the share of its Wanda scores above M × their mean."""
    stats = collect_block_stats(block, inputs, config.tau)["translation"]
    linears = find_linears(block)
    return ops.outlier_ratio([weight_matrix(module) for module in linears.values()],
                             [stats[name].norm for name in linears], config.owl[0])


def calibration_streams(tokenizer, config: PruneConfig, calib=None, contrast_calib=None) -> dict:
    """{stream: CalibrationSet}: 'translation', plus 'contrast' for method 'contrastive' (see prune())."""
    streams = {"translation": build_calibration(calib, tokenizer, config, "translation")}
    if config.method == "contrastive":
        source = contrast_calib if contrast_calib is not None else (calib if not isinstance(calib, (torch.Tensor, list)) else None)
        streams["contrast"] = build_calibration(source, tokenizer, config, "contrast")
    return streams


@torch.no_grad()
def prune_block(block: nn.Module, index: int, inputs: list[LayerInput], config: PruneConfig, sparsity: float,
                first_seed: int) -> list[LayerReport]:
    """One step of the sequential engine (shared by the in-memory and streaming engines): calibrate block
    `index` on `inputs` and prune every linear in it in place; linear i gets seed first_seed + i."""
    hessians = sparsegpt.HessianCollector() if config.update == "obs" else None
    stats = collect_block_stats(block, inputs, config.tau, hessians=hessians)
    if hessians is not None:
        log.info("block %d: %s on %s, freed after its linears", index, hessians.describe(),
                 next(block.parameters()).device)
        if hessians.offload_if_needed():
            log.info("block %d: H offloaded to host memory (more than half the device's free memory); "
                     "each returns to the device alone to be solved", index)
    reports = []
    for name, module in find_linears(block).items():
        per_stream = {stream: stats[stream][name] for stream in stats}
        reports.append(prune_linear(
            f"{index}.{name}", module, per_stream, config, sparsity, first_seed + len(reports),
            hessian=None if hessians is None else hessians.pop_factor(name, config.dampening, f"{index}.{name}")))
    return reports


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
    streams = calibration_streams(tokenizer, config, calib, contrast_calib)
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
            report.layers += prune_block(block, index, inputs, config, sparsities[index],
                                         config.seed + len(report.layers))
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
