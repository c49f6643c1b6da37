"""Benchmarks: dense vs 2:4 (SparseLinear) linear layers and end-to-end prefill/decode tokens/s.

One implementation for `tfprune bench` and the pytest-benchmark suites in benchmarks/.
"""
from .crossover import TOKENS as CROSSOVER_TOKENS, crossover_from_ratios, measure_crossover
from .e2e import bench_e2e, load_e2e_model, prune_model_24_, sparsify_copy
from .linear import (PRESETS, LinearShape, bench_linear_case, linear_input, make_linear_pair, model_shapes,
                     parse_shapes, path_taken, preset_shapes, prune_24_, sparse_support)
from .report import format_table, plot, write_json, write_outputs
from .runner import DEFAULTS, BenchConfig, bench_shapes, resolve_device, run_bench
from .timing import machine_info, summarize, time_fn, versions

__all__ = [
    "BenchConfig",
    "CROSSOVER_TOKENS",
    "crossover_from_ratios",
    "measure_crossover",
    "DEFAULTS",
    "PRESETS",
    "LinearShape",
    "bench_e2e",
    "bench_linear_case",
    "bench_shapes",
    "format_table",
    "linear_input",
    "load_e2e_model",
    "machine_info",
    "make_linear_pair",
    "model_shapes",
    "parse_shapes",
    "path_taken",
    "plot",
    "preset_shapes",
    "prune_24_",
    "prune_model_24_",
    "resolve_device",
    "run_bench",
    "sparse_support",
    "sparsify_copy",
    "summarize",
    "time_fn",
    "versions",
    "write_json",
    "write_outputs",
]
