"""What pruning does to a real multilingual model, per language: the quality table of benchmarks/README.md.

    .venv/bin/python benchmarks/bench_quality.py --model ~/.cache/tfprune/gemma3-270m          # the whole table
    .venv/bin/python benchmarks/bench_quality.py --model DIR --patterns 2:4 --variants wanda,sparsegpt

Every variant is calibrated on the same number of real tokens (--budget, per run), cut from prompts built from
the first CALIB_SENTENCES sentences of each language of the built-in corpus; quality is the perplexity per
language on two sets no calibration prompt contains: the rest of the built-in corpus (`corpus`: same domain) and
the shipped held-out set (`heldout`: encyclopedic, news and instruction text, tfprune/evaluation/data). The
summary number is the geometric mean over the non-English languages of pruned / dense perplexity. The variants
are fixed; tfprune's default step count for the reconstruction was chosen from these rows (benchmarks/README.md).
Writes a JSON record (every number) and a PNG; prints a markdown table.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import platform
import random
import time
from pathlib import Path

import torch

from tfprune import PruneConfig, prune
from tfprune.calib import CalibrationSet, ParallelCorpus, builtin_corpus, tokenize_prompts, translation_prompts
from tfprune.calib.corpus import language_name
from tfprune.calib.prompts import MONO_TEMPLATE, monolingual_prompts
from tfprune.evaluation.runner import EvalConfig, evaluate_task, load_task_data
from tfprune.evaluation.scoring import perplexity
from tfprune.evaluation.tasks import TASKS
from tfprune.evaluation.shipped import heldout_corpus, task_data_dir
from tfprune.models import load_model

CALIB_SENTENCES = 56  # of the built-in corpus's 72 per language; the last 16 are held out
SHOTS = 4
PATTERNS = {"2:4": dict(pattern="2:4"), "50%": dict(sparsity=0.5)}
# label -> (PruneConfig options, calibration stream, contrast stream or None); one-shot variants without
# reconstruction or distillation (tfprune's defaults for N:M), which `--options reconstruct=STEPS,distill=STEPS` add
ONE_SHOT = dict(reconstruct=0, distill=0)
VARIANTS = {
    "magnitude": (dict(method="magnitude", **ONE_SHOT), "translation", None),
    "wanda": (dict(method="wanda", **ONE_SHOT), "translation", None),
    "wanda-english": (dict(method="wanda", **ONE_SHOT), "english", None),
    "wanda-monolingual": (dict(method="wanda", **ONE_SHOT), "monolingual", None),
    "contrastive": (dict(method="contrastive", **ONE_SHOT), "translation", "monolingual"),
    "wanda+obs": (dict(method="wanda", update="obs", **ONE_SHOT), "translation", None),
    "sparsegpt": (dict(method="sparsegpt", **ONE_SHOT), "translation", None),
    "ria": (dict(method="ria", **ONE_SHOT), "translation", None),
    "wanda-all-directions": (dict(method="wanda", **ONE_SHOT), "all-directions", None),
    # 64 steps: the record's rows; tfprune's default is 256 (`--options reconstruct=256`)
    "wanda+reconstruct": (dict(method="wanda", reconstruct=64, distill=0), "translation", None),
}


def calibration_corpus() -> ParallelCorpus:
    corpus = builtin_corpus()
    return ParallelCorpus({lang: rows[:CALIB_SENTENCES] for lang, rows in corpus.sentences.items()})


def english_prompts(corpus: ParallelCorpus, shots: int, nsamples: int, eos: str, seed: int) -> list[str]:
    """The usual English-only recipe: `shots` English sentences per prompt."""
    rng = random.Random(f"english:{seed}")
    rows = corpus.sentences["en"]
    return ["".join(MONO_TEMPLATE.format(name=language_name("en"), text=rows[j], eos=eos)
                    for j in rng.sample(range(len(rows)), shots)) for _ in range(nsamples)]


def prompts(kind: str, tokenizer, nsamples: int, seed: int) -> list[str]:
    """Calibration prompts of one stream, from the calibration part of the built-in corpus."""
    corpus = calibration_corpus()
    langs = [lang for lang in corpus.languages if lang != "en"]
    eos = tokenizer.eos_token or ""
    if kind == "translation":
        return translation_prompts(corpus, langs, SHOTS, nsamples, "x2en", eos, seed)
    if kind == "all-directions":
        return translation_prompts(corpus, langs, SHOTS, nsamples, "all", eos, seed)
    if kind == "english":
        return english_prompts(corpus, SHOTS, nsamples, eos, seed)
    if kind == "monolingual":
        return monolingual_prompts(corpus, langs, SHOTS, nsamples, eos, seed)
    raise ValueError(f"unknown calibration stream {kind!r}")


def budgeted(calibration: CalibrationSet, budget: int) -> CalibrationSet:
    """The first rows of `calibration` holding `budget` real tokens (the last row cut to fit)."""
    lengths = calibration.attention_mask.sum(1)
    ends = torch.cumsum(lengths, 0)
    rows = int((ends < budget).sum()) + 1
    if rows > len(lengths) or int(ends[-1]) < budget:
        raise ValueError(f"the calibration prompts hold {int(ends[-1])} tokens, fewer than the budget {budget}")
    mask = calibration.attention_mask[:rows].clone()
    keep = budget - (int(ends[rows - 2]) if rows > 1 else 0)
    mask[rows - 1, keep:] = 0
    width = int(mask.sum(1).max())
    return CalibrationSet(calibration.input_ids[:rows, :width].clone(), mask[:, :width])


def calibration_set(kind: str, tokenizer, budget: int, seqlen: int, seed: int) -> CalibrationSet:
    nsamples = budget // 24 + 8  # prompts hold >= 24 tokens: always enough
    return budgeted(tokenize_prompts(tokenizer, prompts(kind, tokenizer, nsamples, seed), seqlen), budget)


def evaluation_sets(names) -> dict[str, dict[str, list[str]]]:
    """heldout: the shipped held-out set (other domains); corpus: the built-in corpus's held-out sentences."""
    corpus = builtin_corpus()
    sets = {"heldout": heldout_corpus().sentences,
            "corpus": {lang: rows[CALIB_SENTENCES:] for lang, rows in corpus.sentences.items()}}
    return {name: sets[name] for name in names}


@torch.no_grad()
def evaluate(model, tokenizer, sets) -> dict[str, dict[str, float]]:
    return {name: {lang: perplexity(model, tokenizer, texts)[0] for lang, texts in per_lang.items()}
            for name, per_lang in sets.items()}


def task_data(names) -> dict:
    """{task: {lang: examples}} of the shipped zero-shot task sets (tfprune/evaluation/data), all examples."""
    if not names:
        return {}
    config = EvalConfig(tasks=tuple(names), n=None, data=str(task_data_dir()), ppl=None)
    return load_task_data(config)


@torch.no_grad()
def zero_shot(model, tokenizer, data: dict) -> dict[str, dict[str, float]]:
    """Accuracy per task and language (tfprune eval's scoring: the label with the best mean log-probability)."""
    return {name: {lang: evaluate_task(model, tokenizer, TASKS[name], examples)["accuracy"]
                   for lang, examples in per_lang.items()} for name, per_lang in data.items()}


def geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarize(ppl: dict, dense: dict) -> dict:
    """Per set: pruned/dense ratio per language, the non-English geometric mean and English."""
    out = {}
    for name, per_lang in ppl.items():
        ratios = {lang: value / dense[name][lang] for lang, value in per_lang.items()}
        out[name] = {"ratios": ratios, "non_english": geomean(v for k, v in ratios.items() if k != "en"),
                     "english": ratios["en"]}
    return out


def run(model_dir: str, patterns, variants, budget: int, seqlen: int, seed: int, dtype: str | None,
        set_names=("heldout",), overrides: dict | None = None, task_names=()) -> dict:
    dense_model, tokenizer = load_model(model_dir, dtype)
    sets = evaluation_sets(set_names)
    tasks = task_data(task_names)
    started = time.perf_counter()
    dense = evaluate(dense_model, tokenizer, sets)
    record = {"model": model_dir, "budget_tokens": budget, "seqlen": seqlen, "seed": seed, "shots": SHOTS,
              "calib_sentences": CALIB_SENTENCES, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "dense": dense,
              "dense_seconds": time.perf_counter() - started, "runs": []}
    if tasks:
        record["dense_tasks"] = zero_shot(dense_model, tokenizer, tasks)
    print(f"dense: {json.dumps({k: {l: round(v, 2) for l, v in d.items()} for k, d in dense.items()})}", flush=True)
    for pattern in patterns:
        for label in variants:
            options, stream, contrast = VARIANTS[label]
            config = PruneConfig(**{**options, **(overrides or {})}, **PATTERNS[pattern], seqlen=seqlen, seed=seed)
            calib = calibration_set(stream, tokenizer, budget, seqlen, seed)
            contrast_calib = None if contrast is None else calibration_set(contrast, tokenizer, budget, seqlen, seed)
            model = copy.deepcopy(dense_model)
            began = time.perf_counter()
            report = prune(model, tokenizer, config, calib=calib, contrast_calib=contrast_calib, progress=False)
            seconds = time.perf_counter() - began
            ppl = evaluate(model, tokenizer, sets)
            suffix = "".join(f" {key}={value}" for key, value in (overrides or {}).items())
            row = {"pattern": pattern, "variant": label + suffix, "stream": stream, "config": config.to_dict(),
                   "calibration_tokens": report.calibration_tokens, "prune_seconds": seconds, "ppl": ppl,
                   "summary": summarize(ppl, dense)}
            if report.distillation:  # end-to-end distillation: its KL before and after, its seconds
                row["distillation"] = report.distillation
            if report.kept_dense:  # sensitivity-aware allocation: which matrices, and the share of weights
                row["kept_dense"] = report.kept_dense
                row["density"] = 1 - report.sparsity
            if tasks:
                row["tasks"] = zero_shot(model, tokenizer, tasks)
            record["runs"].append(row)
            scores = " | ".join(f"{name} non-en {v['non_english']:7.2f}x en {v['english']:7.2f}x"
                                for name, v in row["summary"].items())
            print(f"{pattern:>4} {label:<18} tokens {report.calibration_tokens:6d} {seconds:7.1f} s | {scores}",
                  flush=True)
            del model
            gc.collect()
    return record


def markdown(record: dict) -> str:
    """The table of benchmarks/README.md: one row per run."""
    sets = list(record["dense"])
    langs = list(record["dense"]["heldout"])
    head = ("| pattern | variant | calib | tokens | recon. steps | distill steps | "
            + " | ".join(f"{name} non-En | {name} En" for name in sets)
            + " | " + " | ".join(langs) + " | prune s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in record["runs"]:
        s, r = row["summary"], row["summary"]["heldout"]["ratios"]
        steps = row["config"].get("reconstruct") or "–"
        distill = row["config"].get("distill") or "–"  # records from before the option: none
        lines.append(f"| {row['pattern']} | {row['variant']} | {row['stream']} | {row['calibration_tokens']} | {steps} "
                     f"| {distill} | "
                     + " | ".join(f"{s[name]['non_english']:.2f}× | {s[name]['english']:.2f}×" for name in sets)
                     + " | " + " | ".join(f"{r[lang]:.2f}" for lang in langs) + f" | {row['prune_seconds']:.0f} |")
    dense = record["dense"]["heldout"]
    lines.append("| – | dense ppl | – | – | – | – | " + " | ".join("– | –" for _ in sets) + " | "
                 + " | ".join(f"{dense[lang]:.1f}" for lang in langs) + " | – |")
    if "dense_tasks" in record:
        lines += ["", task_markdown(record)]
    return "\n".join(lines)


def task_markdown(record: dict) -> str:
    """Zero-shot accuracy (%) per task and language, dense and each run that measured it."""
    rows = [("dense", "–", record["dense_tasks"])] + [(row["variant"], row["pattern"], row["tasks"])
                                                      for row in record["runs"] if "tasks" in row]
    columns = [(task, lang) for task, per_lang in record["dense_tasks"].items() for lang in per_lang]
    head = "| pattern | variant | " + " | ".join(f"{task} {lang}" for task, lang in columns) + " | non-En mean |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for variant, pattern, accuracy in rows:
        values = [accuracy[task][lang] for task, lang in columns]
        non_english = [accuracy[task][lang] for task, lang in columns if lang != "en"]
        lines.append(f"| {pattern} | {variant} | " + " | ".join(f"{100 * v:.1f}" for v in values)
                     + f" | {100 * sum(non_english) / len(non_english):.1f} |")
    return "\n".join(lines)


def plot(record: dict, path: Path) -> Path:
    """Held-out non-English (and English) pruned/dense perplexity per variant and pattern, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patterns = sorted({row["pattern"] for row in record["runs"]})
    fig, axes = plt.subplots(1, len(patterns), figsize=(6 * len(patterns), 4), squeeze=False)
    for ax, pattern in zip(axes[0], patterns):
        rows = [row for row in record["runs"] if row["pattern"] == pattern]
        x = range(len(rows))
        ax.bar([i - 0.2 for i in x], [r["summary"]["heldout"]["non_english"] for r in rows], 0.4, label="non-English")
        ax.bar([i + 0.2 for i in x], [r["summary"]["heldout"]["english"] for r in rows], 0.4, label="English")
        ax.set_xticks(list(x), [f"{r['variant']} ({r['calibration_tokens'] / 1000:.1f}k)" for r in rows],
                      rotation=30, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.axhline(1, color="k", lw=0.5)
        ax.set_ylabel("held-out perplexity, pruned / dense")
        ax.set_title(f"{pattern} (calibration tokens in brackets)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def parse_options(text: str) -> dict:
    """'reconstruct=64,reconstruct_lr=3e-4' -> {'reconstruct': 64, 'reconstruct_lr': 0.0003}."""
    options = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value[:1].isdigit() or value[:1] in "-[{" else value
    return options


def merge(paths: list[str]) -> dict:
    """One record of the runs of several quality.json records (runs made piece by piece, each its own command),
    in the order given; they must share the dense perplexities (to a relative 1e-4: float32 noise, e.g. a model
    rebuilt with another transformers release; the first record's are kept), and the table keeps the sets all of
    them have."""
    records = [json.loads(Path(path).read_text()) for path in paths]
    sets = [name for name in records[0]["dense"] if all(name in record["dense"] for record in records)]
    for path, record in zip(paths, records):
        if any(not math.isclose(ppl, records[0]["dense"][name][language], rel_tol=1e-4)
               for name in sets for language, ppl in record["dense"][name].items()):
            raise SystemExit(f"{path}: other dense perplexities than {paths[0]} (another model or sets)")
    merged = {**records[0], "dense": {name: records[0]["dense"][name] for name in sets},
              "runs": [run for record in records for run in record["runs"]], "merged_from": list(paths)}
    dense_tasks = next((record["dense_tasks"] for record in records if "dense_tasks" in record), None)
    if dense_tasks is not None:
        merged["dense_tasks"] = dense_tasks
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="the model directory (or --merge)")
    parser.add_argument("--merge", nargs="+", metavar="QUALITY_JSON",
                        help="instead of running: one table and figure of these records' runs")
    parser.add_argument("--patterns", default="2:4,50%")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--budget", type=int, default=5120, help="calibration tokens per run")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--sets", default="heldout", help="heldout (other domains), corpus (built-in's held-out part)")
    parser.add_argument("--tasks", default="", help="zero-shot accuracy on the shipped task sets too: xnli,marc2")
    parser.add_argument("--options", default="", help="PruneConfig overrides for every variant: KEY=VALUE,...")
    parser.add_argument("--out", default="bench-out/quality", help="folder for quality.json, quality.png")
    args = parser.parse_args()
    if args.merge:
        record = merge(args.merge)
    elif args.model:
        record = run(args.model, args.patterns.split(","), args.variants.split(","), args.budget, args.seqlen,
                     args.seed, args.dtype, args.sets.split(","), parse_options(args.options),
                     [name for name in args.tasks.split(",") if name])
    else:
        parser.error("give --model DIR, or --merge QUALITY_JSON...")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(record, indent=1))
    plot(record, out / "quality.png")
    print(markdown(record))
    print(f"wrote {out / 'quality.json'}, {out / 'quality.png'}")


if __name__ == "__main__":
    main()
