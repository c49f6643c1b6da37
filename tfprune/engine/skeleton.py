"""The streaming engine's model side: the skeleton on the meta device and how the checkpoint's tensors map
onto it; materializing one decoder layer, the lazily loaded modules before the first layer, and the
memory estimates the activation tier is chosen by."""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..config import PruneConfig
from ..errors import TfpruneError
from .checkpoint import DTYPES, Checkpoint
from .discovery import decoder_layers, layers_path, targets
from .keymap import KeyGroup, KeyMap

__all__ = ["build_skeleton", "Layout", "materialize", "free", "pre_layer_weights", "working_bytes", "layer_bytes"]


class Layout:
    """How the checkpoint's tensors make the skeleton's, checked before any work (tfprune.engine.keymap: the
    renamings and conversions transformers applies when loading).

    layers[i]: the key groups that make decoder layer i's tensors; passthrough[i]: checkpoint keys under layer
    i's prefix that make no model tensor (copied through); layer_keys[i]: every checkpoint key of layer i;
    non_layer: the other checkpoint keys (embeddings, final norm, LM head...). Every tensor of every decoder
    layer, and every parameter outside them (tied ones under any of their names), must come from the checkpoint
    with the shape its config implies."""

    def __init__(self, skeleton: nn.Module, checkpoint: Checkpoint):
        self.keymap = KeyMap(skeleton, {name: (DTYPES.get(info.dtype, torch.uint8), info.shape)
                                        for name, info in checkpoint.tensors.items()})
        self.path = layers_path(skeleton)
        blocks = decoder_layers(skeleton)
        self.layers: list[list[KeyGroup]] = [[] for _ in blocks]
        outside: list[KeyGroup] = []
        for group in self.keymap.groups:
            index = self.layer_of(group.targets[0])
            if index is not None and any(self.layer_of(t) != index for t in group.targets):
                raise TfpruneError(f"checkpoint tensors {group.sources[:2]} make tensors of several decoder layers: "
                                   "tfprune cannot stream this model; prune it in memory")
            (outside if index is None else self.layers[index]).append(group)
        for index, block in enumerate(blocks):
            made = {t for group in self.layers[index] for t in group.targets}
            for rel in block.state_dict():
                if f"{self.path}.{index}.{rel}" not in made:
                    raise TfpruneError(_missing(checkpoint, f"{self.path}.{index}.{rel}"))
        prefixes = [_common_prefix([s for g in groups for s in g.sources]) for groups in self.layers]
        self.passthrough: list[list[str]] = [[] for _ in blocks]
        unassigned = []
        for key in self.keymap.unmatched:
            index = next((i for i, p in enumerate(prefixes) if p and key.startswith(p)), None)
            (unassigned if index is None else self.passthrough[index]).append(key)
        self.layer_keys = [sorted([s for g in groups for s in g.sources] + extra)
                           for groups, extra in zip(self.layers, self.passthrough)]
        self.non_layer = [key for key in checkpoint.tensors
                          if key in set(unassigned) | {s for g in outside for s in g.sources}]
        aliases: dict[int, list[str]] = {}
        for name, param in skeleton.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(param), []).append(name)
        self.aliases = aliases
        for name, param in skeleton.named_parameters():
            if self.layer_of(name) is None and not any(a in self.keymap.group_of for a in aliases[id(param)]):
                raise TfpruneError(_missing(checkpoint, name))

    def layer_of(self, model_key: str) -> int | None:
        """The decoder layer a model key belongs to, or None."""
        if not model_key.startswith(self.path + "."):
            return None
        index = model_key[len(self.path) + 1:].split(".", 1)[0]
        return int(index) if index.isdigit() else None

    def layer_tensors(self, index: int, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{name inside block `index`: tensor} from the layer's checkpoint tensors {checkpoint key: tensor}."""
        prefix = f"{self.path}.{index}."
        return {key[len(prefix):]: value for group in self.layers[index]
                for key, value in self.keymap.to_model(group, tensors).items()}

    def checkpoint_key(self, model_key: str) -> str | None:
        """The checkpoint key a model tensor is stored under one to one (None when converted)."""
        return self.keymap.checkpoint_key(model_key)


def _common_prefix(keys: list[str]) -> str | None:
    """The dotted prefix all keys share ("model.layers.3."), None for no keys."""
    if not keys:
        return None
    parts = [key.split(".") for key in keys]
    common = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common) + "." if common else None


def _missing(checkpoint: Checkpoint, name: str) -> str:
    return (f"{checkpoint.folder}: the checkpoint has no tensor for {name}: the weights are incomplete (a shard "
            "missing from the index?) or belong to another model")


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
                name = next((a for a in aliases[id(param)] if a in layout.keymap.group_of), None)
                if name is None:
                    raise TfpruneError(f"the checkpoint has no tensor for {aliases[id(param)][0]}")
                group = layout.keymap.group_of[name]
                value = layout.keymap.to_model(group, checkpoint.load(group.sources))[name]
                value = value.to(device=device, dtype=param.dtype)
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
