"""`make gpu-check` cannot rot: its CPU dry run (scripts/gpu_check.sh --dry-run: the measurement program on tiny
shapes, Triton kernels interpreted) passes every check and writes its JSON and markdown; the goals are judged
from measured numbers only; the Makefile target needs no venv and no pip; tfprune.kernels imports from a plain
checkout (how the GPU machine runs it)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tfprune.bench.gpu_check import ORDER, goals, markdown

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_of_the_whole_script(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in ("TRITON_INTERPRET", "TFPRUNE_BACKEND")}
    env.update(PYTHON=sys.executable, OUT=str(tmp_path / "out"), OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"phases.tsv", "measure.log", "gpu-check.json", "gpu-check.md",
                                               "decode-crossover.json"}
    record = json.loads((out / "gpu-check.json").read_text())
    assert record["dry_run"] is True and record["failures"] == [] and list(record["sections"]) == list(ORDER)
    assert all(section["status"] == "ok" for section in record["sections"].values()), record["sections"]
    decode = record["sections"]["decode"]["rows"]
    assert len(decode) == 10 and all(row["bitwise_reproducible"] and row["rel_err"] < 1e-2 for row in decode)
    assert all(goal["measured"] is None and goal["met"] is None for goal in record["goals"])  # no GPU: not measured
    assert record["phases"][0]["name"] == "machine" and "dry run: no GPU" in record["phases"][0]["detail"]
    report = (out / "gpu-check.md").read_text()
    assert "CPU DRY RUN" in report and "| goal | target | measured | met |" in report
    assert "### 2:4 decode kernel vs cuBLAS F.linear (bf16): ok" in report
    stored = json.loads((out / "decode-crossover.json").read_text())
    assert stored["schema"] == 1 and len(stored["devices"]) == 1


def _rows(**sections):
    return {name: {"status": "ok", "rows": [dict(row, status="ok") for row in rows]} for name, rows in sections.items()}


def test_goals_are_judged_from_measured_numbers():
    sections = _rows(
        decode=[{"case": "decode [11008x4096] M=1", "speedup": 1.6, "copy_fraction": 0.85},
                {"case": "decode [4096x11008] M=1", "speedup": 1.4, "copy_fraction": 0.9},
                {"case": "decode [4096x4096] M=1", "speedup": 1.0, "copy_fraction": 0.82}],
        prune_kernels=[{"case": "prune_weight_ row 50% [4096x4096] == torch", "copy_fraction": 0.1},
                       {"case": "scores [4096x4096] == torch bit for bit", "copy_fraction": 0.81}],
        sparse_linear=[{"case": "a", "picked": True, "tokens": 2048, "path": "cusparselt", "speedup": 1.2},
                       {"case": "b", "picked": True, "tokens": 128, "path": "cusparselt", "speedup": 0.5},
                       {"case": "c", "picked": False, "tokens": 8192, "path": "cutlass", "speedup": 0.9}])
    bandwidth, decode, prefill = goals(sections, dry=False)
    assert bandwidth["measured"] == 0.81 and bandwidth["met"]  # the bisection select is not a streaming kernel
    assert decode["measured"] == 1.4 and decode["met"] is False  # 4096x4096 is not a 4096x11008-class shape
    assert prefill["measured"] == 1.2 and prefill["met"]  # only what SparseLinear picks, at 2048+ tokens
    assert all(goal["met"] is None for goal in goals(sections, dry=True))
    assert all(goal["measured"] is None for goal in goals({}, dry=False))
    record = {"machine": {"gpu": {"name": "NVIDIA H200"}}, "datetime": "now", "dry_run": False, "phases": [],
              "sections": sections, "failures": [], "goals": goals(sections, dry=False)}
    text = markdown(record)
    assert text.startswith("## GPU check: NVIDIA H200") and "| decode [4096x11008] M=1 | ok | 1.4 | 0.9 |" in text


@pytest.mark.skipif(shutil.which("make") is None, reason="make not on PATH")
def test_make_target_needs_no_venv_and_no_pip():
    # run from `make test` too: the parent make's variables would make this one print "Entering directory"
    env = {key: value for key, value in os.environ.items() if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", "gpu-check", "PYTHON=python3", "OUT=/tmp/x"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OUT=/tmp/x PYTHON=python3 bash scripts/gpu_check.sh"
    commands = [line.split("#")[0] for line in (ROOT / "scripts" / "gpu_check.sh").read_text().splitlines()]
    assert not any(re.search(r"\bpip\b|\.venv|make install", line) for line in commands)


def test_kernels_import_from_a_plain_checkout(tmp_path):
    """Without the installed package's mapping (python -S: no .pth, no editable finder), tfprune.kernels is
    the checkout's kernels/ folder."""
    import torch

    site = str(Path(torch.__file__).resolve().parents[1])
    code = (f"import sys; sys.path[:0] = [{str(ROOT)!r}]; sys.path.append({site!r}); import importlib.util;"
            "import tfprune, tfprune.kernels; print(tfprune.kernels.__path__[0]);"
            "print(importlib.util.find_spec('tfprune.kernels.sparse24_decode').origin)")
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-2000:]
    folder, origin = result.stdout.split()[-2:]
    assert Path(folder) == ROOT / "kernels" and Path(origin) == ROOT / "kernels" / "sparse24_decode.py"


def test_the_checkout_does_not_shadow_the_installed_kernels_package():
    """transformers >= 5.25 imports Hugging Face's `kernels` package as it loads; run from the checkout's root
    (`python -m pytest`, `python -c`), the top-level kernels/ folder must hand that import over to the installed
    package (or fail as a missing module when none is), while tfprune.kernels stays the checkout's."""
    import importlib.metadata

    code = ("import sys\ntry:\n    import kernels\n    print(kernels.__file__)\nexcept ModuleNotFoundError as e:\n"
            "    print('missing', e.name)\nimport tfprune.kernels, transformers.activations\n"
            "print(tfprune.kernels.__file__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    hub, ours = result.stdout.split("\n")[:2]
    assert Path(ours) == ROOT / "kernels" / "__init__.py"
    try:
        installed = importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        assert hub == "missing kernels"
    else:
        assert Path(hub) == Path(installed.locate_file("kernels/__init__.py")).resolve(), hub
