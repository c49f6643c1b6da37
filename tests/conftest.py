import pytest
import torch

from kernel_testing import import_triton_for_cpu

import_triton_for_cpu()  # before anything imports transformers (which imports triton): see kernel_testing

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
