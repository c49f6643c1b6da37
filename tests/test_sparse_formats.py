"""2:4 packing (tfprune._C and the torch references) against the formats' owners: torch's CUTLASS conversion
and compressed-tensors 0.14.0's sparse-24-bitmask compressor, bit for bit."""
import pytest
import torch
from torch.sparse._semi_structured_conversions import (sparse_semi_structured_from_dense_cutlass,
                                                       sparse_semi_structured_to_dense_cutlass)

from tfprune import sparse
from tfprune._ext import extension
from tfprune.sparse import formats
from tfprune.sparse.formats import PackedWeight, SparseFormatError

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
needs_ext = pytest.mark.skipif(extension is None, reason="tfprune._C not built")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(INT_VIEW[t.element_size()])


def assert_bits_equal(a: torch.Tensor, b: torch.Tensor):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


def random_nm(rows, cols, dtype, n=2, m=4, seed=0):
    """A random n:m weight with every kind of group: n non-zeros, fewer (1 or 0), -0.0 among the zeros."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    keep = (torch.rand(rows, cols // m, m, generator=g).argsort(-1) < n).reshape(rows, cols)
    keep &= torch.rand(rows, cols, generator=g) > 0.25  # some groups with fewer than n
    keep[: max(1, rows // 8), : 2 * m] = False  # whole all-zero groups
    w = w.masked_fill(~keep, 0.0)
    if dtype == torch.int8:
        w = (w * 60).round().clamp(-128, 127)
        w[keep & (w == 0)] = 1
        return w.to(torch.int8)
    w = w.to(dtype)
    negative_zero = ~keep & (torch.rand(rows, cols, generator=g) < 0.4)
    w[negative_zero] = -0.0
    return w


CUTLASS_CASES = [(torch.float16, 32, 32), (torch.float16, 96, 160), (torch.bfloat16, 64, 224),
                 (torch.bfloat16, 160, 96), (torch.float32, 32, 16), (torch.float32, 96, 48),
                 (torch.int8, 16, 64), (torch.int8, 48, 192)]


@pytest.mark.parametrize("impl", ["ext", "ref"])
@pytest.mark.parametrize("dtype,rows,cols", CUTLASS_CASES)
def test_cutlass_matches_torch(impl, dtype, rows, cols):
    if impl == "ext" and extension is None:
        pytest.skip("tfprune._C not built")
    n, m = (1, 2) if dtype == torch.float32 else (2, 4)
    w = random_nm(rows, cols, dtype, n, m, seed=rows + cols)
    values, meta = sparse_semi_structured_from_dense_cutlass(w)
    if impl == "ext":
        packed = sparse.pack(w, "cutlass")
        ours_values, ours_meta = packed.values, packed.meta
        assert packed.shape == (rows, cols) and packed.dtype == dtype
    else:
        ours_values, ours_meta = formats.pack_ref(w, "cutlass")
    assert_bits_equal(ours_values, values)
    assert_bits_equal(ours_meta, meta)
    packed = PackedWeight("cutlass", (rows, cols), dtype, ours_values, ours_meta)
    dense = sparse.unpack(packed) if impl == "ext" else formats.unpack_ref(packed)
    assert dense.dtype == dtype and dense.shape == w.shape
    assert torch.equal(dense, w)  # the round trip; -0.0 that was not stored comes back as +0.0
    if dtype != torch.float32:
        assert_bits_equal(dense, sparse_semi_structured_to_dense_cutlass(values, meta))


@needs_ext
def test_cutlass_float32_unpack_keeps_bits_torch_does_not():
    """torch's float32 _to_dense_cutlass scatters through float16 and quiets the low halves that are
    signalling-NaN patterns; ours (and the reference on integer views) keeps every bit."""
    w = random_nm(32, 1024, torch.float32, 1, 2, seed=3)
    w = w.masked_fill(w == 0, 0.0)  # +0.0 only, so the round trip is bit-exact everywhere
    packed = sparse.pack(w, "cutlass")
    ours = sparse.unpack(packed)
    theirs = sparse_semi_structured_to_dense_cutlass(packed.values, packed.meta)
    assert_bits_equal(ours, w)
    assert_bits_equal(formats.unpack_ref(packed), w)
    differ = bits(ours) != bits(theirs)
    low = bits(w) & 0xFFFF
    signalling = ((low >> 10) & 0x1F == 0x1F) & (low & 0x3FF != 0) & (low & 0x200 == 0) & (w != 0)
    assert torch.equal(differ, signalling) and bool(differ.any())
    assert torch.equal(bits(theirs)[differ] ^ bits(ours)[differ], torch.full_like(bits(ours)[differ], 0x200))


BITMASK_CASES = [(torch.float16, 1, 4), (torch.float16, 7, 36), (torch.bfloat16, 33, 100), (torch.float32, 5, 12),
                 (torch.float32, 64, 64), (torch.float64, 3, 24), (torch.bfloat16, 96, 160)]


def ct_compress(w):
    from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import Sparse24BitMaskTensor

    tensor = Sparse24BitMaskTensor.from_dense(w, "2:4")
    return tensor.compressed.reshape(w.shape[0], -1), tensor.bitmask


def ct_decompress(values, bitmask, shape):
    from compressed_tensors.compressors.sparse_compressors.sparse_24_bitmask import Sparse24BitMaskTensor

    return Sparse24BitMaskTensor.from_compressed_data(torch.tensor(shape), values, bitmask).decompress()


@pytest.mark.parametrize("impl", ["ext", "ref"])
@pytest.mark.parametrize("dtype,rows,cols", BITMASK_CASES)
def test_bitmask_matches_compressed_tensors(impl, dtype, rows, cols):
    pytest.importorskip("compressed_tensors")
    if impl == "ext" and extension is None:
        pytest.skip("tfprune._C not built")
    w = random_nm(rows, cols, dtype, seed=rows * cols)
    values, bitmask = ct_compress(w)
    if impl == "ext":
        packed = sparse.pack(w, "bitmask")
    else:
        packed = PackedWeight("bitmask", (rows, cols), dtype, *formats.pack_ref(w, "bitmask"))
    # every group, including those with fewer than two non-zeros (torch's topk tie order over |0|)
    assert_bits_equal(packed.values, values)
    assert torch.equal(packed.meta, bitmask)
    assert torch.equal(ct_decompress(packed.values, packed.meta, [rows, cols]), w)  # -0.0 not kept: +0.0
    dense = sparse.unpack(packed) if impl == "ext" else formats.unpack_ref(packed)
    assert_bits_equal(dense, ct_decompress(values, bitmask, [rows, cols]))


@needs_ext
def test_bitmask_float8():
    pytest.importorskip("compressed_tensors")
    w = random_nm(16, 64, torch.float32, seed=5).to(torch.float8_e4m3fn)
    w.view(torch.uint8)[w.view(torch.uint8) == 0x80] = 0  # compressed-tensors ranks fp8 -0.0 below +0.0 (int8 abs)
    values, bitmask = ct_compress(w)
    packed = sparse.pack(w, "bitmask")
    assert_bits_equal(packed.values, values)
    assert torch.equal(packed.meta, bitmask)
    assert_bits_equal(sparse.unpack(packed), w)


@needs_ext
def test_every_group_pattern():
    """All 16 non-zero patterns of a group (with -0.0 zeros) in both formats, against the owners."""
    pytest.importorskip("compressed_tensors")
    patterns = [p for p in range(16) if bin(p).count("1") <= 2]
    rows = torch.zeros(32, 32, dtype=torch.float16)
    for i in range(32 * 8):
        row, group = divmod(i, 8)
        p = patterns[i % len(patterns)]
        for j in range(4):
            rows[row, 4 * group + j] = (1 + i % 7) * (-1) ** j if p >> j & 1 else (-0.0 if (i + j) % 2 else 0.0)
    values, meta = sparse_semi_structured_from_dense_cutlass(rows)
    packed = sparse.pack(rows, "cutlass")
    assert_bits_equal(packed.values, values)
    assert torch.equal(packed.meta, meta)
    ct_values, ct_bitmask = ct_compress(rows)
    packed = sparse.pack(rows, "bitmask")
    assert_bits_equal(packed.values, ct_values)
    assert torch.equal(packed.meta, ct_bitmask)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bitmask_to_cutlass(dtype):
    w = random_nm(96, 160, dtype, seed=11)
    packed = sparse.pack(w, "bitmask")
    converted = sparse.to_cutlass(packed)
    assert converted.format == "cutlass" and converted.values is packed.values
    assert torch.equal(converted.meta, formats.bitmask_to_cutlass_meta_ref(packed.meta, block_rows=32))
    assert_bits_equal(sparse.unpack(converted), sparse.unpack(packed))
    assert_bits_equal(sparse_semi_structured_to_dense_cutlass(converted.values.view(torch.int16),
                                                              converted.meta).view(dtype), sparse.unpack(packed))
    # where every group holds two non-zeros, it is torch's own packing
    full = random_nm(64, 64, dtype, seed=12)
    full = torch.where(full == 0, torch.ones_like(full), full)
    keep = torch.rand(64, 16, 4, generator=torch.Generator().manual_seed(1)).argsort(-1) < 2
    full = full.masked_fill(~keep.reshape(64, 64), 0.0)
    values, meta = sparse_semi_structured_from_dense_cutlass(full)
    converted = sparse.to_cutlass(sparse.pack(full, "bitmask"))
    assert_bits_equal(converted.values, values)
    assert torch.equal(converted.meta, meta)


@needs_ext
def test_large_matches_reference():
    """A larger matrix, so the vectorized rows and OpenMP chunks of the C++ packer are exercised."""
    w = random_nm(128, 1024, torch.bfloat16, seed=7)
    assert torch.equal(sparse.pack(w, "cutlass").meta, sparse_semi_structured_from_dense_cutlass(w)[1])
    packed = sparse.pack(w, "bitmask")
    values, bitmask = formats.pack_ref(w, "bitmask")
    assert_bits_equal(packed.values, values)
    assert torch.equal(packed.meta, bitmask)
    assert_bits_equal(sparse.unpack(packed), formats.unpack_ref(packed))
    assert torch.equal(sparse.unpack(packed), w)


def test_not_24_names_first_row_and_group():
    w = random_nm(64, 64, torch.float16, seed=1)
    w[37, 20:24] = torch.tensor([1.0, 2.0, 0.0, 3.0])
    w[50, 0:4] = 1.0
    for format in ("cutlass", "bitmask"):
        with pytest.raises(SparseFormatError, match=r"not 2:4 sparse: row 37, group 5 \(columns 20-23\) holds 3"):
            sparse.pack(w, format)
    assert sparse.first_violation(w) == (37, 5)
    with pytest.raises(SparseFormatError, match=r"not 1:2 sparse: row 0, group 1 .*float32 is 1:2"):
        sparse.pack(torch.tensor([[0.0, 0.0, 1.0, 2.0] * 4] * 32), "cutlass")


@pytest.mark.parametrize("weight,format,message", [
    (torch.zeros(32), "cutlass", "must be 2-D"),
    (torch.zeros(2, 32, 32), "bitmask", "must be 2-D"),
    (torch.zeros(32, 48, dtype=torch.float16), "cutlass", "multiple of 32, got \\(32, 48\\)"),
    (torch.zeros(33, 64, dtype=torch.float16), "cutlass", "out_features a positive multiple of 32"),
    (torch.zeros(16, 32, dtype=torch.int8), "cutlass", "in_features a positive multiple of 64"),
    (torch.zeros(4, 6), "bitmask", "multiple of 4"),
    (torch.zeros(0, 8), "bitmask", "needs in_features a positive multiple of 4, got \\(0, 8\\)"),
    (torch.zeros(32, 32, dtype=torch.float64), "cutlass", "supports float16, bfloat16, float32, int8; got float64"),
    (torch.zeros(4, 8, dtype=torch.int8), "bitmask", "got int8"),
    (torch.zeros(32, 32, dtype=torch.float16), "csr", "unknown 2:4 format 'csr'"),
])
def test_bad_input(weight, format, message):
    with pytest.raises(SparseFormatError, match=message):
        sparse.pack(weight, format)


def test_non_contiguous_input_is_made_contiguous():
    w = random_nm(64, 32, torch.float16, seed=2)
    transposed = w.t().contiguous().t()
    assert not transposed.is_contiguous()
    assert torch.equal(sparse.pack(transposed, "cutlass").meta, sparse.pack(w, "cutlass").meta)


def test_packed_weight_checks_and_bad_bitmask():
    w = random_nm(32, 32, torch.float16, seed=4)
    packed = sparse.pack(w, "bitmask")
    with pytest.raises(SparseFormatError, match="meta must be uint8"):
        PackedWeight("bitmask", (32, 32), torch.float16, packed.values, packed.meta[:, :2])
    with pytest.raises(SparseFormatError, match="values must be float16"):
        PackedWeight("bitmask", (32, 32), torch.float16, packed.values.float(), packed.meta)
    broken = packed.meta.clone()
    broken[3, 1] = 0x07  # three bits in group 2 of row 3
    bad = PackedWeight("bitmask", (32, 32), torch.float16, packed.values, broken)
    with pytest.raises(SparseFormatError, match="row 3, group 2 does not mark exactly two"):
        sparse.unpack(bad)
    with pytest.raises(SparseFormatError, match="row 3, group 2"):
        formats.unpack_ref(bad)
    with pytest.raises(SparseFormatError, match="row 3, group 2"):
        sparse.to_cutlass(bad)
    with pytest.raises(SparseFormatError, match="float16/bfloat16"):
        sparse.to_cutlass(sparse.pack(random_nm(32, 32, torch.float32, seed=4), "bitmask"))
    assert packed.nbytes == 32 * 16 * 2 + 32 * 4 and set(packed.tensors) == {"compressed", "bitmask"}


@needs_ext
@pytest.mark.parametrize("format", ["cutlass", "bitmask"])
def test_without_extension_same_result(monkeypatch, format):
    """Where tfprune._C is missing (or lacks CUDA for a CUDA tensor) the torch references do the work."""
    w = random_nm(64, 64, torch.bfloat16, seed=9)
    native = sparse.pack(w, format)
    monkeypatch.setattr(formats, "extension", None)
    packed = sparse.pack(w, format)
    assert_bits_equal(packed.values, native.values)
    assert torch.equal(packed.meta, native.meta)
    assert_bits_equal(sparse.unpack(packed), sparse.unpack(native))
    assert torch.equal(sparse.to_cutlass(packed).meta, sparse.to_cutlass(native).meta)
    w[3, 8:12] = 1.0
    with pytest.raises(SparseFormatError, match="row 3, group 2"):
        sparse.pack(w, format)
