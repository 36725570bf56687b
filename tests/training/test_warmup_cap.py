"""With little data the warm-up is capped at a share of the run's steps: the learning rate
peaks early and has decayed by the last step, instead of still rising there."""

from __future__ import annotations

import itertools

import pytest

from captioner.training.config import TrainConfig
from captioner.training.optim import WARMUP_MAX_SHARE, lr_factor


@pytest.mark.parametrize("total", [3, 8, 20, 60])
def test_a_short_run_warms_up_for_at_most_a_share_of_its_steps(total):
    cfg = TrainConfig(warmup_steps=100, min_lr_ratio=0.05)  # the default warm-up, far longer than the run
    f = [lr_factor(s, total, cfg) for s in range(total)]
    peak = f.index(max(f))
    assert peak <= WARMUP_MAX_SHARE * total  # the peak comes early
    assert all(a >= b for a, b in itertools.pairwise(f[peak:]))  # then only decays
    assert f[-1] < 0.5 * max(f) and max(f) == pytest.approx(1.0)  # and has decayed by the end


def test_a_long_run_keeps_its_warm_up():
    cfg = TrainConfig(warmup_steps=100)
    f = [lr_factor(s, 10_000, cfg) for s in range(200)]
    assert f.index(max(f)) == 99 and f[49] == pytest.approx(0.5)
