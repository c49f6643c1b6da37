"""The streaming engine: prune a safetensors checkpoint larger than memory, one decoder layer at a time.

The model is a skeleton on the meta device (accelerate's init_empty_weights); weights are read lazily from
the checkpoint (safetensors.safe_open, tensor by tensor). Wanda's order, with the in-memory engine's own
functions (capture_layer_inputs, prune_block, run_block): embed the calibration batches, then for each
decoder layer materialize it on the compute device, calibrate and prune it, write its tensors to the output
shards at their planned offsets, recompute its outputs with the pruned weights and free it.

Resumable: the output's temporary directory holds a manifest with the sha256 of every tensor written and the
command's identity. Run again after a crash (SIGKILL included), the same command verifies what was written,
replays the finished layers from the output to rebuild the activations and continues; the result is
bit-identical to an uninterrupted run. The final directory appears (by rename) only when every tensor has been
read back and verified.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import PruneConfig, default_distill_steps
from ..errors import ConfigError, TfpruneError
from ..outdir import OutputAppearedError, check_free_space, check_output_dir, commit_output_dir, write_marker
from ..report import LayerReport, PruneReport
from ..source import compressed_tensors_format, load_config, load_tokenizer, resolved_checkpoint
from ..vocab.checkpoint import NoTrim, streaming_trim
from .activations import ActivationStore, MemoryBudget, choose_tier, free_memory
from .capture import arguments_nbytes, capture_layer_inputs, first_block_input, output_form
from .checkpoint import DTYPES, INDEX_FILE, Checkpoint, ShardFiles, ShardPlan, parse_size, plan_shards
from .discovery import decoder_layers, targets
from .fitting import fitted_parameter_names
from .manifest import Manifest, partial_dir
from .plan import LayerPlan, needs_dense_pass, uniform_plan
from .sequential import (calibration_streams, check_prunable, dense_pass, effective_batch_size, forward_block,
                         prune_block)
from .skeleton import Layout, build_skeleton, free, layer_bytes, materialize, pre_layer_weights, working_bytes
from .stream_output import OUTPUT_FORMATS, OutputFormat

__all__ = ["prune_streaming", "should_stream", "StreamingSummary", "KILL_AFTER_LAYER_ENV"]

log = logging.getLogger("tfprune")
KILL_AFTER_LAYER_ENV = "TFPRUNE_TEST_KILL_AFTER_LAYER"  # test hook: SIGKILL itself once layer k is recorded
COPIED_FILES = ("config.json", "generation_config.json")
SCRATCH_FILE = "activations.scratch"


@dataclass
class StreamingSummary:
    """What a streaming run did: layers (resumed: replayed from a partial output), where the activations
    lived, bytes read from the checkpoint / written / read back to verify, wall time, peak memory, and the
    seconds per phase (copy, capture, layer_plan, replay, read, prune, write, forward, verify)."""

    layers: int = 0
    resumed_layers: int = 0
    tier: str = ""
    activation_bytes: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    bytes_verified: int = 0
    shards: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    peak_gpu_bytes: int = 0
    layer_seconds: list[float] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str):
        """Add the wall time of the block to phases[name]."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - began

    def line(self) -> str:
        gpu = f", peak GPU {self.peak_gpu_bytes / 2**30:.2f} GiB" if self.peak_gpu_bytes else ""
        return (f"streaming: {self.layers} layers ({self.resumed_layers} resumed), activations "
                f"{self.activation_bytes / 2**30:.2f} GiB on {self.tier}, read {self.bytes_read / 1e9:.2f} GB, "
                f"written {self.bytes_written / 1e9:.2f} GB, verified {self.bytes_verified / 1e9:.2f} GB, "
                f"{self.shards} shards, {self.seconds:.1f} s, peak RSS {self.peak_rss_bytes / 2**30:.2f} GiB{gpu}")


def should_stream(spec: str, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> bool:
    """Whether the in-memory engine would not fit: the checkpoint (at the requested dtype) plus 20% exceeds the
    free memory of the device (and of the host, where from_pretrained loads it first). Logs the decision."""
    from ..models import DTYPES as NAMED

    device = torch.device(device)
    if spec.startswith("builtin:"):
        return False
    if Path(spec).is_dir():
        try:
            checkpoint = Checkpoint(spec)
        except TfpruneError:
            return False
        size = checkpoint.nbytes
        if dtype is not None:
            dtype = NAMED[dtype] if isinstance(dtype, str) else dtype
            size = size * dtype.itemsize // checkpoint.floating_dtype().itemsize
    else:
        try:
            from huggingface_hub import HfApi

            info = HfApi().model_info(spec, files_metadata=True)
            size = sum(s.size or 0 for s in info.siblings if s.rfilename.endswith(".safetensors"))
        except Exception as error:  # offline or unknown: the in-memory engine reports its own error
            log.debug("cannot size %s (%s): in-memory engine", spec, error)
            return False
    free = free_memory(device)
    if device.type != "cpu":
        free = min(free, free_memory(torch.device("cpu")))
    stream = 1.2 * size > free
    log.info("model %.2f GiB, free memory %.2f GiB: %s engine", size / 2**30, free / 2**30,
             "streaming" if stream else "in-memory")
    return stream


@torch.no_grad()
def prune_streaming(model: str, out: str | Path, config: PruneConfig, tokenizer=None, calib=None,
                    contrast_calib=None, *, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None,
                    max_memory: str | MemoryBudget | None = None, shard_size: str | int = "5GB",
                    output_format: str = "dense", overwrite: bool = False, progress: bool = True,
                    extra: dict | None = None, inputs=(), trim_vocab=None) -> tuple[PruneReport, StreamingSummary]:
    """Prune the checkpoint `model` (a local Hugging Face directory with safetensors, a hub id or
    builtin:FAMILY) layer by layer into `out`, resuming a partial run of the same command.

    tokenizer: a tokenizer, or a path / hub id to load it from (default: the model directory's).
    dtype: compute dtype (default: the checkpoint's); every tensor is written in its checkpoint dtype.
    max_memory: the activation budget ('40GiB' for the device, or 'device=40GiB,host=100GiB'; default: the
    free memory). shard_size: the most tensor bytes per output shard. output_format: 'dense' or
    'compressed-tensors' (2:4 linears as sparse-24-bitmask). inputs: other paths the run reads (calibration
    files), which `out` may not touch (tfprune.outdir). trim_vocab: a tfprune.vocab.TrimOptions to trim the
    embeddings / LM head as they are copied (tfprune.vocab.streaming_trim). Returns (PruneReport,
    StreamingSummary).

    The partial output `.{out}.tfprune-partial` is kept when the run is interrupted (rerun the same command to
    resume). When the run stops on bad input (TfpruneError: the fix changes the command or the checkpoint, so
    it cannot resume), the partial directory is removed if this run created it, else kept and named.
    """
    from .. import __version__
    from ..models import DTYPES as NAMED

    start = time.perf_counter()
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.reset_peak_memory_stats(device)
    if config.distill:
        raise ConfigError("--distill fits the whole model end to end and needs it in memory; the streaming engine "
                          "(--streaming, or chosen because the model does not fit the device's free memory) holds one "
                          "layer at a time: prune in memory (--no-streaming, on a device with room for the model in "
                          "float32 and 13 bytes per weight of its blocks) or use --distill 0")
    if config.distill is None and default_distill_steps(config.method, config.nm):
        log.info("no end-to-end distillation: the streaming engine holds one layer at a time (the in-memory "
                 "engine distills %s by default)", config.pattern)
    config = replace(config, distill=0)  # what this engine does, in tfprune.json and the manifest's options
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"output format {output_format!r} is not supported; choose one of "
                          f"{', '.join(OUTPUT_FORMATS)}")
    budget = max_memory if isinstance(max_memory, MemoryBudget) else MemoryBudget.parse(max_memory)
    shard_bytes = parse_size(shard_size)
    requested = NAMED[dtype] if isinstance(dtype, str) else dtype
    with resolved_checkpoint(model, requested) as source:
        folder = source.folder
        inputs = (*inputs, None if source.ephemeral else folder,
                  tokenizer if isinstance(tokenizer, (str, Path)) else None)
        out = check_output_dir(out, overwrite, inputs)
        hf_config = load_config(folder)
        if compressed_tensors_format(folder) is not None:
            raise TfpruneError(f"{folder} is a compressed-tensors checkpoint: the streaming engine reads dense "
                               "weights; prune it in memory (--no-streaming)")
        checkpoint = Checkpoint(folder)
        compute = requested or getattr(hf_config, "dtype", None) or checkpoint.floating_dtype()
        compute = getattr(torch, compute) if isinstance(compute, str) else compute
        skeleton = build_skeleton(hf_config, compute)
        check_prunable(skeleton, config)
        layout = Layout(skeleton, checkpoint)
        fmt = OutputFormat(output_format, skeleton, layout, checkpoint, config)
        if tokenizer is None or isinstance(tokenizer, (str, Path)):
            tokenizer = load_tokenizer(folder, tokenizer)
        streams = calibration_streams(tokenizer, config, calib, contrast_calib)
        vocab = streaming_trim(trim_vocab, tokenizer, folder, skeleton,
                               {name: info.shape for name, info in checkpoint.tensors.items()})
        plan = _shard_plan(fmt, layout, checkpoint, vocab, shard_bytes)
        identity = {"tfprune": __version__, "model": source.identity,
                    "checkpoint": checkpoint.fingerprint(mtimes=not source.ephemeral),
                    "options": config.to_dict(), "calibration": _calibration_digest(streams),
                    "dtype": str(compute), "device": device.type, "format": output_format,
                    "shard_size": shard_bytes, "plan": plan.digest(), **vocab.identity()}
        tmp = partial_dir(out)
        created = not tmp.exists()
        # with keep_dense the kept matrices are written dense, not packed: the plan grows after the dense pass
        check_free_space(out.parent, sum(plan.sizes) - _allocated(tmp), f"the output shards of {out.name}")
        manifest = Manifest.open(tmp, identity)
        run = _Run(skeleton, checkpoint, layout, fmt, plan, shard_bytes, manifest, config, device, compute,
                   budget, streams, StreamingSummary(layers=len(layout.layers)), progress, vocab)
        try:
            report = run.execute()
            run.summary.seconds = report.seconds = time.perf_counter() - start
            run.finish(folder, tokenizer, report, extra)
            commit_output_dir(tmp, out, overwrite, inputs)  # the manifest goes after: a crash in between
            manifest.remove_files(out)                       # leaves a complete `out`
        except TfpruneError as error:
            run.close()
            if isinstance(error, OutputAppearedError):
                raise
            if created:
                shutil.rmtree(tmp, ignore_errors=True)
                log.error("bad input: the partial output of this run was removed (fix the input and rerun)")
            else:
                log.error("bad input: the partial output of an earlier run is kept in %s; once the input is fixed "
                          "it cannot be resumed: delete it", tmp)
            raise
        except BaseException as error:
            run.close()
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                log.error("the disk is full: free space, then run the same command again to resume from %s", tmp)
            else:
                log.error("streaming run interrupted; the partial output is kept in %s: run the same command "
                          "again to resume", tmp)
            raise
    log.info("%s", run.summary.line())
    return report, run.summary


def _shard_plan(fmt: OutputFormat, layout: Layout, checkpoint: Checkpoint, vocab, shard_bytes: int) -> ShardPlan:
    """Where every output tensor goes: the non-layer tensors, then each layer's, as `fmt` writes them."""
    specs = [spec for name in layout.non_layer + [k for keys in layout.layer_keys for k in keys]
             for spec in fmt.outputs(name, checkpoint.tensors[name].dtype,
                                     vocab.planned_shape(name, checkpoint.tensors[name].shape))]
    return plan_shards(specs, shard_bytes)


def _allocated(folder: Path) -> int:
    """Bytes already allocated on disk by the output files of a partial output (its shards are sparse files);
    not the activations' scratch file, which the shards do not reuse."""
    if not folder.is_dir():
        return 0
    return sum(path.stat().st_blocks * 512 for path in folder.iterdir()
               if path.is_file() and path.name != SCRATCH_FILE)


def _calibration_digest(streams: dict) -> str:
    digest = hashlib.sha256()
    for stream, calibration in streams.items():
        digest.update(stream.encode())
        for tensor in (calibration.input_ids, calibration.attention_mask):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


class _OneBatch:
    """A CalibrationSet stand-in yielding one (input_ids, attention_mask) batch, to capture batch by batch."""

    def __init__(self, batch):
        self.batch = batch

    def batches(self, _batch_size):
        yield self.batch


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@dataclass
class _Run:
    """One streaming run's state; execute() does the steps in order, each resumable from the manifest."""

    skeleton: torch.nn.Module
    checkpoint: Checkpoint
    layout: Layout
    fmt: OutputFormat
    shard_plan: ShardPlan
    shard_bytes: int
    manifest: Manifest
    config: PruneConfig
    device: torch.device
    compute: torch.dtype
    budget: MemoryBudget
    streams: dict
    summary: StreamingSummary
    progress: bool
    vocab: NoTrim
    store: ActivationStore | None = None
    shards: ShardFiles | None = None  # opened once the layer plan is known (open_shards)

    def execute(self) -> PruneReport:
        summary = self.summary
        with summary.phase("capture"):
            self.store = self.capture()
        summary.tier, summary.activation_bytes = self.store.tier, self.store.nbytes
        with summary.phase("layer_plan"):
            plan = self.layer_plan()
        self.open_shards(plan)
        with summary.phase("copy"):
            self.copy_non_layer()
        with summary.phase("replay"):
            summary.resumed_layers = self.replay()
        self.prune_layers(plan)
        with summary.phase("verify"):
            self.verify()
        layers = [LayerReport(**{**r, "shape": tuple(r["shape"]),
                                 "top_channels": [tuple(c) for c in r["top_channels"]]})
                  for layer in self.manifest.layers for r in layer["reports"]]
        report = PruneReport(layers=layers, calibration_tokens=self.streams["translation"].tokens,
                             block_sparsity=list(plan.sparsities), kept_dense=plan.kept(),
                             reconstruction=[layer["reconstruction"] for layer in self.manifest.layers
                                             if layer.get("reconstruction")])
        summary.bytes_read, summary.bytes_written = self.checkpoint.bytes_read, self.shards.bytes_written
        summary.bytes_verified = self.shards.bytes_read
        summary.peak_rss_bytes = report.peak_memory_bytes = _peak_rss()
        if self.device.type == "cuda":
            summary.peak_gpu_bytes = report.peak_gpu_memory_bytes = torch.cuda.max_memory_allocated(self.device)
        return report

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.shards is not None:
            self.shards.close()
        self.manifest.release()

    # -- steps ---------------------------------------------------------------------------------------------

    def _zeros(self, key: str, tensor: torch.Tensor) -> tuple[int, int]:
        """(zeros, numel) of a tensor for compressed-tensors' global_sparsity (the nn.Linear weights, as the
        in-memory writer counts them); (0, 0) for the others and for the dense format."""
        times = self.fmt.counted.get(key, 0)
        return (times * int((tensor == 0).sum()), times * tensor.numel()) if times else (0, 0)

    def _write(self, key: str, tensor: torch.Tensor, checksums: dict) -> dict[str, torch.Tensor]:
        outputs = self.fmt.encode(key, tensor)
        for name, value in outputs.items():
            checksums[name] = self.shards.write(name, value)
        return outputs

    def _read(self, keys, checksums: dict) -> dict[str, torch.Tensor] | None:
        """{checkpoint key: tensor} read back from the output, or None when a checksum does not match."""
        result = {}
        for key in keys:
            outputs = {}
            for name in self.fmt.names(key, self.checkpoint):
                outputs[name], digest = self.shards.read(name)
                if digest != checksums.get(name):
                    log.warning("%s in the partial output does not match its checksum", name)
                    return None
            result[key] = self.fmt.decode(key, outputs)
        return result

    def open_shards(self, plan: LayerPlan) -> None:
        """Open the output shards. A compressed-tensors output whose layer plan keeps matrices dense writes
        them dense (in sparsity_config's ignore list, as the in-memory writer does), not packed: its format
        and shard plan are made again from the layer plan (the same on a resumed run: the plan is in the
        manifest) and the free space checked again."""
        if self.fmt.name != "dense" and any(plan.dense):
            self.fmt = OutputFormat(self.fmt.name, self.skeleton, self.layout, self.checkpoint, self.config,
                                    dense=plan.dense)
            self.shard_plan = _shard_plan(self.fmt, self.layout, self.checkpoint, self.vocab, self.shard_bytes)
            folder = self.manifest.folder
            check_free_space(folder.parent, sum(self.shard_plan.sizes) - _allocated(folder),
                             f"the output shards of {folder.name}")
        self.shards = ShardFiles(self.manifest.folder, self.shard_plan)
        self.summary.shards = len(self.shard_plan.files)

    def copy_non_layer(self) -> None:
        """Embeddings, final norm, LM head...: copied byte for byte (packed when compressed-tensors packs
        them), one tensor at a time, once per run."""
        done = self.manifest.data["non_layer"]
        if done is not None and self._read(self.layout.non_layer, done["checksums"]) is not None:
            return
        checksums, zeros, numel = {}, 0, 0
        for name in self.layout.non_layer:
            tensor = self.vocab.apply(name, self.checkpoint.load([name])[name])
            self._write(name, tensor, checksums)
            z, n = self._zeros(name, tensor)
            zeros, numel = zeros + z, numel + n
        self.shards.sync()
        self.manifest.set("non_layer", {"checksums": checksums, "zeros": zeros, "numel": numel})

    def capture(self) -> ActivationStore:
        """Embed every calibration batch (the first block's inputs), kept in the tier the budget allows."""
        config, skeleton, itemsize = self.config, self.skeleton, self.compute.itemsize
        hidden_size = skeleton.config.hidden_size
        batch_size = effective_batch_size(skeleton, config)
        batches = [(stream, batch) for stream, calibration in self.streams.items()
                   for batch in calibration.batches(batch_size)]
        activations = sum(ids.numel() * hidden_size * itemsize for _, (ids, _) in batches)
        largest = max(ids.numel() for _, (ids, _) in batches)
        fixed = layer_bytes(skeleton, itemsize) + working_bytes(skeleton, config, largest, itemsize)
        if config.reconstruct:  # the float32 block, its gradients and Adam's two moments: 16 bytes per weight
            fixed += layer_bytes(skeleton, 4) * 4
        if config.reconstruct and config.reconstruct_mask == "learned":  # the latent float32 copy, the dense
            fixed += layer_bytes(skeleton, 4 + itemsize + 2)  # matrices, the first step's and each step's masks
        # with reconstruction (and in keep_dense's dense pass) the dense block's outputs sit beside the activations
        copies = 2 if config.reconstruct or config.keep_dense else 1
        tier, reason = choose_tier(activations * copies, fixed, self.device, self.budget)
        log.info("calibration activations: %.2f GiB (%d batches of [B, T, %d] %s) on %s: %s", activations / 2**30,
                 len(batches), hidden_size, str(self.compute).replace("torch.", ""), tier, reason)
        store = ActivationStore(tier, self.device, self.manifest.folder / SCRATCH_FILE)
        store.reserve(activations, len(batches))
        with pre_layer_weights(skeleton, self.checkpoint, self.layout, self.device):
            form = self._output_form(batches[0][1])
            for stream, batch in batches:
                (item,) = capture_layer_inputs(skeleton, _OneBatch(batch), stream, batch_size, device=self.device,
                                               form=form)
                store.append(item)
        log.info("block arguments (masks, positions): %.2f GiB on %s", arguments_nbytes(store.items) / 2**30,
                 self.device)
        return store

    def _output_form(self, batch):
        """How the blocks shape their output (tfprune.engine.capture.output_form), learnt from the first block
        on the first prompt of `batch`; the first layer is read for it and freed again."""
        ids, mask = (tensor[:1].to(self.device) for tensor in batch)
        hidden, args, kwargs = first_block_input(self.skeleton, ids, mask)
        block = self._materialize(0, self.checkpoint.load(self.layout.layer_keys[0]))
        try:
            return output_form(block, hidden, args, kwargs)
        finally:
            free(block)

    def _materialize(self, index: int, tensors: dict[str, torch.Tensor]) -> torch.nn.Module:
        block = decoder_layers(self.skeleton)[index]
        materialize(block, self.layout.layer_tensors(index, tensors), self.device)
        return block

    def layer_plan(self) -> LayerPlan:
        """Uniform, or from a dense pass over the layers (read from the checkpoint) when the options need one
        (tfprune.engine.plan), once per run (kept in the manifest); the pass consumes the activations, so they
        are captured again."""
        config, layers = self.config, len(self.layout.layers)
        if not needs_dense_pass(config):
            return uniform_plan(config, layers)
        if self.manifest.data.get("layer_plan") is not None:
            return LayerPlan.from_dict(self.manifest.data["layer_plan"])
        log.info("dense pass over %d layers for the layer plan", layers)
        plan = dense_pass(self._dense_blocks(), self.store, config, layers, self.progress)
        self.manifest.set("layer_plan", plan.to_dict())
        self.store.close()
        self.store = self.capture()
        return plan

    def _dense_blocks(self):
        """(index, dense block) for every layer in order, each read from the checkpoint and freed after use."""
        for index, keys in enumerate(self.layout.layer_keys):
            block = self._materialize(index, self.checkpoint.load(keys))
            try:
                yield index, block
            finally:
                free(block)

    def replay(self) -> int:
        """Rebuild the activations of a resumed run: run the finished layers again with the pruned weights read
        back from the output (checking their checksums). From a layer that fails, the layers are done again."""
        finished = len(self.manifest.layers)
        for index in range(finished):
            tensors = self._read(self.layout.layer_keys[index], self.manifest.layers[index]["checksums"])
            if tensors is None:
                log.warning("layer %d fails its checksums: pruning layers %d.. again", index, index)
                self.manifest.truncate_layers(index)
                return index
            block = self._materialize(index, tensors)
            del tensors
            forward_block(block, index, self.store)
            free(block)
        if finished:
            log.info("resumed: %d of %d layers were finished and verified", finished, len(self.layout.layers))
        return finished

    def prune_layers(self, plan: LayerPlan) -> None:
        """Per layer: read, materialize, calibrate and prune, write, recompute the outputs, free, record."""
        summary, config, blocks = self.summary, self.config, decoder_layers(self.skeleton)
        first = len(self.manifest.layers)
        kill_after = os.environ.get(KILL_AFTER_LAYER_ENV)
        bar = tqdm(total=len(blocks), initial=first, desc="pruning (streaming)", unit="layer",
                   disable=not self.progress)
        try:
            for index in range(first, len(blocks)):
                began = time.perf_counter()
                with summary.phase("read"):
                    tensors = self.checkpoint.load(self.layout.layer_keys[index])
                    block = self._materialize(index, tensors)
                seed = config.seed + sum(len(layer["reports"]) for layer in self.manifest.layers)
                with summary.phase("prune"):
                    result = prune_block(block, index, self.store, config, plan.sparsities[index], seed,
                                         dense=plan.dense[index])
                with summary.phase("write"):
                    checksums, zeros, numel = self._write_layer(block, index, tensors,
                                                                fitted=result.reconstruction is not None,
                                                                dense=plan.dense[index])
                    del tensors
                with summary.phase("forward"):
                    forward_block(block, index, self.store)
                free(block)
                with summary.phase("write"):
                    self.shards.sync()
                    self.manifest.add_layer(index, checksums, [asdict(r) for r in result.reports],
                                            time.perf_counter() - began, zeros=zeros, numel=numel,
                                            reconstruction=None if result.reconstruction is None
                                            else asdict(result.reconstruction))
                summary.layer_seconds.append(time.perf_counter() - began)
                peak = f"{_peak_rss() / 2**30:.2f}G"
                if self.device.type == "cuda":
                    peak += f", GPU {torch.cuda.max_memory_allocated(self.device) / 2**30:.2f}G"
                bar.set_postfix_str(f"peak {peak}")
                bar.update(1)
                if kill_after is not None and index == int(kill_after):
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            bar.close()

    def _write_layer(self, block, index: int, tensors: dict, fitted: bool = False, dense=()) -> tuple[dict, int, int]:
        """Write one pruned layer: the groups holding pruned weights (not the matrices the plan left `dense`,
        unless the block was reconstructed (`fitted`): then also its normalization weights) from the block (in
        their checkpoint dtype, mapped back to the checkpoint's layout, packed by the format), every other
        tensor as read. The block keeps what a resumed run will read back (the dtype round trip, the packing
        round trip) for its output forward."""
        layout = self.layout
        prefix = f"{layout.path}.{index}."
        names = (fitted_parameter_names(block) if fitted
                 else {t.parameter_name for name, t in targets(block).items() if name not in dense})
        pruned = {prefix + name for name in names}
        params = block.state_dict(keep_vars=True)
        written = {key: tensors[key] for key in layout.passthrough[index]}
        values: dict[str, torch.Tensor] = {}  # pruned model tensors, cast to their checkpoint dtype
        for group in layout.layers[index]:
            if not pruned.intersection(group.targets):
                written.update({key: tensors[key] for key in group.sources})
                continue
            dtype = DTYPES[self.checkpoint.tensors[group.sources[0]].dtype]
            cast = {target: params[target[len(prefix):]].data.to("cpu", dtype) for target in group.targets}
            written.update(layout.keymap.to_checkpoint(group, cast))
            values.update(cast)
        checksums, zeros, numel, outputs = {}, 0, 0, {}
        for key in layout.layer_keys[index]:
            outputs[key] = self._write(key, written[key], checksums)
            z, n = self._zeros(key, written[key])
            zeros, numel = zeros + z, numel + n
        for target, value in values.items():
            param, key = params[target[len(prefix):]], layout.checkpoint_key(target)
            if key in self.fmt.packed:
                param.data = self.fmt.decode(key, outputs[key]).to(self.device, param.dtype)
            elif value.dtype != param.dtype:
                param.data = value.to(self.device, param.dtype)
        return checksums, zeros, numel

    def verify(self) -> None:
        """Read every planned tensor back and compare its sha256 with the manifest: nothing missing, nothing
        changed. Then open each shard with safetensors to check its header."""
        from safetensors import safe_open

        plan = self.shards.plan
        checksums = dict(self.manifest.data["non_layer"]["checksums"])
        for layer in self.manifest.layers:
            checksums.update(layer["checksums"])
        missing = [name for name in plan.tensors if name not in checksums]
        if missing:
            raise RuntimeError(f"{len(missing)} planned tensors were never written, e.g. {missing[:3]}")
        for name in plan.tensors:
            if self.shards.read(name)[1] != checksums[name]:
                raise TfpruneError(f"verification failed: {name} in {self.shards.folder} does not match its "
                                   "checksum (disk error?); rerun the same command to redo it")
        for index, file in enumerate(plan.files):
            with safe_open(str(self.shards.folder / file), framework="pt") as handle:
                if set(handle.keys()) != {t.name for t in plan.tensors.values() if t.shard == index}:
                    raise TfpruneError(f"verification failed: {file} lists other tensors than planned")

    def finish(self, folder: Path, tokenizer, report: PruneReport, extra: dict | None) -> None:
        """Index, config, tokenizer, tfprune.json next to the verified shards; scratch and handles released."""
        tmp = self.shards.folder
        self.store.close()
        self.shards.close()
        (tmp / INDEX_FILE).write_text(json.dumps(self.shards.plan.index(), indent=2) + "\n", encoding="utf-8")
        for name in COPIED_FILES:
            if (folder / name).is_file():
                shutil.copyfile(folder / name, tmp / name)
        records = [self.manifest.data["non_layer"], *self.manifest.layers]
        config_text = self.fmt.config_json((folder / "config.json").read_text(encoding="utf-8"),
                                           sum(r["zeros"] for r in records), sum(r["numel"] for r in records))
        if config_text is not None:
            (tmp / "config.json").write_text(config_text, encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        self.vocab.finish(tmp)
        write_marker(tmp, "prune", {"config": self.config.to_dict(), "report": report.to_dict(),
                                    "streaming": asdict(self.summary), "format": self.fmt.name, **(extra or {})})
        self.manifest.release()
