"""The `tfprune eval` subcommand: argument parsing and the run (the library functions do the work)."""
from __future__ import annotations

import gc
import json
import os
from pathlib import Path

from ..errors import TfpruneError
from .runner import EvalConfig, build_report, evaluate_model, format_report, load_task_data
from .shipped import HELDOUT, SHIPPED_TASKS, task_data_dir

__all__ = ["add_parser", "run", "format_harness", "load_for_inference", "check_report_path", "write_report"]


def add_parser(sub) -> None:
    e = sub.add_parser("eval", help="zero-shot multilingual accuracy (XNLI, MARC-2) and perplexity, "
                                    "optionally against the dense baseline")
    e.add_argument("model", help="local HF directory (e.g. written by `tfprune prune`), hub id, or builtin:FAMILY")
    e.add_argument("--baseline", default=None,
                   help="the dense model to compare with: paired bootstrap p-values per language and on average")
    e.add_argument("--tasks", default="xnli,marc2", help="comma-separated: xnli, marc2")
    e.add_argument("--langs", default=None, help="comma-separated languages (default: all of each task)")
    e.add_argument("--n", type=int, default=1000, help="examples per language, drawn with --seed (0 = all)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--data", default=None,
                   help="folder with {task}/{lang}.jsonl files, or 'builtin' for the small task sets shipped with "
                        "tfprune (default: the hub through `datasets`)")
    e.add_argument("--split", default="test", help="hub split (default test)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    e.add_argument("--ppl", default=None,
                   help="perplexity corpus: heldout (shipped, in no calibration set) | builtin (the calibration "
                        "corpus) | PATH (parallel corpus) | none (default heldout; none with --harness)")
    e.add_argument("--ppl-n", type=int, default=None, help="sentences per language for perplexity (default all)")
    e.add_argument("--harness", default=None,
                   help="comma-separated lm-eval tasks (xnli,xcopa,xstorycloze,pawsx,xwinograd) run through "
                        "lm-evaluation-harness instead of the built-in tasks")
    e.add_argument("--limit", type=int, default=None, help="--harness: at most this many examples per task")
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    e.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: the checkpoint's)")
    e.add_argument("--out", default=None, help="write the JSON report (every prediction included) here")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --out report written by tfprune eval")


def load_for_inference(spec: str, dtype: str | None = None, device: str = "cpu"):
    """(model, tokenizer) like `tfprune prune` loads them; a directory holding a compressed-tensors 2:4
    checkpoint (tfprune.sparse.save_compressed_tensors) loads through tfprune.from_pretrained, packed."""
    from ..models import load_model, parse_device
    from ..source import compressed_tensors_format, load_config, load_tokenizer

    device = str(parse_device(device))
    folder = Path(spec)
    if (folder / "config.json").is_file():
        load_config(folder)
        if compressed_tensors_format(folder) is not None:
            from ..sparse import from_pretrained

            tokenizer = load_tokenizer(folder)
            return from_pretrained(spec, device=device, dtype=dtype), tokenizer
    return load_model(spec, dtype, device)


def check_report_path(path: Path, overwrite: bool, inputs) -> None:
    """The eval report may not replace a file tfprune did not write (only, with overwrite, an earlier eval
    report: a JSON object with "kind": "eval"), nor lie inside an input."""
    resolved = path.parent.resolve() / path.name
    for source in inputs:
        source = source.resolve()
        if resolved == source or source in resolved.parents:
            raise TfpruneError(f"--out {path} lies inside the input {source}: write the report elsewhere")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise TfpruneError(f"--out {path} exists and is not a regular file")
    if path.exists():
        if not overwrite:
            raise TfpruneError(f"--out {path} exists (--overwrite replaces an earlier tfprune eval report)")
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            previous = None
        if not (isinstance(previous, dict) and previous.get("kind") == "eval"):
            raise TfpruneError(f"--out {path} is not a tfprune eval report: not replaced; choose another path")


def write_report(path: Path, report: dict, overwrite: bool) -> None:
    """Write the JSON report atomically (a temporary sibling renamed over `path`), checked again first."""
    check_report_path(path, overwrite, [])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"kind": "eval", **report}, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def format_harness(harness: dict) -> str:
    model, base = harness["model"]["results"], (harness.get("baseline") or {}).get("results")
    header = f"{'task':<24} {'metric':<14} {'model':>9}" + (f" {'dense':>9}" if base else "")
    lines = [header, "-" * len(header)]
    for task, metrics in model.items():
        for metric, value in metrics.items():
            line = f"{task:<24} {metric:<14} {value:>9.4f}"
            if base is not None and metric in base.get(task, {}):
                line += f" {base[task][metric]:>9.4f}"
            lines.append(line)
    return "\n".join(lines)


def run(args) -> int:
    from .harness import require_lm_eval, run_harness

    ppl = args.ppl if args.ppl is not None else (None if args.harness else HELDOUT)
    ppl = None if ppl in (None, "none") else ppl
    tasks = () if args.harness else tuple(task for task in args.tasks.split(",") if task)
    data_dir = str(task_data_dir()) if args.data == SHIPPED_TASKS else args.data
    config = EvalConfig(tasks=tasks, langs=tuple(args.langs.split(",")) if args.langs else None,
                        n=args.n or None, seed=args.seed, data=data_dir, split=args.split,
                        batch_size=args.batch_size, resamples=args.bootstrap, ppl=ppl, ppl_n=args.ppl_n)
    harness_tasks = [task for task in (args.harness or "").split(",") if task]
    if args.out:
        check_report_path(Path(args.out), args.overwrite, [Path(p) for p in (args.model, args.baseline, args.data)
                                                             if p and Path(p).exists()])
    if harness_tasks:
        require_lm_eval()  # before any model is loaded
    data = load_task_data(config)  # fail on missing data before any model is loaded
    raw, harness = {}, {}
    for role, spec in (("model", args.model), ("baseline", args.baseline)):
        if spec is None:
            continue
        model, tokenizer = load_for_inference(spec, args.dtype, args.device)  # one model in memory at a time
        if harness_tasks:
            harness[role] = run_harness(model, tokenizer, harness_tasks, args.batch_size, args.limit, 0, args.seed)
        raw[role] = evaluate_model(model, tokenizer, config, data)
        del model, tokenizer
        gc.collect()
    report = build_report(raw["model"], raw.get("baseline"), config, (args.model, args.baseline))
    if harness:
        report["harness"] = harness
        print(format_harness(harness))
    text = format_report(report)
    if text:
        print(text)
    if args.out:
        write_report(Path(args.out), report, args.overwrite)
        print(f"wrote {args.out}")
    return 0
