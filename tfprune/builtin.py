"""Built-in tiny models for offline use: random weights, planted large-magnitude channels, and a
byte-level BPE tokenizer trained on the built-in corpus (`builtin:llama`, `builtin:bloom`, ...)."""
from __future__ import annotations

import functools

import torch

from .engine.discovery import block_norms, decoder_layers

__all__ = ["BUILTIN_FAMILIES", "PLANTED_CHANNELS", "PLANTED_GAIN", "build_tokenizer", "build_model"]

HIDDEN = 64
PLANTED_CHANNELS = (3, 17, 42)
PLANTED_GAIN = 20.0
VOCAB = 1024


def _config(family: str, vocab_size: int, hidden: int, layers: int, **extra):
    import transformers as tf

    heads, ffn, positions = 4, 2 * hidden, 1024
    makers = {
        "llama": lambda: tf.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn,
                                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
                                        max_position_embeddings=positions, tie_word_embeddings=False),
        "mistral": lambda: tf.MistralConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn,
                                            num_hidden_layers=layers, num_attention_heads=heads,
                                            num_key_value_heads=2, max_position_embeddings=positions),
        "qwen2": lambda: tf.Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=ffn,
                                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2,
                                        max_position_embeddings=positions),
        "bloom": lambda: tf.BloomConfig(vocab_size=vocab_size, hidden_size=hidden, n_layer=layers, n_head=heads),
        "xglm": lambda: tf.XGLMConfig(vocab_size=vocab_size, d_model=hidden, ffn_dim=ffn, num_layers=layers,
                                      attention_heads=heads, max_position_embeddings=positions),
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads,
                                      n_positions=positions),
        "opt": lambda: tf.OPTConfig(vocab_size=vocab_size, hidden_size=hidden, ffn_dim=ffn, num_hidden_layers=layers,
                                    num_attention_heads=heads, word_embed_proj_dim=hidden,
                                    max_position_embeddings=positions),
    }
    config = makers[family]()
    for key, value in extra.items():
        setattr(config, key, value)
    return config


BUILTIN_FAMILIES = ("llama", "mistral", "qwen2", "bloom", "xglm", "gpt2", "opt")


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from .calib import builtin_corpus

    corpus = builtin_corpus()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator((text for rows in corpus.sentences.values() for text in rows), trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer.to_str()


def build_tokenizer():
    """A byte-level BPE (vocab 1024) trained on the built-in corpus; deterministic, offline."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()), bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def build_model(family: str = "llama", seed: int = 0, hidden: int = HIDDEN, layers: int = 2,
                dtype: torch.dtype = torch.float32, **config_overrides):
    """A random-weight CausalLM of `family` and its tokenizer, with large-magnitude channels planted:
    the norms feeding every attention and MLP input scale channels PLANTED_CHANNELS by PLANTED_GAIN, so
    |x_j| is ~20× the others' there. Returns (model, tokenizer)."""
    import transformers as tf

    if family not in BUILTIN_FAMILIES:
        raise ValueError(f"unknown built-in model {family!r}; choose one of {', '.join(BUILTIN_FAMILIES)}")
    tokenizer = build_tokenizer()
    config = _config(family, len(tokenizer), hidden, layers, **config_overrides)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    channels = [c for c in PLANTED_CHANNELS if c < hidden]
    with torch.no_grad():
        for block in decoder_layers(model):
            for norm in block_norms(block, hidden).values():
                norm.weight[channels] = PLANTED_GAIN
    return model.to(dtype).eval(), tokenizer
