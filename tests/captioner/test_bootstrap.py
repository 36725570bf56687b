"""Bootstrap intervals have the coverage they claim: a 95 % interval holds 95 % of the resamples.

The resampled values are recomputed here from the same seeded counts (resample_counts) and a
metric whose corpus value is the plain mean, so the share of them inside the interval is
known to within one resample: 0.95 at level 0.95 (0.90 if the quantiles were taken at
``[1 - level, level]`` instead of ``[(1 - level) / 2, (1 + level) / 2]``)."""

from __future__ import annotations

import numpy as np
import pytest

from captioner.metrics.bootstrap import ImageStats, corpus_values, intervals, resample_counts


@pytest.mark.parametrize("level", [0.95, 0.8])
def test_an_interval_holds_its_level_of_the_resamples_split_evenly(level: float) -> None:
    n, resamples, seed = 400, 2000, 3
    rng = np.random.default_rng(0)
    stats = ImageStats.build(n, per_image={"accuracy": rng.random(n)})
    low, high = intervals(stats, resamples=resamples, seed=seed, level=level)["accuracy"]
    values = np.concatenate([corpus_values(stats, c)["accuracy"] for c in resample_counts(n, resamples, seed)])
    inside = np.mean((values >= low) & (values <= high))
    below, above = np.mean(values < low), np.mean(values > high)
    tolerance = 2 / resamples  # the quantiles interpolate between two resamples
    assert inside == pytest.approx(level, abs=tolerance)
    assert below == pytest.approx((1 - level) / 2, abs=tolerance)
    assert above == pytest.approx((1 - level) / 2, abs=tolerance)
