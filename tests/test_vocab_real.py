"""Vocabulary trim of the real model (Gemma 3 270M, vocabulary 262,144, BPE with byte fallback): on held-out
text the trimmed tokenizer gives the original's tokens (mapped ids) and the trimmed model the original's
next-token log-probabilities renormalised over the kept ids; what the corpus mode misses."""
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from vocab_testing import HELD_OUT

from tfprune.vocab import VOCAB_FILE, TrimOptions, plan_vocab, trim_checkpoint

pytestmark = pytest.mark.real
LATIN_CYRILLIC = ("de", "fr", "es", "ru")


@pytest.fixture(scope="module")
def original(real_model_dir):
    model = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(real_model_dir)


@pytest.fixture(scope="module")
def trimmed_dir(real_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gemma") / "latin-cyrillic"
    trim_checkpoint(real_model_dir, out, TrimOptions(LATIN_CYRILLIC), progress=False)
    return out


def test_trimmed_gemma_computes_the_same_on_held_out_text(original, trimmed_dir, real_model_dir):
    model, tokenizer = original
    trimmed = AutoModelForCausalLM.from_pretrained(trimmed_dir, dtype=torch.float32).eval()
    trimmed_tokenizer = AutoTokenizer.from_pretrained(trimmed_dir)
    record = json.loads((trimmed_dir / VOCAB_FILE).read_text())
    kept = record["kept"]
    assert trimmed.config.vocab_size == len(kept) == len(trimmed_tokenizer) < 262144 * 0.7
    assert trimmed.lm_head.weight is trimmed.model.embed_tokens.weight  # tied stays tied
    assert record["counts"]["special"] + record["counts"]["added"] == 6414 and record["counts"]["byte"] == 256
    nll_before = nll_after = tokens = 0.0
    for lang in LATIN_CYRILLIC:
        for text in HELD_OUT[lang]:
            before, after = tokenizer(text).input_ids, trimmed_tokenizer(text).input_ids
            assert [kept[i] for i in after] == before, text
            with torch.no_grad():
                reference = model(input_ids=torch.tensor([before])).logits[0]
                got = trimmed(input_ids=torch.tensor([after])).logits[0]
            restricted = torch.log_softmax(reference[:, kept], -1)
            logprobs = torch.log_softmax(got, -1)
            assert (logprobs - restricted).abs().max() < 1e-4, text
            targets = torch.tensor(after[1:])
            nll_after -= logprobs[:-1].gather(1, targets[:, None]).sum().item()
            nll_before -= torch.log_softmax(reference, -1)[:-1].gather(1, torch.tensor(before[1:])[:, None]).sum().item()
            tokens += len(targets)
    ppl_before, ppl_after = math.exp(nll_before / tokens), math.exp(nll_after / tokens)
    assert ppl_after <= ppl_before and ppl_after / ppl_before > 0.99  # renormalised: lower, within 1 %
    prompt = "Die Hauptstadt von Frankreich ist"
    generated = trimmed.generate(**trimmed_tokenizer(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False)
    reference = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False)
    assert [kept[i] for i in generated[0].tolist()] == reference[0].tolist()


def test_cjk_and_corpus_selection_on_the_real_tokenizer(real_model_dir, original):
    """zh+ja by script: held-out Chinese and Japanese segment exactly; by the built-in corpus: far fewer tokens,
    and a measurable share of held-out tokens outside the kept set (what a small corpus misses)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(real_model_dir / "tokenizer.json"))
    cjk = plan_vocab(real_model_dir, TrimOptions(("zh", "ja")))
    assert len(cjk.selection) < 262144 * 0.16 and cjk.verified["identical"] == cjk.verified["texts"]
    trimmed = Tokenizer.from_str(cjk.tokenizer_json)
    for text in HELD_OUT["zh"] + HELD_OUT["ja"] + ["東京タワーの高さは333メートルです！"]:
        before, after = tokenizer.encode(text).ids, trimmed.encode(text).ids
        assert [cjk.selection.kept[i] for i in after] == before, text

    corpus = plan_vocab(real_model_dir, TrimOptions(LATIN_CYRILLIC, by="corpus"))
    kept = set(corpus.selection.kept)
    held_out = [i for lang in LATIN_CYRILLIC for t in HELD_OUT[lang] for i in tokenizer.encode(t).ids]
    outside = sum(i not in kept for i in held_out) / len(held_out)
    assert len(kept) < 20000 and 0.05 < outside < 0.9
