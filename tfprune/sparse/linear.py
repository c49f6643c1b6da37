"""SparseLinear (a linear layer holding its 2:4 weight packed) and sparsify(model).

Paths of a forward, chosen per call by the input's token count and once per device/dtype by the GPU:

- ``decode``: at most `tfprune.decode24.max_rows(device)` tokens (a measured crossover, per device): tfprune's
  decode kernels read the packed weight in place (CPU: the C++ kernels; CUDA: the Triton kernel).
- ``cutlass`` / ``cusparselt`` (CUDA): torch's 2:4 GEMMs, chosen by compute capability (tfprune.sparse.backends:
  CUTLASS on 8.x from the packed tensors as they are, cuSPARSELt on 9.x and later, built once per layer on the
  device).
- ``dense``: F.linear with the unpacked weight where nothing above runs (the CPU above the crossover; a GPU
  without a 2:4 GEMM for this dtype/shape): correct, not faster, and said once per reason.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import decode24
from . import backends
from .formats import FORMATS, PackedWeight, SparseFormatError, first_violation, format_tile, pack, unpack

__all__ = ["SparseLinear", "SparsifyReport", "sparsify", "kernel_support", "skip_reason", "PATHS"]

log = logging.getLogger("tfprune")

PATHS = ("decode",) + backends.GEMM_BACKENDS + ("dense",)
_BACKEND_CHOICES = ("auto",) + backends.GEMM_BACKENDS + ("dense",)
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def kernel_support(shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str) -> str | None:
    """None when one of torch's 2:4 GEMMs runs a weight of this shape and dtype on `device`
    (tfprune.sparse.backends.choose), else why none does."""
    return backends.choose(shape, dtype, device)[1]


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W [out_features, in_features] held packed (a PackedWeight's values and meta
    buffers). Build it with `SparseLinear.from_linear(linear, format=...)` or from a PackedWeight.

    backend: the path above the decode crossover: 'auto' (by device, tfprune.sparse.backends), 'cutlass',
    'cusparselt' (forced; an error where it cannot run) or 'dense' (the unpacked weight). `path(x)` says
    which path a forward of x takes; `prepare()` builds what the paths need now (before a CUDA graph capture)."""

    def __init__(self, packed: PackedWeight, bias: torch.Tensor | None = None, backend: str = "auto"):
        super().__init__()
        if backend not in _BACKEND_CHOICES:
            raise ValueError(f"SparseLinear: backend must be one of {', '.join(_BACKEND_CHOICES)}, got {backend!r}")
        self.out_features, self.in_features = packed.shape
        self.format = packed.format
        self.backend = backend
        self.register_buffer("values", packed.values)
        self.register_buffer("meta", packed.meta)
        self._packed_dtype = packed.dtype  # the dtype whose layout `meta` describes
        if bias is not None:
            self.bias = nn.Parameter(bias.detach(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._reset()

    def _reset(self) -> None:
        self._gemm_choice = None  # ((device, dtype, backend), gemm backend or None, reason), once per device/dtype
        self._gemm_weight = None  # (backend, its weight operand), built on first use
        self._decoded = None  # the decode layout (tfprune.decode24) for few-token inputs, built on first use
        self._decode_ok = {}  # (device, x dtype, weight dtype, x features) -> whether the decode kernel takes x
        self._paths = {}  # path()'s answers

    @classmethod
    def from_linear(cls, linear: nn.Module, format: str = "cutlass", backend: str = "auto") -> SparseLinear:
        """Pack the 2:4 weight of an nn.Linear (or transformers' Conv1D) in `format` ('cutlass' | 'bitmask').
        Raises SparseFormatError when it is not 2:4 or its shape/dtype does not fit the format."""
        from ..engine.discovery import weight_matrix

        return cls(pack(weight_matrix(linear), format), getattr(linear, "bias", None), backend)

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
        self._reset()
        return super()._apply(fn, recurse)

    # ---- the GEMM path (above the decode crossover)

    def gemm_backend(self) -> tuple[str, str | None]:
        """(path, why) for inputs above the decode crossover on the module's device and dtype: ('cutlass' |
        'cusparselt', None), or ('dense', why no 2:4 GEMM runs). Raises ValueError when a forced backend
        cannot run here."""
        key = (self.values.device, self.values.dtype, self.backend)
        if self._gemm_choice is None or self._gemm_choice[0] != key:
            shape = (self.out_features, self.in_features)
            if self.backend == "dense":
                choice, reason = None, "backend='dense'"
            elif self.backend == "auto":
                choice, reason = backends.choose(shape, self.values.dtype, self.values.device)
            else:
                reason = backends.support(self.backend, shape, self.values.dtype, self.values.device)
                if reason is not None:
                    raise ValueError(f"SparseLinear: backend={self.backend!r} cannot run here: {reason}")
                choice = self.backend
            if choice == "cutlass" and not self._layout_holds():
                choice, reason = None, (f"the weight was packed as {self._packed_dtype} and cast to "
                                        f"{self.values.dtype}; build the SparseLinear from the cast weight to run the "
                                        "CUTLASS kernel")
            self._gemm_choice = (key, choice, reason)
        return (self._gemm_choice[1] or "dense"), self._gemm_choice[2]

    def _gemm_operand(self, backend: str) -> torch.Tensor:
        if self._gemm_weight is None or self._gemm_weight[0] != backend:
            self._gemm_weight = None  # the previous backend's operand is freed before the next one is built
            self._gemm_weight = (backend, backends.build(backend, self.packed, self.values.dtype))
        return self._gemm_weight[1]

    # ---- the decode path (few tokens)

    def _decode_weight(self):
        """The weight in tfprune.decode24's layout: a 'bitmask' weight is read in place; a 16-bit 'cutlass'
        one shares its values and gets the codes from its meta (1/16 of the dense bytes, no dense copy)."""
        if self._decoded is None:
            shape = (self.out_features, self.in_features)
            if self.format == "bitmask":
                self._decoded = decode24.Decode24Weight(self.values, self.meta, shape, bitmask=True)
            elif self.values.dtype in (torch.float16, torch.bfloat16) and self._layout_holds():
                self._decoded = decode24.Decode24Weight(self.values, decode24.codes_from_cutlass_meta(self.meta, shape),
                                                        shape)
            else:  # float32 (1:2 in the CUTLASS layout): the decode layout's own values
                self._decoded = decode24.pack(self.dense_weight())
        return self._decoded

    def path(self, x: torch.Tensor) -> str:
        """The path a forward of x [..., in_features] takes: one of PATHS. It runs on every forward (126 times
        per token in Gemma 3 270M): remembered per (device, dtype, rows of x up to the kernels' limit, backend, the crossover's settings)."""
        rows = x.numel() // max(1, self.in_features)
        key = (x.device, x.dtype, min(rows, decode24.MAX_ROWS + 1), x.shape[-1], self.backend, decode24.settings())
        found = self._paths.get(key)
        if found is None:
            found = self._paths[key] = self._choose_path(x, rows)
        return found

    def _choose_path(self, x: torch.Tensor, rows: int) -> str:
        gemm, _reason = self.gemm_backend()
        if 1 <= rows <= decode24.max_rows(x.device, dense_available=gemm != "dense") and self._decodes(x):
            return "decode"
        if gemm != "dense" and x.dtype != self.values.dtype:
            return "dense"
        return gemm

    def _decodes(self, x: torch.Tensor) -> bool:
        """Whether the decode kernel takes x (at most MAX_ROWS rows: checked by the caller), remembered per
        (device, x dtype, weight dtype, x features): the weight is fixed, so only those decide."""
        key = (x.device, x.dtype, self.values.dtype, x.shape[-1])
        if key not in self._decode_ok:
            self._decode_ok[key] = (x.device == self.values.device and self.values.dtype in decode24.DTYPES and
                                    decode24.unsupported_reason(x[..., :1, :] if x.dim() > 1 else x,
                                                                self._decode_weight()) is None)
        return self._decode_ok[key]

    def prepare(self) -> SparseLinear:
        """Build the decode weight and the GEMM operand of the module's device and dtype now (they are
        otherwise built on the first forward that needs them), e.g. before capturing a CUDA graph."""
        if self.values.dtype in decode24.DTYPES and decode24.max_rows(self.values.device):
            self._decode_weight()
        gemm, _reason = self.gemm_backend()
        if gemm != "dense":
            self._gemm_operand(gemm)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self.path(x)
        if path == "decode":  # path() found that the kernel takes x: no second check per token and layer
            return decode24.run(x, self._decode_weight(), self.bias)
        return self.forward_on(x, path)

    def forward_on(self, x: torch.Tensor, path: str) -> torch.Tensor:
        """The forward of x [..., in_features] on a given path (benchmarks time each path with it): 'decode'
        (raises tfprune.decode24.DecodeUnsupported where the kernel does not take x), the GEMM backend
        `gemm_backend()` names (ValueError for another), or 'dense'."""
        if path == "decode":
            return decode24.linear(x, self._decode_weight(), self.bias)
        if path == "dense":
            gemm, reason = self.gemm_backend()
            if gemm != "dense":
                reason = (f"input dtype {x.dtype} differs from the weight's {self.values.dtype}"
                          if x.dtype != self.values.dtype else "the dense path was asked for")
            _warn_once(f"SparseLinear: {reason}; computing with the unpacked weight (correct, not faster)")
            return F.linear(x, self.dense_weight(), self.bias)
        gemm, reason = self.gemm_backend()
        if path != gemm:
            raise ValueError(f"SparseLinear: path {path!r} is not this module's GEMM path here ({gemm}: {reason})")
        return F.linear(x.contiguous(), self._gemm_operand(path), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.format}, dtype={str(self.values.dtype).replace('torch.', '')}"
                + (f", backend={self.backend}" if self.backend != "auto" else ""))


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
