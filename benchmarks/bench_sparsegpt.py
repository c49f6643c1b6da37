"""SparseGPT's OBS update vs the Wanda path on a built-in model: time per layer (ratio), perplexity on the
built-in corpus (dense vs wanda-2:4 vs wanda-2:4+obs vs sparsegpt-2:4), and per-layer reconstruction error.

    .venv/bin/python benchmarks/bench_sparsegpt.py                 # the table of benchmarks/README.md
    .venv/bin/python -m pytest benchmarks/bench_sparsegpt.py --benchmark-only   # per-layer timings only

The built-in models have random weights (with planted large-magnitude channels), so their perplexity is
near-uniform for every variant; the KL divergence to the dense model's next-token distribution and the
per-layer reconstruction errors ‖(W − Ŵ)X‖ on held-out tokens are the meaningful quality numbers here.
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from tfprune import PruneConfig, ops, prune
from tfprune.builtin import build_model
from tfprune.calib import build_calibration
from tfprune.engine.discovery import decoder_layers, find_linears, weight_matrix
from tfprune.sparsegpt import factorize, sparsegpt_prune_

VARIANTS = {  # label -> PruneConfig options (None = dense); one-shot: N:M reconstructs and distills by default
    "dense": None,
    "wanda-2:4": dict(method="wanda", pattern="2:4", reconstruct=0, distill=0),
    "wanda-2:4+obs": dict(method="wanda", pattern="2:4", update="obs", reconstruct=0, distill=0),
    "sparsegpt-2:4": dict(method="sparsegpt", pattern="2:4", reconstruct=0, distill=0),
}


def _calibration(tokenizer, nsamples, seqlen, seed):
    return build_calibration(None, tokenizer, PruneConfig(nsamples=nsamples, seqlen=seqlen, seed=seed))


@torch.no_grad()
def evaluate(model, evalset, dense_logprobs=None):
    """(perplexity, mean KL(dense ‖ model) per token, log-probs [tokens, vocab]) over the real next tokens."""
    nll, count, kl, chunks = 0.0, 0, 0.0, []
    for ids, mask in evalset.batches(8):
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        real = (mask[:, :-1] * mask[:, 1:]).bool()
        logprobs = logits.log_softmax(-1)[real]  # [tokens, vocab]
        nll -= float(logprobs.gather(1, ids[:, 1:][real][:, None]).sum())
        count += int(real.sum())
        chunks.append(logprobs)
    logprobs = torch.cat(chunks)
    if dense_logprobs is not None:
        kl = float((dense_logprobs.exp() * (dense_logprobs - logprobs)).sum(-1).mean())
    return math.exp(nll / count), kl, logprobs


@torch.no_grad()
def linear_inputs(model, calibration):
    """{(block, linear): X [real tokens, in] fp32} of every linear of every block of the dense model."""
    captured, handles, state = {}, [], {}
    for index, block in enumerate(decoder_layers(model)):
        for name, module in find_linears(block).items():
            def hook(_module, args, _out, key=(index, name)):
                captured.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1])[state["mask"]].float())
            handles.append(module.register_forward_hook(hook))
    try:
        for ids, mask in calibration.batches(8):
            state["mask"] = mask.reshape(-1).bool()
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {key: torch.cat(parts) for key, parts in captured.items()}


def wanda_prune_(weight, norm, n=2, m=4):
    """The Wanda path of prune_linear for one layer: score, N:M mask, zero."""
    keep = ops.nm_mask(ops.scores(weight, "wanda", norm=norm), n, m)
    ops.apply_mask_(weight, keep)
    return keep


def _fastest(fn, repeats):
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def layer_errors(model, calib, heldout, blocksize=128, repeats=5):
    """Per linear (isolated, dense inputs): held-out ‖(W − Ŵ)X‖ of wanda-2:4+obs and sparsegpt-2:4 relative to
    wanda-2:4 without update, and the per-layer times of the wanda and sparsegpt steps (given H; the fastest
    of `repeats`: the machine may be shared)."""
    train, test = linear_inputs(model, calib), linear_inputs(model, heldout)
    rows = []
    for (index, name), x in train.items():
        weight = weight_matrix(find_linears(decoder_layers(model)[index])[name]).float()
        x_test = test[index, name]
        hessian = x.T @ x  # fp32, as the engine's hook
        norm = hessian.diagonal().double().sqrt()

        def error(pruned):
            return float(((weight - pruned) @ x_test.T).norm())

        wanda, sgpt = weight.clone(), weight.clone()
        keep = wanda_prune_(wanda, norm)
        obs = weight.clone()
        sparsegpt_prune_(obs, hessian, keep=keep, blocksize=blocksize)
        sparsegpt_prune_(sgpt, factorize(hessian), nm=(2, 4), blocksize=blocksize)
        t_wanda = _fastest(lambda: wanda_prune_(weight.clone(), norm), repeats)
        t_sgpt = _fastest(lambda: sparsegpt_prune_(weight.clone(), factorize(hessian), nm=(2, 4),
                                                   blocksize=blocksize), repeats)
        base = error(wanda)
        rows.append(dict(layer=f"{index}.{name}", shape=tuple(weight.shape), obs=error(obs) / base,
                         sparsegpt=error(sgpt) / base, t_wanda=t_wanda, t_sparsegpt=t_sgpt))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="llama")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="engine runs per variant (the fastest is kept)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: stable timings on a shared machine; 0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    dense, tokenizer = build_model(args.family, hidden=args.hidden, layers=args.layers)
    calib = _calibration(tokenizer, args.nsamples, args.seqlen, seed=0)
    evalset = _calibration(tokenizer, args.eval_samples, args.seqlen, seed=1)  # other prompts, same corpus
    print(f"# {args.family} hidden={args.hidden} layers={args.layers}: {calib.tokens} calibration tokens, "
          f"{evalset.tokens} held-out tokens; torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads")

    print("\n| variant | perplexity | KL(dense‖pruned) / token | prune s (engine, whole model) | "
          "mean prune_linear per linear |\n|---|---|---|---|---|")
    dense_ppl, _, dense_logprobs = evaluate(dense, evalset)
    print(f"| dense | {dense_ppl:.2f} | 0 | – | – |")
    timings = {}
    for label, options in VARIANTS.items():
        if options is None:
            continue
        runs = []
        for _ in range(args.repeats):
            model, _ = build_model(args.family, hidden=args.hidden, layers=args.layers)
            config = PruneConfig(nsamples=args.nsamples, seqlen=args.seqlen, **options)
            report = prune(model, tokenizer, config, calib=calib, progress=False)
            runs.append((report.seconds, [layer.seconds for layer in report.layers], model))
        seconds, model = min(run[0] for run in runs), runs[0][2]  # the runs are identical (deterministic)
        per_layer = statistics.mean(min(values) for values in zip(*(run[1] for run in runs)))
        timings[label] = (seconds, per_layer)
        ppl, kl, _ = evaluate(model, evalset, dense_logprobs)
        print(f"| {label} | {ppl:.2f} | {kl:.4f} | {seconds:.3f} | {per_layer * 1e3:.2f} ms |")
    base_total, base_layer = timings["wanda-2:4"]
    for label in ("wanda-2:4+obs", "sparsegpt-2:4"):
        total, layer = timings[label]
        print(f"\n{label} / wanda-2:4 time: ×{total / base_total:.2f} whole prune (incl. H = XᵀX in the hook), "
              f"×{layer / base_layer:.1f} per-linear prune_linear step (H factorization excluded: shared by q/k/v)")

    rows = layer_errors(dense, calib, evalset, repeats=args.repeats + 2)
    print("\n| layer | shape | ‖ΔW·X‖ wanda-2:4+obs / wanda-2:4 | sparsegpt-2:4 / wanda-2:4 | "
          "ms wanda | ms sparsegpt | ratio |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['layer']} | {row['shape'][0]}×{row['shape'][1]} | {row['obs']:.3f} | {row['sparsegpt']:.3f} | "
              f"{row['t_wanda'] * 1e3:.2f} | {row['t_sparsegpt'] * 1e3:.1f} | ×{row['t_sparsegpt'] / row['t_wanda']:.0f} |")
    total = {key: sum(row[key] for row in rows) for key in ("t_wanda", "t_sparsegpt")}
    print(f"\nall {len(rows)} linears: wanda step {total['t_wanda'] * 1e3:.1f} ms, sparsegpt step "
          f"{total['t_sparsegpt'] * 1e3:.1f} ms (×{total['t_sparsegpt'] / total['t_wanda']:.0f})")
    geo = lambda key: math.exp(statistics.mean(math.log(row[key]) for row in rows))  # noqa: E731
    print(f"\ngeometric mean over {len(rows)} linears: wanda-2:4+obs {geo('obs'):.3f}, sparsegpt-2:4 "
          f"{geo('sparsegpt'):.3f} (held-out reconstruction error relative to wanda-2:4, dense inputs); "
          f"max {max(r['obs'] for r in rows):.3f} / {max(r['sparsegpt'] for r in rows):.3f}")


# pytest-benchmark (`make bench`): one down_proj-like layer, the wanda step vs the sparsegpt step.
def _layer(rows=512, cols=1024, tokens=4096):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, cols, generator=g)
    weight = torch.randn(rows, cols, generator=g)
    hessian = x.T @ x
    return weight, hessian, hessian.diagonal().double().sqrt()


def test_bench_wanda_layer(benchmark):
    weight, _, norm = _layer()
    benchmark(lambda: wanda_prune_(weight.clone(), norm))


def test_bench_sparsegpt_layer(benchmark):
    weight, hessian, _ = _layer()
    benchmark.pedantic(lambda: sparsegpt_prune_(weight.clone(), hessian, nm=(2, 4)), rounds=3, iterations=1)


if __name__ == "__main__":
    main()
