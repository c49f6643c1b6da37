"""`tfprune bench` output: the terminal table, the JSON record and the PNG plot (speedup vs tokens per shape)."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["format_table", "write_json", "plot", "write_outputs"]


def _ms(part) -> str:
    return f"{part['median_ms']:10.3f}" if part else f"{'-':>10}"


def format_table(record: dict) -> str:
    """Linear rows (median ms dense / 2:4, speedup, TFLOP/s), the GPU rows this machine could not measure
    (one line), then the end-to-end rows (tokens/s)."""
    lines = []
    machine = record["machine"]
    gpu = (machine.get("gpu") or {}).get("name", "no CUDA device")
    lines.append(f"tfprune bench: torch {record['versions']['torch']}, triton {record['versions']['triton']}, "
                 f"{machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
                 f"{machine['torch_threads']} threads, {gpu}; sparse: "
                 + ("available (" + record["sparse"]["format"] + ")" if record["sparse"]["available"]
                    else "not available - " + str(record["sparse"]["reason"])))
    crossover = record.get("crossover")
    if crossover:
        if crossover.get("max_rows") is None:
            lines.append(f"decode crossover: not measured ({crossover.get('reason')})")
        else:
            ratios = ", ".join(f"M={m}: {r:.2f}x" for m, r in crossover["ratios"].items())
            lines.append(f"decode crossover on {crossover['device']}: the decode kernel up to M={crossover['max_rows']} "
                         f"tokens (vs {crossover['against']}; {ratios})"
                         + (f"; stored in {crossover['stored']}" if crossover.get("stored") else "; not stored"))
    measured = [row for row in record["linear"] if row["status"] == "measured"]
    if measured:
        header = (f"{'device':<6} {'dtype':<8} {'model':<14} {'layers':<28} {'out x in':>12} {'tokens':>6} "
                  f"{'dense ms':>10} {'2:4 ms':>10} {'speedup':>8} {'dense TF/s':>10}")
        lines += ["", header, "-" * len(header)]
        for row in measured:
            speed = f"{row['speedup']:8.2f}" if row["speedup"] else f"{'n/a':>8}"
            layers = "/".join(name.rsplit(".", 1)[-1] for name in row["layers"]) or "-"
            lines.append(f"{row['device']:<6} {row['dtype']:<8} {row['model'][-14:]:<14} {layers[:28]:<28} "
                         f"{row['out_features']:>6}x{row['in_features']:<5} {row['tokens']:>6} "
                         f"{_ms(row['dense'])} {_ms(row['sparse'])} {speed} {row['dense']['tflops']:10.4f}")
        paths = sorted({row["sparse_path"] for row in measured if row.get("sparse_path")})
        if paths:
            lines.append(f"2:4 paths taken: {'; '.join(paths)}")
        missing = {row["sparse_reason"] for row in measured if row["sparse_status"] != "measured"}
        for reason in sorted(missing, key=str):
            lines.append(f"2:4 not measured: {reason}")
    skipped = [row for row in record["linear"] + record["e2e"] if row["status"] != "measured"]
    if skipped:
        devices = sorted({f"{row['device']}/{row['dtype']}" for row in skipped})
        lines.append(f"GPU rows not measured ({len(skipped)} cases, {', '.join(devices)}): {skipped[0]['reason']}")
    e2e = [row for row in record["e2e"] if row["status"] == "measured"]
    if e2e:
        header = (f"{'device':<6} {'dtype':<8} {'model':<24} {'phase':<8} {'tokens':>6} {'dense tok/s':>12} "
                  f"{'2:4 tok/s':>12} {'speedup':>8}")
        lines += ["", header, "-" * len(header)]
        for row in e2e:
            sparse = f"{row['sparse']['tokens_per_s']:12.1f}" if row["sparse"] else f"{'n/a':>12}"
            speed = f"{row['speedup']:8.2f}" if row["speedup"] else f"{'n/a':>8}"
            model = f"{row['model']} h{row['hidden']}x{row['layers']}"
            lines.append(f"{row['device']:<6} {row['dtype']:<8} {model[:24]:<24} {row['phase']:<8} {row['tokens']:>6} "
                         f"{row['dense']['tokens_per_s']:12.1f} {sparse} {speed}")
    return "\n".join(lines)


def write_json(record: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return path


def plot(record: dict, path: str | Path) -> Path:
    """Left: 2:4 speedup vs tokens, one line per shape and dtype (dense ms when no 2:4 was measured);
    right: end-to-end tokens/s, dense vs 2:4, prefill and decode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    measured = [row for row in record["linear"] if row["status"] == "measured"]
    series: dict[str, list[tuple[int, float]]] = {}
    speedups = any(row["speedup"] for row in measured)
    for row in measured:
        value = row["speedup"] if speedups else row["dense"]["median_ms"]
        if value:
            series.setdefault(f"{row['device']} {row['dtype']} {row['shape']}", []).append((row["tokens"], value))
    for label, points in series.items():
        points.sort()
        left.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    left.set_xscale("log", base=2)
    left.set_xlabel("tokens")
    if speedups:
        left.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        left.set_ylabel("speedup (dense ms / 2:4 ms)")
        left.set_title("2:4 linear layers vs dense")
    else:
        left.set_yscale("log")
        left.set_ylabel("dense median ms")
        left.set_title("dense linear layers (2:4 not measured)")
    if series:
        left.legend(fontsize=6)
    else:
        left.text(0.5, 0.5, "no linear case measured", ha="center", transform=left.transAxes)
    e2e = [row for row in record["e2e"] if row["status"] == "measured"]
    labels = [f"{row['phase']}\n{row['dtype']}" for row in e2e]
    xs = range(len(e2e))
    right.bar([x - 0.2 for x in xs], [row["dense"]["tokens_per_s"] for row in e2e], width=0.4, label="dense")
    right.bar([x + 0.2 for x in xs], [row["sparse"]["tokens_per_s"] if row["sparse"] else 0 for row in e2e],
              width=0.4, label="2:4")
    right.set_xticks(list(xs), labels)
    right.set_ylabel("tokens/s")
    right.set_yscale("log")
    right.set_title("end to end" + (f" ({e2e[0]['model']}, {e2e[0]['device']})" if e2e else ": not run"))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(record: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """bench.json and bench.png in out_dir."""
    out_dir = Path(out_dir)
    return write_json(record, out_dir / "bench.json"), plot(record, out_dir / "bench.png")
