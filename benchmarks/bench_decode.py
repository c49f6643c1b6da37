"""2:4 decode kernels (tfprune.decode24, issue 7) against torch's dense F.linear: few-token GEMMs and end-to-end
greedy decoding.

    .venv/bin/python benchmarks/bench_decode.py [--quick] [--threads 2] [--reps 31] [--shapes 4096x4096,...]
                                                [--no-linear] [--no-e2e] [--json out.json]

CPU, per shape (out × in, bf16) and M = 1, 2, 4, 8, 16 rows of x: the dense F.linear and the decode kernel
(`auto`, plus each AVX2 kernel by name) are timed side by side in one process, interleaved call by call
(the order alternating every round), and the medians compared: ratio = dense / sparse (> 1: the decode
kernel is faster), and the bytes each streams per second (dense: out·in·2 B; packed: 9/16 of it), with their
ratio (≥ 0.8: the kernel is memory-bound like dense). Weights rotate over enough copies that every call
reads them from DRAM (> 256 MiB between two uses of one copy), as in decoding, where each layer's weights
are long evicted when they come back.

End to end: a built-in Llama scaled to > 500 M parameters (random weights, bf16), magnitude 2:4 on every
decoder linear; greedy decoding of the same prompts by the dense model and by its sparsified copy
(SparseLinear: the decode kernel for ≤ decode24.max_rows tokens), tokens/s of the decode steps and the
number of generated tokens that agree.

GPU (CUDA only): the Triton kernel against cuBLAS (F.linear) with triton.testing.do_bench, and its
achieved HBM bandwidth; without CUDA the section says it was not measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from tfprune import decode24
from tfprune.compat import forward_with_cache
from tfprune._ext import extension

SHAPES = [(4096, 4096), (4096, 11008), (11008, 4096), (8192, 28672)]  # (out, in)
ROWS = (1, 2, 4, 8, 16)
ROTATE_BYTES = 256 << 20
# the 6 ways to keep 2 of 4
_PAIRS = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1], [0, 0, 1, 1]],
                      dtype=torch.bool)


def random_24(out_f: int, in_f: int, dtype=torch.bfloat16, seed: int = 0) -> torch.Tensor:
    """A random 2:4 weight (which pair a group keeps does not change the speed)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g, dtype=torch.float32).to(dtype)
    keep = _PAIRS[torch.randint(0, 6, (out_f, in_f // 4), generator=g)].reshape(out_f, in_f)
    return w.masked_fill_(~keep, 0.0)


def copies_for(nbytes: int) -> int:
    return max(1, math.ceil(ROTATE_BYTES / nbytes))


def interleaved(fns: dict, reps: int, warmup: int = 2) -> dict:
    """{name: [seconds]}: every fn called once per round, the order reversed every other round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def rotating(fn, items):
    state = {"i": 0}

    def call():
        item = items[state["i"] % len(items)]
        state["i"] += 1
        return fn(item)

    return call


@torch.inference_mode()
def bench_cpu_linear(shapes, rows, reps: int, impls: bool) -> list[dict]:
    results = []
    isa = extension.decode24_isa()
    names = (["gather", "expand", "bcast"] if isa in ("avx2", "avx512bf16") else []) + \
        (["dpbf16"] if isa == "avx512bf16" else [])
    names = names if impls else []
    for out_f, in_f in shapes:
        w = random_24(out_f, in_f)
        packed = decode24.pack(w)
        dense_bytes = w.numel() * w.element_size()
        dense_ws = [w] + [w.clone() for _ in range(copies_for(dense_bytes) - 1)]
        packs = [packed] + [decode24.Decode24Weight(packed.values.clone(), packed.codes.clone(), packed.shape)
                            for _ in range(copies_for(packed.nbytes) - 1)]
        for m in rows:
            x = torch.randn(m, in_f, dtype=torch.bfloat16)
            fns = {"dense": rotating(lambda wt: F.linear(x, wt), dense_ws),
                   "auto": rotating(lambda p: decode24.linear(x, p), packs)}
            for name in names:
                if name == "gather" and m > 4:
                    continue
                fns[name] = rotating(lambda p, name=name: extension.decode24_linear(x, p.values, p.codes, None, False,
                                                                                    None, name), packs)
            times = interleaved(fns, reps)
            med = {name: statistics.median(t) for name, t in times.items()}
            row = {"shape": f"{out_f}x{in_f}", "M": m, "dense_ms": med["dense"] * 1e3, "sparse_ms": med["auto"] * 1e3,
                   "ratio": med["dense"] / med["auto"], "dense_GBps": dense_bytes / med["dense"] / 1e9,
                   "sparse_GBps": packed.nbytes / med["auto"] / 1e9,
                   "impl_ratio": {name: med["dense"] / med[name] for name in names if name in med}}
            row["bw_ratio"] = row["sparse_GBps"] / row["dense_GBps"]
            results.append(row)
            impl = " ".join(f"{k}={v:.2f}x" for k, v in row["impl_ratio"].items())
            print(f"{row['shape']:>11} M={m:<2} dense {row['dense_ms']:8.3f} ms {row['dense_GBps']:5.1f} GB/s | "
                  f"2:4 {row['sparse_ms']:8.3f} ms {row['sparse_GBps']:5.1f} GB/s | {row['ratio']:.2f}x, "
                  f"bytes/s {row['bw_ratio']:.2f} of dense | {impl}", flush=True)
        del dense_ws, packs
    return results


@torch.inference_mode()
def greedy(model, prompt: torch.Tensor, steps: int) -> tuple[list[int], float]:
    """(generated ids, seconds of the decode steps) after an untimed prefill of prompt [1, P]."""
    logits, cache = forward_with_cache(model, prompt)
    token = logits[:, -1:].argmax(-1)
    ids = [int(token)]
    start = time.perf_counter()
    for _ in range(steps - 1):
        logits, cache = forward_with_cache(model, token, cache)
        token = logits[:, -1:].argmax(-1)
        ids.append(int(token))
    return ids, time.perf_counter() - start


@torch.inference_mode()
def teacher_forced(model, prompt: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """fp32 logits [len(ids), V] of each decode step fed the given tokens (one token a step, as decoding)."""
    step_logits, cache = forward_with_cache(model, prompt)
    logits = [step_logits[0, -1].float()]
    for token in ids[:-1]:
        step_logits, cache = forward_with_cache(model, torch.tensor([[token]]), cache)
        logits.append(step_logits[0, -1].float())
    return torch.stack(logits)


def compare_logits(dense_logits: torch.Tensor, sparse_logits: torch.Tensor) -> dict:
    """Per-step argmax agreement of the two models on the same tokens; where they differ, the dense model's
    gap between its top-1 logit and the sparse model's pick (a near-tie when within the logits' difference)."""
    dense_top, sparse_top = dense_logits.argmax(-1), sparse_logits.argmax(-1)
    differ = (dense_top != sparse_top).nonzero().flatten().tolist()
    gaps = [float(dense_logits[i, dense_top[i]] - dense_logits[i, sparse_top[i]]) for i in differ]
    return {"argmax_agree": int((dense_top == sparse_top).sum()), "steps": len(dense_top),
            "max_abs_logit_diff": float((dense_logits - sparse_logits).abs().max()),
            "logit_scale": float(dense_logits.abs().max()), "differing_steps": differ, "dense_gap_at_differences": gaps}


def bench_e2e(hidden: int, layers: int, intermediate: int, steps: int, reps: int) -> dict:
    from tfprune.bench.e2e import prune_model_24_, sparsify_copy
    from tfprune.builtin import build_model

    model, tokenizer = build_model("llama", hidden=hidden, layers=layers, intermediate_size=intermediate,
                                   dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    pruned = prune_model_24_(model)
    sparse, swapped, reason = sparsify_copy(model, "bitmask")
    if sparse is None:
        print(f"e2e: sparse model unavailable ({reason})")
        return {"status": "unavailable", "reason": reason}
    prompts = ["The translation of the sentence is", "Der schnelle braune Fuchs springt über"]
    record = {"hidden": hidden, "layers": layers, "intermediate_size": intermediate, "parameters": params,
              "pruned_linears": pruned, "sparse_linears": swapped, "steps": steps, "prompts": []}
    for text in prompts:
        prompt = tokenizer(text, return_tensors="pt").input_ids
        dense_t, sparse_t = [], []
        for r in range(reps):
            for which in (("dense", "sparse") if r % 2 == 0 else ("sparse", "dense")):
                ids, seconds = greedy(model if which == "dense" else sparse, prompt, steps)
                (dense_t if which == "dense" else sparse_t).append(seconds)
                if which == "dense":
                    dense_ids = ids
                else:
                    sparse_ids = ids
        same = sum(a == b for a, b in zip(dense_ids, sparse_ids))
        first_diff = next((i for i, (a, b) in enumerate(zip(dense_ids, sparse_ids)) if a != b), None)
        forced = compare_logits(teacher_forced(model, prompt, dense_ids), teacher_forced(sparse, prompt, dense_ids))
        row = {"prompt": text, "dense_tok_s": (steps - 1) / statistics.median(dense_t),
               "sparse_tok_s": (steps - 1) / statistics.median(sparse_t), "same_tokens": same, "tokens": steps,
               "first_difference": first_diff, "teacher_forced": forced,
               "dense_samples_s": dense_t, "sparse_samples_s": sparse_t}
        row["speedup"] = row["sparse_tok_s"] / row["dense_tok_s"]
        record["prompts"].append(row)
        gaps = ", ".join(f"{g:.3f}" for g in forced["dense_gap_at_differences"]) or "-"
        print(f"e2e {params / 1e6:.0f}M params, '{text}': dense {row['dense_tok_s']:.2f} tok/s, 2:4 "
              f"{row['sparse_tok_s']:.2f} tok/s ({row['speedup']:.2f}x); greedy tokens identical {same}/{steps}; "
              f"teacher-forced argmax {forced['argmax_agree']}/{forced['steps']}, max |dlogit| "
              f"{forced['max_abs_logit_diff']:.3f} (logits up to {forced['logit_scale']:.1f}), dense top-1 gap where "
              f"they differ: {gaps}", flush=True)
    return record


def bench_gpu(shapes, rows) -> list[dict] | str:
    if not torch.cuda.is_available():
        print("GPU: not measured (no CUDA device)")
        return "not measured (no CUDA device)"
    import triton.testing

    from tfprune.kernels.sparse24_decode import sparse24_decode_linear

    results = []
    for out_f, in_f in shapes:
        w = random_24(out_f, in_f).cuda()
        packed = decode24.pack_ref(w)
        for m in rows:
            x = torch.randn(m, in_f, dtype=torch.bfloat16, device="cuda")
            dense_ms = triton.testing.do_bench(lambda: F.linear(x, w))
            sparse_ms = triton.testing.do_bench(lambda: sparse24_decode_linear(x, packed.values, packed.codes))
            row = {"shape": f"{out_f}x{in_f}", "M": m, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                   "ratio": dense_ms / sparse_ms, "sparse_GBps": packed.nbytes / sparse_ms / 1e6,
                   "dense_GBps": w.numel() * 2 / dense_ms / 1e6}
            results.append(row)
            print(f"GPU {row['shape']:>11} M={m:<2} cuBLAS {dense_ms:.4f} ms {row['dense_GBps']:.0f} GB/s | 2:4 "
                  f"{sparse_ms:.4f} ms {row['sparse_GBps']:.0f} GB/s | {row['ratio']:.2f}x", flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=31)
    parser.add_argument("--quick", action="store_true", help="two small shapes, few reps, a small model")
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--no-linear", action="store_true")
    parser.add_argument("--no-impls", action="store_true", help="time only the auto choice, not each kernel")
    parser.add_argument("--shapes", help="out x in list, e.g. 4096x4096,8192x28672 (default: the four LLM shapes)")
    parser.add_argument("--e2e-layers", type=int, default=12)
    parser.add_argument("--e2e-steps", type=int, default=32)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    if extension is None or not hasattr(extension, "decode24_linear"):
        print("tfprune._C with decode24 is not built", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    shapes = SHAPES[:2] if args.quick else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in item.lower().split("x")) for item in args.shapes.split(",")]
    reps = 5 if args.quick else args.reps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, decode24 ISA {extension.decode24_isa()}, "
          f"load average {os.getloadavg()}, decode24.max_rows(cpu) = {decode24.max_rows('cpu')}")
    record = {"threads": args.threads, "isa": extension.decode24_isa(), "load_average_start": os.getloadavg()}
    if not args.no_linear:
        record["cpu_linear"] = bench_cpu_linear(shapes, ROWS, reps, not args.no_impls)
    if not args.no_e2e:
        hidden, layers, inter, steps = (256, 2, 688, 8) if args.quick else (2048, args.e2e_layers, 5504, args.e2e_steps)
        record["e2e"] = bench_e2e(hidden, layers, inter, steps, 2 if args.quick else 3)
    record["gpu"] = bench_gpu(shapes, ROWS)
    record["load_average_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(record, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
