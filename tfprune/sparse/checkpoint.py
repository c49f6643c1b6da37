"""compressed-tensors' sparse-24-bitmask checkpoints: writing them, and loading them (or dense ones) with
`from_pretrained`, straight into SparseLinear modules.

Layout (compressed-tensors 0.14.0, the last release with the compressor; llm-compressor writes the same):
for every compressed linear `<prefix>`, the safetensors hold `<prefix>.shape` (int64 [2, 1], the dense
shape), `<prefix>.compressed` (the kept values [out, in/2]) and `<prefix>.bitmask` (uint8 [out, ceil(in/8)])
in place of `<prefix>.weight`; config.json gets
``quantization_config = {quant_method: "compressed-tensors", version, sparsity_config: {format:
"sparse-24-bitmask", sparsity_structure: "2:4", global_sparsity, targets: ["Linear"], ignore: [the linears
left dense]}, transform_config: {}}``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import TfpruneError
from .dense_decode import decode_head_
from .formats import PackedWeight, SparseFormatError, _nonzero, pack
from .linear import SparseLinear, skip_reason

__all__ = ["save_compressed_tensors", "from_pretrained", "densify_", "check_bitmask", "sparsity_format",
           "SPARSITY_FORMAT", "COMPRESSED_PARAMS"]

log = logging.getLogger("tfprune")

SPARSITY_FORMAT = "sparse-24-bitmask"
COMPRESSED_PARAMS = ("shape", "compressed", "bitmask")
COMPRESSED_TENSORS_VERSION = "0.14.0"  # the format version we write (the compressor's last release)


def _compressed_linears(model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """({name: nn.Linear or SparseLinear} to write packed, {name: reason} of the nn.Linear left dense)."""
    packable, dense = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear) and module.in_features % 4 == 0:
            packable[name] = module
        elif isinstance(module, nn.Linear):
            reason = skip_reason(module, "bitmask", device="cpu")
            if reason is None:
                packable[name] = module
            else:
                dense[name] = reason
    return packable, dense


def sparsity_config(ignore: list[str], global_sparsity: float) -> dict:
    """compressed-tensors' sparsity_config for our sparse-24-bitmask checkpoints."""
    return {"format": SPARSITY_FORMAT, "sparsity_structure": "2:4", "global_sparsity": global_sparsity,
            "targets": ["Linear"], "ignore": sorted(ignore)}


@torch.no_grad()
def save_compressed_tensors(model: nn.Module, directory: str | Path) -> dict[str, str]:
    """Write `model` to `directory` (save_pretrained, safetensors) with every 2:4 nn.Linear packed in
    compressed-tensors' sparse-24-bitmask format and the sparsity_config in config.json. Returns
    {name: reason} of the linear layers left dense (lm_head: not 2:4, ...). transformers' Conv1D (GPT-2
    style) stays dense: its [in, out] weight is not 2:4 along the rows compressed-tensors packs."""
    directory = Path(directory)
    packable, dense = _compressed_linears(model)
    if not packable:
        raise SparseFormatError("no 2:4-sparse nn.Linear in the model: nothing to write as sparse-24-bitmask "
                                f"({len(dense)} linear layers left dense)")
    state = model.state_dict()
    zeros = total = 0  # over the weights of all linear layers: global_sparsity
    for name, module in packable.items():
        if isinstance(module, SparseLinear):
            packed = pack(module.dense_weight().cpu(), "bitmask")
            del state[f"{name}.values"], state[f"{name}.meta"]
        else:
            packed = pack(module.weight.detach().cpu(), "bitmask")
            del state[f"{name}.weight"]
        state[f"{name}.shape"] = torch.tensor(packed.shape).reshape(-1, 1)
        state[f"{name}.compressed"] = packed.values
        state[f"{name}.bitmask"] = packed.meta
        zeros += packed.values.numel() * 2 - int(_nonzero(packed.values).sum())
        total += packed.values.numel() * 2
    for name in dense:
        weight = model.get_submodule(name).weight
        zeros, total = zeros + int((weight == 0).sum()), total + weight.numel()
    model.save_pretrained(directory, state_dict=state, safe_serialization=True)
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "version": COMPRESSED_TENSORS_VERSION,
        "sparsity_config": sparsity_config(list(dense), zeros / max(total, 1)), "transform_config": {}}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    log.info("compressed-tensors %s: %d linear layers packed, %d left dense", SPARSITY_FORMAT, len(packable),
             len(dense))
    return dense


def _tensor_files(path: Path) -> dict[str, Path]:
    """{tensor name: safetensors file} of a checkpoint directory (sharded or not)."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise TfpruneError(f"no safetensors files in {path}")
    names = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names.update(dict.fromkeys(handle.keys(), file))
    return names


def sparsity_format(config: dict, path: Path) -> str | None:
    """None for a plain checkpoint, else the compressed-tensors sparsity format it uses (checked)."""
    quant = config.get("quantization_config") or config.get("compression_config")
    if not quant or quant.get("quant_method") != "compressed-tensors":
        return None
    if quant.get("config_groups"):
        raise TfpruneError(f"{path}: a quantized compressed-tensors checkpoint; tfprune loads the sparse-only "
                           f"({SPARSITY_FORMAT}) and dense ones")
    fmt = (quant.get("sparsity_config") or {}).get("format", "dense")
    if fmt not in (SPARSITY_FORMAT, "dense"):
        raise TfpruneError(f"{path}: compressed-tensors sparsity format {fmt!r} is not supported "
                           f"(tfprune loads {SPARSITY_FORMAT})")
    return fmt


def from_pretrained(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None,
                    format: str = "cutlass", decode_head: bool = True) -> nn.Module:
    """Load a Hugging Face CausalLM directory. A compressed-tensors sparse-24-bitmask checkpoint (ours, or a
    sparse-only 2:4 one written by llm-compressor) gets a SparseLinear for every packed weight, loaded
    straight from the packed tensors (the dense weights are never built on `device`); a dense checkpoint
    loads as usual. dtype: torch dtype or name (default: as stored). format: the SparseLinears' format,
    'cutlass' (CUTLASS meta derived from the bitmask on `device`; float16/bfloat16 weights with shapes the
    layout takes, others stay 'bitmask') or 'bitmask' (kept as stored). decode_head: the LM head (an nn.Linear,
    tied or not) becomes a DenseDecodeLinear (tfprune.sparse.dense_decode: for 1-16 tokens of bf16 on CPUs with
    AVX512_BF16 a decode kernel, whose fp32 sums differ from torch's in order only, F.linear elsewhere; the same
    Parameters). Returns the model in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..models import DTYPES

    path, device = Path(path), torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    config_file = path / "config.json"
    if not config_file.is_file():
        raise TfpruneError(f"{path} has no config.json: not a Hugging Face model directory")
    if sparsity_format(json.loads(config_file.read_text(encoding="utf-8")), path) is None:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto")
        return _with_decode_head(model.to(device).eval(), decode_head)
    from accelerate import init_empty_weights
    from safetensors import safe_open

    config = AutoConfig.from_pretrained(path)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or getattr(config, "dtype", None))
    files = _tensor_files(path)
    prefixes = sorted(name[: -len(".bitmask")] for name in files if name.endswith(".bitmask"))
    packed_names = {f"{prefix}.{param}" for prefix in prefixes for param in COMPRESSED_PARAMS}

    def load(name: str) -> torch.Tensor:
        with safe_open(str(files[name]), framework="pt", device=str(device)) as handle:
            tensor = handle.get_tensor(name)
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    for prefix in prefixes:
        missing = [f"{prefix}.{param}" for param in COMPRESSED_PARAMS if f"{prefix}.{param}" not in files]
        if missing:
            raise TfpruneError(f"{path}: {prefix} is packed but lacks {', '.join(missing)}")
        module = model.get_submodule(prefix)
        shape = tuple(int(v) for v in load(f"{prefix}.shape").flatten().tolist())
        if not isinstance(module, nn.Linear) or shape != (module.out_features, module.in_features):
            raise TfpruneError(f"{path}: packed weight {prefix} {shape} does not fit the model's {module}")
        values, bitmask = load(f"{prefix}.compressed"), load(f"{prefix}.bitmask")
        check_bitmask(f"{path}: {prefix}", shape, values, bitmask)
        packed = PackedWeight("bitmask", shape, values.dtype, values, bitmask)
        bias = load(f"{prefix}.bias") if f"{prefix}.bias" in files else None
        parent_name, _, child = prefix.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child,
                _sparse_linear(packed, bias, format, device))
    state = {name: load(name) for name in files if name not in packed_names
             and not any(name == f"{prefix}.bias" for prefix in prefixes)}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    missing = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if missing:
        raise TfpruneError(f"{path}: the checkpoint lacks {', '.join(missing[:5])}"
                           f"{' ...' if len(missing) > 5 else ''}")
    try:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: keep the one from_config derived
        pass
    log.info("loaded %s: %d SparseLinear layers (%s)", path, len(prefixes), format)
    return _with_decode_head(model.to(device).eval(), decode_head)


def _with_decode_head(model: nn.Module, decode_head: bool) -> nn.Module:
    if decode_head:
        reason = decode_head_(model)
        if reason is not None:
            log.info("LM head left as it is: %s", reason)
    return model


# popcount of each nibble of a byte: _NIBBLE_BITS[b] = (bits of b & 15) + 16 * (bits of b >> 4)
_NIBBLE_BITS = torch.tensor([bin(b & 15).count("1") + 16 * bin(b >> 4).count("1") for b in range(256)],
                            dtype=torch.uint8)


def check_bitmask(where: str, shape: tuple[int, ...], values: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Validate one packed sparse-24-bitmask weight before it is used: the dense `shape` (rows, cols), the kept
    values [rows, cols/2] and the bitmask uint8 [rows, ceil(cols/8)] must agree, and every group of 4 columns
    must mark exactly 2 kept weights (the padding nibble of an odd last byte none). One table lookup per
    byte; raises SparseFormatError naming `where`, the first bad row and group."""
    if len(shape) != 2 or min(shape) < 1 or shape[1] % 4:
        raise SparseFormatError(f"{where}: packed shape {list(shape)} is not [rows, cols] with cols a multiple of 4")
    rows, cols = shape
    if tuple(values.shape) != (rows, cols // 2):
        raise SparseFormatError(f"{where}: {list(values.shape)} kept values for a [{rows}, {cols}] weight "
                                f"(expected [{rows}, {cols // 2}])")
    if bitmask.dtype != torch.uint8 or tuple(bitmask.shape) != (rows, -(-cols // 8)):
        raise SparseFormatError(f"{where}: bitmask {bitmask.dtype} {list(bitmask.shape)}, expected uint8 "
                                f"[{rows}, {-(-cols // 8)}]")
    counts = _NIBBLE_BITS.to(bitmask.device)[bitmask.long()]  # [rows, bytes]
    low, high = counts % 16, counts // 16
    expected_high = torch.full_like(high, 2)
    if cols % 8:
        expected_high[:, -1] = 0
    bad = (low != 2) | (high != expected_high)
    if bool(bad.any()):
        row, byte = (int(v) for v in bad.nonzero()[0])
        group = 2 * byte + int(low[row, byte] == 2)
        raise SparseFormatError(f"{where}: row {row}, group {group} of its bitmask does not mark exactly 2 of 4 "
                                "weights: not a valid 2:4 bitmask (a corrupt or tampered checkpoint)")


@torch.no_grad()
def densify_(model: nn.Module) -> int:
    """Replace every SparseLinear of `model` by an nn.Linear with its dense weight and drop the
    compressed-tensors quantization_config from model.config: a loaded 2:4 checkpoint becomes a plain model
    (to prune again, or to save dense). Returns the number of layers replaced."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if not isinstance(module, SparseLinear):
            continue
        weight = module.dense_weight()
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
        replaced += 1
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    return replaced


def _sparse_linear(packed: PackedWeight, bias, format: str, device: torch.device) -> SparseLinear:
    """A SparseLinear of a loaded bitmask weight in `format` where the weight fits it, else as stored."""
    if format == "cutlass" and packed.dtype in (torch.float16, torch.bfloat16) and not (
            packed.shape[0] % 32 or packed.shape[1] % 32):
        from .formats import to_cutlass

        packed = to_cutlass(packed)
    elif format not in ("cutlass", "bitmask"):
        raise SparseFormatError(f"unknown 2:4 format {format!r}: choose 'cutlass' or 'bitmask'")
    return SparseLinear(packed, bias)
