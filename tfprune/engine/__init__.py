"""Pruning engines: the sequential in-memory engine (Wanda's order), the streaming engine (layer by layer from
safetensors, resumable), and the discovery of decoder blocks and their prunable matrices."""
from .discovery import Target, check_architecture, decoder_layers, find_linears, layers_path, targets, weight_matrix
from .sequential import prune
from .streaming import prune_streaming

__all__ = ["Target", "check_architecture", "decoder_layers", "find_linears", "layers_path", "targets",
           "weight_matrix", "prune", "prune_streaming"]
