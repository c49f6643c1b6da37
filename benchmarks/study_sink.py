"""How much of a decoder block's output the first token of each prompt (the attention sink) holds, on the real model:
why the reconstruction and the allocation measure the total relative error Σ‖ΔY‖² / Σ‖Y‖² (benchmarks/README.md).

    .venv/bin/python benchmarks/study_sink.py --model ~/.cache/tfprune/gemma3-270m

On the quality benchmark's calibration (translation prompts, --budget real tokens), block by block on the dense
model's activations (each dense block fed the previous dense block's outputs): the first real token's share of
Σ‖Y‖² over the real tokens, and the first token's ‖Y_t‖² over the median token's (medians over each prompt's
tokens, then over prompts). Writes JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_quality as quality  # noqa: E402

from tfprune.engine import decoder_layers  # noqa: E402
from tfprune.engine.activations import ActivationStore  # noqa: E402
from tfprune.engine.capture import capture_layer_inputs, run_block  # noqa: E402
from tfprune.models import load_model  # noqa: E402


@torch.no_grad()
def sink_shares(model, calibration) -> list[dict]:
    """Per block: {"block", "first_token_share", "first_over_median"} of the dense block's outputs [B, T, H], each
    block run on the previous one's outputs."""
    store = ActivationStore("device", torch.device("cpu"))
    for item in capture_layer_inputs(model, calibration, "translation", 8):
        store.append(item)
    rows = []
    for index, block in enumerate(decoder_layers(model)):
        first = total = 0.0
        ratios = []
        for i in range(len(store)):
            item = store[i]
            output = run_block(block, item, index)
            real = item.token_mask.reshape(output.shape[:2])
            squared = output.double().square().sum(-1)  # [B, T]
            sink = squared[torch.arange(len(real)), real.int().argmax(1)]  # each row's first real token
            first += float(sink.sum())
            total += float(squared[real].sum())
            ratios += [float(sink[b] / squared[b][real[b]].median()) for b in range(len(real))]
            store.put(i, output)  # the next block's input
        rows.append({"block": index, "first_token_share": first / total,
                     "first_over_median": float(torch.tensor(ratios).median())})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--budget", type=int, default=5120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="sink.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load_model(args.model, dtype="float32")
    calibration = quality.calibration_set("translation", tokenizer, args.budget, 512, args.seed)
    rows = sink_shares(model, calibration)
    for row in rows:
        print(f"block {row['block']:2d}: first token {100 * row['first_token_share']:5.1f} % of Σ‖Y‖², "
              f"first token's ‖Y_t‖² / median token's {row['first_over_median']:.0f}")
    Path(args.out).write_text(json.dumps({"model": args.model, "budget_tokens": args.budget, "blocks": rows}, indent=1))


if __name__ == "__main__":
    main()
