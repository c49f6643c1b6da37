"""Trimming a model and its tokenizer in memory (what `tfprune prune --trim-vocab` does after pruning)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .model import trim_model_
from .plan import TrimOptions, VocabPlan, plan_vocab

__all__ = ["plan_for_model", "trim_vocab", "trimmed_tokenizer"]


def _options(options: TrimOptions | str) -> TrimOptions:
    return options if isinstance(options, TrimOptions) else TrimOptions(options)


def plan_for_model(model, tokenizer, options: TrimOptions | str) -> VocabPlan:
    """The trim of `tokenizer` for `model` (whose config and generation config token ids stay), planned and
    checked; nothing changes yet."""
    configs = [model.config.to_dict()]
    if getattr(model, "generation_config", None) is not None:
        configs.append(model.generation_config.to_dict())
    return plan_vocab(tokenizer, _options(options), configs)


def trimmed_tokenizer(tokenizer, plan: VocabPlan):
    """A new transformers tokenizer: `tokenizer` saved, its files rewritten by the plan, loaded again."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="tfprune-vocab-") as folder:
        tokenizer.save_pretrained(folder)
        plan.rewrite_dir(Path(folder), record=False)
        return AutoTokenizer.from_pretrained(folder)


def trim_vocab(model, tokenizer, options: TrimOptions | str, plan: VocabPlan | None = None):
    """Trim `model` in place to the vocabulary of `options` (a TrimOptions or languages such as 'de,fr,ru',
    kept by script) and return (the trimmed tokenizer, the VocabPlan). The embeddings [V, H] and LM head
    [V, H] keep the kept ids' rows (tied stays tied); config and generation config follow. For the kept
    languages' text the model computes the same logits on the kept ids as before; plan.record() is what
    tfprune-vocab.json holds (kept[new id] = original id)."""
    plan = plan or plan_for_model(model, tokenizer, options)
    trim_model_(model, plan.selection.kept)
    return trimmed_tokenizer(tokenizer, plan), plan
