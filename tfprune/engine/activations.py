"""Where the streaming engine keeps the calibration activations between decoder layers.

Three tiers, chosen by a memory budget: 'device' (the compute device, as the in-memory engine does), 'host'
(CPU memory, pinned when the device is a GPU) and 'disk' (one memory-mapped scratch file). One buffer of
[B, T, H] per calibration batch; a layer's output overwrites its input batch by batch (a batch's output
depends only on its own input). The other block arguments (masks, position embeddings) stay on the device.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..errors import ConfigError
from ..outdir import check_free_space
from .checkpoint import parse_size
from .capture import LayerInput

__all__ = ["MemoryBudget", "ActivationStore", "choose_tier", "free_memory", "tensor_nbytes"]

log = logging.getLogger("tfprune")
TIERS = ("device", "host", "disk")
_ALIGN = 64


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes the run may use on the compute device and in host memory (None: what is free now)."""

    device: int | None = None
    host: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> "MemoryBudget":
        """'40GiB' (the device) | 'device=40GiB,host=100GiB' | None."""
        if not text:
            return cls()
        values = {}
        for part in text.split(","):
            key, sep, size = part.partition("=")
            key, size = (key.strip(), size) if sep else ("device", key)
            if key not in ("device", "host") and not key.startswith(("cuda", "cpu")):
                raise ConfigError(f"--max-memory: unknown key {key!r}; use SIZE or device=SIZE,host=SIZE")
            key = "host" if key == "cpu" else ("device" if key.startswith("cuda") else key)
            values[key] = parse_size(size)
        return cls(**values)


def free_memory(device: torch.device) -> int:
    """Free bytes on `device` now: CUDA's free memory, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def tensor_nbytes(value) -> int:
    """Bytes of every tensor inside nested tuples / lists / dicts."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(tensor_nbytes(item) for item in value)
    if isinstance(value, dict):
        return sum(tensor_nbytes(item) for item in value.values())
    return 0


def choose_tier(activation_bytes: int, fixed_device_bytes: int, device: torch.device,
                budget: MemoryBudget) -> tuple[str, str]:
    """(tier, reason): 'device' when layer + working memory + activations fit the device budget, else 'host'
    when the activations fit the host budget (a separate memory only when the device is a GPU), else 'disk'."""
    device_budget = budget.device if budget.device is not None else int(0.9 * free_memory(device))
    need = fixed_device_bytes + activation_bytes
    if need <= device_budget:
        return "device", f"layer + working memory + activations {_gib(need)} <= device budget {_gib(device_budget)}"
    reason = f"layer + working memory + activations {_gib(need)} > device budget {_gib(device_budget)}"
    if device.type != "cpu":
        host_budget = budget.host if budget.host is not None else int(0.8 * free_memory(torch.device("cpu")))
        if activation_bytes <= host_budget:
            return "host", f"{reason}; activations <= host budget {_gib(host_budget)}"
        reason += f"; activations > host budget {_gib(host_budget)}"
    return "disk", reason


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


class ActivationStore:
    """The calibration batches at the input of the current layer. store[i] is a LayerInput whose hidden is on
    the compute device; store.put(i, hidden) replaces batch i by the layer's output."""

    def __init__(self, tier: str, device: torch.device, scratch: Path | None = None):
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        self.tier, self.device, self.scratch = tier, device, scratch
        self.items: list[LayerInput] = []
        self._file: torch.Tensor | None = None
        self._used = 0

    def reserve(self, total_bytes: int, batches: int) -> None:
        """Disk tier: create the scratch file for `total_bytes` of hidden states in `batches` batches."""
        if self.tier != "disk":
            return
        size = total_bytes + _ALIGN * batches
        self.scratch.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(self.scratch.parent, size, "the activation scratch file (--max-memory host=SIZE keeps "
                         "activations in host memory instead)")
        with open(self.scratch, "wb") as handle:
            handle.truncate(size)
        self._file = torch.from_file(str(self.scratch), shared=True, size=size, dtype=torch.uint8)

    def append(self, item: LayerInput) -> None:
        """Keep one captured batch (its hidden moves to this store's tier)."""
        hidden = item.hidden
        if self.tier == "host":
            slot = torch.empty(hidden.shape, dtype=hidden.dtype, pin_memory=self.device.type == "cuda")
            hidden = slot.copy_(hidden)
        elif self.tier == "disk":
            nbytes = hidden.numel() * hidden.element_size()
            start = -(-self._used // _ALIGN) * _ALIGN
            if start + nbytes > self._file.numel():
                raise RuntimeError("activation scratch file too small: the reservation was wrong")
            slot = self._file[start : start + nbytes].view(hidden.dtype).view(hidden.shape)
            hidden = slot.copy_(hidden)
            self._used = start + nbytes
        self.items.append(replace(item, hidden=hidden))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> LayerInput:
        item = self.items[index]
        if self.tier == "device":
            return item
        return replace(item, hidden=item.hidden.to(self.device, non_blocking=True))

    def __iter__(self):
        return (self[index] for index in range(len(self.items)))

    def put(self, index: int, hidden: torch.Tensor) -> None:
        item = self.items[index]
        if self.tier == "device":
            item.hidden = hidden
        else:
            item.hidden.copy_(hidden)

    @property
    def nbytes(self) -> int:
        return sum(tensor_nbytes(item.hidden) for item in self.items)

    def close(self) -> None:
        self.items = []
        self._file = None
        if self.scratch is not None and self.scratch.exists():
            os.unlink(self.scratch)
