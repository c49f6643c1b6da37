"""Pruning engines: the sequential in-memory engine (Wanda's order) and the model-family adapters."""
from .adapters import ADAPTERS, adapter_for, decoder_layers, find_linears, weight_matrix
from .sequential import prune

__all__ = ["ADAPTERS", "adapter_for", "decoder_layers", "find_linears", "weight_matrix", "prune"]
