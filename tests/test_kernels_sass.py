"""The decode kernel as the compiler makes it for sm_80 and sm_90 (Triton's ptxas, no GPU needed; the GPU plans
of LLM shapes): no register spills, 16-byte asynchronous copies of the weight (no 1-2-byte loads), tensor-core
MMAs and no atomics (the split-K reduction is ordered). Compiled in a subprocess: the test process imports
triton in interpreter mode."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def decode_sass():
    pytest.importorskip("triton")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    check = "from tfprune.bench.kernel_sass import toolchain_reason as r; print(r() or '')"
    reason = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=120)
    if reason.returncode or reason.stdout.strip():
        pytest.skip(f"cannot compile Triton kernels for NVIDIA targets here: {reason.stdout.strip() or reason.stderr[-300:]}")
    result = subprocess.run([sys.executable, "-m", "tfprune.bench.kernel_sass", "--json", "--only", "sparse24_decode"],
                            capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_decode_kernel_cases_compiled(decode_sass):
    assert len(decode_sass) == 4 and all(set(per) == {"sm_80", "sm_90"} for per in decode_sass.values())
    assert any("SPLIT=1" in name for name in decode_sass) and any("SPLIT=3" in name for name in decode_sass)


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_decode_kernel_machine_code(decode_sass, target):
    for name, per_target in decode_sass.items():
        info = per_target[target]
        ops = info["ops"]
        assert info["stack"] == 0 and info["local"] == 0, (name, target, info)  # no spills
        assert info["registers"] <= 128, (name, target, info)  # 2 programs of 8 warps per SM
        assert info["shared"] <= 96 * 1024, (name, target, info)  # 2 programs fit an A100's 164 KB
        assert ops.get("LDGSTS.E.BYPASS.128", 0) >= 12, (name, target, ops)  # values and x: 16-byte async copies
        assert not any(op.startswith(("LDG.E.U16", "LDG.E.U8", "LDG.E.S16")) for op in ops), (name, target, ops)
        assert not any(op.startswith(("ATOM", "RED")) for op in ops), (name, target, ops)  # deterministic
        assert any(op.startswith("HMMA") for op in ops), (name, target, ops)
