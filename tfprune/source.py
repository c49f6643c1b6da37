"""The model a run reads: a model spec resolved to a local directory, and that directory checked before any
weight is loaded (config and index JSON, every shard present and whole, a tokenizer), with one clear error
naming the file and the fix."""
from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import TfpruneError

__all__ = ["ModelSource", "resolved_checkpoint", "read_json", "load_config", "check_model_files",
           "load_tokenizer", "compressed_tensors_format", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt", "tokenizer.tiktoken")
_HUB_PATTERNS = ["*.safetensors", "*.json", "*.model", "*.txt", "*.tiktoken"]


@dataclass(frozen=True)
class ModelSource:
    """folder: a local Hugging Face directory; identity: what names the model in a run's record (the spec, or
    the resolved path); ephemeral: the folder was written by this run (builtin models) and is removed after."""

    folder: Path
    identity: str
    ephemeral: bool = False


@contextmanager
def resolved_checkpoint(spec: str, dtype: torch.dtype | None = None):
    """Yield the ModelSource of a local directory, a hub id (downloaded: safetensors, configs, tokenizer) or
    builtin:FAMILY (saved to a temporary directory, removed afterwards)."""
    if spec.startswith("builtin:"):
        from .builtin import build_model

        model, tokenizer = build_model(spec.split(":", 1)[1], dtype=dtype or torch.float32)
        folder = Path(tempfile.mkdtemp(prefix="tfprune-builtin-"))
        try:
            model.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)
            del model
            yield ModelSource(folder, spec, ephemeral=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    path = Path(spec)
    if path.exists():
        if not path.is_dir():
            raise TfpruneError(f"model {spec} is a file: give a Hugging Face model directory or a hub id")
        yield ModelSource(path, str(path.resolve()))
        return
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise TfpruneError(f"model {spec} does not exist (not a directory, and not a hub id 'owner/name')")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(spec, allow_patterns=_HUB_PATTERNS)
    except Exception as error:  # the hub raises many types: offline, gated, unknown repo
        raise TfpruneError(f"cannot download {spec} from the Hugging Face hub ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''}); give a local directory") from None
    yield ModelSource(Path(folder), spec)


def read_json(path: Path, what: str = "") -> dict:
    """A JSON object from `path`, or a TfpruneError naming the file, the line and what is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TfpruneError(f"{path} does not exist{f' ({what})' if what else ''}") from None
    except UnicodeDecodeError as error:
        raise TfpruneError(f"{path} is not UTF-8 text (byte {error.start}): a corrupt file?") from None
    except json.JSONDecodeError as error:
        raise TfpruneError(f"{path}:{error.lineno}: not valid JSON ({error.msg}, column {error.colno}); fix or "
                           "restore the file") from None
    if not isinstance(data, dict):
        raise TfpruneError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_config(folder: Path):
    """The transformers config of a model directory, checked: valid JSON, a model_type transformers knows,
    a decoder-only architecture."""
    from transformers import AutoConfig

    from .engine.discovery import check_architecture

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise TfpruneError(f"{folder} has no config.json: not a Hugging Face model directory")
    raw = read_json(config_file)
    if "model_type" not in raw:
        raise TfpruneError(f"{config_file} has no model_type: not a transformers config")
    try:
        config = AutoConfig.from_pretrained(folder)
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise TfpruneError(f"{config_file}: transformers cannot read it ({str(error).splitlines()[0]}); upgrade "
                           "transformers if the architecture is new") from None
    check_architecture(config)
    return config


def check_model_files(folder: Path) -> None:
    """The weight files of a model directory are all there and whole: the index (if any) is valid JSON and
    names only present files; every safetensors header is valid and its tensors lie inside the file."""
    from .engine.checkpoint import INDEX_FILE, Checkpoint

    if (folder / INDEX_FILE).is_file() or any(folder.glob("*.safetensors")):
        Checkpoint(folder)
    elif not any(folder.glob("*.bin")):
        raise TfpruneError(f"{folder} holds no weights (*.safetensors or *.bin)")


def load_tokenizer(folder: Path, tokenizer: str | Path | None = None):
    """The tokenizer of the model in `folder`, or of `tokenizer` (a directory or hub id) when given. A directory
    without one is an error naming the fix (--tokenizer), before any weight is loaded."""
    from transformers import AutoTokenizer

    source = folder if tokenizer is None else tokenizer
    if tokenizer is None and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise TfpruneError(f"{folder} has no tokenizer ({', '.join(TOKENIZER_FILES[:2])}, ...): pass --tokenizer "
                           "PATH (a directory or hub id holding the model's tokenizer)")
    try:
        return AutoTokenizer.from_pretrained(source)
    except ImportError as error:
        raise TfpruneError(f"the tokenizer in {source} needs a package that is not installed ({error}); install "
                           "it, or pass --tokenizer with a directory holding a tokenizer.json") from None
    except (OSError, ValueError, TypeError) as error:
        raise TfpruneError(f"cannot load a tokenizer from {source} ({str(error).splitlines()[0]}); pass "
                           "--tokenizer PATH") from None


def compressed_tensors_format(folder: Path) -> str | None:
    """The compressed-tensors sparsity format of a checkpoint ('sparse-24-bitmask'), or None for a plain one."""
    from .sparse.checkpoint import sparsity_format

    return sparsity_format(read_json(folder / "config.json"), folder)
