"""Output formats of the streaming engine: which tensors a checkpoint tensor becomes, decided before any work
(with --keep-dense once the layer plan is known, before any shard is written: its dense matrices stay dense).

'dense': every tensor as it is (pruned weights masked). 'compressed-tensors': as tfprune.sparse.checkpoint
writes it from memory (save_compressed_tensors): every nn.Linear weight that is 2:4 in a supported dtype
becomes `<prefix>.shape` (int64 [2, 1]), `<prefix>.compressed` ([out, in/2]) and `<prefix>.bitmask` (uint8
[out, ceil(in/8)]), packed by tfprune.sparse.pack; the other nn.Linear modules go to the sparsity_config's
`ignore` list; transformers' Conv1D stays dense. Same tensors and config entries as the in-memory writer.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import torch
from torch import nn

from ..errors import ConfigError, TfpruneError
from .discovery import decoder_layers, layers_path, targets
from .checkpoint import CODES, DTYPES, Checkpoint

__all__ = ["OUTPUT_FORMATS", "OutputFormat"]

OUTPUT_FORMATS = ("dense", "compressed-tensors")


class OutputFormat:
    """packed: checkpoint keys of the weights written packed; ignore: names of the nn.Linear modules left
    dense (compressed-tensors' sparsity_config.ignore); counted: {checkpoint key: times} of the nn.Linear
    weights whose zeros make global_sparsity (as save_compressed_tensors counts them: every nn.Linear weight,
    packed or not, a tied LM head through the tensor it shares). dense: per layer, the names of the matrices the
    layer plan keeps dense (LayerPlan.dense), written dense, not packed."""

    def __init__(self, name: str, skeleton: nn.Module, layout, checkpoint: Checkpoint, config, dense=None):
        if name not in OUTPUT_FORMATS:
            raise ConfigError(f"output format {name!r} is not supported; choose one of {', '.join(OUTPUT_FORMATS)}")
        self.name = name
        self.packed: set[str] = set()
        self.ignore: list[str] = []
        self.counted: Counter[str] = Counter()
        if name == "compressed-tensors":
            if config.nm != (2, 4):
                raise ConfigError(f"format compressed-tensors writes 2:4 weights: it needs pattern 2:4, got "
                                  f"{config.pattern}")
            self._plan_packing(skeleton, layout, checkpoint, dense or [()] * len(decoder_layers(skeleton)))

    def _plan_packing(self, skeleton: nn.Module, layout, checkpoint: Checkpoint, dense) -> None:
        from ..sparse.formats import SparseFormatError, first_violation, format_tile

        def packable(dtype: torch.dtype, shape, weight: torch.Tensor | None = None) -> bool:
            try:
                rows_tile, cols_tile, n, m = format_tile("bitmask", dtype)
            except SparseFormatError:
                return False
            if shape[0] % rows_tile or shape[1] % cols_tile:
                return False
            return weight is None or first_violation(weight, n, m) is None

        path = layers_path(skeleton)
        for index, block in enumerate(decoder_layers(skeleton)):
            pruned = {target.module_name for name, target in targets(block).items()
                      if target.is_linear and name not in dense[index]}
            for name, module in block.named_modules():
                if not isinstance(module, nn.Linear):
                    continue  # Conv1D and fused experts: written dense, as the in-memory writer does
                key = layout.checkpoint_key(f"{path}.{index}.{name}.weight")
                if key is None:
                    self.ignore.append(f"{path}.{index}.{name}")  # stored converted: written as the checkpoint has it
                    continue
                info = checkpoint.tensors[key]
                self.counted[key] += 1
                if name in pruned and packable(DTYPES[info.dtype], info.shape):  # pruned 2:4 by the run
                    self.packed.add(key)
                else:
                    self.ignore.append(f"{path}.{index}.{name}")
        aliases: dict[int, list[str]] = {}
        for param_name, param in skeleton.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(param), []).append(param_name)
        for name, module in skeleton.named_modules():
            if not isinstance(module, nn.Linear) or name == path or name.startswith(path + "."):
                continue
            own = layout.checkpoint_key(f"{name}.weight")
            if own is None:  # tied to a tensor stored under another name (the embeddings): left dense
                shared = [k for k in map(layout.checkpoint_key, aliases[id(module.weight)]) if k is not None]
                if not shared:
                    raise TfpruneError(f"the checkpoint has no tensor for {name}.weight")
                self.ignore.append(name)
                self.counted[shared[0]] += 1
                continue
            self.counted[own] += 1
            weight = checkpoint.load([own])[own]
            if packable(weight.dtype, tuple(weight.shape), weight):
                self.packed.add(own)
            else:
                self.ignore.append(name)
        if not self.packed:
            raise SparseFormatError("no 2:4-sparse nn.Linear in the model: nothing to write as sparse-24-bitmask "
                                    f"({len(self.ignore)} linear layers left dense; Conv1D layers stay dense)")

    def outputs(self, key: str, dtype: str, shape: tuple[int, ...]) -> list[tuple[str, str, tuple[int, ...]]]:
        """The (name, dtype code, shape) written for checkpoint tensor `key`."""
        if key not in self.packed:
            return [(key, dtype, tuple(shape))]
        prefix = key[: -len(".weight")]
        rows, cols = shape
        return [(f"{prefix}.shape", "I64", (2, 1)), (f"{prefix}.compressed", dtype, (rows, cols // 2)),
                (f"{prefix}.bitmask", "U8", (rows, math.ceil(cols / 8)))]

    def names(self, key: str, checkpoint: Checkpoint) -> list[str]:
        info = checkpoint.tensors[key]
        return [name for name, _, _ in self.outputs(key, info.dtype, info.shape)]

    def encode(self, key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        """{output name: CPU tensor} of checkpoint tensor `key` with value `tensor`."""
        if key not in self.packed:
            return {key: tensor}
        from ..sparse.formats import pack

        packed = pack(tensor.contiguous(), "bitmask")
        prefix = key[: -len(".weight")]
        return {f"{prefix}.shape": torch.tensor(packed.shape).reshape(-1, 1), f"{prefix}.compressed": packed.values,
                f"{prefix}.bitmask": packed.meta}

    def decode(self, key: str, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The dense value of checkpoint tensor `key` from its output tensors (inverse of encode)."""
        if key not in self.packed:
            return outputs[key]
        from ..sparse.formats import PackedWeight, unpack

        prefix = key[: -len(".weight")]
        values = outputs[f"{prefix}.compressed"]
        shape = tuple(int(v) for v in outputs[f"{prefix}.shape"].flatten().tolist())
        if CODES.get(values.dtype) is None:
            raise TfpruneError(f"{key}: packed values of unsupported dtype {values.dtype}")
        return unpack(PackedWeight("bitmask", shape, values.dtype, values, outputs[f"{prefix}.bitmask"]))

    def config_json(self, source: str, zeros: int, total: int) -> str | None:
        """config.json of the output: None (the source's, unchanged) for dense; with compressed-tensors'
        quantization_config (as save_compressed_tensors writes it) otherwise."""
        if self.name == "dense":
            return None
        from ..sparse.checkpoint import COMPRESSED_TENSORS_VERSION, sparsity_config

        config = json.loads(source)
        config["quantization_config"] = {
            "quant_method": "compressed-tensors", "version": COMPRESSED_TENSORS_VERSION,
            "sparsity_config": sparsity_config(self.ignore, zeros / max(total, 1)), "transform_config": {}}
        return json.dumps(config, indent=2, sort_keys=True) + "\n"
