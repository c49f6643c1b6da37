"""The C++ extension tfprune._C against plain torch."""
import pytest
import torch

from tfprune._ext import extension

pytestmark = pytest.mark.skipif(extension is None, reason="tfprune._C not built")


def first_violation_torch(weight, n, m):
    counts = (weight != 0).reshape(weight.shape[0], -1, m).sum(-1)
    bad = (counts > n).nonzero()
    return tuple(bad[0].tolist()) if len(bad) else (-1, -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows,cols,n,m", [(1, 4, 2, 4), (37, 96, 2, 4), (5, 40, 3, 8)])
def test_nm_first_violation(dtype, rows, cols, n, m):
    weight = torch.randn(rows, cols).to(dtype)
    keep = torch.rand(rows, cols // m, m).argsort(-1) < n
    weight = weight.masked_fill(~keep.reshape(rows, cols), 0)
    assert extension.nm_first_violation(weight, n, m) == (-1, -1)
    weight[rows // 2, m * (cols // m // 2)] = -0.0  # -0.0 is zero
    weight[rows - 1, cols - m:] = 1.0
    assert extension.nm_first_violation(weight, n, m) == first_violation_torch(weight, n, m) == (rows - 1, cols // m - 1)


def test_nm_first_violation_bad_input():
    with pytest.raises(RuntimeError, match="not a multiple of m=4"):
        extension.nm_first_violation(torch.zeros(2, 6), 2, 4)
    with pytest.raises(RuntimeError, match="must be 2-D"):
        extension.nm_first_violation(torch.zeros(8), 2, 4)
