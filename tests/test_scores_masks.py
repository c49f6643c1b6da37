"""Scores and masks against float64 references and hand-computed cases that tell rival formulas apart."""
import math

import pytest
import torch

from tfprune import masks, ops
from tfprune.config import ProtectRule
from tfprune.features import protected_channels, top_channels
from tfprune.stats import ChannelStats


def row_mask_float64(scores, sparsity):
    """Independent reference: per row, prune the k lowest (score, -index) pairs."""
    scores = scores.double()
    out, inp = scores.shape
    k = int(inp * sparsity)
    keep = torch.ones(out, inp, dtype=torch.bool)
    for r in range(out):
        ranked = sorted(range(inp), key=lambda j: (scores[r, j].item(), -j))
        for j in ranked[:k]:
            keep[r, j] = False
    return keep


def nm_mask_float64(scores, n, m):
    out, inp = scores.shape
    keep = torch.zeros(out, inp, dtype=torch.bool)
    for r in range(out):
        for g in range(0, inp, m):
            ranked = sorted(range(g, g + m), key=lambda j: (-scores[r, j].item(), j))
            for j in ranked[:n]:
                keep[r, j] = True
    return keep


def test_wanda_score_uses_the_norm_not_its_square():
    weight = torch.tensor([[1.0, 2.0]])
    stats = ChannelStats.empty(2, 6.0)
    stats.update(torch.tensor([[4.0, 1.0], [0.0, 1.0]]))  # norms: 4 and sqrt(2)
    score = ops.scores(weight, "wanda", norm=stats.norm)
    torch.testing.assert_close(score, torch.tensor([[4.0, 2 * math.sqrt(2)]]))
    # weights 1 and 3: |W|·‖X‖ gives 4 < 4.24 (channel 1 kept); |W|·‖X‖² would give 16 > 6 (channel 0 kept).
    score = ops.scores(torch.tensor([[1.0, 3.0]]), "wanda", norm=stats.norm)
    assert ops.row_mask(score, 0.5).tolist() == [[False, True]]


def test_contrastive_score_hand_computed():
    weight = torch.tensor([[2.0, -1.0, 1.0]])
    norm = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64)
    contrast = torch.tensor([9.0, 1.0, 0.0], dtype=torch.float64)  # unseen channel counts as 1
    score = ops.scores(weight, "contrastive", norm=norm, contrast_norm=contrast)
    torch.testing.assert_close(score, torch.tensor([[2.0, 4.0, 1.0]]))


def test_ria_score_hand_computed():
    """Relative importance: the weight's share of its row plus its share of its column, times sqrt ‖X_j‖."""
    weight = torch.tensor([[1.0, -2.0], [3.0, 4.0]])  # row sums 3, 7; column sums 4, 6
    norm = torch.tensor([4.0, 9.0], dtype=torch.float64)  # square roots 2, 3
    expected = torch.tensor([[(1 / 3 + 1 / 4) * 2, (2 / 3 + 2 / 6) * 3], [(3 / 7 + 3 / 4) * 2, (4 / 7 + 4 / 6) * 3]])
    torch.testing.assert_close(ops.scores(weight, "ria", norm=norm), expected)
    keep = ops.prune_weight_(weight.clone(), "ria", sparsity=0.5, norm=norm, apply=False)
    assert keep.tolist() == [[False, True], [False, True]]
    zero = torch.zeros(3, 4)  # all-zero rows and columns: no division by zero
    assert torch.isfinite(ops.scores(zero, "ria", norm=torch.ones(4, dtype=torch.float64))).all()


def test_magnitude_and_random_scores():
    weight = torch.randn(5, 8)
    torch.testing.assert_close(ops.scores(weight, "magnitude"), weight.abs())
    first = ops.scores(weight, "random", seed=3)
    assert torch.equal(first, ops.scores(weight, "random", seed=3))
    assert not torch.equal(first, ops.scores(weight, "random", seed=4))


def test_protected_channels_score_infinite():
    score = ops.scores(torch.randn(3, 4), "magnitude", protect=torch.tensor([False, True, False, False]))
    assert torch.isinf(score[:, 1]).all() and torch.isfinite(score[:, [0, 2, 3]]).all()


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (13, 31), (8, 64)])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_row_mask_matches_reference(shape, sparsity):
    scores = torch.randn(shape)
    keep = ops.row_mask(scores, sparsity)
    assert torch.equal(keep, row_mask_float64(scores, sparsity))
    assert ((~keep).sum(1) == int(shape[1] * sparsity)).all()


def test_row_mask_ties_keep_the_lower_index():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.5, 2.0]])
    assert ops.row_mask(scores, 0.5).tolist() == [[True, True, False, False, False, True]]


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 5)])
def test_nm_mask_matches_reference(n, m):
    scores = torch.randn(7, m * 5)
    scores[0, :m] = 1.0  # a full tie group
    keep = ops.nm_mask(scores, n, m)
    assert torch.equal(keep, nm_mask_float64(scores, n, m))
    assert (keep.reshape(7, -1, m).sum(-1) == n).all()
    assert keep[0, :m].tolist() == [True] * n + [False] * (m - n)


def test_nm_mask_bad_input():
    with pytest.raises(ValueError, match="not a multiple of m=4"):
        ops.nm_mask(torch.randn(2, 6), 2, 4)
    with pytest.raises(ValueError, match="0 < n < m"):
        ops.nm_mask(torch.randn(2, 8), 4, 4)


def test_apply_mask_writes_positive_zero():
    weight = torch.tensor([[-1.0, -2.0, 3.0, -4.0]])
    ops.apply_mask_(weight, torch.tensor([[False, True, True, False]]))
    assert weight.tolist() == [[0.0, -2.0, 3.0, 0.0]]
    assert not torch.signbit(weight[0, 0]) and not torch.signbit(weight[0, 3])


def test_nm_violations_count_groups_with_too_many_protected_channels():
    protect = torch.tensor([True, True, True, False, False, False, False, False])
    assert masks.nm_violations(protect, 2, 4, rows=5) == 5
    assert masks.nm_violations(protect, 3, 4, rows=5) == 0


def test_protect_rules():
    stats = ChannelStats.empty(6, tau=6.0)
    x = torch.zeros(100, 6)
    x[:10, 1] = 7.0   # 10% of tokens over 6 -> int8 rule (6%) protects it
    x[:5, 2] = 50.0   # 5% only -> not protected by int8, but the largest norm
    x[:, 4] = 0.5
    stats.update(x)
    int8 = protected_channels(stats, ProtectRule.parse("int8:6.0"))
    assert int8.nonzero().flatten().tolist() == [1]
    topk = protected_channels(stats, ProtectRule.parse("topk:20%"))  # ceil(0.2 * 6) = 2 channels
    assert topk.nonzero().flatten().tolist() == [1, 2]
    assert [c for c, _ in top_channels(stats, 3)] == [2, 1, 4]


def test_owl_sparsities_hand_computed():
    sparsities = masks.owl_sparsities([0.1, 0.2, 0.3], sparsity=0.5, lam=0.1)
    # D rescaled to [0, 0.2] = [0, 0.1, 0.2]; mean density 0.5 -> densities [0.4, 0.5, 0.6]
    assert sparsities == pytest.approx([0.6, 0.5, 0.4])
    assert masks.outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 10.0])], 2.0) == 0.25
