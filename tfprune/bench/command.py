"""The `tfprune bench` subcommand (and `python benchmarks/bench_inference.py`)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import TfpruneError
from .linear import PRESETS
from .report import format_table, write_outputs
from .runner import BenchConfig, run_bench

__all__ = ["add_parser", "run", "config_from_args"]


def add_parser(sub) -> None:
    b = sub.add_parser("bench", help="dense vs 2:4 linear layers and end-to-end prefill/decode tokens/s")
    b.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:N]")
    b.add_argument("--preset", default=None, help=f"comma-separated shape presets: {', '.join(PRESETS)} "
                                                  "(default: all on CUDA, llama-7b on CPU)")
    b.add_argument("--model", default=None, help="take the linear shapes from this model's config instead")
    b.add_argument("--shapes", default=None, help="custom shapes OUTxIN[,OUTxIN...]")
    b.add_argument("--tokens", default=None, help="token counts, e.g. 1,16,128,1024,8192 "
                                                  "(default: 1..8192 on CUDA, 1,16,128 on CPU)")
    b.add_argument("--dtypes", default=None, help="float16,bfloat16 (CUDA default) | bfloat16 (CPU default) | float32")
    b.add_argument("--reps", type=int, default=None, help="timed runs per case (median reported)")
    b.add_argument("--warmup", type=int, default=None, help="untimed runs before them")
    b.add_argument("--sparse-format", default="cutlass", choices=["cutlass", "bitmask"])
    b.add_argument("--no-linear", action="store_true", help="skip the linear-layer cases")
    b.add_argument("--no-e2e", action="store_true", help="skip the end-to-end case")
    b.add_argument("--no-crossover", action="store_true",
                   help="skip measuring the decode kernel's crossover (largest token count it wins at)")
    b.add_argument("--no-store", action="store_true", help="measure the crossover but do not store it for this "
                                                         "device (default: stored where SparseLinear reads it)")
    b.add_argument("--e2e-model", default="builtin:llama", help="model of the end-to-end case")
    b.add_argument("--e2e-hidden", type=int, default=None, help="builtin model: hidden size (CPU 1024, CUDA 4096)")
    b.add_argument("--e2e-layers", type=int, default=None, help="builtin model: decoder blocks (4)")
    b.add_argument("--prefill-tokens", type=int, default=None, help="prompt length (CPU 128, CUDA 2048)")
    b.add_argument("--decode-tokens", type=int, default=None, help="tokens generated (CPU 32, CUDA 128)")
    b.add_argument("--e2e-reps", type=int, default=None)
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default="bench-out", help="folder for bench.json and bench.png")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder: only an empty one or a previous tfprune output")


def _ints(text: str | None, flag: str):
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise TfpruneError(f"{flag} takes comma-separated integers, got {text!r}") from None


def _names(text: str | None):
    return None if text is None else tuple(v.strip() for v in text.split(",") if v.strip())


def config_from_args(args) -> BenchConfig:
    return BenchConfig(device=args.device, presets=_names(args.preset), model=args.model, shapes=args.shapes,
                       tokens=_ints(args.tokens, "--tokens"), dtypes=_names(args.dtypes), reps=args.reps,
                       warmup=args.warmup, sparse_format=args.sparse_format, linear=not args.no_linear,
                       e2e=not args.no_e2e, crossover=not args.no_crossover, store_crossover=not args.no_store,
                       e2e_model=args.e2e_model, e2e_hidden=args.e2e_hidden,
                       e2e_layers=args.e2e_layers, prefill_tokens=args.prefill_tokens,
                       decode_tokens=args.decode_tokens, e2e_reps=args.e2e_reps, seed=args.seed)


def run(args) -> int:
    from ..outdir import atomic_output_dir, preflight_output, write_marker

    config = config_from_args(args)
    inputs = [Path(spec) for spec in (args.model, args.e2e_model) if spec and Path(spec).exists()]
    preflight_output(args.out, args.overwrite, inputs)
    if args.threads:
        torch.set_num_threads(args.threads)
    record = run_bench(config)
    print(format_table(record))
    with atomic_output_dir(args.out, args.overwrite, inputs) as tmp:
        json_path, png_path = write_outputs(record, tmp)
        write_marker(tmp, "bench", {"settings": record.get("settings")})
    print(f"wrote {Path(args.out) / json_path.name}, {Path(args.out) / png_path.name}")
    return 0
