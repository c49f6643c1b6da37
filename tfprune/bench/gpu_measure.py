"""The measurements of `make gpu-check` (tfprune.bench.gpu_check runs them): each section checks a GPU path
against its reference (a failed check is a row with status FAIL) and times it. Shapes are real LLM layers on a
GPU, tiny ones in the CPU dry run (kernels interpreted, numbers marked as not GPU numbers).

Timing (GPU): triton.testing.do_bench medians (L2 flushed before every call, CUDA events: device time);
decode also as CUDA-graph replays over rotating weight copies (no host overhead, no L2 reuse) and as eager
back-to-back calls (host overhead included). Bandwidth: the bytes a kernel must move / its time, and that as a
fraction of a device-to-device copy measured first.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["Context", "SECTIONS", "random_24"]

BF16 = torch.bfloat16
LLM = [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (28672, 8192)]  # [out, in] weights
DECODE_LLM = LLM[:4] + [(4096, 14336)] + LLM[4:]


@dataclass
class Context:
    """What every section shares: the device ('cuda', or 'cpu' in the dry run), the measured copy bandwidth."""

    device: str
    dry: bool
    copy_gbps: float | None = None
    crossover_file: str | None = None
    extras: dict = field(default_factory=dict)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def ms(self, fn) -> float:
        """Median device milliseconds of fn() (GPU: do_bench, L2 flushed); dry run: one timed call after one."""
        if self.dry:
            fn()
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))

    def gbps(self, nbytes: float, ms: float, prefix: str = "") -> dict:
        """{gbps, copy_fraction} (keys prefixed): bandwidth of nbytes moved in ms, and its share of the copy."""
        rate = nbytes / (ms * 1e-3) / 1e9
        share = rate / self.copy_gbps if self.copy_gbps and not self.dry else None
        return {f"{prefix}gbps": rate, f"{prefix}copy_fraction": share}

    def shapes(self, gpu, dry):
        return dry if self.dry else gpu


def random_24(rows: int, cols: int, device: str, seed: int = 0, dtype=BF16) -> torch.Tensor:
    """A random bf16 weight, 2:4 magnitude-pruned (+0.0 zeros), on device."""
    from .. import ops

    g = torch.Generator(device="cpu").manual_seed(seed + rows * 7 + cols)
    weight = (torch.randn(rows, cols, generator=g) * 0.02).to(device=device, dtype=dtype)
    ops.prune_weight_(weight, "magnitude", nm=(2, 4))
    return weight


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))


def _row(case: str, ok: bool | None = True, **values) -> dict:
    return dict(case=case, status="ok" if ok else ("FAIL" if ok is False else "info"), **values)


# ------------------------------------------------------------------------------------------- device


def device_info(ctx: Context) -> list[dict]:
    from .. import decode24
    from .._ext import extension
    from ..sparse import backends
    from .timing import versions

    row = dict(versions(), extension_cuda=bool(getattr(extension, "WITH_CUDA", False)),
               cusparselt=backends.cusparselt_available(),
               cusparselt_version=_call(lambda: torch.backends.cusparselt.version()))
    if ctx.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        cap = (props.major, props.minor)
        row.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1),
                   l2_mib=round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
                   gemm_backend_bf16=backends.policy(cap, BF16, (4096, 4096), backends.cusparselt_available())[0])
    row["decode_max_rows_default"] = decode24.max_rows(ctx.device)
    return [_row("device", None, **row)]


def _call(fn):
    try:
        return fn()
    except Exception as error:  # informational: record what failed instead
        return f"{type(error).__name__}: {error}"


def copy_bandwidth(ctx: Context) -> list[dict]:
    numel = (1 << 23) if ctx.dry else (1 << 29)  # 16 MiB / 1 GiB of bf16
    src = torch.randn(numel, device=ctx.device).to(BF16)
    dst = torch.empty_like(src)
    ms = ctx.ms(lambda: dst.copy_(src))
    ctx.copy_gbps = 2 * src.numel() * 2 / (ms * 1e-3) / 1e9
    return [_row(f"device copy {src.numel() * 2 / 2**30:.2f} GiB (read + write)", None, ms=ms, gbps=ctx.copy_gbps)]


# ------------------------------------------------------------------------------------------- Triton kernels


def channel_stats(ctx: Context) -> list[dict]:
    from .. import ops
    from ..kernels.channel_stats import channel_stats_ref

    rows = []
    for tokens, channels in ctx.shapes([(2048, 4096), (2048, 14336), (16384, 4096), (16384, 8192)], [(37, 131)]):
        g = torch.Generator(device="cpu").manual_seed(tokens + channels)
        x = (torch.randn(tokens, channels, generator=g) * 2).to(device=ctx.device, dtype=BF16)
        mask = (torch.rand(tokens, generator=g) > 0.05).to(ctx.device)
        bufs = [torch.zeros(channels, dtype=torch.float64, device=ctx.device), torch.zeros(channels, device=ctx.device),
                torch.zeros(channels, dtype=torch.int64, device=ctx.device),
                torch.zeros((), dtype=torch.int64, device=ctx.device)]
        ops.accumulate_channel_stats_(x, 6.0, mask, *bufs)
        ref = channel_stats_ref(x, 6.0, mask)
        err = float(((bufs[0] - ref[0]).abs() / ref[0].abs().clamp_min(1e-30)).max())
        ok = err < 1e-4 and torch.equal(bufs[1], ref[1]) and torch.equal(bufs[2], ref[2]) and int(bufs[3]) == int(ref[3])
        ms = ctx.ms(lambda: ops.accumulate_channel_stats_(x, 6.0, mask, *bufs))  # the same work every call
        rows.append(_row(f"channel_stats [{tokens}x{channels}] bf16", ok, ms=ms, max_rel_err=err,
                         **ctx.gbps(tokens * channels * 2 + tokens, ms)))
    return rows


def prune_kernels(ctx: Context) -> list[dict]:
    import os

    from .. import ops

    rows = []
    for r, c in ctx.shapes(LLM + [(8192, 28672)], [(13, 36), (6, 200)]):  # in = 28672: row_prune's multi-pass path
        g = torch.Generator(device="cpu").manual_seed(r + c)
        weight = (torch.randn(r, c, generator=g) * 0.02).to(device=ctx.device, dtype=BF16)
        norm = (torch.rand(c, generator=g, dtype=torch.float64) + 0.5).to(ctx.device)
        elems = r * c
        for label, kw in (("2:4", dict(nm=(2, 4))), ("row 50%", dict(sparsity=0.5))):
            triton_w, torch_w = weight.clone(), weight.clone()
            os.environ["TFPRUNE_BACKEND"] = "torch"
            keep_ref = ops.prune_weight_(torch_w, "wanda", norm=norm, **kw)
            os.environ["TFPRUNE_BACKEND"] = "triton"
            keep = ops.prune_weight_(triton_w, "wanda", norm=norm, **kw)
            ok = torch.equal(keep, keep_ref) and torch.equal(triton_w.view(torch.int16), torch_w.view(torch.int16))
            ms = ctx.ms(lambda: ops.prune_weight_(triton_w, "wanda", norm=norm, **kw))
            rows.append(_row(f"prune_weight_ {label} [{r}x{c}] == torch", ok, ms=ms, mask_diffs=int((keep != keep_ref).sum()),
                             **ctx.gbps(elems * (2 + 1 + 1), ms)))  # read W, write the mask and the pruned half
            del triton_w, torch_w, keep, keep_ref
        os.environ["TFPRUNE_BACKEND"] = "triton"
        got = ops.scores(weight, "wanda", norm=norm)
        ms = ctx.ms(lambda: ops.scores(weight, "wanda", norm=norm))
        os.environ["TFPRUNE_BACKEND"] = "torch"
        ok = torch.equal(got, ops.scores(weight, "wanda", norm=norm))
        rows.append(_row(f"scores [{r}x{c}] == torch bit for bit", ok, ms=ms, **ctx.gbps(elems * (2 + 4), ms)))
        ratio = ops.outlier_ratio([weight], [norm], 5.0)
        os.environ["TFPRUNE_BACKEND"] = "triton"
        got_ratio = ops.outlier_ratio([weight], [norm], 5.0)
        ms = ctx.ms(lambda: ops.outlier_ratio([weight], [norm], 5.0))  # two passes over W (sum, then count)
        rows.append(_row(f"outlier_ratio (OWL) [{r}x{c}] vs torch", abs(got_ratio - ratio) <= 1e-4 * max(ratio, 1e-3),
                         ms=ms, ratio=got_ratio, torch_ratio=ratio, **ctx.gbps(2 * elems * 2, ms)))
        os.environ.pop("TFPRUNE_BACKEND", None)
        del weight, got
    return rows


# ------------------------------------------------------------------------------------------- decode


def _graph_ms(calls) -> float:
    """Device ms per call of `calls` (each on its own weight copy) replayed from one CUDA graph."""
    from triton.testing import do_bench

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    return float(do_bench(graph.replay, warmup=5, rep=40, return_mode="median")) / len(calls)


def _eager_us(ctx: Context, fn, n: int = 200) -> float:
    """Wall microseconds per call of n back-to-back calls: the larger of host overhead and device time."""
    fn()
    ctx.sync()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    ctx.sync()
    return (time.perf_counter() - start) / n * 1e6


def decode(ctx: Context) -> list[dict]:
    """The 2:4 decode kernel vs cuBLAS F.linear at 1..16 tokens: agreement with float64, bitwise
    reproducibility, device time, bandwidth, speedup; CUDA-graph and eager timings at 1 and 16 tokens."""
    from .. import decode24
    from ..kernels.sparse24_decode import sparse24_decode_linear
    from ..sparse import SparseLinear

    rows = []
    for n, k in ctx.shapes(DECODE_LLM, [(64, 128), (96, 256)]):
        w = random_24(n, k, ctx.device)
        packed = decode24.pack(w)
        sparse = SparseLinear.from_linear(_linear_of(w), "cutlass")
        for m in (1, 2, 4, 8, 16):
            x = torch.randn(m, k, device=ctx.device).to(BF16)
            ref = F.linear(x.double(), w.double())
            run = (lambda: sparse24_decode_linear(x, packed.values, packed.codes)) if ctx.dry else \
                (lambda: decode24.linear(x, packed))
            y = run()
            same = all(torch.equal(y.view(torch.int16), run().view(torch.int16)) for _ in range(2))
            err = _rel(y, ref)
            dense_ms, decode_ms = ctx.ms(lambda: F.linear(x, w)), ctx.ms(run)
            row = _row(f"decode [{n}x{k}] M={m}", err < 1e-2 and same, rel_err=err, bitwise_reproducible=same,
                       cublas_ms=dense_ms, decode_ms=decode_ms, speedup=dense_ms / decode_ms,
                       **ctx.gbps(n * k * 2, dense_ms, "cublas_"), **ctx.gbps(packed.nbytes, decode_ms))
            if not ctx.dry and m in (1, 16):
                row.update(_decode_graph_and_eager(ctx, x, w, packed, sparse))
            rows.append(row)
        del w, packed, sparse
    return rows


def _linear_of(weight: torch.Tensor) -> torch.nn.Linear:
    linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    return linear


def _decode_graph_and_eager(ctx, x, w, packed, sparse) -> dict:
    from .. import decode24

    copies = max(1, math.ceil((256 << 20) / packed.nbytes))  # > 4x the L2: every replay streams from HBM
    weights = [w] + [w.clone() for _ in range(copies - 1)]
    packs = [packed] + [decode24.Decode24Weight(packed.values.clone(), packed.codes.clone(), packed.shape)
                        for _ in range(copies - 1)]
    outs = [torch.empty(x.shape[0], w.shape[0], device="cuda", dtype=BF16) for _ in range(copies)]
    graph_dense = _graph_ms([lambda wi=wi: F.linear(x, wi) for wi in weights])
    graph_decode = _graph_ms([lambda pi=pi, oi=oi: decode24.linear(x, pi, out=oi) for pi, oi in zip(packs, outs)])
    return {"graph_cublas_us": graph_dense * 1e3, "graph_decode_us": graph_decode * 1e3,
            "graph_speedup": graph_dense / graph_decode, **ctx.gbps(packed.nbytes, graph_decode, "graph_"),
            "eager_cublas_us": _eager_us(ctx, lambda: F.linear(x, w)),
            "eager_decode_us": _eager_us(ctx, lambda: decode24.linear(x, packed)),
            "eager_sparse_linear_us": _eager_us(ctx, lambda: sparse(x))}


def crossover(ctx: Context) -> list[dict]:
    """`tfprune bench`'s crossover measurement on the decode shapes, stored in the gpu-check's output."""
    from .. import decode_crossover
    from .crossover import measure_crossover
    from .linear import LinearShape

    shapes = [LinearShape("gpu-check", (), n, k) for n, k in ctx.shapes(LLM[:4], [(64, 128)])]
    result = measure_crossover(shapes, BF16, ctx.device, reps=3 if ctx.dry else 30, warmup=1 if ctx.dry else 5)
    stored = None
    if result["max_rows"] is not None:
        stored = decode_crossover.store(ctx.device, result["max_rows"],
                                        {key: result[key] for key in ("against", "dtype", "ratios", "shapes")})
    ctx.extras["crossover"] = result
    return [_row(f"decode crossover (vs {result.get('against')})", None, max_rows=result["max_rows"],
                 ratios=result.get("ratios"), reason=result.get("reason"), stored=None if stored is None else str(stored))]


# ------------------------------------------------------------------------------------------- GEMMs


def sparse_linear(ctx: Context) -> list[dict]:
    """SparseLinear on the backend it picks and on every other GEMM backend that runs here, vs dense."""
    from ..sparse import SparseLinear, backends

    rows = []
    for n, k in ctx.shapes([(4096, 4096), (14336, 4096), (4096, 14336), (28672, 8192)], [(64, 128)]):
        w = random_24(n, k, ctx.device)
        auto = SparseLinear.from_linear(_linear_of(w), "cutlass")
        chosen, reason = auto.gemm_backend()
        paths = [chosen] + [b for b in backends.GEMM_BACKENDS if b != chosen and
                            backends.support(b, (n, k), BF16, ctx.device) is None]
        modules = {path: auto if path == chosen else SparseLinear.from_linear(_linear_of(w), "cutlass", backend=path)
                   for path in paths}
        for tokens in ctx.shapes((128, 2048, 8192), (128,)):
            x = torch.randn(tokens, k, device=ctx.device).to(BF16)
            dense = F.linear(x, w)
            dense_ms = ctx.ms(lambda: F.linear(x, w))
            flop = 2.0 * tokens * n * k
            for path, module in modules.items():
                y = module.forward_on(x, path)
                err = _rel(y, dense)
                ms = ctx.ms(lambda: module.forward_on(x, path))
                rows.append(_row(f"SparseLinear [{n}x{k}] {tokens} tokens: {path}"
                                 + (" (picked)" if path == chosen else " (forced)"), err < 2e-2, rel_err=err,
                                 dense_ms=dense_ms, sparse_ms=ms, speedup=dense_ms / ms, tokens=tokens, path=path,
                                 picked=path == chosen, dense_tflops=flop / dense_ms / 1e9, sparse_tflops=flop / ms / 1e9,
                                 why_dense=reason if path == "dense" else None))
        del w, auto, modules
    return rows


def torch_semi_structured(ctx: Context) -> list[dict]:
    """torch's own to_sparse_semi_structured (cuSPARSELt, and CUTLASS forced) vs dense; whether the
    cuSPARSELt compressed tensor starts with tfprune's values (informational)."""
    if ctx.dry:
        return [_row("torch semi-structured", None, note="needs a GPU (dry run)")]
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    from .. import sparse as tsparse

    rows = []
    for n, k in [(4096, 4096), (14336, 4096)]:
        w = random_24(n, k, ctx.device)
        for name, force in (("cuSPARSELt", False), ("CUTLASS", True)):
            SparseSemiStructuredTensor._FORCE_CUTLASS = force
            try:
                ws = to_sparse_semi_structured(w)
                for tokens in (128, 2048, 8192):
                    x = torch.randn(tokens, k, device="cuda").to(BF16)
                    err = _rel(F.linear(x, ws), F.linear(x, w))
                    dense_ms, ms = ctx.ms(lambda: F.linear(x, w)), ctx.ms(lambda: F.linear(x, ws))
                    rows.append(_row(f"torch {name} [{n}x{k}] {tokens} tokens", None, rel_err=err, dense_ms=dense_ms,
                                     sparse_ms=ms, speedup=dense_ms / ms))
                if not force:
                    values = tsparse.pack(w, "cutlass").values
                    head = ws.packed.reshape(-1)[:n * k // 2].view(n, k // 2)
                    rows.append(_row(f"cuSPARSELt compressed [{n}x{k}] starts with tfprune's values", None,
                                     equal=bool(torch.equal(head.view(torch.int16), values.view(torch.int16)))))
            except Exception as error:  # e.g. CUTLASS on sm_90 (pytorch#132928): recorded, not a tfprune failure
                rows.append(_row(f"torch {name} [{n}x{k}]", None, error=f"{type(error).__name__}: {str(error)[:200]}"))
            finally:
                SparseSemiStructuredTensor._FORCE_CUTLASS = False
        del w
    return rows


# ------------------------------------------------------------------------------------------- packer


def packer(ctx: Context) -> list[dict]:
    from .. import sparse as tsparse
    from .._ext import extension
    from ..sparse.formats import unpack_by_rows

    rows = []
    where = "csrc/sparse24_cuda.cu" if getattr(extension, "WITH_CUDA", False) else "the torch references"
    for r, c in ctx.shapes([(4096, 4096), (28672, 8192)], [(64, 128)]):
        w = random_24(r, c, ctx.device)
        host = w.cpu()
        for fmt in ("cutlass", "bitmask"):
            on_device, on_cpu = tsparse.pack(w, fmt), tsparse.pack(host, fmt)
            same = torch.equal(on_device.values.cpu().view(torch.int16), on_cpu.values.view(torch.int16)) and \
                torch.equal(on_device.meta.cpu(), on_cpu.meta)
            back = torch.equal(tsparse.unpack(on_device).view(torch.int16), w.view(torch.int16)) and \
                torch.equal(unpack_by_rows(on_device).view(torch.int16), w.view(torch.int16))
            ms = ctx.ms(lambda: tsparse.pack(w, fmt))
            rows.append(_row(f"pack('{fmt}') [{r}x{c}] on {ctx.device} ({where}) == CPU packer, unpack", same and back,
                             ms=ms, **ctx.gbps(r * c * 2 + r * c + r * c // 8, ms)))
        del w, host
    return rows


SECTIONS = {
    "device": device_info,
    "copy": copy_bandwidth,
    "decode": decode,
    "crossover": crossover,
    "sparse_linear": sparse_linear,
    "torch_semi_structured": torch_semi_structured,
    "packer": packer,
    "prune_kernels": prune_kernels,
    "channel_stats": channel_stats,
}
