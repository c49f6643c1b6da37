"""`tfprune inspect DIR`: the recorded run and the sparsity actually found in the saved weights."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from .errors import TfpruneError
from .io import REPORT_FILE

__all__ = ["inspect_dir", "weight_sparsity"]


def weight_sparsity(path: str | Path) -> dict[str, float]:
    """{tensor name: share of zeros} for every 2-D `*.weight` tensor in the directory's safetensors, and for
    every weight packed in compressed-tensors' sparse-24-bitmask format (named by its prefix)."""
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise TfpruneError(f"no safetensors files in {path}")
    result = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names = set(handle.keys())
            for name in sorted(names):
                if name.endswith(".weight"):
                    tensor = handle.get_tensor(name)
                    if tensor.dim() == 2:
                        result[name] = float((tensor == 0).sum()) / tensor.numel()
                elif name.endswith(".compressed") and name[: -len("compressed")] + "shape" in names:
                    # compressed-tensors sparse-24-bitmask: the kept values; every other weight is zero
                    prefix = name[: -len(".compressed")]
                    numel = int(handle.get_tensor(prefix + ".shape").prod())
                    result[prefix] = 1 - float((handle.get_tensor(name) != 0).sum()) / numel
    return result


def inspect_dir(path: str | Path) -> str:
    """A text summary of a pruned directory: run options and per-tensor sparsity."""
    path = Path(path)
    record_file = path / REPORT_FILE
    if not record_file.is_file():
        raise TfpruneError(f"{path} has no {REPORT_FILE}: not written by `tfprune prune`")
    record = json.loads(record_file.read_text(encoding="utf-8"))
    config = record.get("config") or {}
    lines = [f"{path}: model {record.get('model', '?')}, method {config.get('method')}, "
             f"pattern {config.get('pattern')}, sparsity {config.get('sparsity')}, protect {config.get('protect')}"]
    sparsities = weight_sparsity(path)
    pruned = {name: value for name, value in sparsities.items() if value >= 0.01}
    for name, value in pruned.items():
        lines.append(f"  {name:<60} {value:.4f}")
    lines.append(f"{len(pruned)} of {len(sparsities)} weight matrices have at least 1% zeros; "
                 f"report: overall sparsity {record.get('report', {}).get('sparsity', 0):.4f}")
    return "\n".join(lines)
