"""Timing and the record of the machine: the parts of `tfprune bench` shared with the pytest-benchmark suites."""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from importlib import metadata

import torch

__all__ = ["time_fn", "summarize", "machine_info", "versions", "synchronize"]


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def time_fn(fn, warmup: int, reps: int, device: str | torch.device = "cpu", flush_l2: bool = False) -> list[float]:
    """Milliseconds of each of `reps` calls of fn() after `warmup` untimed calls. CUDA: one pair of CUDA
    events per call on the current stream (flush_l2: a 256 MiB buffer is zeroed before each call, outside the
    events, so a weight smaller than the L2 is read from memory every time); CPU: time.perf_counter."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"time_fn: reps must be >= 1 and warmup >= 0, got {reps}, {warmup}")
    for _ in range(warmup):
        fn()
    if torch.device(device).type == "cuda":
        flush = torch.empty(64 << 20, dtype=torch.int32, device=device) if flush_l2 else None
        synchronize(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for start, end in events:
            if flush is not None:
                flush.zero_()
            start.record()
            fn()
            end.record()
        synchronize(device)
        return [start.elapsed_time(end) for start, end in events]
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return samples


def summarize(samples_ms: list[float]) -> dict:
    """median, mean, min, max, stddev, q1, q3, iqr, rounds of the samples (pytest-benchmark's Stats when it
    is installed, so the CLI and the benchmark suites compute them the same way)."""
    try:
        from pytest_benchmark.stats import Stats
    except ImportError:
        Stats = None
    if Stats is not None:
        stats = Stats()
        for value in samples_ms:
            stats.update(value)
        fields = ("median", "mean", "min", "max", "stddev", "q1", "q3", "iqr", "rounds")
        return {field: float(getattr(stats, field)) if field != "rounds" else stats.rounds for field in fields}
    q = statistics.quantiles(samples_ms, n=4) if len(samples_ms) > 1 else [samples_ms[0]] * 3
    return {"median": statistics.median(samples_ms), "mean": statistics.fmean(samples_ms),
            "min": min(samples_ms), "max": max(samples_ms),
            "stddev": statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0,
            "q1": q[0], "q3": q[2], "iqr": q[2] - q[0], "rounds": len(samples_ms)}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    """Versions of what the numbers depend on (triton is read from its metadata, never imported)."""
    from .. import __version__

    return {"tfprune": __version__, "torch": torch.__version__, "triton": _version("triton"),
            "transformers": _version("transformers"), "python": platform.python_version(),
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None}


def machine_info() -> dict:
    """pytest-benchmark's machine record (node, processor, cpu...) when available, plus the torch threads,
    the CPU count, the load average and the GPU."""
    try:
        from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info

        info = pytest_benchmark_generate_machine_info()
        cpu = info.get("cpu", {})
        info["cpu"] = {key: cpu[key] for key in ("brand_raw", "arch", "count", "hz_advertised_friendly", "l3_cache_size")
                       if key in cpu}
        info["cpu"]["avx512_bf16"] = "avx512_bf16" in cpu.get("flags", [])
    except Exception:  # pytest-benchmark or py-cpuinfo missing or failing: fall back to platform
        info = {"node": platform.node(), "machine": platform.machine(), "processor": platform.processor(),
                "system": platform.system(), "release": platform.release(), "cpu": {}}
    info["cpu_count"] = os.cpu_count()
    info["torch_threads"] = torch.get_num_threads()
    info["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gib": round(props.total_memory / 2**30, 1)}
    else:
        info["gpu"] = None
    info["datetime"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return info
