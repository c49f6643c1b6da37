"""Paired bootstrap significance test (Koehn 2004; Berg-Kirkpatrick et al. 2012) for two systems scored on
the same examples."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["BootstrapResult", "paired_bootstrap"]


@dataclass(frozen=True)
class BootstrapResult:
    """delta: observed accuracy(a) - accuracy(b); ci_low/ci_high: the 2.5% / 97.5% bootstrap quantiles of
    delta; p_value: two-sided, P(|δ* - δ| >= |δ|) over the resamples (1.0 when δ = 0)."""

    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    resamples: int
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def _groups(values) -> list[np.ndarray]:
    if len(values) and np.ndim(values[0]) == 1:
        return [np.asarray(group, dtype=np.float64) for group in values]
    return [np.asarray(values, dtype=np.float64)]


def paired_bootstrap(a, b, resamples: int = 1000, seed: int = 0, chunk: int = 256) -> BootstrapResult:
    """Paired bootstrap of accuracy(a) - accuracy(b).

    a, b: per-example scores (1 = correct, 0 = wrong) of the two systems on the same examples, [N] each;
    or lists of such arrays, one per stratum (language): the statistic is then the mean over strata of the
    stratum accuracies, and resampling stays inside each stratum. The same example indices are drawn for
    both systems (paired). Seeded: the same inputs and seed give the same result.
    """
    groups_a, groups_b = _groups(a), _groups(b)
    if len(groups_a) != len(groups_b):
        raise ValueError(f"paired_bootstrap: {len(groups_a)} strata for a, {len(groups_b)} for b")
    for ga, gb in zip(groups_a, groups_b):
        if ga.shape != gb.shape or ga.ndim != 1 or ga.size == 0:
            raise ValueError(f"paired_bootstrap: each stratum needs the same non-empty length for both "
                             f"systems, got {ga.shape} and {gb.shape}")
    if resamples < 1:
        raise ValueError(f"paired_bootstrap: resamples must be positive, got {resamples}")
    diffs = [ga - gb for ga, gb in zip(groups_a, groups_b)]
    observed = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    samples = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        stat = np.zeros(size, dtype=np.float64)
        for d in diffs:
            index = rng.integers(0, d.size, size=(size, d.size))
            stat += d[index].mean(axis=1)
        samples[start : start + size] = stat / len(diffs)
    p_value = float(np.mean(np.abs(samples - observed) >= abs(observed) - 1e-12))
    low, high = np.quantile(samples, [0.025, 0.975])
    return BootstrapResult(observed, float(low), float(high), p_value, resamples, seed)
