"""2:4 sparse weights that run: packed formats (torch's CUTLASS layout, compressed-tensors' sparse-24-bitmask)
packed by tfprune._C, SparseLinear, sparsify(model), and compressed-tensors checkpoints.

    packed = tfprune.sparse.pack(weight, "cutlass")      # PackedWeight; unpack(packed) gives weight back
    report = tfprune.sparsify(model)                      # every 2:4 linear -> SparseLinear, in place
    model = tfprune.from_pretrained("out", device="cuda")  # a compressed-tensors 2:4 checkpoint, packed
    decode_head_(model)                                   # the dense LM head on tfprune's bf16 decode kernel
"""
from .checkpoint import from_pretrained, save_compressed_tensors
from .dense_decode import DenseDecodeLinear, decode_head_
from .formats import FORMATS, PackedWeight, SparseFormatError, first_violation, pack, to_cutlass, unpack
from .linear import SparseLinear, SparsifyReport, kernel_support, sparsify

__all__ = [
    "FORMATS",
    "PackedWeight",
    "SparseFormatError",
    "pack",
    "unpack",
    "to_cutlass",
    "first_violation",
    "SparseLinear",
    "SparsifyReport",
    "sparsify",
    "kernel_support",
    "from_pretrained",
    "save_compressed_tensors",
    "DenseDecodeLinear",
    "decode_head_",
]
