"""Loading a model to prune or evaluate: a local Hugging Face directory, a hub id, or `builtin:FAMILY`; checked
before (files, config, tokenizer) and after loading (every weight present and finite), with clear errors."""
from __future__ import annotations

import logging

import torch

from .errors import TfpruneError

__all__ = ["load_model", "parse_device", "parse_dtype", "DTYPES"]

log = logging.getLogger("tfprune")

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_device(text: str) -> torch.device:
    """'cpu' | 'cuda' | 'cuda:N' -> torch.device, checked against what this machine has."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise TfpruneError(f"--device {text!r} is not a device: use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise TfpruneError(f"--device {text!r}: tfprune runs on cpu or cuda, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TfpruneError(f"--device {text} was asked for, but torch sees no CUDA device (torch "
                               f"{torch.__version__}, CUDA {torch.version.cuda or 'not built'})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TfpruneError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def parse_dtype(text: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype name (float32, float16, bfloat16 or fp32/fp16/bf16) -> torch.dtype; None stays None."""
    if text is None or isinstance(text, torch.dtype):
        return text
    if text not in DTYPES:
        raise TfpruneError(f"--dtype must be one of {', '.join(DTYPES)}, got {text!r}")
    return DTYPES[text]


def load_model(spec: str, dtype: str | torch.dtype | None = None, device: str = "cpu", tokenizer=None):
    """(model, tokenizer) for `spec`: 'builtin:llama' (and the other BUILTIN_FAMILIES), a local directory or
    a hub id. Before any weight is loaded: the config (valid, a decoder-only architecture), the weight files
    (index, shards whole) and the tokenizer (`tokenizer`: a path or hub id overriding the directory's). After:
    every parameter came from the checkpoint with its configured shape, and none is NaN/Inf. A compressed-tensors
    2:4 checkpoint is loaded by tfprune.from_pretrained and densified (a plain model, no quantization_config)."""
    from .engine.weights import check_finite_weights
    from .source import (check_model_files, compressed_tensors_format, load_config, load_tokenizer,
                         resolved_checkpoint)

    dtype = parse_dtype(dtype)
    if spec.startswith("builtin:"):
        from .builtin import build_model

        model, builtin_tokenizer = build_model(spec.split(":", 1)[1], dtype=dtype or torch.float32)
        return model.to(device), builtin_tokenizer if tokenizer is None else load_tokenizer(None, tokenizer)
    with resolved_checkpoint(spec) as source:
        folder = source.folder
        load_config(folder)
        check_model_files(folder)
        loaded_tokenizer = load_tokenizer(folder, tokenizer)
        if compressed_tensors_format(folder) is not None:
            from .sparse.checkpoint import densify_, from_pretrained

            model = from_pretrained(folder, device="cpu", dtype=dtype)
            log.info("%s: compressed-tensors checkpoint, %d packed layers densified", folder, densify_(model))
        else:
            model = _from_pretrained(folder, dtype)
    check_finite_weights(model.named_parameters(), str(folder))
    return model.to(device).eval(), loaded_tokenizer


def _from_pretrained(folder, dtype: torch.dtype | None):
    """transformers' from_pretrained, refusing what it would only warn about: weights missing from the
    checkpoint (randomly initialized) and shapes that disagree with config.json."""
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "auto", output_loading_info=True)
    except RuntimeError as error:
        if "mismatch" in str(error):
            raise TfpruneError(f"{folder}: config.json and the weights disagree on tensor shapes (see the load "
                               "report above): fix the config or use the checkpoint it belongs to") from None
        raise
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise TfpruneError(f"{folder}: the checkpoint lacks {len(missing)} tensors ({', '.join(missing[:3])}"
                           f"{' ...' if len(missing) > 3 else ''}), which transformers would fill with random "
                           "values: a shard missing from the index, or the weights of another model")
    return model
