"""Helpers shared by the kernel families: the order key of a score, the fused score of a weight tile,
bit-mask packing (reference: tfprune.ops.pack_mask), and launcher checks.

Score order: `_order_key` maps an fp32 score to an int32 whose signed order is the order of
`torch.sort` (NaN above +inf, -0.0 equal to +0.0), so masks are picked on integers, exactly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRETED", "SCORE_DTYPES", "check_device", "inline_for_interpreter", "next_pow2", "order_key_ref"]

SCORE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _order_key(s):
    """fp32 scores -> int32 keys, monotone in torch.sort's order: ±0 -> 0, every NaN -> INT32_MAX."""
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return tl.where(s != s, 0x7FFFFFFF, key)


@triton.jit
def _score_tile(w_ptr, s_ptr, f_ptr, p_ptr, rows, cols, valid, stride_wr, stride_wc, stride_sr, stride_sc,
                FROM_SCORES: tl.constexpr, HAS_FACTOR: tl.constexpr, HAS_PROTECT: tl.constexpr):
    """Scores of the tile rows [R, 1] x cols [1, C] (int64 rows), fp32, 0 outside `valid`.

    FROM_SCORES: read them from s_ptr; else |W| (times factor[col] when HAS_FACTOR), exactly the
    fp32 product of tfprune.scores.scores_ref. HAS_PROTECT: protect[col] != 0 scores +inf.
    """
    if FROM_SCORES:
        offsets = rows * stride_sr + cols.to(tl.int64) * stride_sc
        s = tl.load(s_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    else:
        offsets = rows * stride_wr + cols.to(tl.int64) * stride_wc
        s = tl.abs(tl.load(w_ptr + offsets, mask=valid, other=0.0).to(tl.float32))
        if HAS_FACTOR:
            s = s * tl.load(f_ptr + cols, mask=valid, other=0.0)
    if HAS_PROTECT:
        s = tl.where(tl.load(p_ptr + cols, mask=valid, other=0) != 0, float("inf"), s)
    return s


@triton.jit
def _store_bits(bits_ptr, keep, rows, col0, stride_br, n_bytes, row_ok, BLOCK_R: tl.constexpr,
                BLOCK_C: tl.constexpr):
    """Pack keep [BLOCK_R, BLOCK_C] (columns col0.., col0 % 8 == 0) into bytes, bit k of byte b =
    column 8b + k (numpy.packbits(bitorder='little')), and store them."""
    bits = tl.reshape(keep.to(tl.int32), [BLOCK_R, BLOCK_C // 8, 8])
    shifts = tl.arange(0, 8)
    packed = tl.sum(bits << shifts[None, None, :], axis=2)
    byte = col0 // 8 + tl.arange(0, BLOCK_C // 8)
    tl.store(bits_ptr + rows * stride_br + byte[None, :], packed.to(tl.uint8),
             mask=row_ok & (byte[None, :] < n_bytes))


@triton.jit
def _write_tile(w_ptr, mask_ptr, keep, rows, cols, col0, valid, stride_wr, stride_wc, stride_mr, n_bytes,
                R, APPLY: tl.constexpr, MASK_MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Zero (+0.0) the weights of the tile that keep drops (APPLY) and write the mask: MASK_MODE 1 =
    bool (through a uint8 view) [out, in], 2 = bit mask [out, n_bytes], 0 = none."""
    if APPLY:
        w_ptrs = w_ptr + rows * stride_wr + cols.to(tl.int64) * stride_wc
        tl.store(w_ptrs, tl.zeros([BLOCK_R, BLOCK_C], dtype=w_ptr.dtype.element_ty), mask=valid & ~keep)
    if MASK_MODE == 1:
        tl.store(mask_ptr + rows * stride_mr + cols, keep.to(tl.uint8), mask=valid)
    if MASK_MODE == 2:
        _store_bits(mask_ptr, keep & valid, rows, col0, stride_mr, n_bytes, rows < R, BLOCK_R, BLOCK_C)


def _interpreted() -> bool:
    """Our kernels and triton's own language functions (decorated at triton's first import) interpreted."""
    from triton.language import standard
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_order_key, InterpretedFunction) and isinstance(standard.zeros, InterpretedFunction)


#: True when these kernels were built by Triton's interpreter (TRITON_INTERPRET=1 at import time):
#: they then run on CPU tensors, one program after another.
INTERPRETED = _interpreted()


def inline_for_interpreter(namespace: dict) -> None:
    """Interpreter only (a test-speed measure, no effect on GPU code): let the kernels of a module call
    its @triton.jit helpers as the plain Python functions the interpreter rewrites them into. Triton's
    interpreter re-patches triton.language on every device-function call (about 20 ms each), which made
    helper-heavy kernels several times slower; inside a launch the language is already patched."""
    if not INTERPRETED:
        return
    from triton.runtime.interpreter import InterpretedFunction

    for name, value in list(namespace.items()):
        rewrite = getattr(value, "rewrite", None)
        if isinstance(value, InterpretedFunction) and not name.endswith("_kernel") and callable(rewrite):
            namespace[name] = rewrite()


def check_device(*tensors: torch.Tensor | None) -> torch.device:
    """The common device of the given tensors; CPU tensors only when the kernels are interpreted."""
    devices = {t.device for t in tensors if t is not None}
    if len(devices) != 1:
        raise ValueError(f"tfprune.kernels: tensors on several devices {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "tfprune.kernels got CPU tensors but triton or tfprune.kernels was imported without TRITON_INTERPRET=1; "
            "set it before the first import of triton (or use CUDA tensors)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"tfprune.kernels: unsupported device {device}")
    return device


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def order_key_ref(scores: torch.Tensor) -> torch.Tensor:
    """Reference of _order_key on a float tensor (fp32 view): int32 keys."""
    s = scores.float()
    s = torch.where(s == 0, torch.zeros_like(s), s)
    bits = s.view(torch.int32)
    key = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return torch.where(torch.isnan(s), torch.full_like(key, 0x7FFFFFFF), key)


inline_for_interpreter(globals())
