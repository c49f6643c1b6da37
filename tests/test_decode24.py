"""2:4 decode kernels (tfprune.decode24; csrc/decode24_*.{h,cpp}; kernels/sparse24_decode.py) against F.linear
on the unpacked weight: the layout's bytes, every CPU kernel, the Triton kernel under the interpreter, the
errors for inputs the kernels do not take, and SparseLinear's dispatch."""
import importlib
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tfprune import decode24
from tfprune._ext import extension

needs_ext = pytest.mark.skipif(extension is None or not hasattr(extension, "decode24_linear"),
                               reason="tfprune._C with decode24 not built")
ISA = extension.decode24_isa() if extension is not None and hasattr(extension, "decode24_isa") else "portable"
IMPLS = ["auto", "portable"] + (["gather", "expand", "bcast"] if ISA in ("avx2", "avx512bf16") else []) + \
    (["dpbf16"] if ISA == "avx512bf16" else [])


def takes(impl, m, wdtype=torch.bfloat16, xdtype=torch.bfloat16):
    """Whether the CPU kernel `impl` takes M = m rows of xdtype x on wdtype weights."""
    return not (impl == "gather" and m > 4) and not (impl == "dpbf16" and (wdtype, xdtype) != (torch.bfloat16,) * 2)


def sparse24(rows, cols, dtype=torch.bfloat16, seed=0):
    """A random 2:4 weight with a few all-zero and one-non-zero groups (torch's fixed codes) and a -0.0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    keep = torch.rand(rows, cols // 4, 4, generator=g).argsort(-1) < 2
    w = w.masked_fill(~keep.reshape(rows, cols), 0.0)
    w[0, :4] = 0.0
    if cols >= 8:
        w[0, 4:8] = torch.tensor([0.0, 0.0, 0.0, 1.5])
    w[-1, -4:] = torch.tensor([-0.0, 2.0, 0.0, 0.0])
    return w.to(dtype)


def rel_err(y, ref):
    y, ref = y.detach().float(), ref.detach().float()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


def reference(x, w, bias=None):
    return F.linear(x.float(), w.float(), None if bias is None else bias.float())


def bitmask_of(w):
    """compressed-tensors' bitmask of a weight whose groups all hold exactly two non-zeros."""
    return torch.from_numpy(np.packbits((w != 0).numpy(), axis=1, bitorder="little"))


# --------------------------------------------------------------------------------------------- layout


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows,cols", [(1, 4), (37, 100), (64, 128), (5, 1028)])
def test_pack_matches_reference_and_round_trips(dtype, rows, cols):
    w = sparse24(rows, cols, dtype)
    packed, ref = decode24.pack(w), decode24.pack_ref(w)
    assert torch.equal(packed.values.view(torch.uint8), ref.values.view(torch.uint8))
    assert torch.equal(packed.codes, ref.codes) and packed.codes.shape == (rows, -(-cols // 8))
    dense = decode24.unpack(packed)
    assert torch.equal(dense, w) and not dense[dense == 0].signbit().any()  # zeros are +0.0 (-0.0 counts as zero)
    assert packed.nbytes == rows * cols // 2 * w.element_size() + rows * -(-cols // 8)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_values_are_torch_cutlass_values_and_codes_its_meta_before_reordering(dtype):
    from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    w = sparse24(64, 128, dtype)
    packed = decode24.pack(w)
    values, _meta = sparse_semi_structured_from_dense_cutlass(w)
    assert torch.equal(packed.values.view(torch.int16), values.view(torch.int16))
    # code nibble i0 | i1 << 2 of group g: the (i0, i1) torch kept, in index order
    nibbles = torch.stack([packed.codes & 15, packed.codes >> 4], -1).reshape(64, -1).long()
    assert ((nibbles & 3) < (nibbles >> 2)).all()
    assert nibbles[0, 0] == (2 | 3 << 2) and nibbles[0, 1] == (2 | 3 << 2)  # torch's codes of 0 / 1 non-zero(s)


@needs_ext
def test_pack_errors():
    w = sparse24(8, 32)
    w[5, 9:12] = 1.0  # group 2 of row 5 holds 3 non-zeros
    with pytest.raises(ValueError, match="row 5, group 2"):
        decode24.pack(w)
    with pytest.raises(ValueError, match="row 5, group 2"):
        decode24.pack_ref(w)
    with pytest.raises(ValueError, match="multiple of 4"):
        decode24.pack(torch.zeros(4, 6))
    with pytest.raises(ValueError, match="2-D"):
        decode24.pack(torch.zeros(8))


# ------------------------------------------------------------------------------------------ CPU kernel


@needs_ext
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("wdtype,xdtype", [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16),
                                           (torch.bfloat16, torch.float32), (torch.float32, torch.float32)])
def test_cpu_linear_all_rows(impl, wdtype, xdtype):
    """M = 1..16, odd N, K with tails past the 16-column steps (and K = 1024 without: dpbf16 then reads one or two
    rows of x in place), bias and none: fp32 accumulation."""
    for n, k, m in [(37, 1060, m) for m in range(1, 17)] + [(19, 1024, 1), (19, 1024, 2), (19, 1024, 3)]:
        w = sparse24(n, k, wdtype)
        packed = decode24.pack(w)
        bias = torch.randn(n).to(wdtype)
        if not takes(impl, m, wdtype, xdtype):
            continue
        x = torch.randn(m, k).to(xdtype)
        b = bias if m % 2 else None
        y = extension.decode24_linear(x, packed.values, packed.codes, b, False, torch.float32, impl)
        assert rel_err(y, reference(x, w, b)) < 1e-5, (impl, m)
        y16 = extension.decode24_linear(x, packed.values, packed.codes, b, False, None, impl)
        assert y16.dtype == xdtype
        assert torch.equal(y16, y.to(xdtype)), (impl, m)  # bf16 rounded in the kernel exactly as torch casts
        assert rel_err(y16, reference(x, w, b)) < (1e-5 if xdtype == torch.float32 else 4e-3)


@needs_ext
@pytest.mark.parametrize("rows,cols", [(1, 4), (3, 12), (129, 20), (7, 4100)])
def test_cpu_linear_odd_shapes(rows, cols):
    w = sparse24(rows, cols)
    packed = decode24.pack(w)
    for m in (1, 2, 5, 16):
        x = torch.randn(m, cols, dtype=torch.bfloat16)
        assert rel_err(decode24.linear(x, packed, out_dtype=torch.float32), reference(x, w)) < 1e-3


@needs_ext
def test_cpu_linear_noncontiguous_and_batched_x():
    w = sparse24(48, 256)
    packed = decode24.pack(w)
    bias = torch.randn(48, dtype=torch.bfloat16)
    base = torch.randn(256, 6, dtype=torch.bfloat16)
    x = base.t()  # [6, 256], column-major
    assert not x.is_contiguous()
    assert rel_err(decode24.linear(x, packed, bias, out_dtype=torch.float32), reference(x, w, bias)) < 1e-3
    x3 = torch.randn(2, 3, 512, dtype=torch.bfloat16)[..., ::2]  # [2, 3, 256], stride 2
    y = decode24.linear(x3, packed, bias)
    assert y.shape == (2, 3, 48) and y.dtype == torch.bfloat16
    assert rel_err(y, reference(x3, w, bias)) < 4e-3


@needs_ext
def test_cpu_linear_reads_compressed_tensors_bitmask():
    w = sparse24(40, 96)
    w[0, :8] = torch.tensor([0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 4.0]).to(w.dtype)  # every group: exactly two
    w[-1, -4:] = torch.tensor([0.0, 2.0, 0.0, 5.0]).to(w.dtype)
    packed = decode24.pack(w)
    bits = bitmask_of(w)
    as_bitmask = decode24.Decode24Weight(packed.values, bits, packed.shape, bitmask=True)
    assert torch.equal(decode24.unpack(as_bitmask), w) and torch.equal(decode24.unpack_ref(as_bitmask), w)
    x = torch.randn(3, 96, dtype=torch.bfloat16)  # K = 96: 1 step of 64 and 8 tail groups (dpbf16), 6 of 16, 12 of 8
    for impl in IMPLS:
        y = extension.decode24_linear(x, packed.values, bits, None, True, torch.float32, impl)
        assert rel_err(y, reference(x, w)) < 1e-5, impl
    if hasattr(extension, "sparse24_pack"):  # the 'bitmask' format of tfprune.sparse runs as it is
        values, meta, ok = extension.sparse24_pack(w, "bitmask")
        assert bool(ok) and torch.equal(meta, bits)
        y = extension.decode24_linear(x, values, meta, None, True, torch.float32, "auto")
        assert rel_err(y, reference(x, w)) < 1e-5


@needs_ext
def test_dpbf16_decodes_malformed_bitmask_nibbles_as_the_unpacker():
    """A bitmask nibble without two bits (one column or none; checkpoints with such nibbles are refused at load)
    names one column twice: in its 64-column steps the dpbf16 kernel multiplies it by the group's first value
    only (it zeroes the second lane of x it gathers), as the C++ unpacker and the expand kernel decode it.
    K = 192: three full steps, no tail (the scalar tail loop adds both values, like the portable kernel)."""
    if "dpbf16" not in IMPLS:
        pytest.skip("no AVX512_BF16 on this CPU")
    g = torch.Generator().manual_seed(3)
    values = torch.randn(24, 96, generator=g).to(torch.bfloat16)
    bits = torch.randint(0, 256, (24, 24), generator=g, dtype=torch.uint8)
    bits[0] = torch.tensor([0x11, 0x00, 0x84, 0x20] * 6, dtype=torch.uint8)  # 1 bit, none, 1 bit per nibble
    dense = decode24.unpack(decode24.Decode24Weight(values, bits, (24, 192), bitmask=True))
    x = torch.randn(2, 192, dtype=torch.bfloat16)
    for impl in ("dpbf16", "expand"):
        y = extension.decode24_linear(x, values, bits, None, True, torch.float32, impl)
        assert rel_err(y, reference(x, dense)) < 1e-5, impl


@needs_ext
def test_cpu_linear_errors():
    w = sparse24(16, 64)
    packed = decode24.pack(w)
    v, c = packed.values, packed.codes
    x17 = torch.randn(17, 64)
    with pytest.raises(decode24.DecodeUnsupported, match="M=17 rows"):
        decode24.linear(x17, packed)
    assert "M=17" in decode24.unsupported_reason(x17, packed)
    with pytest.raises(RuntimeError, match="M=17 rows; the decode kernel takes 1..16"):
        extension.decode24_linear(x17, v, c, None, False, None, "auto")
    with pytest.raises(RuntimeError, match="x has 60 features"):
        extension.decode24_linear(torch.randn(1, 60), v, c, None, False, None, "auto")
    with pytest.raises(RuntimeError, match="codes"):
        extension.decode24_linear(torch.randn(1, 64), v, c[:, :-1].contiguous(), None, False, None, "auto")
    with pytest.raises(RuntimeError, match="bias must be"):
        extension.decode24_linear(torch.randn(1, 64), v, c, torch.zeros(3), False, None, "auto")
    with pytest.raises(RuntimeError, match="impl must be"):
        extension.decode24_linear(torch.randn(1, 64), v, c, None, False, None, "fast")
    with pytest.raises(RuntimeError, match="x must be bfloat16, float16 or float32"):
        extension.decode24_linear(torch.ones(1, 64, dtype=torch.int32), v, c, None, False, None, "auto")
    if "gather" in IMPLS:
        with pytest.raises(RuntimeError, match="gather' takes M <= 4"):
            extension.decode24_linear(torch.randn(5, 64), v, c, None, False, None, "gather")
    if "dpbf16" in IMPLS:
        with pytest.raises(RuntimeError, match="dpbf16' takes bfloat16 x and values"):
            extension.decode24_linear(torch.randn(2, 64), v, c, None, False, None, "dpbf16")
    assert decode24.unsupported_reason(torch.randn(2, 64, dtype=torch.float64), packed) is not None
    assert decode24.linear_ref(torch.randn(2, 64), packed).shape == (2, 16)


def test_max_rows_override(monkeypatch):
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "3")
    assert decode24.max_rows("cpu") == 3
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "99")
    assert decode24.max_rows("cpu") == decode24.MAX_ROWS
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "x")
    with pytest.raises(ValueError, match="not an integer"):
        decode24.max_rows("cpu")
    monkeypatch.delenv("TFPRUNE_DECODE_MAX_ROWS")
    assert decode24.max_rows("cpu") == decode24.DEFAULT_MAX_ROWS[f"cpu-{ISA}"]
    # against unpacking the weight on every call (no 2:4 GEMM on the device), every winning kernel takes all 16 rows
    expected = decode24.MAX_ROWS if decode24.DEFAULT_MAX_ROWS[f"cpu-{ISA}"] else 0
    assert decode24.max_rows("cpu", dense_available=False) == expected


@needs_ext
def test_sparse_linear_on_cpu_takes_up_to_16_rows_on_the_decode_kernel(monkeypatch):
    sparse = pytest.importorskip("tfprune.sparse")
    monkeypatch.delenv("TFPRUNE_DECODE_MAX_ROWS", raising=False)
    if not decode24.DEFAULT_MAX_ROWS[f"cpu-{ISA}"]:
        pytest.skip("portable CPU kernel: the dispatch never picks it")
    linear = torch.nn.Linear(64, 32, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(sparse24(32, 64))
    module = sparse.SparseLinear.from_linear(linear, format="bitmask")
    calls = []
    original = decode24.run  # the forward's unchecked entry (path() asked unsupported_reason once)
    monkeypatch.setattr(decode24, "run", lambda *a, **k: calls.append(a[0].shape[0]) or original(*a, **k))
    for rows in (12, 16, 17):
        with torch.no_grad():
            y = module(torch.randn(rows, 64, dtype=torch.bfloat16))
        assert y.shape == (rows, 32)
    assert calls == [12, 16]


# ------------------------------------------------------------------------------------- SparseLinear


@needs_ext
@pytest.mark.parametrize("fmt", ["cutlass", "bitmask"])
def test_sparse_linear_dispatch(fmt, monkeypatch):
    from tfprune import sparse

    linear = torch.nn.Linear(128, 64).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(sparse24(64, 128))
        linear.weight[0, :8] = torch.tensor([0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 4.0])  # bitmask: two a group
    module = sparse.SparseLinear.from_linear(linear, format=fmt)
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "4")
    calls = []
    original = decode24.run
    monkeypatch.setattr(decode24, "run", lambda *a, **k: calls.append(a[0].shape) or original(*a, **k))
    for shape in [(1, 128), (2, 2, 128), (5, 128), (20, 128)]:
        x = torch.randn(*shape, dtype=torch.bfloat16)
        assert module.path(x) == ("decode" if x.numel() // 128 <= 4 else "dense")
        with torch.no_grad():
            y = module(x)
        assert y.shape == (*shape[:-1], 64)
        assert rel_err(y, reference(x, linear.weight, linear.bias)) < 4e-3
    assert calls == [(1, 128), (2, 2, 128)]  # 5 and 20 rows: above the crossover, the dense path
    if fmt == "bitmask":
        assert module._decoded.codes.data_ptr() == module.meta.data_ptr()  # read in place
    else:  # the codes come from the CUTLASS meta (no dense copy): torch's meta before its reordering
        assert torch.equal(module._decoded.codes, decode24.pack_ref(linear.weight.detach()).codes)
    assert module._decoded.values.data_ptr() == module.values.data_ptr()


@needs_ext
def test_sparse_linear_remembered_path_follows_settings_dtype_and_backend(monkeypatch):
    """path() is remembered per call shape; a changed crossover setting, a cast of the module and another
    backend are each seen at once, and prefills of any length share one entry."""
    from tfprune import sparse

    linear = torch.nn.Linear(128, 64, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(sparse24(64, 128))
    module = sparse.SparseLinear.from_linear(linear, format="bitmask")
    x = torch.randn(1, 128, dtype=torch.bfloat16)
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "4")
    expected = "decode"
    assert module.path(x) == expected
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "0")
    assert module.path(x) == "dense"
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "4")
    assert module.path(x) == expected
    module.float()  # a cast forgets every remembered path; fp32 values with bf16 x decode too
    assert not module._paths
    with torch.no_grad():
        assert module.path(x) == expected and rel_err(module(x), reference(x, linear.weight)) < 4e-3
    module.to(torch.bfloat16)
    assert not module._paths and module.path(x) == expected
    module.backend = "dense"
    assert module.path(torch.randn(40, 128, dtype=torch.bfloat16)) == "dense"
    for rows in range(17, 60):
        module.path(torch.randn(rows, 128, dtype=torch.bfloat16))
    assert len(module._paths) <= 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows,cols", [(32, 64), (96, 320), (64, 4096), (2080, 32)])
def test_codes_from_cutlass_meta_is_pack_ref(dtype, rows, cols):
    """The decode codes derived from a 'cutlass' weight's reordered meta (blocks of rows; 2080 rows: a partial
    last block of 32) are exactly decode24.pack_ref's, torch's fixed codes for groups with fewer non-zeros included."""
    from tfprune import sparse

    w = sparse24(rows, cols, dtype)
    meta = sparse.pack(w, "cutlass").meta
    codes = decode24.codes_from_cutlass_meta(meta, (rows, cols), block_rows=32 if rows < 2000 else 1024)  # 2080: a partial last block
    assert torch.equal(codes, decode24.pack_ref(w).codes)
    with pytest.raises(ValueError, match="int16"):
        decode24.codes_from_cutlass_meta(meta.int(), (rows, cols))


# ------------------------------------------------------------------------------------ stored crossovers


@pytest.fixture
def crossover_file(tmp_path, monkeypatch):
    from tfprune import decode_crossover

    path = tmp_path / "cache" / "decode-crossover.json"
    monkeypatch.setenv(decode_crossover.ENV, str(path))
    monkeypatch.delenv("TFPRUNE_DECODE_MAX_ROWS", raising=False)
    decode_crossover.reload()
    yield path
    decode_crossover.reload()


def test_stored_crossover_is_read_by_max_rows(crossover_file, monkeypatch):
    from tfprune import decode_crossover

    default = decode24.DEFAULT_MAX_ROWS[f"cpu-{ISA}"]
    assert decode_crossover.lookup("cpu") is None and decode24.max_rows("cpu") == default
    stored = 3 if default != 3 else 5
    path = decode_crossover.store("cpu", stored, {"against": "dense F.linear", "ratios": {"1": 1.9}})
    assert path == crossover_file
    record = json.loads(crossover_file.read_text())
    key = decode_crossover.device_key("cpu")
    assert key.startswith(f"cpu:{ISA}:") and record["schema"] == 1
    assert record["devices"][key]["max_rows"] == stored and record["devices"][key]["against"] == "dense F.linear"
    assert decode24.max_rows("cpu") == stored
    assert decode24.max_rows("cpu", dense_available=False) == decode24.MAX_ROWS
    monkeypatch.setenv("TFPRUNE_DECODE_MAX_ROWS", "2")  # the environment still wins
    assert decode24.max_rows("cpu") == 2
    monkeypatch.delenv("TFPRUNE_DECODE_MAX_ROWS")
    decode_crossover.store("cpu", 0)  # replaced, and 0 means: never the decode kernel, even against unpacking
    assert decode24.max_rows("cpu") == 0 and decode24.max_rows("cpu", dense_available=False) == 0
    other = {"schema": 1, "devices": {"cuda:NVIDIA H200:sm_90": {"max_rows": 8}, key: {"max_rows": 0}}}
    crossover_file.write_text(json.dumps(other))
    decode_crossover.reload()
    decode_crossover.store("cpu", 4)  # other devices' records are kept
    assert json.loads(crossover_file.read_text())["devices"]["cuda:NVIDIA H200:sm_90"]["max_rows"] == 8


def test_crossover_store_off_unreadable_and_bad_values(crossover_file, monkeypatch):
    from tfprune import decode_crossover

    crossover_file.parent.mkdir(parents=True)
    crossover_file.write_text("{not json")
    assert decode_crossover.lookup("cpu") is None  # unreadable: the defaults
    crossover_file.write_text(json.dumps({"schema": 99, "devices": {decode_crossover.device_key("cpu"): {"max_rows": 1}}}))
    decode_crossover.reload()
    assert decode_crossover.lookup("cpu") is None  # another schema: ignored
    with pytest.raises(ValueError, match="non-negative int"):
        decode_crossover.store("cpu", -1)
    monkeypatch.setenv(decode_crossover.ENV, "none")
    assert decode_crossover.store_path() is None and decode_crossover.store("cpu", 2) is None
    monkeypatch.delenv(decode_crossover.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(crossover_file.parent))
    assert decode_crossover.store_path() == crossover_file.parent / "tfprune" / "decode-crossover.json"


# ------------------------------------------------------------------------------- Triton (interpreted)


@pytest.fixture(scope="module")
def triton_decode():
    """kernels/sparse24_decode.py, on CUDA when there is a GPU, else interpreted on CPU tensors."""
    pytest.importorskip("triton")
    from kernel_testing import DEVICE, load_kernels

    load_kernels()  # triton's own functions in interpreter mode on CPU (or a skip)
    previous = os.environ.get("TRITON_INTERPRET")
    if DEVICE == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = importlib.import_module("tfprune.kernels.sparse24_decode")
        if DEVICE == "cpu" and not module._common.INTERPRETED:
            module = importlib.reload(sys.modules["tfprune.kernels.sparse24_decode"])
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous
    return module, DEVICE


def reference64(x, w, bias=None):
    return F.linear(x.double(), w.double(), None if bias is None else bias.double())


def on(device, *tensors):
    return [t.to(device) if t is not None else None for t in tensors]


TRITON_CASES = [(1, 4, 1, None, True), (37, 100, 1, None, True), (64, 512, 16, None, False), (33, 1028, 5, 3, True),
                (100, 260, 7, 2, False), (129, 96, 3, 2, True), (7, 4100, 16, 5, False)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,k,m,split_k,bias", TRITON_CASES)
def test_triton_decode_against_float64(triton_decode, monkeypatch, dtype, n, k, m, split_k, bias):
    """Odd N, K with tails (K % 32 != 0 reads the codes as bytes, else as int32 words), M = 1..16, split-K
    partials and bias: fp32 accumulation of exact bf16/fp16 products against the float64 product."""
    kernel, device = triton_decode
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    w = sparse24(n, k, dtype)
    packed = decode24.pack_ref(w)
    x = torch.randn(m, k).to(dtype)
    b = torch.randn(n).to(dtype) if bias else None
    args = on(device, x, packed.values, packed.codes, b)
    y = kernel.sparse24_decode_linear(*args, out_dtype=torch.float32, split_k=split_k)
    ref = reference64(x, w, b)
    scale = float(reference64(x.abs(), w.abs(), None if b is None else b.abs()).abs().max())
    assert float((y.cpu().double() - ref).abs().max()) <= 2e-6 * scale
    y16 = kernel.sparse24_decode_linear(*args, split_k=split_k)
    assert y16.dtype == dtype
    if device == "cuda":  # one rounding (to nearest even) of the fp32 result
        assert torch.equal(y16, y.to(dtype))
    else:  # the interpreter rounds fp32 -> bf16 towards zero: within one unit in the last place
        ulp = y.abs() * (2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10) + 1e-30
        assert ((y16.float() - y).abs() <= ulp).all()
    assert torch.equal(kernel.unpack_ref(packed.values, packed.codes), w)


@pytest.mark.parametrize("split_k", [1, 3])
def test_triton_decode_is_bitwise_reproducible(triton_decode, monkeypatch, split_k):
    """No atomics: split-K partials are added in slice order, so every run gives the same bits (fp32 out)."""
    kernel, device = triton_decode
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    w = sparse24(70, 800, torch.bfloat16, seed=3)
    packed = decode24.pack_ref(w)
    x = (torch.randn(9, 800) * 100).to(torch.bfloat16)  # large magnitudes: a reordered sum would show
    args = on(device, x, packed.values, packed.codes, torch.randn(70).to(torch.bfloat16))
    runs = [kernel.sparse24_decode_linear(*args, out_dtype=torch.float32, split_k=split_k) for _ in range(3)]
    assert all(torch.equal(runs[0].view(torch.int32), r.view(torch.int32)) for r in runs[1:])


def test_triton_decode_gpu_plan_interpreted(triton_decode, monkeypatch):
    """The plan a 132-SM GPU launches (32 x 256 tiles, 3 stages, K split in 8 slices for N = 128 here: the
    partial workspace and the ordered reduction) run under the interpreter, against float64."""
    kernel, device = triton_decode
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    n, k = 128, 2048
    tile = kernel.plan(n, k, 132, False)
    assert (tile["BLOCK_N"], tile["BLOCK_K"], tile["NUM_STAGES"], tile["SPLIT"]) == (32, 256, 3, 8)
    w = sparse24(n, k, torch.float16, seed=5)
    packed = decode24.pack_ref(w)
    x, b = torch.randn(3, k).to(torch.float16), torch.randn(n).to(torch.float16)
    y = kernel.sparse24_decode_linear(*on(device, x, packed.values, packed.codes, b), out_dtype=torch.float32, tile=tile)
    ref = reference64(x, w, b)
    assert float((y.cpu().double() - ref).abs().max()) <= 2e-6 * float(ref.abs().max()) * 4


def test_triton_decode_plan_depends_on_the_shape_only():
    pytest.importorskip("triton")
    from tfprune.kernels.sparse24_decode import plan

    for n, k in [(4096, 4096), (11008, 4096), (4096, 11008), (14336, 4096), (28672, 8192), (1024, 4096), (16, 100)]:
        p = plan(n, k, 132, False)
        k_steps = -(-k // p["BLOCK_K"])
        assert (p["SPLIT"] - 1) * p["steps_per_split"] < k_steps <= p["SPLIT"] * p["steps_per_split"]  # none empty
        programs = -(-n // p["BLOCK_N"]) * p["SPLIT"]
        assert p["SPLIT"] == 1 or programs <= 2 * 132 + -(-n // p["BLOCK_N"])  # split only up to ~one wave
        assert plan(n, k, 132, False) == p
    assert plan(28672, 8192, 132, False)["SPLIT"] == 1 and plan(4096, 4096, 132, False)["SPLIT"] == 3
    assert plan(4096, 4096, 132, True)["SPLIT"] == 1  # interpreted: programs run one after another


def test_triton_decode_writes_a_preallocated_output(triton_decode, monkeypatch):
    kernel, device = triton_decode
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    w = sparse24(40, 64, torch.bfloat16)
    packed = decode24.pack_ref(w)
    x = torch.randn(2, 64).to(torch.bfloat16)
    out = torch.full((2, 40), float("nan"), device=device)
    for split in (1, 2):
        y = kernel.sparse24_decode_linear(*on(device, x, packed.values, packed.codes), out=out, split_k=split)
        assert y is out and rel_err(out.cpu(), reference(x, w)) < 1e-5
    with pytest.raises(ValueError, match="out must be"):
        kernel.sparse24_decode_linear(*on(device, x, packed.values, packed.codes), out=out[:, :39])


def test_triton_decode_bitmask_noncontiguous_and_errors(triton_decode, monkeypatch):
    kernel, device = triton_decode
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    w = sparse24(24, 64, torch.float16)
    w[0, :8] = torch.tensor([0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 0.0, 4.0])
    w[-1, -4:] = torch.tensor([0.0, 2.0, 0.0, 5.0])
    packed = decode24.pack_ref(w)
    x = torch.randn(64, 3, dtype=torch.float16).t()  # non-contiguous [3, 64]
    y = kernel.sparse24_decode_linear(x.to(device), packed.values.to(device), bitmask_of(w).to(device), bitmask=True,
                                      out_dtype=torch.float32)
    assert rel_err(y.cpu(), reference(x, w)) < 1e-3
    v, c = packed.values.to(device), packed.codes.to(device)
    with pytest.raises(ValueError, match="M=17 rows"):
        kernel.sparse24_decode_linear(torch.randn(17, 64, dtype=torch.float16, device=device), v, c)
    with pytest.raises(ValueError, match="fp16/bf16"):
        kernel.sparse24_decode_linear(torch.randn(2, 64, device=device), v, c)
    with pytest.raises(ValueError, match="codes"):
        kernel.sparse24_decode_linear(torch.randn(2, 64, dtype=torch.float16, device=device), v, c[:, :4])


def test_decode24_triton_path_checks_bias_and_out_then_launches(triton_decode, monkeypatch):
    """decode24.linear's CUDA branch (triton_linear: no weight checks, the weight was validated once), run on
    CPU tensors under the interpreter when there is no GPU."""
    kernel, device = triton_decode
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    w = sparse24(96, 4096, torch.bfloat16, seed=2)  # K % 32 == 0: the codes as int32 words
    packed = decode24.pack_ref(w).to(device)
    x = torch.randn(5, 4096).to(torch.bfloat16)
    bias = torch.randn(96).to(torch.bfloat16)
    xd, bd = x.to(device), bias.to(device)
    y = decode24.triton_linear(xd, packed, bd, torch.float32)
    ref = reference64(x, w, bias)
    assert float((y.cpu().double() - ref).abs().max()) <= 2e-6 * float(reference64(x.abs(), w.abs()).max())
    out = torch.empty(5, 96, dtype=torch.bfloat16, device=device)
    assert decode24.triton_linear(xd, packed, bd, out=out) is out
    with pytest.raises(ValueError, match="bias must be"):
        decode24.triton_linear(xd, packed, bd[:-1])
    with pytest.raises(ValueError, match="out_dtype must be"):
        decode24.triton_linear(xd, packed, None, torch.float64)
    with pytest.raises(ValueError, match="out_dtype must be"):
        decode24.triton_linear(xd, packed, None, torch.float32, out=out)
