"""Helpers of the vocabulary-trim tests: a SentencePiece-style BPE tokenizer (▁ for spaces, `<0xNN>` byte
fallback, as Gemma's) trained on the built-in corpus, a tiny Gemma 3 model on it, and held-out sentences that
the built-in corpus does not contain."""
import functools
import json

import torch

# Written for these tests; none is in tfprune/calib/data (checked by test_held_out_text_is_not_in_the_corpus).
HELD_OUT = {
    "de": ["Gestern Abend haben wir im Garten gegrillt, obwohl es ein bisschen geregnet hat.",
           "Die Straßenbahn nach Köln fährt um 7:45 Uhr ab – pünktlich wie immer?",
           "Größere Bäume spenden im Sommer mehr Schatten als kleine Sträucher."],
    "fr": ["Nous avons mangé des crêpes au beurre salé pendant les vacances en Bretagne.",
           "« Où est la gare ? » demanda-t-elle, un peu inquiète, à l'œil nu.",
           "Le garçon a reçu trois cadeaux pour son anniversaire à Noël."],
    "es": ["¿Cuántos años tiene tu abuela? ¡Ya cumplió noventa y dos!",
           "El niño español comió una paella enorme junto al río Ebro.",
           "Mañana por la mañana iremos al mercado a comprar piñas y limones."],
    "ru": ["Вчера вечером мы долго гуляли по набережной и ели мороженое.",
           "Ёжик в тумане — известный советский мультфильм 1975 года.",
           "Сколько стоит билет на поезд до Санкт-Петербурга?"],
    "zh": ["我们明天早上八点在图书馆门口见面，然后一起去吃早饭。",
           "这只小猫非常喜欢在阳光下睡觉。",
           "他用了三个小时才把这本厚厚的小说读完。"],
    "ja": ["明日の朝、駅前のカフェでコーヒーを飲みながら新聞を読みます。",
           "このラーメン屋さんはいつも行列ができています。",
           "子どもたちは公園でサッカーをして遊んでいました。"],
}
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


@functools.lru_cache(maxsize=1)
def _spm_tokenizer_json() -> str:
    """BPE over SentencePiece-style pieces (spaces -> ▁, a piece starts at each ▁), byte fallback through
    256 `<0xNN>` vocabulary tokens (ordinary tokens, not added ones, as in Gemma), trained on the corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from tfprune.calib import builtin_corpus

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("\u2581?[^\u2581]+|\u2581+"), behavior="isolated")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.BpeTrainer(vocab_size=3000, special_tokens=SPECIALS, show_progress=False)
    tokenizer.train_from_iterator((text for rows in builtin_corpus().sentences.values() for text in rows), trainer)
    data = json.loads(tokenizer.to_str())
    vocab = data["model"]["vocab"]
    for value in range(256):
        vocab.setdefault(f"<0x{value:02X}>", len(vocab))
    return json.dumps(data)


def spm_tokenizer():
    """A transformers tokenizer over _spm_tokenizer_json (bos prepended, Gemma's special tokens)."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_str(_spm_tokenizer_json())
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A",
                                                           special_tokens=[("<bos>", backend.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_gemma(tokenizer, seed: int = 0):
    """A random Gemma 3 text model (tied embeddings, 2 layers, hidden 64) for `tokenizer`, fp32, eval."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                              sliding_window=16, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return Gemma3ForCausalLM(config).eval()
