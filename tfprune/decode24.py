"""2:4 decode kernels: y = x @ Wᵀ (+ bias) for few rows of x (M ≤ 16, batch-1 generation) on a packed 2:4
weight, without ever expanding it in memory (issue 7; DESIGN.md §3).

Decode is memory-bound: the time is the time to stream W. The decode layout (csrc/decode24_core.h) holds
values [N, K/2] (W's dtype, the two kept weights of each group of 4 in index order: torch's CUTLASS values)
and codes uint8 [N, ceil(K/8)] (a nibble i0 | i1 << 2 per group, group 2b in the low nibble of byte b:
torch's CUTLASS meta before its reordering). For 16-bit weights that is 9/16 of the dense bytes, so the
kernel can be up to 16/9 ≈ 1.78× faster than dense. The kernels also read compressed-tensors'
sparse-24-bitmask (values + uint8 bitmask of the same shape) in place, without conversion (`bitmask=True`).

Backends: the C++ CPU kernel of tfprune._C (AVX2/FMA/F16C, chosen at run time, portable fallback; x
bf16/fp16/fp32) and the Triton kernel tfprune.kernels.sparse24_decode (CUDA; x fp16/bf16). Shapes the
kernels do not take raise `DecodeUnsupported`; `unsupported_reason` says why beforehand, so a caller
(SparseLinear) can fall back to its dense or CUTLASS path.

When to use it: `max_rows(device)` is the crossover, the largest M for which the decode kernel beats the
other path: TFPRUNE_DECODE_MAX_ROWS=<int> if set (0 disables the kernel), else what `tfprune bench` measured
on this device and stored (tfprune.decode_crossover), else `DEFAULT_MAX_ROWS` (CPU: measured with
benchmarks/bench_decode.py, benchmarks/README.md; CUDA: the kernel's row limit until measured).
"""
from __future__ import annotations

import dataclasses
import functools
import os

import torch

from . import decode_crossover
from ._ext import extension

__all__ = ["MAX_ROWS", "DEFAULT_MAX_ROWS", "DTYPES", "DecodeUnsupported", "Decode24Weight", "pack", "pack_ref", "unpack",
           "unpack_ref", "codes_from_cutlass_meta", "linear", "run", "triton_linear", "linear_ref", "unsupported_reason",
           "max_rows", "settings"]

MAX_ROWS = 16  # rows of x (tokens) the kernels take

#: Crossover: the decode kernel runs for M ≤ this many rows of x, the dense/CUTLASS path above. CPU, by the
#: best kernel the CPU runs (decode24_isa): measured side by side with torch's dense bf16 F.linear at 2
#: threads (benchmarks/README.md, "2:4 decode kernels"); the AVX2 figure is the AVX2 kernels' measured
#: crossover against torch on that AVX-512 machine (pessimistic for AVX2-only CPUs, where torch's dense
#: path is slower too); the portable kernel is scalar and never wins. CUDA: the kernel's row limit, not
#: measured on a GPU: `tfprune bench` (or `make gpu-check`) measures the device's and stores it.
DEFAULT_MAX_ROWS = {"cpu-avx512bf16": 4, "cpu-avx2": 2, "cpu-portable": 0, "cuda": 16}

_CPU_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DTYPES = _CPU_X_DTYPES  # weight dtypes of the decode layout (the GPU kernel takes the 16-bit ones)
_GPU_DTYPES = (torch.float16, torch.bfloat16)


class DecodeUnsupported(ValueError):
    """The decode kernel does not take this input (too many rows, a dtype or device it has no kernel for)."""


@dataclasses.dataclass(frozen=True)
class Decode24Weight:
    """A 2:4 weight W [N, K] in the decode layout: values [N, K/2] (W's dtype) and codes uint8
    [N, ceil(K/8)]; with bitmask=True the codes are compressed-tensors' bitmask (bit j of nibble g: column
    4g+j kept, exactly two bits a nibble)."""

    values: torch.Tensor
    codes: torch.Tensor
    shape: tuple[int, int]
    bitmask: bool = False

    def __post_init__(self):
        n, k = self.shape
        if k % 4 or tuple(self.values.shape) != (n, k // 2) or tuple(self.codes.shape) != (n, -(-k // 8)):
            raise ValueError(f"Decode24Weight: shape {self.shape} needs K % 4 == 0, values [{n}, {k // 2}] and "
                             f"codes [{n}, {-(-k // 8)}]; got {tuple(self.values.shape)}, {tuple(self.codes.shape)}")
        if self.codes.dtype != torch.uint8 or self.values.device != self.codes.device:
            raise ValueError("Decode24Weight: codes must be uint8 on the values' device")
        if (self.values.numel() and self.values.stride(1) != 1) or (self.codes.numel() and self.codes.stride(1) != 1):
            raise ValueError("Decode24Weight: values and codes must be contiguous along K")

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.codes.numel()

    def to(self, device) -> "Decode24Weight":
        return dataclasses.replace(self, values=self.values.to(device), codes=self.codes.to(device))


def _weight_2d(weight: torch.Tensor) -> None:
    if weight.dim() != 2 or weight.dtype not in _CPU_X_DTYPES:
        raise ValueError(f"decode24.pack: weight must be a 2-D bf16/fp16/fp32 tensor, got {tuple(weight.shape)} "
                         f"{weight.dtype}")
    if weight.shape[1] % 4 or weight.shape[1] == 0:
        raise ValueError(f"decode24.pack: in_features={weight.shape[1]} is not a positive multiple of 4")


def pack_ref(weight: torch.Tensor) -> Decode24Weight:
    """Pure-torch packer (any device): the same bytes as the C++ one."""
    _weight_2d(weight)
    n, k = weight.shape
    groups = weight.reshape(n, k // 4, 4)
    nz = groups != 0  # -0.0 is zero
    counts = nz.sum(-1)
    bad = (counts > 2).nonzero()
    if len(bad):
        row, group = bad[0].tolist()
        raise ValueError(f"decode24_pack: weight is not 2:4 sparse: row {row}, group {group} (columns {4 * group}.."
                         f"{4 * group + 3}) holds more than 2 non-zeros")
    m0, m1, m3 = nz[..., 0], nz[..., 1], nz[..., 3]  # torch's CUTLASS codes (sparse_semi_structured_from_dense_cutlass)
    expr0, expr1, expr2 = m0 & m1, ~m0 & m1, ~m0 & ~m1
    i0 = expr1.long() | expr2.long() << 1
    i1 = (expr0 | expr2 | m3).long() | (expr1 | ~m1).long() << 1
    values = torch.stack([groups.gather(-1, i0[..., None])[..., 0], groups.gather(-1, i1[..., None])[..., 0]], -1)
    nibbles = i0 | i1 << 2
    if (k // 4) % 2:
        nibbles = torch.nn.functional.pad(nibbles, (0, 1))
    nibbles = nibbles.reshape(n, -1, 2)
    codes = (nibbles[..., 0] | nibbles[..., 1] << 4).to(torch.uint8)
    return Decode24Weight(values.reshape(n, k // 2).contiguous(), codes, (n, k))


def pack(weight: torch.Tensor) -> Decode24Weight:
    """W [N, K] (2:4: at most two non-zeros in every group of 4 inputs; bf16/fp16/fp32) -> decode layout.
    The C++ packer on CPU, pack_ref elsewhere. Raises ValueError naming the first row and group that is not 2:4."""
    _weight_2d(weight)
    if weight.device.type != "cpu" or extension is None:
        return pack_ref(weight)
    try:
        values, codes = extension.decode24_pack(weight)
    except RuntimeError as error:
        raise ValueError(str(error).split("\n")[0]) from None
    return Decode24Weight(values, codes, tuple(weight.shape))


def unpack(packed: Decode24Weight) -> torch.Tensor:
    """The dense W [N, K] (zeros +0.0)."""
    if packed.device.type == "cpu" and extension is not None:
        return extension.decode24_unpack(packed.values, packed.codes, packed.bitmask)
    return unpack_ref(packed)


def codes_from_cutlass_meta(meta: torch.Tensor, shape: tuple[int, int], block_rows: int = 1024) -> torch.Tensor:
    """The decode codes uint8 [N, K/8] of a 16-bit 'cutlass' weight from its reordered int16 meta [N, K/16]
    alone (on the meta's device): the codes are torch's meta before its reordering, so this undoes the
    reorder, block_rows rows at a time (int64 temporaries of one block, never of the whole weight)."""
    from .sparse.formats import _meta_offsets

    n, k = shape
    if meta.dtype != torch.int16 or tuple(meta.shape) != (n, k // 16) or k % 16:
        raise ValueError(f"codes_from_cutlass_meta: meta must be int16 [{n}, {k // 16}] of a 16-bit weight, got "
                         f"{meta.dtype} {tuple(meta.shape)}")
    flat = meta.reshape(-1)
    words = torch.empty(n, k // 16, dtype=torch.int16, device=meta.device)
    for begin in range(0, n, block_rows):
        end = min(n, begin + block_rows)
        words[begin:end] = flat[_meta_offsets(n, begin, end, k // 16, meta.device)].view(end - begin, k // 16)
    return words.view(torch.uint8)  # little-endian: word w = groups 4w..4w+3, low nibble first


def unpack_ref(packed: Decode24Weight) -> torch.Tensor:
    """Pure-torch unpacker (any device): the dense W [N, K]."""
    n, k = packed.shape
    nibbles = torch.stack([packed.codes & 0xF, packed.codes >> 4], -1).reshape(n, -1)[:, :k // 4].long()
    if packed.bitmask:
        bits = (nibbles[..., None] >> torch.arange(4, device=packed.device)) & 1
        i0, i1 = bits.argmax(-1), 3 - bits.flip(-1).argmax(-1)
    else:
        i0, i1 = nibbles & 3, nibbles >> 2
    dense = torch.zeros(n, k // 4, 4, dtype=packed.dtype, device=packed.device)
    pairs = packed.values.reshape(n, k // 4, 2)
    dense.scatter_(-1, i1[..., None], pairs[..., 1:])
    dense.scatter_(-1, i0[..., None], pairs[..., :1])
    return dense.reshape(n, k)


def max_rows(device: torch.device | str, dense_available: bool = True) -> int:
    """The crossover for `device`: run the decode kernel for M ≤ this. TFPRUNE_DECODE_MAX_ROWS overrides;
    else the crossover `tfprune bench` stored for this device (tfprune.decode_crossover); else
    DEFAULT_MAX_ROWS. dense_available=False: the alternative is not a GEMM but unpacking the weight on every
    call (a SparseLinear on a device without a 2:4 GEMM kernel), which every kernel that wins at M = 1 beats
    up to MAX_ROWS (benchmarks/README.md: 16 tokens, decode kernel 0.6–0.7× dense vs unpack + dense 0.15–0.18×)."""
    key = (device, dense_available, settings())
    found = _max_rows_memo.get(key)
    if found is None:
        found = _max_rows_memo[key] = _max_rows(device, dense_available, key[2][0].strip())
    return found


def settings() -> tuple:
    """What max_rows depends on besides the device: $TFPRUNE_DECODE_MAX_ROWS and the crossover store's state
    (callers may cache answers under it)."""
    return os.environ.get("TFPRUNE_DECODE_MAX_ROWS", ""), decode_crossover.state()


_max_rows_memo: dict[tuple, int] = {}  # max_rows runs on every SparseLinear forward: one dict lookup


def _max_rows(device, dense_available: bool, env: str) -> int:
    if env:
        try:
            return max(0, min(MAX_ROWS, int(env)))
        except ValueError:
            raise ValueError(f"TFPRUNE_DECODE_MAX_ROWS={env!r} is not an integer") from None
    crossover = decode_crossover.lookup(device)
    if crossover is None:
        kind = torch.device(device).type
        if kind == "cpu":
            isa = extension.decode24_isa() if extension is not None and hasattr(extension, "decode24_isa") else "portable"
            kind = f"cpu-{isa}"
        crossover = DEFAULT_MAX_ROWS.get(kind, 0)
    crossover = max(0, min(MAX_ROWS, crossover))
    return crossover if dense_available or crossover == 0 else MAX_ROWS


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as error:  # ImportError, or a broken install raising anything at import
        return f"triton cannot be imported ({type(error).__name__}: {error})"
    return None


def unsupported_reason(x: torch.Tensor, packed: Decode24Weight) -> str | None:
    """None when `linear(x, packed)` runs a decode kernel, else why not."""
    k = packed.shape[1]
    if x.shape[-1] != k:
        return f"x has {x.shape[-1]} features, the weight takes {k}"
    m = x.numel() // k if k else 0
    if not 1 <= m <= MAX_ROWS:
        return f"x has M={m} rows; the decode kernel takes 1..{MAX_ROWS}"
    if x.device != packed.device:
        return f"x is on {x.device}, the weight on {packed.device}"
    if x.device.type == "cpu":
        if extension is None or not hasattr(extension, "decode24_linear"):
            return "tfprune._C (the C++ CPU kernel) is not built"
        if x.dtype not in _CPU_X_DTYPES or packed.dtype not in _CPU_X_DTYPES:
            return f"the CPU kernel takes bf16/fp16/fp32, got x {x.dtype}, weight {packed.dtype}"
        return None
    if x.device.type == "cuda":
        if x.dtype not in _GPU_DTYPES or packed.dtype not in _GPU_DTYPES:
            return f"the Triton kernel takes fp16/bf16, got x {x.dtype}, weight {packed.dtype}"
        return _triton_import_error()
    return f"no decode kernel for device {x.device}"


def linear(x: torch.Tensor, packed: Decode24Weight, bias: torch.Tensor | None = None, *,
           out_dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, W, bias) for x [..., K] with at most 16 rows in all (fp32 accumulation), W given packed.
    Output [..., N] in out_dtype (default x's). out (CUDA): a preallocated [M, N] output the Triton kernel
    writes (for CUDA graphs). Raises DecodeUnsupported for inputs the kernels do not take."""
    reason = unsupported_reason(x, packed)
    if reason is not None:
        raise DecodeUnsupported(f"decode24.linear: {reason}")
    return run(x, packed, bias, out_dtype, out)


def run(x: torch.Tensor, packed: Decode24Weight, bias: torch.Tensor | None = None,
        out_dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """linear without its checks, for a caller that knows unsupported_reason(x, packed) is None (SparseLinear
    asks once per device, dtype and shape: a decode step calls it once per layer)."""
    if x.device.type == "cpu":
        if out is not None:
            raise ValueError("decode24.linear: out= is for the CUDA kernel")
        return extension.decode24_linear(x, packed.values, packed.codes, bias, packed.bitmask, out_dtype)  # [..., N]
    y = triton_linear(x.reshape(-1, packed.shape[1]), packed, bias, out_dtype, out)
    return y.reshape(*x.shape[:-1], packed.shape[0])


def triton_linear(x: torch.Tensor, packed: Decode24Weight, bias: torch.Tensor | None = None,
                  out_dtype: torch.dtype | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """linear's Triton path for x [M, K] that unsupported_reason accepted: the weight was validated when the
    Decode24Weight was built, so only bias and out are checked before the launch (kept short: it runs once
    per layer and token). CPU tensors run it under TRITON_INTERPRET=1 (tests)."""
    from .kernels import sparse24_decode

    out_dtype = out_dtype or (out.dtype if out is not None else x.dtype)
    if (bias is not None and (bias.shape != (packed.shape[0],) or bias.device != x.device)) or (out is not None and (
            out.shape != (x.shape[0], packed.shape[0]) or out.stride(1) != 1 or out.device != x.device)):
        raise ValueError(f"decode24.linear: bias must be [{packed.shape[0]}] and out [{x.shape[0]}, "
                         f"{packed.shape[0]}] (contiguous along N) on {x.device}")
    if out_dtype not in _GPU_DTYPES + (torch.float32,) or (out is not None and out.dtype != out_dtype):
        raise ValueError(f"decode24.linear: out_dtype must be fp16/bf16/fp32 (and out's), got {out_dtype}")
    return sparse24_decode.launch(x, packed.values, packed.codes, bias, packed.bitmask, out_dtype, out)


def linear_ref(x: torch.Tensor, packed: Decode24Weight, bias: torch.Tensor | None = None, *,
               out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Reference: F.linear in fp32 on the unpacked weight, cast to out_dtype (default x's)."""
    y = torch.nn.functional.linear(x.float(), unpack_ref(packed).float(), None if bias is None else bias.float())
    return y.to(out_dtype or x.dtype)
