"""Translation demonstrations (k-shot prompts) from a parallel corpus, tokenized into calibration samples."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..errors import CalibrationError
from .corpus import ParallelCorpus, builtin_corpus, language_name

__all__ = ["CalibrationSet", "translation_prompts", "monolingual_prompts", "tokenize_prompts", "build_calibration"]

TEMPLATE = "{src_name}: {src}{eos}{tgt_name}: {tgt}{eos}"
MONO_TEMPLATE = "{name}: {text}{eos}"


@dataclass
class CalibrationSet:
    """Tokenized calibration samples, right-padded.

    input_ids: [N, T] int64; attention_mask: [N, T] int64, 1 = real token, 0 = padding (never in statistics).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __post_init__(self):
        if self.input_ids.dim() != 2 or self.input_ids.shape != self.attention_mask.shape:
            raise CalibrationError(
                f"calibration input_ids and attention_mask must both be [N, T], got "
                f"{tuple(self.input_ids.shape)} and {tuple(self.attention_mask.shape)}"
            )
        if self.input_ids.numel() == 0 or int(self.attention_mask.sum()) == 0:
            raise CalibrationError("the calibration set is empty: no tokens to calibrate on")
        if bool((self.attention_mask.sum(1) == 0).any()):
            raise CalibrationError("a calibration sample has no tokens")

    @property
    def nsamples(self) -> int:
        return self.input_ids.shape[0]

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    def batches(self, batch_size: int):
        """Yield (input_ids [B, T'], attention_mask [B, T']) trimmed to the longest sample of the batch."""
        for start in range(0, self.nsamples, batch_size):
            mask = self.attention_mask[start : start + batch_size]
            length = int(mask.sum(1).max())
            yield self.input_ids[start : start + batch_size, :length], mask[:, :length]


def translation_prompts(corpus: ParallelCorpus, langs, shots: int, nsamples: int, direction: str = "x2en",
                        eos: str = "</s>", seed: int = 0) -> list[str]:
    """`nsamples` k-shot prompts "{Src}: {src}{eos}{Tgt}: {tgt}{eos}" × shots, X→English ('x2en'),
    English→X ('en2x') or between any two languages of langs + English ('all': the directions in turn, a
    seeded shuffle of every ordered pair); sample i uses language langs[i % len(langs)] (or direction i) and
    `shots` distinct random sentences."""
    langs = _check(corpus, langs, shots)
    rng = random.Random(seed)
    pairs = [(src, tgt) for src in langs + ["en"] for tgt in langs + ["en"] if src != tgt]
    random.Random(f"directions:{seed}").shuffle(pairs)
    prompts = []
    for i in range(nsamples):
        lang = langs[i % len(langs)]
        src, tgt = {"x2en": (lang, "en"), "en2x": ("en", lang)}.get(direction) or pairs[i % len(pairs)]
        demos = [
            TEMPLATE.format(src_name=language_name(src), src=corpus.sentences[src][j],
                            tgt_name=language_name(tgt), tgt=corpus.sentences[tgt][j], eos=eos)
            for j in rng.sample(range(len(corpus)), shots)
        ]
        prompts.append("".join(demos))
    return prompts


def monolingual_prompts(corpus: ParallelCorpus, langs, shots: int, nsamples: int, eos: str = "</s>",
                        seed: int = 0) -> list[str]:
    """`nsamples` prompts of `shots` sentences of one language each ("{Name}: {text}{eos}" × shots),
    languages in turn over langs + English: the contrast stream of the contrastive metric."""
    langs = _check(corpus, langs, shots) + ["en"]
    rng = random.Random(seed + 1)
    return [
        "".join(MONO_TEMPLATE.format(name=language_name(lang), text=corpus.sentences[lang][j], eos=eos)
                for j in rng.sample(range(len(corpus)), shots))
        for lang in (langs[i % len(langs)] for i in range(nsamples))
    ]


def tokenize_prompts(tokenizer, prompts: list[str], seqlen: int) -> CalibrationSet:
    """Tokenize prompts into at most `seqlen` tokens each, right-padded into one CalibrationSet."""
    if not prompts:
        raise CalibrationError("the calibration set is empty: no prompts")
    ids = [tokenizer(text, truncation=True, max_length=seqlen)["input_ids"] for text in prompts]
    short = [i for i, sample in enumerate(ids) if len(sample) < 2]
    if short:
        raise CalibrationError(f"calibration samples {short[:5]} are shorter than 2 tokens: give longer texts")
    width = max(len(sample) for sample in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.int64)
    attention_mask = torch.zeros((len(ids), width), dtype=torch.int64)
    for row, sample in enumerate(ids):
        input_ids[row, : len(sample)] = torch.tensor(sample, dtype=torch.int64)
        attention_mask[row, : len(sample)] = 1
    return CalibrationSet(input_ids, attention_mask)


def build_calibration(source, tokenizer, config, stream: str = "translation") -> CalibrationSet:
    """Calibration samples of one stream from `source`.

    source: None (built-in corpus) | ParallelCorpus | list[str] (texts used as they are) |
            LongTensor [N, T] of token ids (used as is, tokenizer may be None) | CalibrationSet.
    stream: 'translation' builds config.direction prompts; 'contrast' builds monolingual prompts.
    """
    if isinstance(source, CalibrationSet):
        return source
    if isinstance(source, torch.Tensor):
        if source.dim() != 2 or source.dtype != torch.int64:
            raise CalibrationError(f"token-id calibration must be a LongTensor [N, T], got {source.dtype} "
                                   f"{tuple(source.shape)}")
        return CalibrationSet(source[:, : config.seqlen], torch.ones_like(source[:, : config.seqlen]))
    if tokenizer is None:
        raise CalibrationError("a tokenizer is needed unless calibration is given as token ids")
    if isinstance(source, (list, tuple)):
        texts = [str(text) for text in source if str(text).strip()]
        if not texts:
            raise CalibrationError("the calibration set is empty: no non-blank texts")
        return tokenize_prompts(tokenizer, texts[: config.nsamples], config.seqlen)
    corpus = builtin_corpus() if source is None else source
    if not isinstance(corpus, ParallelCorpus):
        raise CalibrationError(f"unsupported calibration source of type {type(source).__name__}")
    langs = list(config.langs) if config.langs else [lang for lang in corpus.languages if lang != "en"]
    eos = tokenizer.eos_token or ""
    if stream == "contrast" or config.direction == "mono":
        prompts = monolingual_prompts(corpus, langs, config.shots, config.nsamples, eos, config.seed)
    else:
        prompts = translation_prompts(corpus, langs, config.shots, config.nsamples, config.direction, eos,
                                      config.seed)
    return tokenize_prompts(tokenizer, prompts, config.seqlen)


def _check(corpus: ParallelCorpus, langs, shots: int) -> list[str]:
    langs = [lang for lang in langs if lang != "en"]
    if not langs:
        raise CalibrationError("no language to pair with English: langs holds only 'en' or nothing")
    if "en" not in corpus.sentences:
        raise CalibrationError("the parallel corpus has no English ('en') column")
    corpus.select(langs)
    if len(corpus) < shots:
        raise CalibrationError(f"the corpus has {len(corpus)} sentences per language, fewer than shots={shots}")
    return langs
