"""The layer plan: what each decoder block is pruned to, decided before pruning by a dense pass when the
options need one (OWL's layerwise sparsity, sensitivity-aware allocation). Both engines run the same pass:
`measure_block` on every dense block in turn (on the dense model's activations), then `make_plan`.

Sensitivity-aware allocation (`keep_dense`): the cost of pruning a matrix is measured on its own, every other
matrix dense: the relative error Σ‖B̃(X) − B(X)‖² / Σ‖B(X)‖² over the real tokens of the translation batches,
block i's output with that one matrix pruned by Wanda's score |W_ij|·‖X_j‖₂ at the run's pattern against the
dense block's output (the error the reconstruction minimizes; the mean per-token error, which weighs the first
token, the attention sink, like any other, allocated worse one-shot and tied after the reconstruction:
benchmarks/README.md). The matrices with the largest cost per weight stay dense, greedily, while their weights
stay within `keep_dense` × all prunable weights.
Its cost: (matrices + 2) forwards of each block over the calibration batches, and the dense outputs (one more
copy of the activations) while a block is measured.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import masks, ops
from ..config import PruneConfig
from ..errors import NonFiniteActivationError
from .calibrate import collect_block_stats
from .discovery import targets
from .reconstruct import goal_keeper, relative_error

__all__ = ["LayerPlan", "BlockMeasure", "needs_dense_pass", "uniform_plan", "measure_block", "make_plan",
           "block_outlier_ratio", "dense_allocation"]

log = logging.getLogger("tfprune")


@dataclass
class LayerPlan:
    """sparsities[i]: the target sparsity of block i's matrices; dense[i]: names (inside block i) of the
    matrices left dense."""

    sparsities: list[float]
    dense: list[list[str]] = field(default_factory=list)

    def __post_init__(self):
        if not self.dense:
            self.dense = [[] for _ in self.sparsities]

    def kept(self) -> list[str]:
        """The matrices left dense, as '{block}.{name}'."""
        return [f"{index}.{name}" for index, names in enumerate(self.dense) for name in names]

    def to_dict(self) -> dict:
        return {"sparsities": self.sparsities, "dense": self.dense}

    @classmethod
    def from_dict(cls, data: dict) -> "LayerPlan":
        return cls(list(data["sparsities"]), [list(names) for names in data["dense"]])


@dataclass
class BlockMeasure:
    """What the dense pass measured on one block: OWL's outlier ratio (None without OWL) and, for the
    allocation, {matrix name: (cost, weights)} (empty without keep_dense)."""

    outlier_ratio: float | None = None
    costs: dict[str, tuple[float, int]] = field(default_factory=dict)


def needs_dense_pass(config: PruneConfig) -> bool:
    return config.owl is not None or config.keep_dense > 0


def uniform_plan(config: PruneConfig, blocks: int) -> LayerPlan:
    return LayerPlan([config.sparsity] * blocks)


@torch.no_grad()
def block_outlier_ratio(block: nn.Module, config: PruneConfig, stats) -> float:
    """OWL's outlier ratio of one dense block: the share of its Wanda scores above M × their mean (matrices
    that received no token are left out). stats: {name: ChannelStats} of the block's translation stream."""
    seen = [(target.matrix(), stats[name].norm) for name, target in targets(block).items() if int(stats[name].n)]
    return ops.outlier_ratio([w for w, _ in seen], [v for _, v in seen], config.owl[0])


@torch.no_grad()
def matrix_costs(block: nn.Module, index: int, inputs, config: PruneConfig, stats, goals) -> dict[str, tuple[float, int]]:
    """{name: (cost, weights)} of every matrix of dense block `index` (module docstring); a matrix no token
    reached costs 0. The block is left as it was."""
    costs = {}
    for name, target in targets(block).items():
        weight = target.matrix()
        if not int(stats[name].n):
            costs[name] = (0.0, weight.numel())
            continue
        saved = weight.clone()
        try:
            ops.prune_weight_(weight, "wanda", sparsity=config.sparsity, nm=config.nm, norm=stats[name].norm)
            cost = relative_error(block, index, inputs, goals, stream="translation")
        finally:
            weight.copy_(saved)
        if not math.isfinite(cost):
            raise NonFiniteActivationError(f"block {index}: the output of {name} pruned alone is not finite; "
                                           "check the model's dtype and the calibration")
        costs[name] = (cost, weight.numel())
    return costs


@torch.no_grad()
def measure_block(block: nn.Module, index: int, inputs, config: PruneConfig) -> BlockMeasure:
    """The dense pass's measurements on block `index` (dense, fed the dense model's activations)."""
    goals: list[torch.Tensor] = []
    stats = collect_block_stats(block, index, inputs, config.tau,
                                on_output=goal_keeper(inputs, goals) if config.keep_dense > 0 else None)["translation"]
    measure = BlockMeasure()
    if config.owl is not None:
        measure.outlier_ratio = block_outlier_ratio(block, config, stats)
    if config.keep_dense > 0:
        measure.costs = matrix_costs(block, index, inputs, config, stats, goals)
    return measure


def dense_allocation(costs: dict[str, tuple[float, int]], budget: float) -> list[str]:
    """The keys of `costs` ({key: (cost, weights)}) kept dense: by cost per weight, largest first (ties by
    key), each taken if the weights taken so far plus its own stay within budget × all weights (a greedy
    knapsack: a matrix too large for what is left is passed over, smaller ones after it may fit). Matrices that
    cost nothing are never taken. Sorted keys."""
    limit = budget * sum(weights for _, weights in costs.values())
    chosen, used = [], 0
    for key, (cost, weights) in sorted(costs.items(), key=lambda item: (-item[1][0] / max(item[1][1], 1), item[0])):
        if cost > 0 and used + weights <= limit:
            chosen.append(key)
            used += weights
    return sorted(chosen)


def make_plan(measures: list[BlockMeasure], config: PruneConfig) -> LayerPlan:
    """The plan from the dense pass's measures of every block (in block order)."""
    plan = uniform_plan(config, len(measures))
    if config.owl is not None:
        plan.sparsities = masks.owl_sparsities([m.outlier_ratio for m in measures], config.sparsity, config.owl[1])
    if config.keep_dense > 0:
        costs = {(index, name): cost for index, m in enumerate(measures) for name, cost in m.costs.items()}
        for index, name in dense_allocation(costs, config.keep_dense):
            plan.dense[index].append(name)
        kept = plan.kept()
        share = sum(costs[(index, name)][1] for index, names in enumerate(plan.dense) for name in names)
        log.info("sensitivity-aware allocation: %d of %d matrices kept dense (%.1f %% of the prunable weights, "
                 "budget %.1f %%): %s", len(kept), len(costs), 100 * share / max(sum(c[1] for c in costs.values()), 1),
                 100 * config.keep_dense, ", ".join(kept) or "none")
    return plan
