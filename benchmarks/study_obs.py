"""Why SparseGPT's OBS update makes 2:4 worse on the real model: layer by layer, on the dense model's own inputs.

    .venv/bin/python benchmarks/study_obs.py --model ~/.cache/tfprune/gemma3-270m --budgets 5120,20480

For every linear of every decoder block, with the dense model's activations as inputs (each layer isolated, so
nothing accumulates), the output error ‖(W − Ŵ)X‖² / ‖WX‖² of Wanda's 2:4 mask alone and of the same mask with the
OBS update (H = XᵀX of the calibration tokens, several dampenings λ), and of SparseGPT's own 2:4, on three token
sets: the calibration tokens themselves, held-out sentences of the calibration corpus (same domain) and the
shipped held-out set (other domains). An update that lowers the first and raises the others over-fits. Also per
layer: how dominated diag H is by a few channels (max / median) and the effective rank of H.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_quality as quality  # noqa: E402

from tfprune import ops  # noqa: E402
from tfprune.calib import build_calibration  # noqa: E402
from tfprune.config import PruneConfig  # noqa: E402
from tfprune.engine import decoder_layers, find_linears, weight_matrix  # noqa: E402
from tfprune.engine.activations import ActivationStore  # noqa: E402
from tfprune.engine.capture import capture_layer_inputs, run_block  # noqa: E402
from tfprune.engine.sequential import forward_block  # noqa: E402
from tfprune.models import load_model  # noqa: E402
from tfprune.sparsegpt import factorize, sparsegpt_prune_  # noqa: E402

DAMPENINGS = (0.01, 0.1, 1.0)


def store_of(model, calibration) -> ActivationStore:
    store = ActivationStore("device", torch.device("cpu"))
    for item in capture_layer_inputs(model, calibration, "translation", 8):
        store.append(item)
    return store


@torch.no_grad()
def linear_inputs(block, index: int, store: ActivationStore) -> dict[str, torch.Tensor]:
    """{linear: X [real tokens, in] float32} of one dense block over every batch of `store`."""
    captured, handles = {}, []
    for name, module in find_linears(block).items():
        def hook(_module, args, _out, name=name):
            x = args[0].reshape(-1, args[0].shape[-1])
            captured.setdefault(name, []).append(x[state["mask"]].float())
        handles.append(module.register_forward_hook(hook))
    state = {}
    try:
        for i in range(len(store)):
            state["mask"] = store[i].token_mask
            run_block(block, store[i], index)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(parts) for name, parts in captured.items()}


def relative(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(((weight - pruned) @ x.T).square().sum() / (weight @ x.T).square().sum())


def effective_rank(hessian: torch.Tensor) -> float:
    """exp(entropy of the normalized eigenvalues) of H: how many directions the calibration spans."""
    values = torch.linalg.eigvalsh(hessian.double()).clamp_min(0)
    p = values / values.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


@torch.no_grad()
def study(model, tokenizer, budget: int, seed: int) -> list[dict]:
    calibration = quality.calibration_set("translation", tokenizer, budget, 512, seed)
    sets = quality.evaluation_sets(["corpus", "heldout"])
    config = PruneConfig(seqlen=512)
    texts = {"calibration": calibration}
    for name, per_lang in sets.items():
        texts[name] = build_calibration([t for rows in per_lang.values() for t in rows], tokenizer,
                                        PruneConfig(nsamples=10**6, seqlen=512))
    stores = {name: store_of(model, calib) for name, calib in texts.items()}
    rows = []
    for index, block in enumerate(decoder_layers(model)):
        inputs = {name: linear_inputs(block, index, store) for name, store in stores.items()}
        for name, module in find_linears(block).items():
            weight = weight_matrix(module).float()
            x = {set_name: per_linear[name] for set_name, per_linear in inputs.items()}
            hessian = x["calibration"].T @ x["calibration"]
            diag = hessian.diagonal().double()
            norm = diag.sqrt()
            wanda = weight.clone()
            keep = ops.prune_weight_(wanda, "wanda", nm=(2, 4), norm=norm)
            variants = {"wanda": wanda}
            for damp in DAMPENINGS:
                updated = weight.clone()
                sparsegpt_prune_(updated, factorize(hessian, damp), keep=keep)
                variants[f"obs@{damp:g}"] = updated
            sgpt = weight.clone()
            sparsegpt_prune_(sgpt, factorize(hessian, 0.01), nm=(2, 4))
            variants["sparsegpt"] = sgpt
            errors = {variant: {s: relative(weight, pruned, x[s]) for s in x} for variant, pruned in variants.items()}
            positive = diag[diag > 0]
            rows.append({"layer": f"{index}.{name}", "kind": name.split(".")[-1], "in": weight.shape[1],
                         "tokens": x["calibration"].shape[0], "errors": errors,
                         "diag_max_over_median": float(positive.max() / positive.median()),
                         "effective_rank": effective_rank(hessian)})
        for store in stores.values():
            forward_block(block, index, store)
        print(f"block {index} done", flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per variant and token set: geometric mean over layers of error / wanda's error, and the share of layers
    where it is worse than wanda."""
    variants = list(rows[0]["errors"])
    sets = list(rows[0]["errors"]["wanda"])
    out = {}
    for variant in variants:
        for s in sets:
            ratios = [row["errors"][variant][s] / row["errors"]["wanda"][s] for row in rows]
            out[f"{variant}/{s}"] = {"geomean_vs_wanda": math.exp(statistics.fmean(math.log(r) for r in ratios)),
                                     "worse_share": sum(r > 1 for r in ratios) / len(ratios)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--budgets", default="5120")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench-out/study_obs.json")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model)
    record = {}
    for budget in (int(b) for b in args.budgets.split(",")):
        rows = study(model, tokenizer, budget, args.seed)
        record[budget] = {"layers": rows, "summary": summary(rows)}
        print(f"budget {budget}:")
        for key, value in record[budget]["summary"].items():
            print(f"  {key:<28} error / wanda's {value['geomean_vs_wanda']:.3f}  worse in "
                  f"{100 * value['worse_share']:.0f}% of layers")
        by_kind = {}
        for row in rows:
            by_kind.setdefault(row["kind"], []).append(row)
        for kind, kind_rows in by_kind.items():
            ratio = [r["errors"]["obs@0.01"]["heldout"] / r["errors"]["wanda"]["heldout"] for r in kind_rows]
            print(f"  {kind:<10} obs@0.01 held-out error / wanda's: median {statistics.median(ratio):.3f}, "
                  f"diag H max/median median {statistics.median(r['diag_max_over_median'] for r in kind_rows):.0f}, "
                  f"effective rank median {statistics.median(r['effective_rank'] for r in kind_rows):.0f} of "
                  f"{kind_rows[0]['in']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
