"""Zero-shot tasks of the paper: XNLI and MARC-2 (binary sentiment), their prompts and their data.

Data come from local JSONL files (`DIR/{task}/{lang}.jsonl`) or, without a folder, from the Hugging Face hub
through `datasets`:
- xnli:  `facebook/xnli`, config = language, split `test` (5,010 examples per language). Fields: premise,
         hypothesis, label (0 entailment, 1 neutral, 2 contradiction).
- marc2: `mteb/amazon_reviews_multi`, config = language, split `test` (5,000 per language; the original
         `amazon_reviews_multi` was taken off the hub). Its `label` is stars - 1 (0..4); 1-2 stars are
         negative, 4-5 positive, 3 stars are dropped, as MARC-2 is defined.
Local JSONL records: xnli {"premise", "hypothesis", "label"}; marc2 {"text", "label"} with label 0 =
negative, 1 = positive, or {"text" | "review_body", "stars": 1..5}.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import TfpruneError
from ..textfiles import read_jsonl, text_field

__all__ = ["Task", "TASKS", "XNLI", "MARC2", "load_examples", "local_languages", "sample_examples"]


@dataclass(frozen=True)
class Task:
    """A zero-shot classification task: one full prompt per label, `template` filled with the example's
    fields and `label` = label_words[i]."""

    name: str
    hub_id: str
    languages: tuple[str, ...]
    label_words: tuple[str, ...]
    template: str
    fields: tuple[str, ...]

    def prompts(self, example: dict) -> list[str]:
        """The candidate prompts of one example, in label order."""
        values = {field: str(example[field]).strip() for field in self.fields}
        return [self.template.format(label=word, **values) for word in self.label_words]


# The paper's template (XGLM's): "premise , right? {Yes|Also|No} , hypothesis"; English words for every language.
XNLI = Task("xnli", "facebook/xnli",
            ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
            ("Yes", "Also", "No"), "{premise}, right? {label}, {hypothesis}", ("premise", "hypothesis"))
# Our choice for MARC-2 (the paper gives no template): the review, then a short English verdict whose one
# label word differs; "bad"/"good" are single frequent tokens in most multilingual vocabularies.
MARC2 = Task("marc2", "mteb/amazon_reviews_multi", ("de", "en", "es", "fr", "ja", "zh"),
             ("bad", "good"), "{text} All in all, it was {label}.", ("text",))
TASKS = {task.name: task for task in (XNLI, MARC2)}


def _integer(record: dict, key: str, where: str, low: int, high: int) -> int:
    """record[key] as an int in [low, high]; booleans, floats and strings are errors, never coerced."""
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise TfpruneError(f"{where}: {key!r} must be an integer in [{low}, {high}], got {json.dumps(value)}")
    return value


def _normalize(task: Task, record: dict, where: str) -> dict | None:
    """The record as {fields..., "label": int}, or None for a MARC 3-star review (neither class)."""
    if task.name == "marc2":
        key = "text" if "text" in record else "review_body"
        text = text_field(record, key, where)
        if "stars" in record:
            stars = _integer(record, "stars", where, 1, 5)
            return None if stars == 3 else {"text": text, "label": int(stars > 3)}
        if "label" not in record:
            raise TfpruneError(f"{where}: a marc2 record needs 'label' (0 negative, 1 positive) or 'stars' (1..5)")
        return {"text": text, "label": _integer(record, "label", where, 0, 1)}
    if "label" not in record:
        raise TfpruneError(f"{where}: an {task.name} record needs a 'label'")
    fields = {field: text_field(record, field, where) for field in task.fields}
    return {**fields, "label": _integer(record, "label", where, 0, len(task.label_words) - 1)}


def local_languages(task: Task, data: str | Path) -> list[str]:
    """Languages with a `{lang}.jsonl` file in DIR/{task}/."""
    folder = Path(data) / task.name
    return sorted(path.stem for path in folder.glob("*.jsonl"))


def _hub_records(task: Task, lang: str, split: str) -> list[tuple[str, dict]]:
    try:
        from datasets import load_dataset
    except ImportError:
        raise TfpruneError(f"{task.name} from the hub needs the `datasets` package (pip install datasets), "
                           f"or give local JSONL files with --data DIR ({task.name}/{lang}.jsonl)") from None
    try:
        rows = load_dataset(task.hub_id, lang, split=split)
    except Exception as error:  # the hub raises many types: offline, renamed, missing config
        raise TfpruneError(f"cannot load {task.hub_id} ({lang}, {split}): {error}; "
                           f"give local JSONL files with --data DIR instead") from error
    records = []
    for index, row in enumerate(rows):
        row = dict(row)
        if task.name == "marc2" and "stars" not in row:
            row = {"text": row.get("text", row.get("review_body")), "stars": int(row["label"]) + 1}
        records.append((f"{task.hub_id}[{lang}][{index}]", row))
    return records


def load_examples(task: Task, lang: str, data: str | Path | None = None, split: str = "test") -> list[dict]:
    """Every example of `task` in `lang`, normalized to {fields..., "label": int}: from DIR/{task}/{lang}.jsonl
    when `data` is given, else from the hub."""
    if data is not None:
        path = Path(data) / task.name / f"{lang}.jsonl"
        if not path.is_file():
            raise TfpruneError(f"no {task.name} data for {lang!r}: {path} does not exist")
        records = read_jsonl(path)
    else:
        records = _hub_records(task, lang, split)
    examples = [example for where, record in records if (example := _normalize(task, record, where)) is not None]
    if not examples:
        raise TfpruneError(f"no {task.name} examples for {lang!r}")
    return examples


def sample_examples(examples: list[dict], n: int | None, seed: int, key: str = "") -> list[dict]:
    """n examples drawn without replacement (all of them if there are at most n), in their original order.
    The draw depends only on (key, seed, len(examples)), so the dense and the pruned model see the same ones."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 1:
        raise TfpruneError(f"the number of examples per language must be positive, got {n}")
    rng = random.Random(f"{key}:{seed}")
    return [examples[i] for i in sorted(rng.sample(range(len(examples)), n))]
