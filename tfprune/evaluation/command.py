"""The `tfprune eval` subcommand: argument parsing and the run (the library functions do the work)."""
from __future__ import annotations

import gc
import json
from pathlib import Path

from ..errors import TfpruneError
from .runner import EvalConfig, build_report, evaluate_model, format_report, load_task_data

__all__ = ["add_parser", "run", "format_harness", "load_for_inference"]


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
                   help="folder with {task}/{lang}.jsonl files (default: the hub through `datasets`)")
    e.add_argument("--split", default="test", help="hub split (default test)")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples")
    e.add_argument("--ppl", default=None,
                   help="perplexity corpus: builtin | PATH (parallel corpus) | none "
                        "(default builtin; none with --harness)")
    e.add_argument("--ppl-n", type=int, default=None, help="sentences per language for perplexity (default all)")
    e.add_argument("--harness", default=None,
                   help="comma-separated lm-eval tasks (xnli,xcopa,xstorycloze,pawsx,xwinograd) run through "
                        "lm-evaluation-harness instead of the built-in tasks")
    e.add_argument("--limit", type=int, default=None, help="--harness: at most this many examples per task")
    e.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    e.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: the checkpoint's)")
    e.add_argument("--out", default=None, help="write the JSON report (every prediction included) here")


def load_for_inference(spec: str, dtype: str | None = None, device: str = "cpu"):
    """(model, tokenizer) like `tfprune prune` loads them; a directory holding a compressed-tensors 2:4
    checkpoint (tfprune.sparse.save_compressed_tensors) loads through tfprune.from_pretrained, packed."""
    import torch

    from ..models import load_model

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TfpruneError("--device cuda was asked for, but torch sees no CUDA device")
    config = Path(spec) / "config.json"
    if config.is_file() and "quantization_config" in json.loads(config.read_text(encoding="utf-8")):
        from transformers import AutoTokenizer

        from ..sparse import from_pretrained

        return from_pretrained(spec, device=device, dtype=dtype), AutoTokenizer.from_pretrained(spec)
    return load_model(spec, dtype, device)


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

    ppl = args.ppl if args.ppl is not None else (None if args.harness else "builtin")
    ppl = None if ppl in (None, "none") else ppl
    tasks = () if args.harness else tuple(task for task in args.tasks.split(",") if task)
    config = EvalConfig(tasks=tasks, langs=tuple(args.langs.split(",")) if args.langs else None,
                        n=args.n or None, seed=args.seed, data=args.data, split=args.split,
                        batch_size=args.batch_size, resamples=args.bootstrap, ppl=ppl, ppl_n=args.ppl_n)
    harness_tasks = [task for task in (args.harness or "").split(",") if task]
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
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0
