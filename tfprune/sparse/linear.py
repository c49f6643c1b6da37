"""SparseLinear (a linear layer holding its 2:4 weight packed) and sparsify(model).

On CUDA, SparseLinear wraps its packed tensors in torch's SparseSemiStructuredTensorCUTLASS (a 'bitmask'
weight gets CUTLASS meta from its bitmask on the device; the values tensor is shared) and runs torch's
sparse GEMM: no dense copy of the weight on the GPU. Elsewhere (CPU; or a dtype/shape the kernel does not
take) it computes F.linear with the unpacked weight, which is correct but not faster, and says so once.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .formats import FORMATS, PackedWeight, SparseFormatError, first_violation, format_tile, pack, to_cutlass, unpack

__all__ = ["SparseLinear", "SparsifyReport", "sparsify", "kernel_support", "skip_reason"]

log = logging.getLogger("tfprune")

# torch's CUTLASS sparse GEMM: dtype -> (out_features multiple, in_features multiple) (sparse_min_rows/cols)
_KERNEL_TILES = {torch.float16: (32, 64), torch.bfloat16: (32, 64)}
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def kernel_support(shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str) -> str | None:
    """None when torch's CUTLASS 2:4 kernel runs a weight of this shape, dtype and device, else why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"no 2:4 sparse kernel on {device.type}"
    if dtype not in _KERNEL_TILES:
        return f"torch's CUTLASS 2:4 kernel takes float16/bfloat16, not {str(dtype).replace('torch.', '')}"
    rows_tile, cols_tile = _KERNEL_TILES[dtype]
    if shape[0] % rows_tile or shape[1] % cols_tile:
        return (f"shape {tuple(shape)} unsupported by torch's CUTLASS 2:4 kernel (out_features a multiple of "
                f"{rows_tile}, in_features of {cols_tile})")
    major, _minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"2:4 sparse tensor cores need compute capability 8.0+, {device} has {major}.x"
    return None


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W [out_features, in_features] held packed (a PackedWeight's values and meta
    buffers). Build it with `SparseLinear.from_linear(linear, format=...)` or from a PackedWeight."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = packed.shape
        self.format = packed.format
        self.register_buffer("values", packed.values)
        self.register_buffer("meta", packed.meta)
        self._packed_dtype = packed.dtype  # the dtype whose layout `meta` describes
        if bias is not None:
            self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._kernel_weight = None  # SparseSemiStructuredTensorCUTLASS, built on the first CUDA forward
        self._decoded = None  # the decode layout (tfprune.decode24) for few-token inputs, built on first use

    @classmethod
    def from_linear(cls, linear: nn.Module, format: str = "cutlass") -> SparseLinear:
        """Pack the 2:4 weight of an nn.Linear (or transformers' Conv1D) in `format` ('cutlass' | 'bitmask').
        Raises SparseFormatError when it is not 2:4 or its shape/dtype does not fit the format."""
        from ..engine.discovery import weight_matrix

        return cls(pack(weight_matrix(linear), format), getattr(linear, "bias", None))

    def _layout_holds(self) -> bool:
        """False after a cast (model.float(), .half()...) to a dtype with another CUTLASS layout (float32 is
        1:2, int8 has int32 meta): `meta` still describes the packed dtype's layout."""
        kind = {torch.int8: "int8", torch.float32: "pairs", torch.float16: "16", torch.bfloat16: "16"}
        return self.format == "bitmask" or kind.get(self.values.dtype) == kind[self._packed_dtype]

    @property
    def packed(self) -> PackedWeight:
        """The weight as a PackedWeight in the layout it was packed in."""
        dtype = self.values.dtype if self._layout_holds() else self._packed_dtype
        return PackedWeight(self.format, (self.out_features, self.in_features), dtype, self.values.to(dtype),
                            self.meta)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def dense_weight(self) -> torch.Tensor:
        """The unpacked weight [out, in] (a new tensor, of the module's current dtype)."""
        return unpack(self.packed).to(self.values.dtype)

    def _apply(self, fn, recurse=True):
        self._kernel_weight = None
        self._decoded = None
        return super()._apply(fn, recurse)

    def _kernel(self, x: torch.Tensor):
        """The CUTLASS sparse tensor for x, or None (the reason warned once)."""
        reason = kernel_support((self.out_features, self.in_features), self.values.dtype, self.values.device)
        if reason is None and not self._layout_holds():
            reason = (f"the weight was packed as {self._packed_dtype} and cast to {self.values.dtype}; build the "
                      "SparseLinear from the cast weight to run the kernel")
        if reason is None and x.dtype != self.values.dtype:
            reason = f"input dtype {x.dtype} differs from the weight's {self.values.dtype}"
        if reason is not None:
            _warn_once(f"SparseLinear: {reason}; computing with the unpacked weight (correct, not faster)")
            return None
        if self._kernel_weight is None:
            from torch.sparse import SparseSemiStructuredTensorCUTLASS

            packed = to_cutlass(self.packed)
            self._kernel_weight = SparseSemiStructuredTensorCUTLASS(
                torch.Size(packed.shape), packed.values, packed.meta, None, None, None)
        return self._kernel_weight

    def _decode_kernel(self, x: torch.Tensor):
        """The weight in tfprune.decode24's layout when x has few enough rows for the decode kernel to beat
        the dense/CUTLASS path on its device (decode24.max_rows: a measured default, overridable), else None.
        A 'bitmask' weight is read in place; a 'cutlass' one gets its codes once (1/16 of the dense bytes)."""
        from .. import decode24

        rows = x.numel() // max(1, self.in_features)
        gemm = kernel_support((self.out_features, self.in_features), self.values.dtype, self.values.device) is None
        if not 1 <= rows <= decode24.max_rows(x.device, dense_available=gemm) or x.device != self.values.device or \
                self.values.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return None
        if self._decoded is None:
            if self.format == "bitmask":
                self._decoded = decode24.Decode24Weight(self.values, self.meta, (self.out_features, self.in_features),
                                                        bitmask=True)
            else:  # 16-bit CUTLASS values are the decode layout's values: share them, add the codes
                decoded = decode24.pack(self.dense_weight())
                self._decoded = decoded if self.values.dtype == torch.float32 else decode24.Decode24Weight(
                    self.values, decoded.codes, decoded.shape)
        return self._decoded if decode24.unsupported_reason(x, self._decoded) is None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoded = self._decode_kernel(x)
        if decoded is not None:
            from .. import decode24

            return decode24.linear(x, decoded, self.bias)
        weight = self._kernel(x)
        if weight is None:
            return F.linear(x, self.dense_weight(), self.bias)
        return F.linear(x.contiguous(), weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.format}, dtype={str(self.values.dtype).replace('torch.', '')}")


@dataclass
class SparsifyReport:
    """What sparsify swapped (qualified names) and skipped ({name: reason})."""

    swapped: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        lines = [f"sparsify: {len(self.swapped)} linear layers swapped for SparseLinear, {len(self.skipped)} skipped"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _linear_types() -> tuple[type, ...]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is a dependency; the sparse package works without it
        return (nn.Linear,)
    return (nn.Linear, Conv1D)


def skip_reason(module: nn.Module, format: str, device: torch.device | None = None) -> str | None:
    """Why `module` (nn.Linear / Conv1D) cannot become a SparseLinear in `format`, or None. device: where
    it will run (default: the weight's); on CUDA the CUTLASS kernel's constraints apply too."""
    from ..engine.discovery import weight_matrix

    weight = weight_matrix(module)
    try:
        rows_tile, cols_tile, n, m = format_tile(format, weight.dtype)
    except SparseFormatError as error:
        return str(error)
    rows, cols = weight.shape
    if rows % rows_tile or cols % cols_tile:
        return (f"shape {(rows, cols)} unsupported by format {format!r} (out_features a multiple of {rows_tile}, "
                f"in_features of {cols_tile})")
    device = torch.device(device) if device is not None else weight.device
    if device.type == "cuda":
        reason = kernel_support((rows, cols), weight.dtype, device)
        if reason is not None:
            return reason
    where = first_violation(weight, n, m)
    if where is not None:
        return f"not {n}:{m}: row {where[0]}, group {where[1]} holds more than {n} non-zeros"
    return None


@torch.no_grad()
def sparsify(model: nn.Module, format: str = "cutlass", filter_fn=None) -> SparsifyReport:
    """Swap every 2:4-pruned nn.Linear (and transformers Conv1D) of `model` for a SparseLinear, in place.

    format: 'cutlass' (torch's CUTLASS layout; float16/bfloat16, float32 only when 1:2) or 'bitmask'
    (compressed-tensors'; CUTLASS meta is derived on the GPU). filter_fn(module, name) -> bool limits the
    candidates. Returns a SparsifyReport naming every candidate swapped or skipped, with the reason
    (not 2:4, shape or dtype unsupported by the format or, on CUDA, by the kernel)."""
    if format not in FORMATS:
        raise SparseFormatError(f"unknown 2:4 format {format!r}: choose one of {', '.join(FORMATS)}")
    report = SparsifyReport()
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, _linear_types()) and (filter_fn is None or filter_fn(module, name))]
    for name, module in candidates:
        reason = skip_reason(module, format)
        if reason is not None:
            report.skipped[name] = reason
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SparseLinear.from_linear(module, format))
        report.swapped.append(name)
    log.info("sparsify: %d linear layers swapped for SparseLinear (%s), %d skipped", len(report.swapped), format,
             len(report.skipped))
    return report
