"""`make gpu-check`'s measurement program: every section of tfprune.bench.gpu_measure (and the end-to-end run
and the decode kernel's machine code) within a time budget, written as one JSON record and one markdown report
that benchmarks/README.md can take as it is.

    python -m tfprune.bench.gpu_check --out DIR [--budget SECONDS] [--phases DIR/phases.tsv] [--dry-run]

--dry-run: no GPU; tiny shapes on the CPU with the Triton kernels interpreted (it sets TRITON_INTERPRET=1
before triton is imported), so the program cannot rot; its numbers are not GPU numbers and say so.
Exit status: 0 when every correctness check passed (speed goals are reported, never failed), 1 otherwise,
2 when no GPU is visible outside a dry run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

__all__ = ["run", "goals", "markdown", "main"]

# Section order: the most telling first, so a budget cut drops the least.
ORDER = ("device", "copy", "decode", "sparse_linear", "crossover", "e2e", "torch_semi_structured", "packer",
         "prune_kernels", "channel_stats", "compiled")
TITLES = {
    "device": "Device and software", "copy": "Device copy bandwidth (the ceiling)",
    "decode": "2:4 decode kernel vs cuBLAS F.linear (bf16)", "crossover": "Decode crossover (stored per device)",
    "sparse_linear": "SparseLinear vs dense (bf16)", "e2e": "End to end: Llama-3-8B-class layers, dense vs 2:4",
    "torch_semi_structured": "torch's to_sparse_semi_structured vs dense", "packer": "2:4 packer on the device vs CPU",
    "prune_kernels": "Prune kernels (Triton vs torch)", "channel_stats": "Channel statistics (Triton vs float64)",
    "compiled": "Decode kernel machine code (Triton, this device's target)",
}


def _compiled(ctx) -> list[dict]:
    from .gpu_measure import _row
    from .kernel_sass import inspect_all, toolchain_reason

    reason = toolchain_reason()
    if reason is not None or ctx.dry:
        return [_row("decode kernel machine code", None, note=reason or "compiled in tests/test_kernels_sass.py (dry run)")]
    import torch

    major, minor = torch.cuda.get_device_capability()
    report = inspect_all(targets=(10 * major + minor,), only="sparse24_decode")
    return [_row(f"{name} {target}", info["stack"] == 0 and info["local"] == 0, registers=info["registers"],
                 stack=info["stack"], shared=info["shared"], ops=info["ops"])
            for name, per in report.items() for target, info in per.items()]


def _sections() -> dict:
    from .gpu_e2e import e2e
    from .gpu_measure import SECTIONS

    return dict(SECTIONS, e2e=e2e, compiled=_compiled)


def run(out: Path, dry: bool, budget_s: float, phases: list[dict] | None = None) -> dict:
    """Run the sections in ORDER until `budget_s` is spent; return the record, written to out/ after every
    section (a run killed by a timeout still leaves what it measured)."""
    import torch

    from .gpu_measure import Context
    from .timing import machine_info

    device = "cpu" if dry else "cuda"
    ctx = Context(device=device, dry=dry, crossover_file=os.environ.get("TFPRUNE_DECODE_CROSSOVER"))
    record = {"tool": "tfprune gpu-check", "schema": 1, "dry_run": dry,
              "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine_info(), "phases": phases or [], "sections": {}, "failures": [], "goals": [],
              "crossover_file": ctx.crossover_file}
    sections, functions, start = record["sections"], _sections(), time.perf_counter()
    for name in ORDER:
        if time.perf_counter() - start > budget_s:
            sections[name] = {"status": "skipped", "reason": f"time budget of {budget_s:.0f} s spent", "rows": []}
            continue
        begin = time.perf_counter()
        print(f"== {TITLES[name]}", flush=True)
        try:
            rows = functions[name](ctx)
            sections[name] = {"status": "FAIL" if any(row["status"] == "FAIL" for row in rows) else "ok", "rows": rows}
        except Exception as error:  # one broken path must not hide the others: recorded as a failure
            traceback.print_exc(limit=4)
            sections[name] = {"status": "FAIL", "rows": [], "error": f"{type(error).__name__}: {str(error)[:400]}"}
        finally:
            os.environ.pop("TFPRUNE_BACKEND", None)
            if device == "cuda":
                torch.cuda.empty_cache()
        sections[name]["seconds"] = time.perf_counter() - begin
        for row in sections[name]["rows"]:
            print(f"   {row['status']:<4} {row['case']}", flush=True)
        print(f"   ({sections[name]['seconds']:.1f} s) {sections[name].get('error', '')}", flush=True)
        _write(out, record, dry)
    return _write(out, record, dry)


def _write(out: Path, record: dict, dry: bool) -> dict:
    sections = record["sections"]
    record["failures"] = [f"{name}: {row['case']}" for name, section in sections.items() for row in section["rows"]
                          if row["status"] == "FAIL"] + [f"{name}: {s['error']}" for name, s in sections.items()
                                                          if s.get("error")]
    record["goals"] = goals(sections, dry)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu-check.json").write_text(json.dumps(record, indent=1, default=str))
    (out / "gpu-check.md").write_text(markdown(record))
    return record


def goals(sections: dict, dry: bool) -> list[dict]:
    """The issue's speed goals (benchmarks, not tests) against what was measured: met / not met / not measured."""
    def rows(name):
        return sections.get(name, {}).get("rows", [])

    def verdict(values, target):
        if dry or not values:
            return {"measured": None, "met": None}
        return {"measured": min(values), "met": min(values) >= target}

    streaming = rows("decode") + rows("channel_stats") + [r for r in rows("prune_kernels")  # no bisection, no OWL
                                                          if "row 50%" not in r["case"] and "outlier" not in r["case"]]
    memory_bound = [r["copy_fraction"] for r in streaming if r.get("copy_fraction") is not None]
    decode_1 = [r["speedup"] for r in rows("decode") if r["case"].endswith("M=1") and
                any(s in r["case"] for s in ("[11008x4096]", "[4096x11008]", "[14336x4096]", "[4096x14336]"))]
    prefill = [r["speedup"] for r in rows("sparse_linear") if r.get("picked") and r.get("tokens", 0) >= 2048
               and r.get("path") != "dense"]
    return [dict(goal="memory-bound kernels (decode, N:M prune, scores, statistics) >= 80% of the copy bandwidth (min)",
                 target=0.8,
                 **verdict(memory_bound, 0.8)),
            dict(goal="2:4 decode >= 1.5x cuBLAS bf16 at 1 token, 4096x11008-class (min)", target=1.5,
                 **verdict(decode_1, 1.5)),
            dict(goal="2:4 prefill (SparseLinear's pick) >= 1.1x dense at 2048+ tokens (min)", target=1.1,
                 **verdict(prefill, 1.1))]


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "/")


def _table(rows: list[dict]) -> list[str]:
    keys = []
    for row in rows:
        for key in row:
            if key not in keys and key not in ("case", "status"):
                keys.append(key)
    lines = ["| case | status | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for row in rows:
        cells = [row["case"], row["status"]] + [_fmt(row.get(key)) for key in keys]
        lines.append("| " + " | ".join(_fmt(c) if not isinstance(c, str) else c.replace("|", "/") for c in cells) + " |")
    return lines


def markdown(record: dict) -> str:
    """The report: goals, set-up phases, then one table per section (bandwidth in GB/s, times in ms/us)."""
    machine = record["machine"]
    gpu = (machine.get("gpu") or {}).get("name", "no GPU")
    head = f"## GPU check: {gpu}, {record['datetime']}"
    lines = [head + (" (CPU DRY RUN: kernels interpreted; no number here is a GPU number)" if record["dry_run"] else ""),
             "", "`make gpu-check` (scripts/gpu_check.sh, tfprune/bench/gpu_check.py). gbps: bytes the kernel must "
             "move / device time; copy_fraction: that / the measured device copy.", ""]
    lines += ["| goal | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {_fmt(g['measured'])} | {_fmt(g['met'])} |" for g in record["goals"]]
    if record["phases"]:
        lines += ["", "| phase | status | seconds | detail |", "|---|---|---|---|"]
        lines += [f"| {p['name']} | {p['status']} | {p['seconds']} | {p['detail']} |" for p in record["phases"]]
    for name in ORDER:
        section = record["sections"].get(name)
        if section is None:
            continue
        lines += ["", f"### {TITLES[name]}: {section['status']}" + (f" ({section['seconds']:.1f} s)" if "seconds" in section
                                                                     else ""), ""]
        if section.get("error") or section.get("reason"):
            lines.append(f"{section.get('error') or section.get('reason')}")
            lines.append("")
        if section["rows"]:
            lines += _table(section["rows"])
    if record["failures"]:
        lines += ["", "### Failures", ""] + [f"- {f}" for f in record["failures"]]
    return "\n".join(lines) + "\n"


def _read_phases(path: str | None) -> list[dict]:
    if not path or not Path(path).is_file():
        return []
    phases = []
    for line in Path(path).read_text().splitlines():
        name, status, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
        phases.append({"name": name, "status": status, "seconds": seconds, "detail": detail})
    return phases


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-check-out", help="folder for gpu-check.json and gpu-check.md")
    parser.add_argument("--budget", type=float, default=240.0, help="seconds for the measurements (sections after "
                                                                    "it is spent are skipped, and say so)")
    parser.add_argument("--phases", default=None, help="a TSV of set-up phases (name, status, seconds, detail)")
    parser.add_argument("--dry-run", action="store_true", help="no GPU: tiny shapes, kernels interpreted")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton's first import
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    out = Path(args.out)
    os.environ.setdefault("TFPRUNE_DECODE_CROSSOVER", str(out / "decode-crossover.json"))
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu-check: torch sees no CUDA device (use --dry-run on a machine without one)", file=sys.stderr)
        return 2
    record = run(out, args.dry_run, args.budget, _read_phases(args.phases))
    print(f"\nwrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}")
    for goal in record["goals"]:
        print(f"goal: {goal['goal']}: measured {_fmt(goal['measured'])}, met {_fmt(goal['met'])}")
    if record["failures"]:
        print(f"{len(record['failures'])} check(s) FAILED:\n  " + "\n  ".join(record["failures"]))
        return 1
    print("every check passed" + (" (dry run: no GPU number was measured)" if args.dry_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
