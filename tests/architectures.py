"""Real model configurations (the config.json of each checkpoint on the hub, the fields that shape the model),
shrunk to a few layers of width 64 for random-weight tests. Sliding windows become 16 tokens so that a
48-token calibration exceeds them."""
from __future__ import annotations

import torch

from tfprune.builtin import build_tokenizer

REAL_CONFIGS = {
    "llama3.2": {  # meta-llama/Llama-3.2-1B
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "hidden_act": "silu",
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True, "vocab_size": 128256},
    "qwen2.5": {  # Qwen/Qwen2.5-0.5B (sliding windows on above max_window_layers, as Qwen2 configs allow)
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 32768,
        "max_window_layers": 1, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "use_sliding_window": True, "tie_word_embeddings": True, "vocab_size": 151936},
    "qwen3": {  # Qwen/Qwen3-0.6B
        "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
        "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "rope_theta": 1000000, "attention_bias": False,
        "tie_word_embeddings": True, "use_sliding_window": False, "vocab_size": 151936},
    "gemma2": {  # google/gemma-2-2b
        "model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
        "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
        "sliding_window": 4096, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
        "vocab_size": 256000},
    "gemma3": {  # google/gemma-3-270m (the real model of ../shared/models)
        "model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 32768, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "sliding_window": 512,
        "layer_types": ["sliding_attention"] * 5 + ["full_attention"], "tie_word_embeddings": True,
        "vocab_size": 262144},
    "phi3": {  # microsoft/Phi-3-mini-4k-instruct (fused qkv_proj and gate_up_proj)
        "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 2047, "tie_word_embeddings": False, "vocab_size": 32064},
    "mistral": {  # mistralai/Mistral-7B-v0.1
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu", "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
        "vocab_size": 32000},
    "olmo2": {  # allenai/OLMo-2-1124-7B (q/k norms, norms after attention and MLP)
        "model_type": "olmo2", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "hidden_act": "silu", "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-06, "rope_theta": 500000, "attention_bias": False, "tie_word_embeddings": False,
        "vocab_size": 100352},
    "gpt-neox": {  # EleutherAI/pythia-160m (fused query_key_value, parallel residual, partial rotary)
        "model_type": "gpt_neox", "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "hidden_act": "gelu", "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
        "rotary_emb_base": 10000, "rotary_pct": 0.25, "use_parallel_residual": True, "tie_word_embeddings": False,
        "vocab_size": 50304},
    "mixtral": {  # mistralai/Mixtral-8x7B-v0.1 (8 experts, top 2)
        "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8, "num_experts_per_tok": 2,
        "hidden_act": "silu", "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0,
        "router_aux_loss_coef": 0.02, "tie_word_embeddings": False, "vocab_size": 32000},
    "qwen2-moe": {  # Qwen/Qwen1.5-MoE-A2.7B (60 experts, top 4, a gated shared expert)
        "model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632, "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632, "num_hidden_layers": 24, "num_attention_heads": 16,
        "num_key_value_heads": 16, "num_experts": 60, "num_experts_per_tok": 4, "decoder_sparse_step": 1,
        "norm_topk_prob": False, "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "tie_word_embeddings": False, "vocab_size": 151936},
}
DENSE = [name for name in REAL_CONFIGS if "moe" not in name and name != "mixtral"]
MOE = ["mixtral", "qwen2-moe"]
WINDOW = 16
SHRINK = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "vocab_size": 1024,
          "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "num_local_experts": 4,
          "num_experts": 4}


def shrunk_config(name: str, layers: int = 3):
    """The transformers config of REAL_CONFIGS[name] at test size (layers, width 64, vocab 1024 = the built-in
    tokenizer's), every structural field kept."""
    from transformers import AutoConfig

    real = dict(REAL_CONFIGS[name])
    model_type = real.pop("model_type")
    options = {**real, **{key: value for key, value in SHRINK.items() if key in real}, "num_hidden_layers": layers}
    options["num_key_value_heads"] = min(real.get("num_key_value_heads", 4), 2) if "num_key_value_heads" in real else 4
    if "head_dim" in real:
        options["head_dim"] = 16
    if real.get("sliding_window"):
        options["sliding_window"] = WINDOW
    if "layer_types" in real:
        options["layer_types"] = (real["layer_types"] * layers)[:layers - 1] + ["full_attention"]
    if "num_experts_per_tok" in real:
        options["num_experts_per_tok"] = 2
    tokenizer = build_tokenizer()
    options.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    return AutoConfig.for_model(model_type, **options)


def build(name: str, layers: int = 3, seed: int = 0):
    """(random-weight model of REAL_CONFIGS[name] at test size, the built-in tokenizer)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(shrunk_config(name, layers), dtype=torch.float32)
    return model.eval(), build_tokenizer()
