"""Linear-layer benchmark: a dense nn.Linear vs the SparseLinear (2:4) built from the same 2:4-pruned weight,
for the shapes of a model config or of the Llama presets, over token counts and dtypes."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from ..errors import TfpruneError
from .timing import summarize, synchronize, time_fn

__all__ = ["PRESETS", "LinearShape", "preset_shapes", "model_shapes", "parse_shapes", "prune_24_",
           "sparse_support", "path_taken", "make_linear_pair", "linear_input", "bench_linear_case"]

log = logging.getLogger("tfprune")

# Llama-2 7B / 13B, Llama-2/3 70B (grouped-query attention: 8 KV heads).
PRESETS = {
    "llama-7b": dict(hidden=4096, intermediate=11008, heads=32, kv_heads=32),
    "llama-13b": dict(hidden=5120, intermediate=13824, heads=40, kv_heads=40),
    "llama-70b": dict(hidden=8192, intermediate=28672, heads=64, kv_heads=8),
}


@dataclass(frozen=True)
class LinearShape:
    """The weight [out_features, in_features] of the linear layers `layers` of model `model`."""

    model: str
    layers: tuple[str, ...]
    out_features: int
    in_features: int

    @property
    def name(self) -> str:
        layers = f" {'/'.join(self.layers)}" if self.layers else ""
        return f"{self.model}{layers} {self.out_features}x{self.in_features}"


def _grouped(model: str, named: list[tuple[str, int, int]]) -> list[LinearShape]:
    groups: dict[tuple[int, int], list[str]] = {}
    for layer, out_features, in_features in named:
        groups.setdefault((out_features, in_features), []).append(layer)
    return [LinearShape(model, tuple(layers), out_f, in_f) for (out_f, in_f), layers in groups.items()]


def preset_shapes(name: str) -> list[LinearShape]:
    """The distinct linear shapes of one decoder block of a preset (q/k/v/o, gate/up, down)."""
    if name not in PRESETS:
        raise TfpruneError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    p = PRESETS[name]
    hidden, inter, kv = p["hidden"], p["intermediate"], p["kv_heads"] * p["hidden"] // p["heads"]
    return _grouped(name, [("q_proj", hidden, hidden), ("k_proj", kv, hidden), ("v_proj", kv, hidden),
                           ("o_proj", hidden, hidden), ("gate_proj", inter, hidden), ("up_proj", inter, hidden),
                           ("down_proj", hidden, inter)])


def model_shapes(spec: str) -> list[LinearShape]:
    """The distinct linear shapes of the first decoder block of a model (builtin:FAMILY, a local directory or
    a hub id), read from its config: the model is built on the meta device, no weight is loaded."""
    from ..engine.discovery import check_architecture, decoder_layers, find_linears, weight_matrix

    if spec.startswith("builtin:"):
        from ..builtin import BUILTIN_FAMILIES, HIDDEN, _config

        family = spec.split(":", 1)[1]
        if family not in BUILTIN_FAMILIES:
            raise TfpruneError(f"unknown built-in model {family!r}")
        config = _config(family, 1024, HIDDEN, 1)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(spec)
    check_architecture(config)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    block = decoder_layers(model)[0]
    return _grouped(spec, [(name, *weight_matrix(module).shape) for name, module in find_linears(block).items()])


def parse_shapes(text: str) -> list[LinearShape]:
    """'OUTxIN,OUTxIN' → custom shapes."""
    shapes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            out_features, in_features = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise TfpruneError(f"--shapes takes OUTxIN[,OUTxIN...], got {item!r}") from None
        shapes.append(LinearShape("custom", (), out_features, in_features))
    return shapes


def prune_24_(weight: torch.Tensor) -> torch.Tensor:
    """Zero (to +0.0) the 2 smallest-magnitude weights of every group of 4 inputs of weight [out, in]."""
    if weight.shape[-1] % 4:
        raise TfpruneError(f"in_features={weight.shape[-1]} is not a multiple of 4: no 2:4 pattern")
    ops.prune_weight_(weight, "magnitude", nm=(2, 4))
    return weight


def sparse_support() -> tuple[bool, str | None]:
    """(True, None) when tfprune.sparse (SparseLinear, sparsify) imports, else (False, why)."""
    try:
        from ..sparse import SparseLinear  # noqa: F401
    except ImportError as error:
        return False, f"tfprune.sparse is not available ({error})"
    return True, None


def path_taken(sparse, x: torch.Tensor) -> str:
    """The path SparseLinear takes for x ('decode', 'cutlass', 'cusparselt'; 'dense (why)')."""
    path = sparse.path(x)
    return f"dense ({sparse.gemm_backend()[1]})" if path == "dense" else path


def make_linear_pair(shape: LinearShape, dtype: torch.dtype, device: str, fmt: str = "cutlass", seed: int = 0):
    """(dense nn.Linear with a random 2:4-pruned weight, SparseLinear of the same weight or None, why None)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    dense = nn.Linear(shape.in_features, shape.out_features, bias=False, device="meta")
    weight = torch.randn(shape.out_features, shape.in_features, generator=generator, dtype=torch.float32)
    weight = prune_24_(weight.to(device=device, dtype=dtype))  # on the device: Triton selects there
    dense.weight = nn.Parameter(weight, requires_grad=False)
    available, reason = sparse_support()
    if not available:
        return dense, None, reason
    from ..sparse import SparseLinear

    try:
        sparse = SparseLinear.from_linear(dense, format=fmt)
    except Exception as error:  # a format/device/dtype the sparse path does not take: report it, keep going
        return dense, None, f"SparseLinear.from_linear failed: {type(error).__name__}: {error}"
    return dense, sparse, None


def linear_input(shape: LinearShape, tokens: int, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    """x: [tokens, in_features] standard normal."""
    generator = torch.Generator(device="cpu").manual_seed(seed + 1)
    return torch.randn(tokens, shape.in_features, generator=generator).to(device=device, dtype=dtype)


def _timing(samples: list[float], flops: float) -> dict:
    stats = summarize(samples)
    return {"median_ms": stats["median"], "tflops": flops / (stats["median"] * 1e-3) / 1e12, "stats": stats,
            "samples_ms": samples}


@torch.inference_mode()
def bench_linear_case(shape: LinearShape, tokens_list, dtype: torch.dtype, device: str, reps: int, warmup: int,
                      fmt: str = "cutlass", seed: int = 0) -> list[dict]:
    """Rows (one per token count) for one shape and dtype: dense and sparse timings, their speedup, and the
    largest |sparse(x) - dense(x)| (the two must compute the same function)."""
    dense, sparse, reason = make_linear_pair(shape, dtype, device, fmt, seed)
    rows = []
    for tokens in tokens_list:
        x = linear_input(shape, tokens, dtype, device, seed)
        flops = 2.0 * tokens * shape.in_features * shape.out_features
        row = {"device": torch.device(device).type, "dtype": str(dtype).replace("torch.", ""), "shape": shape.name,
               "model": shape.model, "layers": list(shape.layers), "out_features": shape.out_features,
               "in_features": shape.in_features, "tokens": tokens, "status": "measured", "reason": None,
               "dense": _timing(time_fn(lambda: dense(x), warmup, reps, device), flops),
               "sparse": None, "speedup": None, "max_abs_diff": None, "sparse_path": None}
        if sparse is None:
            row["sparse_status"], row["sparse_reason"] = "unavailable", reason
        else:
            try:
                diff = (sparse(x).float() - dense(x).float()).abs().max()
                row["max_abs_diff"] = float(diff)
                row["sparse"] = _timing(time_fn(lambda: sparse(x), warmup, reps, device), flops)
                row["speedup"] = row["dense"]["median_ms"] / row["sparse"]["median_ms"]
                row["sparse_status"], row["sparse_reason"] = "measured", None
                row["sparse_path"] = path_taken(sparse, x)
            except Exception as error:  # no kernel for this device/dtype/shape: record why
                row["sparse_status"] = "error"
                row["sparse_reason"] = f"{type(error).__name__}: {error}"
        synchronize(device)
        log.info("%s %s tokens=%d: dense %.3f ms, sparse %s", shape.name, row["dtype"], tokens,
                 row["dense"]["median_ms"],
                 f"{row['sparse']['median_ms']:.3f} ms" if row["sparse"] else row["sparse_status"])
        rows.append(row)
    return rows
