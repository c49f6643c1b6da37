"""Saving pruned models: a Hugging Face directory written to a temporary sibling and renamed at the end."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from .errors import OutputExistsError, TfpruneError

__all__ = ["check_output_dir", "atomic_output_dir", "commit_output_dir", "save_pruned", "REPORT_FILE", "SAVE_FORMATS"]

REPORT_FILE = "tfprune.json"
SAVE_FORMATS = ("dense", "compressed-tensors")


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an output directory that exists and is not empty (unless overwrite); call before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"output directory {out} exists and is not empty (use --overwrite to replace it)")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False):
    """Yield a temporary sibling directory; on success it replaces `out` by renames, on failure it is removed,
    so `out` is either the complete new output or untouched."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        commit_output_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def commit_output_dir(tmp: str | Path, out: str | Path) -> Path:
    """fsync every file of the finished temporary directory `tmp`, then make it `out` by renames (an existing
    `out` is moved aside first and removed last): `out` is the complete new output or the old one."""
    tmp, out = Path(tmp), Path(out)
    _fsync_dir(tmp)
    if out.exists():
        trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, trash)
        os.replace(tmp, out)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, out)
    return out


def save_pruned(model, tokenizer, out: str | Path, config=None, report=None, overwrite: bool = False,
                extra: dict | None = None, format: str = "dense", files: dict[str, str] | None = None) -> Path:
    """Write model (safetensors), config, tokenizer and tfprune.json (config + report) to `out` atomically.
    format: 'dense' (masked dense weights) or 'compressed-tensors' (2:4 linears packed as sparse-24-bitmask,
    see tfprune.sparse.checkpoint). files: {name: text} of further files to write there (e.g. tfprune-vocab.json)."""
    if format not in SAVE_FORMATS:
        raise TfpruneError(f"format must be one of {', '.join(SAVE_FORMATS)}, got {format!r}")
    with atomic_output_dir(out, overwrite) as tmp:
        if format == "compressed-tensors":
            from .sparse.checkpoint import save_compressed_tensors

            save_compressed_tensors(model, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = {"config": None if config is None else config.to_dict(),
                  "report": None if report is None else report.to_dict(), **(extra or {})}
        (tmp / REPORT_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out)


def _fsync_dir(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
