"""Channel statistics against an independent float64 computation."""
import pytest
import torch

from tfprune import ops
from tfprune.errors import NonFiniteActivationError
from tfprune.stats import ChannelStats


def stats_float64(x, tau, mask=None):
    x = x.double() if mask is None else x.double()[mask]
    return (x**2).sum(0), x.abs().max(0).values if len(x) else torch.zeros(x.shape[1]), (x.abs() > tau).sum(0), len(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (127, 31)])
def test_channel_stats_match_float64(dtype, shape):
    x = (torch.randn(shape) * 4).to(dtype)
    mask = torch.rand(shape[0]) > 0.3
    mask[0] = True
    sumsq, maxabs, count, n = ops.channel_stats(x, 3.0, mask)
    ref_sumsq, ref_max, ref_count, ref_n = stats_float64(x, 3.0, mask)
    torch.testing.assert_close(sumsq.double(), ref_sumsq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maxabs.double(), ref_max)
    assert torch.equal(count, ref_count)
    assert int(n) == ref_n


def test_running_stats_accumulate_over_batches_in_float64():
    batches = [torch.randn(50, 16) for _ in range(4)]
    stats = ChannelStats.empty(16, tau=1.0)
    for batch in batches:
        stats.update(batch)
    everything = torch.cat(batches)
    ref_sumsq, ref_max, ref_count, ref_n = stats_float64(everything, 1.0)
    assert stats.sumsq.dtype == torch.float64
    torch.testing.assert_close(stats.sumsq, ref_sumsq, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.norm, ref_sumsq.sqrt(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.maxabs.double(), ref_max)
    assert torch.equal(stats.count, ref_count) and int(stats.n) == ref_n


def test_fp16_values_near_the_limit_do_not_overflow():
    x = torch.full((64, 3), 60000.0, dtype=torch.float16)
    sumsq, maxabs, _, _ = ops.channel_stats(x)
    assert torch.isfinite(sumsq).all()
    torch.testing.assert_close(sumsq.double(), torch.full((3,), 64 * 60000.0**2, dtype=torch.float64), rtol=1e-6, atol=0)


def test_padding_is_excluded():
    x = torch.randn(10, 4)
    x[7:] = 1000.0
    mask = torch.arange(10) < 7
    sumsq, maxabs, count, n = ops.channel_stats(x, 6.0, mask)
    assert int(n) == 7 and float(maxabs.max()) < 1000 and int(count.sum()) == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_activations_are_reported(bad):
    stats = ChannelStats.empty(5, tau=6.0)
    x = torch.randn(8, 5)
    x[3, 2] = bad
    stats.update(x)
    with pytest.raises(NonFiniteActivationError, match="layers.0.q_proj.*channels \\[2\\]"):
        stats.check_finite("layers.0.q_proj")


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="tokens, channels"):
        ops.channel_stats(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="token_mask"):
        ops.channel_stats(torch.randn(4, 3), 6.0, torch.ones(5, dtype=torch.bool))
