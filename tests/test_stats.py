"""The paired difference over seeds and its interval."""

from __future__ import annotations

import pytest

from ccua.report.stats import paired_difference


def test_a_known_difference_is_detected():
    baseline = [10.0, 12.0, 11.0]
    better = [7.1, 8.9, 8.0]  # 3 lower on every seed, +-0.1
    result = paired_difference(better, baseline)
    assert result.mean == pytest.approx(-3.0, abs=1e-9)
    assert result.detectable and result.high < 0
    # by hand: differences -2.9, -3.1, -3.0 -> sd 0.1, t(0.975, 2) = 4.3027
    assert result.high - result.mean == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    assert "no detectable" not in result.describe()


def test_identical_runs_give_an_interval_covering_zero():
    runs = [10.0, 12.0, 11.0]
    result = paired_difference(runs, list(runs))
    assert result.low <= 0 <= result.high and not result.detectable
    assert result.describe().endswith("no detectable difference")


def test_a_difference_smaller_than_the_seed_noise_is_not_detectable():
    result = paired_difference([10.5, 11.0, 13.0], [11.0, 12.5, 10.6])
    assert not result.detectable


def test_one_pair_has_no_interval_and_lengths_must_match():
    assert paired_difference([1.0], [2.0]).low is None
    assert not paired_difference([1.0], [2.0]).detectable
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])
