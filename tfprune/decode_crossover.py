"""Measured decode-kernel crossovers, stored per device: the largest token count for which tfprune's 2:4 decode
kernel beats the path SparseLinear would otherwise take on that device (`tfprune bench` measures and stores
it; `tfprune.decode24.max_rows` reads it).

The store is one JSON file, `$TFPRUNE_DECODE_CROSSOVER` if set (an empty value or "none" turns stored
values off), else `$XDG_CACHE_HOME/tfprune/decode-crossover.json` (default `~/.cache/tfprune/`):

    {"schema": 1, "devices": {"cuda:NVIDIA H200:sm_90": {"max_rows": 8, "against": "cusparselt",
                                                          "measured": "2026-12-01T10:00:00+00:00", ...}}}

Devices are keyed by `device_key`: a GPU by its name and compute capability, a CPU by the decode kernel it
runs (tfprune._C.decode24_isa) and its model name. The file is read once per process (`reload` re-reads it).
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import tempfile
from pathlib import Path

import torch

from ._ext import extension

__all__ = ["ENV", "SCHEMA", "store_path", "device_key", "stored", "lookup", "store", "reload", "state"]

ENV = "TFPRUNE_DECODE_CROSSOVER"
SCHEMA = 1


def store_path() -> Path | None:
    """The crossover file, or None when stored crossovers are turned off (TFPRUNE_DECODE_CROSSOVER='' / 'none')."""
    value = os.environ.get(ENV)
    if value is not None:
        value = value.strip()
        return None if value in ("", "none") else Path(value).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tfprune" / "decode-crossover.json"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=None)
def _key(kind: str, index: int | None) -> str:
    if kind == "cuda":
        index = torch.cuda.current_device() if index is None else index
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda:{torch.cuda.get_device_name(index)}:sm_{major}{minor}"
    if kind == "cpu":
        isa = extension.decode24_isa() if extension is not None and hasattr(extension, "decode24_isa") else "portable"
        return f"cpu:{isa}:{_cpu_model()}"
    return kind


def device_key(device: torch.device | str) -> str:
    """'cuda:<name>:sm_<major><minor>' | 'cpu:<decode24 isa>:<model name>' | the device type otherwise."""
    device = torch.device(device)
    return _key(device.type, device.index)


_cache: dict[tuple, dict] = {}


def stored() -> dict[str, dict]:
    """{device key: record} of the store (empty when there is none, it is unreadable, or turned off). Read
    once per location (the cache is keyed by the environment that names it: no file access per call)."""
    where = (os.environ.get(ENV), os.environ.get("XDG_CACHE_HOME"))
    if where not in _cache:
        path = store_path()
        devices = {}
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict) and data.get("schema") == SCHEMA:
                    devices = data.get("devices", {})
            except (OSError, ValueError):
                devices = {}
        _cache[where] = {key: record for key, record in devices.items()
                         if isinstance(record, dict) and isinstance(record.get("max_rows"), int)}
    return _cache[where]


def lookup(device: torch.device | str) -> int | None:
    """The stored crossover (max_rows) of `device`, or None."""
    record = stored().get(device_key(device))
    return None if record is None else record["max_rows"]


_generation = [0]


def state() -> tuple:
    """What a lookup's answer depends on besides the device ($TFPRUNE_DECODE_CROSSOVER and how often the
    store was reloaded; call reload() after changing XDG_CACHE_HOME): callers may cache answers under it."""
    return os.environ.get(ENV), _generation[0]


def reload() -> None:
    """Forget what was read: the next lookup reads the file again."""
    _cache.clear()
    _generation[0] += 1


def store(device: torch.device | str, max_rows: int, details: dict | None = None) -> Path | None:
    """Record `max_rows` (and `details`: what it was measured against, ratios, shapes) for `device`,
    replacing its previous record; written atomically. Returns the file, or None when storing is off."""
    if not isinstance(max_rows, int) or max_rows < 0:
        raise ValueError(f"crossover max_rows must be a non-negative int, got {max_rows!r}")
    path = store_path()
    if path is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            data = {}
    except (OSError, ValueError):
        data = {}
    devices = data.get("devices", {})
    devices[device_key(device)] = dict(details or {}, max_rows=max_rows, measured=datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False,
                                     encoding="utf-8") as tmp:
        json.dump({"schema": SCHEMA, "devices": devices}, tmp, indent=1, sort_keys=True)
    os.replace(tmp.name, path)
    reload()
    return path
