"""The decode-kernel crossover of a device, measured: for M = 1..16 tokens, SparseLinear's decode path vs the path
it would take otherwise there (its 2:4 GEMM backend on a GPU that has one; else the dense layer's F.linear, the
comparison `tfprune.decode24.DEFAULT_MAX_ROWS` was measured with), on the given shapes. The crossover is the
largest M up to which the decode path wins at every measured M (geometric mean of the per-shape speedups; on
a GPU the L2 is flushed before every timed call, so the weights come from memory as in a model's forward);
`tfprune bench` stores it for the device (tfprune.decode_crossover), where `decode24.max_rows` reads it."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import decode24
from .linear import LinearShape, linear_input, make_linear_pair
from .timing import summarize, time_fn

__all__ = ["TOKENS", "crossover_from_ratios", "measure_crossover"]

TOKENS = (1, 2, 3, 4, 6, 8, 12, 16)


def crossover_from_ratios(ratios: dict[int, float]) -> int:
    """The largest M such that ratios[m] >= 1 (decode faster) for every measured m <= M; 0 when it loses at
    the smallest. Measured token counts only: an M between two of them counts as the lower one."""
    best = 0
    for m in sorted(ratios):
        if not ratios[m] >= 1.0:  # NaN loses too
            break
        best = m
    return best


@torch.inference_mode()
def measure_crossover(shapes: list[LinearShape], dtype: torch.dtype, device: str, reps: int, warmup: int,
                      fmt: str = "cutlass", tokens=TOKENS, seed: int = 0) -> dict:
    """{max_rows, against, dtype, tokens, ratios {M: geomean speedup}, cases [per shape and M: decode_ms,
    other_ms, speedup]} or {max_rows: None, reason} when the decode path does not run here."""
    cases = []
    for shape in shapes:
        dense, sparse, reason = make_linear_pair(shape, dtype, device, fmt, seed)
        if sparse is None:
            return {"max_rows": None, "reason": reason}
        gemm, _why = sparse.gemm_backend()
        against = gemm if gemm != "dense" else "dense F.linear"
        for m in tokens:
            x = linear_input(shape, m, dtype, device, seed)
            why = decode24.unsupported_reason(x, sparse._decode_weight())
            if why is not None:
                return {"max_rows": None, "reason": f"the decode kernel does not take {shape.name}: {why}"}
            other = (lambda: sparse.forward_on(x, gemm)) if gemm != "dense" else (lambda: F.linear(x, dense.weight))
            decode_ms = summarize(time_fn(lambda: sparse.forward_on(x, "decode"), warmup, reps, device, True))["median"]
            other_ms = summarize(time_fn(other, warmup, reps, device, True))["median"]
            cases.append({"shape": shape.name, "tokens": m, "against": against, "decode_ms": decode_ms,
                          "other_ms": other_ms, "speedup": other_ms / decode_ms})
    ratios = {m: math.exp(sum(math.log(c["speedup"]) for c in cases if c["tokens"] == m) /
                          max(1, sum(c["tokens"] == m for c in cases))) for m in tokens}
    return {"max_rows": crossover_from_ratios(ratios), "against": ", ".join(sorted({c["against"] for c in cases})),
            "dtype": str(dtype).replace("torch.", ""),
            "tokens": list(tokens), "ratios": {str(m): r for m, r in ratios.items()}, "cases": cases,
            "shapes": [shape.name for shape in shapes], "reps": reps}
