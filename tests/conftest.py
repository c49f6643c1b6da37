import functools

import pytest
import torch

from tfprune.builtin import build_model


@functools.lru_cache(maxsize=None)
def _state(family: str):
    model, tokenizer = build_model(family)
    return model.state_dict(), tokenizer


@pytest.fixture
def tiny_model():
    """Factory: a fresh built-in model of a family (weights cached, so every call starts identical)."""

    def make(family: str = "llama"):
        model, _ = build_model(family)
        return model, _state(family)[1]

    return make


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
