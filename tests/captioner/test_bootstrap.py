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


def test_resample_counts_draw_every_image_with_replacement_in_chunks() -> None:
    from captioner.metrics.bootstrap import CHUNK

    n, resamples = 3, 2 * CHUNK + 50  # three chunks, the last one short
    chunks = list(resample_counts(n, resamples, seed=7))
    assert [c.shape for c in chunks] == [(CHUNK, n), (CHUNK, n), (50, n)]
    counts = np.concatenate(chunks)  # (R, N)
    assert counts.dtype == np.float64 and (counts.sum(axis=1) == n).all()  # N draws per resample
    assert (counts.sum(axis=0) > 0).all()  # image 0 and the last image are drawn too
    assert (counts == n).any(axis=1).sum() > 0  # with replacement: some resample is one image n times
    assert [c.tolist() for c in resample_counts(1, 1, seed=0)] == [[[1.0]]]
    for bad in ((0, 5), (5, 0)):
        with pytest.raises(ValueError, match=r"^need at least one image and one resample$"):
            next(resample_counts(*bad, seed=0))


def test_names_and_intervals_of_degenerate_values() -> None:
    from captioner.metrics.bleu import BleuStats
    from captioner.metrics.bootstrap import _interval

    bleu = [BleuStats(test_len=3, ref_len=3, correct=[3, 2, 1, 0], guess=[3, 2, 1, 0])] * 2
    with_bleu = ImageStats.build(2, bleu, {"accuracy": [1.0, 0.0]})
    assert with_bleu.names() == ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "accuracy"]
    assert ImageStats.build(2, per_image={"accuracy": [1.0, 0.0]}).names() == ["accuracy"]
    low, high = _interval(np.array([np.nan, np.nan]), 0.95)
    assert np.isnan(low) and np.isnan(high)
    assert _interval(np.array([np.nan, 0.25]), 0.95) == (0.25, 0.25)  # one finite value is its own interval
