"""Score, N:M and per-row selection kernels (kernels/scores.py, nm_prune.py, row_prune.py) against the
references: identical masks, identical weights (+0.0 zeros), exact counts; interpreted on CPU."""
import numpy as np
import pytest
import torch

from kernel_testing import DEVICE, interpreter, load_kernels  # noqa: F401  (autouse fixture)
from tfprune.masks import nm_mask_ref, outlier_ratio, row_mask_ref
from tfprune.scores import scores_ref as engine_scores_ref

KERNELS = load_kernels()
SC, NM, ROW, COMMON = KERNELS["scores"], KERNELS["nm_prune"], KERNELS["row_prune"], KERNELS["_common"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def weight_and_vectors(rows, cols, dtype, protect_every=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g).to(dtype)
    factor = torch.rand(cols, generator=g, dtype=torch.float64) * 10
    protect = torch.zeros(cols, dtype=torch.bool)
    if protect_every:
        protect[::protect_every] = True
    return weight.to(DEVICE), factor.to(DEVICE), protect.to(DEVICE)


def packbits(keep):
    return torch.from_numpy(np.packbits(keep.cpu().numpy(), axis=1, bitorder="little"))


def check_pruned(pruned, original, keep):
    """pruned == original where kept, +0.0 where not (bitwise)."""
    expected = original.masked_fill(~keep, 0.0)
    assert torch.equal(pruned.view(torch.int16 if pruned.element_size() == 2 else torch.int32),
                       expected.view(torch.int16 if expected.element_size() == 2 else torch.int32))


# ----------------------------------------------------------------------------------------- scores


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "contrastive"])
def test_scores_are_the_reference_bit_for_bit(method, dtype):
    weight, norm, protect = weight_and_vectors(13, 37, dtype, protect_every=5)
    contrast = norm.flip(0).clone()
    contrast[3] = 0.0  # unseen by the contrast stream: counts as 1
    factor = SC.channel_factor(method, norm, contrast, weight.device)
    got = SC.scores(weight, factor, protect)
    expected = engine_scores_ref(weight, method, norm, contrast, protect)
    assert torch.equal(got, expected)
    assert torch.equal(SC.scores(weight.t().contiguous().t(), factor, protect), expected)  # strided


def test_score_stats_sum_and_count():
    weight, factor, _ = weight_and_vectors(37, 131, torch.float16)
    f32 = factor.float()
    total, over = SC.score_stats(weight, f32, threshold=4.0)
    ref_total, ref_over = SC.score_stats_ref(weight.cpu(), f32.cpu(), threshold=4.0)
    torch.testing.assert_close(total.cpu(), ref_total, rtol=1e-6, atol=0)
    assert int(over) == int(ref_over) > 0


# ----------------------------------------------------------------------------------------- N:M

NM_SHAPES = [(1, 4), (3, 8), (13, 36), (31, 132)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", NM_SHAPES)
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 3)])
def test_nm_prune_matches_reference(shape, n, m, dtype):
    rows, cols = shape
    if cols % m:
        cols = cols // m * m + m
    weight, factor, protect = weight_and_vectors(rows, cols, dtype, protect_every=7)
    factor = factor.float()
    pruned = weight.clone()
    result = NM.nm_prune_(pruned, n, m, factor, protect)
    ref_weight = weight.clone()
    keep = NM.nm_prune_ref(ref_weight, n, m, factor, protect)
    assert torch.equal(result.mask, keep)
    assert (keep.reshape(rows, -1, m).sum(-1) == n).all()
    check_pruned(pruned, weight, keep)
    bits = NM.nm_prune_(weight.clone(), n, m, factor, protect, mask_format="bits").mask
    assert torch.equal(bits.cpu(), packbits(keep))


def test_nm_ties_zero_rows_and_negative_zero():
    weight = torch.randint(-2, 3, (9, 24)).float().to(DEVICE)  # many ties, some -x == x in |W|
    weight[4] = 0.0
    weight[5] = -0.0
    pruned = weight.clone()
    keep = NM.nm_prune_(pruned, 2, 4).mask
    assert torch.equal(keep, nm_mask_ref(weight.abs(), 2, 4))
    assert torch.equal(keep[4], torch.tensor([True, True, False, False] * 6, device=DEVICE))
    assert not torch.signbit(pruned[~keep]).any()  # +0.0, never -0.0
    check_pruned(pruned, weight, keep)


def test_nm_given_scores_with_nan_inf_and_signed_zero():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(-3, 4, (11, 40), generator=g).float()
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0])
    spots = torch.rand(11, 40, generator=g) < 0.3
    scores[spots] = specials[torch.randint(0, 5, (int(spots.sum()),), generator=g)]
    for n, m in [(2, 4), (3, 8), (1, 5)]:
        keep = NM.nm_prune_(None, n, m, scores=scores.to(DEVICE), apply=False).mask
        assert torch.equal(keep.cpu(), nm_mask_ref(scores, n, m)), (n, m)


def test_nm_strided_weight_like_conv1d():
    storage = torch.randn(64, 12).to(DEVICE)  # Conv1D keeps [in, out]; the engine prunes its [out, in] view
    view = storage.t()
    factor = torch.rand(64, device=DEVICE)
    original = view.clone()
    keep = NM.nm_prune_(view, 2, 4, factor).mask
    assert torch.equal(keep, NM.nm_prune_ref(original.clone(), 2, 4, factor))
    check_pruned(storage.t(), original, keep)


def test_nm_bad_inputs_are_errors():
    weight = torch.randn(4, 10, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of m=4"):
        NM.nm_prune_(weight, 2, 4)
    with pytest.raises(ValueError, match="0 < n < m"):
        NM.nm_prune_(weight, 4, 4)
    with pytest.raises(ValueError, match="factor must be"):
        NM.nm_prune_(torch.randn(4, 8, device=DEVICE), 2, 4, torch.ones(7, device=DEVICE))
    with pytest.raises(TypeError, match="fp16/bf16/fp32"):
        NM.nm_prune_(torch.randn(4, 8, device=DEVICE).double(), 2, 4)


# ----------------------------------------------------------------------------------------- per row

ROW_SHAPES = [(1, 1), (1, 7), (5, 131), (17, 64), (3, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_row_prune_matches_reference(shape, dtype):
    rows, cols = shape
    weight, factor, protect = weight_and_vectors(rows, cols, dtype, protect_every=11)
    factor = factor.float()
    for sparsity in (0.0, 0.3, 0.5, 0.999):
        pruned = weight.clone()
        keep = ROW.row_prune_(pruned, sparsity, factor, protect).mask
        ref = ROW.row_prune_ref(weight.clone(), sparsity, factor, protect)
        assert torch.equal(keep, ref), sparsity
        assert ((~keep).sum(1) == int(cols * sparsity)).all()
        check_pruned(pruned, weight, keep)
    bits = ROW.row_prune_(weight.clone(), 0.5, factor, protect, mask_format="bits").mask
    assert torch.equal(bits.cpu(), packbits(ROW.row_prune_ref(weight.clone(), 0.5, factor, protect)))


@pytest.mark.parametrize("block_c", [None, 32])
def test_row_ties_and_specials_single_and_multi_pass(block_c):
    """Integer scores (ties everywhere), NaN/±Inf/±0 and a zero row; block_c < in runs the multi-pass path."""
    g = torch.Generator().manual_seed(2)
    scores = torch.randint(-2, 3, (7, 100), generator=g).float()
    spots = torch.rand(7, 100, generator=g) < 0.2
    specials = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0])
    scores[spots] = specials[torch.randint(0, 5, (int(spots.sum()),), generator=g)]
    scores[3] = 0.0
    scores[4] = -0.0
    for sparsity in (0.1, 0.77) if block_c else (0.1, 0.5, 0.77):
        keep = ROW.row_prune_(None, sparsity, scores=scores.to(DEVICE), apply=False, block_c=block_c).mask
        assert torch.equal(keep.cpu(), row_mask_ref(scores, sparsity)), sparsity


def test_row_multi_pass_applies_and_packs_like_single_pass():
    weight, factor, protect = weight_and_vectors(6, 203, torch.bfloat16, protect_every=9)
    factor = factor.float()
    single, multi = weight.clone(), weight.clone()
    keep = ROW.row_prune_(single, 0.6, factor, protect).mask
    bits = ROW.row_prune_(multi, 0.6, factor, protect, mask_format="bits", block_c=64).mask
    assert torch.equal(single, multi)
    assert torch.equal(bits.cpu(), packbits(keep))


def test_row_strided_weight_and_bad_inputs():
    storage = torch.randn(50, 9).to(DEVICE)
    original = storage.t().clone()
    keep = ROW.row_prune_(storage.t(), 0.5).mask
    assert torch.equal(keep, row_mask_ref(original.abs(), 0.5))
    check_pruned(storage.t(), original, keep)
    with pytest.raises(ValueError, match="sparsity must be in"):
        ROW.row_prune_(storage, 1.0)
    with pytest.raises(ValueError, match="apply=True needs the weight"):
        ROW.row_prune_(None, 0.5, scores=storage)


# ----------------------------------------------------------------------------------------- OWL, determinism


def test_outlier_count_from_the_prune_pass():
    weight, factor, _ = weight_and_vectors(19, 96, torch.float16)
    factor = factor.float()
    score = SC.scores_ref(weight.cpu(), factor.cpu())
    threshold = float(3 * score.double().mean())
    ref_total, ref_over = score.double().sum(), int((score > threshold).sum())
    for result in (NM.nm_prune_(weight.clone(), 2, 4, factor, threshold=threshold),
                   ROW.row_prune_(weight.clone(), 0.5, factor, threshold=threshold),
                   ROW.row_prune_(weight.clone(), 0.5, factor, threshold=threshold, block_c=64)):
        assert int(result.outliers) == ref_over > 0
        torch.testing.assert_close(result.score_sum.cpu(), ref_total, rtol=1e-6, atol=0)
    assert int(SC.score_stats(weight, factor, threshold=threshold)[1]) == ref_over


def test_owl_outlier_ratio_through_ops(monkeypatch):
    from tfprune import ops

    layers = [weight_and_vectors(r, c, torch.float32, seed=r) for r, c in [(8, 16), (16, 8), (5, 24)]]
    weights, norms = [w for w, _, _ in layers], [f for _, f, _ in layers]
    expected = outlier_ratio([engine_scores_ref(w.cpu(), "wanda", v.cpu()) for w, v in zip(weights, norms)], 2.0)
    monkeypatch.setenv("TFPRUNE_BACKEND", "triton")
    assert ops.outlier_ratio(weights, norms, 2.0) == pytest.approx(expected, abs=1.5 / sum(w.numel() for w in weights))
    assert expected > 0


def test_order_key_matches_torch_sort_order():
    values = torch.tensor([float("nan"), float("inf"), 3.0, 1e-45, 0.0, -0.0, -1e-45, -2.0, -float("inf")])
    keys = COMMON.order_key_ref(values)
    assert (keys[1:] <= keys[:-1]).all() and keys[4] == keys[5] and keys[0] == 2**31 - 1


def test_prune_kernels_are_deterministic():
    weight, factor, protect = weight_and_vectors(33, 96, torch.float16, protect_every=13)
    factor = factor.float()
    runs = [(NM.nm_prune_(weight.clone(), 2, 4, factor, protect, threshold=1.0),
             ROW.row_prune_(weight.clone(), 0.5, factor, protect, threshold=1.0)) for _ in range(2)]
    for first, second in zip(*runs):
        assert torch.equal(first.mask, second.mask) and torch.equal(first.score_sum, second.score_sum)
        assert torch.equal(first.outliers, second.outliers)


# ------------------------------------------------------------------------------- the GPU tile, interpreted

GPU_NM = [(1, 3), (2, 6), (3, 5), (2, 4), (5, 12)]


@pytest.mark.parametrize("mask_format", ["bool", "bits"])
@pytest.mark.parametrize("n,m", GPU_NM)
def test_nm_prune_with_the_gpu_tile(n, m, mask_format):
    """The GPU launch's tile under the interpreter (programs run one after another, so a group of M that
    spans two programs would see weights the first one already zeroed): a negative factor makes a zeroed
    weight score above every kept one, so any such read changes the mask."""
    rows, cols = 5, 1080  # 1080 = lcm(3, 5, 6, 8, 12, 24, 40) * k: groups (and bytes) straddle 128-column tiles
    weight, factor, protect = weight_and_vectors(rows, cols, torch.float32, protect_every=0, seed=m)
    factor = -(factor.float() + 0.5)
    tile = NM.plan(rows, cols, m, mask_format, interpreted=False)
    assert tile["BLOCK_C"] == 128 and tile["SPAN"] % m == 0 and (mask_format != "bits" or tile["SPAN"] % 8 == 0)
    pruned = weight.clone()
    mask = NM.nm_prune_(pruned, n, m, factor, mask_format=mask_format, tile=tile).mask
    keep = NM.nm_prune_ref(weight.clone(), n, m, factor)
    assert torch.equal(mask.cpu(), keep.cpu() if mask_format == "bool" else packbits(keep))
    check_pruned(pruned, weight, keep)
