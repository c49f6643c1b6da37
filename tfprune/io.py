"""Saving pruned models: a Hugging Face directory written to a temporary sibling and renamed at the end."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path

from .errors import OutputExistsError

__all__ = ["check_output_dir", "atomic_output_dir", "save_pruned", "REPORT_FILE"]

REPORT_FILE = "tfprune.json"


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
        _fsync_dir(tmp)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, trash)
            os.replace(tmp, out)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_pruned(model, tokenizer, out: str | Path, config=None, report=None, overwrite: bool = False,
                extra: dict | None = None) -> Path:
    """Write model (safetensors), config, tokenizer and tfprune.json (config + report) to `out` atomically."""
    with atomic_output_dir(out, overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        record = {"config": None if config is None else config.to_dict(),
                  "report": None if report is None else report.to_dict(), **(extra or {})}
        (tmp / REPORT_FILE).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return Path(out)


def _fsync_dir(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
