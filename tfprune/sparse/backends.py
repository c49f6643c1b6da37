"""The 2:4 GEMM backends of SparseLinear on CUDA, chosen by compute capability, availability, dtype and shape.

- ``cutlass``: torch's CUTLASS 2:4 GEMM (``SparseSemiStructuredTensorCUTLASS``) on tfprune's packed values
  and CUTLASS meta as they are: no copy, no dense weight. torch enables it on compute capability 8.x only
  (pytorch#132928, #132009: it was never validated on Hopper). fp16/bf16, out_features a multiple of 32,
  in_features of 64.
- ``cusparselt``: cuSPARSELt (``torch._cslt_compress`` / ``torch._cslt_sparse_mm`` through
  ``SparseSemiStructuredTensorCUSPARSELT``): the backend of 9.x (H100/H200; pytorch#121768) and later, and of
  8.x shapes CUTLASS does not take, where torch was built with it. Its compressed format is opaque and is
  built on the device from a dense 2:4 weight: the packed weight is unpacked on the device, compressed, and
  the dense copy freed at once (one layer at a time). The compressed copy (≈ 9/16 of the dense bytes) is
  held beside the packed buffers. fp16/bf16, both dimensions multiples of 16.

`policy` is the rule as a pure function (tested on the CPU); `choose` applies it to a device; `build`
makes the weight operand that ``F.linear(x, operand, bias)`` runs on the chosen backend.
"""
from __future__ import annotations

import functools

import torch

from .formats import PackedWeight, to_cutlass, unpack

__all__ = ["GEMM_BACKENDS", "SHAPE_MULTIPLES", "policy", "cusparselt_available", "choose", "support", "build"]

GEMM_BACKENDS = ("cutlass", "cusparselt")
_DTYPES = (torch.float16, torch.bfloat16)


def _torch_multiples(backend: str) -> tuple[int, int]:
    """torch's own (sparse_min_rows, sparse_min_cols) for bf16 (the same for fp16), read from its classes so
    that another release's constraints are followed; torch 2.13's values where it has no such table."""
    try:
        from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

        cls = SparseSemiStructuredTensorCUTLASS if backend == "cutlass" else SparseSemiStructuredTensorCUSPARSELT
        config = cls._DTYPE_SHAPE_CONSTRAINTS[torch.bfloat16]
        return int(config.sparse_min_rows), int(config.sparse_min_cols)
    except (ImportError, AttributeError, KeyError):
        return {"cutlass": (32, 64), "cusparselt": (16, 16)}[backend]


#: (out_features multiple, in_features multiple) of each backend for fp16/bf16 (torch's sparse_min_rows/cols)
SHAPE_MULTIPLES = {backend: _torch_multiples(backend) for backend in GEMM_BACKENDS}


def _fits(backend: str, shape: tuple[int, int]) -> bool:
    rows, cols = SHAPE_MULTIPLES[backend]
    return shape[0] % rows == 0 and shape[1] % cols == 0 and shape[0] > 0 and shape[1] > 0


def _shape_reason(backend: str, shape: tuple[int, int]) -> str:
    rows, cols = SHAPE_MULTIPLES[backend]
    name = {"cutlass": "torch's CUTLASS 2:4 kernel", "cusparselt": "cuSPARSELt"}[backend]
    return f"shape {tuple(shape)} unsupported by {name} (out_features a multiple of {rows}, in_features of {cols})"


def policy(capability: tuple[int, int], dtype: torch.dtype, shape: tuple[int, int],
           cusparselt: bool) -> tuple[str | None, str | None]:
    """(backend, None) for a weight of `shape` [out, in] and `dtype` on a GPU of compute `capability`
    (cusparselt: whether torch has cuSPARSELt), or (None, why none runs it). CUTLASS first on 8.x (it runs on
    the packed tensors as they are), cuSPARSELt on 9.x and later."""
    major, minor = capability
    if major < 8:
        return None, f"2:4 sparse tensor cores need compute capability 8.0+, the device has {major}.{minor}"
    if dtype not in _DTYPES:
        return None, f"torch's 2:4 GEMMs take float16/bfloat16 here, not {str(dtype).replace('torch.', '')}"
    if major == 8:
        if _fits("cutlass", shape):
            return "cutlass", None
        if cusparselt and _fits("cusparselt", shape):
            return "cusparselt", None
        return None, _shape_reason("cutlass", shape)
    if not cusparselt:
        return None, (f"no 2:4 GEMM on compute capability {major}.{minor}: torch's CUTLASS 2:4 kernel runs on 8.x "
                      "only (pytorch#132928) and this torch has no cuSPARSELt (torch.backends.cusparselt)")
    if _fits("cusparselt", shape):
        return "cusparselt", None
    return None, _shape_reason("cusparselt", shape)


@functools.lru_cache(maxsize=None)
def cusparselt_available() -> bool:
    """Whether this torch was built with cuSPARSELt (and can load it)."""
    try:
        return bool(torch.backends.cusparselt.is_available())
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def _cuda_capability(device: torch.device) -> tuple[int, int]:
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


def choose(shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str) -> tuple[str | None, str | None]:
    """`policy` on `device`: (backend, None) or (None, why no 2:4 GEMM runs this weight there)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, f"no 2:4 sparse kernel on {device.type}"
    return policy(_cuda_capability(device), dtype, tuple(shape), cusparselt_available())


def support(backend: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device | str) -> str | None:
    """None when `backend` (forced, not chosen) can run this weight on `device`, else why not."""
    if backend not in GEMM_BACKENDS:
        raise ValueError(f"unknown 2:4 GEMM backend {backend!r}: choose one of {', '.join(GEMM_BACKENDS)}")
    device = torch.device(device)
    if device.type != "cuda":
        return f"no 2:4 sparse kernel on {device.type}"
    major, minor = _cuda_capability(device)
    if dtype not in _DTYPES:
        return f"torch's 2:4 GEMMs take float16/bfloat16 here, not {str(dtype).replace('torch.', '')}"
    if backend == "cutlass" and major != 8:
        return f"torch's CUTLASS 2:4 kernel runs on compute capability 8.x only (pytorch#132928), not {major}.{minor}"
    if backend == "cusparselt" and not cusparselt_available():
        return "this torch has no cuSPARSELt (torch.backends.cusparselt.is_available() is False)"
    if major < 8:
        return f"2:4 sparse tensor cores need compute capability 8.0+, the device has {major}.{minor}"
    return None if _fits(backend, shape) else _shape_reason(backend, shape)


def build(backend: str, packed: PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """The weight operand of `backend` for F.linear, on the packed weight's device, in `dtype`.

    cutlass: the packed values and CUTLASS meta wrapped as they are (a 'bitmask' weight gets CUTLASS meta from
    its bitmask on the device; the values are shared). cusparselt: the weight unpacked on the device, compressed
    by cuSPARSELt and the dense copy dropped before returning."""
    from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    if backend == "cutlass":
        if packed.dtype != dtype:
            raise ValueError(f"cutlass: the packed layout is {packed.dtype}, not {dtype}: repack the cast weight")
        cutlass = to_cutlass(packed)
        return SparseSemiStructuredTensorCUTLASS(torch.Size(cutlass.shape), cutlass.values, cutlass.meta,
                                                 None, None, None)
    if backend == "cusparselt":
        dense = unpack(packed).to(dtype)  # one layer's dense copy, on the device
        operand = SparseSemiStructuredTensorCUSPARSELT.from_dense(dense)
        del dense  # freed now: the caching allocator reuses it for the next layer
        return operand
    raise ValueError(f"unknown 2:4 GEMM backend {backend!r}: choose one of {', '.join(GEMM_BACKENDS)}")
