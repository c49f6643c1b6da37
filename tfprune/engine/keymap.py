"""Checkpoint keys ↔ model keys, as transformers maps them when it loads a checkpoint.

transformers 5 does not always load a tensor under its stored name: it renames some (GPT-NeoX's `embed_out` is
the model's `lm_head`, legacy `gamma`/`beta` are `weight`/`bias`) and converts others (Mixtral stores every
expert's w1/w2/w3, the model holds fused 3-D `gate_up_proj`/`down_proj`). The streaming engine reads and writes
checkpoints tensor by tensor, so it applies the same mapping itself, with transformers' own transforms
(`conversion_mapping.get_model_conversion_mapping`, `core_model_loading`), group by group: a group is the set of
checkpoint tensors that make some model tensors. Writing back uses transformers' `revert_weight_conversion`, so
the output keeps the input's layout (what `save_pretrained` writes). transformers 4 has no such mapping: keys map
to themselves (with or without the base model prefix, as older checkpoints store them).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import TfpruneError

__all__ = ["KeyGroup", "KeyMap"]


@dataclass
class KeyGroup:
    """sources: checkpoint keys (natural order: expert 0, 1, ...); patterns: the converter source pattern each
    matched (None: a plain renaming, one source, one target); targets: the model keys the group makes."""

    sources: list[str]
    patterns: list[str | None] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    converter: object | None = None

    @property
    def renaming(self) -> bool:
        return self.converter is None


def _transforms(model: nn.Module):
    """(renamings, converters) of transformers >= 5 for `model`, or None on transformers 4."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:
        return None
    mapping = get_model_conversion_mapping(model, add_legacy=True)
    return ([t for t in mapping if isinstance(t, WeightRenaming)],
            [t for t in mapping if isinstance(t, WeightConverter)])


def _natural(key: str):
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split(".")]


class KeyMap:
    """How the tensors of a checkpoint (name -> (dtype, shape)) make the tensors of `model` (a meta skeleton).

    groups: every group of checkpoint tensors that makes model tensors; unmatched: checkpoint keys that make no
    model tensor (copied through by the streaming engine). The mapping is checked on meta tensors when built:
    every target has the shape the model's config implies."""

    def __init__(self, model: nn.Module, tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]]):
        self.model = model
        self.expected = model.state_dict()  # meta tensors, tied parameters under every name
        prefix = getattr(model, "base_model_prefix", "")
        transforms = _transforms(model)
        self.groups: list[KeyGroup] = []
        self.unmatched: list[str] = []
        by_target: dict[str, KeyGroup] = {}
        for key in sorted(tensors, key=_natural):
            target, pattern = self._target(key, transforms, prefix)
            if target is None:
                self.unmatched.append(key)
                continue
            group = by_target.get(target)
            if group is None:
                converter = None if pattern is None else self._converter(transforms[1], pattern)
                group = by_target[target] = KeyGroup([], [], [target], converter)
                self.groups.append(group)
            elif group.renaming:
                raise TfpruneError(f"checkpoint tensors {group.sources[0]} and {key} both load as {target}")
            group.sources.append(key)
            group.patterns.append(pattern)
        self.group_of: dict[str, KeyGroup] = {}
        meta = {key: torch.empty(shape, dtype=dtype, device="meta") for key, (dtype, shape) in tensors.items()}
        for group in self.groups:
            made = self.to_model(group, meta)
            group.targets = list(made)
            for target, tensor in made.items():
                if target not in self.expected:
                    raise TfpruneError(f"checkpoint tensors {group.sources[:2]} make {target}, which the model lacks")
                if tuple(tensor.shape) != tuple(self.expected[target].shape):
                    raise TfpruneError(f"tensor {target} (from {', '.join(group.sources[:2])}) is "
                                       f"{list(tensor.shape)} in the checkpoint, but config.json implies "
                                       f"{list(self.expected[target].shape)}: the config and the weights disagree")
                self.group_of[target] = group

    def _target(self, key: str, transforms, prefix: str) -> tuple[str | None, str | None]:
        """(model key, converter source pattern or None) of one checkpoint key; (None, None) if none."""
        if transforms is not None:
            from transformers.core_model_loading import rename_source_key

            target, pattern = rename_source_key(key, *transforms, prefix, self.expected)
            if target in self.expected:
                return target, pattern
        for candidate in (key, f"{prefix}.{key}", key[len(prefix) + 1:] if key.startswith(prefix + ".") else None):
            if candidate in self.expected:
                return candidate, None
        return None, None

    @staticmethod
    def _converter(converters, pattern: str):
        return next(c for c in converters if pattern in c.source_patterns)

    def to_model(self, group: KeyGroup, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{model key: tensor} that the group's checkpoint tensors (`tensors`, by checkpoint key) make."""
        if group.renaming:
            return {group.targets[0]: tensors[group.sources[0]]}
        converter = copy.deepcopy(group.converter)
        first = group.targets[0]
        for source, pattern in zip(group.sources, group.patterns):
            converter.add_tensor(first, source, pattern, tensors[source])
        made = converter.convert(first, model=self.model, config=self.model.config)
        return {key: value[0] if isinstance(value, list) else value for key, value in made.items()}

    def to_checkpoint(self, group: KeyGroup, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{checkpoint key: tensor} of the group from its model tensors (inverse of to_model)."""
        if group.renaming:
            return {group.sources[0]: tensors[group.targets[0]]}
        from transformers.core_model_loading import revert_weight_conversion

        stored = revert_weight_conversion(self.model, {key: tensors[key] for key in group.targets})
        if set(stored) != set(group.sources):
            raise TfpruneError(f"writing {group.targets[0]} back gives {sorted(stored)[:2]}..., not the checkpoint's "
                               f"{group.sources[:2]}...: tfprune cannot stream this model; prune it in memory")
        return stored

    def checkpoint_key(self, model_key: str) -> str | None:
        """The one checkpoint key a model key is stored under (a renaming), or None (converted, or absent)."""
        group = self.group_of.get(model_key)
        return group.sources[0] if group is not None and group.renaming else None
