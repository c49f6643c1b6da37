"""2:4 packed formats: pack, unpack and the packed-weight dataclass (DESIGN.md §3).

Formats of a weight W [out, in] whose every group of 4 consecutive input weights of a row holds at most 2
non-zeros (`!= 0`, so -0.0 is zero):

- ``cutlass``: PyTorch's semi-structured CUTLASS layout, bit-exact with
  ``torch.sparse._semi_structured_conversions.sparse_semi_structured_from_dense_cutlass``: values
  [out, in/2] and meta reordered for CUTLASS (int16 [out, in/16]; int32 [out, in/32] for int8). float32
  is 1:2 in this layout (each pair of floats keeps one). Tiles: float16/bfloat16 (32, 32), float32 (32, 16),
  int8 (16, 64) (rows, in_features multiples).
- ``bitmask``: compressed-tensors' ``sparse-24-bitmask``, bit-exact with its 0.14.0 compressor: values
  [out, in/2] (the two kept weights of each group, in index order) and a uint8 bitmask [out, ceil(in/8)]
  (numpy.packbits(..., bitorder="little")), exactly two bits per group. in_features a multiple of 4.

The C++/CUDA packer of tfprune._C does the work; the torch functions ``*_ref`` here are the reference
(used where the extension is missing or lacks CUDA, and by the tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._ext import extension
from ..errors import TfpruneError

__all__ = ["FORMATS", "PackedWeight", "SparseFormatError", "pack", "unpack", "unpack_by_rows", "to_cutlass",
           "first_violation", "format_tile", "pack_ref", "unpack_ref", "bitmask_to_cutlass_meta_ref"]

FORMATS = ("cutlass", "bitmask")

# (rows multiple, in_features multiple, n, m): the pattern each group must satisfy
_CUTLASS = {torch.float16: (32, 32, 2, 4), torch.bfloat16: (32, 32, 2, 4), torch.float32: (32, 16, 1, 2),
            torch.int8: (16, 64, 2, 4)}
_BITMASK = {dtype: (1, 4, 2, 4) for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16,
                                              torch.float8_e4m3fn)}
_TILES = {"cutlass": _CUTLASS, "bitmask": _BITMASK}
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class SparseFormatError(TfpruneError):
    """A weight cannot be packed (not 2:4, shape, dtype) or packed tensors are inconsistent."""


def format_tile(format: str, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(rows multiple, in_features multiple, n, m) of `format` for weights of `dtype`, or SparseFormatError."""
    if format not in FORMATS:
        raise SparseFormatError(f"unknown 2:4 format {format!r}: choose one of {', '.join(FORMATS)}")
    tiles = _TILES[format]
    if dtype not in tiles:
        names = ", ".join(str(d).replace("torch.", "") for d in tiles)
        raise SparseFormatError(f"format {format!r} supports {names}; got {str(dtype).replace('torch.', '')}")
    return tiles[dtype]


@dataclass(frozen=True)
class PackedWeight:
    """A 2:4 weight [out, in] in one of FORMATS. values: [out, in/2] of `dtype`; meta: cutlass' reordered
    meta (int16 [out, in/16], int32 [out, in/32] for int8) or the bitmask (uint8 [out, ceil(in/8)])."""

    format: str
    shape: tuple[int, int]
    dtype: torch.dtype
    values: torch.Tensor
    meta: torch.Tensor

    def __post_init__(self):
        rows, cols = self.shape
        rows_tile, cols_tile, _n, _m = format_tile(self.format, self.dtype)
        if rows % rows_tile or cols % cols_tile:
            raise SparseFormatError(f"{self.format}: shape {self.shape} is not a multiple of "
                                    f"({rows_tile}, {cols_tile})")
        if self.values.dtype != self.dtype or tuple(self.values.shape) != (rows, cols // 2):
            raise SparseFormatError(f"{self.format}: values must be {str(self.dtype).replace('torch.', '')} "
                                    f"{(rows, cols // 2)}, got {self.values.dtype} {tuple(self.values.shape)}")
        if self.format == "cutlass":
            meta_dtype, meta_cols = (torch.int32, cols // 32) if self.dtype == torch.int8 else (
                torch.int16, cols // (8 if self.dtype == torch.float32 else 16))
        else:
            meta_dtype, meta_cols = torch.uint8, (cols + 7) // 8
        if self.meta.dtype != meta_dtype or tuple(self.meta.shape) != (rows, meta_cols):
            raise SparseFormatError(f"{self.format}: meta must be {str(meta_dtype).replace('torch.', '')} "
                                    f"{(rows, meta_cols)}, got {self.meta.dtype} {tuple(self.meta.shape)}")
        if self.values.device != self.meta.device:
            raise SparseFormatError(f"values on {self.values.device} but meta on {self.meta.device}")

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The packed tensors under their format's names (compressed-tensors: compressed, bitmask)."""
        if self.format == "bitmask":
            return {"compressed": self.values, "bitmask": self.meta}
        return {"values": self.values, "meta": self.meta}

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.meta.numel() * self.meta.element_size()

    def to(self, device) -> PackedWeight:
        return PackedWeight(self.format, self.shape, self.dtype, self.values.to(device), self.meta.to(device))


def _use_extension(tensor: torch.Tensor) -> bool:
    return extension is not None and (tensor.device.type == "cpu" or
                                      (tensor.device.type == "cuda" and getattr(extension, "WITH_CUDA", False)))


def _nonzero(weight: torch.Tensor) -> torch.Tensor:
    """weight != 0 (bool, same shape) on the bits, so it works for every dtype (-0.0 is zero, NaN is not)."""
    if not weight.dtype.is_floating_point:
        return weight != 0
    size = weight.element_size()
    return (weight.view(_INT_VIEW[size]) & ((1 << (8 * size - 1)) - 1)) != 0


def first_violation(weight: torch.Tensor, n: int = 2, m: int = 4) -> tuple[int, int] | None:
    """(row, group) of the first group of m consecutive inputs of weight [out, in] with more than n
    non-zeros, or None when it is n:m sparse (tfprune._C.nm_first_violation on the CPU)."""
    if extension is not None and weight.device.type == "cpu":
        row, group = extension.nm_first_violation(weight.detach(), n, m)
        return None if row < 0 else (row, group)
    counts = _nonzero(weight).reshape(weight.shape[0], -1, m).sum(-1)
    bad = (counts > n).flatten().nonzero()
    if len(bad) == 0:
        return None
    index = int(bad[0])
    return divmod(index, counts.shape[1])


def _violation_error(weight: torch.Tensor, format: str, n: int, m: int, where: tuple[int, int]) -> SparseFormatError:
    row, group = where
    count = int(_nonzero(weight[row, group * m:(group + 1) * m]).sum())
    hint = (" (float32 is 1:2 in torch's CUTLASS layout: cast to float16/bfloat16 for 2:4, or use format='bitmask')"
            if format == "cutlass" and weight.dtype == torch.float32 else "")
    return SparseFormatError(f"weight {tuple(weight.shape)} is not {n}:{m} sparse: row {row}, group {group} "
                             f"(columns {group * m}-{group * m + m - 1}) holds {count} non-zeros{hint}")


def _check_weight(weight: torch.Tensor, format: str) -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise SparseFormatError(f"pack: weight must be a tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise SparseFormatError(f"pack: weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    rows_tile, cols_tile, _n, _m = format_tile(format, weight.dtype)
    rows, cols = weight.shape
    if rows == 0 or cols == 0 or rows % rows_tile or cols % cols_tile:
        what = str(weight.dtype).replace("torch.", "")
        need = f"out_features a positive multiple of {rows_tile} and " if rows_tile > 1 else ""
        raise SparseFormatError(f"format {format!r} ({what}) needs {need}in_features a positive multiple of "
                                f"{cols_tile}, got {tuple(weight.shape)}")
    return weight.detach().contiguous()


def pack(weight: torch.Tensor, format: str = "cutlass") -> PackedWeight:
    """Pack a 2:4-sparse weight [out, in] (CPU or CUDA) into `format` ('cutlass' | 'bitmask').

    Raises SparseFormatError for a bad shape or dtype, or naming the first row and group with more than two
    non-zeros (more than one of a pair for float32 in 'cutlass')."""
    weight = _check_weight(weight, format)
    _rows, _cols, n, m = format_tile(format, weight.dtype)
    if _use_extension(weight):  # the packer flags a bad group; the error path finds the first one
        values, meta, ok = extension.sparse24_pack(weight, format)
        where = None if bool(ok) else first_violation(weight, n, m)
    else:
        where = first_violation(weight, n, m)
        values, meta = pack_ref(weight, format) if where is None else (None, None)
    if where is not None:
        raise _violation_error(weight, format, n, m, where)
    return PackedWeight(format, tuple(weight.shape), weight.dtype, values, meta)


def unpack(packed: PackedWeight) -> torch.Tensor:
    """The dense weight [out, in] of a PackedWeight (+0.0 where nothing is stored). On a GPU without the
    CUDA extension, by blocks of rows (`unpack_by_rows`), so the temporaries stay small."""
    if _use_extension(packed.values):
        dense, ok = extension.sparse24_unpack(packed.values, packed.meta, packed.format)
        if not bool(ok):
            raise _bad_bitmask_error(packed.meta)
        return dense
    if packed.device.type == "cuda":
        return unpack_by_rows(packed)
    return unpack_ref(packed)


def unpack_by_rows(packed: PackedWeight, block_rows: int = 2048) -> torch.Tensor:
    """unpack_ref, block_rows rows at a time into one dense [out, in] tensor: the int64 temporaries of torch's
    conversions (several times the dense size for 28672x8192) exist for one block only. 16-bit 'cutlass'
    goes through the decode layout's codes (torch's meta before its reordering); 'bitmask' rows are
    independent; the float32 (1:2) and int8 'cutlass' layouts are unpacked whole."""
    from .. import decode24

    rows, cols = packed.shape
    if packed.format == "cutlass" and packed.dtype not in (torch.float16, torch.bfloat16):
        return unpack_ref(packed)
    dense = torch.empty(rows, cols, dtype=packed.dtype, device=packed.device)
    codes = decode24.codes_from_cutlass_meta(packed.meta, packed.shape) if packed.format == "cutlass" else None
    for begin in range(0, rows, block_rows):
        end = min(rows, begin + block_rows)
        if codes is None:
            block = PackedWeight("bitmask", (end - begin, cols), packed.dtype, packed.values[begin:end],
                                 packed.meta[begin:end])
            dense[begin:end] = unpack_ref(block)
        else:
            dense[begin:end] = decode24.unpack_ref(decode24.Decode24Weight(
                packed.values[begin:end], codes[begin:end], (end - begin, cols)))
    return dense


def to_cutlass(packed: PackedWeight) -> PackedWeight:
    """The same weight in the 'cutlass' format. A 16-bit 'bitmask' weight keeps its values tensor (the kept
    pair of every group, in index order, is also CUTLASS's) and gets CUTLASS meta from its bitmask: no dense
    copy. Groups with fewer than 2 non-zeros keep the bitmask's pair of indices, not torch's fixed codes."""
    if packed.format == "cutlass":
        return packed
    rows, cols = packed.shape
    if packed.dtype not in (torch.float16, torch.bfloat16) or rows % 32 or cols % 32:
        raise SparseFormatError(f"bitmask -> cutlass takes float16/bfloat16 weights with out_features and "
                                f"in_features multiples of 32, got {str(packed.dtype).replace('torch.', '')} "
                                f"{packed.shape}")
    if _use_extension(packed.meta):
        meta, ok = extension.sparse24_bitmask_to_cutlass_meta(packed.meta)
        if not bool(ok):
            raise _bad_bitmask_error(packed.meta)
    else:
        meta = bitmask_to_cutlass_meta_ref(packed.meta)
    return PackedWeight("cutlass", packed.shape, packed.dtype, packed.values, meta)


# ---- torch references ----

# compressed-tensors' kept nibble per nibble of non-zero flags (csrc/sparse24_core.h: bitmask_keep)
_KEEP = [0xC, 0x5, 0xA, 0x3, 0xC, 0x5, 0x6, 0x7, 0xC, 0x9, 0xA, 0xB, 0xC, 0xD, 0xE, 0xF]


def _popcount4(x: torch.Tensor) -> torch.Tensor:
    return (x & 1) + (x >> 1 & 1) + (x >> 2 & 1) + (x >> 3 & 1)


def _bad_bitmask_error(bitmask: torch.Tensor) -> SparseFormatError:
    nibbles = torch.stack([bitmask & 0xF, bitmask >> 4], -1).reshape(bitmask.shape[0], -1).to(torch.int64)
    bad = (_popcount4(nibbles) != 2).flatten().nonzero()
    row, group = divmod(int(bad[0]), nibbles.shape[1]) if len(bad) else (-1, -1)
    return SparseFormatError(f"bitmask row {row}, group {group} does not mark exactly two of four weights "
                             "(compressed-tensors' sparse-24-bitmask keeps two per group)")


def pack_ref(weight: torch.Tensor, format: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, meta) of a checked 2:4 weight, in torch: torch's own conversion for 'cutlass', a vectorized
    equivalent of compressed-tensors' topk(|w|, 2) selection for 'bitmask'."""
    if format == "cutlass":
        from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

        return sparse_semi_structured_from_dense_cutlass(weight)
    rows, cols = weight.shape
    bits = weight.view(_INT_VIEW[weight.element_size()]).reshape(rows, cols // 4, 4)
    flags = _nonzero(weight).reshape(rows, cols // 4, 4).to(torch.int64)
    nz = flags[..., 0] | flags[..., 1] << 1 | flags[..., 2] << 2 | flags[..., 3] << 3
    keep_nibble = torch.tensor(_KEEP, device=weight.device)[nz]
    keep = (keep_nibble.unsqueeze(-1) >> torch.arange(4, device=weight.device) & 1).bool()
    values = bits[keep].reshape(rows, cols // 2).view(weight.dtype)
    from ..ops import pack_mask

    return values, pack_mask(keep.reshape(rows, cols))


def unpack_ref(packed: PackedWeight) -> torch.Tensor:
    """Dense weight of a PackedWeight in torch (torch's _to_dense_cutlass on integer views, so float32 bits
    survive; compressed-tensors' scatter for 'bitmask')."""
    rows, cols = packed.shape
    if packed.format == "cutlass":
        from torch.sparse._semi_structured_conversions import sparse_semi_structured_to_dense_cutlass

        if packed.dtype == torch.float32:  # torch's float path goes through float16 and quiets NaN patterns
            halves = packed.values.view(torch.int16)
            return sparse_semi_structured_to_dense_cutlass(halves, packed.meta).view(torch.float32)
        if packed.dtype == torch.int8:
            return sparse_semi_structured_to_dense_cutlass(packed.values, packed.meta)
        return sparse_semi_structured_to_dense_cutlass(packed.values.view(torch.int16), packed.meta).view(packed.dtype)
    nibbles = torch.stack([packed.meta & 0xF, packed.meta >> 4], -1).reshape(rows, -1)[:, : cols // 4].to(torch.int64)
    if bool((_popcount4(nibbles) != 2).any()):
        raise _bad_bitmask_error(packed.meta)
    keep = (nibbles.unsqueeze(-1) >> torch.arange(4, device=nibbles.device) & 1).bool().reshape(rows, cols)
    int_dtype = _INT_VIEW[packed.values.element_size()]
    dense = torch.zeros(rows, cols, dtype=int_dtype, device=packed.values.device)
    dense[keep] = packed.values.view(int_dtype).flatten()
    return dense.view(packed.dtype)


def _meta_offsets(rows: int, row_begin: int, row_end: int, meta_cols: int, device) -> torch.Tensor:
    """Flat offsets in torch's reordered int16 CUTLASS meta [rows, meta_cols] of rows [row_begin, row_end)
    (the formula of _calculate_meta_reordering_scatter_offsets, for a block of rows)."""
    r = torch.arange(row_begin, row_end, device=device)[:, None]
    c = torch.arange(meta_cols, device=device)[None, :]
    dr = r // 32 * 32 + (r % 8) * 4 + (r % 32) // 8
    topright = ((dr % 2 == 0) & (c % 2 == 1)).to(torch.int64)
    bottomleft = ((dr % 2 == 1) & (c % 2 == 0)).to(torch.int64)
    dr = dr + topright - bottomleft
    dc = c - topright + bottomleft
    return ((dc // 2) * rows * 2 + dr * 2 + dc % 2).flatten()


def bitmask_to_cutlass_meta_ref(bitmask: torch.Tensor, block_rows: int = 1024) -> torch.Tensor:
    """Reordered int16 CUTLASS meta [rows, cols/16] of a 16-bit bitmask [rows, cols/8], in torch, by blocks
    of rows (so the temporaries stay small)."""
    rows, width = bitmask.shape
    # per bitmask byte (two groups): the two CUTLASS codes idx0 | idx1 << 2 of its nibbles
    lowest = [(x & -x).bit_length() - 1 if x else 3 for x in range(16)]
    highest = [x.bit_length() - 1 if x else 0 for x in range(16)]
    codes = torch.tensor([(lowest[b & 15] | highest[b & 15] << 2) | (lowest[b >> 4] | highest[b >> 4] << 2) << 4
                          for b in range(256)], dtype=torch.int32, device=bitmask.device)
    meta = torch.empty(rows * (width // 2), dtype=torch.int16, device=bitmask.device)
    for begin in range(0, rows, block_rows):
        block = bitmask[begin:begin + block_rows].to(torch.int64)
        nibbles = torch.stack([block & 0xF, block >> 4], -1)
        if bool((_popcount4(nibbles) != 2).any()):
            raise _bad_bitmask_error(bitmask)
        pairs = codes[block].reshape(block.shape[0], width // 2, 2)
        words = (pairs[..., 0] | pairs[..., 1] << 8).to(torch.int16)  # wraps like torch's int16 meta
        meta[_meta_offsets(rows, begin, begin + block.shape[0], width // 2, bitmask.device)] = words.flatten()
    return meta.view(rows, width // 2)
