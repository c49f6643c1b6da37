"""Helpers shared by the 2:4 tests."""
from tfprune import masks, ops
from tfprune.engine import decoder_layers, find_linears, weight_matrix


def prune_24_(model):
    """2:4 magnitude-prune every decoder linear of `model` in place with the torch reference mask; returns it."""
    for block in decoder_layers(model):
        for module in find_linears(block).values():
            weight = weight_matrix(module)
            ops.apply_mask_(weight, masks.nm_mask_ref(weight.float().abs(), 2, 4))
    return model
