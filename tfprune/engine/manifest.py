"""The resumable run's manifest: what command started the partial output and what it has finished.

It lives in the output's temporary directory (`.{out}.tfprune-partial`, a sibling of the output) as
tfprune-manifest.json, rewritten atomically (temporary file, fsync, rename) after every finished step, and
records the sha256 of every tensor written. A lock file keeps two runs out of one directory.
"""
from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from ..errors import OutputExistsError, RunMismatchError

__all__ = ["Manifest", "partial_dir", "MANIFEST_FILE"]

MANIFEST_FILE = "tfprune-manifest.json"
LOCK_FILE = ".tfprune.lock"
VERSION = 2


def partial_dir(out: str | Path) -> Path:
    """The temporary directory a streaming run to `out` writes into (fixed, so that a rerun finds it)."""
    out = Path(out)
    return out.parent / f".{out.name}.tfprune-partial"


def _normalize(value):
    return json.loads(json.dumps(value, default=str))


def _differences(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        lines = []
        for key in sorted(set(old) | set(new)):
            lines += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return lines
    return [] if old == new else [f"{prefix[:-1]}: {old!r} (partial run) vs {new!r} (this command)"]


class Manifest:
    """identity: everything that determines the output bytes (model, checkpoint fingerprint, options,
    calibration hash, dtype, device type, format, shard plan). steps: {'non_layer': {...}, 'layer_plan': {...},
    'layers': [{'index', 'checksums', 'reports', 'seconds'}, ...]} in the order they finished."""

    def __init__(self, folder: Path, identity: dict, data: dict, lock_fd: int):
        self.folder, self.identity, self.data, self._lock_fd = folder, identity, data, lock_fd

    @classmethod
    def open(cls, folder: str | Path, identity: dict) -> "Manifest":
        """Create the partial directory and its manifest, or reopen them when `identity` matches; a partial
        run of another command is refused (RunMismatchError naming the differences)."""
        folder = Path(folder)
        identity = _normalize(identity)
        folder.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise OutputExistsError(f"another tfprune run is writing {folder} (its lock is held)") from None
        path = folder / MANIFEST_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
                    raise ValueError("not a manifest object")
            except (ValueError, UnicodeDecodeError) as error:
                os.close(lock_fd)
                raise RunMismatchError(f"{path} is corrupt or empty ({error}): the partial run cannot be resumed; "
                                       f"delete {folder} to start over") from None
            if data.get("version") != VERSION:
                os.close(lock_fd)
                raise RunMismatchError(f"{folder} holds a partial run written by another version of tfprune "
                                       f"(manifest version {data.get('version')!r}, this one reads {VERSION}): it "
                                       f"cannot be resumed; delete {folder} to start over")
            if data.get("identity") != identity:
                os.close(lock_fd)
                differences = _differences(data.get("identity", {}), identity)
                raise RunMismatchError(
                    f"{folder} holds a partial run of a different command, refusing to mix them:\n  "
                    + "\n  ".join(differences[:12])
                    + f"\nRerun the original command to resume it, or delete {folder} to start over.")
        elif any(entry.name != LOCK_FILE for entry in folder.iterdir()):
            os.close(lock_fd)
            raise RunMismatchError(f"{folder} exists without a {MANIFEST_FILE}: not a tfprune partial run, "
                                   "refusing to write into it; delete it to start over")
        else:
            data = {"version": VERSION, "identity": identity, "non_layer": None, "layer_plan": None, "layers": []}
        manifest = cls(folder, identity, data, lock_fd)
        manifest.save()
        return manifest

    @property
    def layers(self) -> list[dict]:
        return self.data["layers"]

    def set(self, key: str, value) -> None:
        self.data[key] = _normalize(value)
        self.save()

    def add_layer(self, index: int, checksums: dict[str, str], reports: list[dict], seconds: float,
                  **extra) -> None:
        """Record layer `index` as finished (after its bytes were fsync'ed); extra: more fields to keep."""
        if index != len(self.layers):
            raise RuntimeError(f"layer {index} finished out of order (manifest has {len(self.layers)})")
        self.layers.append(_normalize({"index": index, "checksums": checksums, "reports": reports,
                                       "seconds": seconds, **extra}))
        self.save()

    def truncate_layers(self, count: int) -> None:
        """Forget the layers from `count` on (their bytes failed verification): they are done again."""
        del self.layers[count:]
        self.save()

    def save(self) -> None:
        path = self.folder / MANIFEST_FILE
        temporary = path.with_suffix(".json.tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(self.data, handle, indent=1)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def release(self) -> None:
        """Drop the lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @staticmethod
    def remove_files(folder: str | Path) -> None:
        """Remove the manifest and lock files from a finished output directory."""
        for name in (MANIFEST_FILE, LOCK_FILE):
            (Path(folder) / name).unlink(missing_ok=True)
