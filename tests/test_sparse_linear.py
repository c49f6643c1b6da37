"""SparseLinear computes F.linear with the dense 2:4 weight; its choice of path (decode kernel, torch's 2:4 GEMMs by
compute capability, the unpacked weight); sparsify swaps 2:4 layers and says why it skips the others. The CUDA
runs of these paths are in test_sparse_cuda.py."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tfprune
from tfprune import decode24, masks, ops
from tfprune.engine.discovery import weight_matrix
from tfprune.sparse import SparseLinear, SparseFormatError, backends, kernel_support, linear as linear_module
from tfprune.sparse.formats import pack, unpack_by_rows, unpack_ref

from sparse_testing import prune_24_

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


# ------------------------------------------------------------------------------------------ backends

CUTLASS_ROWS, CUTLASS_COLS = backends.SHAPE_MULTIPLES["cutlass"]  # torch's: (32, 64) in 2.13
SPARSELT_ROWS, SPARSELT_COLS = backends.SHAPE_MULTIPLES["cusparselt"]  # (16, 16) in 2.13
ODD = (64, 96)  # CUTLASS needs in_features % 64; cuSPARSELt (torch 2.13) % 16
POLICY = [
    ((8, 0), torch.bfloat16, (4096, 4096), True, "cutlass", None),
    ((8, 6), torch.float16, ODD, True, "cusparselt", None),
    ((8, 0), torch.float16, ODD, False, None,
     f"CUTLASS 2:4 kernel (out_features a multiple of {CUTLASS_ROWS}, in_features of {CUTLASS_COLS}"),
    ((9, 0), torch.bfloat16, (4096, 4096), True, "cusparselt", None),
    ((9, 0), torch.bfloat16, (4096, 4096), False, None, "runs on 8.x only (pytorch#132928)"),
    ((10, 0), torch.float16, (11008, 4096), True, "cusparselt", None),
    ((7, 5), torch.float16, (4096, 4096), True, None, "compute capability 8.0+, the device has 7.5"),
    ((9, 0), torch.float32, (4096, 4096), True, None, "float16/bfloat16 here, not float32"),
    ((9, 0), torch.bfloat16, (40, 64), True, None,
     f"unsupported by cuSPARSELt (out_features a multiple of {SPARSELT_ROWS}"),
]


@pytest.mark.parametrize("capability,dtype,shape,cusparselt,backend,reason", POLICY)
def test_gemm_backend_by_capability(capability, dtype, shape, cusparselt, backend, reason):
    """CUTLASS from the packed tensors on 8.x, cuSPARSELt on 9.x and later (torch's CUTLASS 2:4 GEMM is 8.x
    only), cuSPARSELt on 8.x for shapes CUTLASS does not take; otherwise none, with the reason."""
    if shape == ODD and backend == "cusparselt" and (ODD[0] % SPARSELT_ROWS or ODD[1] % SPARSELT_COLS):
        pytest.skip(f"this torch's cuSPARSELt takes multiples of {(SPARSELT_ROWS, SPARSELT_COLS)}, not {ODD}")
    chosen, why = backends.policy(capability, dtype, shape, cusparselt)
    assert chosen == backend
    assert (why is None) if reason is None else (reason in why)


def test_backend_support_and_choices_on_cpu():
    assert kernel_support((64, 64), torch.float16, "cpu") == "no 2:4 sparse kernel on cpu"
    assert backends.support("cusparselt", (64, 64), torch.float16, "cpu") == "no 2:4 sparse kernel on cpu"
    with pytest.raises(ValueError, match="unknown 2:4 GEMM backend"):
        backends.support("marlin", (64, 64), torch.float16, "cpu")
    with pytest.raises(ValueError, match="backend must be one of auto, cutlass, cusparselt, dense"):
        SparseLinear(pack(pruned_linear(32, 64, torch.float16).weight, "cutlass"), backend="cuda")
    forced = SparseLinear.from_linear(pruned_linear(32, 64, torch.float16), "cutlass", backend="cutlass")
    assert "backend=cutlass" in repr(forced)
    with pytest.raises(ValueError, match="backend='cutlass' cannot run here: no 2:4 sparse kernel on cpu"):
        forced(torch.randn(40, 64, dtype=torch.float16))


def test_paths_on_cpu(monkeypatch):
    """Few tokens: the decode kernel (up to the crossover, here forced to 4); more: the unpacked weight."""
    sparse = SparseLinear.from_linear(pruned_linear(64, 128, torch.bfloat16), "bitmask")
    x = {rows: torch.randn(rows, 128, dtype=torch.bfloat16) for rows in (1, 4, 5, 40)}
    assert {rows: sparse.path(v) for rows, v in x.items()} == dict.fromkeys(x, "dense")  # the fixture: crossover 0
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "4")
    if decode24.unsupported_reason(x[1], sparse._decode_weight()) is None:  # the C++ kernel is built
        assert [sparse.path(x[r]) for r in (1, 4, 5, 40)] == ["decode", "decode", "dense", "dense"]
    assert sparse.gemm_backend() == ("dense", "no 2:4 sparse kernel on cpu")
    assert sparse.prepare() is sparse and sparse._decoded is not None and sparse._gemm_weight is None


def test_gemm_path_wiring(monkeypatch):
    """The GEMM path (simulated on the CPU): the backend is chosen once per device/dtype, its operand built
    once from the module's packed weight in its current dtype, and F.linear runs on it; a cast chooses again."""
    built = []

    def build(backend, packed, dtype):
        built.append((backend, packed.format, dtype))
        return unpack_ref(packed).to(dtype)  # a dense stand-in for torch's sparse operand

    monkeypatch.setattr(backends, "choose", lambda shape, dtype, device: ("cusparselt", None))
    monkeypatch.setattr(backends, "build", build)
    dense = pruned_linear(64, 128, torch.float16)
    sparse = SparseLinear.from_linear(dense, "cutlass")
    x = torch.randn(7, 128, dtype=torch.float16)
    assert sparse.path(x) == "cusparselt"
    for _ in range(2):
        assert torch.equal(sparse(x), F.linear(x, dense.weight, dense.bias))
    assert built == [("cusparselt", "cutlass", torch.float16)]
    sparse.bfloat16()
    assert sparse.path(x.bfloat16()) == "cusparselt" and sparse.path(x) == "dense"  # input dtype differs
    sparse(x.bfloat16())
    assert built[-1] == ("cusparselt", "cutlass", torch.bfloat16)
    monkeypatch.setattr(backends, "support", lambda backend, shape, dtype, device: None)
    sparse.backend = "cutlass"  # another backend: chosen again, its own operand built
    sparse(x.bfloat16())
    assert built[-1] == ("cutlass", "cutlass", torch.bfloat16) and len(built) == 3


@pytest.mark.parametrize("format,dtype", [("cutlass", torch.bfloat16), ("cutlass", torch.float16),
                                          ("bitmask", torch.float16), ("bitmask", torch.float32)])
def test_unpack_by_rows_is_unpack_ref(format, dtype):
    """The blockwise unpacker (GPUs without the CUDA extension) equals torch's own conversion bit for bit."""
    weight = pruned_linear(96, 320, dtype).weight.detach()
    weight[0, :4] = 0.0  # a group without non-zeros: torch's fixed codes
    packed = pack(weight, format)
    by_rows = unpack_by_rows(packed, block_rows=32)
    assert torch.equal(by_rows.view(torch.int16 if dtype != torch.float32 else torch.int32),
                       unpack_ref(packed).view(torch.int16 if dtype != torch.float32 else torch.int32))
    assert torch.equal(by_rows, weight)
