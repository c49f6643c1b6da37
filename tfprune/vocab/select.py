"""Which token ids to keep for a set of languages, and why.

Every kept id has one reason, the first that applies in this order:
- special: a special added token, or an id the tokenizer or the model's configs refer to (bos, eos, pad, unk,
  the post-processor's tokens);
- added: a non-special added token (matched before BPE, e.g. Gemma's whitespace runs and HTML tags);
- byte: a byte-fallback `<0xNN>` token, or one of the 256 byte characters of a byte-level BPE;
- script (`by` holds "script"): every character of the token is in the languages' character set
  (tfprune.vocab.scripts.CharacterSet) and one belongs to a kept script; for a byte-level BPE, the token's
  bytes are a piece of the UTF-8 of such text (a character cut at either end allowed);
- common (with script): every character is a general one (digits, punctuation, whitespace, symbols);
- corpus (`by` holds "corpus"): the original tokenizer produced it at least `min_count` times on the corpus;
- closure: a symbol of the BPE derivation of a kept token (its merge parents, recursively).

Why "script" keeps the segmentation of any text in the kept scripts: BPE only ever builds tokens from pieces
of the text, so every token (and every intermediate symbol) of such text's original segmentation is made of
allowed characters and is kept; the kept merges are those among kept tokens, in their original order, so at
every step the original's lowest-ranked applicable merge is also the trimmed tokenizer's. "corpus" keeps what
the corpus uses (plus the closure, so that the corpus itself segments as before) and nothing else: text that
needs a token the corpus never produced segments differently; VocabPlan.verified measures that share.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VocabError
from .scripts import LANGUAGE_SCRIPTS, CharacterSet, parse_langs, scripts_for
from .tokenizer import BpeTokenizer

__all__ = ["REASONS", "SELECTION_MODES", "VocabSelection", "select_vocab", "parse_by", "corpus_texts"]

log = logging.getLogger("tfprune")

REASONS = ("special", "added", "byte", "script", "common", "corpus", "closure")
SELECTION_MODES = ("script", "corpus")


def parse_by(spec: str | tuple[str, ...] | list[str], option: str = "--by") -> tuple[str, ...]:
    """'script' | 'corpus' | 'script,corpus' -> the selection modes, checked."""
    items = spec.replace("+", ",").split(",") if isinstance(spec, str) else list(spec)
    modes = tuple(dict.fromkeys(item.strip() for item in items if item.strip()))
    bad = [mode for mode in modes if mode not in SELECTION_MODES]
    if not modes or bad:
        raise VocabError(f"{option}: choose script, corpus or script,corpus; got {spec!r}")
    return modes


def corpus_texts(spec, langs: tuple[str, ...]) -> list[str]:
    """The texts of a corpus spec for the languages: 'builtin' (tfprune's parallel corpus: the languages'
    sentences), a .txt file (one text per line, used as it is), a parallel corpus load_corpus reads (.tsv,
    .jsonl, a folder of {lang}.txt: the languages' columns), or a list of texts."""
    from ..calib import builtin_corpus, load_corpus
    from ..errors import CalibrationError

    if isinstance(spec, (list, tuple)):
        texts = [str(text) for text in spec]
    elif spec == "builtin" or isinstance(spec, (str, Path)):
        path = None if spec == "builtin" else Path(spec)
        if path is not None and path.suffix == ".txt" and path.is_file():
            texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            try:
                corpus = builtin_corpus() if path is None else load_corpus(path)
            except CalibrationError as error:
                raise VocabError(f"--corpus: {error}") from None
            present = [lang for lang in langs if lang in corpus.sentences]
            if not present:
                raise VocabError(f"--corpus {spec}: no text in {', '.join(langs)} (it has "
                                 f"{', '.join(corpus.languages)}); pass a corpus in those languages")
            texts = [text for lang in present for text in corpus.sentences[lang]]
    else:
        raise VocabError(f"--corpus: expected 'builtin', a path or a list of texts, got {type(spec).__name__}")
    if not texts:
        raise VocabError(f"--corpus {spec}: holds no text")
    return texts


@dataclass(frozen=True)
class VocabSelection:
    """The kept ids: kept[i] is the original id of new id i (ascending), reasons[i] why it is kept.
    original_size: ids of the original tokenizer; corpus: statistics of the corpus used ({} without)."""

    langs: tuple[str, ...]
    scripts: tuple[str, ...]
    by: tuple[str, ...]
    kept: tuple[int, ...]
    reasons: tuple[str, ...]
    original_size: int
    corpus: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.kept)

    @property
    def counts(self) -> dict[str, int]:
        """{reason: kept ids}, every reason listed (0 where none)."""
        counted = Counter(self.reasons)
        return {reason: counted.get(reason, 0) for reason in REASONS}

    def new_ids(self) -> dict[int, int]:
        """{original id: new id} of the kept ids."""
        return {old: new for new, old in enumerate(self.kept)}

    def summary(self) -> str:
        counts = ", ".join(f"{reason} {count:,}" for reason, count in self.counts.items() if count)
        return (f"kept {len(self):,} of {self.original_size:,} tokens ({len(self) / self.original_size:.1%}) for "
                f"{','.join(self.langs)} ({'+'.join(self.scripts)}; by {'+'.join(self.by)}): {counts}")

    def to_dict(self) -> dict:
        return {"langs": list(self.langs), "scripts": list(self.scripts), "by": list(self.by),
                "original_vocab_size": self.original_size, "vocab_size": len(self), "counts": self.counts,
                "corpus": self.corpus, "kept": list(self.kept)}


def _classify(bpe: BpeTokenizer, token: str, charset: CharacterSet) -> str | None:
    """'script', 'common' or None (the token cannot occur in text of the character set)."""
    if bpe.byte_level:
        reachable, text = charset.bytes_reachable(bpe.decode_bytes(token))
        if not reachable:
            return None
        return "script" if not text or charset.has_script_char(text) else "common"
    if not charset.allows(token):
        return None
    return "script" if charset.has_script_char(token) else "common"


def _check_coverage(bpe: BpeTokenizer, langs: tuple[str, ...], charset: CharacterSet) -> None:
    """Refuse a language one of whose scripts has no token at all (its text would be bytes or unknown)."""
    missing = set(charset.scripts)
    for token in bpe.vocab:
        text = bpe.decode_bytes(token).decode("utf-8", "ignore") if bpe.byte_level else token
        for script in [script for script in missing if charset.in_script(text, script)]:
            missing.discard(script)
        if not missing:
            return
    lang, script = next((lang, script) for lang in langs for script in LANGUAGE_SCRIPTS[lang] if script in missing)
    raise VocabError(f"--langs {lang}: the tokenizer ({bpe.source}) has no token in the {script} script: {lang} "
                     f"text would be {'bytes' if bpe.byte_level or bpe.byte_fallback else 'unknown tokens'} only; "
                     "drop it or trim a model whose tokenizer covers it")


class _Derivations:
    """The BPE derivation of a token on its own (which, BPE being greedy by merge rank, is also its derivation
    inside any text that yields it): every symbol it passes through."""

    def __init__(self, bpe: BpeTokenizer):
        self.rank = {pair: rank for rank, pair in enumerate(bpe.merges)}

    def symbols(self, token: str) -> set[str]:
        parts = list(token)
        seen = set(parts)
        while len(parts) > 1:
            best, where = None, -1
            for index in range(len(parts) - 1):
                rank = self.rank.get((parts[index], parts[index + 1]))
                if rank is not None and (best is None or rank < best):
                    best, where = rank, index
            if best is None:
                break
            parts[where:where + 2] = [parts[where] + parts[where + 1]]
            seen.add(parts[where])
        return seen


def _close_over_merges(bpe: BpeTokenizer, reason: dict[int, str]) -> None:
    """Add (as 'closure') what BPE needs to reach the kept tokens. A corpus token: every symbol of its
    derivation. The script and common tokens are closed already (the parts of a token made of allowed
    characters are made of allowed characters, and so are the pieces of a reachable byte string); one pass
    over the merges checks it, adding the parts of any merge into them that would be missing."""
    derivations = _Derivations(bpe)
    for index in [index for index, why in reason.items() if why == "corpus"]:
        for symbol in derivations.symbols(bpe.tokens[index]):
            if symbol in bpe.vocab:
                reason.setdefault(bpe.vocab[symbol], "closure")
    vocab = bpe.vocab
    for left, right in bpe.merges:
        merged = vocab.get(left + right)
        if reason.get(merged) in ("script", "common"):
            for part in (left, right):
                reason.setdefault(vocab[part], "closure")


def select_vocab(bpe: BpeTokenizer, langs, by=("script",), corpus: list[str] | None = None, min_count: int = 1,
                 required: dict[int, str] | None = None, encode=None) -> VocabSelection:
    """The kept ids of `bpe` for the languages (see the module docstring for the reasons).

    corpus: texts in the languages (needed when by holds 'corpus'); encode(texts) -> lists of original ids
    (the original tokenizer, no special tokens added). required: {id: config key} of the ids the model's
    configs name (kept as special)."""
    langs, by = parse_langs(langs), parse_by(by)
    if min_count < 1:
        raise VocabError(f"--min-count must be >= 1, got {min_count}")
    if "corpus" in by and not corpus:
        raise VocabError("--by corpus needs a corpus (--corpus builtin or a path)")
    charset = CharacterSet(scripts_for(langs))
    _check_coverage(bpe, langs, charset)
    reason: dict[int, str] = dict(sorted(bpe.required_ids().items()))
    for index, key in sorted((required or {}).items()):
        if not 0 <= index < len(bpe):
            raise VocabError(f"{key}={index} in the model's config is outside the tokenizer's {len(bpe)} ids")
        reason.setdefault(index, "special")
    for index in bpe.byte_ids():
        reason.setdefault(index, "byte")
    if "script" in by:
        for token, index in bpe.vocab.items():
            if index not in reason:
                kind = _classify(bpe, token, charset)
                if kind is not None:
                    reason[index] = kind
    counts = Counter(index for ids in encode(corpus) for index in ids) if corpus else Counter()
    if "corpus" in by:
        for index, count in counts.items():
            if count >= min_count:
                reason.setdefault(index, "corpus")
    _close_over_merges(bpe, reason)
    stats = {"texts": len(corpus), "tokens": sum(counts.values()), "distinct": len(counts),
             "outside": sum(count for index, count in counts.items() if index not in reason)} if corpus else {}
    kept = tuple(sorted(reason))
    return VocabSelection(langs, charset.scripts, by, kept, tuple(reason[index] for index in kept), len(bpe), stats)
