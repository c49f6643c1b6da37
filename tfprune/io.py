"""Saving pruned models: a Hugging Face directory written atomically by the rules of tfprune.outdir."""
from __future__ import annotations

from pathlib import Path

from .errors import TfpruneError
from .outdir import MARKER_FILE, atomic_output_dir, write_marker

__all__ = ["save_pruned", "REPORT_FILE", "SAVE_FORMATS", "estimated_checkpoint_bytes"]

REPORT_FILE = MARKER_FILE
SAVE_FORMATS = ("dense", "compressed-tensors")


def estimated_checkpoint_bytes(model) -> int:
    """An upper bound of the bytes the saved weights take: every parameter once (tied ones once), dense."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def save_pruned(model, tokenizer, out: str | Path, config=None, report=None, overwrite: bool = False,
                extra: dict | None = None, format: str = "dense", inputs=(), files: dict[str, str] | None = None) -> Path:
    """Write model (safetensors), config, tokenizer and tfprune.json (config + report) to `out` atomically.
    format: 'dense' (masked dense weights) or 'compressed-tensors' (2:4 linears packed as sparse-24-bitmask,
    see tfprune.sparse.checkpoint). inputs: paths the run read, which `out` may not touch (tfprune.outdir).
    files: {name: text} of further files to write there (e.g. tfprune-vocab.json)."""
    if format not in SAVE_FORMATS:
        raise TfpruneError(f"format must be one of {', '.join(SAVE_FORMATS)}, got {format!r}")
    with atomic_output_dir(out, overwrite, inputs, needed_bytes=estimated_checkpoint_bytes(model)) as tmp:
        if format == "compressed-tensors":
            from .sparse.checkpoint import save_compressed_tensors

            save_compressed_tensors(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_marker(tmp, "prune", {"config": None if config is None else config.to_dict(),
                                    "report": None if report is None else report.to_dict(), **(extra or {})})
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out)
