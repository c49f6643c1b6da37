"""Vocabulary trim, tokenizer side: which ids are kept and why, the rewritten tokenizer.json, segmentation of
held-out text identical to the original's (mapped ids), and the refusals."""
import json
import random

import pytest
import regex
from tokenizers import Tokenizer
from vocab_testing import HELD_OUT, spm_tokenizer

from tfprune.builtin import build_tokenizer
from tfprune.calib import builtin_corpus
from tfprune.errors import VocabError
from tfprune.vocab import CharacterSet, TrimOptions, plan_vocab, scripts_for
from tfprune.vocab.select import select_vocab
from tfprune.vocab.tokenizer import BpeTokenizer


def test_held_out_text_is_not_in_the_corpus():
    corpus = builtin_corpus().sentences
    everything = "\n".join(text for rows in corpus.values() for text in rows)
    for lang, texts in HELD_OUT.items():
        for text in texts:
            assert text not in everything
            words = [w for w in regex.findall(r"\w+", text) if len(w) > 3]
            assert sum(w in everything for w in words) < len(words), text  # not a rearranged corpus sentence


def test_language_table_and_errors():
    assert scripts_for(("ja", "de", "zh")) == ("Han", "Hiragana", "Katakana", "Latin")
    assert scripts_for("ru, sr") == ("Cyrillic", "Latin")
    with pytest.raises(VocabError, match="--langs: unknown language code 'xx'"):
        TrimOptions("de,xx")
    with pytest.raises(VocabError, match="no language given"):
        TrimOptions(" , ")
    with pytest.raises(VocabError, match="--by: choose script, corpus"):
        TrimOptions("de", by="frequency")
    with pytest.raises(VocabError, match="--min-count"):
        TrimOptions("de", by="corpus", min_count=0)


def test_character_set_by_script_extensions():
    latin = CharacterSet(("Latin", "Cyrillic"))
    assert latin.allows("▁Straße, «déjà» ¿qué? 1975 € 😀 ёжик\n")
    assert not latin.allows("東京") and not latin.allows("。") and not latin.allows("α")
    cjk = CharacterSet(("Han", "Hiragana", "Katakana"))
    assert cjk.allows("東京は、ラーメン。1975") and cjk.has_script_char("ラ") and not cjk.has_script_char("1975")
    assert not cjk.allows("Tokyo")


@pytest.mark.parametrize("scripts", [("Latin", "Cyrillic"), ("Han", "Hiragana", "Katakana"), ("Greek",)])
def test_byte_fragments_of_allowed_text_are_reachable(scripts):
    """Soundness (what exactness needs): every byte substring of the UTF-8 of text in the set is reachable;
    pieces of characters outside the set, invalid UTF-8 and impossible bytes are not."""
    charset = CharacterSet(scripts)
    chars = [chr(cp) for cp in random.Random(0).sample(charset.codepoints, 300)]
    rng = random.Random(1)
    for _ in range(300):
        data = "".join(rng.choice(chars) for _ in range(6)).encode()
        begin = rng.randrange(len(data))
        piece = data[begin:rng.randrange(begin + 1, len(data) + 1)]
        assert charset.bytes_reachable(piece)[0], piece
    assert not charset.bytes_reachable(b"\xff")[0]
    assert not charset.bytes_reachable(b"a\x80b")[0]
    outside = {"Latin": "東".encode(), "Han": "ж".encode(), "Greek": "東".encode()}[scripts[0]]
    assert not charset.bytes_reachable(outside[:-1])[0]  # a lead only characters of other scripts share
    assert not charset.bytes_reachable(outside)[0]


def _original_and_trimmed(tokenizer, langs, **options):
    plan = plan_vocab(tokenizer, TrimOptions(langs, **options))
    original = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    return plan, original, Tokenizer.from_str(plan.tokenizer_json)


def _assert_same_segmentation(plan, original, trimmed, texts):
    kept = plan.selection.kept
    for text in texts:
        before = original.encode(text, add_special_tokens=True).ids
        after = trimmed.encode(text, add_special_tokens=True).ids
        assert all(index in set(kept) for index in before), text
        assert [kept[index] for index in after] == before, text


@pytest.mark.parametrize("make", [build_tokenizer, spm_tokenizer], ids=["byte-level", "sentencepiece-style"])
@pytest.mark.parametrize("langs", ["de,fr,es,ru", "zh,ja"])
def test_held_out_segmentation_is_unchanged(make, langs):
    tokenizer = make()
    plan, original, trimmed = _original_and_trimmed(tokenizer, langs)
    selection = plan.selection
    assert list(selection.kept) == sorted(set(selection.kept)) and len(trimmed.get_vocab()) == len(selection)
    assert selection.counts["special"] == 4 and sum(selection.counts.values()) == len(selection)
    assert selection.counts["byte"] == 256 and selection.counts["script"] > 0
    assert len(selection) < len(tokenizer)
    assert plan.verified["identical"] == plan.verified["texts"] > 0 and selection.corpus["outside"] == 0
    held_out = [text for lang in langs.split(",") for text in HELD_OUT[lang]]
    _assert_same_segmentation(plan, original, trimmed, held_out + ["  3,14 + 2.718\n\n(42%)! -- 1975: #1 @ 09:30"])
    # every kept merge joins kept tokens, in the original order
    vocab = trimmed.get_vocab()
    merges = json.loads(plan.tokenizer_json)["model"]["merges"]
    order = {tuple(m): i for i, m in enumerate(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"])}
    assert all(a in vocab and b in vocab and a + b in vocab for a, b in merges)
    assert [order[tuple(m)] for m in merges] == sorted(order[tuple(m)] for m in merges)


@pytest.mark.parametrize("make", [build_tokenizer, spm_tokenizer], ids=["byte-level", "sentencepiece-style"])
def test_text_outside_the_kept_scripts_still_encodes_and_decodes(make):
    tokenizer = make()
    plan, original, trimmed = _original_and_trimmed(tokenizer, "de")
    text = "Grüße aus Москва und 東京"
    assert trimmed.decode(trimmed.encode(text).ids, skip_special_tokens=True) == text  # bytes are always kept
    assert len(trimmed.encode(text).ids) > len(original.encode(text).ids)


def test_corpus_mode_keeps_what_the_corpus_uses_plus_the_closure():
    tokenizer = spm_tokenizer()
    texts = builtin_corpus().sentences["de"][:36]
    plan, original, trimmed = _original_and_trimmed(tokenizer, "de", by="corpus", corpus=texts)
    selection, kept = plan.selection, set(plan.selection.kept)
    used = {index for text in texts for index in original.encode(text, add_special_tokens=False).ids}
    assert used <= kept and selection.counts["corpus"] == len(used - {i for i, r in zip(selection.kept,
                                                                                          selection.reasons)
                                                                           if r in ("special", "added", "byte")})
    assert selection.counts["script"] == selection.counts["common"] == 0
    _assert_same_segmentation(plan, original, trimmed, texts)  # the corpus itself: exact
    script = plan_vocab(tokenizer, TrimOptions("de")).selection
    assert len(selection) < len(script)
    # other German text needs tokens the corpus never produced: measured, not hidden
    unseen = builtin_corpus().sentences["de"][36:] + HELD_OUT["de"]
    outside = sum(i not in kept for t in unseen for i in original.encode(t, add_special_tokens=False).ids)
    assert outside > 0
    union = plan_vocab(tokenizer, TrimOptions("de", by="script,corpus", corpus=texts)).selection
    assert set(union.kept) == set(script.kept) | kept


def _hand_made(merges, vocab_tokens, added=(), **model):
    vocab = {token: index for index, token in enumerate(vocab_tokens)}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for t in added],
            "normalizer": None, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": [list(m) for m in merges], **model}}


def test_closure_keeps_the_derivation_of_a_corpus_token():
    """'abc' is built a+b -> ab, ab+c -> abc: keeping 'abc' needs 'ab'; 'bc' (a merge of the vocabulary that the
    derivation of 'abc' never uses) is not needed."""
    data = _hand_made([("a", "b"), ("b", "c"), ("ab", "c"), ("x", "y")],
                      ["<unk>", "a", "b", "c", "x", "y", "bc", "ab", "abc", "xy"], added=["<unk>"])
    bpe = BpeTokenizer(data)
    original = Tokenizer.from_str(json.dumps(data))
    assert original.encode("abc").tokens == ["abc"]
    encode = lambda texts: [original.encode(t).ids for t in texts]  # noqa: E731
    selection = select_vocab(bpe, ("en",), ("corpus",), ["abc"], encode=encode)
    kept = {bpe.tokens[i]: why for i, why in zip(selection.kept, selection.reasons)}
    assert kept == {"<unk>": "special", "abc": "corpus", "ab": "closure", "a": "closure", "b": "closure",
                    "c": "closure"}
    trimmed = Tokenizer.from_str(json.dumps(bpe.rewrite(list(selection.kept))))
    assert trimmed.encode("abc").tokens == ["abc"]


@pytest.mark.parametrize("change,message", [
    (lambda d: d["model"].update(type="Unigram"), "a Unigram tokenizer"),
    (lambda d: d["model"].update(type="WordPiece"), "a WordPiece tokenizer"),
    (lambda d: d["model"].update(continuing_subword_prefix="##"), "continuing_subword_prefix"),
    (lambda d: d.update(post_processor={"type": "MadeUpProcessing"}), "post-processor MadeUpProcessing"),
])
def test_untrimmable_tokenizer_json_is_refused(change, message):
    data = _hand_made([("a", "b")], ["<unk>", "a", "b", "ab"])
    change(data)
    with pytest.raises(VocabError, match=message):
        BpeTokenizer(data, "x/tokenizer.json")


@pytest.mark.parametrize("files,message", [
    ({"tokenizer.model": b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02"}, "sentencepiece tokenizer.model"),
    ({"tokenizer.model": b"IQ== 0\nIg== 1\n"}, "tiktoken"),
    ({"vocab.txt": b"[PAD]\n[UNK]\n"}, "WordPiece vocab.txt"),
    ({"vocab.json": b"{}", "merges.txt": b""}, "slow BPE files"),
])
def test_directory_without_tokenizer_json_is_refused(tmp_path, files, message):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(VocabError, match=message):
        plan_vocab(tmp_path, TrimOptions("de"))


def test_a_script_the_tokenizer_does_not_cover_is_refused():
    with pytest.raises(VocabError, match="--langs ko: the tokenizer .* has no token in the Hangul script"):
        plan_vocab(build_tokenizer(), TrimOptions("de,ko"))


def test_ids_the_model_config_names_are_kept_and_checked():
    tokenizer = build_tokenizer()
    far = max(tokenizer.get_vocab().values())
    plan = plan_vocab(tokenizer, TrimOptions("de"), [{"eos_token_id": [2, far], "suppress_tokens": [far - 1]}])
    reasons = dict(zip(plan.selection.kept, plan.selection.reasons))
    assert reasons[far] == "special" and reasons[far - 1] == "special"
    with pytest.raises(VocabError, match="bos_token_id=50256 in the model's config is outside"):
        plan_vocab(tokenizer, TrimOptions("de"), [{"bos_token_id": 50256}])


def test_ids_are_remapped_everywhere_they_appear(tmp_path):
    """Special tokens at high ids (as Llama 3's): added tokens, the post-processor's bos, padding, and
    tokenizer_config.json's added_tokens_decoder all name the new ids."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|start|>", "<|end|>"]})
    start = tokenizer.convert_tokens_to_ids("<|start|>")
    backend = tokenizer.backend_tokenizer
    backend.post_processor = processors.TemplateProcessing(single="<|start|> $A <|end|>", special_tokens=[
        ("<|start|>", start), ("<|end|>", start + 1)])
    backend.enable_padding(pad_id=start + 1, pad_token="<|end|>")
    tokenizer.save_pretrained(tmp_path / "tok")
    config_path = tmp_path / "tok" / "tokenizer_config.json"  # as transformers 4.x writes them
    config = json.loads(config_path.read_text())
    config["added_tokens_decoder"] = {str(start + k): {"content": t, "special": True} for k, t in
                                      enumerate(["<|start|>", "<|end|>"])}
    config_path.write_text(json.dumps(config))
    (tmp_path / "tok" / "added_tokens.json").write_text(json.dumps({"<|start|>": start, "<|end|>": start + 1}))
    plan = plan_vocab(tmp_path / "tok", TrimOptions("ru"))
    kept = plan.selection.kept
    assert kept[-2:] == (start, start + 1) and dict(zip(kept, plan.selection.reasons))[start] == "special"
    out = tmp_path / "out"
    out.mkdir()
    for path in (tmp_path / "tok").iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    plan.rewrite_dir(out)
    trimmed = AutoTokenizer.from_pretrained(out)
    text = HELD_OUT["ru"][0]
    ids = trimmed(text).input_ids
    assert ids[0] == len(kept) - 2 and ids[-1] == len(kept) - 1
    assert [kept[i] for i in ids] == Tokenizer.from_file(str(tmp_path / "tok" / "tokenizer.json")).encode(text).ids
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"] == {str(len(kept) - 2): {"content": "<|start|>", "special": True},
                                              str(len(kept) - 1): {"content": "<|end|>", "special": True}}
    assert json.loads((out / "added_tokens.json").read_text()) == {"<|start|>": len(kept) - 2,
                                                                   "<|end|>": len(kept) - 1}
    assert json.loads(plan.tokenizer_json)["padding"]["pad_id"] == len(kept) - 1
    assert trimmed.convert_tokens_to_ids("<|end|>") == len(kept) - 1
