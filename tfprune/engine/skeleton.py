"""The streaming engine's model side: the skeleton on the meta device and how the checkpoint's tensors map
onto it; materializing one decoder layer, the lazily loaded modules before the first layer, and the
memory estimates the activation tier is chosen by."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..config import PruneConfig
from ..errors import TfpruneError
from .checkpoint import Checkpoint
from .discovery import decoder_layers, layers_path, targets

__all__ = ["build_skeleton", "Layout", "materialize", "free", "pre_layer_weights", "working_bytes", "layer_bytes"]


class Layout:
    """How checkpoint tensors map onto the skeleton, checked before any work. key(model key) -> checkpoint key
    (also without the base model prefix, as older checkpoints store them) or None; layers[i]: {checkpoint key:
    name inside the block, or None for a tensor the model lacks (copied through)}; non_layer: the other
    checkpoint keys. Every parameter of the model must be in the checkpoint with the shape its config implies
    (tied parameters under any of their names)."""

    def __init__(self, skeleton: nn.Module, checkpoint: Checkpoint):
        names = checkpoint.tensors
        prefix = getattr(skeleton, "base_model_prefix", "") + "."

        def key(model_key: str) -> str | None:
            if model_key in names:
                return model_key
            stripped = model_key[len(prefix):] if model_key.startswith(prefix) else None
            return stripped if stripped in names else None

        self.key = key
        path = layers_path(skeleton)
        self.layers: list[dict[str, str | None]] = []  # per layer: {checkpoint key: relative name or None}
        assigned: set[str] = set()
        for index, block in enumerate(decoder_layers(skeleton)):
            mapping: dict[str, str | None] = {}
            ckpt_prefix = None
            for rel, tensor in block.state_dict(keep_vars=True).items():
                found = key(f"{path}.{index}.{rel}")
                if found is None:
                    raise TfpruneError(_missing(checkpoint, f"{path}.{index}.{rel}"))
                _check_shape(checkpoint, found, tensor)
                mapping[found] = rel
                ckpt_prefix = found[: -len(rel)]
            for name in names:
                if name.startswith(ckpt_prefix) and name not in mapping:
                    mapping[name] = None  # in the checkpoint, not in the model: copied through
            self.layers.append(dict(sorted(mapping.items())))
            assigned.update(mapping)
        self.non_layer = [name for name in names if name not in assigned]
        aliases: dict[int, list[str]] = {}
        for name, param in skeleton.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(param), []).append(name)
        for name, param in skeleton.named_parameters():
            if name == path or name.startswith(path + "."):
                continue
            found = next((k for k in map(key, aliases[id(param)]) if k is not None), None)
            if found is None:
                raise TfpruneError(_missing(checkpoint, name))
            _check_shape(checkpoint, found, param)


def _missing(checkpoint: Checkpoint, name: str) -> str:
    return (f"{checkpoint.folder}: the checkpoint has no tensor for {name}: the weights are incomplete (a shard "
            "missing from the index?) or belong to another model, or transformers stores this model's weights "
            "in another layout (e.g. fused experts): prune it in memory (--no-streaming)")


def _check_shape(checkpoint: Checkpoint, key: str, tensor: torch.Tensor) -> None:
    stored = checkpoint.tensors[key].shape
    if tuple(stored) != tuple(tensor.shape):
        raise TfpruneError(f"{checkpoint.folder}: tensor {key} is {list(stored)} in "
                           f"{checkpoint.tensors[key].file.name}, but config.json implies {list(tensor.shape)}: "
                           "the config and the weights disagree")


def _assign(module: nn.Module, rel: str, value: torch.Tensor) -> None:
    owner = module.get_submodule(rel.rpartition(".")[0]) if "." in rel else module
    attr = rel.rpartition(".")[2]
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[attr] = value


def materialize(block: nn.Module, tensors: dict[str, torch.Tensor], device: torch.device) -> None:
    """Give `block` real tensors {relative name: CPU tensor}, cast to the skeleton's dtypes, on `device`;
    its non-persistent buffers follow to the device."""
    current = block.state_dict(keep_vars=True)
    for rel, tensor in tensors.items():
        _assign(block, rel, tensor.to(device=device, dtype=current[rel].dtype))
    for module in block.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and not buffer.is_meta and buffer.device != device:
                module._buffers[name] = buffer.to(device)


@contextmanager
def pre_layer_weights(skeleton: nn.Module, checkpoint: Checkpoint, layout: Layout, device: torch.device):
    """Inside: every module outside the decoder layers loads its parameters from the checkpoint when it is
    first called (the LM head and final norm never are while capturing); after, they are meta again."""
    path = layers_path(skeleton)
    aliases: dict[int, list[str]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    loaded, handles = [], []

    def loader(module: nn.Module):
        def load(_module, _args):
            for attr, param in list(module._parameters.items()):
                if param is None or not param.is_meta:
                    continue
                key = next((k for k in map(layout.key, aliases[id(param)]) if k is not None), None)
                if key is None:
                    raise TfpruneError(f"the checkpoint has no tensor for {aliases[id(param)][0]}")
                value = checkpoint.load([key])[key].to(device=device, dtype=param.dtype)
                loaded.append((module, attr, param))
                module._parameters[attr] = nn.Parameter(value, requires_grad=False)

        return load

    for name, module in skeleton.named_modules():
        if name == path or name.startswith(path + "."):
            continue
        for buffer_name, buffer in module._buffers.items():
            if buffer is not None and not buffer.is_meta and buffer.device != device:
                module._buffers[buffer_name] = buffer.to(device)
        if any(p is not None and p.is_meta for p in module._parameters.values()):
            handles.append(module.register_forward_pre_hook(loader(module)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, attr, param in loaded:
            module._parameters[attr] = param


def working_bytes(skeleton: nn.Module, config: PruneConfig, batch_tokens: int, itemsize: int) -> int:
    """An estimate of the transient device memory of one layer step, the larger of: one batch's forward (three
    MLP intermediates, the statistics' fp32 copy and square of the widest linear input, a few hidden-size
    tensors; eager attention's [B, heads, T, T] scores and probabilities) and pruning the largest linear on
    the torch path (fp32 scores, sort values, int64 indices, bool mask: 17 B per weight; plus in² × 8 B per
    linear for SparseGPT's Hessians and their factors when its update is on). benchmarks/bench_streaming.py
    compares it with a measured run."""
    matrices = [target.matrix() for target in targets(decoder_layers(skeleton)[0]).values()]
    widest = max(max(w.shape) for w in matrices)
    hidden = getattr(skeleton.config, "hidden_size", widest)
    forward = batch_tokens * (3 * widest * itemsize + 2 * widest * 4 + 4 * hidden * itemsize)
    if getattr(skeleton.config, "_attn_implementation", "eager") == "eager":
        heads = getattr(skeleton.config, "num_attention_heads", 1)
        forward += 2 * config.batch_size * heads * config.seqlen ** 2 * itemsize
    pruning = 17 * max(w.numel() for w in matrices)
    if getattr(config, "update", "none") == "obs":
        pruning += sum(w.shape[-1] ** 2 * 8 for w in matrices)
    return max(forward, pruning)


def layer_bytes(skeleton: nn.Module, itemsize: int) -> int:
    return max(sum(p.numel() for p in block.parameters()) for block in decoder_layers(skeleton)) * itemsize


def build_skeleton(hf_config, dtype: torch.dtype) -> nn.Module:
    """The CausalLM of `hf_config` with every parameter on the meta device (accelerate's init_empty_weights;
    buffers, e.g. rotary frequencies, are real), weights tied as the config says, in eval mode without a KV
    cache."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    skeleton.tie_weights()  # as from_pretrained does: a tied LM head is the embeddings' parameter
    skeleton.eval()
    skeleton.config.use_cache = False
    return skeleton


def free(block: nn.Module) -> None:
    """Back to the meta device: the layer's memory is released."""
    block.to("meta")
