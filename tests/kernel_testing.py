"""Set-up shared by tests/test_kernels_*.py: the Triton kernels on a GPU when there is one, else on CPU
tensors under Triton's interpreter.

TRITON_INTERPRET must be set when the kernels are *decorated* (import time). `load_kernels` sets it only
for that import and restores the environment, so other test modules never see it; the `interpreter`
fixture sets it again (monkeypatch) for the duration of each kernel test, where tfprune.ops checks it.
"""
from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FAMILIES = ("_common", "scores", "nm_prune", "row_prune", "channel_stats")  # import order: dependencies first


def import_triton_for_cpu() -> None:
    """Without a GPU, import triton (if installed) with TRITON_INTERPRET=1, then restore the environment.

    Triton decorates its own language functions at its first import, and transformers imports triton, so
    tests/conftest.py calls this before any test module is collected. Nothing runs Triton on CPU tensors
    outside the kernel tests, so the other tests only see an idle module."""
    if DEVICE != "cpu" or "triton" in sys.modules:
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def load_kernels():
    """Import (or re-import in the right mode) tfprune.kernels' families; returns them as a dict.

    Triton's own language functions are decorated when triton is first imported, so on CPU this must
    happen before anything else imports triton; if something did, the kernel tests are skipped (run
    them in a process of their own)."""
    previous = os.environ.get("TRITON_INTERPRET")
    if DEVICE == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        if DEVICE == "cpu":
            from triton.language import standard
            from triton.runtime.interpreter import InterpretedFunction

            if not isinstance(standard.zeros, InterpretedFunction):
                pytest.skip("triton was imported without TRITON_INTERPRET=1 before the kernel tests were collected",
                            allow_module_level=True)
        modules = {name: importlib.import_module(f"tfprune.kernels.{name}") for name in FAMILIES}
        if DEVICE == "cpu" and not modules["_common"].INTERPRETED:  # imported earlier without the interpreter
            modules = {name: importlib.reload(sys.modules[f"tfprune.kernels.{name}"]) for name in FAMILIES}
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return modules


@pytest.fixture(autouse=True)
def interpreter(monkeypatch):
    """TRITON_INTERPRET=1 during a kernel test on a machine without a GPU."""
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def equal_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise-style equality where NaN == NaN (dtype and shape must agree)."""
    return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a.isnan(), b.isnan())) and \
        bool(torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
