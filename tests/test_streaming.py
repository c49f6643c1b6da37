"""The streaming engine: bit-identical to the in-memory engine, resumable after SIGKILL, refuses a different
command on a partial output, never leaves a final directory behind a crash."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tfprune
from tfprune import PruneConfig
from tfprune.builtin import BUILTIN_FAMILIES, build_model
from tfprune.cli import main
from tfprune.engine import streaming
from tfprune.engine.activations import ActivationStore, MemoryBudget, choose_tier
from tfprune.engine.checkpoint import DTYPES, Checkpoint, parse_size, plan_shards
from tfprune.engine.manifest import MANIFEST_FILE, partial_dir
from tfprune.engine.capture import LayerInput
from tfprune.engine.streaming import KILL_AFTER_LAYER_ENV, prune_streaming
from tfprune.errors import RunMismatchError
from tfprune.models import load_model

TINY = dict(nsamples=4, seqlen=32, batch_size=2, distill=0)  # the in-memory default for N:M; streaming: none
CLI_TINY = ["--nsamples", "4", "--seqlen", "32", "--batch-size", "2", "--quiet", "--streaming", "--shard-size", "90KB"]


def save_checkpoint(folder: Path, family: str, **options) -> Path:
    model, tokenizer = build_model(family, **options)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def output_tensors(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors = {}
    for file in sorted(set(index["weight_map"].values())):
        part = load_file(folder / file)
        assert all(index["weight_map"][name] == file for name in part)
        tensors.update(part)
    assert set(tensors) == set(index["weight_map"])
    return tensors


def in_memory(checkpoint: Path, config: PruneConfig, dtype=None) -> dict[str, torch.Tensor]:
    model, tokenizer = load_model(str(checkpoint), dtype)
    tfprune.prune(model, tokenizer, config, progress=False)
    return model.state_dict()


def assert_same(streamed: dict, expected: dict, checkpoint: Path):
    stored = set(Checkpoint(checkpoint).tensors)
    assert set(streamed) == stored
    for name, tensor in streamed.items():
        assert tensor.dtype == expected[name].dtype, name
        assert torch.equal(tensor, expected[name]), name


def file_digests(folder: Path, pattern: str = "*") -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern)) if p.is_file()}


@pytest.mark.parametrize("family", BUILTIN_FAMILIES)
def test_streaming_is_bit_identical_to_in_memory(family, tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ckpt", family)
    before = file_digests(checkpoint)
    config = PruneConfig(**TINY)
    report, summary = prune_streaming(str(checkpoint), tmp_path / "out", config, progress=False, shard_size="90KB")
    assert_same(output_tensors(tmp_path / "out"), in_memory(checkpoint, config), checkpoint)
    assert summary.shards > 1 and summary.tier == "device" and summary.resumed_layers == 0
    assert summary.bytes_written == summary.bytes_verified == Checkpoint(checkpoint).nbytes
    assert report.sparsity == pytest.approx(0.5)
    assert file_digests(checkpoint) == before  # the input is never written (weights are pruned in copies)
    assert (tmp_path / "out" / "config.json").read_bytes() == (checkpoint / "config.json").read_bytes()
    assert not partial_dir(tmp_path / "out").exists() and not (tmp_path / "out" / MANIFEST_FILE).exists()


@pytest.mark.parametrize("tier, dtype", [(None, torch.float32), ("device=1KB,host=1GiB", torch.float32),
                                         (None, torch.bfloat16)])
def test_block_reconstruction_streams_to_the_same_weights(tmp_path, tier, dtype):
    """The fitted norms are written too (in bf16 the block's tensors are no longer the ones read)."""
    checkpoint = save_checkpoint(tmp_path / "ckpt", "qwen2", layers=3, dtype=dtype)
    config = PruneConfig(**TINY, pattern="2:4", reconstruct=6, reconstruct_lr=1e-3)
    report, summary = prune_streaming(str(checkpoint), tmp_path / "out", config, progress=False, max_memory=tier)
    assert summary.tier == ("device" if tier is None else "disk")  # on a CPU the next tier is the scratch file
    streamed, original = output_tensors(tmp_path / "out"), Checkpoint(checkpoint)
    assert_same(streamed, in_memory(checkpoint, config), checkpoint)
    norm = "model.layers.1.input_layernorm.weight"
    assert not torch.equal(streamed[norm], original.load([norm])[norm])  # fitted, and written
    assert [r["index"] for r in report.reconstruction] == [0, 1, 2]


def test_offloaded_activations_owl_contrastive_and_bf16(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "llama", layers=3)
    config = PruneConfig(method="contrastive", owl=(5.0, 0.08), sparsity=0.6, **TINY)
    report, summary = prune_streaming(str(checkpoint), tmp_path / "out", config, progress=False,
                                      max_memory="device=1KB")
    assert summary.tier == "disk"
    assert len(set(report.block_sparsity)) == 3
    assert_same(output_tensors(tmp_path / "out"), in_memory(checkpoint, config), checkpoint)
    assert not list((tmp_path / "out").glob("*.scratch"))

    gpt2 = save_checkpoint(tmp_path / "gpt2", "gpt2", dtype=torch.bfloat16)
    config = PruneConfig(pattern="2:4", reconstruct=4, **TINY)  # a few steps, not the default 256 (time)
    prune_streaming(str(gpt2), tmp_path / "gpt2-out", config, progress=False)
    streamed = output_tensors(tmp_path / "gpt2-out")
    assert streamed["transformer.h.0.attn.c_attn.weight"].dtype == torch.bfloat16
    assert_same(streamed, in_memory(gpt2, config), gpt2)
    reloaded = load_model(str(tmp_path / "gpt2-out"))[0]
    assert torch.isfinite(reloaded(input_ids=torch.tensor([[1, 5, 9]])).logits).all()


@pytest.mark.parametrize("family, keep_dense", [("llama", 0.0), ("opt", 0.0), ("llama", 0.25)])
def test_compressed_tensors_output_matches_the_in_memory_writer(family, keep_dense, tmp_path, monkeypatch):
    """Also with --keep-dense: the matrices the dense pass keeps are written dense and listed in the ignore list
    (the shard plan is made again from the layer plan, on the resumed run from the manifest's)."""
    from tfprune.sparse import from_pretrained

    checkpoint = save_checkpoint(tmp_path / "ckpt", family)
    config = PruneConfig(pattern="2:4", reconstruct=4, keep_dense=keep_dense, **TINY)  # 4 steps, not 256 (time)
    model, tokenizer = load_model(str(checkpoint))
    tfprune.prune(model, tokenizer, config, progress=False)
    tfprune.save_pruned(model, tokenizer, tmp_path / "memory", config, format="compressed-tensors")

    calls = []

    def crash_once(run):  # interrupted after every layer was written: the resumed run replays packed layers
        calls.append(run)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return verify(run)

    verify = streaming._Run.verify
    monkeypatch.setattr(streaming._Run, "verify", crash_once)
    options = dict(progress=False, output_format="compressed-tensors", shard_size="90KB")
    with pytest.raises(KeyboardInterrupt):
        prune_streaming(str(checkpoint), tmp_path / "out", config, **options)
    assert prune_streaming(str(checkpoint), tmp_path / "out", config, **options)[1].resumed_layers == 2

    streamed, expected = output_tensors(tmp_path / "out"), load_file(tmp_path / "memory" / "model.safetensors")
    assert set(streamed) == set(expected) and any(name.endswith(".bitmask") for name in streamed)
    for name, tensor in streamed.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name
    quantization = [json.loads((tmp_path / d / "config.json").read_text())["quantization_config"]
                    for d in ("out", "memory")]
    assert quantization[0] == quantization[1]
    kept = [f"model.layers.{name}" for name in tfprune.prune(*load_model(str(checkpoint)), config,
                                                             progress=False).kept_dense]
    assert bool(kept) == bool(keep_dense)
    for name in kept:  # dense, unpacked, ignored by the format
        assert f"{name}.weight" in streamed and f"{name}.bitmask" not in streamed
        assert name in quantization[0]["sparsity_config"]["ignore"]
    ids = torch.randint(0, len(tokenizer), (2, 12))
    reloaded = from_pretrained(tmp_path / "out", format="bitmask")
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_sigkill_resume_is_identical_and_other_commands_are_refused(tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "llama", layers=4)
    out = tmp_path / "out"
    command = ["prune", str(checkpoint), "--out", str(out), *CLI_TINY]
    env = {**os.environ, KILL_AFTER_LAYER_ENV: "1"}
    killed = subprocess.run([sys.executable, "-m", "tfprune.cli", *command], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists()
    partial = partial_dir(out)
    manifest = json.loads((partial / MANIFEST_FILE).read_text())
    assert [layer["index"] for layer in manifest["layers"]] == [0, 1]

    assert main(["prune", str(checkpoint), "--out", str(out), *CLI_TINY, "--sparsity", "0.6"]) == 2
    error = capsys.readouterr().err
    assert "different command" in error and "sparsity: 0.5 (partial run) vs 0.6 (this command)" in error
    with pytest.raises(RunMismatchError, match="calibration"):
        prune_streaming(str(checkpoint), out, PruneConfig(**{**TINY, "seed": 1}), progress=False, shard_size="90KB")
    assert not out.exists() and (partial / MANIFEST_FILE).is_file()

    # a finished layer whose bytes were damaged is detected while replaying and pruned again
    name = "model.layers.1.mlp.down_proj.weight"
    plan_file, offset = _location(partial, name)
    with open(partial / plan_file, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))

    assert main(command) == 0
    assert not partial.exists()
    record = json.loads((out / "tfprune.json").read_text())
    assert record["streaming"]["resumed_layers"] == 1
    assert main(["prune", str(checkpoint), "--out", str(tmp_path / "reference"), *CLI_TINY]) == 0
    reference = json.loads((tmp_path / "reference" / "tfprune.json").read_text())
    assert file_digests(out, "*.safetensors") == file_digests(tmp_path / "reference", "*.safetensors")
    for file in ("model.safetensors.index.json", "config.json", "tokenizer.json"):
        assert (out / file).read_bytes() == (tmp_path / "reference" / file).read_bytes()
    strip = lambda layers: [{k: v for k, v in layer.items() if k != "seconds"} for layer in layers]  # noqa: E731
    assert strip(record["report"]["layers"]) == strip(reference["report"]["layers"])
    assert_same(output_tensors(out), in_memory(checkpoint, PruneConfig(**TINY)), checkpoint)


def _location(folder: Path, name: str) -> tuple[str, int]:
    """(shard file, absolute offset) of a tensor in a partial output, from the shard headers."""
    for path in sorted(folder.glob("*.safetensors")):
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        if name in header:
            return path.name, 8 + length + header[name]["data_offsets"][0]
    raise KeyError(name)


def test_a_crash_leaves_no_final_directory(tmp_path, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "opt", layers=3)

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(streaming._Run, "verify", boom)
    with pytest.raises(KeyboardInterrupt):
        prune_streaming(str(checkpoint), tmp_path / "out", PruneConfig(**TINY), progress=False)
    assert not (tmp_path / "out").exists() and partial_dir(tmp_path / "out").is_dir()
    monkeypatch.undo()
    report, summary = prune_streaming(str(checkpoint), tmp_path / "out", PruneConfig(**TINY), progress=False)
    assert summary.resumed_layers == 3 and len(report.layers) == 18


def test_automatic_choice_and_budgets(tmp_path, monkeypatch):
    checkpoint = save_checkpoint(tmp_path / "ckpt", "llama")
    size = Checkpoint(checkpoint).nbytes
    monkeypatch.setattr(streaming, "free_memory", lambda device: size)
    assert streaming.should_stream(str(checkpoint))
    monkeypatch.setattr(streaming, "free_memory", lambda device: 100 * size)
    assert not streaming.should_stream(str(checkpoint))
    assert not streaming.should_stream("builtin:llama")

    cuda = torch.device("cuda")
    assert choose_tier(10, 5, cuda, MemoryBudget(device=20, host=0))[0] == "device"
    assert choose_tier(10, 15, cuda, MemoryBudget(device=20, host=10))[0] == "host"
    assert choose_tier(11, 15, cuda, MemoryBudget(device=20, host=10))[0] == "disk"
    assert choose_tier(10, 15, torch.device("cpu"), MemoryBudget(device=20, host=10**9))[0] == "disk"
    assert MemoryBudget.parse("device=2GiB,host=1.5GB") == MemoryBudget(2 * 2**30, 1_500_000_000)
    assert MemoryBudget.parse("40GiB") == MemoryBudget(device=40 * 2**30)
    assert parse_size("5GB") == 5 * 10**9 and parse_size("512MiB") == 2**29


@pytest.mark.parametrize("tier", ["device", "host", "disk"])
def test_activation_store_tiers(tier, tmp_path):
    store = ActivationStore(tier, torch.device("cpu"), tmp_path / "scratch")
    batches = [torch.randn(2, 5, 8), torch.randn(1, 3, 8, dtype=torch.bfloat16)]
    store.reserve(sum(b.numel() * b.element_size() for b in batches), len(batches))
    for hidden in batches:
        store.append(LayerInput("translation", hidden.clone(), [], torch.ones(hidden.shape[0] * hidden.shape[1],
                                                                                   dtype=torch.bool)))
    assert store.nbytes == sum(b.numel() * b.element_size() for b in batches)
    assert all(torch.equal(item.hidden, hidden) for item, hidden in zip(store, batches))
    store.put(1, batches[1] * 2)
    assert torch.equal(store[1].hidden, batches[1] * 2) and store[1].hidden.dtype == torch.bfloat16
    store.close()
    assert not (tmp_path / "scratch").exists()


def test_shard_plan_layout():
    specs = [("a", "F32", (3, 5)), ("b", "BF16", (7,)), ("c", "I64", (2, 1)), ("d", "U8", (9,))]
    plan = plan_shards(specs, max_shard_bytes=80)
    assert plan.files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert [plan.tensors[n].shard for n in "abcd"] == [0, 0, 1, 1]
    assert all(tensor.offset % DTYPES[tensor.dtype].itemsize == 0 for tensor in plan.tensors.values())
    assert all(len(header) % 8 == 0 for header in plan.headers)


def test_the_free_space_check_counts_written_shards_not_the_activation_scratch(tmp_path):
    """A resumed run (or the re-planned shards of --keep-dense) needs only the shards' missing bytes; the
    activations' scratch file in the same folder is not shard space."""
    shard = tmp_path / "model-00001-of-00001.safetensors"
    shard.write_bytes(os.urandom(64 * 1024))
    (tmp_path / streaming.SCRATCH_FILE).write_bytes(os.urandom(256 * 1024))
    (tmp_path / MANIFEST_FILE).write_text("{}")
    allocated = streaming._allocated(tmp_path)
    assert shard.stat().st_blocks * 512 <= allocated < 128 * 1024
