"""Trimming a safetensors checkpoint tensor by tensor, and the same trim as a hook of the streaming engine.

The tensors indexed by token id are found on a skeleton of the model (meta device): the input embeddings'
weight and the LM head's weight and bias, under every name they are tied to; a compressed-tensors packed
LM head (`<prefix>.compressed` [V, H/2], `.bitmask` [V, ceil(H/8)], `.shape`) is sliced row by row too, since
both keep one row per output. Every other tensor is copied byte for byte: a 2:4 checkpoint stays 2:4, a
compressed-tensors one keeps its packed tensors and quantization_config (its global_sparsity recounted over
the trimmed LM head, as tfprune.sparse.save_compressed_tensors counts it).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import VocabError
from .plan import VOCAB_FILE, TrimOptions, VocabPlan, plan_vocab
from .select import VocabSelection
from .tokenizer import STALE_TOKENIZER_FILES

__all__ = ["VocabTensors", "trim_checkpoint", "streaming_trim", "TrimSummary", "NoTrim", "CheckpointTrim"]

log = logging.getLogger("tfprune")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".msgpack", ".h5", ".gguf", ".ckpt")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _skeleton(folder: Path):
    """The CausalLM of a model directory's config on the meta device (quantization_config left out), weights
    tied as the config says."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    for attribute in ("quantization_config", "compression_config"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(config)
    skeleton.tie_weights()
    return skeleton


class VocabTensors:
    """Which checkpoint tensors have a token-id dimension (dim 0) and what trimming makes of them.
    kinds: {checkpoint key: 'rows' (keep the kept ids' rows) or 'shape' (a packed weight's dense shape)}.
    head_keys: the keys the LM head's weight is read from (the embeddings' when tied)."""

    def __init__(self, skeleton, tensors: dict[str, tuple[int, ...]], kept: tuple[int, ...]):
        prefix = getattr(skeleton, "base_model_prefix", "") + "."

        def key_of(model_key: str) -> str | None:
            if model_key in tensors:
                return model_key
            stripped = model_key[len(prefix):] if model_key.startswith(prefix) else None
            return stripped if stripped in tensors else None

        aliases: dict[int, list[str]] = {}
        for name, param in skeleton.named_parameters(remove_duplicate=False):
            aliases.setdefault(id(param), []).append(name)
        embeddings, head = skeleton.get_input_embeddings(), skeleton.get_output_embeddings()
        self.kinds: dict[str, str] = {}
        embedding_keys = [key for key in map(key_of, aliases[id(embeddings.weight)]) if key is not None]
        if not embedding_keys:
            raise VocabError(f"the checkpoint has no tensor for the input embeddings "
                             f"({aliases[id(embeddings.weight)][0]})")
        self.kinds.update(dict.fromkeys(embedding_keys, "rows"))
        self.head_module = next((name for name, module in skeleton.named_modules() if module is head), None)
        self.head_keys = embedding_keys
        if head is not None and head.weight is not embeddings.weight:
            head_keys = [key for key in map(key_of, aliases[id(head.weight)]) if key is not None]
            packed = key_of(f"{self.head_module}.compressed")
            if head_keys:
                self.kinds.update(dict.fromkeys(head_keys, "rows"))
            elif packed is not None:
                base = packed[: -len(".compressed")]
                self.kinds.update({packed: "rows", f"{base}.bitmask": "rows", f"{base}.shape": "shape"})
                head_keys = [packed]
            else:
                raise VocabError(f"the checkpoint has no tensor for the LM head ({self.head_module}.weight)")
            self.head_keys = head_keys
            bias = key_of(f"{self.head_module}.bias")
            if bias is not None:
                self.kinds[bias] = "rows"
        for key, kind in self.kinds.items():
            if kind == "rows" and tensors[key][0] <= kept[-1]:
                raise VocabError(f"{key} has {tensors[key][0]} rows: the tokenizer's id {kept[-1]} has none")
        self.kept = kept
        self._index = torch.tensor(kept, dtype=torch.long)

    def planned_shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape `key` has once trimmed (unchanged for the tensors without a token dimension)."""
        return (len(self.kept), *shape[1:]) if self.kinds.get(key) == "rows" else tuple(shape)

    def apply(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        """The trimmed value of checkpoint tensor `key` (the same tensor when it has no token dimension)."""
        kind = self.kinds.get(key)
        if kind == "rows":
            return tensor.index_select(0, self._index).contiguous()
        if kind == "shape":
            return torch.tensor([len(self.kept), int(tensor.flatten()[1])], dtype=tensor.dtype).reshape(tensor.shape)
        return tensor


class _SparsityCount:
    """compressed-tensors' global_sparsity over the written tensors, counted as save_compressed_tensors does:
    zeros over the packed weights (2 × values) and over the nn.Linear weights left dense (its `ignore` list;
    a tied LM head through the embeddings)."""

    def __init__(self, config: dict, vocab: VocabTensors, tensors: dict):
        quant = config.get("quantization_config") or {}
        sparsity = quant.get("sparsity_config") or {}
        self.active = quant.get("quant_method") == "compressed-tensors" and "global_sparsity" in sparsity
        self.counted: Counter[str] = Counter()
        self.zeros = self.total = 0
        if not self.active:
            return
        for name in sparsity.get("ignore", []):
            key = f"{name}.weight" if f"{name}.weight" in tensors else None
            if key is None and name == vocab.head_module:
                key = vocab.head_keys[0]
            if key is not None:
                self.counted[key] += 1
        self.packed = {key for key in tensors if key.endswith(".compressed")
                       and f"{key[: -len('.compressed')]}.bitmask" in tensors}

    def add(self, key: str, tensor: torch.Tensor) -> None:
        if not self.active:
            return
        from ..sparse.formats import _nonzero

        if key in self.packed:
            self.zeros += tensor.numel() * 2 - int(_nonzero(tensor).sum())
            self.total += tensor.numel() * 2
        times = self.counted.get(key, 0)
        if times:
            self.zeros += times * (tensor.numel() - int(_nonzero(tensor).sum()))
            self.total += times * tensor.numel()

    def update(self, config: dict) -> dict:
        if self.active:
            config["quantization_config"]["sparsity_config"]["global_sparsity"] = self.zeros / max(self.total, 1)
        return config


@dataclass
class TrimSummary:
    """What a checkpoint trim did: the selection, bytes of the safetensors before and after, seconds."""

    selection: VocabSelection
    bytes_before: int
    bytes_after: int
    seconds: float
    trimmed_tensors: int

    def line(self) -> str:
        return (f"trim-vocab: {self.selection.summary()}; {self.trimmed_tensors} tensors trimmed; safetensors "
                f"{self.bytes_before / 1e9:.3f} GB -> {self.bytes_after / 1e9:.3f} GB "
                f"({self.bytes_after / max(self.bytes_before, 1):.1%}); {self.seconds:.1f} s")


def _configs(folder: Path) -> list[dict]:
    names = ("config.json", "generation_config.json")
    return [json.loads((folder / name).read_text(encoding="utf-8")) for name in names if (folder / name).is_file()]


def trim_checkpoint(model: str | Path, out: str | Path, options: TrimOptions, *, shard_size: str | int = "5GB",
                    overwrite: bool = False, progress: bool = True) -> TrimSummary:
    """Write `model` (a local Hugging Face directory with safetensors, a hub id or builtin:FAMILY) with its
    vocabulary trimmed to `options` into `out`, atomically (a temporary sibling renamed at the end; the input
    is only read). Tensors are read and written one at a time into shards of at most `shard_size` bytes."""
    from ..engine.checkpoint import INDEX_FILE, Checkpoint, ShardFiles, parse_size, plan_shards
    from ..outdir import atomic_output_dir, preflight_output
    from ..source import resolved_checkpoint

    start = time.perf_counter()
    corpus = options.corpus if isinstance(options.corpus, (str, Path)) else None
    inputs = [Path(spec) for spec in (str(model), corpus) if spec and Path(spec).exists()]
    out = preflight_output(out, overwrite, inputs)
    max_shard = parse_size(shard_size)
    with resolved_checkpoint(str(model), None) as source:
        folder = Path(source.folder)
        if not (folder / "config.json").is_file():
            raise VocabError(f"{folder} has no config.json: not a Hugging Face model directory")
        checkpoint = Checkpoint(folder)
        plan = plan_vocab(folder, options, _configs(folder))
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        skeleton = _skeleton(folder)
        shapes = {name: info.shape for name, info in checkpoint.tensors.items()}
        vocab = VocabTensors(skeleton, shapes, plan.selection.kept)
        sparsity = _SparsityCount(config, vocab, shapes)
        specs = [(name, info.dtype, vocab.planned_shape(name, info.shape)) for name, info in checkpoint.tensors.items()]
        shard_plan = plan_shards(specs, max_shard)
        with atomic_output_dir(out, overwrite, inputs, needed_bytes=sum(shard_plan.sizes)) as tmp:
            _copy_side_files(folder, tmp)
            shards = ShardFiles(tmp, shard_plan)
            try:
                bar = tqdm(total=checkpoint.nbytes, unit="B", unit_scale=True, desc="trim-vocab", disable=not progress)
                for name, info in checkpoint.tensors.items():
                    tensor = vocab.apply(name, checkpoint.load([name])[name])
                    sparsity.add(name, tensor)
                    shards.write(name, tensor)
                    bar.update(info.nbytes)
                bar.close()
                shards.sync()
            finally:
                shards.close()
            (tmp / INDEX_FILE).write_text(json.dumps(shard_plan.index(), indent=2) + "\n", encoding="utf-8")
            plan.rewrite_dir(tmp)
            config_path = tmp / "config.json"
            config_path.write_text(json.dumps(sparsity.update(json.loads(config_path.read_text(encoding="utf-8"))),
                                              indent=2, sort_keys=True) + "\n", encoding="utf-8")
            _nest_previous_record(folder, tmp)
            _mark_output(tmp, str(model), plan)
        before = sum(path.stat().st_size for path in folder.glob("*.safetensors"))
    after = sum(path.stat().st_size for path in Path(out).glob("*.safetensors"))
    summary = TrimSummary(plan.selection, before, after, time.perf_counter() - start, len(vocab.kinds))
    log.info("%s", summary.line())
    return summary


def _copy_side_files(folder: Path, tmp: Path) -> None:
    """Everything of the input directory but weights, weight indexes, stale vocabulary files and folders
    (configs and tokenizer files are rewritten afterwards)."""
    skipped = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() or path.name.endswith(WEIGHT_SUFFIXES) or path.name in INDEX_FILES + STALE_TOKENIZER_FILES:
            if not path.name.endswith(".safetensors") and path.name != INDEX_FILES[0]:
                skipped.append(path.name)
            continue
        shutil.copyfile(path, tmp / path.name)
    if skipped:
        log.info("not copied: %s (weights come from the safetensors; tokenizer.json replaces stale vocabulary "
                 "files)", ", ".join(skipped))


def _nest_previous_record(folder: Path, tmp: Path) -> None:
    """Trimming a trimmed checkpoint: the earlier tfprune-vocab.json goes under "previous" (its ids are the
    original model's; this record's are the input's)."""
    previous = folder / VOCAB_FILE
    if previous.is_file():
        record = json.loads((tmp / VOCAB_FILE).read_text(encoding="utf-8"))
        record["previous"] = json.loads(previous.read_text(encoding="utf-8"))
        (tmp / VOCAB_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _mark_output(tmp: Path, model: str, plan: VocabPlan) -> None:
    """tfprune.json, the record every tfprune output holds: the input's (a pruned model's run) when it has
    one, plus `trim_vocab` (options, kept counts); the ids themselves are in tfprune-vocab.json."""
    from ..outdir import MARKER_FILE, write_marker

    path = tmp / MARKER_FILE
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"model": model}
    record.pop("tfprune", None)
    record["trim_vocab"] = {**plan.options.to_dict(), "vocab_size": len(plan.selection),
                            "original_vocab_size": plan.selection.original_size, "counts": plan.selection.counts}
    write_marker(tmp, record.pop("kind", "trim-vocab"), record)


class NoTrim:
    """The streaming engine's vocabulary hook when no trim is asked for: every tensor as it is."""

    def planned_shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(shape)

    def apply(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def identity(self) -> dict:
        return {}

    def finish(self, directory: Path) -> None:
        """Nothing to rewrite."""


class CheckpointTrim(NoTrim):
    """The streaming engine's vocabulary hook: trims the embedding / LM head tensors as they are copied, and
    rewrites the output's configs and tokenizer files at the end (VocabPlan.rewrite_dir)."""

    def __init__(self, plan: VocabPlan, tensors: VocabTensors):
        self.plan, self.tensors = plan, tensors

    def planned_shape(self, key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.tensors.planned_shape(key, shape)

    def apply(self, key: str, tensor: torch.Tensor) -> torch.Tensor:
        return self.tensors.apply(key, tensor)

    def identity(self) -> dict:
        """What a resumed run must match: the options and the kept ids."""
        import hashlib

        digest = hashlib.sha256(json.dumps(list(self.plan.selection.kept)).encode()).hexdigest()
        return {"trim_vocab": {**self.plan.options.to_dict(), "kept_sha256": digest}}

    def finish(self, directory: Path) -> None:
        self.plan.rewrite_dir(directory)


def streaming_trim(options: TrimOptions | None, tokenizer, folder: Path, skeleton, tensors: dict) -> NoTrim:
    """The hook for prune_streaming: NoTrim without options; else the planned trim of `tokenizer` (the one
    the output's tokenizer files are saved from) for the checkpoint `folder` ({key: shape} tensors) on the
    skeleton. Raises VocabError before any work for bad input."""
    if options is None:
        return NoTrim()
    plan = plan_vocab(tokenizer, options, _configs(Path(folder)))
    return CheckpointTrim(plan, VocabTensors(skeleton, tensors, plan.selection.kept))
