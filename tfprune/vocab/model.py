"""Trimming a model in memory: the input embeddings [V, H] and the LM head [V, H] (+ bias [V]) keep the rows
of the kept ids, in their order (a tied head stays the embeddings' parameter); vocab_size and every token id
of the config and the generation config follow. Also the same id remapping for config dicts (config.json,
generation_config.json), used by the checkpoint writer."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import VocabError

__all__ = ["config_token_ids", "remap_config_dict", "trim_model_"]

_ID_LISTS = ("suppress_tokens", "begin_suppress_tokens")


def _is_id_key(key: str) -> bool:
    return key.endswith("_token_id") or key in _ID_LISTS


def _ids(value) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [item for item in value if isinstance(item, int) and not isinstance(item, bool)]
    return []


def config_token_ids(config: dict) -> dict[int, str]:
    """{token id: the key naming it} of a config dict (bos/eos/pad/... *_token_id, ints or lists, also in a
    nested text_config; suppress_tokens lists), for the selection to keep."""
    found = {}
    for key, value in config.items():
        if isinstance(value, dict) and key == "text_config":
            found.update(config_token_ids(value))
        elif _is_id_key(key):
            for index in _ids(value):
                if index >= 0:
                    found.setdefault(index, key)
    return found


def _remap_value(value, new_id: dict[int, int], key: str):
    def one(index: int) -> int:
        if index < 0:
            return index
        if index not in new_id:
            raise VocabError(f"{key}={index} is not a kept token id")
        return new_id[index]

    if isinstance(value, int) and not isinstance(value, bool):
        return one(value)
    if isinstance(value, (list, tuple)):
        return type(value)(one(item) if isinstance(item, int) and not isinstance(item, bool) else item
                           for item in value)
    return value


def remap_config_dict(config: dict, new_id: dict[int, int], vocab_size: int | None = None) -> dict:
    """A copy of a config dict with every token id remapped (and vocab_size set where the dict has one)."""
    result = {}
    for key, value in config.items():
        if isinstance(value, dict) and key == "text_config":
            result[key] = remap_config_dict(value, new_id, vocab_size)
        elif _is_id_key(key):
            result[key] = _remap_value(value, new_id, key)
        elif key == "vocab_size" and vocab_size is not None:
            result[key] = vocab_size
        else:
            result[key] = value
    return result


def _remap_object(config, new_id: dict[int, int], vocab_size: int | None) -> None:
    """In place on a transformers PretrainedConfig or GenerationConfig (their attributes)."""
    for key, value in list(vars(config).items()):
        if _is_id_key(key) and value is not None:
            setattr(config, key, _remap_value(value, new_id, key))
        elif key == "vocab_size" and vocab_size is not None:
            setattr(config, key, vocab_size)
        elif key == "text_config" and value is not None and not isinstance(value, dict):
            _remap_object(value, new_id, vocab_size)


@torch.no_grad()
def trim_model_(model: nn.Module, kept: tuple[int, ...]) -> None:
    """Keep the embedding rows and LM head rows of the original ids `kept` (ascending; new id i = kept[i]),
    in place: nn.Embedding weight [V, H] -> [len(kept), H] (padding_idx remapped), the output nn.Linear weight
    [V, H] -> [len(kept), H] and bias [V] -> [len(kept)] (tied: the embeddings' new parameter again);
    config.vocab_size, every token id of config and generation_config, and the modules' vocab_size follow."""
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embeddings, nn.Embedding):
        raise VocabError(f"cannot trim the vocabulary: the input embeddings are a {type(embeddings).__name__}, "
                         "not an nn.Embedding")
    if head is not None and not isinstance(head, nn.Linear):
        raise VocabError(f"cannot trim the vocabulary: the LM head is a {type(head).__name__}, not an nn.Linear")
    rows = embeddings.weight.shape[0]
    if kept[-1] >= rows:
        raise VocabError(f"the tokenizer's id {kept[-1]} has no embedding row (the embeddings have {rows})")
    old_size = getattr(model.config, "vocab_size", rows)
    new_id = {old: new for new, old in enumerate(kept)}
    index = torch.tensor(kept, dtype=torch.long, device=embeddings.weight.device)
    tied = head is not None and head.weight is embeddings.weight
    embeddings.weight = nn.Parameter(embeddings.weight.index_select(0, index), requires_grad=False)
    embeddings.num_embeddings = len(kept)
    if embeddings.padding_idx is not None:
        embeddings.padding_idx = new_id.get(embeddings.padding_idx)
    if head is not None:
        if tied:
            head.weight = embeddings.weight
        else:
            head.weight = nn.Parameter(head.weight.index_select(0, index.to(head.weight.device)), requires_grad=False)
        if head.bias is not None:
            head.bias = nn.Parameter(head.bias.index_select(0, index.to(head.bias.device)), requires_grad=False)
        head.out_features = len(kept)
    _remap_object(model.config, new_id, len(kept))
    if getattr(model, "generation_config", None) is not None:
        _remap_object(model.generation_config, new_id, None)
    for module in model.modules():
        if getattr(module, "vocab_size", None) == old_size and isinstance(module.vocab_size, int):
            module.vocab_size = len(kept)
