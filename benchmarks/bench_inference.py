"""Dense vs 2:4 (SparseLinear) linear layers, and end-to-end prefill/decode tokens/s: the same implementation
as `tfprune bench` (tfprune/bench), run two ways.

    .venv/bin/python benchmarks/bench_inference.py [tfprune bench options]     # == tfprune bench: table + bench-out/
    .venv/bin/python -m pytest benchmarks/bench_inference.py --benchmark-only   # pytest-benchmark's tables/JSON

The pytest suite times llama-7b's linear shapes at a few token counts (bf16 on CPU, fp16 on CUDA), dense and
2:4; cases whose 2:4 path is unavailable are skipped with the reason.
"""
from __future__ import annotations

import sys

import pytest
import torch

from tfprune.bench import LinearShape, linear_input, make_linear_pair, preset_shapes, resolve_device

DEVICE = resolve_device("auto")
CUDA = DEVICE.startswith("cuda")
DTYPE = torch.float16 if CUDA else torch.bfloat16
TOKENS = (1, 16, 256, 2048, 8192) if CUDA else (1, 16, 128)
SHAPES = preset_shapes("llama-7b")


def linear_callable(shape: LinearShape, tokens: int, dtype: torch.dtype, kind: str, device: str = "cpu",
                    fmt: str = "cutlass"):
    """fn() running one forward of the dense ('dense') or SparseLinear ('2:4') layer of `shape` on
    x [tokens, in] (synchronized on CUDA). RuntimeError when the 2:4 layer is unavailable."""
    dense, sparse, reason = make_linear_pair(shape, dtype, device, fmt)
    module = dense if kind == "dense" else sparse
    if module is None:
        raise RuntimeError(reason)
    x = linear_input(shape, tokens, dtype, device)
    cuda = torch.device(device).type == "cuda"

    def run():
        with torch.inference_mode():
            y = module(x)
        if cuda:
            torch.cuda.synchronize()
        return y

    return run


@pytest.mark.parametrize("kind", ["dense", "2:4"])
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s.out_features}x{s.in_features}")
def test_linear(benchmark, shape, tokens, kind):
    try:
        fn = linear_callable(shape, tokens, DTYPE, kind, DEVICE)
    except RuntimeError as error:
        pytest.skip(str(error))
    benchmark.group = f"{shape.name} tokens={tokens} {str(DTYPE).replace('torch.', '')}"
    benchmark.extra_info.update(kind=kind, tokens=tokens, out_features=shape.out_features,
                                in_features=shape.in_features, device=DEVICE,
                                tflop=2 * tokens * shape.in_features * shape.out_features / 1e12)
    benchmark.pedantic(fn, rounds=50 if CUDA else 10, warmup_rounds=10 if CUDA else 2, iterations=1)


if __name__ == "__main__":
    from tfprune.cli import main

    sys.exit(main(["bench", *sys.argv[1:]]))
