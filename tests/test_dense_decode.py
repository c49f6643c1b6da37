"""The dense decode kernel (csrc/dense_decode_cpu.cpp) against float64 torch, and DenseDecodeLinear / decode_head_
/ from_pretrained's decode_head: same Parameters (ties kept), the kernel only where it applies, the model's
logits and greedy generation unchanged."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tfprune._ext import extension
from tfprune.sparse import DenseDecodeLinear, decode_head_, from_pretrained, save_compressed_tensors
from tfprune.sparse.dense_decode import MAX_ROWS, kernel_available

from vocab_testing import spm_tokenizer, tiny_gemma

needs_kernel = pytest.mark.skipif(not kernel_available(), reason="no tfprune._C or no AVX512_BF16 on this CPU")


def float64_linear(x, w, bias=None):
    y = x.double() @ w.double().T
    return y if bias is None else y + bias.double()


@needs_kernel
@pytest.mark.parametrize("n,k", [(1, 1), (7, 33), (9, 64), (13, 95), (250, 640), (40, 1030)])
def test_kernel_matches_float64(n, k):
    """Odd N (blocks of 8 and a tail), K past and below the 32-column steps, M = 1..16, with and without bias:
    fp32 accumulation of bf16 products, so the error is bounded by a few fp32 ulps of sum |x||w|."""
    g = torch.Generator().manual_seed(n * 1000 + k)
    w = torch.randn(n, k, generator=g).to(torch.bfloat16)
    bias = torch.randn(n, generator=g)
    for m in range(1, MAX_ROWS + 1):
        x = torch.randn(m, k, generator=g).to(torch.bfloat16)
        b = bias if m % 2 else None
        y = extension.dense_decode_linear(x, w, b, torch.float32)
        ref = float64_linear(x, w, b)
        scale = float64_linear(x.abs(), w.abs()).max() + (0 if b is None else b.abs().max())
        assert y.shape == (m, n) and y.dtype == torch.float32
        assert float((y.double() - ref).abs().max()) <= 1e-5 * float(scale), (m, n, k)
        y16 = extension.dense_decode_linear(x, w, b, None)
        assert y16.dtype == torch.bfloat16 and torch.equal(y16, y.to(torch.bfloat16))


@needs_kernel
def test_kernel_nan_inf_ties_and_zero_rows():
    """NaN and Inf propagate as in torch (a NaN in x spoils its row of y, an Inf weight its column); equal
    weights give equal outputs; M = 0 gives an empty result."""
    w = torch.randn(17, 70).to(torch.bfloat16)
    w[3] = w[4]  # ties
    w[5, 10] = float("inf")
    x = torch.randn(3, 70).to(torch.bfloat16)
    x[1, 0] = float("nan")
    y = extension.dense_decode_linear(x, w, None, torch.float32)
    ref = float64_linear(x, w)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)) and torch.equal(torch.isinf(y), torch.isinf(ref))
    assert torch.allclose(y[:, 3], y[:, 4], rtol=0, atol=0, equal_nan=True)
    assert extension.dense_decode_linear(torch.empty(0, 70, dtype=torch.bfloat16), w, None, None).shape == (0, 17)


@needs_kernel
def test_kernel_errors():
    w = torch.randn(8, 32).to(torch.bfloat16)
    for x, match in [(torch.randn(17, 32).to(torch.bfloat16), "M=17 rows"),
                     (torch.randn(1, 32), "must be bfloat16"),
                     (torch.randn(1, 31).to(torch.bfloat16), "31 features")]:
        with pytest.raises(RuntimeError, match=match):
            extension.dense_decode_linear(x, w, None, None)
    with pytest.raises(RuntimeError, match="contiguous"):
        extension.dense_decode_linear(torch.randn(1, 8).to(torch.bfloat16), w.t(), None, None)
    with pytest.raises(RuntimeError, match="bias must be"):
        extension.dense_decode_linear(torch.randn(1, 32).to(torch.bfloat16), w, torch.randn(9), None)


def test_module_shares_parameters_and_falls_back_to_f_linear():
    linear = nn.Linear(40, 24).to(torch.bfloat16)
    module = DenseDecodeLinear(linear)
    assert module.weight is linear.weight and module.bias is linear.bias
    assert set(module.state_dict()) == {"weight", "bias"}
    prefill = torch.randn(2, MAX_ROWS + 1, 40).to(torch.bfloat16)  # more rows than the kernel takes
    assert not module.uses_kernel(prefill)
    assert torch.equal(module(prefill), F.linear(prefill, linear.weight, linear.bias))
    linear32 = nn.Linear(40, 24)  # another dtype
    module32, x32 = DenseDecodeLinear(linear32), torch.randn(1, 40)
    assert not module32.uses_kernel(x32)
    assert torch.equal(module32(x32), F.linear(x32, linear32.weight, linear32.bias))
    x = torch.randn(1, 3, 40).to(torch.bfloat16)
    with torch.no_grad():
        assert module.uses_kernel(x) == kernel_available()
        y = module(x)
    assert y.shape == (1, 3, 24) and y.dtype == torch.bfloat16
    ref = float64_linear(x.reshape(3, 40), linear.weight, linear.bias).reshape(1, 3, 24)
    assert float((y.double() - ref).abs().max()) < 0.05


def test_decode_head_keeps_the_tie_logits_and_greedy_tokens(tmp_path):
    tokenizer = spm_tokenizer()
    model = tiny_gemma(tokenizer).to(torch.bfloat16)
    reference = tiny_gemma(tokenizer).to(torch.bfloat16)
    assert decode_head_(model) is None and decode_head_(model) is None  # a second call leaves it as it is
    assert isinstance(model.lm_head, DenseDecodeLinear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = tokenizer("Der Hund läuft", return_tensors="pt")
    with torch.no_grad():
        prefill, dense = model(**ids).logits, reference(**ids).logits
        assert torch.equal(prefill, dense)  # prefill: F.linear, bit for bit
        last = model(**ids, logits_to_keep=1).logits.float()  # one row: the kernel where it runs
        assert float((last - dense[:, -1:].float()).abs().max()) < 0.05
    generated = model.generate(**ids, max_new_tokens=5, do_sample=False)
    expected = reference.generate(**ids, max_new_tokens=5, do_sample=False)
    assert generated.tolist() == expected.tolist()
    model.save_pretrained(tmp_path / "saved")  # the state dict keeps its names and the tie
    assert set(model.state_dict()) == set(reference.state_dict())

    class NoLinearHead(nn.Module):
        def get_output_embeddings(self):
            return None

    assert "not an nn.Linear" in decode_head_(NoLinearHead())


@pytest.mark.parametrize("packed", [False, True])
def test_from_pretrained_swaps_the_head_unless_asked_not_to(tmp_path, packed):
    tokenizer = spm_tokenizer()
    model = tiny_gemma(tokenizer)
    if packed:
        with torch.no_grad():  # 2:4 on every decoder linear so that they are packed
            for name, module in model.model.layers.named_modules():
                if isinstance(module, nn.Linear):
                    module.weight.view(-1, 4)[:, :2] = 0
        save_compressed_tensors(model, tmp_path / "m")
    else:
        model.save_pretrained(tmp_path / "m")
    loaded = from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert isinstance(loaded.lm_head, DenseDecodeLinear)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    plain = from_pretrained(tmp_path / "m", dtype=torch.bfloat16, decode_head=False)
    assert type(plain.lm_head) is nn.Linear
    ids = tokenizer("Le chat", return_tensors="pt")
    assert loaded.generate(**ids, max_new_tokens=4, do_sample=False).tolist() == \
        plain.generate(**ids, max_new_tokens=4, do_sample=False).tolist()


def test_autograd_and_shape_mismatch_take_f_linear():
    """With a gradient needed the forward is F.linear (the kernel has no backward): the same gradients as
    nn.Linear's; a wrong feature count gets F.linear's own error."""
    linear = nn.Linear(48, 20).to(torch.bfloat16)
    reference = nn.Linear(48, 20).to(torch.bfloat16)
    reference.load_state_dict(linear.state_dict())
    module = DenseDecodeLinear(linear)
    x = torch.randn(1, 48).to(torch.bfloat16)
    assert not module.uses_kernel(x)  # grad mode on and the weight requires grad
    module(x).float().square().sum().backward()
    reference(x).float().square().sum().backward()
    assert torch.equal(linear.weight.grad, reference.weight.grad) and torch.equal(linear.bias.grad, reference.bias.grad)
    with torch.no_grad():
        assert module.uses_kernel(x) == kernel_available()
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            module(torch.randn(1, 47).to(torch.bfloat16))


def test_untied_head_resizes_and_accelerate_hooks_are_refused():
    from accelerate.hooks import ModelHook, add_hook_to_module
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    assert decode_head_(model) is None and isinstance(model.lm_head, nn.Linear)  # an nn.Linear still
    model.resize_token_embeddings(100)  # transformers refuses heads that are not nn.Linear
    assert model.lm_head.weight.shape == (100, 32)
    hooked = LlamaForCausalLM(config).eval()
    add_hook_to_module(hooked.lm_head, ModelHook())
    assert "accelerate hooks" in decode_head_(hooked) and type(hooked.lm_head) is nn.Linear


@needs_kernel
def test_generate_runs_the_kernel(monkeypatch):
    """Greedy generation (no grad, one token per step) goes through the kernel, not F.linear."""
    from tfprune.sparse import dense_decode

    tokenizer = spm_tokenizer()
    model = tiny_gemma(tokenizer).to(torch.bfloat16)
    decode_head_(model)
    calls = []
    original = dense_decode.extension.dense_decode_linear
    counting = SimpleNamespace(dense_decode_linear=lambda *args: calls.append(args[0].shape) or original(*args))
    monkeypatch.setattr(dense_decode, "extension", counting)  # the forward calls only this
    model.generate(**tokenizer("Der Hund", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert calls and all(shape[0] == 1 for shape in calls)
