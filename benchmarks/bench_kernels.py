"""The engine's per-layer kernels (tfprune.kernels) vs the torch-eager reference path, two ways.

    .venv/bin/python benchmarks/bench_kernels.py [--quick]                    # the table of benchmarks/README.md
    .venv/bin/python -m pytest benchmarks/bench_kernels.py --benchmark-only   # pytest-benchmark's tables/JSON

Kernels: channel statistics of one calibration batch X [T, C] (Σx², max|x|, count > τ into running
buffers), the fused wanda score + 2:4 mask + apply on W [out, in], the per-row unstructured select + apply
(50%), and OWL's score statistics (Σ score, count above a threshold). Baseline: the torch path of
tfprune.ops (Σx², amax, count as separate ops; a materialized score tensor and stable `sort` masks).

On CUDA each row reports the median time (triton.testing.do_bench), the bytes a perfect kernel moves
(formulas in `bytes_moved`), the achieved GB/s and its fraction of the device's memory bandwidth (the
nominal figure of known cards, else a measured device-to-device copy), and the speed-up over torch. On a
machine without CUDA only the torch path runs (Triton's interpreter times nothing useful) and the table says
that the GPU rows were not measured.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tfprune import ops
from tfprune.bench.timing import time_fn

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16  # the dtype LLM checkpoints come in
NOMINAL_GBPS = {"H100 SXM": 3350, "H100 80GB HBM3": 3350, "H100 PCIe": 2000, "H200": 4800, "A100-SXM4-80GB": 2039,
                "A100-SXM4-40GB": 1555, "A100-PCIE-40GB": 1555, "A100 80GB PCIe": 1935, "L40S": 864, "A10G": 600,
                "RTX 4090": 1008}
# LLM shapes: hidden 4096 (Llama-3-8B), 8192 (70B), MLP 14336 (8B), 28672 (70B)
STATS_SHAPES = [(2048, 4096), (2048, 8192), (2048, 14336), (2048, 28672)]  # [tokens, channels]
WEIGHT_SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (8192, 8192), (28672, 8192), (8192, 28672)]
CPU_STATS_SHAPES = [(512, 4096), (512, 14336)]
CPU_WEIGHT_SHAPES = [(1024, 4096), (1024, 14336)]
KERNELS = ("channel_stats", "prune_2:4", "prune_row50", "owl_stats")


@dataclass
class Case:
    kernel: str
    shape: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.kernel} {'x'.join(map(str, self.shape))}"


def bytes_moved(case: Case, element: int = 2) -> int:
    """DRAM bytes of an ideal single pass (what the roofline is computed from).

    channel_stats: read X once (+ the 1-byte token mask) + read/write 20 bytes of buffers per channel.
    prune_2:4: read W, write the pruned half as zeros, write a bool mask (1 byte per weight), read factor.
    prune_row50: the same with the selection's repeated passes served from L2 (counted once).
    owl_stats: read W twice (Σ score, then the count above M × mean: the threshold needs the sum).
    """
    rows, cols = case.shape
    if case.kernel == "channel_stats":
        return rows * cols * element + rows + 40 * cols
    if case.kernel in ("prune_2:4", "prune_row50"):
        return rows * cols * element + rows * cols * element // 2 + rows * cols + 4 * cols
    return 2 * (rows * cols * element + 4 * cols)


def make_inputs(case: Case, device: str = DEVICE, dtype: torch.dtype = DTYPE, seed: int = 0):
    generator = torch.Generator(device=device).manual_seed(seed)
    rows, cols = case.shape
    data = torch.randn(rows, cols, device=device, dtype=torch.float32, generator=generator).to(dtype)
    vector = torch.rand(cols, device=device, dtype=torch.float64, generator=generator) + 0.5
    return data, vector


def runner(case: Case, backend: str, device: str = DEVICE):
    """(work, run): fns that run `case` once on `backend` ('torch' | 'triton') through tfprune.ops;
    run also synchronizes the device (for timers that do not)."""
    data, vector = make_inputs(case, device)
    os.environ["TFPRUNE_BACKEND"] = backend
    cuda = device.startswith("cuda")
    if case.kernel == "channel_stats":
        channels = case.shape[1]
        mask = torch.ones(case.shape[0], dtype=torch.bool, device=device)
        buffers = (torch.zeros(channels, dtype=torch.float64, device=device), torch.zeros(channels, device=device),
                   torch.zeros(channels, dtype=torch.int64, device=device),
                   torch.zeros((), dtype=torch.int64, device=device))

        def work():
            ops.accumulate_channel_stats_(data, 6.0, mask, *buffers)
    elif case.kernel == "owl_stats":
        def work():
            ops.outlier_ratio([data], [vector], 5.0)
    else:
        weight = data.clone()
        options = dict(nm=(2, 4)) if case.kernel == "prune_2:4" else dict(sparsity=0.5)

        def work():  # from the 2nd call on W is already pruned: the same passes and bytes
            ops.prune_weight_(weight, "wanda", norm=vector, **options)

    def run():
        work()
        if cuda:
            torch.cuda.synchronize()

    return work, run


def time_ms(fns, reps: int) -> float:
    """Median milliseconds of fns = (work, run): triton.testing.do_bench(work) on CUDA, perf_counter on the CPU."""
    work, fn = fns
    if CUDA:
        from triton.testing import do_bench

        return float(do_bench(work, warmup=25, rep=100, return_mode="median"))
    return statistics.median(time_fn(fn, 1, reps))


def device_bandwidth_gbps() -> tuple[float, str]:
    """(GB/s, source) of the CUDA device: a nominal figure for known cards, else a measured copy."""
    name = torch.cuda.get_device_name()
    for key, value in NOMINAL_GBPS.items():
        if key in name:
            return float(value), f"nominal {name}"
    from triton.testing import do_bench

    src = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() / ms / 1e6, f"measured copy on {name}"


def commit() -> str:
    """The checked-out commit, read from .git (no git process)."""
    git = Path(__file__).resolve().parent.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            head = (git / head[5:]).read_text().strip()
        return head[:10]
    except OSError:
        return "unknown"


def table(quick: bool = False) -> str:
    """The markdown table of benchmarks/README.md."""
    stats_shapes, weight_shapes = (STATS_SHAPES, WEIGHT_SHAPES) if CUDA else (CPU_STATS_SHAPES, CPU_WEIGHT_SHAPES)
    if quick:
        stats_shapes, weight_shapes = stats_shapes[:1], weight_shapes[:1]
    cases = [Case("channel_stats", s) for s in stats_shapes] + [
        Case(kernel, s) for kernel in KERNELS[1:] for s in weight_shapes]
    threads = torch.get_num_threads()
    lines = [f"device: {torch.cuda.get_device_name() if CUDA else platform.processor() or platform.machine()} "
             f"({'CUDA' if CUDA else f'CPU, {threads} threads'}), {str(DTYPE).replace('torch.', '')}, "
             f"torch {torch.__version__}, commit {commit()}"]
    if CUDA:
        peak, source = device_bandwidth_gbps()
        lines.append(f"bandwidth roofline: {peak:.0f} GB/s ({source})")
        lines += ["", "| kernel | shape | MB moved | triton ms | GB/s | % roofline | torch ms | speed-up |",
                  "|---|---|---|---|---|---|---|---|"]
    else:
        lines.append("GPU rows not measured: no CUDA device here (Triton's interpreter is not a timing).")
        lines += ["", "| kernel | shape | MB moved (ideal) | torch ms (CPU) |", "|---|---|---|---|"]
    for case in cases:
        moved = bytes_moved(case)
        torch_ms = time_ms(runner(case, "torch"), reps=3 if not CUDA else 10)
        if CUDA:
            triton_ms = time_ms(runner(case, "triton"), reps=10)
            gbps = moved / triton_ms / 1e6
            lines.append(f"| {case.kernel} | {case.shape} | {moved / 1e6:.1f} | {triton_ms:.3f} | {gbps:.0f} | "
                         f"{100 * gbps / peak:.0f}% | {torch_ms:.3f} | {torch_ms / triton_ms:.1f}x |")
        else:
            lines.append(f"| {case.kernel} | {case.shape} | {moved / 1e6:.1f} | {torch_ms:.1f} |")
    os.environ.pop("TFPRUNE_BACKEND", None)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ pytest-benchmark

BENCH_CASES = ([Case("channel_stats", s) for s in (STATS_SHAPES if CUDA else CPU_STATS_SHAPES[:1])]
               + [Case(k, s) for k in KERNELS[1:] for s in (WEIGHT_SHAPES if CUDA else CPU_WEIGHT_SHAPES[:1])])


@pytest.fixture(autouse=True)
def _restore_backend(monkeypatch):
    monkeypatch.delenv("TFPRUNE_BACKEND", raising=False)
    yield
    os.environ.pop("TFPRUNE_BACKEND", None)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", BENCH_CASES, ids=lambda case: case.label.replace(" ", "-"))
def test_kernel(benchmark, case, backend):
    if backend == "triton" and not CUDA:
        pytest.skip("GPU rows not measured: no CUDA device (the CPU path is the torch reference)")
    _, fn = runner(case, backend)
    benchmark.group = case.label
    benchmark.extra_info.update(backend=backend, bytes=bytes_moved(case), device=DEVICE, commit=commit())
    benchmark.pedantic(fn, rounds=20 if CUDA else 3, warmup_rounds=3 if CUDA else 1, iterations=1)
    if CUDA:
        benchmark.extra_info["GB/s"] = bytes_moved(case) / benchmark.stats.stats.median / 1e9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one shape per kernel")
    args = parser.parse_args(argv)
    print(table(args.quick))


if __name__ == "__main__":
    main()
