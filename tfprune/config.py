"""PruneConfig: every option of a pruning run, validated when it is built."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["PruneConfig", "ProtectRule", "METHODS", "UPDATES", "DIRECTIONS", "PAPER_LANGS", "RECONSTRUCT_MASKS",
           "parse_pattern"]

METHODS = ("wanda", "magnitude", "contrastive", "random", "sparsegpt", "ria")
UPDATES = ("none", "obs")
DIRECTIONS = ("x2en", "en2x", "all", "mono")
# Languages of the paper's calibration (authors' code, FLORES-200 dev), English is the pivot.
PAPER_LANGS = ("ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """'unstructured' -> None; 'N:M' -> (N, M) with 0 < N < M."""
    if pattern == "unstructured":
        return None
    try:
        n, m = (int(part) for part in pattern.split(":"))
    except ValueError:
        raise ConfigError(f"pattern must be 'unstructured' or 'N:M' (e.g. 2:4), got {pattern!r}") from None
    if not 0 < n < m:
        raise ConfigError(f"N:M pattern needs 0 < N < M, got {n}:{m}")
    return n, m


@dataclass(frozen=True)
class ProtectRule:
    """Which input channels keep all their weights.

    kind 'topk': the `fraction` of channels with the largest ‖X_j‖₂ (at least one).
    kind 'int8': LLM.int8's rule: |x_j| > `tau` on at least `fraction` of the calibration tokens.
    """

    kind: str
    fraction: float
    tau: float | None = None

    @classmethod
    def parse(cls, text: str) -> "ProtectRule":
        """'topk:0.5%' | 'topk:0.005' | 'int8:6.0' | 'int8:6.0:0.06'."""
        kind, _, value = text.partition(":")
        if kind not in ("topk", "int8"):
            raise ConfigError(f"protect must be 'topk:P%' or 'int8:TAU[:FRACTION]', got {text!r}")
        try:
            if kind == "topk":
                fraction = float(value[:-1]) / 100 if value.endswith("%") else float(value)
                rule = cls("topk", fraction)
            else:
                parts = value.split(":") if value else ["6.0"]
                rule = cls("int8", float(parts[1]) if len(parts) > 1 else 0.06, float(parts[0]))
        except (ValueError, IndexError):
            raise ConfigError(f"cannot parse protect rule {text!r}") from None
        if not 0 < rule.fraction <= 1:
            raise ConfigError(f"protect fraction must be in (0, 1], got {rule.fraction} from {text!r}")
        if rule.tau is not None and not (rule.tau > 0 and math.isfinite(rule.tau)):
            raise ConfigError(f"protect threshold must be a positive number, got {rule.tau} from {text!r}")
        return rule


DEFAULT_RECONSTRUCT_STEPS = 256  # the best 2:4 the real-model benchmark found (benchmarks/README.md, "Quality")
DEFAULT_DISTILL_STEPS = 30  # with the reconstruction, the best 2:4 the benchmark found (benchmarks/README.md)
BASELINE_METHODS = ("magnitude", "random")
RECONSTRUCT_MASKS = ("fixed", "learned")


def default_reconstruct_steps(method: str, nm: tuple[int, int] | None) -> int:
    """Reconstruction steps when none are asked for: on for N:M patterns, where one-shot pruning loses most
    and the quality benchmark found block-wise reconstruction the best method (Gemma 3 270M, 2:4); off for
    unstructured sparsity and for the calibration-free baselines, which are asked for as they are published."""
    return DEFAULT_RECONSTRUCT_STEPS if nm is not None and method not in BASELINE_METHODS else 0


def default_distill_steps(method: str, nm: tuple[int, int] | None) -> int:
    """End-to-end distillation steps when none are asked for, in memory (the streaming engine never distills):
    on for N:M patterns, after the block-wise reconstruction, where the quality benchmark found the two
    together the best 2:4 (Gemma 3 270M); off for unstructured sparsity and the calibration-free baselines."""
    return DEFAULT_DISTILL_STEPS if nm is not None and method not in BASELINE_METHODS else 0


@dataclass(frozen=True)
class PruneConfig:
    """Options of one pruning run.

    method:     score of a weight: 'wanda' |W_ij|·‖X_j‖₂ (the paper's method with translation calibration),
                'magnitude' |W_ij|, 'contrastive' |W_ij|·‖X^mt_j‖²/‖X^contrast_j‖, 'random' (seeded),
                'sparsegpt' (SparseGPT's OBS selection, w²/[(H+λI)⁻¹]_jj, with its weight update),
                'ria' (relative importance (|W_ij|/Σ_row + |W_ij|/Σ_col)·‖X_j‖₂^0.5, Zhang et al. 2024).
    sparsity:   fraction of weights removed per output row, in [0, 1); None = 0.5, or 1 - N/M for N:M.
    pattern:    'unstructured' (per-row) or 'N:M' along the input dimension (every M keep exactly N).
    protect:    None, 'topk:P%' or 'int8:TAU[:FRACTION]' (see ProtectRule): channels never pruned.
    nsamples:   number of calibration prompts; seqlen: their maximal length in tokens.
    shots:      translation demonstrations per prompt; direction: 'x2en' | 'en2x' | 'all' (every ordered pair of
                languages) | 'mono'.
    langs:      languages paired with English (None: every language of the corpus).
    owl:        (M, lambda) for OWL layerwise sparsity (unstructured only), None for uniform.
    keep_dense: sensitivity-aware allocation: the share of the prunable weights (by count) that may stay dense,
                given to the matrices whose pruning alone costs the block's output most per weight (a dense
                pass before pruning, tfprune.engine.plan); 0 = every matrix pruned.
    tau:        threshold of the |x| > τ count statistic (taken from an 'int8' protect rule if given).
    batch_size: calibration prompts per forward pass; report_topk: large-magnitude channels reported per layer.
    update:     'obs' corrects the kept weights by SparseGPT's OBS update (H = XᵀX of the translation stream),
                'none' only zeroes; None = 'obs' for method 'sparsegpt', else 'none'.
    dampening:  λ = dampening · mean(diag H) added to diag H (more on Cholesky failure); blocksize: columns per
                OBS block (for N:M rounded down to a multiple of M, at least M: see obs_blocksize).
    reconstruct: Adam steps per decoder block of block-wise reconstruction after pruning (0 = off): the kept
                weights and norms are fitted (masks fixed, or learned: reconstruct_mask) to the dense block's
                outputs on the calibration batches (tfprune.engine.reconstruct); None =
                default_reconstruct_steps (on for N:M); reconstruct_lr: its learning rate.
    reconstruct_mask: 'fixed' (the one-shot masks stay) or 'learned': the reconstruction re-selects every
                pruned matrix's mask from its current weights at every step by the run's score (Wanda's for
                'sparsegpt'), same pattern and protected channels, with straight-through gradients from the
                dense values of the pruned weights, so that a pruned weight can come back and replace a kept
                one (6 bytes per weight more while fitting: the float32 latent copy and two masks; and the
                dense matrices until the fit starts).
    distill:    Adam steps of end-to-end distillation after pruning (0 = off): every decoder block's kept weights
                and norms fitted at once to the dense model's next-token distributions (KL over the vocabulary)
                on the calibration prompts (tfprune.engine.distill; the in-memory engine only); None = the
                in-memory engine's default_distill_steps (on for N:M) where the fit fits the device's free
                memory, else 0; the streaming engine: 0; distill_lr: its peak learning rate (cosine decay to 0).
    """

    method: str = "wanda"
    sparsity: float | None = None
    pattern: str = "unstructured"
    protect: str | None = None
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    shots: int = 4
    direction: str = "x2en"
    langs: tuple[str, ...] | None = None
    owl: tuple[float, float] | None = None
    keep_dense: float = 0.0
    tau: float = 6.0
    batch_size: int = 8
    report_topk: int = 8
    update: str | None = None
    dampening: float = 0.01
    blocksize: int = 128
    reconstruct: int | None = None
    reconstruct_lr: float = 1e-4
    reconstruct_mask: str = "fixed"
    distill: int | None = None
    distill_lr: float = 5e-5

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        nm = parse_pattern(self.pattern)
        if self.sparsity is None:
            object.__setattr__(self, "sparsity", 0.5 if nm is None else 1 - nm[0] / nm[1])
        if not (isinstance(self.sparsity, (int, float)) and 0 <= self.sparsity < 1):
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if nm is not None and not math.isclose(self.sparsity, 1 - nm[0] / nm[1]):
            raise ConfigError(
                f"pattern {self.pattern} fixes sparsity at {1 - nm[0] / nm[1]:g}, but sparsity={self.sparsity} was given"
            )
        if self.protect is not None:
            rule = ProtectRule.parse(self.protect)
            if rule.tau is not None:
                object.__setattr__(self, "tau", rule.tau)
        for name in ("nsamples", "seqlen", "shots", "batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.report_topk < 0:
            raise ConfigError(f"report_topk must be >= 0, got {self.report_topk}")
        if self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {', '.join(DIRECTIONS)}, got {self.direction!r}")
        if self.langs is not None:
            object.__setattr__(self, "langs", tuple(self.langs))
            if not self.langs:
                raise ConfigError("langs is empty: give at least one language or None for all")
        if self.owl is not None:
            if nm is not None:
                raise ConfigError("OWL layerwise sparsity applies to unstructured pruning, not to N:M patterns")
            if (len(self.owl) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.owl)
                    or self.owl[0] <= 0 or not 0 <= self.owl[1] < 0.5):
                raise ConfigError(f"owl must be two finite numbers (M > 0, 0 <= lambda < 0.5), got {self.owl}")
            object.__setattr__(self, "owl", tuple(float(v) for v in self.owl))
        if isinstance(self.keep_dense, bool) or not (isinstance(self.keep_dense, (int, float))
                                                     and 0 <= self.keep_dense < 1):
            raise ConfigError(f"keep_dense must be a share of the prunable weights in [0, 1), got {self.keep_dense!r}")
        if self.keep_dense > 0 and self.owl is not None:
            raise ConfigError("keep_dense and owl both allocate sparsity across layers: use one of them")
        if not (self.tau > 0 and math.isfinite(self.tau)):
            raise ConfigError(f"tau must be a positive number, got {self.tau}")
        if self.update is None:
            object.__setattr__(self, "update", "obs" if self.method == "sparsegpt" else "none")
        if self.update not in UPDATES:
            raise ConfigError(f"update must be one of {', '.join(UPDATES)}, got {self.update!r}")
        if self.method == "sparsegpt" and self.update != "obs":
            raise ConfigError("method 'sparsegpt' selects weights by the OBS update: it needs update='obs'")
        if isinstance(self.dampening, bool) or not (isinstance(self.dampening, (int, float)) and self.dampening > 0
                                                    and math.isfinite(self.dampening)):
            raise ConfigError(f"dampening must be a positive number (fraction of mean diag H), got {self.dampening!r}")
        if isinstance(self.blocksize, bool) or not (isinstance(self.blocksize, int) and self.blocksize >= 1):
            raise ConfigError(f"blocksize must be a positive integer, got {self.blocksize!r}")
        if self.reconstruct is None:
            object.__setattr__(self, "reconstruct", default_reconstruct_steps(self.method, nm))
        if isinstance(self.reconstruct, bool) or not (isinstance(self.reconstruct, int) and self.reconstruct >= 0):
            raise ConfigError(f"reconstruct must be a number of steps >= 0, got {self.reconstruct!r}")
        if isinstance(self.reconstruct_lr, bool) or not (isinstance(self.reconstruct_lr, (int, float))
                                                         and 0 < self.reconstruct_lr < 1
                                                         and math.isfinite(self.reconstruct_lr)):
            raise ConfigError(f"reconstruct_lr must be a learning rate in (0, 1), got {self.reconstruct_lr!r}")
        if self.distill is not None and (isinstance(self.distill, bool)
                                         or not (isinstance(self.distill, int) and self.distill >= 0)):
            raise ConfigError(f"distill must be a number of steps >= 0, got {self.distill!r}")
        if isinstance(self.distill_lr, bool) or not (isinstance(self.distill_lr, (int, float))
                                                     and 0 < self.distill_lr < 1 and math.isfinite(self.distill_lr)):
            raise ConfigError(f"distill_lr must be a learning rate in (0, 1), got {self.distill_lr!r}")
        if self.reconstruct_mask not in RECONSTRUCT_MASKS:
            raise ConfigError(f"reconstruct_mask must be one of {', '.join(RECONSTRUCT_MASKS)}, "
                              f"got {self.reconstruct_mask!r}")
        if self.reconstruct_mask == "learned" and not self.reconstruct:
            raise ConfigError("reconstruct_mask 'learned' re-selects the masks during the reconstruction: give "
                              "reconstruct a number of steps > 0")
        if self.reconstruct_mask == "learned" and self.method == "random":
            raise ConfigError("reconstruct_mask 'learned' re-selects the masks by their weights' scores: method "
                              "'random' has none (use 'fixed')")

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for an N:M pattern, None for unstructured."""
        return parse_pattern(self.pattern)

    @property
    def obs_blocksize(self) -> int:
        """Columns per OBS block: blocksize, for N:M rounded down to a multiple of M (at least M), so that no
        N:M group straddles two blocks."""
        nm = self.nm
        return self.blocksize if nm is None else max(nm[1], self.blocksize - self.blocksize % nm[1])

    @property
    def protect_rule(self) -> ProtectRule | None:
        return None if self.protect is None else ProtectRule.parse(self.protect)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def paper_recipe(cls, **overrides) -> "PruneConfig":
        """The paper's calibration: 4-shot X→English, 100 samples of 512 tokens, its 14 languages."""
        options = dict(method="wanda", nsamples=100, seqlen=512, shots=4, direction="x2en", langs=PAPER_LANGS)
        options.update(overrides)
        return cls(**options)
