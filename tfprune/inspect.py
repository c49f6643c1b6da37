"""`tfprune inspect DIR`: the recorded run and the sparsity actually found in the saved weights."""
from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from .errors import TfpruneError
from .io import REPORT_FILE

__all__ = ["inspect_dir", "weight_sparsity"]


def weight_sparsity(path: str | Path) -> dict[str, float]:
    """{tensor name: share of zeros} for every 2-D `*.weight` tensor in the directory's safetensors, and for
    every weight packed in compressed-tensors' sparse-24-bitmask format (named by its prefix; its tensors are
    validated first: shapes, exactly 2 of 4 marked per group)."""
    from .engine.checkpoint import Checkpoint
    from .sparse.checkpoint import check_bitmask

    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise TfpruneError(f"no safetensors files in {path}")
    Checkpoint(path)  # every header valid, every tensor inside its file
    result = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names = set(handle.keys())
            for name in sorted(names):
                if name.endswith(".weight"):
                    tensor = handle.get_tensor(name)
                    if tensor.dim() == 2:
                        result[name] = float((tensor == 0).sum()) / tensor.numel()
                elif name.endswith(".compressed"):
                    # compressed-tensors sparse-24-bitmask: the kept values; every other weight is zero
                    prefix = name[: -len(".compressed")]
                    missing = [f"{prefix}.{part}" for part in ("shape", "bitmask") if f"{prefix}.{part}" not in names]
                    if missing:
                        raise TfpruneError(f"{file}: {prefix} is packed but lacks {', '.join(missing)}")
                    shape = tuple(int(v) for v in handle.get_tensor(prefix + ".shape").flatten().tolist())
                    values = handle.get_tensor(name)
                    check_bitmask(f"{file}: {prefix}", shape, values, handle.get_tensor(prefix + ".bitmask"))
                    result[prefix] = 1 - float((values != 0).sum()) / (shape[0] * shape[1])
    return result


def inspect_dir(path: str | Path) -> str:
    """A text summary of a pruned directory: run options and per-tensor sparsity."""
    path = Path(path)
    from .source import read_json

    record_file = path / REPORT_FILE
    if not record_file.is_file():
        raise TfpruneError(f"{path} has no {REPORT_FILE}: not written by `tfprune prune`")
    record = read_json(record_file)
    config = record.get("config") or {}
    lines = [f"{path}: model {record.get('model', '?')}, method {config.get('method')}, "
             f"pattern {config.get('pattern')}, sparsity {config.get('sparsity')}, protect {config.get('protect')}"
             + (f", keep dense {config['keep_dense']:g}" if config.get("keep_dense") else "")]
    sparsities = weight_sparsity(path)
    pruned = {name: value for name, value in sparsities.items() if value >= 0.01}
    for name, value in pruned.items():
        lines.append(f"  {name:<60} {value:.4f}")
    lines.append(f"{len(pruned)} of {len(sparsities)} weight matrices have at least 1% zeros; "
                 f"report: overall sparsity {record.get('report', {}).get('sparsity', 0):.4f}")
    return "\n".join(lines)
