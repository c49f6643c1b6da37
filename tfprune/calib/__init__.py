"""Calibration data: parallel corpora and the translation demonstrations built from them."""
from .corpus import LANGUAGE_NAMES, ParallelCorpus, builtin_corpus, load_corpus, load_flores, load_texts
from .prompts import CalibrationSet, build_calibration, monolingual_prompts, tokenize_prompts, translation_prompts

__all__ = [
    "LANGUAGE_NAMES",
    "ParallelCorpus",
    "builtin_corpus",
    "load_corpus",
    "load_flores",
    "load_texts",
    "CalibrationSet",
    "build_calibration",
    "translation_prompts",
    "monolingual_prompts",
    "tokenize_prompts",
]
