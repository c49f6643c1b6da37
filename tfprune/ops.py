"""Tensor ops of the pruning engine, dispatched by device.

Every op has one pure-torch reference (in stats.py, scores.py, masks.py) used on the CPU and by the
tests; the Triton kernels of tfprune.kernels run them for CUDA tensors.

Backend: `TFPRUNE_BACKEND` = 'auto' (default: Triton for CUDA tensors when triton imports, the torch
reference otherwise), 'torch' (always the reference) or 'triton' (always the kernels; CPU tensors then
need TRITON_INTERPRET=1, set before triton is first imported). Forcing Triton where it cannot run
(triton missing, a CPU tensor without the interpreter, a dtype the kernels do not take) raises
BackendError; it never falls back silently. Both backends give the same masks: scores are the same fp32
products, and selection is exact (ties to the lower index); Σx² agrees to fp32 rounding.
"""
from __future__ import annotations

import functools
import os

import torch

from .errors import BackendError
from .masks import nm_mask_ref, outlier_ratio as outlier_ratio_ref, row_mask_ref
from .scores import SCORE_METHODS, TENSOR_SCORES, scores_ref

__all__ = ["channel_stats", "accumulate_channel_stats_", "scores", "nm_mask", "row_mask", "apply_mask_",
           "prune_weight_", "outlier_ratio", "pack_mask", "backend"]

BACKENDS = ("auto", "torch", "triton")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@functools.lru_cache(maxsize=1)
def _triton_error() -> str | None:
    """Why triton cannot be imported, or None."""
    try:
        import triton  # noqa: F401
    except Exception as error:  # ImportError, or a broken install raising anything at import
        return f"{type(error).__name__}: {error}"
    return None


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def backend(*tensors: torch.Tensor | None, op: str = "op") -> str:
    """'torch' or 'triton': the backend that runs `op` on `tensors` (see the module docstring).
    Raises BackendError when TFPRUNE_BACKEND=triton cannot be honoured."""
    choice = os.environ.get("TFPRUNE_BACKEND", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise BackendError(f"TFPRUNE_BACKEND={choice!r}: choose one of {', '.join(BACKENDS)}")
    if choice == "torch":
        return "torch"
    present = [t for t in tensors if t is not None]
    device = present[0].device if present else torch.device("cpu")
    fits = all(t.dtype in _KERNEL_DTYPES or not t.is_floating_point() for t in present)
    if choice == "auto":
        return "triton" if device.type == "cuda" and fits and _triton_error() is None else "torch"
    if device.type == "cpu" and not _interpreter_on():
        raise BackendError(f"TFPRUNE_BACKEND=triton: {op} got CPU tensors; Triton runs them only under "
                           "TRITON_INTERPRET=1 (set before triton is imported), or use a CUDA device")
    if _triton_error() is not None:
        raise BackendError(f"TFPRUNE_BACKEND=triton, but triton cannot be imported ({_triton_error()})")
    if device.type == "cpu":
        from .kernels import _common

        if not _common.INTERPRETED:
            raise BackendError("TFPRUNE_BACKEND=triton with TRITON_INTERPRET=1, but triton or tfprune.kernels was "
                               "imported before TRITON_INTERPRET was set: set it at the start of the process")
    elif device.type != "cuda":
        raise BackendError(f"TFPRUNE_BACKEND=triton: {op} got {device.type} tensors; Triton runs on CUDA")
    if not fits:
        dtypes = sorted({str(t.dtype) for t in present if t.is_floating_point()})
        raise BackendError(f"TFPRUNE_BACKEND=triton: {op} kernels take fp16/bf16/fp32, got {', '.join(dtypes)}")
    return "triton"


def channel_stats(x: torch.Tensor, tau: float = 6.0, token_mask: torch.Tensor | None = None):
    """Σx², max|x|, #(|x| > tau) per channel and the token count of x: [T, C] (token_mask: [T] bool).
    Returns (sumsq [C] fp32, maxabs [C] fp32, count [C] int64, n [] int64)."""
    if backend(x, op="channel_stats") == "torch":
        from .stats import channel_stats_ref

        return channel_stats_ref(x, tau, token_mask)
    from .kernels.channel_stats import channel_stats_

    channels = x.shape[-1] if x.dim() == 2 else 0
    sumsq = torch.zeros(channels, dtype=torch.float64, device=x.device)
    maxabs = torch.zeros(channels, dtype=torch.float32, device=x.device)
    count = torch.zeros(channels, dtype=torch.int64, device=x.device)
    n = torch.zeros((), dtype=torch.int64, device=x.device)
    channel_stats_(x, tau, token_mask, sumsq, maxabs, count, n)
    return sumsq.float(), maxabs, count, n


def accumulate_channel_stats_(x: torch.Tensor, tau: float, token_mask: torch.Tensor | None, sumsq: torch.Tensor,
                              maxabs: torch.Tensor, count: torch.Tensor, n: torch.Tensor) -> None:
    """Add the statistics of x: [T, C] into running buffers in place: sumsq [C] fp64, maxabs [C] fp32,
    count [C] int64, n [] int64 (what ChannelStats holds). Triton: one pass over x, no copy of it."""
    same_device = all(buf.device == x.device for buf in (sumsq, maxabs, count, n))
    if same_device and backend(x, op="channel_stats") == "triton":
        from .kernels.channel_stats import channel_stats_

        channel_stats_(x, tau, token_mask, sumsq, maxabs, count, n)
        return
    part_sumsq, part_maxabs, part_count, part_n = channel_stats(x, tau, token_mask)
    sumsq += part_sumsq.to(sumsq.device, torch.float64)
    torch.maximum(maxabs, part_maxabs.to(maxabs.device), out=maxabs)
    count += part_count.to(count.device)
    n += part_n.to(n.device)


def scores(weight, method, norm=None, contrast_norm=None, protect=None, seed=0) -> torch.Tensor:
    """Importance of every weight of weight: [out, in] -> [out, in] fp32 (see scores.scores_ref).
    'random' scores always come from torch's seeded CPU generator."""
    if method in TENSOR_SCORES or method not in SCORE_METHODS or backend(weight, op="scores") == "torch":
        return scores_ref(weight, method, norm, contrast_norm, protect, seed)
    from .kernels import scores as kernel

    _check_vectors(weight, norm=norm, contrast_norm=contrast_norm, protect=protect)
    return kernel.scores(weight, kernel.channel_factor(method, norm, contrast_norm, weight.device),
                         None if protect is None else protect.to(weight.device))


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask [out, in] bool keeping the n best of every m consecutive inputs of a row."""
    if backend(scores, op="nm_mask") == "torch" or scores.dim() != 2:
        return nm_mask_ref(scores, n, m)
    from .kernels.nm_prune import nm_prune_

    return nm_prune_(None, n, m, scores=scores, apply=False).mask


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask [out, in] bool pruning exactly int(in · sparsity) lowest scores of every row."""
    if backend(scores, op="row_mask") == "torch" or scores.dim() != 2:
        return row_mask_ref(scores, sparsity)
    from .kernels.row_prune import row_prune_

    return row_prune_(None, sparsity, scores=scores, apply=False).mask


def apply_mask_(weight: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero (to +0.0) the weights where keep is False, in place. weight, keep: [out, in]."""
    return weight.masked_fill_(~keep, 0.0)


def prune_weight_(weight: torch.Tensor, method: str, *, sparsity: float | None = None,
                  nm: tuple[int, int] | None = None, norm: torch.Tensor | None = None,
                  contrast_norm: torch.Tensor | None = None, protect: torch.Tensor | None = None, seed: int = 0,
                  apply: bool = True) -> torch.Tensor:
    """Score, mask and (apply=True) zero weight: [out, in] in place; returns the keep-mask [out, in] bool.

    Same result as scores() -> nm_mask(n, m) if nm else row_mask(sparsity) -> apply_mask_(); on Triton one
    fused pass over W per row block (N:M) or a per-row bisection select, with no score tensor of W's size
    (except for TENSOR_SCORES: 'random' from torch's generator, 'ria' from row and column sums). weight may be a strided view.
    """
    if nm is None and sparsity is None:
        raise ValueError("prune_weight_: give sparsity (unstructured) or nm=(n, m)")
    if backend(weight, op="prune_weight_") == "torch" or weight.dim() != 2 or method not in SCORE_METHODS:
        score = scores_ref(weight, method, norm, contrast_norm, protect, seed)
        keep = nm_mask_ref(score, *nm) if nm is not None else row_mask_ref(score, sparsity)
        if apply:
            apply_mask_(weight, keep)
        return keep
    from .kernels import scores as kernel
    from .kernels.nm_prune import nm_prune_
    from .kernels.row_prune import row_prune_

    _check_vectors(weight, norm=norm, contrast_norm=contrast_norm, protect=protect)
    if method in TENSOR_SCORES:
        given = dict(scores=scores_ref(weight, method, norm, contrast_norm, protect, seed))
    else:
        given = dict(factor=kernel.channel_factor(method, norm, contrast_norm, weight.device),
                     protect=None if protect is None else protect.to(weight.device))
    if nm is not None:
        return nm_prune_(weight, nm[0], nm[1], apply=apply, **given).mask
    return row_prune_(weight, sparsity, apply=apply, **given).mask


def outlier_ratio(weights: list[torch.Tensor], norms: list[torch.Tensor], multiple: float) -> float:
    """OWL's outlier ratio of one block: the share of its Wanda scores |W_ij|·norm_j above `multiple` ×
    their mean. weights: [out, in] each; norms: [in] each. Triton: two reads of every W (Σ score, then
    the count above the threshold), no score tensor; the torch path is masks.outlier_ratio of ops.scores."""
    if len(weights) != len(norms):
        raise ValueError(f"outlier_ratio: {len(weights)} weights but {len(norms)} norms")
    if not weights or any(backend(w, op="outlier_ratio") == "torch" or w.dim() != 2 for w in weights):
        return outlier_ratio_ref([scores_ref(w, "wanda", v) for w, v in zip(weights, norms)], multiple)
    from .kernels import scores as kernel

    for w, v in zip(weights, norms):
        _check_vectors(w, norm=v)
    factors = [kernel.channel_factor("wanda", v, None, w.device) for w, v in zip(weights, norms)]
    total = sum(kernel.score_stats(w, f)[0].cpu() for w, f in zip(weights, factors))
    numel = sum(w.numel() for w in weights)
    threshold = multiple * total / numel
    over = sum(int(kernel.score_stats(w, f, threshold=float(threshold.float()))[1]) for w, f in zip(weights, factors))
    return over / numel


def pack_mask(keep: torch.Tensor) -> torch.Tensor:
    """Bit mask of keep [out, in] bool: uint8 [out, ceil(in/8)], bit k of byte b = column 8b + k
    (numpy.packbits(..., bitorder='little'): compressed-tensors' bitmask layout). Torch on every device."""
    if keep.dim() != 2 or keep.dtype != torch.bool:
        raise ValueError(f"pack_mask: keep must be a 2-D bool tensor, got {tuple(keep.shape)} {keep.dtype}")
    rows, cols = keep.shape
    padded = torch.zeros(rows, -(-cols // 8) * 8, dtype=torch.uint8, device=keep.device)
    padded[:, :cols] = keep
    bit = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=keep.device)
    return (padded.reshape(rows, -1, 8) * bit).sum(-1, dtype=torch.int32).to(torch.uint8)


def _check_vectors(weight: torch.Tensor, **vectors: torch.Tensor | None) -> None:
    """The [in] vectors of a weight [out, in] must be [in] (same messages as scores_ref)."""
    if weight.dim() != 2:
        raise ValueError(f"scores: weight must be [out, in], got shape {tuple(weight.shape)}")
    for name, vec in vectors.items():
        if vec is not None and vec.shape != (weight.shape[1],):
            raise ValueError(f"scores: {name} must be [{weight.shape[1]}], got {tuple(vec.shape)}")
