"""What each decoder block receives: the calibration batches at the input of the first block, and every block's
own arguments.

transformers passes each decoder layer its own arguments: Gemma 2/3 give sliding-window layers another attention
mask and other rotary embeddings than full-attention layers, Qwen2 switches to sliding windows above
`max_window_layers`, hybrid models mix layer types. Replaying the first block's arguments to every block is wrong
once the sequence is longer than the window. Masks, position embeddings and ALiBi do not depend on the hidden
states, so one forward pass per batch in which every block is replaced by a recorder that passes its input
through records the arguments of every block; the recorder of the last block stops the pass (no LM head).

A recorder returns what the model expects from a block: the hidden states, or (as BLOOM's blocks do) a tuple
whose first item they are. That form is learnt once from a real forward of the first block (`output_form`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .discovery import decoder_layers

__all__ = ["LayerInput", "capture_layer_inputs", "first_block_input", "run_block", "output_form", "OutputForm",
           "arguments_nbytes"]

OutputForm = Callable[[torch.Tensor], object]  # hidden states [B, T, H] -> what the block returns


@dataclass
class LayerInput:
    """One calibration batch at the input of the current decoder block.

    hidden: [B, T, H]; arguments[i]: (args after the hidden states, kwargs) that the model passes to block i
    (masks, position embeddings, alibi...); token_mask: [B*T] bool, True = real token; stream: 'translation' |
    'contrast'."""

    stream: str
    hidden: torch.Tensor
    arguments: list[tuple[tuple, dict]]
    token_mask: torch.Tensor


class _StopForward(Exception):
    pass


def _split(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    kwargs = dict(kwargs)
    hidden = args[0] if args else kwargs.pop("hidden_states")
    return hidden, tuple(args[1:]), kwargs


def run_block(block: nn.Module, item: LayerInput, index: int) -> torch.Tensor:
    """Block `index`'s output hidden states [B, T, H] for one calibration batch."""
    args, kwargs = item.arguments[index]
    out = block(item.hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def output_form(block: nn.Module, hidden: torch.Tensor, args: tuple, kwargs: dict) -> OutputForm:
    """How `block` shapes its output, learnt from one real forward on (hidden, args, kwargs): a function
    mapping hidden states to an output of the same form."""
    out = block(hidden, *args, **kwargs)
    if isinstance(out, torch.Tensor):
        return lambda states: states
    rest = tuple(out[1:])
    return lambda states: (states, *rest)


def first_block_input(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
                      ) -> tuple[torch.Tensor, tuple, dict]:
    """(hidden [B, T, H], args, kwargs) that the first decoder block receives for one batch."""
    first = decoder_layers(model)[0]
    state = {}

    def catch(_module, args, kwargs):
        state["input"] = _split(args, kwargs)
        raise _StopForward

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return state["input"]


def _record_arguments(model: nn.Module, input_ids, attention_mask, form: OutputForm
                      ) -> tuple[torch.Tensor, list[tuple[tuple, dict]]]:
    """(first block's hidden input, every block's (args, kwargs)) of one batch, blocks passed through."""
    blocks = decoder_layers(model)
    recorded: list[tuple[tuple, dict]] = []
    first_hidden = []

    def recorder(index: int):
        def forward(*args, **kwargs):
            hidden, rest, named = _split(args, kwargs)
            if index == 0:
                first_hidden.append(hidden)
            recorded.append((rest, named))
            if index == len(blocks) - 1:
                raise _StopForward
            return form(hidden)

        return forward

    for index, block in enumerate(blocks):
        block.forward = recorder(index)  # instance attribute: shadows the class's forward until deleted
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for block in blocks:
            del block.forward
    if len(recorded) != len(blocks):
        raise RuntimeError(f"{type(model).__name__} called {len(recorded)} of its {len(blocks)} decoder blocks "
                           "in one forward pass: tfprune cannot record their arguments")
    return first_hidden[0], recorded


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, calib, stream: str, batch_size: int,
                         device: torch.device | str | None = None, form: OutputForm | None = None
                         ) -> list[LayerInput]:
    """Every batch of `calib` (a CalibrationSet) at the input of the first decoder block, with the arguments
    of every block. device: where the token ids go (default: the model's first parameter's). form: the
    blocks' output form (default: learnt from the first block on the first batch; the streaming engine,
    whose blocks are not materialized yet, passes its own)."""
    device = next(model.parameters()).device if device is None else torch.device(device)
    captured = []
    for input_ids, attention_mask in calib.batches(batch_size):
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        if form is None:
            form = output_form(decoder_layers(model)[0], *first_block_input(model, input_ids, attention_mask))
        hidden, arguments = _record_arguments(model, input_ids, attention_mask, form)
        captured.append(LayerInput(stream, hidden, arguments, attention_mask.reshape(-1).bool()))
    return captured


def arguments_nbytes(items: list[LayerInput]) -> int:
    """Bytes of the distinct tensors in the blocks' arguments (blocks of one kind share their masks)."""
    seen: dict[int, int] = {}

    def visit(value):
        if isinstance(value, torch.Tensor):
            seen[id(value)] = value.numel() * value.element_size()
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    for item in items:
        visit(item.arguments)
        visit(item.token_mask)
    return sum(seen.values())
