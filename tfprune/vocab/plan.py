"""A vocabulary trim, planned before any weight is touched: the selection, the rewritten tokenizer.json, and a
check that the trimmed tokenizer segments the texts at hand exactly as the original (mapped ids); then the
rewriting of an output directory's configs and tokenizer files, and the record `tfprune-vocab.json`."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VocabError
from .model import config_token_ids, remap_config_dict
from .scripts import parse_langs
from .select import VocabSelection, corpus_texts, parse_by, select_vocab
from .tokenizer import STALE_TOKENIZER_FILES, BpeTokenizer, tokenizer_json_of, write_tokenizer_files

__all__ = ["TrimOptions", "VocabPlan", "plan_vocab", "VOCAB_FILE"]

log = logging.getLogger("tfprune")

VOCAB_FILE = "tfprune-vocab.json"
CONFIG_FILES = ("config.json", "generation_config.json")


@dataclass(frozen=True)
class TrimOptions:
    """What to keep: languages (codes of tfprune.vocab.LANGUAGE_SCRIPTS), by 'script' and/or 'corpus', the
    corpus ('builtin', a path or a list of texts; with 'corpus': the texts whose tokens are kept, else only
    measured) and the least count a corpus token needs. Checked at construction (before any work)."""

    langs: tuple[str, ...]
    by: tuple[str, ...] = ("script",)
    corpus: object = None
    min_count: int = 1

    def __post_init__(self):
        object.__setattr__(self, "langs", parse_langs(self.langs))
        object.__setattr__(self, "by", parse_by(self.by))
        if isinstance(self.corpus, list):
            object.__setattr__(self, "corpus", tuple(self.corpus))
        if not isinstance(self.min_count, int) or self.min_count < 1:
            raise VocabError(f"--min-count must be an integer >= 1, got {self.min_count!r}")

    def to_dict(self) -> dict:
        corpus = self.corpus if self.corpus is None or isinstance(self.corpus, str) else (
            str(self.corpus) if isinstance(self.corpus, Path) else f"{len(self.corpus)} texts")
        return {"langs": list(self.langs), "by": list(self.by), "corpus": corpus, "min_count": self.min_count}


@dataclass
class VocabPlan:
    """selection: the kept ids and why; tokenizer_json: the trimmed tokenizer.json (its text); verified: {texts,
    identical, skipped (texts with a token outside the kept set, not comparable)} of the segmentation check."""

    options: TrimOptions
    selection: VocabSelection
    tokenizer_json: str
    verified: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The content of tfprune-vocab.json: options, counts per reason, corpus statistics, the check, and
        kept (kept[new id] = original id)."""
        return {"options": self.options.to_dict(), **self.selection.to_dict(), "verified": self.verified}

    def files(self) -> dict[str, str]:
        """{tfprune-vocab.json: its text}, for writers that take extra files (tfprune.io.save_pruned)."""
        return {VOCAB_FILE: json.dumps(self.record(), indent=1) + "\n"}

    def rewrite_dir(self, directory: Path, record: bool = True) -> None:
        """Rewrite, in place, the configs and tokenizer files of an output directory this run is writing
        (holding the original ones): vocab_size and token ids in config.json / generation_config.json, the
        trimmed tokenizer.json, remapped tokenizer_config.json / added_tokens.json; stale vocabulary files
        this run put there are removed; then (record) tfprune-vocab.json is written."""
        directory = Path(directory)
        new_id = self.selection.new_ids()
        for name in CONFIG_FILES:
            path = directory / name
            if path.is_file():
                config = json.loads(path.read_text(encoding="utf-8"))
                size = len(self.selection) if name == "config.json" else None
                text = json.dumps(remap_config_dict(config, new_id, size), indent=2, sort_keys=True)
                path.write_text(text + "\n", encoding="utf-8")
        write_tokenizer_files(directory, directory, self.tokenizer_json, list(self.selection.kept))
        for name in STALE_TOKENIZER_FILES:
            (directory / name).unlink(missing_ok=True)
        for name, text in (self.files() if record else {}).items():
            (directory / name).write_text(text, encoding="utf-8")


def _verify(original, trimmed, kept: tuple[int, ...], texts: list[str]) -> dict:
    """Every text whose original tokens are all kept must segment identically (mapped ids) in the trimmed
    tokenizer: the selection's promise, checked. A difference is a bug, not bad input."""
    new_id = {old: new for new, old in enumerate(kept)}
    before = original.encode_batch(texts, add_special_tokens=False)
    after = trimmed.encode_batch(texts, add_special_tokens=False)
    identical = skipped = 0
    for text, old, new in zip(texts, before, after):
        if any(index not in new_id for index in old.ids):
            skipped += 1
            continue
        if [new_id[index] for index in old.ids] != new.ids:
            raise RuntimeError(f"vocabulary trim: the trimmed tokenizer segments {text[:60]!r} differently from the "
                               "original although every original token is kept")
        identical += 1
    return {"texts": len(texts), "identical": identical, "skipped": skipped}


def plan_vocab(tokenizer, options: TrimOptions, configs: list[dict] = ()) -> VocabPlan:
    """Plan the trim of `tokenizer` (a model directory holding tokenizer.json, or a transformers tokenizer
    backed by `tokenizers`): select, rewrite tokenizer.json, verify on the corpus (or, without one, the
    built-in corpus's sentences of the languages it has). configs: the config dicts whose token ids must stay.
    Raises VocabError for bad input; nothing is written."""
    from tokenizers import Tokenizer

    data, source = tokenizer_json_of(tokenizer)
    bpe = BpeTokenizer(data, source)
    required = {}
    for config in configs:
        required.update(config_token_ids(config))
    if isinstance(tokenizer, (str, Path)):
        original = Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    else:
        original = tokenizer.backend_tokenizer
    try:
        texts = corpus_texts("builtin" if options.corpus is None else options.corpus, options.langs)
    except VocabError:
        if options.corpus is not None or "corpus" in options.by:
            raise
        texts = []  # no built-in text in these languages: nothing to measure or verify with

    def encode(batch: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in original.encode_batch(batch, add_special_tokens=False)]

    selection = select_vocab(bpe, options.langs, options.by, texts, options.min_count, required, encode)
    trimmed_json = json.dumps(bpe.rewrite(list(selection.kept)), ensure_ascii=False, separators=(",", ":"))
    trimmed = Tokenizer.from_str(trimmed_json)
    verified = _verify(original, trimmed, selection.kept, texts) if texts else {}
    log.info("%s", selection.summary())
    return VocabPlan(options, selection, trimmed_json, verified)
