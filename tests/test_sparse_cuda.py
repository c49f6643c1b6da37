"""The CUDA paths of tfprune.sparse and tfprune.decode24, each against an independent reference: SparseLinear on
every path it takes on this GPU (torch's CUTLASS 2:4 GEMM on sm_8x, cuSPARSELt on sm_9x, the Triton decode
kernel for few tokens, the unpacked weight) against F.linear on the dense weight; the decode kernel's
determinism, its freedom from host synchronization and its CUDA-graph replay; the CUDA packer against the CPU
packer. Every test is skipped, with its reason, without a CUDA device (or the capability it needs)."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tfprune import decode24, masks, ops
from tfprune.sparse import SparseLinear, backends, pack, to_cutlass, unpack
from tfprune.sparse import linear as linear_module
from tfprune.sparse.formats import unpack_by_rows

CUDA = torch.cuda.is_available()
CAPABILITY = torch.cuda.get_device_capability() if CUDA else None
SM = f"sm_{CAPABILITY[0]}{CAPABILITY[1]}" if CUDA else None

cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device (torch.cuda.is_available() is False)")
sm8x = pytest.mark.skipif(not CUDA or CAPABILITY[0] != 8,
                          reason=f"torch's CUTLASS 2:4 GEMM runs on sm_8x only (pytorch#132928); this is {SM or 'no GPU'}")
cusparselt = pytest.mark.skipif(not CUDA or CAPABILITY[0] < 8 or not backends.cusparselt_available(),
                                reason="cuSPARSELt needs sm_80+ and a torch built with it "
                                       f"({SM or 'no GPU'}, available: {backends.cusparselt_available()})")
triton_ok = decode24._triton_import_error() is None


def pruned(out_features, in_features, dtype, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_features, out_features, bias=bias).to(dtype)
    ops.apply_mask_(layer.weight.data, masks.nm_mask_ref(layer.weight.data.float().abs(), 2, 4))
    return layer.cuda() if CUDA else layer


def reference(x, layer):
    """F.linear in float64 on the dense weight."""
    bias = None if layer.bias is None else layer.bias.double()
    return F.linear(x.double(), layer.weight.double(), bias)


def assert_close64(y, x, layer, rtol):
    ref = reference(x, layer)
    scale = float(F.linear(x.double().abs(), layer.weight.double().abs()).abs().max()) + 1e-30
    assert float((y.double() - ref).abs().max()) <= rtol * scale


@pytest.fixture(autouse=True)
def _crossover_from_defaults(monkeypatch):
    """The paths below follow tfprune's defaults, not a crossover stored on this machine."""
    monkeypatch.setenv("TFPRUNE_DECODE_CROSSOVER", "none")
    monkeypatch.delenv("TFPRUNE_DECODE_MAX_ROWS", raising=False)
    decode24.decode_crossover.reload()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The PyTorch API of SparseSemiStructuredTensor")
        yield
    decode24.decode_crossover.reload()


# ------------------------------------------------------------------------------------- SparseLinear


@cuda
def test_auto_backend_is_the_capability_rule():
    layer = pruned(256, 512, torch.bfloat16)
    chosen = SparseLinear.from_linear(layer, "cutlass").gemm_backend()[0]
    expected = backends.policy(CAPABILITY, torch.bfloat16, (256, 512), backends.cusparselt_available())[0] or "dense"
    assert chosen == expected
    if CAPABILITY[0] == 8:
        assert chosen == "cutlass"
    elif CAPABILITY[0] >= 9:
        assert chosen == ("cusparselt" if backends.cusparselt_available() else "dense")


@sm8x
@pytest.mark.parametrize("format", ["cutlass", "bitmask"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cutlass_gemm_matches_dense(format, dtype):
    layer = pruned(256, 512, dtype)
    sparse = SparseLinear.from_linear(layer, format, backend="cutlass")
    for tokens in (17, 128, 2048):
        x = torch.randn(tokens, 512, device="cuda", dtype=dtype)
        assert sparse.path(x) == "cutlass"
        assert_close64(sparse(x), x, layer, rtol=1e-2)
    operand = sparse._gemm_weight[1]
    assert isinstance(operand, torch.sparse.SparseSemiStructuredTensorCUTLASS)
    assert operand.packed.data_ptr() == sparse.values.data_ptr()  # the packed values, no copy


@cusparselt
@pytest.mark.parametrize("format", ["cutlass", "bitmask"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cusparselt_gemm_matches_dense(format, dtype):
    layer = pruned(256, 512, dtype)
    sparse = SparseLinear.from_linear(layer, format, backend="cusparselt")
    for tokens in (17, 128, 2048):
        x = torch.randn(tokens, 512, device="cuda", dtype=dtype)
        assert sparse.path(x) == "cusparselt"
        assert_close64(sparse(x), x, layer, rtol=1e-2)
    assert isinstance(sparse._gemm_weight[1], torch.sparse.SparseSemiStructuredTensorCUSPARSELT)


@cuda
@pytest.mark.skipif(not triton_ok, reason=f"triton cannot be imported: {decode24._triton_import_error()}")
@pytest.mark.parametrize("format", ["cutlass", "bitmask"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auto_paths_match_dense(format, dtype):
    """Every token count goes where the dispatch says (the Triton decode kernel up to the crossover, the
    capability's GEMM or the unpacked weight above) and computes the dense layer's function."""
    layer = pruned(256, 512, dtype)
    sparse = SparseLinear.from_linear(layer, format)
    gemm = sparse.gemm_backend()[0]
    limit = decode24.max_rows("cuda", dense_available=gemm != "dense")
    for tokens in (1, 2, 7, 16, 17, 128):
        x = torch.randn(tokens, 512, device="cuda", dtype=dtype)
        assert sparse.path(x) == ("decode" if tokens <= limit else gemm)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="SparseLinear:")
            assert_close64(sparse(x), x, layer, rtol=1e-2)


@cuda
@pytest.mark.skipif(not triton_ok, reason=f"triton cannot be imported: {decode24._triton_import_error()}")
def test_sparse_linear_takes_the_triton_decode_kernel(monkeypatch):
    layer = pruned(512, 1024, torch.bfloat16)
    sparse = SparseLinear.from_linear(layer, "cutlass")
    calls = []
    original = decode24.run  # the forward's unchecked entry (path() asked unsupported_reason once)
    monkeypatch.setattr(decode24, "run", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k))
    x = torch.randn(1, 3, 1024, device="cuda", dtype=torch.bfloat16)
    assert_close64(sparse(x), x, layer, rtol=4e-3)
    assert calls == [(1, 3, 1024)]
    assert torch.equal(sparse._decoded.codes, decode24.pack_ref(layer.weight.detach()).codes)  # from the meta


@cuda
def test_dense_fallback_warns_once_and_is_exact():
    linear_module._warned.clear()
    layer = pruned(64, 128, torch.float32)  # no 2:4 GEMM or GPU decode kernel takes float32
    sparse = SparseLinear.from_linear(layer, "bitmask")
    x = torch.randn(40, 128, device="cuda")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = sparse(x)
        sparse(x)
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
    messages = [str(w.message) for w in caught if "SparseLinear" in str(w.message)]
    assert len(messages) == 1 and "computing with the unpacked weight" in messages[0]


# ------------------------------------------------------------------------------------- decode kernel


decode = pytest.mark.skipif(not CUDA or not triton_ok, reason="needs a CUDA device and triton" if not CUDA else
                            f"triton cannot be imported: {decode24._triton_import_error()}")


def decode_case(n, k, m, dtype=torch.bfloat16, seed=0):
    layer = pruned(n, k, dtype, seed=seed)
    return layer, decode24.pack(layer.weight.detach()), torch.randn(m, k, device="cuda", dtype=dtype)


@decode
@pytest.mark.parametrize("n,k", [(4096, 4096), (1024, 4096), (96, 4100)])
def test_decode_kernel_is_reproducible_and_syncs_nothing(n, k):
    """Bitwise equal outputs run to run (the split-K partials are added in order) and no host
    synchronization on the call path (torch's sync debug mode raises on one)."""
    from tfprune.kernels.sparse24_decode import sparse24_decode_linear

    layer, packed, x = decode_case(n, k, 4)
    bias = layer.bias.detach()
    first = decode24.linear(x, packed, bias, out_dtype=torch.float32)  # compiles, plans
    torch.cuda.set_sync_debug_mode("error")
    try:
        runs = [decode24.linear(x, packed, bias, out_dtype=torch.float32) for _ in range(5)]
        split = [sparse24_decode_linear(x, packed.values, packed.codes, bias, out_dtype=torch.float32, split_k=3)
                 for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(first.view(torch.int32), r.view(torch.int32)) for r in runs)
    assert all(torch.equal(split[0].view(torch.int32), r.view(torch.int32)) for r in split)
    assert_close64(first, x, layer, rtol=1e-5)
    assert_close64(split[0], x, layer, rtol=1e-5)


@decode
@pytest.mark.parametrize("m", [1, 16])
def test_decode_kernel_replays_in_a_cuda_graph(m):
    layer, packed, x = decode_case(1024, 4096, m)  # a split-K shape: two kernels in the graph
    bias = layer.bias.detach()
    out = torch.empty(m, 1024, device="cuda", dtype=torch.bfloat16)
    decode24.linear(x, packed, bias, out=out)  # compile outside the capture
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        decode24.linear(x, packed, bias, out=out)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode24.linear(x, packed, bias, out=out)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, decode24.linear(x, packed, bias))
    assert_close64(out, x, layer, rtol=4e-3)


@decode
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k,m", [(37, 100, 1), (4096, 11008, 1), (11008, 4096, 8), (129, 1028, 16)])
def test_decode_kernel_against_float64_on_llm_and_odd_shapes(dtype, n, k, m):
    layer, packed, x = decode_case(n, k, m, dtype)
    assert_close64(decode24.linear(x, packed, layer.bias.detach(), out_dtype=torch.float32), x, layer, rtol=1e-5)
    bits = torch.from_numpy(np.packbits((layer.weight.detach() != 0).cpu().numpy(), axis=1, bitorder="little")).cuda()
    exactly_two = bool(((layer.weight.detach() != 0).reshape(n, -1, 4).sum(-1) == 2).all())
    if exactly_two:  # compressed-tensors' bitmask read in place
        as_bitmask = decode24.Decode24Weight(packed.values, bits, packed.shape, bitmask=True)
        assert_close64(decode24.linear(x, as_bitmask, out_dtype=torch.float32), x, layer, rtol=1e-5)


# ------------------------------------------------------------------------------------- packer


@cuda
@pytest.mark.parametrize("format", ["cutlass", "bitmask"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_packer_matches_the_cpu_packer(format, dtype):
    """pack/unpack on CUDA (csrc/sparse24_cuda.cu where the extension has CUDA, else the torch references
    on the GPU) give the CPU packer's bytes."""
    weight = pruned(1024, 2048, dtype).weight.detach()
    weight[0, :4] = 0.0  # torch's fixed codes for an empty group
    on_gpu, on_cpu = pack(weight, format), pack(weight.cpu(), format)
    assert torch.equal(on_gpu.values.cpu().view(torch.int16), on_cpu.values.view(torch.int16))
    assert torch.equal(on_gpu.meta.cpu(), on_cpu.meta)
    assert torch.equal(unpack(on_gpu).view(torch.int16), weight.view(torch.int16))
    assert torch.equal(unpack_by_rows(on_gpu, block_rows=256).view(torch.int16), weight.view(torch.int16))
    if format == "bitmask" and bool(((weight != 0).reshape(1024, -1, 4).sum(-1) == 2).all()):
        assert torch.equal(to_cutlass(on_gpu).meta.cpu(), to_cutlass(on_cpu).meta)

