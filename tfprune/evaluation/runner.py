"""`tfprune eval`: zero-shot accuracy per language, the non-English average, a paired bootstrap of the
pruned model against its dense baseline, and perplexity per language on a parallel corpus."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import TfpruneError
from .bootstrap import paired_bootstrap
from .scoring import choose, mean_logprobs, perplexity
from .tasks import TASKS, Task, load_examples, local_languages, sample_examples

__all__ = ["EvalConfig", "load_task_data", "evaluate_task", "evaluate_model", "build_report", "format_report"]

log = logging.getLogger("tfprune")


@dataclass(frozen=True)
class EvalConfig:
    """tasks: names in TASKS; langs: None = every language of the task (or every local file);
    n: examples per language (None = all), drawn with `seed`; data: a folder DIR/{task}/{lang}.jsonl or None
    (hub); resamples: paired bootstrap resamples; ppl: 'heldout' (the shipped held-out set) | 'builtin' (the
    calibration corpus) | a parallel-corpus path | None;
    ppl_n: sentences per language for perplexity (None = all)."""

    tasks: tuple[str, ...] = ("xnli", "marc2")
    langs: tuple[str, ...] | None = None
    n: int | None = 1000
    seed: int = 0
    data: str | None = None
    split: str = "test"
    batch_size: int = 8
    resamples: int = 1000
    ppl: str | None = "heldout"
    ppl_n: int | None = None

    def __post_init__(self):
        unknown = [task for task in self.tasks if task not in TASKS]
        if unknown:
            raise TfpruneError(f"unknown task(s) {unknown}: choose from {', '.join(TASKS)}")
        if self.n is not None and self.n < 1:
            raise TfpruneError(f"--n must be a positive number of examples per language, got {self.n}")
        if self.batch_size < 1 or self.resamples < 1:
            raise TfpruneError("--batch-size and --bootstrap must be positive integers")


def _languages(task: Task, config: EvalConfig) -> list[str]:
    available = local_languages(task, config.data) if config.data is not None else list(task.languages)
    if config.langs is None:
        if not available:
            raise TfpruneError(f"no {task.name} data in {config.data}/{task.name}/ (expected {{lang}}.jsonl files)")
        return available
    return list(config.langs)


def load_task_data(config: EvalConfig) -> dict[str, dict[str, list[dict]]]:
    """{task: {lang: sampled examples}}, loaded once and shared by the model and its baseline."""
    data = {}
    for name in config.tasks:
        task = TASKS[name]
        data[name] = {lang: sample_examples(load_examples(task, lang, config.data, config.split), config.n,
                                            config.seed, key=f"{name}:{lang}")
                      for lang in _languages(task, config)}
    return data


def evaluate_task(model: nn.Module, tokenizer, task: Task, examples: list[dict], batch_size: int = 8) -> dict:
    """Score every candidate prompt of every example; predict the label with the highest mean per-token
    log-probability. Returns {"n", "accuracy", "predictions", "labels", "scores"} (scores [N][L])."""
    prompts = [prompt for example in examples for prompt in task.prompts(example)]
    labels = len(task.label_words)
    scores = mean_logprobs(model, tokenizer, prompts, batch_size).view(len(examples), labels)
    predictions = choose(scores)
    gold = torch.tensor([example["label"] for example in examples], dtype=torch.int64)
    return {
        "n": len(examples),
        "accuracy": float((predictions == gold).double().mean()),
        "predictions": predictions.tolist(),
        "labels": gold.tolist(),
        "scores": scores.tolist(),
    }


def _ppl_texts(config: EvalConfig) -> dict[str, list[str]]:
    from ..calib import builtin_corpus, load_corpus
    from .shipped import HELDOUT, heldout_corpus

    corpus = {"builtin": builtin_corpus, HELDOUT: heldout_corpus}.get(config.ppl, lambda: load_corpus(config.ppl))()
    langs = [lang for lang in corpus.languages if config.langs is None or lang in config.langs]
    if not langs:
        raise TfpruneError(f"the perplexity corpus has none of the languages {list(config.langs)}")
    return {lang: corpus.sentences[lang][: config.ppl_n] for lang in langs}


@torch.no_grad()
def evaluate_model(model: nn.Module, tokenizer, config: EvalConfig, data: dict | None = None) -> dict:
    """Raw results of one model: {"tasks": {task: {lang: evaluate_task(...)}}, "perplexity": {lang: {...}}}."""
    model.eval()
    data = load_task_data(config) if data is None else data
    out = {"tasks": {}, "perplexity": {}}
    for name, per_lang in data.items():
        out["tasks"][name] = {}
        for lang, examples in per_lang.items():
            result = evaluate_task(model, tokenizer, TASKS[name], examples, config.batch_size)
            log.info("%s %s: accuracy %.4f on %d examples", name, lang, result["accuracy"], result["n"])
            out["tasks"][name][lang] = result
    if config.ppl:
        for lang, texts in _ppl_texts(config).items():
            value, tokens = perplexity(model, tokenizer, texts, config.batch_size)
            out["perplexity"][lang] = {"ppl": value, "tokens": tokens, "sentences": len(texts)}
    return out


def _correct(result: dict) -> list[int]:
    return [int(p == g) for p, g in zip(result["predictions"], result["labels"])]


def build_report(raw: dict, baseline: dict | None = None, config: EvalConfig = EvalConfig(),
                 names: tuple[str, str | None] = ("model", None)) -> dict:
    """The summary: per task, per language accuracy (and the baseline's, the paired bootstrap of
    model - baseline), the non-English average (bootstrap stratified by language), perplexity per language,
    and every prediction (so a later test can be re-run)."""
    report = {"model": names[0], "baseline": names[1], "config": asdict(config), "tasks": {}, "perplexity": {},
              "predictions": {"model": {}, "baseline": {} if baseline else None}, "labels": {}}
    for name, per_lang in raw["tasks"].items():
        rows, strata_a, strata_b = {}, [], []
        for lang, result in per_lang.items():
            row = {"n": result["n"], "accuracy": result["accuracy"]}
            if baseline is not None:
                other = baseline["tasks"][name][lang]
                if other["labels"] != result["labels"]:
                    raise TfpruneError(f"{name} {lang}: the baseline was scored on other examples")
                row["baseline_accuracy"] = other["accuracy"]
                row["bootstrap"] = paired_bootstrap(_correct(result), _correct(other), config.resamples,
                                                    config.seed).to_dict()
                if lang != "en":
                    strata_a.append(_correct(result))
                    strata_b.append(_correct(other))
            rows[lang] = row
        non_en = [row["accuracy"] for lang, row in rows.items() if lang != "en"]
        average = {"languages": len(non_en), "accuracy": sum(non_en) / len(non_en) if non_en else None}
        if baseline is not None and non_en:
            base = [row["baseline_accuracy"] for lang, row in rows.items() if lang != "en"]
            average["baseline_accuracy"] = sum(base) / len(base)
            average["bootstrap"] = paired_bootstrap(strata_a, strata_b, config.resamples, config.seed).to_dict()
        report["tasks"][name] = {"languages": rows, "average_non_en": average}
        report["predictions"]["model"][name] = {lang: r["predictions"] for lang, r in per_lang.items()}
        if baseline is not None:
            report["predictions"]["baseline"][name] = {lang: baseline["tasks"][name][lang]["predictions"]
                                                       for lang in per_lang}
        report["labels"][name] = {lang: r["labels"] for lang, r in per_lang.items()}
    for lang, row in raw.get("perplexity", {}).items():
        entry = dict(row)
        if baseline is not None and lang in baseline.get("perplexity", {}):
            entry["baseline_ppl"] = baseline["perplexity"][lang]["ppl"]
        report["perplexity"][lang] = entry
    return report


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:6.2f}"


def format_report(report: dict) -> str:
    """Terminal tables: accuracy per task and language (with the baseline, Δ and p when compared), then
    perplexity per language."""
    has_base = report.get("baseline") is not None
    lines = []
    for name, task in report["tasks"].items():
        header = f"{name:<8} {'lang':<6} {'n':>5} {'acc %':>7}"
        if has_base:
            header += f" {'dense %':>8} {'delta':>7} {'p':>6}"
        lines += [header, "-" * len(header)]
        rows = list(task["languages"].items()) + [("avg-xx", task["average_non_en"])]
        for lang, row in rows:
            line = f"{'':<8} {lang:<6} {row.get('n', row.get('languages', '')):>5} {_pct(row['accuracy']):>7}"
            if has_base and "bootstrap" in row:
                boot = row["bootstrap"]
                line += f" {_pct(row['baseline_accuracy']):>8} {100 * boot['delta']:>+7.2f} {boot['p_value']:>6.3f}"
            lines.append(line)
        lines.append("")
    if report["perplexity"]:
        header = f"{'perplexity':<10} {'lang':<6} {'tokens':>7} {'ppl':>10}" + (f" {'dense':>10}" if has_base else "")
        lines += [header, "-" * len(header)]
        for lang, row in report["perplexity"].items():
            line = f"{'':<10} {lang:<6} {row['tokens']:>7} {row['ppl']:>10.3f}"
            if "baseline_ppl" in row:
                line += f" {row['baseline_ppl']:>10.3f}"
            lines.append(line)
    if has_base:
        lines.append("delta = model - baseline accuracy (points); p: two-sided paired bootstrap "
                     f"({report['config']['resamples']} resamples); avg-xx: mean over non-English languages")
    return "\n".join(lines).rstrip()
