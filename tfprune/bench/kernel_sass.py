"""tfprune's Triton kernels compiled ahead of time for NVIDIA targets, without a GPU, and their machine code read:
registers, spills (stack / local memory), shared memory and the load/store/atomic instructions, per kernel and
target. The compile uses Triton's own toolchain (its ptxas and cuobjdump), specialized as a launch with the
given example arguments would be (pointers 16-byte aligned, integers divisible by 16 marked so, integers equal
to 1 folded), with the GPU plan each launcher picks for an LLM shape.

    python -m tfprune.bench.kernel_sass [--targets 80,90] [--only NAME] [--json]

Run it in a process where triton was imported without TRITON_INTERPRET=1 (the interpreter replaces the
kernels). What it shows is what the compiler made, not how fast it runs: no GPU is needed, none is measured.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

__all__ = ["toolchain_reason", "kernel_cases", "compile_case", "inspect", "inspect_all", "main"]

_OPS = re.compile(r"\b(LDG\.E[A-Z0-9.]*|LDGSTS\.E[A-Z0-9.]*|UBLKCP[A-Z0-9.]*|UTMALDG[A-Z0-9.]*|STG\.E[A-Z0-9.]*|"
                  r"ATOMG?\.[A-Z0-9.]*|RED\.[A-Z0-9.]*|LDL[A-Z0-9.]*|STL[A-Z0-9.]*|HMMA[A-Z0-9.]*|HGMMA[A-Z0-9.]*)")
_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _bin(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def toolchain_reason() -> str | None:
    """None when Triton's NVIDIA backend can compile here without a GPU, else why not."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1: the kernels are interpreted, not compiled"
    try:
        import triton
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except Exception as error:  # ImportError, or a broken install raising anything
        return f"triton cannot be imported ({type(error).__name__}: {error})"
    for tool in ("ptxas", "cuobjdump"):
        if not os.access(_bin(tool), os.X_OK):
            return f"triton {triton.__version__} ships no {tool} (needed to compile and read machine code)"
    return None


def kernel_cases() -> dict[str, dict]:
    """{case name: {kernel, args (pointer dtype strings and example ints), constexprs, num_warps}} with the
    GPU plans the launchers choose for Llama-class shapes."""
    from ..kernels import channel_stats, nm_prune, row_prune, scores, sparse24_decode as decode

    cases = {}
    for n, k in ((4096, 4096), (28672, 8192)):
        p = decode.plan(n, k, 132, False)
        for bitmask in (False, True):
            name = f"sparse24_decode {n}x{k}{' bitmask' if bitmask else ''} (SPLIT={p['SPLIT']})"
            cases[name] = dict(
                kernel=decode._sparse24_decode_kernel,
                args=dict(x_ptr="*bf16", v_ptr="*bf16", c_ptr="*i32", b_ptr="*bf16",
                          out_ptr="*fp32" if p["SPLIT"] > 1 else "*bf16", M=3, N=n, K=k, stride_xm=k, stride_xk=1,
                          stride_vn=k // 2, stride_cn=k // 32, stride_om=n, stride_os=3 * n,
                          steps_per_split=p["steps_per_split"]),
                constexprs=dict(BITMASK=bitmask, CODE_WORDS=True, HAS_BIAS=False, PARTIAL=p["SPLIT"] > 1, DOT_FP32=False,
                                BLOCK_M=decode.MAX_ROWS, BLOCK_N=p["BLOCK_N"], BLOCK_K=p["BLOCK_K"],
                                NUM_STAGES=p["NUM_STAGES"]),
                num_warps=p["num_warps"], num_stages=p["NUM_STAGES"])
    cases["split_k_reduce"] = dict(
        kernel=decode._split_k_reduce_kernel,
        args=dict(p_ptr="*fp32", b_ptr="*bf16", y_ptr="*bf16", M=3, N=4096, SPLIT=4, stride_ps=3 * 4096,
                  stride_pm=4096, stride_ym=4096),
        constexprs=dict(HAS_BIAS=True, BLOCK_M=decode.MAX_ROWS, BLOCK_N=64), num_warps=4, num_stages=3)
    t = nm_prune.plan(4096, 4096, 4, "bool", interpreted=False)
    cases["nm_prune 2:4 4096x4096"] = dict(
        kernel=nm_prune._nm_prune_kernel,
        args=dict(w_ptr="*bf16", s_ptr="*bf16", f_ptr="*fp32", p_ptr="*u8", mask_ptr="*u8", psum_ptr="*fp32",
                  pcnt_ptr="*i32", R=4096, C=4096, stride_wr=4096, stride_wc=1, stride_sr=4096, stride_sc=1,
                  stride_mr=4096, n_bytes=512, threshold="fp32"),
        constexprs=dict(N=2, M=4, FROM_SCORES=False, HAS_FACTOR=True, HAS_PROTECT=False, APPLY=True, MASK_MODE=1,
                        COUNT=False, SPAN=t["SPAN"], BLOCK_R=t["BLOCK_R"], BLOCK_C=t["BLOCK_C"]),
        num_warps=4, num_stages=3)
    r = row_prune.plan(4096, 4096, interpreted=False)
    cases["row_prune 50% 4096x4096"] = dict(
        kernel=row_prune._row_prune_kernel,
        args=dict(w_ptr="*bf16", s_ptr="*bf16", f_ptr="*fp32", p_ptr="*u8", mask_ptr="*u8", psum_ptr="*fp32",
                  pcnt_ptr="*i32", R=4096, C=4096, K=2048, stride_wr=4096, stride_wc=1, stride_sr=4096, stride_sc=1,
                  stride_mr=4096, n_bytes=512, threshold="fp32"),
        constexprs=dict(FROM_SCORES=False, HAS_FACTOR=True, HAS_PROTECT=False, APPLY=True, MASK_MODE=1, COUNT=False,
                        SINGLE=r["SINGLE"], BLOCK_R=r["BLOCK_R"], BLOCK_C=r["BLOCK_C"]),
        num_warps=r["num_warps"], num_stages=3)
    c = channel_stats.plan(2048, 4096, interpreted=False)
    cases["channel_stats 2048x4096"] = dict(
        kernel=channel_stats._channel_stats_kernel,
        args=dict(x_ptr="*bf16", tmask_ptr="*u8", psum_ptr="*fp32", pmax_ptr="*fp32", pcnt_ptr="*i32",
                  sumsq_ptr="*fp64", maxabs_ptr="*fp32", count_ptr="*i64", T=2048, C=4096, stride_t=4096,
                  stride_c=1, tau="fp32", tokens_per_split=c["tokens_per_split"]),
        constexprs=dict(HAS_MASK=True, DIRECT=c["splits"] == 1, BLOCK_T=c["BLOCK_T"], BLOCK_C=c["BLOCK_C"]),
        num_warps=4, num_stages=3)
    rows, cols = 4096, 4096
    cases["scores 4096x4096"] = dict(
        kernel=scores._scores_kernel,
        args=dict(w_ptr="*bf16", f_ptr="*fp32", p_ptr="*u8", out_ptr="*fp32", R=rows, C=cols, stride_wr=cols,
                  stride_wc=1),
        constexprs=dict(HAS_FACTOR=True, HAS_PROTECT=False, **dict(zip(("BLOCK_R", "BLOCK_C"),
                                                                       scores._blocks(rows, cols, False)))),
        num_warps=4, num_stages=3)
    return cases


def compile_case(case: dict, capability: int):
    """The CompiledKernel of one case for sm_<capability> (e.g. 80, 90)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = case["kernel"]
    signature, attrs, constexprs = {}, {}, dict(case["constexprs"])
    for index, name in enumerate(fn.arg_names):
        if fn.params[index].is_constexpr:
            signature[name] = "constexpr"
            continue
        value = case["args"][name]
        if isinstance(value, str):  # a pointer ("*bf16": 16-byte aligned) or a float ("fp32")
            signature[name] = value
            if value.startswith("*"):
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif value == 1:  # Triton folds integer arguments equal to 1
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32" if abs(value) < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    keyed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}  # Triton 3.x keys
    source = ASTSource(fn, signature, constexprs=keyed, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", capability, 32),
                          options=dict(num_warps=case["num_warps"], num_stages=case["num_stages"]))


def inspect(compiled) -> dict:
    """{registers, stack, local, shared (static + Triton's dynamic), ops: {SASS opcode: count}}."""
    with tempfile.TemporaryDirectory() as folder:
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        usage = subprocess.run([_bin("cuobjdump"), "--dump-resource-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
        sass = subprocess.run([_bin("cuobjdump"), "-sass", cubin], capture_output=True, text=True, check=True).stdout
    registers, stack, shared, local = (int(v) for v in _USAGE.search(usage).groups())
    return dict(registers=registers, stack=stack, local=local, shared=shared + int(compiled.metadata.shared),
                ops=dict(sorted(collections.Counter(_OPS.findall(sass)).items())))


def inspect_all(targets=(80, 90), only: str | None = None) -> dict[str, dict[str, dict]]:
    """{case: {"sm_80": inspect(...), ...}} for every case of kernel_cases() (whose name contains `only`)."""
    return {name: {f"sm_{target}": inspect(compile_case(case, target)) for target in targets}
            for name, case in kernel_cases().items() if only is None or only in name}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="80,90", help="compute capabilities, e.g. 80,90")
    parser.add_argument("--only", default=None, help="the cases whose name contains this")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    reason = toolchain_reason()
    if reason is not None:
        print(f"kernel_sass: {reason}", file=sys.stderr)
        return 2
    report = inspect_all(tuple(int(t) for t in args.targets.split(",")), args.only)
    if args.json:
        print(json.dumps(report))
        return 0
    for name, per_target in report.items():
        for target, info in per_target.items():
            ops = ", ".join(f"{op}×{count}" for op, count in info["ops"].items())
            print(f"{name:<44} {target}: {info['registers']:3d} regs, stack {info['stack']}, local {info['local']}, "
                  f"shared {info['shared']} B | {ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
