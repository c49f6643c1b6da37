"""Pruning engines: the sequential in-memory engine (Wanda's order), the streaming engine (layer by layer from
safetensors, resumable) and the model-family adapters."""
from .adapters import ADAPTERS, adapter_for, decoder_layers, find_linears, weight_matrix
from .sequential import prune
from .streaming import prune_streaming

__all__ = ["ADAPTERS", "adapter_for", "decoder_layers", "find_linears", "weight_matrix", "prune", "prune_streaming"]
