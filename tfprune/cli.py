"""The `tfprune` command line: prune | inspect | bench | eval | analyze | trim-vocab."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from .config import DIRECTIONS, METHODS, RECONSTRUCT_MASKS
from .errors import TfpruneError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfprune", description="Prune multilingual LLMs, keeping translation features.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="prune a model and write a Hugging Face directory")
    p.add_argument("model", help="local HF directory, hub id, or builtin:llama|bloom|xglm|gpt2|opt|mistral|qwen2")
    p.add_argument("--out", required=True, help="output directory (written atomically; never inside the inputs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output directory: only an empty one or a previous tfprune output")
    p.add_argument("--tokenizer", default=None, help="the tokenizer's directory or hub id (default: the model's)")
    p.add_argument("--method", default="wanda", choices=list(METHODS))
    p.add_argument("--update", default=None, choices=["obs", "none"],
                   help="obs: SparseGPT's OBS weight update after masking (default: obs for sparsegpt, else none)")
    p.add_argument("--dampening", type=float, default=0.01, help="OBS: fraction of mean(diag H) added to diag H")
    p.add_argument("--blocksize", type=int, default=128, help="OBS: columns per block (N:M: rounded down to a multiple of M)")
    p.add_argument("--reconstruct", type=int, default=None, metavar="STEPS",
                   help="block-wise reconstruction: Adam steps per decoder block fitting the kept weights (masks "
                        "fixed, or --reconstruct-mask learned) to the dense block's outputs; 0: off (default: 256 for N:M patterns except "
                        "magnitude/random, else 0)")
    p.add_argument("--reconstruct-lr", type=float, default=1e-4, help="its learning rate")
    p.add_argument("--reconstruct-mask", default="fixed", choices=list(RECONSTRUCT_MASKS),
                   help="learned: the reconstruction re-selects each pruned matrix's mask from its current weights "
                        "at every step (same score, pattern and protected channels; straight-through gradients)")
    p.add_argument("--distill", type=int, default=None, metavar="STEPS",
                   help="end-to-end distillation after pruning: Adam steps fitting every decoder block's kept weights "
                        "and norms to the dense model's next-token distributions (KL) on the calibration prompts; "
                        "in memory only; 0: off (default: 30 for N:M patterns except magnitude/random, skipped with "
                        "a warning where it does not fit the free memory; 0 otherwise and in the streaming engine)")
    p.add_argument("--distill-lr", type=float, default=5e-5, help="its peak learning rate (cosine decay)")
    p.add_argument("--sparsity", type=float, default=None, help="fraction pruned per row (default 0.5; N:M fixes it)")
    p.add_argument("--pattern", default="unstructured", help="'unstructured' or N:M, e.g. 2:4")
    p.add_argument("--protect", default=None, help="retain channels: 'topk:0.5%%' or 'int8:6.0[:0.06]'")
    p.add_argument("--owl", default=None, help="OWL layerwise sparsity 'M,lambda', e.g. 5,0.08 (unstructured)")
    p.add_argument("--keep-dense", default=None, metavar="SHARE",
                   help="sensitivity-aware allocation: leave dense the matrices whose pruning costs most per weight, "
                        "up to this share of the prunable weights, e.g. 10%% or 0.1 (a dense pass first)")
    p.add_argument("--calib", default="builtin",
                   help="builtin | flores | PATH (.tsv/.jsonl/folder of {lang}.txt parallel corpus, or .txt of texts)")
    p.add_argument("--contrast", default=None, help="contrast stream for --method contrastive (same formats as --calib)")
    p.add_argument("--langs", default=None, help="comma-separated languages paired with English (default: all)")
    p.add_argument("--direction", default="x2en", choices=list(DIRECTIONS),
                   help="x2en (the paper's), en2x, all (every ordered pair of languages), mono")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--nsamples", type=int, default=128)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", choices=["paper"], default=None,
                   help="paper: 4-shot X->English, 100 samples, 512 tokens, the paper's 14 languages")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: the checkpoint's)")
    p.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=None,
                   help="prune layer by layer from the safetensors, resumably (default: when the model would not "
                        "fit the device's free memory)")
    p.add_argument("--max-memory", default=None,
                   help="streaming: activation budget, SIZE for the device or device=SIZE,host=SIZE (default: free)")
    p.add_argument("--shard-size", default="5GB", help="streaming: most tensor bytes per output shard")
    p.add_argument("--format", default="dense", choices=["dense", "compressed-tensors"],
                   help="dense: masked dense weights; compressed-tensors: 2:4 linears packed as sparse-24-bitmask "
                        "(needs --pattern 2:4; load with tfprune.from_pretrained)")
    p.add_argument("--trim-vocab", default=None, metavar="LANGS",
                   help="after pruning, keep only the tokens of these languages' scripts (e.g. de,fr,ru): "
                        "see `tfprune trim-vocab`")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")

    i = sub.add_parser("inspect", help="summarize a directory written by `tfprune prune`")
    i.add_argument("path")

    from . import analysis
    from .bench import command as bench_command
    from .evaluation import command as eval_command
    from .vocab import command as vocab_command

    bench_command.add_parser(sub)
    eval_command.add_parser(sub)
    analysis.add_parser(sub)
    vocab_command.add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    return parser


def _config_from_args(args):
    from .config import PruneConfig

    options = dict(method=args.method, sparsity=args.sparsity, pattern=args.pattern, protect=args.protect,
                   nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, shots=args.shots,
                   direction=args.direction, batch_size=args.batch_size, update=args.update,
                   dampening=args.dampening, blocksize=args.blocksize, reconstruct=args.reconstruct,
                   reconstruct_lr=args.reconstruct_lr, reconstruct_mask=args.reconstruct_mask,
                   distill=args.distill, distill_lr=args.distill_lr,
                   langs=tuple(args.langs.split(",")) if args.langs else None)
    if args.owl:
        try:
            options["owl"] = tuple(float(v) for v in args.owl.split(","))
        except ValueError:
            raise TfpruneError(f"--owl takes 'M,lambda' (two numbers, e.g. 5,0.08), got {args.owl!r}") from None
    if args.keep_dense:
        options["keep_dense"] = _share(args.keep_dense, "--keep-dense")
    if args.recipe == "paper":
        for key in ("nsamples", "seqlen", "shots", "direction", "langs"):
            options.pop(key)
        return PruneConfig.paper_recipe(**options)
    return PruneConfig(**options)


def _share(text: str, option: str) -> float:
    """'10%' or '0.1' -> 0.1."""
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise TfpruneError(f"{option} takes a share of the weights such as 10% or 0.1, got {text!r}") from None


def _calibration_source(spec: str | None, langs):
    from .calib import load_corpus, load_flores, load_texts
    from .config import PAPER_LANGS

    if spec is None or spec == "builtin":
        return None
    if spec == "flores":
        return load_flores(langs or PAPER_LANGS)
    path = Path(spec)
    if path.suffix == ".txt" and path.is_file():
        return load_texts(path)
    return load_corpus(path)


def _local_paths(*specs) -> list[Path]:
    """The specs that name local files or directories (the inputs an output may not touch)."""
    return [Path(spec) for spec in specs if spec and not str(spec).startswith("builtin:") and Path(spec).exists()]


def _checkpoint_bytes(spec: str, dtype) -> int:
    """The size of a local safetensors checkpoint at the requested dtype (0 when it cannot be known cheaply)."""
    from .engine.checkpoint import Checkpoint

    if not Path(spec).is_dir() or not any(Path(spec).glob("*.safetensors")):
        return 0
    checkpoint = Checkpoint(spec)
    return checkpoint.nbytes * (dtype.itemsize if dtype else 1) // (checkpoint.floating_dtype().itemsize
                                                                      if dtype else 1)


def cmd_prune(args) -> int:
    from . import vocab
    from .engine import prune
    from .io import save_pruned
    from .models import load_model, parse_device, parse_dtype
    from .outdir import check_free_space, preflight_output

    config = _config_from_args(args)
    device = parse_device(args.device)
    dtype = parse_dtype(args.dtype)
    if args.format == "compressed-tensors" and config.nm != (2, 4):
        raise TfpruneError(f"--format compressed-tensors writes 2:4 weights: it needs --pattern 2:4, got {args.pattern}")
    inputs = _local_paths(args.model, args.calib, args.contrast, args.tokenizer)
    out = preflight_output(args.out, args.overwrite, inputs)
    trim = _trim_options(args)
    calib = _calibration_source(args.calib, config.langs)
    contrast = _calibration_source(args.contrast, config.langs) if args.contrast else None
    extra = {"model": args.model, "calib": args.calib}
    if args.streaming or (args.streaming is None and _should_stream(args)):
        return _cmd_prune_streaming(args, config, calib, contrast, inputs, extra, trim)
    check_free_space(out.parent, _checkpoint_bytes(args.model, dtype), f"the output {out.name}")
    model, tokenizer = load_model(args.model, dtype, str(device), tokenizer=args.tokenizer)
    vocab_plan = trim and vocab.plan_for_model(model, tokenizer, trim)  # checked before pruning
    report = prune(model, tokenizer, config, calib=calib, contrast_calib=contrast, progress=not args.quiet)
    if vocab_plan:
        tokenizer, _ = vocab.trim_vocab(model, tokenizer, trim, vocab_plan)
    save_pruned(model, tokenizer, args.out, config, report, overwrite=args.overwrite, extra=extra,
                format=args.format, inputs=inputs, files=vocab_plan and vocab_plan.files())
    if not args.quiet:
        print(report.table())
    print(f"wrote {args.out}")
    return 0


def _trim_options(args):
    from .vocab import TrimOptions

    return TrimOptions(args.trim_vocab) if args.trim_vocab else None


def _should_stream(args) -> bool:
    from .engine.streaming import should_stream

    return should_stream(args.model, args.device, args.dtype)


def _cmd_prune_streaming(args, config, calib, contrast, inputs, extra, trim) -> int:
    from .engine.streaming import prune_streaming

    report, summary = prune_streaming(args.model, args.out, config, tokenizer=args.tokenizer, calib=calib,
                                      contrast_calib=contrast, device=args.device, dtype=args.dtype,
                                      max_memory=args.max_memory, shard_size=args.shard_size,
                                      output_format=args.format, overwrite=args.overwrite,
                                      progress=not args.quiet, extra=extra, inputs=inputs, trim_vocab=trim)
    if not args.quiet:
        print(report.table())
    print(summary.line())
    print(f"wrote {args.out}")
    return 0


def cmd_inspect(args) -> int:
    from .inspect import inspect_dir

    print(inspect_dir(args.path))
    return 0


def cmd_bench(args) -> int:
    from .bench.command import run

    return run(args)


def cmd_eval(args) -> int:
    from .evaluation.command import run

    return run(args)


def cmd_analyze(args) -> int:
    from .analysis import run

    return run(args)


def cmd_trim_vocab(args) -> int:
    from .vocab.command import run

    return run(args)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    handler = {"prune": cmd_prune, "inspect": cmd_inspect, "bench": cmd_bench, "eval": cmd_eval,
               "analyze": cmd_analyze, "trim-vocab": cmd_trim_vocab}[args.command]
    try:
        return handler(args)
    except TfpruneError as error:  # bad input: one line, before anything was written
        _fail(args, f"{error}")
        return 2
    except OSError as error:  # a file that cannot be read or written
        where = f": {error.filename}" if error.filename else ""
        _fail(args, f"{error.strerror or error}{where}")
        return 2
    except KeyboardInterrupt:
        print("tfprune: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug or an environment problem: say so in one line
        _fail(args, f"unexpected {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''} "
                    "(rerun with --debug for the traceback)")
        return 1


def _fail(args, message: str) -> None:
    if getattr(args, "debug", False):
        traceback.print_exc()
    print(f"tfprune: error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
