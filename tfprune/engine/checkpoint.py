"""Safetensors files for the streaming engine: a checkpoint read lazily, tensor by tensor, and output shards
whose layout is planned before any work, so that every tensor is written once, at its final offset.

safetensors layout: 8-byte little-endian header length N, N bytes of JSON header ({name: {dtype, shape,
data_offsets: [begin, end]}} plus "__metadata__"), then the data; offsets are relative to the data start and
must tile it without gaps.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TfpruneError

__all__ = ["DTYPES", "TensorInfo", "Checkpoint", "OutputTensor", "ShardPlan", "plan_shards", "ShardFiles",
           "tensor_bytes", "parse_size"]

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
CODES = {dtype: code for code, dtype in DTYPES.items()}
INDEX_FILE = "model.safetensors.index.json"
_CHUNK = 1 << 28  # bytes per pread/pwrite call (Linux caps one call near 2 GiB)
FINGERPRINT_SAMPLES = 64  # blocks read per weight file for its content fingerprint
FINGERPRINT_BLOCK = 64 << 10


def parse_size(text: str | int) -> int:
    """'5GB' | '512MiB' | '1.5GiB' | '100000' -> bytes, a positive number."""
    if isinstance(text, int) and not isinstance(text, bool):
        size = text
    else:
        units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                 "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
        value = str(text).strip().upper()
        number = value.rstrip("KMGTIB")
        try:
            amount = float(number) * units[value[len(number):].strip()]
            size = int(amount)
        except (ValueError, KeyError, OverflowError):
            raise TfpruneError(f"cannot parse size {text!r}: use e.g. 5GB, 512MiB or a number of bytes") from None
    if size <= 0:
        raise TfpruneError(f"size {text!r} must be positive (e.g. 5GB, 512MiB or a number of bytes)")
    return size


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a CPU tensor, row-major (no copy when it is contiguous)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _read_header(path: Path) -> tuple[dict, int]:
    """(header, data start) of a safetensors file, checked: a JSON object whose tensors lie inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise TfpruneError(f"{path} is not a safetensors file (shorter than 8 bytes): truncated or corrupt")
        (length,) = struct.unpack("<Q", prefix)
        if length > min(100_000_000, size - 8):
            raise TfpruneError(f"{path} is not a safetensors file (header length {length} for {size} bytes): "
                               "truncated or corrupt; re-download it")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise TfpruneError(f"{path}: the safetensors header is not valid JSON: corrupt; re-download it") from None
    if not isinstance(header, dict):
        raise TfpruneError(f"{path}: the safetensors header is not a JSON object: corrupt")
    data_size = size - 8 - length
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            begin, end = meta["data_offsets"]
            numel = _numel(meta["shape"])
            itemsize = DTYPES[meta["dtype"]].itemsize if meta["dtype"] in DTYPES else None
        except (KeyError, TypeError, ValueError):
            raise TfpruneError(f"{path}: tensor {key} has a malformed header entry: corrupt") from None
        if not 0 <= begin <= end <= data_size:
            raise TfpruneError(f"{path} is truncated or corrupt: tensor {key} ends at byte {end} of a {data_size}-"
                               "byte data section; re-download it")
        if itemsize is not None and end - begin != numel * itemsize:
            raise TfpruneError(f"{path}: tensor {key} has {end - begin} bytes for shape {meta['shape']} "
                               f"{meta['dtype']}: corrupt")
    return header, 8 + length


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a safetensors file: dtype code ('BF16'...), shape, absolute byte range [start, end)."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


class Checkpoint:
    """The safetensors of a Hugging Face directory (sharded with an index, or any *.safetensors), read lazily:
    only headers at construction, then `load(names)` opens the files with safetensors.safe_open and reads
    just those tensors. `bytes_read` counts the tensor bytes read."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        weight_map = None
        if index.is_file():
            from ..source import read_json

            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TfpruneError(f"{index} has no valid weight_map {{tensor: file}}: corrupt; restore it")
            files = sorted(set(weight_map.values()))
            absent = [name for name in files if not (self.folder / name).is_file()]
            if absent:
                raise TfpruneError(f"{index} names {absent[0]}, which is not in {self.folder}: the checkpoint is "
                                   "incomplete; download the missing shard")
            unlisted = sorted({p.name for p in self.folder.glob("*.safetensors")} - set(files))
            if unlisted:
                raise TfpruneError(f"{index} does not list {unlisted[0]} of {self.folder}: the index is incomplete "
                                   "or stale; fix it (or remove the stray shard)")
        else:
            files = sorted(path.name for path in self.folder.glob("*.safetensors"))
        if not files:
            raise TfpruneError(f"{self.folder} holds no *.safetensors: streaming needs a safetensors checkpoint "
                               "(convert it with save_pretrained(..., safe_serialization=True))")
        self.tensors: dict[str, TensorInfo] = {}
        self._headers = []
        for name in files:
            path = self.folder / name
            header, data_start = _read_header(path)
            self._headers.append((name, path.stat().st_size, header))
            for key, meta in header.items():
                if key == "__metadata__":
                    continue
                begin, end = meta["data_offsets"]
                if key in self.tensors:
                    raise TfpruneError(f"tensor {key} is stored twice ({self.tensors[key].file.name} and {name})")
                self.tensors[key] = TensorInfo(key, path, meta["dtype"], tuple(meta["shape"]),
                                               data_start + begin, data_start + end)
        if weight_map is not None:
            wrong = [key for key, file in weight_map.items() if self.tensors.get(key) is None
                     or self.tensors[key].file.name != file]
            if wrong:
                raise TfpruneError(f"{index} maps {wrong[0]} to {weight_map[wrong[0]]}, which does not hold it: the "
                                   "index and the shards disagree")
        self.bytes_read = 0

    def fingerprint(self, mtimes: bool = True) -> str:
        """The content identity of the checkpoint a resumed run must find unchanged: sha256 over config.json and
        generation_config.json, and per weight file its name, size, header, modification time (mtimes=False
        for files this run wrote itself) and FINGERPRINT_SAMPLES evenly spaced blocks of FINGERPRINT_BLOCK
        bytes (the whole file when it is smaller). Reads about 4 MiB per shard: a fraction of a second for a
        140 GB checkpoint. A rewrite is caught when it changes a file's size, header or time, or a sampled
        block; one that restores the time and misses every sampled block is not."""
        digest = hashlib.sha256()
        for name in ("config.json", "generation_config.json"):
            path = self.folder / name
            digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"-"))
        for name, size, header in self._headers:
            path = self.folder / name
            stat = path.stat()
            digest.update(json.dumps([name, size, header, stat.st_mtime_ns if mtimes else 0], sort_keys=True).encode())
            with open(path, "rb") as handle:
                if size <= FINGERPRINT_SAMPLES * FINGERPRINT_BLOCK:
                    digest.update(handle.read())
                    continue
                step = (size - FINGERPRINT_BLOCK) // (FINGERPRINT_SAMPLES - 1)
                for index in range(FINGERPRINT_SAMPLES):
                    handle.seek(index * step)
                    digest.update(handle.read(FINGERPRINT_BLOCK))
        return digest.hexdigest()

    @property
    def nbytes(self) -> int:
        return sum(info.nbytes for info in self.tensors.values())

    def floating_dtype(self) -> torch.dtype:
        """The dtype of the checkpoint's first floating-point tensor (what dtype='auto' loads)."""
        for info in self.tensors.values():
            dtype = DTYPES.get(info.dtype)
            if dtype is not None and dtype.is_floating_point:
                return dtype
        return torch.float32

    def load(self, names) -> dict[str, torch.Tensor]:
        """{name: CPU tensor} in the checkpoint's dtype, read tensor by tensor with safetensors.safe_open.

        Each tensor is copied out of the file mapping and its handle closed at once: a tensor still backed by
        the mapping would keep the file's pages resident (counted in RSS) and, once pruned in place, add
        copy-on-write copies of them; so the layer is held once, in anonymous memory. A floating-point tensor
        holding NaN/Inf is refused (NonFiniteWeightError naming it)."""
        from safetensors import safe_open

        from .weights import check_finite_tensor

        result = {}
        for name in names:
            with safe_open(str(self.tensors[name].file), framework="pt", device="cpu") as handle:
                mapped = handle.get_tensor(name)
                result[name] = mapped.clone()
                del mapped
            self.bytes_read += self.tensors[name].nbytes
            check_finite_tensor(name, result[name], self.tensors[name].file.name)
        return result


@dataclass(frozen=True)
class OutputTensor:
    """Where one output tensor goes: shard index, absolute byte offset in that file, and its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    nbytes: int


@dataclass
class ShardPlan:
    """The complete layout of the output shards: file names, headers, sizes and every tensor's place."""

    files: list[str]
    headers: list[bytes]
    sizes: list[int]
    tensors: dict[str, OutputTensor]

    def digest(self) -> str:
        digest = hashlib.sha256()
        for name, header in zip(self.files, self.headers):
            digest.update(name.encode() + b"\0" + header)
        return digest.hexdigest()

    def index(self) -> dict:
        """model.safetensors.index.json: total tensor bytes and {tensor: shard file}, sorted by name."""
        return {"metadata": {"total_size": sum(t.nbytes for t in self.tensors.values())},
                "weight_map": {name: self.files[self.tensors[name].shard] for name in sorted(self.tensors)}}


def plan_shards(specs: list[tuple[str, str, tuple[int, ...]]], max_shard_bytes: int) -> ShardPlan:
    """Pack (name, dtype code, shape) in the given order into shards of at most max_shard_bytes of data (a
    larger tensor gets a shard of its own). Inside a shard, tensors with larger items come first so that every
    tensor is aligned to its item size."""
    groups: list[list[tuple[str, str, tuple[int, ...], int]]] = [[]]
    used = 0
    for name, dtype, shape in specs:
        nbytes = DTYPES[dtype].itemsize * _numel(shape)
        if groups[-1] and used + nbytes > max_shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append((name, dtype, tuple(shape), nbytes))
        used += nbytes
    count = len(groups)
    files = [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
    headers, sizes, tensors = [], [], {}
    for shard, group in enumerate(groups):
        ordered = sorted(enumerate(group), key=lambda item: (-DTYPES[item[1][1]].itemsize, item[0]))
        header: dict = {"__metadata__": {"format": "pt"}}
        begin = 0
        for _, (name, dtype, shape, nbytes) in ordered:
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [begin, begin + nbytes]}
            begin += nbytes
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 8)
        data_start = 8 + len(text)
        headers.append(struct.pack("<Q", len(text)) + text)
        sizes.append(data_start + begin)
        for name, meta in header.items():
            if name != "__metadata__":
                start, end = meta["data_offsets"]
                tensors[name] = OutputTensor(name, meta["dtype"], tuple(meta["shape"]), shard, data_start + start,
                                             end - start)
    return ShardPlan(files, headers, sizes, tensors)


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


class ShardFiles:
    """The planned output shards in `folder`, opened for positional writes and reads. Files already there with
    the planned header and size are kept (a resumed run); others are created at full size with their header.
    `bytes_written` / `bytes_read` count tensor bytes."""

    def __init__(self, folder: str | Path, plan: ShardPlan):
        self.folder, self.plan = Path(folder), plan
        self.fds = []
        for name, header, size in zip(plan.files, plan.headers, plan.sizes):
            path = self.folder / name
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(fd).st_size != size or os.pread(fd, len(header), 0) != header:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, size)
                _pwrite(fd, memoryview(header), 0)
            self.fds.append(fd)
        self._dirty: set[int] = set()
        self.bytes_written = 0
        self.bytes_read = 0

    def write(self, name: str, tensor: torch.Tensor) -> str:
        """Write one CPU tensor at its planned place; returns the sha256 of its bytes."""
        spec = self.plan.tensors[name]
        if CODES.get(tensor.dtype) != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise RuntimeError(f"{name}: got {tensor.dtype} {tuple(tensor.shape)}, the plan says {spec.dtype} "
                               f"{spec.shape}")
        data = tensor_bytes(tensor.cpu())
        _pwrite(self.fds[spec.shard], data, spec.offset)
        self._dirty.add(spec.shard)
        self.bytes_written += spec.nbytes
        return hashlib.sha256(data).hexdigest()

    def read(self, name: str) -> tuple[torch.Tensor, str]:
        """(CPU tensor, sha256 of its bytes) of one written tensor."""
        spec = self.plan.tensors[name]
        buffer = torch.empty(spec.nbytes, dtype=torch.uint8)
        view = memoryview(buffer.numpy()) if spec.nbytes else memoryview(bytearray())
        for begin in range(0, spec.nbytes, _CHUNK):
            end = min(begin + _CHUNK, spec.nbytes)
            if os.preadv(self.fds[spec.shard], [view[begin:end]], spec.offset + begin) != end - begin:
                raise TfpruneError(f"{self.plan.files[spec.shard]} is shorter than planned (reading {name})")
        self.bytes_read += spec.nbytes
        return buffer.view(DTYPES[spec.dtype]).reshape(spec.shape), hashlib.sha256(view).hexdigest()

    def sync(self) -> None:
        """fsync the shards written since the last sync."""
        for shard in sorted(self._dirty):
            os.fsync(self.fds[shard])
        self._dirty.clear()

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    data = data.cast("B") if data.nbytes else data
    done = 0
    while done < data.nbytes:
        done += os.pwrite(fd, data[done : done + _CHUNK], offset + done)
