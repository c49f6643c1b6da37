"""Channel-statistics kernel (kernels/channel_stats.py) against the float64 reference, interpreted on CPU."""
import pytest
import torch

from kernel_testing import DEVICE, equal_nan, interpreter, load_kernels  # noqa: F401  (autouse fixture)
from tfprune import ops
from tfprune.errors import NonFiniteActivationError
from tfprune.stats import ChannelStats

K = load_kernels()["channel_stats"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def buffers(channels):
    return [torch.zeros(channels, dtype=torch.float64, device=DEVICE), torch.zeros(channels, device=DEVICE),
            torch.zeros(channels, dtype=torch.int64, device=DEVICE), torch.zeros((), dtype=torch.int64, device=DEVICE)]


def run(x, tau, mask=None, splits=None, into=None):
    into = buffers(x.shape[1]) if into is None else into
    K.channel_stats_(x, tau, mask, *into, splits=splits)
    return into


def check(got, x, tau, mask=None):
    """Σx² within fp32 rounding of the float64 sum; max|x|, count and n exact."""
    ref_sum, ref_max, ref_cnt, ref_n = K.channel_stats_ref(x.cpu(), tau, None if mask is None else mask.cpu())
    sumsq, maxabs, count, n = (t.cpu() for t in got)
    tokens = max(1, int(ref_n))
    torch.testing.assert_close(sumsq, ref_sum, rtol=tokens * 2e-7 + 1e-6, atol=1e-30, equal_nan=True)
    assert equal_nan(maxabs, ref_max)
    assert torch.equal(count, ref_cnt) and int(n) == int(ref_n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (7, 13), (37, 131), (300, 3)])
@pytest.mark.parametrize("splits", [None, 3])
def test_matches_float64(shape, dtype, splits):
    x = (torch.randn(shape, device=DEVICE) * 4).to(dtype)
    mask = torch.rand(shape[0], device=DEVICE) > 0.3
    mask[0] = True
    check(run(x, 3.0, mask, splits), x, 3.0, mask)
    check(run(x, 3.0, None, splits), x, 3.0)


def test_two_stage_reduction_and_block_edges():
    """Token counts around the tile (1, block - 1, block + 1) and many chunks, channels above one block."""
    for tokens in (1, 255, 257, 513):
        x = torch.randn(tokens, 1031, device=DEVICE)
        for splits in (1, 2, 7):
            check(run(x, 1.5, splits=splits), x, 1.5)


def test_strided_rows_and_columns():
    base = torch.randn(41, 200, device=DEVICE, dtype=torch.float16)
    rows = base[:, 17:150]  # row stride 200, no copy
    assert not rows.is_contiguous()
    check(run(rows, 2.0, splits=2), rows, 2.0)
    columns = torch.randn(30, 41, device=DEVICE).t()  # [41, 30] with column stride 41
    check(run(columns, 2.0), columns, 2.0)


def test_running_buffers_accumulate_in_float64():
    batches = [torch.randn(t, 19, device=DEVICE) * 3 for t in (5, 64, 1, 33)]
    into = buffers(19)
    for i, batch in enumerate(batches):
        run(batch, 2.0, splits=1 + i % 3, into=into)
    check(into, torch.cat(batches), 2.0)


def test_fp16_near_its_limit_does_not_overflow():
    x = torch.full((300, 7), 65504.0, dtype=torch.float16, device=DEVICE)
    x[::2] *= -1
    sumsq, maxabs, count, n = run(x, 6.0, splits=2)
    assert torch.isfinite(sumsq).all()
    torch.testing.assert_close(sumsq.cpu(), torch.full((7,), 300 * 65504.0**2, dtype=torch.float64), rtol=1e-6, atol=0)
    assert (maxabs == 65504.0).all() and (count == 300).all()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("splits", [1, 3])
def test_non_finite_values_reach_the_buffers_and_are_reported(bad, splits):
    x = torch.randn(40, 6, device=DEVICE).half()
    x[17, 2] = bad
    got = run(x, 6.0, splits=splits)
    check(got, x, 6.0)
    assert not torch.isfinite(got[0][2]) and not torch.isfinite(got[1][2]) and torch.isfinite(got[1][[0, 1, 3]]).all()
    later = torch.randn(8, 6, device=DEVICE).half()
    run(later, 6.0, into=got)  # a NaN/Inf stays once seen
    assert not torch.isfinite(got[1][2])


def test_padding_tokens_are_skipped_even_when_not_finite():
    x = torch.randn(12, 5, device=DEVICE)
    x[9:] = float("nan")
    mask = torch.arange(12, device=DEVICE) < 9
    got = run(x, 6.0, mask, splits=2)
    check(got, x, 6.0, mask)
    assert torch.isfinite(got[0]).all() and int(got[3]) == 9


def test_no_real_tokens_and_no_tokens():
    x = torch.randn(6, 4, device=DEVICE)
    got = run(x, 1.0, torch.zeros(6, dtype=torch.bool, device=DEVICE))
    assert all(int(t.abs().sum()) == 0 for t in got)
    got = run(torch.empty(0, 4, device=DEVICE), 1.0)
    assert all(int(t.abs().sum()) == 0 for t in got)


def test_zero_rows_and_ties():
    x = torch.zeros(9, 10, device=DEVICE)
    x[4] = 6.0  # exactly tau: not counted (strictly greater)
    x[5] = -6.0001
    check(run(x, 6.0, splits=3), x, 6.0)


def test_deterministic():
    x = torch.randn(700, 67, device=DEVICE) * 100
    first = run(x, 2.0, splits=5)
    for _ in range(2):
        again = run(x, 2.0, splits=5)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_bad_inputs_are_errors():
    x = torch.randn(4, 3, device=DEVICE)
    with pytest.raises(ValueError, match="tokens, channels"):
        run(torch.randn(2, 3, 4, device=DEVICE), 1.0)
    with pytest.raises(TypeError, match="fp16/bf16/fp32"):
        run(x.double(), 1.0)
    with pytest.raises(ValueError, match="token_mask"):
        run(x, 1.0, torch.ones(5, dtype=torch.bool, device=DEVICE))
    wrong = buffers(3)
    wrong[0] = wrong[0].float()
    with pytest.raises(ValueError, match="sumsq"):
        K.channel_stats_(x, 1.0, None, *wrong)


def test_channel_stats_through_ops_and_channelstats(monkeypatch):
    monkeypatch.setenv("TFPRUNE_BACKEND", "triton")
    x = torch.randn(50, 24, device=DEVICE).bfloat16()
    mask = torch.rand(50, device=DEVICE) > 0.5
    sumsq, maxabs, count, n = ops.channel_stats(x, 1.0, mask)
    ref = K.channel_stats_ref(x.cpu(), 1.0, mask.cpu())
    torch.testing.assert_close(sumsq.cpu().double(), ref[0], rtol=1e-5, atol=0)
    assert sumsq.dtype == torch.float32 and torch.equal(maxabs.cpu(), ref[1]) and torch.equal(count.cpu(), ref[2])
    stats = ChannelStats.empty(24, tau=1.0, device=DEVICE)
    stats.update(x, mask)
    stats.update(x[:7])
    x[3, 5] = float("nan")
    stats.update(x)
    with pytest.raises(NonFiniteActivationError, match="channels \\[5\\]"):
        stats.check_finite("layers.0.q_proj")


def test_column_offsets_past_int32():
    """C·stride_c ≥ 2³¹ elements (a column-major view of a large activation): offsets are int64. The storage
    is 4 GiB of virtual memory of which only the 15 elements read are touched."""
    tokens, channels, stride_c = 3, 5, 2**29  # the last column starts at element 2³¹
    storage = torch.empty((channels - 1) * stride_c + tokens, dtype=torch.float16, device=DEVICE)
    x = storage.as_strided((tokens, channels), (1, stride_c))
    values = torch.arange(1, tokens * channels + 1, dtype=torch.float16, device=DEVICE).reshape(channels, tokens)
    for c in range(channels):
        storage[c * stride_c:c * stride_c + tokens] = values[c]
    check(run(x, 7.0), x.clone(), 7.0)
