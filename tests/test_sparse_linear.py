"""SparseLinear computes F.linear with the dense 2:4 weight; sparsify swaps 2:4 layers and says why it skips
the others."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tfprune
from tfprune import masks, ops
from tfprune.engine.discovery import weight_matrix
from tfprune.sparse import SparseLinear, SparseFormatError, kernel_support, linear as linear_module

from sparse_testing import prune_24_

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def pruned_linear(out_features, in_features, dtype=torch.float32, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    weight = layer.weight.data
    ops.apply_mask_(weight, masks.nm_mask_ref(weight.float().abs(), 2, 4))
    return layer


@pytest.fixture(autouse=True)
def _exact_path(monkeypatch):
    """The exact comparisons below take SparseLinear's unpacked-weight path: tfprune.decode24's few-row CPU
    kernel (fp32 accumulation in its own order; test_decode_kernel_is_close) is off unless a test turns it on."""
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "0")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="SparseLinear: no 2:4 sparse kernel")
        yield


@pytest.mark.parametrize("format,dtype", [("cutlass", torch.float16), ("cutlass", torch.bfloat16),
                                          ("bitmask", torch.float32), ("bitmask", torch.bfloat16)])
def test_sparse_linear_equals_dense(format, dtype):
    dense = pruned_linear(64, 128, dtype)
    sparse = SparseLinear.from_linear(dense, format=format)
    x = torch.randn(3, 5, 128).to(dtype)
    assert torch.equal(sparse(x), F.linear(x, dense.weight, dense.bias))
    assert torch.equal(sparse.dense_weight(), dense.weight)
    assert sparse.values.numel() == dense.weight.numel() // 2
    assert "format=" + format in repr(sparse)


@pytest.mark.parametrize("format", ["cutlass", "bitmask"])
def test_decode_kernel_is_close(monkeypatch, format):
    monkeypatch.delenv("TFPRUNE_DECODE_MAX_ROWS")
    dense = pruned_linear(64, 128, torch.bfloat16)
    sparse = SparseLinear.from_linear(dense, format=format)
    for rows in (1, 4, 40):
        x = torch.randn(rows, 128).to(torch.bfloat16)
        torch.testing.assert_close(sparse(x), F.linear(x, dense.weight, dense.bias), rtol=1.6e-2, atol=1e-2)


def test_sparse_linear_warns_once_on_cpu():
    linear_module._warned.clear()
    sparse = SparseLinear.from_linear(pruned_linear(32, 64, torch.float16), "cutlass")
    x = torch.randn(2, 64, dtype=torch.float16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparse(x)
        sparse(x)
    messages = [str(w.message) for w in caught if "SparseLinear" in str(w.message)]
    assert messages == ["SparseLinear: no 2:4 sparse kernel on cpu; computing with the unpacked weight "
                        "(correct, not faster)"]


def test_cast_keeps_the_function():
    """float16 -> float32 changes the CUTLASS layout (float32 is 1:2): the module still computes the same."""
    dense = pruned_linear(32, 64, torch.float16)
    sparse = SparseLinear.from_linear(dense, "cutlass").float()
    x = torch.randn(4, 64)
    assert sparse.values.dtype == torch.float32
    assert torch.equal(sparse(x), F.linear(x, dense.weight.float(), dense.bias.float()))
    assert torch.equal(sparse.bfloat16().dense_weight(), dense.weight.bfloat16())


def test_from_linear_rejects_dense_weight():
    with pytest.raises(SparseFormatError, match="not 2:4 sparse: row 0, group 0"):
        SparseLinear.from_linear(nn.Linear(64, 32).half(), "cutlass")


def test_conv1d():
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(32, 64)  # in 64, out 32, weight [64, 32]
    ops.apply_mask_(weight_matrix(conv), masks.nm_mask_ref(weight_matrix(conv).abs(), 2, 4))
    sparse = SparseLinear.from_linear(conv, "bitmask")
    x = torch.randn(3, 64)
    assert (sparse.out_features, sparse.in_features) == (32, 64)
    torch.testing.assert_close(sparse(x), conv(x), rtol=1e-6, atol=1e-6)


def test_sparsify_swaps_and_reports(tiny_model):
    model, tokenizer = tiny_model("llama")
    prune_24_(model).half()
    model.model.layers[1].mlp.down_proj.weight.data[0, :4] = 1.0  # no longer 2:4
    reference = copy.deepcopy(model)
    report = tfprune.sparsify(model)
    assert len(report.swapped) == 13 and "model.layers.0.self_attn.k_proj" in report.swapped
    assert report.skipped == {
        "model.layers.1.mlp.down_proj": "not 2:4: row 0, group 0 holds more than 2 non-zeros",
        "lm_head": "not 2:4: row 0, group 0 holds more than 2 non-zeros"}
    assert isinstance(model.model.layers[0].mlp.gate_proj, SparseLinear)
    assert isinstance(model.model.layers[1].mlp.down_proj, nn.Linear)
    ids = tokenizer("Guten Tag, wie geht es?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert "13 linear layers swapped" in report.table()


def test_sparsify_float32_cutlass_skips_with_reason(tiny_model):
    model, _ = tiny_model("llama")
    prune_24_(model)
    report = tfprune.sparsify(model, format="cutlass", filter_fn=lambda module, name: "layers.0.mlp" in name)
    assert report.swapped == []
    assert set(report.skipped) == {f"model.layers.0.mlp.{p}_proj" for p in ("gate", "up", "down")}
    assert all(reason.startswith("not 1:2") for reason in report.skipped.values())
    report = tfprune.sparsify(model, format="bitmask")
    assert len(report.swapped) == 14


def test_sparsify_shape_reason():
    model = nn.Sequential(pruned_linear(48, 64, torch.float16), pruned_linear(64, 48, torch.float16))
    report = tfprune.sparsify(model)
    assert report.swapped == []
    assert report.skipped["0"] == "shape (48, 64) unsupported by format 'cutlass' (out_features a multiple of 32, " \
                                  "in_features of 32)"
    assert "in_features of 32" in report.skipped["1"]
    with pytest.raises(SparseFormatError, match="unknown 2:4 format"):
        tfprune.sparsify(model, format="csr")


def test_kernel_support_reasons():
    assert kernel_support((64, 64), torch.float16, "cpu") == "no 2:4 sparse kernel on cpu"


@cuda
@pytest.mark.parametrize("format", ["cutlass", "bitmask"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_kernel_matches_dense(format, dtype):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need sm_80+")
    dense = pruned_linear(256, 512, dtype).cuda()
    sparse = SparseLinear.from_linear(dense, format)
    for tokens in (1, 7, 128):
        x = torch.randn(tokens, 512, device="cuda", dtype=dtype)
        torch.testing.assert_close(sparse(x), F.linear(x, dense.weight, dense.bias), rtol=2e-2, atol=2e-2)
    assert sparse._kernel_weight is not None
