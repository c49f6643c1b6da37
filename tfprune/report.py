"""PruneReport: what a pruning run did, per linear layer, and its summary table."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["LayerReport", "PruneReport"]


@dataclass
class LayerReport:
    """One pruned weight matrix (a linear layer or one expert's matrix). shape: (out, in); sparsity: share of
    zero weights after pruning; top_channels: the largest-‖X_j‖₂ input channels [(channel, norm)]; protected:
    channels never pruned; violations: protected weights that N:M forced out; tokens: calibration tokens that
    reached it (an expert sees only those routed to it); note: how it was pruned when not as configured."""

    name: str
    shape: tuple[int, int]
    target_sparsity: float
    sparsity: float
    top_channels: list[tuple[int, float]]
    protected: list[int]
    violations: int
    seconds: float
    tokens: int = 0
    note: str = ""


@dataclass
class PruneReport:
    """Per-layer reports plus the run's totals (seconds, peak memory in bytes, calibration tokens)."""

    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    peak_gpu_memory_bytes: int = 0
    calibration_tokens: int = 0
    block_sparsity: list[float] = field(default_factory=list)
    reconstruction: list[dict] = field(default_factory=list)  # per block: asdict(BlockReconstruction)
    kept_dense: list[str] = field(default_factory=list)  # matrices the layer plan left dense ("3.mlp.down_proj")
    distillation: dict | None = None  # asdict(tfprune.engine.distill.Distillation)
    distillation_skipped: str | None = None  # why the default distillation did not run (memory, output head)

    @property
    def sparsity(self) -> float:
        """Share of zero weights over all pruned layers."""
        total = sum(layer.shape[0] * layer.shape[1] for layer in self.layers)
        zeros = sum(layer.sparsity * layer.shape[0] * layer.shape[1] for layer in self.layers)
        return zeros / total if total else 0.0

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["sparsity"] = self.sparsity
        return data

    def table(self) -> str:
        """The summary printed at the end of a run."""
        routed = len({layer.tokens for layer in self.layers}) > 1  # experts see their routed tokens only
        tokens = f" {'tokens':>8}" if routed else ""
        lines = [f"{'layer':<42} {'shape':>12} {'sparsity':>9} {'protected':>9} {'viol.':>6}{tokens} {'top channels':<24}"]
        for layer in self.layers:
            top = ",".join(str(channel) for channel, _ in layer.top_channels[:4]) or layer.note
            shape = f"{layer.shape[0]}x{layer.shape[1]}"
            count = f" {layer.tokens:>8}" if routed else ""
            lines.append(f"{layer.name:<42} {shape:>12} {layer.sparsity:>9.4f} {len(layer.protected):>9} "
                         f"{layer.violations:>6}{count} {top:<24}")
        if self.reconstruction:
            errors = " ".join(f"{r['index']}:{r['error_before']:.3g}->{r['error_after']:.3g}" for r in self.reconstruction)
            lines.append(f"block reconstruction, relative output error on the calibration batches: {errors}")
        if self.distillation:
            d = self.distillation
            lines.append(f"distillation: {d['steps']} steps, KL from the dense model {d['kl_before']:.4g} -> "
                         f"{d['kl_after']:.4g} nats/token on the first calibration batch, {d['seconds']:.1f} s")
        if self.distillation_skipped:
            lines.append(f"no distillation (the default for N:M): {self.distillation_skipped}")
        if self.kept_dense:
            shapes = {layer.name: layer.shape for layer in self.layers}
            weights = sum(shapes[name][0] * shapes[name][1] for name in self.kept_dense)
            total = sum(shape[0] * shape[1] for shape in shapes.values())
            lines.append(f"kept dense by sensitivity: {len(self.kept_dense)} matrices, {100 * weights / total:.1f} % of "
                         f"the prunable weights: {', '.join(self.kept_dense)}")
        gpu = f", peak GPU memory {self.peak_gpu_memory_bytes / 2**20:.0f} MiB" if self.peak_gpu_memory_bytes else ""
        lines.append(f"{len(self.layers)} layers, overall sparsity {self.sparsity:.4f}, "
                     f"{self.calibration_tokens} calibration tokens, {self.seconds:.1f} s, "
                     f"peak RSS {self.peak_memory_bytes / 2**20:.0f} MiB{gpu}")
        return "\n".join(lines)
