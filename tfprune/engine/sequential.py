"""The sequential pruning engine (Wanda's order), in memory.

Embed the calibration batches and record every decoder block's own arguments (tfprune.engine.capture), then
for each decoder block: collect per-channel statistics of the input of every prunable matrix (forward hooks,
padding excluded), prune each matrix, and recompute the block's outputs with the pruned weights as the next
block's inputs. `prune_block` is the step the streaming engine shares.
"""
from __future__ import annotations

import logging
import resource
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import sparsegpt
from ..calib import build_calibration
from ..config import PruneConfig
from ..errors import ConfigError
from ..report import LayerReport, PruneReport
from .calibrate import collect_block_stats, needs_unpadded_batches
from .activations import ActivationStore
from .capture import capture_layer_inputs, run_block
from .discovery import check_architecture, decoder_layers, targets
from .distill import dense_final_states, distill_, planned_steps, skip_default
from .layer import kept_dense_report, mask_selection, prune_target
from .plan import LayerPlan, make_plan, measure_block, needs_dense_pass, uniform_plan
from .reconstruct import BlockReconstruction, goal_keeper, reconstruct_block_
from .weights import check_finite_weights

__all__ = ["prune", "calibration_streams", "prune_block", "BlockResult", "check_prunable", "dense_pass",
           "effective_batch_size", "forward_block"]

log = logging.getLogger("tfprune")


@torch.no_grad()
def forward_block(block: nn.Module, index: int, store: ActivationStore) -> None:
    """Replace every batch's hidden states by block `index`'s output (the next block's input)."""
    for i in range(len(store)):
        store.put(i, run_block(block, store[i], index))


@torch.no_grad()
def dense_pass(blocks, inputs, config: PruneConfig, total: int, progress: bool = False) -> LayerPlan:
    """The layer plan from a dense pass (tfprune.engine.plan): each dense block in turn measured on `inputs`,
    then run on them for the next. blocks: (index, block) pairs in order, `total` of them (the streaming
    engine materializes each from the checkpoint and frees it after). `inputs` end as the last block's outputs."""
    measures = []
    for index, block in tqdm(blocks, total=total, desc="dense pass", unit="block", disable=not progress):
        measures.append(measure_block(block, index, inputs, config))
        forward_block(block, index, inputs)
    return make_plan(measures, config)


def calibration_streams(tokenizer, config: PruneConfig, calib=None, contrast_calib=None) -> dict:
    """{stream: CalibrationSet}: 'translation', plus 'contrast' for method 'contrastive' (see prune())."""
    streams = {"translation": build_calibration(calib, tokenizer, config, "translation")}
    if config.method == "contrastive":
        source = contrast_calib if contrast_calib is not None else (calib if not isinstance(calib, (torch.Tensor, list)) else None)
        streams["contrast"] = build_calibration(source, tokenizer, config, "contrast")
    return streams


def effective_batch_size(model: nn.Module, config: PruneConfig) -> int:
    """config.batch_size, or 1 where per-expert modules cannot be given the token mask (logged)."""
    if config.batch_size > 1 and needs_unpadded_batches(decoder_layers(model)):
        log.info("per-expert linear modules see only their routed rows: calibrating one prompt per forward pass "
                 "so that no padding reaches them")
        return 1
    return config.batch_size


@dataclass
class BlockResult:
    """What pruning one decoder block did: a LayerReport per matrix, and its reconstruction (or None)."""

    reports: list[LayerReport]
    reconstruction: BlockReconstruction | None = None


@torch.no_grad()
def prune_block(block: nn.Module, index: int, inputs, config: PruneConfig, sparsity: float,
                first_seed: int, dense=()) -> BlockResult:
    """One step of the sequential engine (shared by the in-memory and streaming engines): calibrate block
    `index` on `inputs`, prune every matrix in it in place (matrix i gets seed first_seed + i) but those named
    in `dense` (the plan's, left as they are) and, with config.reconstruct, fit the pruned block to the dense
    block's outputs (with config.reconstruct_mask 'learned', re-selecting the pruned matrices' masks as it goes)."""
    hessians = sparsegpt.HessianCollector() if config.update == "obs" else None
    goals: list[torch.Tensor] = []  # the dense block's outputs: the reconstruction's targets
    stats = collect_block_stats(block, index, inputs, config.tau, hessians=hessians,
                                on_output=goal_keeper(inputs, goals) if config.reconstruct else None)
    if hessians is not None:
        log.info("block %d: %s on %s, freed after its linears", index, hessians.describe(),
                 next(block.parameters()).device)
        if hessians.offload_if_needed():
            log.info("block %d: H offloaded to host memory (more than half the device's free memory); "
                     "each returns to the device alone to be solved", index)
    reports = []
    selections, dense_weights = {}, {}  # the masks the reconstruction learns, and their dense start
    for name, target in targets(block).items():
        per_stream = {stream: stats[stream][name] for stream in stats}
        label = f"{index}.{name}"
        if name in dense:
            if hessians is not None:
                hessians.discard(name)
            reports.append(kept_dense_report(label, target, per_stream["translation"], config))
            continue
        hessian = None
        if hessians is not None and int(per_stream["translation"].n):
            hessian = hessians.pop_factor(name, config.dampening, label)
        selection = mask_selection(per_stream, config, sparsity, first_seed + len(reports))
        if config.reconstruct_mask == "learned":
            selections[name] = selection
            dense_weights[name] = target.matrix().clone()
        reports.append(prune_target(label, target, per_stream, config, selection, hessian=hessian))
    reconstruction = None
    if config.reconstruct:
        reconstruction = reconstruct_block_(block, index, inputs, goals, config.reconstruct, config.reconstruct_lr,
                                            selections, dense_weights)
    return BlockResult(reports, reconstruction)


def check_prunable(model: nn.Module, config: PruneConfig) -> None:
    """Raise ConfigError before any work if a matrix's in_features does not fit the N:M pattern."""
    if config.nm is None:
        return
    m = config.nm[1]
    for index, block in enumerate(decoder_layers(model)):
        for name, target in targets(block).items():
            in_features = target.matrix().shape[1]
            if in_features % m:
                raise ConfigError(f"layer {index}.{name} has in_features={in_features}, not a multiple of M={m} "
                                  f"(pattern {config.pattern})")


def _distillation_targets(model: nn.Module, calibration, batch_size: int, config: PruneConfig):
    """(the distillation's targets, None): the dense model's final hidden states of every calibration batch
    (distill.dense_final_states); or (None, why) where the model's logits are not its LM head applied to them
    and the distillation is only the default (asked for, that ConfigError stands)."""
    try:
        return dense_final_states(model, calibration, batch_size), None
    except ConfigError as error:
        if config.distill is not None:
            raise
        return None, str(error)


@torch.no_grad()
def prune(model: nn.Module, tokenizer, config: PruneConfig, calib=None, contrast_calib=None,
          progress: bool = True) -> PruneReport:
    """Prune every prunable matrix of every decoder block of `model` in place.

    calib: None (built-in translation demonstrations) | ParallelCorpus | list[str] | LongTensor [N, T]
    of token ids | CalibrationSet. contrast_calib: the contrast stream of method 'contrastive' (default:
    monolingual prompts from the same corpus). With distillation (config.distill, or its default for N:M
    where it fits in memory: distill.planned_steps), the pruned model is then distilled end to end from the
    dense model's final hidden states, recorded first (tfprune.engine.distill). Returns a PruneReport.
    """
    start = time.perf_counter()
    check_architecture(model)
    check_prunable(model, config)
    check_finite_weights(model.named_parameters())
    distill_steps, distill_skipped = planned_steps(model, config)
    streams = calibration_streams(tokenizer, config, calib, contrast_calib)
    model.eval()
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = False
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    batch_size = effective_batch_size(model, config)
    try:
        dense_states, problem = (_distillation_targets(model, streams["translation"], batch_size, config)
                                 if distill_steps else (None, None))
        if problem:
            distill_steps, distill_skipped = skip_default(problem)
        inputs = ActivationStore("device", next(model.parameters()).device)
        for stream, calibration in streams.items():
            for item in capture_layer_inputs(model, calibration, stream, batch_size):
                inputs.append(item)
        item = None  # the store holds every batch; this name would keep the last one alive once it is replaced
        blocks = decoder_layers(model)
        plan = uniform_plan(config, len(blocks))
        if needs_dense_pass(config):
            originals = [item.hidden for item in inputs]
            plan = dense_pass(enumerate(blocks), inputs, config, len(blocks), progress)
            for i, hidden in enumerate(originals):
                inputs.put(i, hidden)
            del originals
        report = PruneReport(calibration_tokens=streams["translation"].tokens, block_sparsity=plan.sparsities,
                             kept_dense=plan.kept(), distillation_skipped=distill_skipped)
        for index, block in enumerate(tqdm(blocks, desc="pruning", unit="block", disable=not progress)):
            result = prune_block(block, index, inputs, config, plan.sparsities[index], config.seed + len(report.layers),
                                 dense=plan.dense[index])
            report.layers += result.reports
            if result.reconstruction is not None:
                report.reconstruction.append(asdict(result.reconstruction))
            forward_block(block, index, inputs)
        if distill_steps:
            del inputs  # the blocks' activations are done with: the fit needs the memory
            report.distillation = asdict(distill_(model, streams["translation"], dense_states, distill_steps,
                                                  config.distill_lr, batch_size, progress))
    finally:
        model.config.use_cache = use_cache
    report.seconds = time.perf_counter() - start
    report.peak_memory_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        report.peak_gpu_memory_bytes = torch.cuda.max_memory_allocated()
    log.info("pruned %d weight matrices to sparsity %.4f in %.1f s", len(report.layers), report.sparsity,
             report.seconds)
    return report
