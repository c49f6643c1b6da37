"""SparseGPT's OBS weight update (Frantar & Alistarh, ICML 2023), with exact per-row and N:M sparsity.

For a linear layer with weight W [out, in] and calibration inputs X [tokens, in], H = XᵀX (fp32, real tokens
only; diag(H) is ChannelStats.sumsq). H is dampened by λ = dampening · mean(diag H), and U is the upper
Cholesky factor of (H + λI)⁻¹. Columns are processed left to right in blocks: when column j loses weights,
the error err = (w_j − q_j) / U_jj is propagated into the columns not processed yet (W[:, j:] -= err·U[j, j:]),
lazily across blocks (W[:, i2:] -= Err·U[i1:i2, i2:]), so the kept weights compensate for the pruned ones.

Masks (True = keep, as everywhere in tfprune):
- `keep` given (update 'obs' on a tfprune score): the mask is fixed, only the weights are corrected.
- unstructured (SparseGPT's own selection): at the start of each block, every row prunes the lowest
  w²/U_jj² of the block. SparseGPT thresholds a whole block across rows, so its rows end up with unequal
  counts; here each row prunes an exact share of the block, chosen so that every row loses exactly
  int(in · sparsity) weights in total (the count of masks.row_mask_ref).
- N:M: at each group of M columns, the M − N lowest w²/U_jj² of the (already updated) group are pruned.
Protected channels are pruned last (only when the per-row budget or an N:M group leaves no other choice,
counted as violations; then by w²/U_jj² among them) and still absorb updates. Dead channels
(diag H == 0) get H_jj = 1 as in SparseGPT; SparseGPT then zeroes their weights, here they score 0 instead, so
they are pruned first but within the exact per-row budget (they do not affect the calibration outputs).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .errors import HessianError, NonFiniteActivationError

__all__ = ["HessianFactor", "ObsResult", "HessianCollector", "factorize", "sparsegpt_prune_", "check_hessian",
           "DAMPENING_GROWTH", "MAX_TRIES"]

log = logging.getLogger("tfprune")

DAMPENING_GROWTH = 10.0  # each failed factorization multiplies the dampening fraction by this
MAX_TRIES = 6  # 0.01 -> 1e3 · mean(diag H): beyond that H is garbage, not merely ill-conditioned


@dataclass
class HessianFactor:
    """The dampened inverse Hessian of one linear layer, as SparseGPT uses it.

    u: [in, in] upper triangular, (H' + λI)⁻¹ = uᵀu, where H' is H with H_jj := 1 on dead channels;
    diag: [in] fp64 diag(H) as accumulated (equals ChannelStats.sumsq over the same tokens);
    dead: [in] bool, channels with diag(H) == 0; dampening: λ / mean(diag H') finally used; retries: failed tries.
    """

    u: torch.Tensor
    diag: torch.Tensor
    dead: torch.Tensor
    dampening: float
    retries: int


@dataclass
class ObsResult:
    """keep: [out, in] bool final mask; loss: Σ over rows of ½ Σ_j err_j² (the OBS loss, H' metric);
    violations: protected weights that had to be pruned; dead: dead input channels."""

    keep: torch.Tensor
    loss: float
    violations: int
    dead: int
    dampening: float
    retries: int


def factorize(hessian: torch.Tensor, dampening: float = 0.01, name: str = "", dtype: torch.dtype = torch.float32
              ) -> HessianFactor:
    """Dampen H [in, in] and factorize its inverse (Cholesky, inverse, upper Cholesky), on H's device.

    If H + λI is not positive definite (or the inverse's factorization fails), retry with the dampening
    fraction × DAMPENING_GROWTH, logging a warning, up to MAX_TRIES; then raise HessianError.
    """
    if hessian.dim() != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"{name or 'sparsegpt'}: hessian must be square [in, in], got {tuple(hessian.shape)}")
    if isinstance(dampening, bool) or not (isinstance(dampening, (int, float)) and dampening > 0
                                           and math.isfinite(dampening)):
        raise ValueError(f"{name or 'sparsegpt'}: dampening must be a positive number, got {dampening!r}")
    if not bool(torch.isfinite(hessian).all()):
        raise NonFiniteActivationError(f"{name or 'sparsegpt'}: the Hessian XᵀX holds NaN/Inf: the calibration "
                                       "activations overflowed (check the model's dtype)")
    diag = hessian.diagonal().to(torch.float64)
    if bool((diag < 0).any()):
        raise ValueError(f"{name or 'sparsegpt'}: diag(H) has negative entries: H is not a Gram matrix XᵀX")
    h = hessian.to(dtype=dtype, copy=True)  # [in, in], consumed in place below
    dead = h.diagonal() == 0
    dead_index = dead.nonzero().flatten()
    h[dead_index, dead_index] = 1.0
    mean = float(h.diagonal().mean())
    fraction, applied = float(dampening), 0.0
    for attempt in range(MAX_TRIES):
        h.diagonal().add_((fraction - applied) * mean)
        applied = fraction
        lower, info = torch.linalg.cholesky_ex(h)
        if not int(info):
            inverse = torch.cholesky_inverse(lower)
            del lower
            u, info = torch.linalg.cholesky_ex(inverse, upper=True)
            del inverse
            if not int(info) and bool(torch.isfinite(u).all()):
                if attempt:
                    log.warning("%s: factorized with dampening %.3g after %d retries", name, fraction, attempt)
                return HessianFactor(u, diag, dead, fraction, attempt)
        log.warning("%s: H + %.3g·mean(diag H)·I is not positive definite in %s; retrying with dampening %.3g",
                    name, fraction, dtype, fraction * DAMPENING_GROWTH)
        fraction *= DAMPENING_GROWTH
    raise HessianError(f"{name or 'sparsegpt'}: H is not positive definite even with dampening "
                       f"{fraction / DAMPENING_GROWTH:.3g}·mean(diag H) after {MAX_TRIES} tries")


def check_hessian(factor: HessianFactor, sumsq: torch.Tensor, name: str = "", rtol: float = 1e-3) -> None:
    """diag(H) must be the Σx² statistic of the same tokens (one hook feeds both); raise RuntimeError if not."""
    if sumsq.shape != factor.diag.shape:
        raise RuntimeError(f"{name}: H is {tuple(factor.u.shape)} but the statistics have {sumsq.numel()} channels")
    sumsq = sumsq.to(factor.diag.device, torch.float64)
    error = float((factor.diag - sumsq).abs().max())
    scale = float(sumsq.abs().max())
    if error > rtol * max(scale, 1e-30):
        raise RuntimeError(f"{name}: diag(H) differs from the channel statistics Σx² by {error:.3g} "
                           f"(max Σx² {scale:.3g}): H and the statistics were not collected on the same tokens")


def _lowest(score: torch.Tensor, count: int, protect: torch.Tensor | None) -> torch.Tensor:
    """Prune-mask [rows, k] of the `count` lowest scores of each row, unprotected columns first (protect: [k]
    bool or None); ties: the higher index goes first."""
    pruned = torch.zeros_like(score, dtype=torch.bool)
    if count:
        order = torch.sort(score, dim=1, descending=True, stable=True).indices
        if protect is not None:  # lexicographic (protected, score): a stable sort on the flag
            flags = protect[order].to(torch.int8)
            order = order.gather(1, torch.sort(flags, dim=1, descending=True, stable=True).indices)
        pruned.scatter_(1, order[:, score.shape[1] - count :], True)
    return pruned


def _quota(budget: int, free: torch.Tensor):
    """Per-row pruning quota of columns [0, i) as a function of i, so that block counts quota(i2) - quota(i1)
    add up to exactly `budget` and never exceed the block: spread over the free (unprotected) columns, or, when
    the budget exceeds them, all free columns plus the excess spread over the protected ones."""
    cum_free = [0] + torch.cumsum(free.long(), 0).tolist()
    cum_prot = [i - f for i, f in enumerate(cum_free)]
    n_free, n_prot = cum_free[-1], cum_prot[-1]
    if budget <= n_free:
        return lambda i: budget * cum_free[i] // n_free if budget else 0
    excess = budget - n_free
    return lambda i: cum_free[i] + excess * cum_prot[i] // n_prot


def _check(weight, sparsity, nm, keep, protect, blocksize, name):
    where = name or "sparsegpt"
    if weight.dim() != 2:
        raise ValueError(f"{where}: weight must be [out, in], got shape {tuple(weight.shape)}")
    if sum(option is not None for option in (sparsity, nm, keep)) != 1:
        raise ValueError(f"{where}: give exactly one of sparsity (unstructured), nm (N:M) or keep (fixed mask)")
    cols = weight.shape[1]
    if sparsity is not None and not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise ValueError(f"{where}: sparsity must be in [0, 1), got {sparsity}")
    if not (isinstance(blocksize, int) and not isinstance(blocksize, bool) and blocksize >= 1):
        raise ValueError(f"{where}: blocksize must be a positive integer, got {blocksize!r}")
    if nm is not None:
        n, m = nm
        if not 0 < n < m:
            raise ValueError(f"{where}: N:M needs 0 < N < M, got {n}:{m}")
        if cols % m:
            raise ValueError(f"{where}: in_features={cols} is not a multiple of M={m}")
        if blocksize % m:
            raise ValueError(f"{where}: blocksize={blocksize} is not a multiple of M={m}")
    if keep is not None and (keep.shape != weight.shape or keep.dtype != torch.bool):
        raise ValueError(f"{where}: keep must be bool {tuple(weight.shape)}, got {keep.dtype} {tuple(keep.shape)}")
    if protect is not None and (protect.shape != (cols,) or protect.dtype != torch.bool):
        raise ValueError(f"{where}: protect must be bool [{cols}], got {protect.dtype} {tuple(protect.shape)}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError(f"{where}: the weight holds NaN/Inf")


@torch.no_grad()
def sparsegpt_prune_(weight: torch.Tensor, hessian, *, sparsity: float | None = None,
                     nm: tuple[int, int] | None = None, keep: torch.Tensor | None = None,
                     protect: torch.Tensor | None = None, blocksize: int = 128, dampening: float = 0.01,
                     name: str = "", dtype: torch.dtype = torch.float32) -> ObsResult:
    """Prune weight [out, in] in place and correct the kept weights by SparseGPT's OBS update.

    hessian: H = XᵀX [in, in] or its HessianFactor (then dampening and dtype come from the factor).
    Exactly one of: sparsity (unstructured, exactly int(in · sparsity) pruned per row), nm=(N, M) (keep N of
    every M consecutive inputs; blocksize % M == 0) or keep ([out, in] bool fixed mask, True = keep).
    protect: [in] bool channels never pruned (unless the per-row budget or N:M forces it; counted as violations).
    The computation runs in `dtype` (fp32 as SparseGPT; fp64 for references) on the weight's device; the
    weight is written only at the end, in its own dtype, so a failure leaves it untouched.
    """
    _check(weight, sparsity, nm, keep, protect, blocksize, name)
    if not isinstance(hessian, HessianFactor):
        hessian = factorize(hessian.to(weight.device), dampening, name, dtype)
    rows, cols = weight.shape
    if hessian.u.shape != (cols, cols):
        raise ValueError(f"{name or 'sparsegpt'}: weight is {tuple(weight.shape)} but H is {tuple(hessian.u.shape)}")
    u = hessian.u.to(weight.device)  # [in, in] upper
    w = weight.to(u.dtype, copy=True)  # [out, in], updated in place
    dead = hessian.dead.to(weight.device)
    protect = None if protect is None else protect.to(weight.device)
    loss = torch.zeros(rows, dtype=u.dtype, device=w.device)
    kept = torch.ones_like(w, dtype=torch.bool)

    inv_d2 = u.diagonal().square().reciprocal().masked_fill(dead, 0.0)  # [in]: dead channels score 0

    def select(block: torch.Tensor, start: int, count: int) -> torch.Tensor:  # block: [out, k] -> prune [out, k]
        stop = start + block.shape[1]
        s = block.square().mul_(inv_d2[start:stop])  # SparseGPT's w²/[H⁻¹]_jj
        return _lowest(s, count, None if protect is None else protect[start:stop])

    if sparsity is not None:  # exactly int(in · sparsity) pruned per row, as masks.row_mask_ref
        quota = _quota(int(cols * sparsity), torch.ones(cols, dtype=torch.bool) if protect is None else ~protect.cpu())

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1 = w[:, i1:i2]  # view: [out, k]
        u1 = u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        if keep is not None:
            prune1 = ~keep[:, i1:i2].to(w.device)
        elif sparsity is not None:
            prune1 = select(w1, i1, quota(i2) - quota(i1))
        else:
            prune1 = torch.zeros_like(w1, dtype=torch.bool)
        for i in range(i2 - i1):  # three small ops per column: this loop bounds the speed (as in SparseGPT)
            if nm is not None and i % nm[1] == 0:
                group = slice(i, i + nm[1])
                prune1[:, group] = select(w1[:, group], i1 + i, nm[1] - nm[0])
            err = err1[:, i]
            torch.mul(w1[:, i], prune1[:, i], out=err)  # w - q: the pruned weights
            err.div_(u1[i, i])
            w1[:, i:].addr_(err, u1[i, i:], alpha=-1.0)  # column i becomes q (up to rounding: zeroed below)
        w1.masked_fill_(prune1, 0.0)
        loss += err1.square().sum(1) / 2
        if i2 < cols:
            w[:, i2:].addmm_(err1, u[i1:i2, i2:], alpha=-1.0)
        kept[:, i1:i2] = ~prune1

    if not bool(torch.isfinite(w).all()):
        raise HessianError(f"{name or 'sparsegpt'}: the OBS update overflowed (dampening "
                           f"{hessian.dampening:.3g}); the weight is left untouched: raise --dampening")
    weight.copy_(w.to(weight.dtype)).masked_fill_(~kept, 0.0)
    violations = 0 if protect is None else int((~kept[:, protect]).sum())
    return ObsResult(kept, float(loss.sum()), violations, int(dead.sum()), hessian.dampening, hessian.retries)


class HessianCollector:
    """H = XᵀX (fp32, real tokens only) of the linears of one decoder block, filled by the forward hook of
    engine.sequential.collect_block_stats. Linears that receive the same input tensor in a forward pass
    (q/k/v, gate/up) share one H (and one factorization). H lives on the activations' device."""

    def __init__(self):
        self.hessians: dict[str, torch.Tensor] = {}  # owner -> H [in, in] fp32
        self.owner: dict[str, str] = {}  # linear -> the linear whose H it shares (itself if none)
        self._batch: list[tuple[torch.Tensor, int, str]] = []  # this batch's inputs: (tensor, version, owner)
        self._factors: dict[str, HessianFactor] = {}
        self._users: dict[str, int] = {}
        self._home: torch.device | None = None  # the compute device of offloaded H, else None

    def new_batch(self) -> None:
        """Forget the previous batch's input tensors (call before each forward pass and after the last)."""
        self._batch = []

    def add(self, name: str, inp: torch.Tensor, x: torch.Tensor, token_mask: torch.Tensor) -> None:
        """inp: the tensor the linear received (its identity decides sharing); x: inp as [T, C];
        token_mask: [T] bool, True = real token."""
        owner = next((other for seen, version, other in self._batch if seen is inp and version == inp._version),
                     None)
        if owner is None:
            owner = name
            self._batch.append((inp, inp._version, name))
        if self.owner.setdefault(name, owner) != owner:
            raise RuntimeError(f"{name}: shares its input with {self.owner[name]} in one batch, {owner} in another")
        if owner != name:
            return
        real = x[token_mask].float()  # [T', C]
        if name not in self.hessians:
            self.hessians[name] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
        self.hessians[name].addmm_(real.T, real)

    @property
    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.hessians.values())

    def describe(self) -> str:
        sizes = ", ".join(f"{name} {h.shape[0]}²" for name, h in self.hessians.items())
        return (f"H = XᵀX for {len(self.owner)} linears ({len(self.hessians)} distinct inputs: {sizes}): "
                f"{self.nbytes / 2**20:.1f} MiB fp32")

    def offload_if_needed(self, free_bytes: int | None = None, budget: float = 0.5) -> bool:
        """Move every H to host memory when together they take more than `budget` of the device's free memory
        (CUDA's free memory unless free_bytes is given); pop_factor then brings each back to the device alone,
        so only one H is solved there at a time. Returns whether it offloaded (the caller logs it)."""
        if not self.hessians:
            return False
        device = next(iter(self.hessians.values())).device
        if device.type == "cpu":
            return False
        free = torch.cuda.mem_get_info(device)[0] if free_bytes is None else free_bytes
        if self.nbytes <= budget * free:
            return False
        self._home = device
        for owner, hessian in self.hessians.items():
            self.hessians[owner] = hessian.to("cpu")
        return True

    def discard(self, name: str) -> None:
        """`name` will not take its factor (the layer plan keeps it dense): its share is released, H (or its
        factor) as soon as no other linear sharing it is left to take it."""
        owner = self.owner.pop(name, None)
        if owner is None:
            return
        if owner in self._factors:
            self._users[owner] -= 1
            if not self._users[owner]:
                del self._factors[owner], self._users[owner]
        elif owner not in self.owner.values():
            self.hessians.pop(owner, None)

    def pop_factor(self, name: str, dampening: float = 0.01, label: str | None = None) -> HessianFactor:
        """The factorization of `name`'s H; computed once per shared H, whose memory is released as soon
        as it is factorized, and the factor when the last linear sharing it has taken it. label: for logs."""
        owner = self.owner.get(name)
        if owner is None:
            raise RuntimeError(f"no Hessian for {name}: it received no calibration tokens")
        if owner not in self._factors:
            hessian = self.hessians.pop(owner)
            self._factors[owner] = factorize(hessian if self._home is None else hessian.to(self._home), dampening,
                                             name=label or owner)
            self._users[owner] = sum(1 for other in self.owner.values() if other == owner)
        factor = self._factors[owner]
        self._users[owner] -= 1
        if not self._users[owner]:
            del self._factors[owner], self._users[owner]
        return factor
