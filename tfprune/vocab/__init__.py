"""Trim a model's vocabulary to the languages it serves: keep the tokens their scripts (and/or a corpus) need,
every special and byte token and the BPE merge closure; slice the embeddings and the LM head; rewrite the
tokenizer with consistently remapped ids. For text in the kept scripts the segmentation and the logits on the
kept ids are unchanged.

    tokenizer, plan = tfprune.vocab.trim_vocab(model, tokenizer, "de,fr,ru")        # in memory
    tfprune.vocab.trim_checkpoint("gemma-dir", "gemma-deru", TrimOptions(("de", "ru")))  # tensor by tensor
"""
from .checkpoint import TrimSummary, VocabTensors, trim_checkpoint
from .memory import plan_for_model, trim_vocab, trimmed_tokenizer
from .plan import VOCAB_FILE, TrimOptions, VocabPlan, plan_vocab
from .scripts import LANGUAGE_SCRIPTS, CharacterSet, scripts_for
from .select import REASONS, VocabSelection, select_vocab

__all__ = ["trim_vocab", "trim_checkpoint", "plan_vocab", "plan_for_model", "trimmed_tokenizer", "TrimOptions",
           "VocabPlan", "VocabSelection", "VocabTensors", "TrimSummary", "select_vocab", "REASONS",
           "LANGUAGE_SCRIPTS", "CharacterSet", "scripts_for", "VOCAB_FILE"]
