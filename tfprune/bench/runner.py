"""`tfprune bench`: configuration, the run over every case, and its record."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch

from .. import decode_crossover
from ..errors import TfpruneError
from ..models import DTYPES
from .crossover import measure_crossover
from .e2e import bench_e2e
from .linear import PRESETS, LinearShape, bench_linear_case, model_shapes, parse_shapes, preset_shapes, sparse_support
from .timing import machine_info, versions

__all__ = ["BenchConfig", "DEFAULTS", "resolve_device", "bench_shapes", "run_bench"]

log = logging.getLogger("tfprune")

# Per device: what runs when no flag says otherwise. The CPU defaults finish in about a minute on 2 cores.
DEFAULTS = {
    "cuda": dict(presets=tuple(PRESETS), tokens=(1, 16, 64, 256, 1024, 4096, 8192), dtypes=("float16", "bfloat16"),
                 reps=50, warmup=10, e2e_hidden=4096, e2e_layers=4, prefill_tokens=2048, decode_tokens=128,
                 e2e_reps=5),
    "cpu": dict(presets=("llama-7b",), tokens=(1, 16, 128), dtypes=("bfloat16",), reps=10, warmup=2,
                e2e_hidden=1024, e2e_layers=4, prefill_tokens=128, decode_tokens=32, e2e_reps=3),
}


@dataclass(frozen=True)
class BenchConfig:
    """None fields take the device's DEFAULTS. Shapes: `model` (a model's config) and/or `shapes`
    (OUTxIN list), else `presets`. tokens: token counts (rows of x); dtypes: names in tfprune.models.DTYPES.
    crossover: measure the decode kernel's crossover on the shapes (first dtype); store_crossover: record it
    for this device where tfprune.decode24.max_rows reads it (tfprune.decode_crossover)."""

    device: str = "auto"
    presets: tuple[str, ...] | None = None
    model: str | None = None
    shapes: str | None = None
    tokens: tuple[int, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    reps: int | None = None
    warmup: int | None = None
    sparse_format: str = "cutlass"
    linear: bool = True
    e2e: bool = True
    e2e_model: str = "builtin:llama"
    e2e_hidden: int | None = None
    e2e_layers: int | None = None
    prefill_tokens: int | None = None
    decode_tokens: int | None = None
    e2e_reps: int | None = None
    crossover: bool = True
    store_crossover: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise TfpruneError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")
        for name in self.dtypes or ():
            if name not in DTYPES:
                raise TfpruneError(f"unknown dtype {name!r}: choose from {', '.join(DTYPES)}")
        for preset in self.presets or ():
            if preset not in PRESETS:
                raise TfpruneError(f"unknown preset {preset!r}: choose from {', '.join(PRESETS)}")
        if any(t < 1 for t in self.tokens or ()) or (self.reps is not None and self.reps < 1):
            raise TfpruneError("token counts and --reps must be positive")
        if self.sparse_format not in ("cutlass", "bitmask"):
            raise TfpruneError(f"--sparse-format must be cutlass or bitmask, got {self.sparse_format!r}")

    def resolved(self, device: str) -> dict:
        """Every setting with the device defaults filled in."""
        values = asdict(self)
        defaults = DEFAULTS["cuda" if device.startswith("cuda") else "cpu"]
        for key, value in defaults.items():
            if values.get(key) is None:
                values[key] = value
        values["device"] = device
        return values


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TfpruneError("--device cuda was asked for, but torch sees no CUDA device")
    return name


def bench_shapes(settings: dict) -> list[LinearShape]:
    shapes = []
    if settings["model"]:
        shapes += model_shapes(settings["model"])
    if settings["shapes"]:
        shapes += parse_shapes(settings["shapes"])
    if not shapes:
        shapes = [shape for preset in settings["presets"] for shape in preset_shapes(preset)]
    return shapes


def _not_measured(shapes: list[LinearShape], settings: dict, reason: str) -> list[dict]:
    """Placeholder rows for the GPU cases this machine cannot run."""
    gpu = DEFAULTS["cuda"]
    return [{"device": "cuda", "dtype": dtype, "shape": shape.name, "model": shape.model, "layers": list(shape.layers),
             "out_features": shape.out_features, "in_features": shape.in_features, "tokens": tokens,
             "status": "not measured", "reason": reason, "dense": None, "sparse": None, "speedup": None,
             "max_abs_diff": None, "sparse_path": None, "sparse_status": "not measured", "sparse_reason": reason}
            for shape in shapes for dtype in gpu["dtypes"] for tokens in settings["gpu_tokens"]]


def _crossover(shapes: list[LinearShape], settings: dict, config: BenchConfig, device: str) -> dict:
    """The decode crossover measured on the shapes (at most the first four), stored for the device."""
    result = measure_crossover(shapes[:4], DTYPES[settings["dtypes"][0]], device, settings["reps"], settings["warmup"],
                               config.sparse_format, seed=config.seed)
    result["device"] = decode_crossover.device_key(device)
    result["stored"] = None
    if result["max_rows"] is not None and config.store_crossover:
        details = {k: result[k] for k in ("against", "dtype", "ratios", "shapes", "reps")}
        path = decode_crossover.store(device, result["max_rows"], details)
        result["stored"] = None if path is None else str(path)
    log.info("decode crossover on %s: %s", result["device"], result.get("max_rows"))
    return result


def run_bench(config: BenchConfig = BenchConfig()) -> dict:
    """Run every linear case, the decode crossover and the end-to-end case; return the full record
    (JSON-ready): machine, versions, settings, sparse availability, crossover, linear rows and e2e rows, every
    sample included."""
    device = resolve_device(config.device)
    settings = config.resolved(device)
    settings["gpu_tokens"] = list(settings["tokens"]) if device.startswith("cuda") else list(DEFAULTS["cuda"]["tokens"])
    available, reason = sparse_support()
    record = {"tool": "tfprune bench", "schema": 1, "machine": machine_info(), "versions": versions(),
              "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items()},
              "sparse": {"available": available, "format": config.sparse_format, "reason": reason},
              "linear": [], "e2e": []}
    if config.linear or config.crossover:
        shapes = bench_shapes(settings)
    if config.crossover:
        record["crossover"] = _crossover(shapes, settings, config, device)
    if config.linear:
        for dtype_name in settings["dtypes"]:
            dtype = DTYPES[dtype_name]
            for shape in shapes:
                record["linear"] += bench_linear_case(shape, settings["tokens"], dtype, device, settings["reps"],
                                                      settings["warmup"], config.sparse_format, config.seed)
        if not device.startswith("cuda") and not torch.cuda.is_available():
            record["linear"] += _not_measured(shapes, settings, "no CUDA device: torch.cuda.is_available() is False")
    if config.e2e:
        for dtype_name in settings["dtypes"]:
            record["e2e"] += bench_e2e(config.e2e_model, DTYPES[dtype_name], device, settings["prefill_tokens"],
                                       settings["decode_tokens"], settings["e2e_reps"], min(settings["warmup"], 2),
                                       config.sparse_format, settings["e2e_hidden"], settings["e2e_layers"],
                                       config.seed)
        if not device.startswith("cuda") and not torch.cuda.is_available():
            gpu, reason = DEFAULTS["cuda"], "no CUDA device: torch.cuda.is_available() is False"
            record["e2e"] += [{"device": "cuda", "dtype": dtype, "model": config.e2e_model,
                               "hidden": config.e2e_hidden or gpu["e2e_hidden"],
                               "layers": config.e2e_layers or gpu["e2e_layers"], "parameters": None, "batch": 1,
                               "sparse_layers": None,
                               "phase": phase, "tokens": gpu[f"{phase}_tokens"], "context": gpu["prefill_tokens"],
                               "status": "not measured", "reason": reason, "dense": None, "sparse": None,
                               "speedup": None, "max_abs_logit_diff": None, "sparse_status": "not measured",
                               "sparse_reason": reason}
                              for dtype in gpu["dtypes"] for phase in ("prefill", "decode")]
    return record
