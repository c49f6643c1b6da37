"""Output directories that never cost the user a file.

Rules (every command that writes a directory follows them: prune in both engines, analyze, trim-vocab):
- `out` may not be, contain or lie inside any input (model directory, calibration file, tokenizer...), after
  resolving symbolic links; with or without overwrite.
- `out` may not be a symbolic link (dangling or not): the link would be replaced, not what it points to.
- An existing `out` is replaced only with overwrite, and only when it is empty or a previous tfprune output
  (it holds MARKER_FILE, a JSON object); anything else is refused, with or without overwrite.
- The output is written into a temporary sibling (`.{name}.tmp-XXXXXXXX`, locked while the run lives) and
  renamed to `out` at the end; the rules are checked again at that moment, so a directory that appeared during
  the run is never moved or deleted (the finished output then stays in the temporary directory, unlocked, and
  the error says where). A previous output being replaced is moved aside, then removed after the rename.
- Temporary siblings of the same `out` left by a killed run (their lock is free) are removed at the next run.
- Writability and free space are checked before any heavy work.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from .errors import OutputExistsError, TfpruneError

__all__ = ["MARKER_FILE", "LOCK_FILE", "check_output_dir", "preflight_output", "atomic_output_dir",
           "commit_output_dir", "is_tfprune_output", "clean_stale_temporaries", "check_free_space", "write_marker",
           "OutputAppearedError"]

log = logging.getLogger("tfprune")

MARKER_FILE = "tfprune.json"  # written last into every output directory tfprune makes
LOCK_FILE = ".tfprune.lock"   # held (flock) by the run that owns a temporary directory
_TMP = ".tmp-"


class OutputAppearedError(OutputExistsError):
    """`out` was created by someone else while the run wrote its temporary directory: nothing was replaced."""


def is_tfprune_output(folder: Path) -> bool:
    """Whether `folder` is a directory tfprune wrote: it holds MARKER_FILE with a JSON object in it."""
    marker = folder / MARKER_FILE
    try:
        return marker.is_file() and isinstance(json.loads(marker.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def _relation(out: Path, source: Path) -> str | None:
    """How the resolved output path relates to a resolved input path: 'is', 'contains', 'lies inside' or None."""
    if out == source:
        return "is"
    if out in source.parents:
        return "contains"
    if source in out.parents:
        return "lies inside"
    return None


def check_output_dir(out: str | Path, overwrite: bool = False, inputs=()) -> Path:
    """Check `out` against the rules of this module before any work; returns its resolved path.

    inputs: paths the run reads (those that do not exist locally, e.g. hub ids, are ignored)."""
    given = Path(out)
    if given.is_symlink():
        raise OutputExistsError(f"output {given} is a symbolic link (to {os.readlink(given)}): give a real "
                                "directory path, not a link")
    resolved = given.parent.resolve() / given.name
    for source in inputs:
        if source is None or not Path(source).exists():
            continue
        relation = _relation(resolved, Path(source).resolve())
        if relation is not None:
            raise OutputExistsError(f"output {given} {relation} the input {source}: choose an output directory "
                                    "outside the inputs (nothing was written)")
    if resolved.exists() and not resolved.is_dir():
        raise OutputExistsError(f"output path {given} exists and is not a directory")
    if resolved.is_dir() and any(resolved.iterdir()):
        if not overwrite:
            raise OutputExistsError(f"output directory {given} exists and is not empty (--overwrite replaces "
                                    "an empty directory or a previous tfprune output)")
        if not is_tfprune_output(resolved):
            raise OutputExistsError(f"output directory {given} is not a tfprune output (no {MARKER_FILE}): "
                                    "--overwrite replaces only an empty directory or a previous tfprune output; "
                                    "choose another --out or remove it yourself")
    return resolved


def _temporaries(out: Path):
    prefix = f".{out.name}{_TMP}"
    if not out.parent.is_dir():
        return []
    return [entry for entry in out.parent.iterdir() if entry.name.startswith(prefix) and entry.is_dir()
            and not entry.is_symlink()]


def clean_stale_temporaries(out: str | Path) -> list[Path]:
    """Remove the temporary directories of `out` that a killed run left: only directories named like ours
    that hold our lock file, and only when no process holds that lock. Returns what was removed."""
    removed = []
    for entry in _temporaries(Path(out)):
        lock = entry / LOCK_FILE
        if not lock.is_file() or lock.is_symlink():
            continue
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live run writes it
        finally:
            os.close(fd)
        shutil.rmtree(entry)
        log.info("removed %s, the temporary output of an interrupted run", entry)
        removed.append(entry)
    return removed


def check_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """Refuse, before any work, when the filesystem of `folder` has less free space than `needed_bytes`
    (plus 1% and 64 MiB of slack)."""
    folder = Path(folder)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    need = int(needed_bytes * 1.01) + (64 << 20)
    if free < need:
        raise TfpruneError(f"not enough space for {what} in {folder}: {need / 1e9:.2f} GB needed, "
                           f"{free / 1e9:.2f} GB free; free some space or choose another --out")


def preflight_output(out: str | Path, overwrite: bool = False, inputs=()) -> Path:
    """What a command checks about its output before any heavy work: the rules (check_output_dir), stale
    temporaries of killed runs removed, and the parent writable (a temporary directory made and removed)."""
    resolved = check_output_dir(out, overwrite, inputs)
    clean_stale_temporaries(resolved)
    if resolved.parent.is_dir():
        os.rmdir(_make_temporary(resolved))
    else:  # its parents are made at the end: only check that they can be
        ancestor = resolved.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise TfpruneError(f"cannot write the output {out}: {ancestor} is not a writable directory")
    return resolved


def _lock(folder: Path) -> int:
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _make_temporary(out: Path) -> Path:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}{_TMP}{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    except OSError as error:
        raise TfpruneError(f"cannot write the output next to {out}: {error.strerror or error} "
                           f"({out.parent}); choose a writable --out") from None
    return tmp


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, overwrite: bool = False, inputs=(), needed_bytes: int = 0):
    """Yield a new, locked temporary sibling of `out`; on success it becomes `out` (commit_output_dir), on
    failure it is removed. `out` is either the complete new output or untouched. needed_bytes: the output's
    estimated size, checked against the free space first."""
    out = check_output_dir(out, overwrite, inputs)
    clean_stale_temporaries(out)
    if needed_bytes:
        check_free_space(out.parent, needed_bytes, f"the output {out.name}")
    tmp = _make_temporary(out)
    lock = _lock(tmp)
    try:
        yield tmp
        commit_output_dir(tmp, out, overwrite, inputs)
    except OutputAppearedError:
        (tmp / LOCK_FILE).unlink(missing_ok=True)  # the finished output stays, as the error says: not ours to clean
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)


def commit_output_dir(tmp: str | Path, out: str | Path, overwrite: bool = False, inputs=()) -> Path:
    """fsync the finished temporary directory `tmp`, check `out` against the rules again, then make `tmp` the
    new `out` by renames. A replaced previous output is moved aside first and removed after."""
    tmp = Path(tmp)
    _fsync_tree(tmp)
    (tmp / LOCK_FILE).unlink(missing_ok=True)
    try:
        out = check_output_dir(out, overwrite, inputs)
    except OutputExistsError as error:
        raise OutputAppearedError(f"{error}; it changed while this run was writing: the finished output is "
                                  f"in {tmp}, move it where you want") from None
    aside = None
    if out.is_dir():
        aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, aside)
    try:
        os.rename(tmp, out)
    except OSError as error:
        if aside is not None:
            os.replace(aside, out)
        if error.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
            raise OutputAppearedError(f"output {out} appeared while this run was writing: the finished output "
                                      f"is in {tmp}, move it where you want") from None
        raise
    _fsync_dir(out.parent)
    if aside is not None:
        shutil.rmtree(aside)
    return out


def write_marker(folder: str | Path, kind: str, record: dict) -> Path:
    """Write MARKER_FILE (`{"kind": ..., "tfprune": version, **record}`) into an output directory: last, as
    the sign that tfprune wrote the directory."""
    from . import __version__

    path = Path(folder) / MARKER_FILE
    path.write_text(json.dumps({"kind": kind, "tfprune": __version__, **record}, indent=2, default=str),
                    encoding="utf-8")
    return path


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
