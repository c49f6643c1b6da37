"""Streaming engine benchmark (a script, not a timed test).

1. Generate a synthetic Llama-architecture checkpoint (random bf16 weights, default hidden 4096, intermediate
   11008, 10 layers: 4.6 GB), written shard by shard (one decoder layer per shard), never whole in memory.
2. Evict it from the page cache (posix_fadvise DONTNEED), then prune it with `tfprune prune --streaming` on the
   CPU in a subprocess: wall time, peak RSS (wait4), bytes read/written and the per-phase times from tfprune.json.
3. Optionally the same command in memory (`--no-streaming`), and check both outputs are bit-identical.

    .venv/bin/python benchmarks/bench_streaming.py [--layers 10] [--no-in-memory] [--work /tmp/tfprune-bench]

Prints a markdown table and the JSON record (also written to WORK/results.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

GB = 1e9
GIB = 2**30


def generate(folder: Path, layers: int, hidden: int, intermediate: int, vocab: int, heads: int, kv_heads: int,
             dtype: torch.dtype, seed: int = 0) -> int:
    """Write config, tokenizer and one safetensors shard per decoder layer (plus one for the embeddings, final
    norm and LM head). Returns the tensor bytes. Holds one shard at a time."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from tfprune.builtin import build_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=4096, tie_word_embeddings=False, dtype=str(dtype).split(".")[1])
    tokenizer = build_tokenizer()
    config.bos_token_id, config.eos_token_id, config.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape):
        return (torch.randn(*shape, generator=generator) * 0.02).to(dtype)

    head_dim = hidden // heads
    shards = [{"model.embed_tokens.weight": lambda: normal(vocab, hidden),
               "model.norm.weight": lambda: torch.ones(hidden, dtype=dtype),
               "lm_head.weight": lambda: normal(vocab, hidden)}]
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append({
            p + "input_layernorm.weight": lambda: torch.ones(hidden, dtype=dtype),
            p + "post_attention_layernorm.weight": lambda: torch.ones(hidden, dtype=dtype),
            p + "self_attn.q_proj.weight": lambda: normal(hidden, hidden),
            p + "self_attn.k_proj.weight": lambda: normal(kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": lambda: normal(kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": lambda: normal(hidden, hidden),
            p + "mlp.gate_proj.weight": lambda: normal(intermediate, hidden),
            p + "mlp.up_proj.weight": lambda: normal(intermediate, hidden),
            p + "mlp.down_proj.weight": lambda: normal(hidden, intermediate),
        })
    weight_map, total = {}, 0
    for index, makers in enumerate(shards):
        name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {key: make() for key, make in makers.items()}
        save_file(tensors, folder / name, metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        weight_map.update({key: name for key in tensors})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def evict(folder: Path) -> None:
    """Drop the folder's files from the page cache, so that the run reads them from disk."""
    for path in folder.glob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run(command: list[str]) -> dict:
    """Wall seconds and peak RSS (bytes) of one subprocess."""
    began = time.perf_counter()
    process = subprocess.Popen(command)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed with {process.returncode}")
    return {"seconds": time.perf_counter() - began, "peak_rss": usage.ru_maxrss * 1024}


def identical(a: Path, b: Path) -> bool:
    """Every tensor of directory a equals (dtype and bits) the same-named tensor of b; one tensor at a time."""
    from safetensors import safe_open

    def where(folder):
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        with safe_open(str(folder / "model.safetensors"), "pt") as handle:
            return {k: folder / "model.safetensors" for k in handle.keys()}

    left, right = where(a), where(b)
    if set(left) != set(right):
        return False
    for name in left:
        with safe_open(str(left[name]), "pt") as x, safe_open(str(right[name]), "pt") as y:
            s, t = x.get_tensor(name), y.get_tensor(name)
            if s.dtype != t.dtype or not torch.equal(s, t):
                return False
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tfprune-bench-streaming"))
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=32)
    parser.add_argument("--nsamples", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--in-memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    args = parser.parse_args(argv)

    checkpoint = args.work / "checkpoint"
    shape = [args.layers, args.hidden, args.intermediate, args.vocab, args.heads, args.kv_heads]
    stamp = args.work / "shape.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == shape):
        shutil.rmtree(args.work, ignore_errors=True)
        began = time.perf_counter()
        size = generate(checkpoint, args.layers, args.hidden, args.intermediate, args.vocab, args.heads,
                        args.kv_heads, torch.bfloat16)
        stamp.write_text(json.dumps(shape))
        print(f"generated {size / GB:.2f} GB in {time.perf_counter() - began:.0f} s")
    size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
    layer_bytes = sum(p.stat().st_size for p in sorted(checkpoint.glob("*.safetensors"))[1:])
    options = ["--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--batch-size", str(args.batch_size),
               "--device", args.device, "--quiet"]
    cli = [sys.executable, "-m", "tfprune.cli", "prune", str(checkpoint)]
    results = {"checkpoint_bytes": size, "checkpoint_bytes_layers": layer_bytes, "layers": args.layers,
               "hidden": args.hidden,
               "intermediate": args.intermediate, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "torch": torch.__version__, "threads": torch.get_num_threads(), "load_before": os.getloadavg()}
    for mode in ["streaming"] + (["in-memory"] if args.in_memory else []):
        out = args.work / mode
        shutil.rmtree(out, ignore_errors=True)
        evict(checkpoint)
        flag = "--streaming" if mode == "streaming" else "--no-streaming"
        measured = run([*cli, "--out", str(out), flag, *options])
        record = json.loads((out / "tfprune.json").read_text())
        measured["streaming"] = record.get("streaming")
        measured["calibration_tokens"] = record["report"]["calibration_tokens"]
        results[mode] = measured
        print(f"{mode}: {measured['seconds']:.0f} s, peak RSS {measured['peak_rss'] / GIB:.2f} GiB")
    if args.in_memory:
        results["bit_identical"] = identical(args.work / "streaming", args.work / "in-memory")
    results["load_after"] = os.getloadavg()
    results["llama2_70b_projection"] = project(results)
    (args.work / "results.json").write_text(json.dumps(results, indent=2))
    print(table(results))
    print(json.dumps(results, indent=2))
    if not args.keep:
        for mode in ("streaming", "in-memory"):
            shutil.rmtree(args.work / mode, ignore_errors=True)
    return 0


def table(results: dict) -> str:
    size = results["checkpoint_bytes"]
    stream = results["streaming"]
    summary = stream["streaming"]
    activations = summary["activation_bytes"]
    rows = ["| run | wall s | s / GB | peak RSS GiB | peak RSS / checkpoint | target: 0.25 + activations + 1 GiB |",
            "|---|---|---|---|---|---|"]
    target = (0.25 * size + activations + GIB) / size
    for mode in ("streaming", "in-memory"):
        if mode in results:
            r = results[mode]
            rows.append(f"| {mode} | {r['seconds']:.0f} | {r['seconds'] / (size / GB):.1f} | "
                        f"{r['peak_rss'] / GIB:.2f} | {r['peak_rss'] / size:.3f} | {target:.3f} |")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in summary["phases"].items())
    rows.append("")
    rows.append(f"checkpoint {size / GB:.2f} GB, {results['layers']} layers, {stream['calibration_tokens']} "
                f"calibration tokens, activations {activations / 2**20:.0f} MiB on {summary['tier']}; read "
                f"{summary['bytes_read'] / GB:.2f} GB, written {summary['bytes_written'] / GB:.2f} GB, verified "
                f"{summary['bytes_verified'] / GB:.2f} GB; phases: {phases}")
    if "bit_identical" in results:
        rows.append(f"streaming and in-memory outputs bit-identical: {results['bit_identical']}")
    return "\n".join(rows)


# Llama-2-70B: 80 layers, hidden 8192, MLP 28672, 64 heads with 8 KV heads (GQA), vocab 32000, bf16; calibration
# 128 x 2048 tokens in batches of 8.
LLAMA2_70B = dict(layers=80, hidden=8192, intermediate=28672, heads=64, kv_heads=8, vocab=32000, nsamples=128,
                  seqlen=2048, batch=8)


def layer_params(hidden: int, intermediate: int, heads: int, kv_heads: int) -> int:
    kv = hidden // heads * kv_heads
    return 2 * hidden * hidden + 2 * kv * hidden + 3 * hidden * intermediate + 2 * hidden


def project(results: dict, gpu_tflops: float = 600.0, model: dict = LLAMA2_70B) -> dict:
    """Projected streaming run of `model` on one GPU, from the measured per-layer figures.

    Host-side phases (reading the checkpoint, writing + hashing the output, reading back to verify, copying the
    non-layer tensors) are proportional to bytes: their measured seconds per GB are applied to the model's bytes.
    Device phases (calibration forward with statistics, pruning, output forward) are proportional to FLOPs: two
    passes of 2 · params · tokens plus causal attention 2 · 2 · T² · hidden per sequence, at `gpu_tflops` (a
    sustained bf16 rate; H100 SXM peaks at 989 dense). Memory: one layer + activations + block arguments (a 4-D
    bool mask [B, 1, T, T] and cos/sin [B, T, head_dim] per batch) + the larger of a batch's forward transient
    (3 MLP intermediates [B·T, ffn] bf16, the fp32 copy and square of the statistics on the widest input, 4
    hidden-size tensors) and the pruning transient of the largest linear (fp32 scores, sort values, int64
    indices, bool mask: 17 B/weight): the estimate the engine's tier choice uses (streaming._working_bytes).
    """
    summary = results["streaming"]["streaming"]
    phases = summary["phases"]
    measured_layer_bytes = results["checkpoint_bytes_layers"] / results["layers"]
    read_s_per_gb = phases["read"] / (results["checkpoint_bytes_layers"] / GB)
    write_s_per_gb = phases["write"] / (summary["bytes_written"] / GB)
    verify_s_per_gb = phases["verify"] / (summary["bytes_verified"] / GB)
    m = model
    params = layer_params(m["hidden"], m["intermediate"], m["heads"], m["kv_heads"])
    layer_bytes = 2 * params
    other_bytes = 2 * 2 * m["vocab"] * m["hidden"] + 2 * m["hidden"]
    total = m["layers"] * layer_bytes + other_bytes
    tokens = m["nsamples"] * m["seqlen"]
    flops = 2 * (2 * params * tokens + 2 * 2 * m["seqlen"] ** 2 * m["hidden"] * m["nsamples"])
    compute_s = flops / (gpu_tflops * 1e12)
    host_s = (read_s_per_gb * layer_bytes + write_s_per_gb * layer_bytes + verify_s_per_gb * layer_bytes) / GB
    activations = tokens * m["hidden"] * 2
    batches = m["nsamples"] // m["batch"]
    head_dim = m["hidden"] // m["heads"]
    block_args = batches * (m["batch"] * m["seqlen"] ** 2 + 2 * m["batch"] * m["seqlen"] * head_dim * 2)
    batch_tokens = m["batch"] * m["seqlen"]
    forward = batch_tokens * (3 * m["intermediate"] * 2 + 2 * m["intermediate"] * 4 + 4 * m["hidden"] * 2)
    pruning = 17 * m["hidden"] * m["intermediate"]
    peak = layer_bytes + activations + block_args + max(forward, pruning)
    return {"model_bytes": total, "layer_bytes": layer_bytes, "measured_layer_bytes": measured_layer_bytes,
            "read_s_per_gb": read_s_per_gb, "write_s_per_gb": write_s_per_gb, "verify_s_per_gb": verify_s_per_gb,
            "layer_tflop": flops / 1e12, "layer_compute_s": compute_s, "layer_host_s": host_s,
            "total_s": m["layers"] * (compute_s + host_s) + other_bytes / GB * write_s_per_gb,
            "activation_bytes": activations, "block_arg_bytes": block_args, "forward_transient": forward,
            "pruning_transient": pruning, "peak_gpu_bytes": peak}


if __name__ == "__main__":
    sys.exit(main())
