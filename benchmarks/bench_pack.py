"""The 2:4 packer of tfprune._C against the formats' Python reference implementations, two ways.

    .venv/bin/python benchmarks/bench_pack.py [--quick] [--reps N]           # the table of benchmarks/README.md
    .venv/bin/python -m pytest benchmarks/bench_pack.py --benchmark-only     # pytest-benchmark, per format/shape

CPU rows: packing a random 2:4 weight [out, in] into torch's CUTLASS layout with tfprune.sparse.pack (C++,
OpenMP over rows, AVX2 where the CPU has it) vs torch's reference
`sparse_semi_structured_from_dense_cutlass` (a chain of Python-level tensor ops), their ratio, and the
packer against a plain copy of the same dense bytes (`torch.empty_like(w).copy_(w)`, and `w.clone()`, which
pays for the allocation as the packer does). The 'bitmask' rows time compressed-tensors' sparse-24-bitmask
format (its compressor as the reference on the smallest shape; it is as slow as torch's). Medians of --reps.

CUDA rows (where a GPU is present and tfprune._C was built with CUDA): the CUDA packer's median time and
achieved bandwidth (bytes read + written: 2 B/weight read, 1 B/weight of values and 1/8 B of meta written).
Dense vs SparseLinear GEMMs are timed by benchmarks/bench_inference.py.
"""
from __future__ import annotations

import argparse
import platform
import statistics

import pytest
import torch

from tfprune import sparse
from tfprune._ext import extension
from tfprune.bench.timing import time_fn

SHAPES = [(4096, 4096), (8192, 8192), (8192, 28672)]
DTYPES = [torch.float16, torch.bfloat16]


def random_24(rows: int, cols: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    """A random 2:4 weight [rows, cols] (exactly two non-zeros in every group of 4)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    weight = torch.randn(rows, cols, generator=generator, dtype=torch.float32).to(dtype)
    keep = torch.rand(rows, cols // 4, 4, generator=generator).argsort(-1) < 2
    return weight.masked_fill(~keep.reshape(rows, cols), 0.0).to(device)


def median_ms(fn, reps: int, warmup: int = 1, device: str = "cpu") -> float:
    """Median milliseconds of fn() (tfprune.bench's timer: CUDA events on the GPU, perf_counter on the CPU)."""
    return statistics.median(time_fn(fn, warmup, reps, device))


def cpu_rows(shapes, dtypes, reps: int, reference_reps: int) -> list[str]:
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    rows = []
    for out_features, in_features in shapes:
        for dtype in dtypes:
            w = random_24(out_features, in_features, dtype)
            buffer = torch.empty_like(w)
            copy = median_ms(lambda: buffer.copy_(w), reps)
            clone = median_ms(lambda: w.clone(), reps)
            ours = median_ms(lambda: sparse.pack(w, "cutlass"), reps)
            theirs = median_ms(lambda: sparse_semi_structured_from_dense_cutlass(w), reference_reps, warmup=0)
            bitmask = median_ms(lambda: sparse.pack(w, "bitmask"), reps)
            name = str(dtype).replace("torch.", "")
            rows.append(f"| {out_features}×{in_features} | {name} | {theirs:.0f} | {ours:.1f} | "
                        f"{theirs / ours:.0f}× | {copy:.1f} | {clone:.1f} | "
                        f"{ours / copy:.1f}× / {ours / clone:.1f}× | {bitmask:.1f} |")
            print(rows[-1], flush=True)
            del w, buffer
    return rows


def compressed_tensors_row(reps: int) -> str | None:
    try:
        from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import sparse24_bitmask_compress
    except ImportError:
        return None
    w = random_24(4096, 4096, torch.bfloat16)
    theirs = median_ms(lambda: sparse24_bitmask_compress(w), reps, warmup=0)
    ours = median_ms(lambda: sparse.pack(w, "bitmask"), 5 * reps)
    return (f"| 4096×4096 | bfloat16 | compressed-tensors {theirs:.0f} ms | tfprune {ours:.1f} ms | "
            f"{theirs / ours:.0f}× |")


def cuda_rows(shapes, dtypes, reps: int) -> list[str]:
    rows = []
    for out_features, in_features in shapes:
        for dtype in dtypes:
            w = random_24(out_features, in_features, dtype, "cuda")
            ms = median_ms(lambda: sparse.pack(w, "cutlass"), reps, device="cuda")
            moved = w.numel() * (2 + 1 + 1 / 8)
            rows.append(f"| {out_features}×{in_features} | {str(dtype).replace('torch.', '')} | {ms:.3f} | "
                        f"{moved / ms / 1e6:.0f} |")
            print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4096×4096 only")
    parser.add_argument("--reps", type=int, default=7, help="timed runs of the C++ packer and the copies")
    parser.add_argument("--reference-reps", type=int, default=2, help="timed runs of torch's Python conversion")
    args = parser.parse_args(argv)
    if extension is None:
        raise SystemExit("tfprune._C is not built: nothing to benchmark")
    shapes = SHAPES[:1] if args.quick else SHAPES
    print(f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| shape | dtype | torch reference ms | tfprune ms | speed-up | copy_ ms | clone ms | vs copy_ / clone "
          "| tfprune bitmask ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    cpu_rows(shapes, DTYPES, args.reps, args.reference_reps)
    row = compressed_tensors_row(args.reference_reps)
    if row:
        print(row)
    if torch.cuda.is_available() and getattr(extension, "WITH_CUDA", False):
        print("| shape | dtype | CUDA pack ms | GB/s |\n|---|---|---|---|")
        cuda_rows(SHAPES, DTYPES, 20)
    else:
        print("CUDA packer: not measured (no CUDA device, or tfprune._C built without CUDA)")
    return 0


# ---- pytest-benchmark ----

@pytest.mark.skipif(extension is None, reason="tfprune._C not built")
@pytest.mark.parametrize("impl", ["tfprune", "torch"])
@pytest.mark.parametrize("shape", SHAPES[:2], ids=lambda s: f"{s[0]}x{s[1]}")
def test_pack_cutlass(benchmark, shape, impl):
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    w = random_24(*shape, torch.bfloat16)
    fn = (lambda: sparse.pack(w, "cutlass")) if impl == "tfprune" else (
        lambda: sparse_semi_structured_from_dense_cutlass(w))
    benchmark.group = f"pack cutlass {shape[0]}x{shape[1]} bf16"
    benchmark.pedantic(fn, rounds=10 if impl == "tfprune" else 2, warmup_rounds=1, iterations=1)


if __name__ == "__main__":
    raise SystemExit(main())
