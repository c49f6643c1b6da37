"""Parallel corpora and translation demonstrations."""
import json
import sys
import types
import unicodedata

import pytest
import torch

from tfprune import PruneConfig
from tfprune.calib import (ParallelCorpus, build_calibration, builtin_corpus, load_corpus, load_flores,
                           monolingual_prompts, tokenize_prompts, translation_prompts)
from tfprune.errors import CalibrationError


def test_builtin_corpus_has_english_plus_eight_languages_in_several_scripts():
    corpus = builtin_corpus()
    assert "en" in corpus.languages and len(corpus.languages) >= 9 and len(corpus) >= 64
    scripts = {unicodedata.name(ch).split()[0] for lang in corpus.languages
               for ch in corpus.sentences[lang][0] if ch.isalpha()}
    assert {"LATIN", "CYRILLIC", "CJK", "ARABIC", "DEVANAGARI"} <= scripts
    for lang in corpus.languages:
        assert all(text and "\t" not in text for text in corpus.sentences[lang])


def test_translation_prompt_template_and_reproducibility():
    corpus = ParallelCorpus({"en": ["Hello.", "Good night.", "Thanks."], "de": ["Hallo.", "Gute Nacht.", "Danke."]})
    prompts = translation_prompts(corpus, ["de"], shots=2, nsamples=3, eos="</s>", seed=1)
    assert prompts == translation_prompts(corpus, ["de"], shots=2, nsamples=3, eos="</s>", seed=1)
    first = prompts[0]
    assert first.count("German: ") == 2 and first.count("English: ") == 2 and first.endswith("</s>")
    demo = first.split("</s>")[:2]
    assert demo[0].startswith("German: ") and demo[1].startswith("English: ")
    assert corpus.sentences["en"][corpus.sentences["de"].index(demo[0][len("German: "):])] == demo[1][len("English: "):]
    en2x = translation_prompts(corpus, ["de"], shots=1, nsamples=1, direction="en2x", eos="|")
    assert en2x[0].startswith("English: ") and "|German: " in en2x[0]
    mono = monolingual_prompts(corpus, ["de"], shots=2, nsamples=2, eos="|")
    assert mono[0].startswith("German: ") and "English" not in mono[0] and mono[1].startswith("English: ")


def test_too_few_sentences_for_the_shots():
    corpus = ParallelCorpus({"en": ["a", "b"], "de": ["c", "d"]})
    with pytest.raises(CalibrationError, match="fewer than shots=4"):
        translation_prompts(corpus, ["de"], shots=4, nsamples=1)


def test_load_tsv_jsonl_and_folder(tmp_path):
    (tmp_path / "c.tsv").write_text("en\tfr\nHello\tBonjour\nYes\tOui\n", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"en": "Hello", "fr": "Bonjour"}) + "\n", encoding="utf-8")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "en.txt").write_text("Hello\nYes\n", encoding="utf-8")
    (tmp_path / "d" / "fr.txt").write_text("Bonjour\nOui\n", encoding="utf-8")
    assert load_corpus(tmp_path / "c.tsv").sentences == {"en": ["Hello", "Yes"], "fr": ["Bonjour", "Oui"]}
    assert load_corpus(tmp_path / "c.jsonl").sentences == {"en": ["Hello"], "fr": ["Bonjour"]}
    assert load_corpus(tmp_path / "d").sentences == {"en": ["Hello", "Yes"], "fr": ["Bonjour", "Oui"]}


@pytest.mark.parametrize("content,message", [
    ("en\tfr\nHello\n", "1 columns"),
    ("en\tfr\n", "at least one row"),
])
def test_bad_tsv(tmp_path, content, message):
    (tmp_path / "c.tsv").write_text(content, encoding="utf-8")
    with pytest.raises(CalibrationError, match=message):
        load_corpus(tmp_path / "c.tsv")


def test_missing_and_misaligned_corpora(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        load_corpus(tmp_path / "nope.tsv")
    with pytest.raises(CalibrationError, match="not aligned"):
        ParallelCorpus({"en": ["a", "b"], "de": ["c"]})


def test_flores_through_datasets(monkeypatch):
    fake = types.ModuleType("datasets")
    calls = []

    def load_dataset(name, config, split):
        calls.append((name, config, split))
        return {"text": [f"{config} {i}" for i in range(3)]}

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    corpus = load_flores(["de", "sw"])
    assert corpus.languages == ["en", "de", "sw"] and corpus.sentences["sw"][0] == "swh_Latn 0"
    assert calls[0] == ("openlanguagedata/flores_plus", "eng_Latn", "dev")


def test_tokenized_samples_are_right_padded_and_bounded(tiny_model):
    _, tokenizer = tiny_model("llama")
    calib = build_calibration(None, tokenizer, PruneConfig(nsamples=6, seqlen=40, langs=("de", "zh")))
    assert calib.input_ids.shape[0] == 6 and calib.input_ids.shape[1] <= 40
    lengths = calib.attention_mask.sum(1)
    for row, length in enumerate(lengths.tolist()):
        assert calib.attention_mask[row, :length].all() and not calib.attention_mask[row, length:].any()
    again = build_calibration(None, tokenizer, PruneConfig(nsamples=6, seqlen=40, langs=("de", "zh")))
    assert torch.equal(calib.input_ids, again.input_ids)


def test_token_ids_and_texts_as_calibration(tiny_model):
    _, tokenizer = tiny_model("llama")
    ids = torch.randint(0, 100, (3, 20))
    calib = build_calibration(ids, None, PruneConfig(seqlen=16))
    assert calib.input_ids.shape == (3, 16) and calib.attention_mask.all()
    texts = build_calibration(["one text here", "another text"], tokenizer, PruneConfig())
    assert texts.nsamples == 2
    with pytest.raises(CalibrationError, match="empty"):
        build_calibration(["", "  "], tokenizer, PruneConfig())
    with pytest.raises(CalibrationError, match="shorter than 2 tokens"):
        tokenize_prompts(tokenizer, ["a"], seqlen=1)
    with pytest.raises(CalibrationError, match="LongTensor"):
        build_calibration(torch.zeros(3), None, PruneConfig())
